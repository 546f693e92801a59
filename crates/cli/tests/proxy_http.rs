//! End-to-end: the protocols and limits of `gauntlet proxy`'s client side, as a real process
//! on 127.0.0.1 in front of real upstreams: HTTP/2 with prior knowledge, TLS with ALPN (h2 and
//! http/1.1) from a certificate made at test time, TLS files rejected and reloaded, and bad or
//! slow clients (oversized heads, a head sent byte by byte, a malformed request line, silent
//! connections). Each test names the behaviour it proves.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::proxy::{app, demo_app, http, recording_upstream, Proxy};
use common::{free_port, wait_until};
use reqwest::Version;
use serde_json::{json, Value};

/// A blocking client that speaks HTTP/2 with prior knowledge over cleartext.
fn h2c() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP/2 client")
}

/// A self-signed certificate for `localhost`, written as PEM files into `dir`; returns the
/// certificate's PEM and DER.
fn certificate(dir: &Path) -> (String, Vec<u8>) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert.pem written");
    std::fs::write(dir.join("key.pem"), key_pair.serialize_pem()).expect("key.pem written");
    (cert.pem(), cert.der().to_vec())
}

/// `app` served over TLS from `cert.pem` and `key.pem` in `dir`.
fn with_tls(mut app: Value, dir: &Path) -> Value {
    app["tls"] = json!({
        "certFile": dir.join("cert.pem"),
        "keyFile": dir.join("key.pem"),
    });
    app
}

/// An HTTPS client that trusts only `cert_pem` and reaches `localhost` at 127.0.0.1:`port`.
/// `http1_only` offers only `http/1.1` by ALPN; otherwise `h2` is offered first.
fn https(cert_pem: &str, port: u16, http1_only: bool) -> reqwest::blocking::Client {
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("a PEM certificate");
    let builder = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(20));
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().expect("an HTTPS client")
}

/// The DER certificate a fresh TLS connection to 127.0.0.1:`port` is served, verification off.
fn served_certificate(port: u16) -> Option<Vec<u8>> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(Duration::from_secs(20))
        .build()
        .ok()?;
    let response = client
        .get(format!("https://127.0.0.1:{port}/"))
        .send()
        .ok()?;
    let info = response.extensions().get::<reqwest::tls::TlsInfo>()?;
    info.peer_certificate().map(<[u8]>::to_vec)
}

/// A raw connection to the proxy's listener with a read timeout of `read_timeout`.
fn raw(port: u16, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("the proxy accepts");
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("a read timeout");
    stream
}

/// Reads until the proxy closes the connection (or resets it); what it sent before that.
/// Fails if it is still open after 20 s without a byte.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    // Bounded: each round reads at least a byte or ends; 4 MiB is far beyond any answer here.
    while received.len() < 4 << 20 {
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return received,
            Err(e) => panic!(
                "the connection is still open ({e}) after {} bytes: {:?}",
                received.len(),
                String::from_utf8_lossy(&received)
            ),
        }
    }
    panic!("the proxy kept sending");
}

#[test]
fn http2_prior_knowledge_requests_are_split_between_revisions_by_weight() {
    let (_v1, v1_port) = demo_app("v1");
    let (_v2, v2_port) = demo_app("v2");
    let proxy = Proxy::start(&[]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[
        ("v1", 9000, &[v1_port]), ("v2", 1000, &[v2_port])])]});
    let (status, body) = proxy.put_config(&config);
    assert_eq!(status, 200, "{body}");

    let client = h2c();
    let n = 1000u32;
    let mut v2 = 0u32;
    for _ in 0..n {
        let response = client
            .get(format!("http://127.0.0.1:{listen}/"))
            .send()
            .expect("the proxy answers over HTTP/2");
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), 200);
        match response.text().expect("a body").trim() {
            "v1" => {}
            "v2" => v2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let (p, n) = (0.1, f64::from(n));
    let sigma = (n * p * (1.0 - p)).sqrt();
    assert!(
        (f64::from(v2) - n * p).abs() <= 4.0 * sigma,
        "{v2} of {n} HTTP/2 requests went to v2; expected {} ± {:.0}",
        n * p,
        4.0 * sigma
    );
    let metrics = proxy.get_admin("/admin/v1/metrics");
    let counted: u64 = metrics["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .map(|r| r["metrics"]["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, 1000, "{metrics}");
}

