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
//! One request ([`Proxy::forward`]): route with [`RouteTable::pick`], apply a fault from
//! [`faults::fault_for`], choose an endpoint with [`balance::choose`], send the request with its
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
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use crate::balance::{self, EndpointState, HealthPolicy};
use crate::config::ProxyConfig;
use crate::draw::mix;
use crate::faults::{self, FaultAction};
use crate::metrics::RevisionMetrics;
use crate::route::{cookie_value, RequestView, RouteTable};
use crate::InvalidConfig;

/// The body type of requests sent upstream and responses sent to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// The largest request body (by `Content-Length`) that is copied to a mirror.
pub const MIRROR_BODY_LIMIT: u64 = 64 * 1024;

/// The most mirrored copies outstanding at once; requests beyond it are not mirrored.
pub const MIRRORS_IN_FLIGHT: usize = 1024;

/// Settings of the data path that do not come from the controller's configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long an upstream has to answer with response headers before the proxy answers 504.
    pub request_timeout: Duration,
    /// How long an upstream connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a client has to send a request's headers (slow-client protection).
    pub header_read_timeout: Duration,
    pub health: HealthPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
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

type EndpointCell = Arc<Mutex<EndpointState>>;

/// A compiled table with what the data path needs beside it, swapped in as one.
struct Served {
    config: ProxyConfig,
    table: RouteTable,
    /// `cells[app][revision][endpoint]`: the shared state of each endpoint of the table.
    cells: Vec<Vec<Vec<EndpointCell>>>,
}

struct Inner {
    served: RwLock<Arc<Served>>,
    /// Every endpoint of the served table by address, so state carries over reloads.
    endpoints: Mutex<HashMap<SocketAddr, EndpointCell>>,
    listeners: Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
    /// Serialises reloads from `prepare` to `commit`.
    reload: Arc<AsyncMutex<()>>,
    client: Client<HttpConnector, ProxyBody>,
    options: Options,
    seed: u64,
    sequence: AtomicU64,
    /// Mirrored copies outstanding, bounded by [`MIRRORS_IN_FLIGHT`].
    mirrors: Arc<AtomicUsize>,
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
    listeners: Vec<(SocketAddr, TcpListener)>,
    _reload: OwnedMutexGuard<()>,
}

impl Prepared {
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }
}

