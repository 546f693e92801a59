//! The lean HTTP/1.1 path: cleartext HTTP/1.1 requests forwarded with `httparse` and byte
//! copies, without hyper's server and client between the two sockets.
//!
//! Most requests a proxy sees are plain: a request head with a small body or none, forwarded to
//! an instance, and its answer sent back. For those, the work is to read the head, route it,
//! write a rewritten head (hop-by-hop headers out, `X-Forwarded-*` in) and the body to a pooled
//! upstream connection, read the answer's head, and copy the answer back. This module does just
//! that, in the client connection's own task, with the upstream connection borrowed from the
//! worker's pool for the request (no connection task, no channel between tasks): a request
//! costs one read and one write on each socket, like nginx or HAProxy.
//!
//! **What it hands to hyper.** Anything else is served by hyper's HTTP/1.1 server exactly as
//! before: the connection, with the bytes read so far put back in front of it (see
//! [`Rewind`](super::io::Rewind)), is served by hyper from that request on. That is a request
//! that fails to parse or whose head exceeds the header limit (hyper answers `400` or `431`),
//! HTTP/1.0, a target that is not in origin form, no `Host`, a `Transfer-Encoding` (chunked
//! request body), `Expect`, an upgrade, `Connection` options beyond `close` and `keep-alive`, a
//! body over [`BODY_LIMIT`], and any request to an application with fault rules or a mirror
//! (faults, callers and mirroring live on hyper's path only). So behaviour is the same on both
//! paths; this one is only shorter.
//!
//! **What it does itself**, as [`Proxy::forward`](super::Proxy::forward) does: the header read
//! timeout (per head, and between requests), routing, weights, matches and stickiness (the
//! `Set-Cookie` added), power of two choices with passive health and draining, a retry on
//! another endpoint when a connection is refused (for a request whose body is all in hand), the
//! request timeout (`504`), `502` when no endpoint answers, metrics on the revision's handle,
//! and the endpoint's in-flight count until the answer's body has been copied. The answer's
//! body streams in whatever framing the instance chose (`Content-Length`, chunked, or up to the
//! close of the connection, which then also closes the client's); a chunked body's framing is
//! followed (see [`Chunked`]) but never rewritten, and when it breaks the client's connection
//! is closed, the only way left to tell it the body ended. Lengths are decimal digits only (a
//! request with any other `Content-Length` goes to hyper, which refuses it; an answer's is
//! dropped and its body runs to the close), an answer's `Content-Length` beside
//! `Transfer-Encoding` is dropped (RFC 9112 §6.3), and `Connection` cannot strip an answer's
//! framing. Interim answers (`1xx` but `101`) are passed on and the final one must still come
//! within the request timeout. While a body streams, the client's side is watched too: a
//! client that leaves ends the exchange at once (an instance that stalls would otherwise hold
//! the endpoint's in-flight count), and what it sends meanwhile (a pipelined request) is kept.
//! While a request body is copied upstream, the instance's side is watched as well: an answer
//! that comes before the whole body (a `413`, say) is forwarded at once, the rest of the body is
//! not, and both connections, out of step now, are closed; the client's after a lingering
//! close ([`LINGER`]), so that the body it still sends does not turn the close into a reset
//! that would destroy the answer. An upstream connection goes back to the
//! pool only when its answer has been read exactly to its end and the instance keeps it open;
//! one the instance closed while idle in the pool is noticed at checkout or, when the close
//! races the request, by an answer that ends before its first byte, after which a request with
//! an idempotent method and its body in hand is sent again on another connection.

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::io::{send_all, send_some};
use super::{
    elapsed_us, is_hop_by_hop, sticky_cookie, Attempts, ClientConn, InFlight, NowMs, Proxy,
};
use crate::route::{cookie_value, RequestView};

/// The largest request body (by `Content-Length`) forwarded on this path; larger ones go to
/// hyper, which polls the answer while it streams the body.
pub const BODY_LIMIT: u64 = 64 * 1024;

/// The most header fields of a request or an answer on this path (hyper's own limit).
const MAX_HEADERS: usize = 100;

/// The largest answer head accepted from an instance.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How much is read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What became of a client connection served here.
pub enum Outcome {
    /// It is finished: closed by the client, timed out, or closed after an answer.
    Closed,
    /// Hyper serves it from here on, starting with these bytes already read from it.
    Handover(BytesMut),
}