#[test]
fn https_serves_http2_and_http1_by_alpn_and_the_upstream_sees_host_and_https() {
    let certs = tempfile::tempdir().expect("a directory for the certificate");
    let (cert_pem, _) = certificate(certs.path());
    let (upstream, heads) = recording_upstream("v1");
    let proxy = Proxy::start(&[]);
    let listen = free_port();
    let web = with_tls(
        app("web", listen, &[("v1", 10000, &[upstream])]),
        certs.path(),
    );
    let (status, body) = proxy.put_config(&json!({"version": 1, "apps": [web]}));
    assert_eq!(status, 200, "{body}");

    for (http1_only, version) in [(false, Version::HTTP_2), (true, Version::HTTP_11)] {
        let response = https(&cert_pem, listen, http1_only)
            .get(format!("https://localhost:{listen}/cart?item=1"))
            .header("cookie", "session=abc")
            .send()
            .unwrap_or_else(|e| panic!("HTTPS ({version:?}) through the proxy: {e}"));
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().expect("a body"), "v1");
    }

    let heads = heads.lock().expect("not poisoned").clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        // Both reach the instance as HTTP/1.1, the HTTP/2 one with `Host` from `:authority`.
        assert_eq!(head[0], "get /cart?item=1 http/1.1", "{head:?}");
        assert!(
            head.contains(&format!("host: localhost:{listen}")),
            "{head:?}"
        );
        assert!(
            head.contains(&"x-forwarded-proto: https".to_string()),
            "{head:?}"
        );
        assert!(
            head.contains(&"cookie: session=abc".to_string()),
            "{head:?}"
        );
    }
    // And cleartext is not served on a TLS listener.
    let plain = http().get(format!("http://127.0.0.1:{listen}/")).send();
    assert!(plain.is_err(), "cleartext got an answer: {plain:?}");
}

