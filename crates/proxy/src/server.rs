//! The data path: listeners per application, forwarding over pooled upstream connections, and
//! the atomic swap of a whole [`RouteTable`] on reload.
//!
//! A [`Proxy`] holds the table being served as an `Arc` behind a lock that is only held to
//! clone the `Arc`: each request takes one table at its start and uses it to the end, so it sees
//! the old routing or the new, never a mixture. Per-endpoint state (requests in flight, passive
//! health) lives outside the table, keyed by endpoint address, so it survives reloads.
//!
//! A reload is two steps so that the caller can persist the configuration in between:
//! [`Proxy::prepare`] compiles it and binds the listeners of new applications (failing, with the
//! old configuration untouched, if either fails), [`Proxy::commit`] swaps the table in, starts
//! the new listeners and stops those of removed applications.
//!
//! **Workers.** Client connections are served by one or more tokio runtimes, the workers
//! ([`Proxy::with_workers`]; `gauntlet proxy` runs one single-threaded runtime per core). Each
//! worker has its own listener on every application's address (`SO_REUSEPORT` when there are
//! several, so the kernel spreads connections) and its own pool of upstream connections, so a
//! request is served start to end on the thread that accepted its connection. What must be
//! seen by all (the served table, endpoint state, metrics) is shared and touched with atomics,
//! apart from the lock that clones the table's `Arc` and endpoint health's lock, taken only
//! around connection failures. A reload binds a new application's listener in every worker
//! and stops a removed one's in every worker.
//!
//! **Client connections.** Each application's listener serves HTTP/1.1 and HTTP/2. In
//! cleartext, the connection's first bytes are peeked (not read) and HTTP/2's connection
//! preface means HTTP/2 with prior knowledge (h2c); anything else is HTTP/1.1, read as it
//! would be without the check (one `peek` per connection is the whole cost) by the lean
//! HTTP/1.1 path (see `fast`), which forwards plain requests itself and hands the connection
//! to hyper's HTTP/1.1 server at the first request that needs more (faults, mirroring,
//! upgrades, chunked request bodies, malformed or oversized heads, and so on); both paths
//! behave alike, the lean one costs half the CPU. An application with `tls` is served over
//! TLS only (rustls, see [`tls`]), and ALPN picks HTTP/2 (`h2`) or HTTP/1.1; the acceptor is taken from
//! the served table when the connection arrives, so a reload with renewed certificate files
//! applies to new connections. hyper-util's `auto` builder is not used because its preface
//! detection has no deadline: a client could hold a connection by sending nothing.
//!
//! The limits of [`Options`]: the TLS handshake, the first bytes, each HTTP/1.1 request head
//! and an HTTP/2 connection's first request must each arrive within `header_read_timeout`
//! (the HTTP/1.1 timer also runs while a kept-alive connection waits for its next request, so
//! it doubles as HTTP/1.1's idle timeout); an HTTP/2 connection with no stream open for
//! `idle_timeout` is shut down with GOAWAY (and dropped if the client does not acknowledge
//! within `header_read_timeout`), and PINGs find dead peers while streams are open. A request
//! head over `max_header_bytes` is answered `431` (HTTP/1.1 closes the connection after it; an
//! HTTP/2 header list far over the limit costs the client its connection). HTTP/2 clients may
//! open `max_concurrent_streams` streams per connection; the reset fault resets the stream.
//!
//! Instances are always spoken to in HTTP/1.1, over keep-alive connections pooled per worker
//! and endpoint (see `upstream`). An HTTP/2 request is translated: `Host` is set
//! from `:authority` (as it is for an HTTP/1.1 request in absolute form), split `Cookie`
//! fields are joined into one, and the answer loses `Transfer-Encoding` and every other
//! connection-specific header. `X-Forwarded-Proto` says `https` for requests that came over TLS.
//!
//! One request on hyper's path ([`Proxy::forward`]): route with [`RouteTable::pick`], apply a
//! fault from [`faults::fault_for`], choose an endpoint with [`balance::choose`], send the request with its
//! body streamed, retry once on another endpoint when a connection is refused (only for a
//! request without a body, which can be sent again), answer `502` when no endpoint can be
//! reached and `504` when response headers do not arrive within the request timeout, and
//! stream the response body back. Metrics are recorded on the revision's handle, resolved when
//! the table was compiled.
//!
//! **Mirroring.** When the pick names a mirror revision, a copy of the request goes to one of
//! its endpoints (chosen by the same power of two choices) in a spawned task whose response is
//! read and discarded. The primary request is never delayed or failed by it. Only requests whose
//! body is empty or has a `Content-Length` of at most [`MIRROR_BODY_LIMIT`] are mirrored: the
//! primary body still streams, and the copy is collected from its frames as they pass (reference
//! counted `Bytes`, no extra copy) and sent when the primary body has been read to its end; if
//! the upstream never reads it, or the client aborts it, the copy is dropped. Chunked bodies,
//! larger bodies and upgrade requests are not mirrored. Mirrored requests are **not** counted in
//! the mirror revision's metrics (neither requests, responses nor errors), so shadow traffic
//! never mixes with the traffic a rollout analysis reads; they do count as in flight on the
//! endpoint (for balancing) and a refused connection does feed its passive health. At most
//! [`MIRRORS_IN_FLIGHT`] copies are outstanding; beyond that, requests are not mirrored.
//!
//! **Upgrades.** A request with `Connection: upgrade` and an `Upgrade` header keeps those two
//! headers when forwarded (all other hop-by-hop headers are stripped). If the upstream answers
//! `101`, the proxy answers `101` with the upstream's `Upgrade` and then, in a spawned task,
//! splices the two upgraded connections with `tokio::io::copy_bidirectional` until either side
//! closes; the tunnel counts as in flight on its endpoint for its whole life. Any other answer is
//! forwarded as an ordinary response. Tunnels have no idle timeout of their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::balance::{self, EndpointState, HealthPolicy};
use crate::config::ProxyConfig;
use crate::draw::mix;
use crate::faults::{self, FaultAction};
use crate::metrics::RevisionMetrics;
use crate::route::{cookie_value, RequestView, RouteTable};
use crate::{tls, InvalidConfig};

mod caller;
mod fast;
mod io;
mod upstream;

use upstream::SendError;

/// The body of requests sent upstream and responses sent to clients. A concrete type over the
/// few bodies the data path forwards rather than a boxed trait object, so forwarding a request
/// allocates no body boxes and every poll is a direct call.
pub struct ProxyBody(BodyKind);