/// Serves `stream` until it closes or a request needs hyper.
pub async fn serve(proxy: &Proxy, stream: &mut TcpStream, client: &ClientConn) -> Outcome {
    let mut conn = Conn {
        proxy,
        client,
        stream,
        input: BytesMut::with_capacity(READ_CHUNK),
        upstream_head: Vec::with_capacity(1024),
        answer: BytesMut::with_capacity(READ_CHUNK),
        answer_head: Vec::new(),
    };
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let head_len = match conn.read_head(timer.as_mut()).await {
            Head::Complete(len) => len,
            Head::Closed => return Outcome::Closed,
            Head::Handover => return Outcome::Handover(conn.input),
        };
        match conn.request(head_len).await {
            Next::Request => {}
            Next::Close => return Outcome::Closed,
            Next::Linger => {
                linger(conn.stream).await;
                return Outcome::Closed;
            }
            Next::Handover => return Outcome::Handover(conn.input),
        }
    }
}

/// How long, and how much, a client still sending a body nobody will read is drained after
/// its answer, so that the close reaches it as a FIN after the answer rather than as a reset
/// that could destroy the answer (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Closes the sending side of `stream` and reads what the client still sends, within
/// [`LINGER`] and [`LINGER_BYTES`].
async fn linger(stream: &mut TcpStream) {
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let drained = async {
        let mut sink = vec![0u8; READ_CHUNK];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

enum Head {
    /// A head ends after this many bytes of the input.
    Complete(usize),
    Closed,
    Handover,
}

enum Next {
    Request,
    Close,
    /// Close once the client has stopped sending a body that was not all read.
    Linger,
    Handover,
}

/// Why an exchange with an instance gave no answer.
enum Failed {
    /// No connection could be made; nothing was sent.
    Connect(std::io::Error),
    /// The connection failed or the answer was unusable once the request was sent.
    Upstream(String),
}

/// One client connection and the buffers it reuses from request to request.
struct Conn<'a> {
    proxy: &'a Proxy,
    client: &'a ClientConn,
    stream: &'a mut TcpStream,
    /// Bytes read from the client and not yet forwarded.
    input: BytesMut,
    /// The request head being sent upstream (with the body, when it is in hand).
    upstream_head: Vec<u8>,
    /// Bytes read from the instance and not yet sent to the client.
    answer: BytesMut,
    /// An answer head as rewritten for the client.
    answer_head: Vec<u8>,
}

/// What a request head says about how to forward it.
struct RequestFacts<'h> {
    content_length: u64,
    close: bool,
    forwarded_for: Option<&'h [u8]>,
}

/// What an answer head says about its body and its connection.
struct AnswerFacts {
    body: Framing,
    /// The instance keeps the connection open after this answer.
    reusable: bool,
    /// Hop-by-hop headers (or an HTTP/1.0 status line) that must not reach the client.
    rewrite: bool,
    /// `Content-Length` must not reach the client: beside `Transfer-Encoding`, or unreadable.
    drop_length: bool,
}

