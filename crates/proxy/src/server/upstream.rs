//! Keep-alive HTTP/1.1 connections to instances, pooled per worker and per endpoint.
//!
//! Each worker (one runtime thread) has a pool of its own, so a request takes an idle
//! connection made by the thread it runs on and the lock it takes is never contended on the
//! hot path. A connection is a hyper `http1` [`SendRequest`] whose connection task runs on that
//! worker; it goes back to the pool once its response body has been read to its end (a
//! response whose body is dropped early closes its connection). Idle connections are dropped
//! by [`Pools::sweep`] once idle for [`IDLE_TIMEOUT`] (to within one [`SWEEP_INTERVAL`]: the
//! sweeps count an idle connection's age, so checking one in or out reads no clock), and when
//! found closed at checkout.
//!
//! Beside them, each pool keeps plain `TcpStream`s for the lean HTTP/1.1 path (`fast`), which
//! borrows one for a request and speaks HTTP/1.1 on it itself ([`Pools::checkout_raw`],
//! [`Pools::checkin_raw`]); these are swept the same way, and one whose instance closed it or
//! sent stray bytes is dropped at checkout without a system call unless the socket was
//! reported readable.
//!
//! [`Pools::send`] sends a request on an idle connection if there is one and on a new one
//! otherwise. A pooled connection that the instance closed before the request was written
//! gives the request back and the next one (or a new one) is tried, so an instance's own
//! keep-alive timeout never fails a request. A new connection that cannot be made within the
//! connect timeout is [`SendError::Connect`], with the request given back untouched.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{lock, ProxyBody};

/// How long a pooled connection may stay idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often each worker's pool is swept of idle and closed connections.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

type Sender = SendRequest<ProxyBody>;

/// One pool per worker.
pub struct Pools {
    workers: Vec<Pool>,
    connect_timeout: Duration,
}

/// How many sweeps an idle connection survives: it is dropped by the sweep after it has been
/// idle for [`IDLE_TIMEOUT`], less up to one [`SWEEP_INTERVAL`].
const IDLE_SWEEPS: u32 = (IDLE_TIMEOUT.as_secs() / SWEEP_INTERVAL.as_secs()) as u32;

type ByAddr<T> = HashMap<SocketAddr, Vec<T>, BuildHasherDefault<AddrHasher>>;

#[derive(Default)]
struct Pool {
    idle: Mutex<ByAddr<Idle>>,
    /// Plain connections of the lean HTTP/1.1 path (`server::fast`), between requests.
    raw: Mutex<ByAddr<RawIdle>>,
}

struct RawIdle {
    stream: TcpStream,
    sweeps: u32,
}

/// Whether an idle plain connection is still usable: nothing to read (a close or stray bytes
/// from the instance would be). Costs no system call unless the socket was reported readable.
fn raw_usable(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

struct Idle {
    sender: Sender,
    /// Sweeps since the connection was checked in.
    sweeps: u32,
}

/// A multiply-rotate hasher (FxHash's) for the pool's keys: endpoint addresses come from the
/// configuration, not from clients, so the default hasher's flooding resistance buys nothing
/// and costs two SipHash runs per request.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Why a request got no response.
pub enum SendError {
    /// No connection could be made (refused, unreachable, timed out); the request was not
    /// sent and is given back.
    Connect(std::io::Error, Box<Request<ProxyBody>>),
    /// The connection failed once the request was handed to it.
    Upstream(hyper::Error),
}

/// A connection lent to one request; [`Lease::release`] returns it to its pool.
pub struct Lease {
    pools: Arc<Pools>,
    worker: usize,
    addr: SocketAddr,
    sender: Sender,
}

impl Lease {
    /// Returns the connection to the pool, once it is ready for another request. Only call
    /// this when the response body has been read to its end.
    pub fn release(self) {
        let Lease {
            pools,
            worker,
            addr,
            mut sender,
        } = self;
        if sender.is_ready() {
            pools.checkin(worker, addr, sender);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the response; this is rare.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pools.checkin(worker, addr, sender);
                }
            });
        }
    }
}

impl Pools {
    pub fn new(workers: usize, connect_timeout: Duration) -> Pools {
        Pools {
            workers: (0..workers.max(1)).map(|_| Pool::default()).collect(),
            connect_timeout,
        }
    }

    fn pool(&self, worker: usize) -> &Pool {
        &self.workers[worker % self.workers.len()]
    }