enum BodyKind {
    /// Proxy-made answers and requests without a body.
    Empty,
    /// A mirrored request's collected body; `None` once sent.
    Full(Option<Bytes>),
    /// A client's request body, streamed upstream as it arrives.
    Incoming(Incoming),
    /// A request body streamed upstream while a copy is collected for a mirror.
    Tee(Tee),
    /// An upstream's response body, streamed to the client.
    Tracked(Tracked),
}

impl ProxyBody {
    fn empty() -> ProxyBody {
        ProxyBody(BodyKind::Empty)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Every variant is `Unpin`, so the enum is too and no projection is needed.
        match &mut self.get_mut().0 {
            BodyKind::Empty => Poll::Ready(None),
            BodyKind::Full(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            BodyKind::Incoming(body) => std::pin::Pin::new(body).poll_frame(cx),
            BodyKind::Tee(body) => std::pin::Pin::new(body).poll_frame(cx),
            BodyKind::Tracked(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Empty => true,
            BodyKind::Full(data) => data.is_none(),
            BodyKind::Incoming(body) => body.is_end_stream(),
            BodyKind::Tee(body) => body.is_end_stream(),
            BodyKind::Tracked(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Empty => SizeHint::with_exact(0),
            BodyKind::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            BodyKind::Incoming(body) => body.size_hint(),
            BodyKind::Tee(body) => body.size_hint(),
            BodyKind::Tracked(body) => body.size_hint(),
        }
    }
}

/// The largest request body (by `Content-Length`) that is copied to a mirror.
pub const MIRROR_BODY_LIMIT: u64 = 64 * 1024;

/// The most mirrored copies outstanding at once; requests beyond it are not mirrored.
pub const MIRRORS_IN_FLIGHT: usize = 1024;

/// How often an HTTP/2 client connection is pinged, to find peers that are gone while streams
/// are open; one that does not answer within [`H2_PING_TIMEOUT`] is closed.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// See [`H2_PING_INTERVAL`].
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection preface every HTTP/2 client with prior knowledge starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's own HTTP/1 read buffer limit, kept unless the header limit needs more.
const H1_READ_BUFFER: usize = 8192 + 4096 * 100;

/// Settings of the data path that do not come from the controller's configuration. The
/// defaults suit production; `gauntlet proxy` exposes the important ones as flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long an upstream has to answer with response headers before the proxy answers 504.
    pub request_timeout: Duration,
    /// How long an upstream connection attempt may take.
    pub connect_timeout: Duration,
    /// Slow-client protection: how long a client has for each step that precedes a request,
    /// namely the TLS handshake, its first bytes (which tell HTTP/1.1 from HTTP/2), each
    /// HTTP/1.1 request head, and an HTTP/2 connection's first request. HTTP/1.1 counts the
    /// wait for the next request on a kept-alive connection too, so this is also its idle
    /// timeout.
    pub header_read_timeout: Duration,
    /// How long an HTTP/2 client connection may have no stream open before it is closed
    /// (with GOAWAY).
    pub idle_timeout: Duration,
    /// The largest request head accepted: HTTP/1.1's request line and headers in bytes, and
    /// HTTP/2's header list size (`SETTINGS_MAX_HEADER_LIST_SIZE`). Larger ones get `431`
    /// (or, when the client keeps sending, a closed connection).
    pub max_header_bytes: usize,
    /// The most streams (requests) an HTTP/2 client may have open on one connection.
    pub max_concurrent_streams: u32,
    pub health: HealthPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 128,
            health: HealthPolicy::default(),
        }
    }
}

/// Why a configuration was not applied; the previous one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("cannot listen on {addr} for app `{app}`: {source}")]
    Bind {
        app: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// One endpoint's state shared by every worker: requests in flight (an atomic, touched twice
/// per request) and passive health (behind a lock taken only when a connection fails, or on
/// the next success after one).
#[derive(Debug, Default)]
struct Endpoint {
    in_flight: AtomicU32,
    /// Set while `health` may hold failures, so a success need not take the lock otherwise.
    troubled: AtomicBool,
    health: Mutex<EndpointState>,
}

type EndpointCell = Arc<Endpoint>;

impl Endpoint {
    /// What the balancer needs to know, with `draining` from the configuration.
    fn state(&self, draining: bool) -> EndpointState {
        let mut state = if self.troubled.load(Ordering::Relaxed) {
            lock(&self.health).clone()
        } else {
            EndpointState::default()
        };
        state.in_flight = self.in_flight.load(Ordering::Relaxed);
        state.draining = draining;
        state
    }

    fn record_success(&self) {
        if self.troubled.load(Ordering::Relaxed) {
            let mut health = lock(&self.health);
            health.record_success();
            self.troubled.store(false, Ordering::Relaxed);
        }
    }

    fn record_connect_failure(&self, policy: &HealthPolicy, now_ms: u64) {
        let mut health = lock(&self.health);
        self.troubled.store(true, Ordering::Relaxed);
        health.record_connect_failure(policy, now_ms);
    }
}

/// A compiled table with what the data path needs beside it, swapped in as one.
struct Served {
    config: ProxyConfig,
    table: RouteTable,
    /// `cells[app][revision][endpoint]`: the shared state of each endpoint of the table.
    cells: Vec<Vec<Vec<EndpointCell>>>,
    /// `tls[app]`: the acceptor of an application served over TLS.
    tls: Vec<Option<TlsAcceptor>>,
}

struct Inner {
    served: RwLock<Arc<Served>>,
    /// Every endpoint of the served table by address, so state carries over reloads.
    endpoints: Mutex<HashMap<SocketAddr, EndpointCell>>,
    /// The accept loops of each served address, one per worker.
    listeners: Mutex<HashMap<SocketAddr, Vec<JoinHandle<()>>>>,
    /// Serialises reloads from `prepare` to `commit`.
    reload: Arc<AsyncMutex<()>>,
    /// The runtimes that serve client connections, each with listeners of its own.
    workers: Vec<Handle>,
    pools: Arc<upstream::Pools>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    options: Options,
    seed: u64,
    sequence: AtomicU64,
    /// Mirrored copies outstanding, bounded by [`MIRRORS_IN_FLIGHT`].
    mirrors: Arc<AtomicUsize>,
    /// Woken at each configuration committed: requests held by a black-hole fault look again.
    changed: tokio::sync::Notify,
}

/// One endpoint's load as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointLoad {
    pub app: String,
    pub revision: String,
    pub addr: SocketAddr,
    pub draining: bool,
    pub in_flight: u32,
    /// Passive health has ejected it for now.
    pub ejected: bool,
}