/// How far an answer's body has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    More,
    /// It has ended; `exact` when nothing followed it (the connection can serve again).
    Ended {
        exact: bool,
    },
    /// Its chunked framing is broken: the client cannot tell where it ends.
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Conn<'_> {
    /// Reads until the input holds a whole request head, within the header read timeout.
    async fn read_head(&mut self, mut timer: Pin<&mut Sleep>) -> Head {
        let limit = self.proxy.inner.options.max_header_bytes;
        let mut armed = false;
        loop {
            match head_end(&self.input) {
                Some(len) if len <= limit => return Head::Complete(len),
                // Hyper answers 431.
                Some(_) => return Head::Handover,
                None => {}
            }
            if self.input.len() > limit {
                // Hyper answers 431.
                return Head::Handover;
            }
            if !armed {
                let timeout = self.proxy.inner.options.header_read_timeout;
                timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                armed = true;
            }
            self.input.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.input) => match read {
                    Ok(0) | Err(_) => return Head::Closed,
                    Ok(_) => {}
                },
                () = timer.as_mut() => {
                    tracing::debug!(listen = %self.client.listen, peer = %self.client.peer,
                        "no request head within the header read timeout");
                    return Head::Closed;
                }
            }
        }
    }

    /// Serves the request whose head is the input's first `head_len` bytes.
    async fn request(&mut self, head_len: usize) -> Next {
        let head = self.input.split_to(head_len);
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut fields);
        let plain = matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_)))
            && parsed.version == Some(1)
            && parsed.path.is_some_and(|path| path.starts_with('/'))
            && parsed.method.is_some_and(|method| method != "CONNECT");
        let facts = if plain {
            request_facts(parsed.headers)
        } else {
            None
        };
        let Some(facts) = facts.filter(|facts| facts.content_length <= BODY_LIMIT) else {
            return self.hand_over(head);
        };
        let served = self.proxy.inner.current();
        let Some(app_index) = served.table.app_index(self.client.listen) else {
            return self.hand_over(head);
        };
        let app = &served.table.apps()[app_index];
        if !app.faults().is_empty() || app.mirrors() {
            return self.hand_over(head);
        }
        let method = parsed.method.unwrap_or_default();
        let path = parsed.path.unwrap_or_default();

        let started = Instant::now();
        let draw = self.proxy.inner.draw();
        let pick = app.pick(&Fields(parsed.headers), draw);
        let revision = &app.revisions()[pick.revision];
        let metrics = revision.metrics();
        metrics.record_request();

        // The head as the instance gets it, and the body with it when it is all in hand.
        self.upstream_head.clear();
        write_request_head(
            &mut self.upstream_head,
            method,
            path,
            parsed.headers,
            &facts,
            self.client,
        );
        let body_len = usize::try_from(facts.content_length).unwrap_or(usize::MAX);
        let in_hand = body_len.min(self.input.len());
        self.upstream_head.extend_from_slice(&self.input[..in_hand]);
        self.input.advance(in_hand);
        let unread = body_len - in_hand;
        let replayable = unread == 0;
        let idempotent = matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
        let head_request = method == "HEAD";

        let cells = &served.cells[app_index][pick.revision];
        let endpoints = revision.endpoints();
        let mut now = NowMs::default();
        let mut attempts = Attempts::default();
        while let Some(chosen) = attempts.next(cells, endpoints, draw, &mut now) {
            let addr = endpoints[chosen].addr;
            let cell = &cells[chosen];
            let in_flight = InFlight::start(cell);
            let deadline = tokio::time::Instant::now() + self.proxy.inner.options.request_timeout;
            let exchanged = tokio::time::timeout_at(
                deadline,
                self.exchange(addr, unread, replayable && idempotent),
            )
            .await;
            match exchanged {
                Ok(Ok((upstream, answer_len, early))) => {
                    cell.record_success();
                    return self
                        .answer(
                            AnswerContext {
                                addr,
                                upstream,
                                head_len: answer_len,
                                head_request,
                                close: facts.close || early,
                                reuse: !early,
                                sticky: pick.sticky_set.map(|s| (s.name, s.value)),
                                started,
                                deadline,
                                metrics,
                            },
                            in_flight,
                        )
                        .await;
                }
                Ok(Err(Failed::Connect(e))) => {
                    drop(in_flight);
                    cell.record_connect_failure(&self.proxy.inner.options.health, now.get());
                    metrics.record_connect_error();
                    tracing::debug!(%addr, "upstream connection failed: {e}");
                    if !replayable {
                        break;
                    }
                    attempts.refused(chosen);
                }
                Ok(Err(Failed::Upstream(e))) => {
                    tracing::debug!(%addr, "upstream request failed: {e}");
                    metrics.record_response(502, elapsed_us(started));
                    return self.reply(502, "Bad Gateway", !replayable).await;
                }
                Err(_) => {
                    metrics.record_timeout();
                    return self.reply(504, "Gateway Timeout", !replayable).await;
                }
            }
        }
        attempts.none_left(metrics);
        // A body not read from the client leaves the connection out of step: close it.
        self.reply(502, "Bad Gateway", !replayable).await
    }

    /// Gives the connection to hyper with `head` and the rest of the input in front of it.
    fn hand_over(&mut self, mut head: BytesMut) -> Next {
        head.unsplit(std::mem::take(&mut self.input));
        self.input = head;
        Next::Handover
    }

    /// Sends the request to `addr` (a pooled connection, or a new one) with the `unread` rest
    /// of its body copied from the client, and reads the answer's head: its length in
    /// `self.answer`, and whether it came before the body was all sent (the client's
    /// connection is then out of step, and so is the instance's). A pooled connection closed
    /// before the answer began is given up for another when `resend` allows.
    async fn exchange(
        &mut self,
        addr: SocketAddr,
        unread: usize,
        resend: bool,
    ) -> Result<(TcpStream, usize, bool), Failed> {
        let pools = &self.proxy.inner.pools;
        let worker = self.client.worker;
        loop {
            let (mut upstream, pooled) = match pools.checkout_raw(worker, addr) {
                Some(stream) => (stream, true),
                None => (
                    pools.connect_raw(addr).await.map_err(Failed::Connect)?,
                    false,
                ),
            };
            self.answer.clear();
            let sent = match send_all(&upstream, &self.upstream_head).await {
                Ok(()) => self.send_body(&upstream, unread).await,
                Err(e) => Err(e),
            };
            let early = matches!(sent, Ok(true));
            let answered = match sent {
                Ok(_) => self.read_answer_head(&mut upstream).await,
                Err(e) => Err(Some(e.to_string())),
            };
            match answered {
                Ok(len) => return Ok((upstream, len, early)),
                // Closed before the first byte of an answer: the instance's keep-alive ended.
                Err(_) if pooled && resend && self.answer.is_empty() => continue,
                Err(e) => {
                    let e = e.unwrap_or_else(|| "connection closed before an answer".into());
                    return Err(Failed::Upstream(e));
                }
            }
        }
    }

    /// Copies the `unread` rest of the body to `upstream` while watching it: an instance may
    /// answer (413, say) before it has read the whole body, and then the answer is read at
    /// once and the rest of the body is not sent. Whether it answered early.
    async fn send_body(&mut self, upstream: &TcpStream, unread: usize) -> std::io::Result<bool> {
        let mut left = unread;
        while left > 0 {
            tokio::select! {
                biased;
                copied = self.copy_body(upstream, &mut left) => return copied.map(|()| false),
                ready = upstream.readable() => ready?,
            }
            // Readiness can be left over from the last answer: only bytes (or the close) say
            // the instance has answered.
            self.answer.reserve(READ_CHUNK);
            match upstream.try_read_buf(&mut self.answer) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(_) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Copies the `unread` body bytes from the client to `upstream` as they arrive, counting
    /// them down. Cancel-safe: cancelled, it has copied `unread` fewer, and lost none.
    async fn copy_body(&mut self, upstream: &TcpStream, unread: &mut usize) -> std::io::Result<()> {
        while *unread > 0 {
            if self.input.is_empty() {
                self.input.reserve(READ_CHUNK);
                if self.stream.read_buf(&mut self.input).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the client closed during its request body",
                    ));
                }
            }
            let n = (*unread).min(self.input.len());
            let sent = send_some(upstream, &self.input[..n]).await?;
            self.input.advance(sent);
            *unread -= sent;
        }
        Ok(())
    }

    /// Reads until `self.answer` holds an answer's head; `Err(None)` when the connection
    /// closed first.
    async fn read_answer_head(
        &mut self,
        upstream: &mut TcpStream,
    ) -> Result<usize, Option<String>> {
        loop {
            if let Some(len) = head_end(&self.answer) {
                return Ok(len);
            }
            if self.answer.len() > MAX_RESPONSE_HEAD {
                return Err(Some("answer head too large".into()));
            }
            self.answer.reserve(READ_CHUNK);
            match upstream.read_buf(&mut self.answer).await {
                Ok(0) => {
                    return Err(if self.answer.is_empty() {
                        None
                    } else {
                        Some("connection closed inside an answer head".into())
                    })
                }
                Ok(_) => {}
                Err(e) if self.answer.is_empty() => {
                    // A reset before any answer is as good as a close for a resend.
                    tracing::debug!("upstream read failed: {e}");
                    return Err(None);
                }
                Err(e) => return Err(Some(e.to_string())),
            }
        }
    }

    /// Sends the answer whose head is `self.answer`'s first `ctx.head_len` bytes to the client,
    /// then its body, and returns the upstream connection to the pool when it can be reused.
    async fn answer(&mut self, ctx: AnswerContext<'_>, in_flight: InFlight) -> Next {
        let AnswerContext {
            addr,
            mut upstream,
            mut head_len,
            head_request,
            close,
            reuse,
            sticky,
            started,
            deadline,
            metrics,
        } = ctx;
        // Interim answers (100, 102, 103) go to the client as they are; the final one follows.
        let (status, facts, client_closes, rewritten) = loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut fields);
            let head = &self.answer[..head_len];
            let status = match parsed.parse(head) {
                Ok(httparse::Status::Complete(_)) => parsed.code.unwrap_or(0),
                _ => 0,
            };
            if !(100..=999).contains(&status) || status == 101 {
                // Unparsable, or a switch of protocols nobody asked for.
                tracing::debug!(%addr, status, "unusable answer head from the upstream");
                metrics.record_response(502, elapsed_us(started));
                return self.reply(502, "Bad Gateway", true).await;
            }
            if status < 200 {
                if send_all(self.stream, head).await.is_err() {
                    return Next::Close;
                }
                self.answer.advance(head_len);
                let next = self.read_answer_head(&mut upstream);
                match tokio::time::timeout_at(deadline, next).await {
                    Ok(Ok(len)) => {
                        head_len = len;
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, "upstream answer failed: {e:?}");
                        metrics.record_response(502, elapsed_us(started));
                        return self.reply(502, "Bad Gateway", true).await;
                    }
                    Err(_) => {
                        metrics.record_timeout();
                        return self.reply(504, "Gateway Timeout", true).await;
                    }
                }
            }
            let facts = answer_facts(status, parsed.version, parsed.headers, head_request);
            let client_closes = close || facts.body == Framing::UntilClose;
            let rewritten = facts.rewrite || sticky.is_some() || client_closes;
            if rewritten {
                self.answer_head.clear();
                write_answer_head(
                    &mut self.answer_head,
                    head,
                    status,
                    parsed.headers,
                    sticky,
                    client_closes,
                    facts.drop_length,
                );
            }
            break (status, facts, client_closes, rewritten);
        };
        metrics.record_response(status, elapsed_us(started));

        // The head and the body bytes already read go out in one write.
        let mut chunked = Chunked::default();
        let mut left = match facts.body {
            Framing::Length(n) => n,
            _ => 0,
        };
        let body = self.answer.split_off(head_len);
        let mut head = std::mem::replace(&mut self.answer, body);
        let mut progress = self.take_body(facts.body, &mut left, &mut chunked);
        let written = if rewritten {
            self.answer_head.extend_from_slice(&self.answer);
            send_all(self.stream, &self.answer_head).await
        } else {
            head.unsplit(std::mem::take(&mut self.answer));
            let written = send_all(self.stream, &head).await;
            head.clear();
            self.answer = head;
            written
        };
        self.answer.clear();
        if written.is_err() {
            return Next::Close;
        }
        // The rest of the body, as it arrives, while the client is still there.
        let limit = self.proxy.inner.options.max_header_bytes;
        let clean = loop {
            match progress {
                Progress::Ended { exact } => break exact,
                Progress::Broken => {
                    // The client cannot tell where the body ends: only a close can say it.
                    tracing::debug!(%addr, "upstream answer with broken chunked framing");
                    return Next::Close;
                }
                Progress::More => {}
            }
            self.answer.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = upstream.read_buf(&mut self.answer) => read,
                () = client_gone(self.stream, &mut self.input, limit) => {
                    tracing::debug!(%addr, "client left during the answer's body");
                    return Next::Close;
                }
            };
            match read {
                Ok(0) if facts.body == Framing::UntilClose => break false,
                Ok(0) | Err(_) => {
                    // Cut short: the client cannot tell the body ended, so it is closed too.
                    tracing::debug!(%addr, "upstream answer body cut short");
                    return Next::Close;
                }
                Ok(_) => {
                    progress = self.take_body(facts.body, &mut left, &mut chunked);
                    if send_all(self.stream, &self.answer).await.is_err() {
                        return Next::Close;
                    }
                    self.answer.clear();
                }
            }
        };
        drop(in_flight);
        if clean && reuse && facts.reusable {
            self.proxy
                .inner
                .pools
                .checkin_raw(self.client.worker, addr, upstream);
        }
        if !reuse {
            Next::Linger
        } else if client_closes {
            Next::Close
        } else {
            Next::Request
        }
    }

    /// Trims `self.answer` to the body bytes that belong to the answer, and says how far the
    /// body has come.
    fn take_body(&mut self, framing: Framing, left: &mut u64, chunked: &mut Chunked) -> Progress {
        match framing {
            Framing::None => {
                let exact = self.answer.is_empty();
                self.answer.clear();
                Progress::Ended { exact }
            }
            Framing::Length(_) => {
                let have = self.answer.len() as u64;
                if have >= *left {
                    let exact = have == *left;
                    self.answer.truncate(*left as usize);
                    *left = 0;
                    Progress::Ended { exact }
                } else {
                    *left -= have;
                    Progress::More
                }
            }
            Framing::Chunked => match chunked.feed(&self.answer) {
                Ok(Some(end)) => {
                    let exact = end == self.answer.len();
                    self.answer.truncate(end);
                    Progress::Ended { exact }
                }
                Ok(None) => Progress::More,
                Err(()) => Progress::Broken,
            },
            Framing::UntilClose => Progress::More,
        }
    }

    /// Answers the client with an empty body; `close` also closes the connection.
    async fn reply(&mut self, status: u16, reason: &str, close: bool) -> Next {
        let connection = if close { "connection: close\r\n" } else { "" };
        let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n{connection}\r\n");
        match send_all(self.stream, answer.as_bytes()).await {
            Ok(()) if !close => Next::Request,
            _ => Next::Close,
        }
    }
}