#[test]
fn unusable_tls_files_get_400_naming_app_and_field_and_renewed_files_are_served_on_reload() {
    let certs = tempfile::tempdir().expect("a directory for the certificate");
    let (_, first) = certificate(certs.path());
    let (upstream, _) = recording_upstream("v1");
    let proxy = Proxy::start(&[]);
    let listen = free_port();
    let web = with_tls(
        app("web", listen, &[("v1", 10000, &[upstream])]),
        certs.path(),
    );
    let (status, body) = proxy.put_config(&json!({"version": 1, "apps": [web.clone()]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_certificate(listen).as_ref(), Some(&first));

    // A key file that does not exist.
    let mut missing_key = web.clone();
    missing_key["tls"]["keyFile"] = json!(certs.path().join("nowhere.pem"));
    let (status, body) = proxy.put_config(&json!({"version": 2, "apps": [missing_key]}));
    assert_eq!(status, 400, "{body}");
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("app `web`, tls.keyFile") && errors.contains("nowhere.pem"),
        "{body}"
    );
    // A certificate file that holds no certificate.
    let garbage = certs.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("garbage written");
    let mut bad_cert = web.clone();
    bad_cert["tls"]["certFile"] = json!(garbage);
    let (status, body) = proxy.put_config(&json!({"version": 3, "apps": [bad_cert]}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"]
            .to_string()
            .contains("app `web`, tls.certFile"),
        "{body}"
    );
    // The old configuration and certificate still serve.
    assert_eq!(proxy.get_admin("/admin/v1/config")["version"], 1);
    assert_eq!(served_certificate(listen).as_ref(), Some(&first));

    // Renewed files at the same paths, and the same configuration pushed again.
    let (_, second) = certificate(certs.path());
    assert_ne!(first, second);
    let (status, body) = proxy.put_config(&json!({"version": 4, "apps": [web]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_certificate(listen).as_ref(), Some(&second));
}

#[test]
fn oversized_request_heads_get_431_or_a_closed_connection_and_the_proxy_keeps_serving() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = Proxy::start(&["--max-header-bytes", "16384"]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);
    let big = "a".repeat(100 * 1024);

    // HTTP/1.1: a 100 KiB header. The proxy may close before the client has written it all.
    let mut stream = raw(listen, Duration::from_secs(20));
    let head = format!("GET / HTTP/1.1\r\nhost: web\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "expected 431 or a closed connection, got {answer:?}"
    );

    // HTTP/2: the same header on a stream.
    let client = h2c();
    let oversized = client
        .get(format!("http://127.0.0.1:{listen}/"))
        .header("x-big", &big)
        .send();
    if let Ok(response) = &oversized {
        assert_eq!(response.status(), 431, "{response:?}");
    }

    // Others are still served, over both protocols.
    let response = h2c()
        .get(format!("http://127.0.0.1:{listen}/"))
        .send()
        .expect("HTTP/2 still served");
    assert_eq!(response.text().expect("a body").trim(), "v1");
    let response = http()
        .get(format!("http://127.0.0.1:{listen}/"))
        .header("x-small", "a".repeat(1024))
        .send()
        .expect("HTTP/1.1 still served");
    assert_eq!(response.text().expect("a body").trim(), "v1");
}

#[test]
fn a_client_sending_its_head_one_byte_a_second_is_disconnected_at_the_header_read_timeout() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = Proxy::start(&["--header-read-timeout", "3s"]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    // Far longer than the timeout in seconds: only the proxy can end this exchange.
    let head = format!(
        "GET / HTTP/1.1\r\nhost: web\r\nx-slow: {}\r\n\r\n",
        "s".repeat(60)
    );
    let mut stream = raw(listen, Duration::from_secs(1));
    let mut sent = 0;
    let mut closed = false;
    for byte in head.as_bytes() {
        if stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        // Waiting up to a second for the proxy's answer paces the client at a byte a second.
        let mut buffer = [0u8; 1024];
        match stream.read(&mut buffer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => panic!(
                "the proxy answered an incomplete head: {:?}",
                String::from_utf8_lossy(&buffer[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "still connected after sending all {sent} bytes of the head"
    );
    assert!(sent < head.len());

    let response = http()
        .get(format!("http://127.0.0.1:{listen}/"))
        .send()
        .expect("others are still served");
    assert_eq!(response.text().expect("a body").trim(), "v1");
}

#[test]
fn a_malformed_request_line_gets_400_and_the_proxy_keeps_serving() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = Proxy::start(&[]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    for garbage in [
        &b"THIS IS NOT A REQUEST LINE\r\n\r\n"[..],
        b"GET /\x01path HTTP/1.1\r\nhost: web\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon in this header\r\n\r\n",
    ] {
        let mut stream = raw(listen, Duration::from_secs(20));
        stream.write_all(garbage).expect("the proxy reads");
        let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert_eq!(
        metrics["revisions"][0]["metrics"]["requests"], 0,
        "{metrics}"
    );
    let response = http()
        .get(format!("http://127.0.0.1:{listen}/"))
        .send()
        .expect("the proxy still serves");
    assert_eq!(response.text().expect("a body").trim(), "v1");
}

/// The HTTP/2 frames in `bytes` as (type, flags, payload), up to the last whole one.
fn frames(bytes: &[u8]) -> Vec<(u8, u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + length {
            break;
        }
        out.push((rest[3], rest[4], &rest[9..9 + length]));
        rest = &rest[9 + length..];
    }
    out
}

/// The client preface and an empty SETTINGS frame.
const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A HEADERS frame on stream 1 for `GET http://{authority}/`, ending the stream, with the
/// header block in HPACK without Huffman coding.
fn h2_get(authority: &str) -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table 2, 6, 4), then :authority as a literal
    // without indexing on static name 1.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let length = block.len() as u32;
    let mut frame = length.to_be_bytes()[1..].to_vec();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    frame.extend_from_slice(&[0x1, 0x5, 0, 0, 0, 1]);
    frame.extend_from_slice(&block);
    frame
}

#[test]
fn connections_without_a_request_are_closed_at_the_header_read_timeout() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = Proxy::start(&[
        "--header-read-timeout",
        "1s",
        "--max-concurrent-streams",
        "7",
        "--max-header-bytes",
        "20000",
    ]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    // A client that connects and says nothing.
    let mut silent = raw(listen, Duration::from_secs(20));
    assert_eq!(read_until_closed(&mut silent), b"");

    // An HTTP/2 client that sends the preface and its settings, and then no request: the
    // proxy's settings carry the configured limits, and GOAWAY ends the connection.
    let mut stalled = raw(listen, Duration::from_secs(20));
    stalled.write_all(H2_START).expect("the proxy reads");
    let received = read_until_closed(&mut stalled);
    let frames = frames(&received);
    // The server's own SETTINGS (type 4, not an ACK) come first.
    let Some(&(0x4, 0, payload)) = frames.first() else {
        panic!("the first frame is not the server's SETTINGS: {frames:?}");
    };
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|s| {
            let id = u16::from_be_bytes([s[0], s[1]]);
            (id, u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) and SETTINGS_MAX_HEADER_LIST_SIZE (6).
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    assert!(settings.contains(&(0x6, 20000)), "{settings:?}");
    assert!(
        frames.iter().any(|(kind, _, _)| *kind == 0x7),
        "no GOAWAY among {frames:?}"
    );

    wait_until("the proxy still serving", || {
        let response = http()
            .get(format!("http://127.0.0.1:{listen}/"))
            .send()
            .ok()?;
        (response.text().ok()?.trim() == "v1").then_some(())
    });
}

#[test]
fn an_http2_connection_idle_after_its_request_is_closed_at_the_idle_timeout() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = Proxy::start(&["--idle-timeout", "1s", "--header-read-timeout", "1s"]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let mut stream = raw(listen, Duration::from_secs(20));
    stream.write_all(H2_START).expect("the proxy reads");
    stream
        .write_all(&h2_get(&format!("127.0.0.1:{listen}")))
        .expect("the proxy reads");
    // The client never sends anything again, not even the acknowledgement of a PING.
    let received = read_until_closed(&mut stream);
    let frames = frames(&received);
    let answered = frames
        .iter()
        .any(|(kind, _, payload)| *kind == 0x0 && payload.starts_with(b"v1"));
    assert!(answered, "no answer from v1 among {frames:?}");
    let goaway = frames.iter().position(|(kind, _, _)| *kind == 0x7);
    let data = frames.iter().position(|(kind, _, _)| *kind == 0x0);
    assert!(goaway > data, "no GOAWAY after the answer among {frames:?}");
}

/// An upstream on 127.0.0.1 that answers the n-th request it reads, on whatever connection,
/// with the n-th of `answers` (the last one once they run out), written as raw bytes; with
/// `close_after`, each connection answers one request and closes when the next one arrives,
/// without answering it or saying it would close, as an instance whose keep-alive timeout
/// races a request does. It always closes after a final answer framed by neither
/// `Content-Length` nor chunks. Request
/// bodies are read by `Content-Length`. Its threads end when the test process does.
/// A proxy serving one application, `web`, on a port of its own with one endpoint at
/// 127.0.0.1:`upstream`, started with `args`; returns the proxy and the port.
fn proxy_in_front_of(upstream: u16, args: &[&str]) -> (Proxy, u16) {
    let proxy = Proxy::start(args);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[upstream])])]});
    assert_eq!(proxy.put_config(&config).0, 200);
    (proxy, listen)
}