/// The running data plane. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// A compiled configuration with its new listeners bound, ready to [`Proxy::commit`]. Dropping
/// it abandons the reload and closes the listeners it bound.
pub struct Prepared {
    config: ProxyConfig,
    table: RouteTable,
    tls: Vec<Option<TlsAcceptor>>,
    /// Per new address, one listener per worker.
    listeners: Vec<(SocketAddr, Vec<TcpListener>)>,
    _reload: OwnedMutexGuard<()>,
}

impl Prepared {
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }
}

impl Proxy {
    /// A proxy serving nothing until a configuration is committed, whose connections are
    /// served on the current tokio runtime. Must be called inside a tokio runtime.
    pub fn new(options: Options) -> Proxy {
        Proxy::with_workers(options, vec![Handle::current()])
    }

    /// A proxy whose client connections are served by `workers`: each listens on every
    /// application's address (with `SO_REUSEPORT` when there are several, so the kernel spreads
    /// connections across them) and keeps its own pool of upstream connections. Typically
    /// one single-threaded runtime per core, like nginx's worker processes; routing tables,
    /// endpoint state and metrics are shared. An empty `workers` means the current runtime.
    pub fn with_workers(options: Options, workers: Vec<Handle>) -> Proxy {
        let workers = if workers.is_empty() {
            vec![Handle::current()]
        } else {
            workers
        };
        let pools = Arc::new(upstream::Pools::new(workers.len(), options.connect_timeout));
        for (index, worker) in workers.iter().enumerate() {
            worker.spawn(upstream::sweeper(Arc::downgrade(&pools), index));
        }
        let empty = ProxyConfig {
            version: 0,
            apps: Vec::new(),
        };
        let table = match RouteTable::compile(&empty, None) {
            Ok(table) => table,
            Err(_) => unreachable!("a configuration without applications is valid"),
        };
        let served = Served {
            config: empty,
            table,
            cells: Vec::new(),
            tls: Vec::new(),
        };
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_header_size(options.max_header_bytes)
            .max_buf_size(options.max_header_bytes.max(H1_READ_BUFFER));
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(options.max_concurrent_streams)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        Proxy {
            inner: Arc::new(Inner {
                served: RwLock::new(Arc::new(served)),
                endpoints: Mutex::new(HashMap::new()),
                listeners: Mutex::new(HashMap::new()),
                reload: Arc::new(AsyncMutex::new(())),
                workers,
                pools,
                http1,
                http2,
                options,
                seed,
                sequence: AtomicU64::new(0),
                mirrors: Arc::new(AtomicUsize::new(0)),
                changed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The configuration being served.
    pub fn config(&self) -> ProxyConfig {
        self.inner.current().config.clone()
    }

    /// The version of the configuration being served.
    pub fn version(&self) -> u64 {
        self.inner.current().table.version()
    }

    /// Calls `f` with every (application, revision, metrics) of the served table.
    pub fn with_metrics<T>(
        &self,
        f: impl FnOnce(u64, &[(&str, &str, &RevisionMetrics)]) -> T,
    ) -> T {
        let served = self.inner.current();
        f(served.table.version(), &served.table.metrics())
    }

    /// Every endpoint of the served configuration with its requests in flight (tunnels and
    /// mirrored copies included), in configuration order. The controller stops an instance only
    /// once its endpoint, marked draining, reports none.
    pub fn endpoint_loads(&self) -> Vec<EndpointLoad> {
        let served = self.inner.current();
        let now = unix_ms();
        let mut out = Vec::new();
        for (a, app) in served.config.apps.iter().enumerate() {
            for (r, revision) in app.revisions.iter().enumerate() {
                for (e, endpoint) in revision.endpoints.iter().enumerate() {
                    let Some(cell) = served
                        .cells
                        .get(a)
                        .and_then(|c| c.get(r))
                        .and_then(|c| c.get(e))
                    else {
                        continue;
                    };
                    let state = cell.state(endpoint.draining);
                    out.push(EndpointLoad {
                        app: app.name.clone(),
                        revision: revision.name.clone(),
                        addr: endpoint.addr,
                        draining: endpoint.draining,
                        in_flight: state.in_flight,
                        ejected: matches!(state.health(now), balance::Health::Ejected { .. }),
                    });
                }
            }
        }
        out
    }

    /// Compiles `config`, reads the TLS files it names and binds the listeners it adds. Waits
    /// for a reload in progress.
    pub async fn prepare(&self, config: ProxyConfig) -> Result<Prepared, ApplyError> {
        let guard = Arc::clone(&self.inner.reload).lock_owned().await;
        let table = RouteTable::compile(&config, Some(&self.inner.current().table))?;
        let mut acceptors = Vec::with_capacity(config.apps.len());
        let mut problems = Vec::new();
        for app in &config.apps {
            let acceptor = match &app.tls {
                Some(files) => match tls::acceptor(&app.name, files).await {
                    Ok(acceptor) => Some(acceptor),
                    Err(errors) => {
                        problems.extend(errors);
                        None
                    }
                },
                None => None,
            };
            acceptors.push(acceptor);
        }
        if !problems.is_empty() {
            return Err(InvalidConfig(problems).into());
        }
        let mut listeners = Vec::new();
        let reuse_port = self.inner.workers.len() > 1;
        for app in &config.apps {
            if lock(&self.inner.listeners).contains_key(&app.listen) {
                continue;
            }
            let mut bound = Vec::with_capacity(self.inner.workers.len());
            let mut addr = app.listen;
            for worker in &self.inner.workers {
                // Bound on the worker's runtime, whose I/O driver will serve it.
                let listener = worker
                    .spawn(bind(addr, reuse_port))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|source| ApplyError::Bind {
                        app: app.name.clone(),
                        addr: app.listen,
                        source,
                    })?;
                // With port 0, the other workers join the port the first one got.
                addr = listener.local_addr().unwrap_or(addr);
                bound.push(listener);
            }
            listeners.push((app.listen, bound));
        }
        Ok(Prepared {
            config,
            table,
            tls: acceptors,
            listeners,
            _reload: guard,
        })
    }

    /// Serves `prepared` from now on: swaps the table, starts new listeners, stops removed ones.
    pub fn commit(&self, prepared: Prepared) {
        let Prepared {
            config,
            table,
            tls,
            listeners,
            _reload,
        } = prepared;
        let cells = {
            let mut registry = lock(&self.inner.endpoints);
            let mut kept = HashMap::with_capacity(registry.len());
            let cells = table
                .apps()
                .iter()
                .map(|app| {
                    app.revisions()
                        .iter()
                        .map(|revision| {
                            revision
                                .endpoints()
                                .iter()
                                .map(|e| {
                                    let cell = registry.get(&e.addr).cloned().unwrap_or_default();
                                    kept.insert(e.addr, Arc::clone(&cell));
                                    cell
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect();
            *registry = kept;
            cells
        };
        let served = Arc::new(Served {
            config,
            table,
            cells,
            tls,
        });
        *self
            .inner
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::clone(&served);
        self.inner.changed.notify_waiters();
        let mut running = lock(&self.inner.listeners);
        for (addr, bound) in listeners {
            let tasks = self
                .inner
                .workers
                .iter()
                .zip(bound)
                .enumerate()
                .map(|(index, (worker, listener))| {
                    worker.spawn(self.clone().accept(addr, listener, index))
                })
                .collect();
            running.insert(addr, tasks);
        }
        running.retain(|addr, tasks| {
            let keep = served.table.app_index(*addr).is_some();
            if !keep {
                for task in tasks {
                    task.abort();
                }
            }
            keep
        });
        tracing::info!(
            version = served.table.version(),
            "proxy configuration applied"
        );
    }

    /// [`Proxy::prepare`] then [`Proxy::commit`].
    pub async fn apply(&self, config: ProxyConfig) -> Result<(), ApplyError> {
        let prepared = self.prepare(config).await?;
        self.commit(prepared);
        Ok(())
    }

    /// The addresses being listened on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        lock(&self.inner.listeners).keys().copied().collect()
    }

    async fn accept(self, listen: SocketAddr, listener: TcpListener, worker: usize) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving what is open.
                    tracing::warn!(%listen, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(self.clone().connection(listen, peer, stream, worker));
        }
    }

    /// Serves one client connection: TLS if the application has it (ALPN picks the
    /// protocol), otherwise HTTP/2 if it opens with the HTTP/2 preface, else HTTP/1.1.
    async fn connection(
        self,
        listen: SocketAddr,
        peer: SocketAddr,
        mut stream: TcpStream,
        worker: usize,
    ) {
        let deadline = self.inner.options.header_read_timeout;
        let acceptor = {
            let served = self.inner.current();
            served
                .table
                .app_index(listen)
                .and_then(|app| served.tls.get(app).cloned().flatten())
        };
        let mut client = ClientConn::new(listen, peer, worker);
        if listen.ip().is_unspecified() {
            // Which of the host's addresses the client reached (one getsockname), for
            // faults limited to callers; a specific listen address is the address.
            if let Ok(local) = stream.local_addr() {
                client.local = local;
            }
        }
        let Some(acceptor) = acceptor else {
            match tokio::time::timeout(deadline, sniff(&stream)).await {
                Ok(Ok(Protocol::Http2)) => {
                    self.serve_h2(TokioIo::new(io::Stream::new(stream)), client)
                        .await
                }
                Ok(Ok(Protocol::Http1)) => {
                    if let fast::Outcome::Handover(read) =
                        fast::serve(&self, &mut stream, &client).await
                    {
                        let stream = io::Rewind::new(read.freeze(), io::Stream::new(stream));
                        self.serve_h1(TokioIo::new(stream), client).await
                    }
                }
                Ok(Err(e)) => tracing::debug!(%listen, %peer, "client connection failed: {e}"),
                Err(_) => {
                    tracing::debug!(%listen, %peer, "no request within the header read timeout")
                }
            }
            return;
        };
        let stream = io::Stream::new(stream);
        let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%listen, %peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%listen, %peer, "no TLS handshake within the header read time");
                return;
            }
        };
        client.tls = true;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_h2(TokioIo::new(stream), client).await;
        } else {
            self.serve_h1(TokioIo::new(stream), client).await;
        }
    }

    async fn serve_h1<I>(self, io: TokioIo<I>, client: ClientConn)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // One reference count per request for both the proxy and the connection's details.
        let conn = Arc::new((self.clone(), client));
        let service = hyper::service::service_fn({
            let conn = Arc::clone(&conn);
            move |request| {
                let conn = Arc::clone(&conn);
                async move { conn.0.forward_from(&conn.1, request).await }
            }
        });
        let served = self
            .inner
            .http1
            .serve_connection(io, service)
            .with_upgrades()
            .await;
        if let Err(e) = served {
            let ClientConn { listen, peer, .. } = &conn.1;
            tracing::debug!(%listen, %peer, "client connection ended: {e}");
        }
    }

    /// Serves an HTTP/2 connection until the client closes it, or until it has had no stream
    /// open for the idle timeout (the header read timeout before its first request): then it
    /// is shut down gracefully with GOAWAY.
    async fn serve_h2<I>(self, io: TokioIo<I>, client: ClientConn)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let streams = Arc::clone(&activity);
        let (listen, peer) = (client.listen, client.peer);
        let conn = Arc::new((self.clone(), client));
        let service = hyper::service::service_fn(move |request| {
            let conn = Arc::clone(&conn);
            let open = OpenStream::start(&streams);
            async move {
                let response = conn.0.forward_from(&conn.1, request).await?;
                Ok::<_, ResetConnection>(response.map(|body| StreamBody {
                    inner: body,
                    _open: open,
                }))
            }
        });
        let options = &self.inner.options;
        let connection = self.inner.http2.serve_connection(io, service);
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = activity.idle(options.header_read_timeout, options.idle_timeout) => {
                connection.as_mut().graceful_shutdown();
                // A stream that raced the GOAWAY still finishes. Otherwise the client has the
                // header read timeout to acknowledge the shutdown's PING; a client that never
                // does is dropped.
                loop {
                    tokio::select! {
                        served = connection.as_mut() => break served,
                        () = tokio::time::sleep(options.header_read_timeout) => {
                            if activity.open() == 0 {
                                break Ok(());
                            }
                        }
                    }
                }
            }
        };
        if let Err(e) = served {
            tracing::debug!(%listen, %peer, "HTTP/2 client connection ended: {e}");
        }
    }