/// What [`Conn::answer`] needs of the request it answers.
struct AnswerContext<'a> {
    addr: SocketAddr,
    upstream: TcpStream,
    head_len: usize,
    head_request: bool,
    /// The client's connection closes after this answer.
    close: bool,
    /// The upstream connection may serve again once the answer is read.
    reuse: bool,
    sticky: Option<(&'a str, &'a str)>,
    started: Instant,
    /// When the final answer's head must have come (the request timeout).
    deadline: tokio::time::Instant,
    metrics: &'a Arc<crate::metrics::RevisionMetrics>,
}

/// Resolves when the client has closed its connection (or it failed). What it sends meanwhile,
/// a pipelined request, stays in `input` for later, up to `limit` bytes: beyond that it is left
/// in the socket and this waits for ever (the caller's other branch decides).
async fn client_gone(stream: &mut TcpStream, input: &mut BytesMut, limit: usize) {
    loop {
        if input.len() > limit {
            std::future::pending::<()>().await;
        }
        input.reserve(READ_CHUNK);
        match stream.read_buf(input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Where the head at the start of `bytes` ends (after its empty line), if it is all there.
/// Lines may end in CRLF or a bare LF, as `httparse` accepts.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = bytes[from..].iter().position(|&b| b == b'\n') {
        let lf = from + i;
        match bytes.get(lf + 1..lf + 3) {
            Some([b'\n', _]) => return Some(lf + 2),
            Some([b'\r', b'\n']) => return Some(lf + 3),
            None if bytes.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            _ => {}
        }
        from = lf + 1;
    }
    None
}

/// The facts of a request head, or `None` when it needs hyper's path.
fn request_facts<'h>(fields: &[httparse::Header<'h>]) -> Option<RequestFacts<'h>> {
    let mut facts = RequestFacts {
        content_length: 0,
        close: false,
        forwarded_for: None,
    };
    let mut host = false;
    let mut length: Option<u64> = None;
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = decimal(field.value)?;
            if length.is_some_and(|previous| previous != n) {
                return None;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in field.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    facts.close = true;
                } else if !option.is_empty() && !option.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            if facts.forwarded_for.is_some() {
                return None;
            }
            facts.forwarded_for = Some(field.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        }
    }
    facts.content_length = length.unwrap_or(0);
    host.then_some(facts)
}