impl Proxy {
    /// A proxy serving nothing until a configuration is committed. Must be called inside a
    /// tokio runtime.
    pub fn new(options: Options) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
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
        };
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        Proxy {
            inner: Arc::new(Inner {
                served: RwLock::new(Arc::new(served)),
                endpoints: Mutex::new(HashMap::new()),
                listeners: Mutex::new(HashMap::new()),
                reload: Arc::new(AsyncMutex::new(())),
                client,
                options,
                seed,
                sequence: AtomicU64::new(0),
                mirrors: Arc::new(AtomicUsize::new(0)),
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
                    let state = lock(cell);
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

    /// Compiles `config` and binds the listeners it adds. Waits for a reload in progress.
    pub async fn prepare(&self, config: ProxyConfig) -> Result<Prepared, ApplyError> {
        let guard = Arc::clone(&self.inner.reload).lock_owned().await;
        let table = RouteTable::compile(&config, Some(&self.inner.current().table))?;
        let mut listeners = Vec::new();
        for app in &config.apps {
            if lock(&self.inner.listeners).contains_key(&app.listen) {
                continue;
            }
            let listener =
                TcpListener::bind(app.listen)
                    .await
                    .map_err(|source| ApplyError::Bind {
                        app: app.name.clone(),
                        addr: app.listen,
                        source,
                    })?;
            listeners.push((app.listen, listener));
        }
        Ok(Prepared {
            config,
            table,
            listeners,
            _reload: guard,
        })
    }

    /// Serves `prepared` from now on: swaps the table, starts new listeners, stops removed ones.
    pub fn commit(&self, prepared: Prepared) {
        let Prepared {
            config,
            table,
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
        });
        *self
            .inner
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::clone(&served);
        let mut running = lock(&self.inner.listeners);
        for (addr, listener) in listeners {
            let proxy = self.clone();
            running.insert(addr, tokio::spawn(proxy.accept(addr, listener)));
        }
        running.retain(|addr, task| {
            let keep = served.table.app_index(*addr).is_some();
            if !keep {
                task.abort();
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

    async fn accept(self, listen: SocketAddr, listener: TcpListener) {
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
            let proxy = self.clone();
            let header_read_timeout = self.inner.options.header_read_timeout;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let proxy = proxy.clone();
                    async move { proxy.forward(listen, peer, request).await }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%listen, %peer, "client connection ended: {e}");
                }
            });
        }
    }

    /// Forwards one request received on `listen` from `peer`. `Err` closes the client
    /// connection without an answer (the reset fault).
    pub async fn forward(
        &self,
        listen: SocketAddr,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ResetConnection> {
        let started = Instant::now();
        let served = self.inner.current();
        let Some(app_index) = served.table.app_index(listen) else {
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
        let now_ms = unix_ms();
        // Routing used `draw` and `mix(draw)` (mirroring); the fault gets a draw of its own.
        match faults::fault_for(app.faults(), pick.revision, now_ms, mix(mix(draw))) {
            Some(FaultAction::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Some(FaultAction::Abort { status }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                metrics.record_response(status.as_u16(), elapsed_us(started));
                return Ok(answer(status));
            }
            Some(FaultAction::Reset) => return Err(ResetConnection),
            None => {}
        }

        let (mut parts, body) = request.into_parts();
        let upgrade = requested_upgrade(&parts.headers);
        let mut client_upgrade = match upgrade {
            Some(_) => parts.extensions.remove::<OnUpgrade>(),
            None => None,
        };
        strip_hop_by_hop(&mut parts.headers);
        add_forwarded(&mut parts.headers, peer);
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        // A request without a body can be sent again after a refused connection; one with a
        // body is sent once, since its body streams straight through.
        let resendable = body.is_end_stream();
        let mut copy = None;
        let body = match pick.mirror.filter(|_| upgrade.is_none()) {
            Some(_) if resendable => {
                copy = Some(MirrorBody::Empty);
                body.boxed_unsync()
            }
            Some(_)
                if body
                    .size_hint()
                    .exact()
                    .is_some_and(|n| n <= MIRROR_BODY_LIMIT) =>
            {
                let (done, copied) = oneshot::channel();
                copy = Some(MirrorBody::Pending(copied));
                Tee {
                    inner: body,
                    copy: Some((Vec::new(), done)),
                }
                .boxed_unsync()
            }
            // Chunked or larger bodies, and upgrades, are not mirrored.
            _ => body.boxed_unsync(),
        };
        if let (Some(target), Some(copy)) = (pick.mirror, copy) {
            let request = MirrorRequest {
                method: parts.method.clone(),
                path: path.clone(),
                headers: parts.headers.clone(),
                body: copy,
            };
            self.mirror(&served, app_index, target, request, draw);
        }
        let mut body = Some(body);
        let cells = &served.cells[app_index][pick.revision];
        let mut states: Vec<EndpointState> = cells
            .iter()
            .zip(revision.endpoints())
            .map(|(cell, endpoint)| {
                let mut state = lock(cell).clone();
                state.draining = endpoint.draining;
                state
            })
            .collect();
        let mut tried = false;
        for attempt in 0..2u64 {
            let now_ms = unix_ms();
            let Some(chosen) = balance::choose(&states, mix(draw ^ (attempt + 1)), now_ms) else {
                break;
            };
            tried = true;
            let upstream_body = match body.take() {
                Some(b) if !resendable => b,
                _ if resendable => empty(),
                _ => break,
            };
            let addr = revision.endpoints()[chosen].addr;
            let uri = match Uri::builder()
                .scheme("http")
                .authority(addr.to_string())
                .path_and_query(path.as_str())
                .build()
            {
                Ok(uri) => uri,
                Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
            };
            let mut upstream = Request::new(upstream_body);
            *upstream.method_mut() = parts.method.clone();
            *upstream.uri_mut() = uri;
            *upstream.version_mut() = Version::HTTP_11;
            *upstream.headers_mut() = parts.headers.clone();

            let cell = &cells[chosen];
            let in_flight = InFlight::start(Arc::clone(cell));
            let sent = tokio::time::timeout(
                self.inner.options.request_timeout,
                self.inner.client.request(upstream),
            )
            .await;
            match sent {
                Ok(Ok(mut response)) => {
                    lock(cell).record_success();
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
                    let protocol = head.headers.get(header::UPGRADE).cloned();
                    strip_hop_by_hop(&mut head.headers);
                    if let Some(sticky) = pick.sticky_set {
                        let cookie = format!("{}={}; Path=/; HttpOnly", sticky.name, sticky.value);
                        if let Ok(value) = HeaderValue::from_str(&cookie) {
                            head.headers.append(header::SET_COOKIE, value);
                        }
                    }
                    if let Some((client, upstream)) = tunnel {
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
                        _in_flight: in_flight,
                    };
                    return Ok(Response::from_parts(head, body.boxed_unsync()));
                }
                Ok(Err(e)) if e.is_connect() => {
                    drop(in_flight);
                    lock(cell).record_connect_failure(&self.inner.options.health, now_ms);
                    metrics.record_connect_error();
                    tracing::debug!(%addr, "upstream connection failed: {e}");
                    // Not this one again for this request.
                    states[chosen].draining = true;
                }
                Ok(Err(e)) => {
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
        if !tried {
            // Every endpoint is draining or ejected: as good as a refused connection.
            metrics.record_connect_error();
        }
        Ok(answer(StatusCode::BAD_GATEWAY))
    }
}

/// The parts of a request copied to a mirror.
struct MirrorRequest {
    method: http::Method,
    path: String,
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
                    Ok(bytes) => Full::new(bytes)
                        .map_err(|never: Infallible| match never {})
                        .boxed_unsync(),
                    // The primary body was not read to its end: nothing to mirror.
                    Err(_) => return,
                },
            };
            let endpoints = served.table.apps()[app_index].revisions()[revision].endpoints();
            let cells = &served.cells[app_index][revision];
            let states: Vec<EndpointState> = cells
                .iter()
                .zip(endpoints)
                .map(|(cell, endpoint)| {
                    let mut state = lock(cell).clone();
                    state.draining = endpoint.draining;
                    state
                })
                .collect();
            let now_ms = unix_ms();
            // A draw of its own, apart from the routing, fault and primary endpoint draws.
            let Some(chosen) = balance::choose(&states, mix(mix(mix(draw)) ^ 0x6d69), now_ms)
            else {
                return;
            };
            let addr = endpoints[chosen].addr;
            let Ok(uri) = Uri::builder()
                .scheme("http")
                .authority(addr.to_string())
                .path_and_query(request.path.as_str())
                .build()
            else {
                return;
            };
            let mut upstream = Request::new(body);
            *upstream.method_mut() = request.method;
            *upstream.uri_mut() = uri;
            *upstream.version_mut() = Version::HTTP_11;
            *upstream.headers_mut() = request.headers;
            let cell = &cells[chosen];
            let _in_flight = InFlight::start(Arc::clone(cell));
            let timeout = inner.options.request_timeout;
            let answered = tokio::time::timeout(timeout, async {
                match inner.client.request(upstream).await {
                    Ok(response) => {
                        lock(cell).record_success();
                        // Read the answer to its end so the connection goes back to the pool.
                        if let Err(e) = response.into_body().collect().await {
                            tracing::debug!(%addr, "mirrored response failed: {e}");
                        }
                    }
                    Err(e) if e.is_connect() => {
                        lock(cell).record_connect_failure(&inner.options.health, now_ms);
                        tracing::debug!(%addr, "mirror connection failed: {e}");
                    }
                    Err(e) => tracing::debug!(%addr, "mirrored request failed: {e}"),
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
    fn start(cell: EndpointCell) -> InFlight {
        {
            let mut state = lock(&cell);
            state.in_flight = state.in_flight.saturating_add(1);
        }
        InFlight(cell)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// An upstream response body that keeps its endpoint's in-flight count while it streams.
struct Tracked {
    inner: Incoming,
    _in_flight: InFlight,
}

impl Body for Tracked {
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
    Empty::<Bytes>::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn answer(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response
}

/// Headers that describe one connection, not the message, and must not be forwarded
/// (RFC 9110 §7.6.1), including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn add_forwarded(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut headers, "127.0.0.2:4000".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "http");
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