    /// Forwards one request received in cleartext on `listen` from `peer`. `Err` closes the
    /// client connection without an answer (the reset fault).
    pub async fn forward(
        &self,
        listen: SocketAddr,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ResetConnection> {
        self.forward_from(&ClientConn::new(listen, peer, 0), request)
            .await
    }

    /// [`Proxy::forward`] for a request from `client`, over either HTTP version. On HTTP/2
    /// the reset fault resets the stream, not the connection.
    async fn forward_from(
        &self,
        client: &ClientConn,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ResetConnection> {
        let started = Instant::now();
        let served = self.inner.current();
        let Some(app_index) = served.table.app_index(client.listen) else {
            return Ok(answer(StatusCode::BAD_GATEWAY));
        };
        let draw = self.inner.draw();
        let pick = served
            .table
            .pick(app_index, &HeaderView(request.headers()), draw);
        let app = &served.table.apps()[app_index];
        let revision = &app.revisions()[pick.revision];
        let metrics = revision.metrics();
        metrics.record_request();
        let mut now = NowMs::default();
        // Routing used `draw` and `mix(draw)` (mirroring); the fault gets a draw of its own.
        let fault = match app.faults() {
            [] => None,
            rules => {
                let now_ms = now.get();
                let callers = faults::callers_to_check(rules, pick.revision, now_ms);
                if !callers.is_empty() {
                    client
                        .owner
                        .learn(client.peer, client.local, &callers)
                        .await;
                }
                let mut caller = |pids: &[u32]| client.owner.is_any(pids);
                faults::fault_for(rules, pick.revision, now_ms, mix(mix(draw)), &mut caller)
            }
        };
        if let Some(FaultAction::Blackhole { rule }) = fault {
            let held = app.faults()[rule].clone();
            let name = revision.name().to_string();
            drop(served);
            self.hold(client.listen, &held, &name).await;
            // Forwarded as it would be now, as a healed network delivers what it held.
            return Box::pin(self.forward_from(client, request)).await;
        }
        match fault {
            Some(FaultAction::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Some(FaultAction::Abort { status }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                metrics.record_response(status.as_u16(), elapsed_us(started));
                return Ok(answer(status));
            }
            Some(FaultAction::Reset) => return Err(ResetConnection),
            Some(FaultAction::Blackhole { .. }) | None => {}
        }

        let (mut parts, body) = request.into_parts();
        let upgrade = requested_upgrade(&parts.headers);
        let mut client_upgrade = match upgrade {
            Some(_) => parts.extensions.remove::<OnUpgrade>(),
            None => None,
        };
        parts.extensions.clear();
        strip_hop_by_hop(&mut parts.headers);
        to_http1_request(&mut parts);
        add_forwarded(&mut parts.headers, client);
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        let client_version = parts.version;
        parts.version = Version::HTTP_11;
        parts.uri = origin_form(parts.uri);
        // Without a `Host` (HTTP/1.0), the endpoint's address is sent as the host.
        let needs_host = !parts.headers.contains_key(header::HOST);
        // A request without a body can be sent again after a refused connection; one with a
        // body is sent once, since its body streams straight through.
        let resendable = body.is_end_stream();
        let mut copy = None;
        let body = match pick.mirror.filter(|_| upgrade.is_none()) {
            Some(_) if resendable => {
                copy = Some(MirrorBody::Empty);
                ProxyBody(BodyKind::Incoming(body))
            }
            Some(_)
                if body
                    .size_hint()
                    .exact()
                    .is_some_and(|n| n <= MIRROR_BODY_LIMIT) =>
            {
                let (done, copied) = oneshot::channel();
                copy = Some(MirrorBody::Pending(copied));
                ProxyBody(BodyKind::Tee(Tee {
                    inner: body,
                    copy: Some((Vec::new(), done)),
                }))
            }
            // Chunked or larger bodies, and upgrades, are not mirrored.
            _ => ProxyBody(BodyKind::Incoming(body)),
        };
        if let (Some(target), Some(copy)) = (pick.mirror, copy) {
            let request = MirrorRequest {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                body: copy,
            };
            self.mirror(&served, app_index, target, request, draw, client.worker);
        }
        let mut request = Request::from_parts(parts, body);
        let cells = &served.cells[app_index][pick.revision];
        let endpoints = revision.endpoints();
        let mut attempts = Attempts::default();
        while let Some(chosen) = attempts.next(cells, endpoints, draw, &mut now) {
            let addr = endpoints[chosen].addr;
            if needs_host {
                if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
                    request.headers_mut().insert(header::HOST, host);
                }
            }
            let cell = &cells[chosen];
            let in_flight = InFlight::start(cell);
            let sent = tokio::time::timeout(
                self.inner.options.request_timeout,
                self.inner.pools.send(client.worker, addr, request),
            )
            .await;
            match sent {
                Ok(Ok((mut response, lease))) => {
                    cell.record_success();
                    metrics.record_response(response.status().as_u16(), elapsed_us(started));
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    let tunnel = match client_upgrade.take() {
                        Some(client) if switching => {
                            Some((client, hyper::upgrade::on(&mut response)))
                        }
                        _ => None,
                    };
                    if switching && tunnel.is_none() {
                        // A 101 the client did not ask for cannot be passed on.
                        tracing::debug!(%addr, "unrequested 101 from the upstream");
                        return Ok(answer(StatusCode::BAD_GATEWAY));
                    }
                    let (mut head, upstream_body) = response.into_parts();
                    let protocol = match tunnel {
                        Some(_) => head.headers.get(header::UPGRADE).cloned(),
                        None => None,
                    };
                    strip_hop_by_hop(&mut head.headers);
                    if client_version == Version::HTTP_2 {
                        // Framing is HTTP/2's own; the HTTP/1.1 header must not reach it.
                        head.headers.remove(header::TRANSFER_ENCODING);
                    }
                    if let Some(sticky) = pick.sticky_set {
                        let cookie = sticky_cookie(sticky.name, sticky.value);
                        if let Ok(value) = HeaderValue::from_str(&cookie) {
                            head.headers.append(header::SET_COOKIE, value);
                        }
                    }
                    if let Some((client, upstream)) = tunnel {
                        // The upgraded connection is the tunnel's, never pooled again.
                        drop(lease);
                        head.headers
                            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        if let Some(protocol) = protocol.or(upgrade) {
                            head.headers.insert(header::UPGRADE, protocol);
                        }
                        tokio::spawn(splice(client, upstream, in_flight));
                        return Ok(Response::from_parts(head, empty()));
                    }
                    let body = Tracked {
                        inner: upstream_body,
                        lease: Some(lease),
                        _in_flight: in_flight,
                    };
                    return Ok(Response::from_parts(
                        head,
                        ProxyBody(BodyKind::Tracked(body)),
                    ));
                }
                Ok(Err(SendError::Connect(e, unsent))) => {
                    drop(in_flight);
                    cell.record_connect_failure(&self.inner.options.health, now.get());
                    metrics.record_connect_error();
                    tracing::debug!(%addr, "upstream connection failed: {e}");
                    if !resendable {
                        break;
                    }
                    // Not this one again for this request.
                    attempts.refused(chosen);
                    request = *unsent;
                }
                Ok(Err(SendError::Upstream(e))) => {
                    tracing::debug!(%addr, "upstream request failed: {e}");
                    metrics.record_response(502, elapsed_us(started));
                    return Ok(answer(StatusCode::BAD_GATEWAY));
                }
                Err(_) => {
                    metrics.record_timeout();
                    return Ok(answer(StatusCode::GATEWAY_TIMEOUT));
                }
            }
        }
        attempts.none_left(metrics);
        Ok(answer(StatusCode::BAD_GATEWAY))
    }
}

/// The endpoints one request tries: up to two, each by power of two choices ([`choose`]), the
/// second leaving out one that refused the connection.
#[derive(Default)]
struct Attempts {
    made: u64,
    refused: Option<usize>,
}

impl Attempts {
    /// The next endpoint to try, if any is left; `draw` is the request's routing draw.
    fn next(
        &mut self,
        cells: &[EndpointCell],
        endpoints: &[crate::config::Endpoint],
        draw: u64,
        now: &mut NowMs,
    ) -> Option<usize> {
        if self.made == 2 {
            return None;
        }
        let chosen = choose(
            cells,
            endpoints,
            self.refused,
            mix(draw ^ (self.made + 1)),
            now,
        )?;
        self.made += 1;
        Some(chosen)
    }

    /// `chosen` refused the connection: not it again.
    fn refused(&mut self, chosen: usize) {
        self.refused = Some(chosen);
    }

    /// Records, when no endpoint could be tried at all (every one draining or ejected), what
    /// is as good as a refused connection.
    fn none_left(&self, metrics: &RevisionMetrics) {
        if self.made == 0 {
            metrics.record_connect_error();
        }
    }
}

/// Power of two choices ([`balance::choose`]) among `endpoints`, leaving out `refused`. A
/// revision with one endpoint, the common case, is decided without collecting states.
fn choose(
    cells: &[EndpointCell],
    endpoints: &[crate::config::Endpoint],
    refused: Option<usize>,
    draw: u64,
    now: &mut NowMs,
) -> Option<usize> {
    // Only an endpoint with a health record can be ejected; without one the time is not needed.
    let now_ms = if cells
        .iter()
        .any(|cell| cell.troubled.load(Ordering::Relaxed))
    {
        now.get()
    } else {
        0
    };
    if let ([cell], [endpoint]) = (cells, endpoints) {
        let available = refused.is_none() && cell.state(endpoint.draining).is_available(now_ms);
        return available.then_some(0);
    }
    let states: Vec<EndpointState> = cells
        .iter()
        .zip(endpoints)
        .enumerate()
        .map(|(i, (cell, endpoint))| cell.state(endpoint.draining || refused == Some(i)))
        .collect();
    balance::choose(&states, draw, now_ms)
}

/// `uri` as HTTP/1.1's origin form (path and query), the form instances are sent.
fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri;
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// The parts of a request copied to a mirror.
struct MirrorRequest {
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: MirrorBody,
}

/// A mirrored request's body: none, or the primary body's bytes once it has been read.
enum MirrorBody {
    Empty,
    Pending(oneshot::Receiver<Bytes>),
}

/// Releases a slot of [`MIRRORS_IN_FLIGHT`] when dropped.
struct MirrorSlot(Arc<AtomicUsize>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    /// Sends `request` to an endpoint of `revision` in a spawned task and discards the answer.
    /// Nothing is recorded in the revision's metrics; see the module documentation.
    fn mirror(
        &self,
        served: &Arc<Served>,
        app_index: usize,
        revision: usize,
        request: MirrorRequest,
        draw: u64,
        worker: usize,
    ) {
        let mirrors = &self.inner.mirrors;
        if mirrors.fetch_add(1, Ordering::Relaxed) >= MIRRORS_IN_FLIGHT {
            mirrors.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!("mirror skipped: too many mirrored requests in flight");
            return;
        }
        let slot = MirrorSlot(Arc::clone(mirrors));
        let served = Arc::clone(served);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let _slot = slot;
            let body = match request.body {
                MirrorBody::Empty => empty(),
                MirrorBody::Pending(copied) => match copied.await {
                    Ok(bytes) => ProxyBody(BodyKind::Full(Some(bytes))),
                    // The primary body was not read to its end: nothing to mirror.
                    Err(_) => return,
                },
            };
            let endpoints = served.table.apps()[app_index].revisions()[revision].endpoints();
            let cells = &served.cells[app_index][revision];
            let mut now = NowMs::default();
            // A draw of its own, apart from the routing, fault and primary endpoint draws.
            let draw = mix(mix(mix(draw)) ^ 0x6d69);
            let Some(chosen) = choose(cells, endpoints, None, draw, &mut now) else {
                return;
            };
            let addr = endpoints[chosen].addr;
            let mut upstream = Request::new(body);
            *upstream.method_mut() = request.method;
            *upstream.uri_mut() = request.uri;
            *upstream.headers_mut() = request.headers;
            if !upstream.headers().contains_key(header::HOST) {
                if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
                    upstream.headers_mut().insert(header::HOST, host);
                }
            }
            let cell = &cells[chosen];
            let _in_flight = InFlight::start(cell);
            let timeout = inner.options.request_timeout;
            let answered = tokio::time::timeout(timeout, async {
                match inner.pools.send(worker, addr, upstream).await {
                    Ok((response, lease)) => {
                        cell.record_success();
                        // Read the answer to its end so the connection goes back to the pool.
                        match response.into_body().collect().await {
                            Ok(_) => lease.release(),
                            Err(e) => tracing::debug!(%addr, "mirrored response failed: {e}"),
                        }
                    }
                    Err(SendError::Connect(e, _)) => {
                        cell.record_connect_failure(&inner.options.health, now.get());
                        tracing::debug!(%addr, "mirror connection failed: {e}");
                    }
                    Err(SendError::Upstream(e)) => {
                        tracing::debug!(%addr, "mirrored request failed: {e}")
                    }
                }
            })
            .await;
            if answered.is_err() {
                tracing::debug!(%addr, "mirrored request timed out");
            }
        });
    }
}