    /// Sends `request` (origin-form URI, `Host` set) to `addr` on a connection of `worker`'s
    /// pool or a new one.
    pub async fn send(
        self: &Arc<Self>,
        worker: usize,
        addr: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.checkout(worker, addr) {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(worker, addr, sender))),
                Err(mut failed) => match failed.take_message() {
                    // Closed by the instance before the request was written: try another.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Upstream(failed.into_error())),
                },
            }
        }
        let mut sender = match self.connect(addr).await {
            Ok(sender) => sender,
            Err(e) => return Err(SendError::Connect(e, Box::new(request))),
        };
        match sender.send_request(request).await {
            Ok(response) => Ok((response, self.lease(worker, addr, sender))),
            Err(e) => Err(SendError::Upstream(e)),
        }
    }

    fn lease(self: &Arc<Self>, worker: usize, addr: SocketAddr, sender: Sender) -> Lease {
        Lease {
            pools: Arc::clone(self),
            worker,
            addr,
            sender,
        }
    }

    /// A new TCP connection to `addr`, within the connect timeout, with `TCP_NODELAY`.
    pub async fn connect_raw(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(connected) => connected?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// The most recently returned plain connection to `addr` that is still usable.
    pub fn checkout_raw(&self, worker: usize, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = lock(&self.pool(worker).raw);
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if raw_usable(&entry.stream) {
                return Some(entry.stream);
            }
        }
        None
    }

    /// Returns a plain connection whose last response was read to its end.
    pub fn checkin_raw(&self, worker: usize, addr: SocketAddr, stream: TcpStream) {
        let entry = RawIdle { stream, sweeps: 0 };
        lock(&self.pool(worker).raw)
            .entry(addr)
            .or_default()
            .push(entry);
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Sender> {
        let stream = self.connect_raw(addr).await?;
        let stream = TokioIo::new(super::io::Stream::new(stream));
        let (sender, connection) = hyper::client::conn::http1::handshake(stream)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(%addr, "upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// The most recently returned connection to `addr` that is still usable.
    fn checkout(&self, worker: usize, addr: SocketAddr) -> Option<Sender> {
        let mut idle = lock(&self.pool(worker).idle);
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, worker: usize, addr: SocketAddr, sender: Sender) {
        let entry = Idle { sender, sweeps: 0 };
        lock(&self.pool(worker).idle)
            .entry(addr)
            .or_default()
            .push(entry);
    }

    /// Closes `worker`'s connections that have been idle for [`IDLE_TIMEOUT`] (counted in
    /// sweeps, see [`IDLE_SWEEPS`]) or were closed by their instance. Called every
    /// [`SWEEP_INTERVAL`].
    pub fn sweep(&self, worker: usize) {
        let mut idle = lock(&self.pool(worker).idle);
        idle.retain(|_, list| {
            list.retain_mut(|entry| {
                entry.sweeps += 1;
                !entry.sender.is_closed() && entry.sweeps < IDLE_SWEEPS
            });
            !list.is_empty()
        });
        drop(idle);
        let mut raw = lock(&self.pool(worker).raw);
        raw.retain(|_, list| {
            list.retain_mut(|entry| {
                entry.sweeps += 1;
                raw_usable(&entry.stream) && entry.sweeps < IDLE_SWEEPS
            });
            !list.is_empty()
        });
    }

    /// Idle connections of every worker, for tests.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.workers
            .iter()
            .map(|pool| {
                lock(&pool.idle).values().map(Vec::len).sum::<usize>()
                    + lock(&pool.raw).values().map(Vec::len).sum::<usize>()
            })
            .sum()
    }
}

/// Sweeps `worker`'s pool every [`SWEEP_INTERVAL`] until the pools are gone.
pub async fn sweeper(pools: std::sync::Weak<Pools>, worker: usize) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        match pools.upgrade() {
            Some(pools) => pools.sweep(worker),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn get() -> Request<ProxyBody> {
        let mut request = Request::new(super::super::empty());
        request
            .headers_mut()
            .insert(http::header::HOST, "test".parse().expect("host"));
        request
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_read_is_reused_by_the_next_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok(Ok((mut stream, _))) =
                tokio::time::timeout(Duration::from_secs(2), listener.accept()).await
            {
                accepted += 1;
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
            accepted
        });
        let pools = Arc::new(Pools::new(1, Duration::from_secs(1)));
        for _ in 0..3 {
            let Ok((response, lease)) = pools.send(0, addr, get()).await else {
                panic!("no response");
            };
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), "ok");
            lease.release();
            tokio::task::yield_now().await;
            assert_eq!(pools.idle(), 1);
        }
        assert_eq!(accepted.await.expect("listener"), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_gives_the_request_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pools = Arc::new(Pools::new(1, Duration::from_secs(1)));
        match pools.send(0, addr, get()).await {
            Err(SendError::Connect(_, request)) => {
                assert_eq!(request.headers()[http::header::HOST], "test")
            }
            _ => panic!("expected a connect error"),
        }
        assert_eq!(pools.idle(), 0);
    }
}