/// A `Content-Length` value: decimal digits only (RFC 9110 §8.6), around which only spaces and
/// tabs may stand. Anything else (a sign, other whitespace) is not a length.
fn decimal(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The request head for the instance: the request line in origin form and HTTP/1.1, the
/// client's fields less hop-by-hop ones, and `X-Forwarded-For` (the client's chain with its
/// address appended) and `X-Forwarded-Proto`.
fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    fields: &[httparse::Header<'_>],
    facts: &RequestFacts<'_>,
    client: &ClientConn,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in fields {
        let name = field.name;
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
        {
            continue;
        }
        push_field(out, name.as_bytes(), field.value);
    }
    let peer = client.peer_ip.as_ref().map_or(&b""[..], |ip| ip.as_bytes());
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(chain) = facts.forwarded_for {
        out.extend_from_slice(chain);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the answer's body is framed (RFC 9112 §6.3) and whether its head needs rewriting.
fn answer_facts(
    status: u16,
    version: Option<u8>,
    fields: &[httparse::Header<'_>],
    head_request: bool,
) -> AnswerFacts {
    let mut length = None;
    let mut bad_length = false;
    let mut chunked = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut rewrite = version != Some(1);
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            match decimal(field.value) {
                Some(n) if length.is_none_or(|previous| previous == n) => length = Some(n),
                // Conflicting or unreadable lengths: the body runs to the close.
                _ => bad_length = true,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = field
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if is_hop_by_hop(name) {
            rewrite = true;
            if name.eq_ignore_ascii_case("connection") {
                for option in field.value.split(|&b| b == b',') {
                    let option = option.trim_ascii();
                    if option.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        }
    }
    let body = if head_request || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) if !bad_length => Framing::Length(n),
            (None, _) => Framing::UntilClose,
        }
    };
    // With chunks (RFC 9112 §6.3) or when unreadable, the length is not the client's to see.
    let drop_length = (length.is_some() && chunked.is_some()) || bad_length;
    // HTTP/1.0 keeps a connection only when it says so.
    let reusable = if version == Some(1) {
        !close
    } else {
        keep_alive && !close
    };
    AnswerFacts {
        body,
        reusable: reusable && body != Framing::UntilClose,
        rewrite: rewrite || drop_length,
        drop_length,
    }
}

/// The answer head for the client: HTTP/1.1's status line, the instance's fields less
/// hop-by-hop ones and those its `Connection` names, then a sticky cookie and
/// `Connection: close` when wanted.
fn write_answer_head(
    out: &mut Vec<u8>,
    head: &[u8],
    status: u16,
    fields: &[httparse::Header<'_>],
    sticky: Option<(&str, &str)>,
    close: bool,
    drop_length: bool,
) {
    // The reason phrase as the instance gave it.
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let reason = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    let named: Vec<&[u8]> = fields
        .iter()
        .filter(|field| field.name.eq_ignore_ascii_case("connection"))
        .flat_map(|field| field.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        // The body's framing stays whatever `Connection` says: the client needs it.
        .filter(|option| {
            !option.is_empty()
                && !option.eq_ignore_ascii_case(b"content-length")
                && !option.eq_ignore_ascii_case(b"transfer-encoding")
        })
        .collect();
    for field in fields {
        let name = field.name;
        if is_hop_by_hop(name)
            || (drop_length && name.eq_ignore_ascii_case("content-length"))
            || named
                .iter()
                .any(|option| option.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        push_field(out, name.as_bytes(), field.value);
    }
    if let Some((name, value)) = sticky {
        push_field(out, b"set-cookie", sticky_cookie(name, value).as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The request's fields, as routing reads them.
struct Fields<'a, 'h>(&'a [httparse::Header<'h>]);

impl RequestView for Fields<'_, '_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|field| field.name.eq_ignore_ascii_case(name))
            .and_then(|field| std::str::from_utf8(field.value).ok())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|field| field.name.eq_ignore_ascii_case("cookie"))
            .filter_map(|field| std::str::from_utf8(field.value).ok())
            .find_map(|value| cookie_value(value, name))
    }
}

/// Follows a chunked body's framing (RFC 9112 §7.1) through the bytes that pass, to find
/// where it ends, without changing them.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line's hexadecimal digits.
    Size {
        size: u64,
        digits: u32,
    },
    /// In a chunk extension, up to the line's end.
    Extension {
        size: u64,
    },
    /// After a chunk-size line's CR.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data.
    Data {
        left: u64,
    },
    /// After a chunk's data, before its CR LF.
    DataCr,
    DataLf,
    /// In the trailer section; `empty` while the current line has nothing on it.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
}

impl Default for ChunkState {
    fn default() -> Self {
        ChunkState::Size { size: 0, digits: 0 }
    }
}

impl Chunked {
    /// Feeds the next `bytes` of the body: `Ok(Some(n))` when the body ends after the first
    /// `n` of them, `Ok(None)` when all belong to it and more are to come, `Err` when the
    /// framing is broken.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                ChunkState::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if size >> 60 == 0 => ChunkState::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits.saturating_add(1),
                    },
                    Some(_) => return Err(()),
                    None if digits == 0 => return Err(()),
                    None => match b {
                        b';' | b' ' | b'\t' => ChunkState::Extension { size },
                        b'\r' => ChunkState::SizeLf { size },
                        b'\n' => after_size_line(size),
                        _ => return Err(()),
                    },
                },
                ChunkState::Extension { size } => match b {
                    b'\r' => ChunkState::SizeLf { size },
                    b'\n' => after_size_line(size),
                    _ => ChunkState::Extension { size },
                },
                ChunkState::SizeLf { size } => match b {
                    b'\n' => after_size_line(size),
                    _ => return Err(()),
                },
                ChunkState::Data { left } => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { left: left - take }
                    };
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => ChunkState::default(),
                    _ => return Err(()),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::default(),
                    _ => return Err(()),
                },
                ChunkState::Trailer { empty } => match b {
                    b'\r' => ChunkState::TrailerLf { empty },
                    b'\n' if empty => return Ok(Some(i + 1)),
                    b'\n' => ChunkState::Trailer { empty: true },
                    _ => ChunkState::Trailer { empty: false },
                },
                ChunkState::TrailerLf { empty } => match b {
                    b'\n' if empty => return Ok(Some(i + 1)),
                    b'\n' => ChunkState::Trailer { empty: true },
                    _ => return Err(()),
                },
            };
            i += 1;
        }
        Ok(None)
    }
}