/// Splices an upgraded client connection to an upgraded upstream connection until either side
/// closes. `in_flight` keeps the endpoint's count for the tunnel's life.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, in_flight: InFlight) {
    let _in_flight = in_flight;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
}

/// The `Upgrade` header of a request that asks for a protocol upgrade (`Connection: upgrade`
/// and an `Upgrade` header), if it does.
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asked {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

impl Inner {
    fn current(&self) -> Arc<Served> {
        Arc::clone(&self.served.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A fresh random `u64`: SplitMix64 over a per-process random seed and a counter.
    fn draw(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        mix(self.seed.wrapping_add(n.wrapping_mul(GAMMA)))
    }
}

/// The client connection is closed without an answer (the reset fault).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by a fault rule")]
pub struct ResetConnection;

struct HeaderView<'a>(&'a HeaderMap);

impl RequestView for HeaderView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.0
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| cookie_value(h, name))
    }
}

/// Counts a request in flight on an endpoint until the response body is finished or dropped.
struct InFlight(EndpointCell);

impl InFlight {
    fn start(cell: &EndpointCell) -> InFlight {
        cell.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(cell))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream response body that keeps its endpoint's in-flight count while it streams, and
/// returns its connection to the pool once it has been read to its end.
struct Tracked {
    inner: Incoming,
    lease: Option<upstream::Lease>,
    _in_flight: InFlight,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body streamed to the primary upstream while its data frames are collected (by
/// reference count) for a mirror, which gets them when the body has ended. An error or an early
/// drop sends nothing.
struct Tee {
    inner: Incoming,
    copy: Option<(Vec<Bytes>, oneshot::Sender<Bytes>)>,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((chunks, _))) = (frame.data_ref(), self.copy.as_mut()) {
                    chunks.push(data.clone());
                }
            }
            Poll::Ready(Some(Err(_))) => self.copy = None,
            Poll::Ready(None) => {
                if let Some((chunks, done)) = self.copy.take() {
                    let _ = done.send(concat(chunks));
                }
            }
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            if let Some((chunks, done)) = self.copy.take() {
                let _ = done.send(concat(chunks));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => chunks.concat().into(),
    }
}

fn empty() -> ProxyBody {
    ProxyBody::empty()
}

fn answer(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response
}

/// Headers that describe one connection, not the message, and are never forwarded, whether or
/// not `Connection` names them (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

impl Proxy {
    /// Holds a request while the black-hole rule `held` (of revision `revision`) is in force:
    /// until its lease ends, or a configuration without it (removed, not renewed) arrives.
    async fn hold(&self, listen: SocketAddr, held: &faults::Fault, revision: &str) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until = {
                let served = self.inner.current();
                let Some(app) = served.table.app_index(listen) else {
                    return;
                };
                let app = &served.table.apps()[app];
                let name = |i: usize| app.revisions().get(i).map(|r| r.name().to_string());
                faults::holds(held, revision, app.faults(), name, unix_ms())
            };
            let Some(until) = until else {
                return;
            };
            let left = Duration::from_millis(until.saturating_sub(unix_ms()));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(left) => {}
            }
        }
    }
}

