//! The pure core of `gauntlet proxy`, Gauntlet's data plane.
//!
//! The proxy is a separate process that serves every application's `service.listen`, splits
//! its traffic between revisions, measures every request per revision and carries the fault
//! hooks chaos experiments use. The controller configures it and never sits in the request
//! path. This crate holds every decision the proxy makes, as pure functions over plain data
//! with the clock (`now_ms`) and randomness (`draw: u64`) passed in, so each is tested
//! deterministically in microseconds:
//!
//! - [`config`]: the [`ProxyConfig`] the controller pushes (applications, revisions with
//!   weights in units of 0.01 %, endpoints, matches, stickiness, mirroring, fault rules), and
//!   its validation, which reports every problem by application and field.
//! - [`route`]: a configuration compiled into a [`RouteTable`]; [`RouteTable::pick`] routes one
//!   request (match rules, then stickiness, then the weighted draw, plus mirroring) without
//!   allocating or looking anything up by name.
//! - [`balance`]: power of two choices among a revision's endpoints, and passive health
//!   (ejection after consecutive refused connections, doubling windows, half-open retries).
//! - [`faults`]: which fault, if any, a request gets; leases are enforced here, so an expired
//!   rule never fires even if the controller is gone.
//! - [`metrics`]: per (application, revision) atomic counters and latency histograms, created
//!   when a table is compiled and carried across reloads, rendered for Prometheus and read as
//!   snapshots and deltas by the controller.
//! - [`draw`]: how one random `u64` becomes several decisions, and the stable hash for
//!   stickiness.
//!
//! One request through the data path, as the next layer will wire it:
//!
//! ```
//! use gauntlet_proxy::{balance, faults, route::RequestView, ProxyConfig, RouteTable};
//!
//! struct NoHeaders;
//! impl RequestView for NoHeaders {
//!     fn header(&self, _: &str) -> Option<&str> { None }
//!     fn cookie(&self, _: &str) -> Option<&str> { None }
//! }
//!
//! let config = ProxyConfig::from_json(br#"{"version": 1, "apps": [{
//!     "name": "checkout", "listen": "127.0.0.1:8080",
//!     "revisions": [{"name": "v1", "weight": 10000,
//!                    "endpoints": [{"addr": "127.0.0.1:9001"}]}]}]}"#)?;
//! let table = RouteTable::compile(&config, None)?;
//! let app = table.app_index("127.0.0.1:8080".parse()?).expect("served");
//! let (now_ms, draw) = (1_700_000_000_000, 0x5eed);
//!
//! let pick = table.pick(app, &NoHeaders, draw);
//! let revision = &table.apps()[app].revisions()[pick.revision];
//! assert!(faults::fault_for(table.apps()[app].faults(), pick.revision, now_ms, draw).is_none());
//! let states = vec![balance::EndpointState::default(); revision.endpoints().len()];
//! let endpoint = balance::choose(&states, draw, now_ms).expect("an endpoint is available");
//! revision.metrics().record_request();
//! // … forward to revision.endpoints()[endpoint].addr, then:
//! revision.metrics().record_response(200, 850);
//! assert_eq!(revision.metrics().snapshot().requests, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Around this core, the imperative shell:
//!
//! - [`server`]: the [`Proxy`]: one listener per application serving HTTP/1.1 and HTTP/2
//!   (cleartext with prior knowledge on the same listener, or TLS with ALPN), forwarding as
//!   HTTP/1.1 over per-worker pools of keep-alive connections with bodies streamed both ways,
//!   `X-Forwarded-For`/`-Proto`, retry on another endpoint after a refused connection
//!   (bodiless requests only), `502`/`504`, fault actions, per-endpoint in-flight and health
//!   state kept across reloads by address, the atomic swap of a whole [`RouteTable`] on
//!   reload, mirroring (a copy sent in the background, its response discarded, bodies up to
//!   64 KiB), `Upgrade` (WebSocket) pass-through, and the client-side limits of [`Options`]:
//!   request head size (`431`), header read timeout against slow clients, HTTP/2 idle
//!   timeout and concurrent streams.
//! - [`tls`]: an application's certificate and key, read from PEM files each time a
//!   configuration is applied, into a rustls acceptor offering `h2` and `http/1.1`.
//! - [`admin`]: the authenticated admin API (push and read the configuration, JSON metrics
//!   snapshots) and the unauthenticated Prometheus `/metrics`.
//! - [`persist`]: the accepted configuration on disk, replaced atomically, so a proxy started
//!   alone serves its last one.
//!
//! Not yet here: HTTP/2 (h2c) to upstreams (instances are always spoken to in HTTP/1.1), and
//! a Unix-socket admin API.

pub mod admin;
pub mod balance;
pub mod config;
pub mod draw;
pub mod faults;
pub mod metrics;
pub mod persist;
pub mod route;
pub mod server;
pub mod tls;

pub use config::{InvalidConfig, ProxyConfig};
pub use route::{Pick, RequestView, RouteTable};
pub use server::{ApplyError, EndpointLoad, Options, Proxy};

/// The global allocator a binary serving the proxy should install (`#[global_allocator]`):
/// mimalloc. Forwarding a request allocates and frees a handful of small blocks (request and
/// response heads, channel and task state in hyper and tokio), and mimalloc's thread-local
/// free lists serve them in about half the cycles of glibc's malloc.
pub use mimalloc::MiMalloc as Allocator;