fn after_size_line(size: u64) -> ChunkState {
    if size == 0 {
        ChunkState::Trailer { empty: true }
    } else {
        ChunkState::Data { left: size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_empty_line_with_crlf_or_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nhost: a\n\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r"), None);
        assert_eq!(head_end(b""), None);
    }

    /// Where `body` ends when fed `step` bytes at a time.
    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, ()> {
        let mut chunked = Chunked::default();
        let mut offset = 0;
        for piece in body.chunks(step) {
            if let Some(end) = chunked.feed(piece)? {
                return Ok(Some(offset + end));
            }
            offset += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_however_it_is_split() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(end_of(body, step), Ok(Some(end)), "step {step}");
        }
        let plain = b"3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(end_of(plain, 1), Ok(Some(plain.len())));
        assert_eq!(end_of(b"3\r\nabc\r\n", 1), Ok(None));
        assert_eq!(end_of(b"3\r\nabcd\r\n", 1), Err(()));
        assert_eq!(end_of(b"zz\r\n", 1), Err(()));
        assert_eq!(end_of(b"11111111111111111\r\n", 1), Err(()));
        // Leading zeros are digits too, not size.
        assert_eq!(
            end_of(b"00000000000000000003\r\nabc\r\n0\r\n\r\n", 1),
            Ok(Some(32))
        );
    }

    fn fields(head: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut storage);
        parsed.parse(head).expect("parses");
        parsed
            .headers
            .iter()
            .map(|f| (f.name.to_string(), f.value.to_vec()))
            .collect()
    }

    fn facts(head: &[u8]) -> Option<(u64, bool)> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut storage);
        parsed.parse(head).expect("parses");
        request_facts(parsed.headers).map(|f| (f.content_length, f.close))
    }

    #[test]
    fn requests_hyper_must_serve_are_told_apart() {
        assert_eq!(
            facts(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some((0, false))
        );
        assert_eq!(
            facts(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"),
            Some((5, true))
        );
        for needs_hyper in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\u{a0}\r\n\r\n".as_bytes(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-private\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        ] {
            assert_eq!(
                facts(needs_hyper),
                None,
                "{}",
                String::from_utf8_lossy(needs_hyper)
            );
        }
    }

    #[test]
    fn the_upstream_head_drops_hop_by_hop_fields_and_extends_the_forwarded_chain() {
        let head = b"GET /a?b HTTP/1.1\r\nHost: web\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Other: 1\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut storage);
        parsed.parse(head).expect("parses");
        let facts = request_facts(parsed.headers).expect("plain");
        let client = ClientConn::new(
            "127.0.0.1:80".parse().expect("addr"),
            "127.0.0.7:5000".parse().expect("addr"),
            0,
        );
        let mut out = Vec::new();
        write_request_head(&mut out, "GET", "/a?b", parsed.headers, &facts, &client);
        assert_eq!(
            String::from_utf8(out.clone()).expect("text"),
            "GET /a?b HTTP/1.1\r\nHost: web\r\nX-Other: 1\r\nx-forwarded-for: 10.0.0.1, 127.0.0.7\r\nx-forwarded-proto: http\r\n\r\n"
        );
        assert_eq!(fields(&out).len(), 4);
    }

    fn answer(head: &[u8], head_request: bool) -> (u16, AnswerFacts, Vec<u8>) {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut storage);
        parsed.parse(head).expect("parses");
        let status = parsed.code.expect("status");
        let facts = answer_facts(status, parsed.version, parsed.headers, head_request);
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            head,
            status,
            parsed.headers,
            Some(("rev", "v2")),
            false,
            facts.drop_length,
        );
        (status, facts, out)
    }

    #[test]
    fn answer_framing_follows_rfc_9112() {
        let (_, f, _) = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false);
        assert_eq!(
            (f.body, f.reusable, f.rewrite),
            (Framing::Length(12), true, false)
        );
        let (_, f, _) = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", true);
        assert_eq!(f.body, Framing::None);
        let (_, f, _) = answer(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!(f.body, Framing::None);
        let (_, f, _) = answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        );
        assert_eq!(f.body, Framing::Chunked);
        let (_, f, _) = answer(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((f.body, f.reusable), (Framing::UntilClose, false));
        let (_, f, _) = answer(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            false,
        );
        assert_eq!(
            (f.body, f.reusable, f.rewrite),
            (Framing::Length(1), false, true)
        );
        let (_, f, _) = answer(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false);
        assert_eq!((f.reusable, f.rewrite), (false, true));
        let (_, f, _) = answer(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
            false,
        );
        assert!(f.reusable);
    }

    #[test]
    fn the_client_head_keeps_its_framing_whatever_connection_names_and_loses_a_length_beside_chunks(
    ) {
        let (_, f, out) = answer(
            b"HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\ncontent-length: 2\r\n\r\n",
            false,
        );
        assert_eq!(f.body, Framing::Length(2));
        assert!(String::from_utf8_lossy(&out).contains("content-length: 2\r\n"));
        let (_, f, out) = answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!((f.body, f.drop_length), (Framing::Chunked, true));
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(!out.contains("content-length") && out.contains("transfer-encoding: chunked"));
        let (_, f, out) = answer(b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n", false);
        assert_eq!((f.body, f.reusable), (Framing::UntilClose, false));
        assert!(!String::from_utf8_lossy(&out).contains("content-length"));
    }

    #[test]
    fn the_client_head_loses_hop_by_hop_and_named_fields_and_gains_the_sticky_cookie() {
        let (_, _, out) = answer(
            b"HTTP/1.0 503 Service Unavailable\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nset-cookie: rev=v2; Path=/; HttpOnly\r\n\r\n"
        );
    }
}