/// Whether `name` is one of [`HOP_BY_HOP`], in any case.
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_str()))
}

/// The `Set-Cookie` value that keeps a user on the revision stickiness picked.
fn sticky_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; Path=/; HttpOnly")
}

/// Strips [`HOP_BY_HOP`] headers and any others the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (a message has few) finds which are present: cheaper than a
    // hashed lookup per hop-by-hop name, and most requests carry none of them.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Headers the `Connection` options name beyond the fixed list (`keep-alive`, the usual
    // option on a kept-alive response, is in it and so costs no allocation here).
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for option in value.split(',').map(str::trim) {
            let listed = HOP_BY_HOP
                .iter()
                .any(|hop| hop.as_str().eq_ignore_ascii_case(option));
            if option.is_empty() || listed {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(option.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

fn add_forwarded(headers: &mut HeaderMap, client: &ClientConn) {
    match headers.entry(X_FORWARDED_FOR) {
        http::header::Entry::Occupied(mut previous) => {
            let appended = previous.get().to_str().ok().and_then(|previous| {
                HeaderValue::from_str(&format!("{previous}, {}", client.peer.ip())).ok()
            });
            if let Some(value) = appended {
                previous.insert(value);
            }
        }
        http::header::Entry::Vacant(entry) => {
            if let Some(value) = &client.peer_ip {
                entry.insert(value.clone());
            }
        }
    }
    let proto = if client.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Makes a request's head fit for the HTTP/1.1 upstream. An HTTP/2 request names its host
/// only in `:authority` (the URI), and may split `Cookie` into several fields (RFC 9113
/// §8.2.3), which HTTP/1.1 wants as one; an HTTP/1.1 request in absolute form also names its
/// host in the URI, which then overrides `Host` (RFC 9112 §3.2.2).
fn to_http1_request(parts: &mut http::request::Parts) {
    if let Some(authority) = parts.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
    }
    if parts.version == Version::HTTP_2 {
        let mut cookies = parts.headers.get_all(header::COOKIE).iter();
        if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
            let mut joined = first.as_bytes().to_vec();
            for value in parts.headers.get_all(header::COOKIE).iter().skip(1) {
                joined.extend_from_slice(b"; ");
                joined.extend_from_slice(value.as_bytes());
            }
            if let Ok(joined) = HeaderValue::from_bytes(&joined) {
                parts.headers.insert(header::COOKIE, joined);
            }
        }
    }
}

/// What a cleartext client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Judges a connection by its first bytes: HTTP/2 with prior knowledge if they are the
/// preface, HTTP/1.1 otherwise (an HTTP/1.1 request differs from the preface by its second
/// byte at the latest). `None` while they are a proper prefix of the preface.
fn classify(first: &[u8]) -> Option<Protocol> {
    if first.is_empty() {
        // The client closed: HTTP/1.1's connection ends it quietly.
        return Some(Protocol::Http1);
    }
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// [`classify`] over the connection's first bytes, peeked (not consumed), so the HTTP/1.1
/// path reads its socket exactly as it would without the check. The caller bounds it with
/// the header read timeout.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    // Only a client that sends part of the preface and pauses comes round again.
    for _ in 0..1000 {
        let n = stream.peek(&mut first).await?;
        if let Some(protocol) = classify(&first[..n]) {
            return Ok(protocol);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Protocol::Http1)
}

/// Where a request came from.
#[derive(Debug)]
struct ClientConn {
    /// The listener, which names the application.
    listen: SocketAddr,
    peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` value, rendered once per connection.
    peer_ip: Option<HeaderValue>,
    /// Over TLS: `X-Forwarded-Proto: https`.
    tls: bool,
    /// The worker serving the connection, whose upstream pool its requests use.
    worker: usize,
    /// Which process opened the connection, as far as faults limited to callers asked.
    owner: caller::Owner,
    /// The connection's own address: `listen`, or an address it stands for (`0.0.0.0`).
    local: SocketAddr,
}

impl ClientConn {
    fn new(listen: SocketAddr, peer: SocketAddr, worker: usize) -> ClientConn {
        ClientConn {
            listen,
            local: listen,
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
            tls: false,
            worker,
            owner: caller::Owner::default(),
        }
    }
}

/// A listener on `addr`; with `reuse_port`, one of several on the same address.
async fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    if !reuse_port {
        return TcpListener::bind(addr).await;
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The streams open on one HTTP/2 client connection and when the last one closed, for its
/// idle timeout. On tokio's clock, so tests can advance it.
struct Activity(Mutex<ActivityState>);

struct ActivityState {
    open: usize,
    /// When the last stream closed (the connection's start before the first).
    since: tokio::time::Instant,
    started: u64,
}

impl Activity {
    fn new() -> Activity {
        Activity(Mutex::new(ActivityState {
            open: 0,
            since: tokio::time::Instant::now(),
            started: 0,
        }))
    }

    fn open(&self) -> usize {
        lock(&self.0).open
    }

    /// Resolves once no stream has been open for `idle`, or, before the first request, for
    /// `first`. Runs until then: the caller drops it with the connection.
    async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let wake = {
                let state = lock(&self.0);
                let limit = if state.started == 0 { first } else { idle };
                (state.open == 0).then(|| state.since + limit)
            };
            match wake {
                Some(at) if at <= tokio::time::Instant::now() => return,
                Some(at) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(idle).await,
            }
        }
    }
}

/// One open stream of an HTTP/2 connection, from its request to the end of its response body.
struct OpenStream(Arc<Activity>);

impl OpenStream {
    fn start(activity: &Arc<Activity>) -> OpenStream {
        {
            let mut state = lock(&activity.0);
            state.open += 1;
            state.started += 1;
        }
        OpenStream(Arc::clone(activity))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut state = lock(&self.0 .0);
        state.open = state.open.saturating_sub(1);
        state.since = tokio::time::Instant::now();
    }
}

/// A response body on an HTTP/2 connection, which keeps its stream counted as open.
struct StreamBody {
    inner: ProxyBody,
    _open: OpenStream,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The wall clock in milliseconds, read on first use and then fixed for the request: fault
/// rules and passive health need it, and most requests consult neither.
#[derive(Default)]
struct NowMs(Option<u64>);

impl NowMs {
    fn get(&mut self) -> u64 {
        *self.0.get_or_insert_with(unix_ms)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_peer_to_an_existing_chain() {
        let listen = "127.0.0.1:80".parse().unwrap();
        let mut headers = HeaderMap::new();
        let client = ClientConn::new(listen, "127.0.0.9:4000".parse().unwrap(), 0);
        add_forwarded(&mut headers, &client);
        assert_eq!(headers["x-forwarded-for"], "127.0.0.9");
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let client = ClientConn::new(listen, "127.0.0.2:4000".parse().unwrap(), 0);
        add_forwarded(&mut headers, &client);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "http");
        let mut client = ClientConn::new(listen, "127.0.0.3:4000".parse().unwrap(), 0);
        client.tls = true;
        add_forwarded(&mut headers, &client);
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    /// Whether `future` is still pending after tokio's (paused) clock has moved by `by`.
    async fn pending_after<F: std::future::Future>(
        future: &mut std::pin::Pin<&mut F>,
        by: Duration,
    ) -> bool {
        tokio::time::timeout(by, future.as_mut()).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_without_a_request_is_idle_after_the_first_limit() {
        let activity = Activity::new();
        let idle = activity.idle(Duration::from_secs(10), Duration::from_secs(60));
        tokio::pin!(idle);
        assert!(pending_after(&mut idle, Duration::from_secs(9)).await);
        assert!(!pending_after(&mut idle, Duration::from_secs(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_keeps_an_http2_connection_busy_and_idleness_counts_from_its_end() {
        let activity = Arc::new(Activity::new());
        let stream = OpenStream::start(&activity);
        let idle = activity.idle(Duration::from_secs(10), Duration::from_secs(60));
        tokio::pin!(idle);
        assert!(pending_after(&mut idle, Duration::from_secs(250)).await);
        assert_eq!(activity.open(), 1);
        drop(stream);
        assert_eq!(activity.open(), 0);
        assert!(pending_after(&mut idle, Duration::from_secs(59)).await);
        assert!(!pending_after(&mut idle, Duration::from_secs(2)).await);
    }

    #[test]
    fn the_preface_means_http2_and_anything_else_http1() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(classify(&more), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"POST / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b""), Some(Protocol::Http1));
    }

    #[test]
    fn an_http2_request_gets_host_from_its_authority_and_one_cookie_header() {
        let request = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://shop.example:8443/cart?x=1")
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        to_http1_request(&mut parts);
        assert_eq!(parts.headers[header::HOST], "shop.example:8443");
        let cookies: Vec<_> = parts.headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    #[test]
    fn an_origin_form_http1_request_keeps_its_host_header() {
        let request = Request::builder()
            .uri("/cart")
            .header(header::HOST, "shop.example")
            .header(header::COOKIE, "a=1")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        to_http1_request(&mut parts);
        assert_eq!(parts.headers[header::HOST], "shop.example");
        assert_eq!(parts.headers[header::COOKIE], "a=1");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn an_upgrade_needs_both_the_connection_token_and_the_upgrade_header() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested_upgrade(&headers), None);
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(
            requested_upgrade(&headers),
            Some(HeaderValue::from_static("websocket"))
        );
        headers.remove(header::UPGRADE);
        assert_eq!(requested_upgrade(&headers), None);
    }

    #[test]
    fn mirrored_body_chunks_are_joined_in_order() {
        assert_eq!(concat(Vec::new()), Bytes::new());
        assert_eq!(concat(vec![Bytes::from_static(b"one")]), "one");
        let chunks = vec![Bytes::from_static(b"a "), Bytes::from_static(b"body")];
        assert_eq!(concat(chunks), "a body");
    }

    #[test]
    fn cookie_lookup_reads_every_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        let view = HeaderView(&headers);
        assert_eq!(view.cookie("c"), Some("3"));
        assert_eq!(view.cookie("d"), None);
    }
}
