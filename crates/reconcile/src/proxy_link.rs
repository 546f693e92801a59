//! The controller's side of the proxy's admin API: push routes, wait for drains, read metrics.
//!
//! The controller never sits in the request path; it only tells `gauntlet proxy` what to
//! serve. Which proxy process runs, and where its admin API listens, comes from whoever
//! supervises it (the CLI's `up`) through a `watch` channel, so a proxy restarted on another
//! port is followed without the controller knowing how it was started.
//!
//! Pushes are idempotent and versioned: the link remembers the routes and version the proxy
//! serves, learns them with `GET /admin/v1/config` from a proxy it has not talked to yet (a
//! restarted proxy serves its persisted configuration), and only `PUT`s when the routes
//! differ, with the next version. An application whose address cannot be bound (`409`) is
//! remembered for [`RETRY_BIND_AFTER`] so the caller can push the others without it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gauntlet_proxy::config::AppRoute;
use gauntlet_proxy::metrics::MetricsSnapshot;
use gauntlet_proxy::ProxyConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How long an application whose address could not be bound is left out before the proxy
/// is asked to bind it again.
pub const RETRY_BIND_AFTER: Duration = Duration::from_secs(5);

/// A running proxy, as its supervisor found or started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProcess {
    pub pid: u32,
    pub admin: SocketAddr,
}

/// What `gauntlet status` shows about the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub pid: Option<u32>,
    pub admin: Option<SocketAddr>,
    /// The configuration version the proxy serves, as last confirmed.
    pub version: Option<u64>,
    /// The last error talking to the proxy; `None` after a successful push.
    pub error: Option<String>,
    /// Applications whose `service.listen` the proxy could not bind, with the reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unbound: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the proxy is not running")]
    NotRunning,
    #[error("the proxy cannot bind app `{app}`'s address: {reason}")]
    Bind { app: String, reason: String },
    #[error("the proxy refused the configuration ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("drain of {addr} timed out with {in_flight} request(s) in flight")]
    DrainTimeout { addr: SocketAddr, in_flight: u32 },
    #[error("proxy admin API: {0}")]
    Http(#[from] reqwest::Error),
}

/// The result of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The version the proxy serves now.
    pub version: u64,
    /// The routes served before, when this push changed them; `None` when nothing changed.
    pub previous: Option<Vec<AppRoute>>,
}

#[derive(Default)]
struct Served {
    pid: Option<u32>,
    /// The version and routes the proxy is known to serve.
    config: Option<(u64, Vec<AppRoute>)>,
}

struct Inner {
    http: reqwest::Client,
    token: String,
    process: watch::Receiver<Option<ProxyProcess>>,
    /// Serialises pushes, so versions increase and a drain waits on the right one.
    served: tokio::sync::Mutex<Served>,
    unbound: Mutex<BTreeMap<String, (Instant, String)>>,
    status: Mutex<ProxyStatus>,
    /// The routes the proxy was last confirmed to serve, for status.
    routes: Mutex<Arc<Vec<AppRoute>>>,
}

/// A handle to the proxy's admin API; cheap to clone.
#[derive(Clone)]
pub struct ProxyLink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProxyLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyLink")
            .field("process", &*self.inner.process.borrow())
            .finish_non_exhaustive()
    }
}

impl ProxyLink {
    /// A link authenticating with `token` to whichever proxy `process` names.
    pub fn new(token: String, process: watch::Receiver<Option<ProxyProcess>>) -> ProxyLink {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        ProxyLink {
            inner: Arc::new(Inner {
                http,
                token,
                process,
                served: tokio::sync::Mutex::new(Served::default()),
                unbound: Mutex::new(BTreeMap::new()),
                status: Mutex::new(ProxyStatus::default()),
                routes: Mutex::new(Arc::new(Vec::new())),
            }),
        }
    }

    /// The proxy process running now, if any.
    pub fn process(&self) -> Option<ProxyProcess> {
        *self.inner.process.borrow()
    }

    /// The routes the proxy was last confirmed to serve.
    pub fn served_routes(&self) -> Arc<Vec<AppRoute>> {
        Arc::clone(&lock(&self.inner.routes))
    }

    pub fn status(&self) -> ProxyStatus {
        let mut status = lock(&self.inner.status).clone();
        let process = self.process();
        status.pid = process.map(|p| p.pid);
        status.admin = process.map(|p| p.admin);
        status.unbound = lock(&self.inner.unbound)
            .iter()
            .map(|(app, (_, reason))| (app.clone(), reason.clone()))
            .collect();
        status
    }

    /// Applications to leave out of the next push: their address could not be bound within
    /// the last [`RETRY_BIND_AFTER`].
    pub fn unbindable(&self) -> BTreeSet<String> {
        let mut unbound = lock(&self.inner.unbound);
        unbound.retain(|_, (at, _)| at.elapsed() < RETRY_BIND_AFTER);
        unbound.keys().cloned().collect()
    }

    /// Makes the proxy serve `apps`, pushing only if they differ from what it serves.
    pub async fn push(&self, apps: Vec<AppRoute>) -> Result<Pushed, LinkError> {
        let result = self.push_inner(apps).await;
        let mut status = lock(&self.inner.status);
        match &result {
            Ok(pushed) => {
                status.version = Some(pushed.version);
                status.error = None;
            }
            Err(LinkError::Bind { .. }) => {}
            Err(e) => status.error = Some(e.to_string()),
        }
        result
    }