/// A plain HTTP/1.1 request for `web`.
const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: web\r\n\r\n";

fn scripted_upstream(answers: Vec<&'static str>, close_after: bool) -> u16 {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("an upstream port");
    let port = listener.local_addr().expect("bound").port();
    let served = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(answers);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (served, answers) = (Arc::clone(&served), Arc::clone(&answers));
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let line = line.trim_end().to_ascii_lowercase();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(n) = line.strip_prefix("content-length: ") {
                            length = n.parse().expect("a length");
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = served.fetch_add(1, Ordering::SeqCst);
                    let answer = answers[n.min(answers.len() - 1)];
                    // A final answer framed by neither length nor chunks ends at the close.
                    let framed = answer.starts_with("HTTP/1.1 1")
                        || ["content-length", "chunked"]
                            .iter()
                            .any(|f| answer.to_ascii_lowercase().contains(f));
                    if reader.get_mut().write_all(answer.as_bytes()).is_err() || !framed {
                        return;
                    }
                    if close_after {
                        // The next request arrives and the connection closes unanswered.
                        let _ = reader.read_line(&mut String::new());
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads one answer from `stream` into `pending` and returns its head and body bytes (the
/// chunked framing kept). The body is framed by `Content-Length`, chunked (up to the empty
/// line after the last chunk), absent for `head_request`, or runs to the connection's close.
fn read_answer(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_request: bool,
) -> (String, Vec<u8>) {
    let mut buffer = [0u8; 4096];
    let mut fill = |pending: &mut Vec<u8>| -> bool {
        match stream.read(&mut buffer) {
            Ok(0) => false,
            Ok(n) => {
                pending.extend_from_slice(&buffer[..n]);
                true
            }
            Err(e) => panic!(
                "no answer ({e}) after {:?}",
                String::from_utf8_lossy(pending)
            ),
        }
    };
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(
            fill(pending),
            "closed inside a head: {:?}",
            String::from_utf8_lossy(pending)
        );
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    pending.drain(..head_end);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|n| n.trim().parse::<usize>().expect("a length"));
    let end = if head_request || head.starts_with("http/1.1 1") {
        0
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = pending.windows(7).position(|w| w == b"\r\n0\r\n\r\n") {
                break i + 7;
            }
            assert!(fill(pending), "closed inside a chunked body");
        }
    } else if let Some(length) = length {
        while pending.len() < length {
            assert!(fill(pending), "closed inside a body");
        }
        length
    } else {
        while fill(pending) {}
        pending.len()
    };
    let body = pending.drain(..end).collect();
    (head, body)
}

/// A raw HTTP/1.1 connection to the proxy and what it has received but not yet read.
struct RawClient {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl RawClient {
    fn new(port: u16) -> RawClient {
        RawClient {
            stream: raw(port, Duration::from_secs(20)),
            pending: Vec::new(),
        }
    }

    /// Sends `request` and reads one answer (see [`read_answer`]).
    fn ask(&mut self, request: &[u8], head_request: bool) -> (String, Vec<u8>) {
        self.stream.write_all(request).expect("sent");
        self.answer(head_request)
    }

    /// Reads the next answer (see [`read_answer`]).
    fn answer(&mut self, head_request: bool) -> (String, Vec<u8>) {
        read_answer(&mut self.stream, &mut self.pending, head_request)
    }
}

#[test]
fn answers_in_every_framing_reach_a_kept_alive_client_intact_and_in_order() {
    let upstream = scripted_upstream(
        vec![
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-kept: 1\r\ncontent-length: 4\r\n\r\nkept",
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nfinal",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo",
            "HTTP/1.1 200 OK\r\n\r\nuntil the close",
        ],
        false,
    );
    let (_proxy, listen) = proxy_in_front_of(upstream, &[]);

    let mut client = RawClient::new(listen);
    let get = GET;

    let (head, body) = client.ask(get, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");

    let (head, body) = client.ask(get, false);
    assert!(head.contains("x-kept: 1"), "{head}");
    for hop in ["x-hop", "keep-alive", "connection"] {
        assert!(!head.contains(hop), "{hop} reached the client: {head}");
    }
    assert_eq!(body, b"kept");

    let (head, _) = client.ask(get, false);
    assert!(
        head.starts_with("http/1.1 103") && head.contains("link: </a.css>"),
        "{head}"
    );
    let (head, body) = client.answer(false);
    assert!(head.starts_with("http/1.1 201"), "{head}");
    assert_eq!(body, b"final");

    let (head, body) = client.ask(b"HEAD / HTTP/1.1\r\nhost: web\r\n\r\n", true);
    assert!(head.contains("content-length: 5"), "{head}");
    assert!(body.is_empty());

    // Two requests in one write (pipelined) are answered in order.
    assert_eq!(client.ask(&[get, get].concat(), false).1, b"one");
    assert_eq!(client.answer(false).1, b"two");

    // A body that runs to the upstream's close ends the client's connection with it.
    let (head, body) = client.ask(get, false);
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, b"until the close");
}

#[test]
fn an_instance_that_closes_kept_alive_connections_as_requests_arrive_fails_no_request() {
    // Every pooled connection is closed by the instance when it is used again, after the
    // request was sent: the request must go again on another connection.
    let upstream = scripted_upstream(vec!["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], true);
    let (proxy, listen) = proxy_in_front_of(upstream, &[]);
    let client = http();
    for i in 0..200 {
        let response = client
            .get(format!("http://127.0.0.1:{listen}/"))
            .send()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().expect("a body"), "ok");
    }
    let metrics = proxy.get_admin("/admin/v1/metrics");
    let counted = &metrics["revisions"][0]["metrics"];
    assert_eq!(counted["requests"], 200, "{metrics}");
    assert_eq!(counted["connectErrors"], 0, "{metrics}");
}

#[test]
fn a_connection_moves_to_the_full_path_for_a_chunked_body_and_keeps_being_served() {
    let (_v1, v1_port) = demo_app("v1");
    let (proxy, listen) = proxy_in_front_of(v1_port, &[]);
    let mut client = RawClient::new(listen);
    let get = GET;
    let (head, body) = client.ask(get, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(String::from_utf8_lossy(&body).trim(), "v1");
    // A chunked request body, which only hyper's path streams, then plain requests again,
    // all three in one write.
    let post =
        b"POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    for i in 0..3 {
        let (head, _) = if i == 0 {
            client.ask(&[&post[..], get, get].concat(), false)
        } else {
            client.answer(false)
        };
        assert!(head.starts_with("http/1.1 "), "{head}");
        assert!(!head.starts_with("http/1.1 5"), "{head}");
    }
    let (_, body) = client.ask(get, false);
    assert_eq!(String::from_utf8_lossy(&body).trim(), "v1");
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert_eq!(
        metrics["revisions"][0]["metrics"]["requests"], 5,
        "{metrics}"
    );
}

#[test]
fn an_answer_whose_chunked_framing_breaks_closes_the_clients_connection() {
    let upstream = scripted_upstream(
        vec!["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX"],
        false,
    );
    // Idle kept-alive connections last longer than the test waits, so only the close that
    // ends such an answer ends the connection.
    let (_proxy, listen) = proxy_in_front_of(upstream, &["--header-read-timeout", "60s"]);
    let mut stream = raw(listen, Duration::from_secs(20));
    stream.write_all(GET).expect("sent");
    // Only a close can tell the client the body ended.
    let received = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
}

#[test]
fn an_interim_answer_followed_by_silence_gets_504_at_the_request_timeout() {
    let upstream = scripted_upstream(vec!["HTTP/1.1 103 Early Hints\r\n\r\n"], false);
    let (proxy, listen) = proxy_in_front_of(upstream, &["--request-timeout", "1s"]);
    let mut stream = raw(listen, Duration::from_secs(20));
    stream.write_all(GET).expect("sent");
    let received = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
    assert!(
        received.starts_with("HTTP/1.1 103") && received.contains("HTTP/1.1 504"),
        "{received}"
    );
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert_eq!(
        metrics["revisions"][0]["metrics"]["timeouts"], 1,
        "{metrics}"
    );
}

#[test]
fn a_client_leaving_during_a_stalled_answer_body_frees_its_endpoint() {
    // 100 bytes announced, 7 sent, then nothing.
    let upstream = scripted_upstream(
        vec!["HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"],
        false,
    );
    let (proxy, listen) = proxy_in_front_of(upstream, &[]);
    let in_flight = || proxy.get_admin("/admin/v1/endpoints")["endpoints"][0]["inFlight"].as_u64();
    let mut client = RawClient::new(listen);
    client.stream.write_all(GET).expect("sent");
    let mut first = [0u8; 1];
    client
        .stream
        .read_exact(&mut first)
        .expect("the answer begins");
    assert_eq!(in_flight(), Some(1));
    drop(client);
    wait_until("the endpoint's in-flight count back at 0", || {
        (in_flight() == Some(0)).then_some(())
    });
}

#[test]
fn an_instance_answering_before_the_whole_body_has_its_answer_reach_the_client() {
    // Answers 413 as soon as it has a request head, reads no body, and closes its side.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("an upstream port");
    let upstream = listener.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
                let _ = stream.write_all(answer);
                let _ = stream.shutdown(std::net::Shutdown::Write);
                // Drained, so the close is a FIN and not a reset.
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            });
        }
    });
    let (proxy, listen) = proxy_in_front_of(upstream, &["--request-timeout", "5s"]);
    let mut stream = raw(listen, Duration::from_secs(20));
    // 60,000 bytes announced, ten sent: the rest would only follow an interim 100.
    let head = b"POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 60000\r\n\r\n0123456789";
    stream.write_all(head).expect("sent");
    let received = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
    assert!(
        received.starts_with("HTTP/1.1 413") && received.ends_with("big!"),
        "{received}"
    );
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert_eq!(
        metrics["revisions"][0]["metrics"]["timeouts"], 0,
        "{metrics}"
    );
}