    async fn push_inner(&self, apps: Vec<AppRoute>) -> Result<Pushed, LinkError> {
        let process = self.process().ok_or(LinkError::NotRunning)?;
        let mut served = self.inner.served.lock().await;
        if served.pid != Some(process.pid) {
            *served = Served {
                pid: Some(process.pid),
                config: None,
            };
        }
        let (version, current) = match served.config.take() {
            Some(known) => known,
            None => {
                let config: ProxyConfig = self.get_json(process, "/admin/v1/config").await?;
                (config.version, config.apps)
            }
        };
        if current == apps {
            *lock(&self.inner.routes) = Arc::new(current.clone());
            served.config = Some((version, current));
            return Ok(Pushed {
                version,
                previous: None,
            });
        }
        let next = ProxyConfig {
            version: version + 1,
            apps,
        };
        let response = self
            .inner
            .http
            .put(format!("http://{}/admin/v1/config", process.admin))
            .bearer_auth(&self.inner.token)
            .json(&next)
            .send()
            .await?;
        let status = response.status().as_u16();
        if status == 200 {
            // Other apps' entries are unaffected; this one is bound now.
            let mut unbound = lock(&self.inner.unbound);
            for app in &next.apps {
                unbound.remove(&app.name);
            }
            drop(unbound);
            *lock(&self.inner.routes) = Arc::new(next.apps.clone());
            served.config = Some((next.version, next.apps));
            return Ok(Pushed {
                version: next.version,
                previous: Some(current),
            });
        }
        // What the proxy serves is unchanged by a refused push.
        served.config = Some((version, current));
        let body = response.text().await.unwrap_or_default();
        if status == 409 {
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(app) = parsed["bind"]["app"].as_str() {
                let reason = parsed["errors"][0].as_str().unwrap_or(&body).to_string();
                lock(&self.inner.unbound).insert(app.to_string(), (Instant::now(), reason.clone()));
                return Err(LinkError::Bind {
                    app: app.to_string(),
                    reason,
                });
            }
        }
        Err(LinkError::Refused { status, body })
    }

    /// Waits until the proxy serves version `version` or later and has no request in flight
    /// on `addr` (or no longer knows it). A proxy that is not running carries no requests.
    pub async fn wait_drained(
        &self,
        addr: SocketAddr,
        version: u64,
        timeout: Duration,
    ) -> Result<(), LinkError> {
        let deadline = Instant::now() + timeout;
        let mut in_flight = 0;
        loop {
            let Some(process) = self.process() else {
                return Ok(());
            };
            if let Ok(report) = self.endpoints(process).await {
                if report.version >= version {
                    in_flight = report
                        .endpoints
                        .iter()
                        .filter(|e| e.addr == addr)
                        .map(|e| e.in_flight)
                        .sum();
                    if in_flight == 0 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(LinkError::DrainTimeout { addr, in_flight });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn endpoints(&self, process: ProxyProcess) -> Result<EndpointReport, LinkError> {
        self.get_json(process, "/admin/v1/endpoints").await
    }

    /// The proxy's per-(application, revision) counters now.
    pub async fn metrics(&self) -> Result<MetricsReport, LinkError> {
        self.read_metrics("/admin/v1/metrics").await
    }

    /// The proxy's counters as soon as it has counted a failure (5xx, connection error,
    /// timeout) beyond the `after`-th, or after `wait` at the latest. A proxy that does not
    /// know the call answers at once and without a failure count.
    pub async fn metrics_on_failure(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<MetricsReport, LinkError> {
        let path = format!(
            "/admin/v1/metrics?afterFailure={after}&waitMs={}",
            wait.as_millis()
        );
        self.read_metrics(&path).await
    }

    async fn read_metrics(&self, path: &str) -> Result<MetricsReport, LinkError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Report {
            revisions: Vec<Entry>,
            failure_seq: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Entry {
            app: String,
            revision: String,
            metrics: MetricsSnapshot,
        }
        let process = self.process().ok_or(LinkError::NotRunning)?;
        let report: Report = self.get_json(process, path).await?;
        Ok(MetricsReport {
            revisions: report
                .revisions
                .into_iter()
                .map(|e| (e.app, e.revision, e.metrics))
                .collect(),
            failure_seq: report.failure_seq,
        })
    }

    /// An authenticated GET of the admin API, decoded from JSON.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        process: ProxyProcess,
        path: &str,
    ) -> Result<T, LinkError> {
        Ok(self
            .inner
            .http
            .get(format!("http://{}{path}", process.admin))
            .bearer_auth(&self.inner.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// One reading of the proxy's counters.
#[derive(Debug, Clone, Default)]
pub struct MetricsReport {
    pub revisions: Vec<(String, String, MetricsSnapshot)>,
    /// Failures the proxy has counted since it started, over every revision; `None` from a
    /// proxy that does not report it.
    pub failure_seq: Option<u64>,
}

#[derive(Deserialize)]
struct EndpointReport {
    version: u64,
    endpoints: Vec<EndpointEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointEntry {
    addr: SocketAddr,
    in_flight: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
