//! Routing: which revision of an application a request goes to.
//!
//! [`RouteTable::compile`] turns a validated [`ProxyConfig`] into the form the data path reads
//! on every request: regular expressions compiled, header names lowercased, cumulative weights
//! precomputed, every revision referred to by its index, and one
//! [`RevisionMetrics`] handle per revision. [`RouteTable::pick`] then allocates nothing.
//!
//! A request's revision is decided in this order:
//! 1. the application's match rules, in order; the first whose header or cookie matches pins
//!    the request (whatever the revision's weight: this is how a canary at 0 % is tested);
//! 2. stickiness: a sticky cookie naming a revision that has weight pins it; a sticky header's
//!    value is hashed (FNV-1a 64) to a fixed spot in the weight space, so the same user lands
//!    on the same revision for as long as the weights stay put;
//! 3. the weighted draw, at a precision of 0.01 %. With cookie stickiness, the pick tells the
//!    data path to set the cookie.
//!
//! Independently, a mirror copies a percentage of the requests not routed to the mirror
//! revision to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use regex::Regex;

use crate::config::{
    Endpoint, InvalidConfig, MatchKind, MatchOn, ProxyConfig, Stickiness, TOTAL_WEIGHT,
};
use crate::draw::{below, fnv1a64, mix};
use crate::faults::Fault;
use crate::metrics::RevisionMetrics;

/// What routing reads from a request. The data path implements it over `http::HeaderMap`
/// (see [`cookie_value`] for the `Cookie` header). Values that are not valid UTF-8 are `None`.
pub trait RequestView {
    /// The first value of header `name`; `name` is always lowercase.
    fn header(&self, name: &str) -> Option<&str>;
    /// The value of cookie `name` (case-sensitive).
    fn cookie(&self, name: &str) -> Option<&str>;
}

/// Finds cookie `name` in one `Cookie` header value (`a=1; b=2`), unquoting a quoted value.
pub fn cookie_value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if key.trim_end() != name {
            return None;
        }
        let value = value.trim_start();
        Some(
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value),
        )
    })
}

/// A configuration compiled for the data path. Immutable: a new configuration is a new table,
/// swapped in whole, so a request sees the old routing or the new, never a mixture.
#[derive(Debug)]
pub struct RouteTable {
    version: u64,
    apps: Vec<AppTable>,
    by_listen: HashMap<SocketAddr, usize>,
}

/// One application, compiled.
#[derive(Debug)]
pub struct AppTable {
    name: String,
    listen: SocketAddr,
    revisions: Vec<RevisionTable>,
    /// `cumulative[i]` is the end of revision `i`'s band in `0..10_000`.
    cumulative: Vec<u32>,
    matches: Vec<CompiledMatch>,
    sticky: Option<CompiledSticky>,
    mirror: Option<(usize, u32)>,
    faults: Vec<Fault>,
}

/// One revision, compiled.
#[derive(Debug)]
pub struct RevisionTable {
    name: String,
    /// The weight routing uses: the configured one, or everything for a lone revision.
    weight: u32,
    endpoints: Vec<Endpoint>,
    metrics: Arc<RevisionMetrics>,
}

#[derive(Debug)]
struct CompiledMatch {
    on: Lookup,
    matcher: Matcher,
    revision: usize,
}

#[derive(Debug)]
enum Lookup {
    Header(String),
    Cookie(String),
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum CompiledSticky {
    Cookie(String),
    Header(String),
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick<'a> {
    /// Index into [`AppTable::revisions`].
    pub revision: usize,
    /// A revision to send a copy to, its response discarded.
    pub mirror: Option<usize>,
    /// A cookie to set on the response, to keep the user on `revision`.
    pub sticky_set: Option<StickyCookie<'a>>,
}

/// The sticky cookie the data path sets: `Set-Cookie: {name}={value}; Path=/; HttpOnly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyCookie<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl RouteTable {
    /// Validates and compiles `config`. Metric handles of (application, revision) pairs that
    /// `previous` already has are carried over, so counters survive reloads.
    pub fn compile(
        config: &ProxyConfig,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, InvalidConfig> {
        config.validate()?;
        let mut apps = Vec::with_capacity(config.apps.len());
        let mut by_listen = HashMap::with_capacity(config.apps.len());
        for (app_index, app) in config.apps.iter().enumerate() {
            let old = previous.and_then(|p| p.apps.iter().find(|a| a.name == app.name));
            let index_of = |name: &str| app.revisions.iter().position(|r| r.name == name);
            let lone = app.revisions.len() == 1;
            let revisions: Vec<RevisionTable> = app
                .revisions
                .iter()
                .map(|r| RevisionTable {
                    name: r.name.clone(),
                    weight: if lone { TOTAL_WEIGHT } else { r.weight },
                    endpoints: r.endpoints.clone(),
                    metrics: old
                        .and_then(|a| a.revisions.iter().find(|o| o.name == r.name))
                        .map(|o| Arc::clone(&o.metrics))
                        .unwrap_or_default(),
                })
                .collect();
            let cumulative = revisions
                .iter()
                .scan(0u32, |sum, r| {
                    *sum += r.weight;
                    Some(*sum)
                })
                .collect();
            let mut matches = Vec::with_capacity(app.matches.len());
            for rule in &app.matches {
                let on = match &rule.on {
                    MatchOn::Header(name) => Lookup::Header(name.to_ascii_lowercase()),
                    MatchOn::Cookie(name) => Lookup::Cookie(name.clone()),
                };
                let matcher = match rule.kind {
                    MatchKind::Exact => Matcher::Exact(rule.value.clone()),
                    MatchKind::Prefix => Matcher::Prefix(rule.value.clone()),
                    MatchKind::Regex => Matcher::Regex(
                        Regex::new(&rule.value).map_err(|e| unreachable_invalid(&app.name, e))?,
                    ),
                };
                matches.push(CompiledMatch {
                    on,
                    matcher,
                    revision: index_of(&rule.revision).unwrap_or(0),
                });
            }
            apps.push(AppTable {
                name: app.name.clone(),
                listen: app.listen,
                cumulative,
                matches,
                sticky: app.sticky.as_ref().map(|s| match s {
                    Stickiness::Cookie { name } => CompiledSticky::Cookie(name.clone()),
                    Stickiness::Header { name } => {
                        CompiledSticky::Header(name.to_ascii_lowercase())
                    }
                }),
                mirror: app
                    .mirror
                    .as_ref()
                    .and_then(|m| Some((index_of(&m.revision)?, m.percent))),
                faults: app
                    .faults
                    .iter()
                    .filter_map(|f| {
                        Some(Fault {
                            revision: index_of(&f.revision)?,
                            kind: f.kind,
                            percent: f.percent,
                            expires_at_ms: f.expires_at_ms,
                            callers: f.callers.as_deref().map(Arc::from),
                        })
                    })
                    .collect(),
                revisions,
            });
            by_listen.insert(app.listen, app_index);
        }
        Ok(RouteTable {
            version: config.version,
            apps,
            by_listen,
        })
    }

    /// The controller's version of the configuration this table was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn apps(&self) -> &[AppTable] {
        &self.apps
    }

    /// The application served on `listen`, by index.
    pub fn app_index(&self, listen: SocketAddr) -> Option<usize> {
        self.by_listen.get(&listen).copied()
    }

    /// Every (application, revision, metrics) entry, for
    /// [`render_prometheus`](crate::metrics::render_prometheus) and snapshots.
    pub fn metrics(&self) -> Vec<(&str, &str, &RevisionMetrics)> {
        self.apps
            .iter()
            .flat_map(|a| {
                a.revisions
                    .iter()
                    .map(move |r| (a.name.as_str(), r.name.as_str(), &*r.metrics))
            })
            .collect()
    }

    /// Routes one request to application `app` (an index into [`RouteTable::apps`]) with one
    /// random `draw`. Allocates nothing.
    ///
    /// # Panics
    /// If `app` is not an index into [`RouteTable::apps`] of this table.
    pub fn pick<R: RequestView + ?Sized>(&self, app: usize, request: &R, draw: u64) -> Pick<'_> {
        self.apps[app].pick(request, draw)
    }
}

impl AppTable {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn revisions(&self) -> &[RevisionTable] {
        &self.revisions
    }

    /// Fault rules, for [`fault_for`](crate::faults::fault_for).
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// Whether a percentage of its requests is mirrored to a revision.
    pub fn mirrors(&self) -> bool {
        self.mirror.is_some()
    }

    /// See [`RouteTable::pick`].
    pub fn pick<R: RequestView + ?Sized>(&self, request: &R, draw: u64) -> Pick<'_> {
        let mut sticky_set = None;
        let revision = if let Some(pinned) = self.matched(request) {
            pinned
        } else {
            match &self.sticky {
                Some(CompiledSticky::Header(name)) => match request.header(name) {
                    Some(value) => self.weighted(mix(fnv1a64(value.as_bytes()))),
                    None => self.weighted(draw),
                },
                Some(CompiledSticky::Cookie(name)) => {
                    let live = request.cookie(name).and_then(|value| {
                        self.revisions
                            .iter()
                            .position(|r| r.weight > 0 && r.name == value)
                    });
                    live.unwrap_or_else(|| {
                        let picked = self.weighted(draw);
                        sticky_set = Some(StickyCookie {
                            name,
                            value: &self.revisions[picked].name,
                        });
                        picked
                    })
                }
                None => self.weighted(draw),
            }
        };
        let mirror = self.mirror.and_then(|(target, percent)| {
            (target != revision && below(mix(draw), TOTAL_WEIGHT) < percent).then_some(target)
        });
        Pick {
            revision,
            mirror,
            sticky_set,
        }
    }

    fn matched<R: RequestView + ?Sized>(&self, request: &R) -> Option<usize> {
        self.matches.iter().find_map(|rule| {
            let value = match &rule.on {
                Lookup::Header(name) => request.header(name),
                Lookup::Cookie(name) => request.cookie(name),
            }?;
            let hit = match &rule.matcher {
                Matcher::Exact(expected) => value == expected,
                Matcher::Prefix(prefix) => value.starts_with(prefix.as_str()),
                Matcher::Regex(regex) => regex.is_match(value),
            };
            hit.then_some(rule.revision)
        })
    }

    /// The revision whose band holds `draw`'s position; revisions of weight 0 have empty bands.
    fn weighted(&self, draw: u64) -> usize {
        let position = below(draw, TOTAL_WEIGHT);
        self.cumulative
            .iter()
            .position(|&end| position < end)
            .unwrap_or(0)
    }
}

impl RevisionTable {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight routing uses, in units of 0.01 %.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The handle the data path records this revision's requests on.
    pub fn metrics(&self) -> &Arc<RevisionMetrics> {
        &self.metrics
    }
}

/// Validation compiles every regex first, so this is only reached if the two disagree.
fn unreachable_invalid(app: &str, error: regex::Error) -> InvalidConfig {
    InvalidConfig(vec![crate::config::ConfigError {
        app: app.to_string(),
        field: "matches".into(),
        problem: crate::config::Problem::Regex(error.to_string()),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppRoute, MatchRule, Mirror, RevisionRoute};

    #[derive(Default)]
    struct Request {
        headers: Vec<(String, String)>,
        cookie: Option<String>,
    }

    impl RequestView for Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn cookie(&self, name: &str) -> Option<&str> {
            cookie_value(self.cookie.as_deref()?, name)
        }
    }

    fn header(name: &str, value: &str) -> Request {
        Request {
            headers: vec![(name.into(), value.into())],
            cookie: None,
        }
    }

    fn cookie(header: &str) -> Request {
        Request {
            headers: vec![],
            cookie: Some(header.into()),
        }
    }

    /// xorshift64: a deterministic stream of draws.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn app(weights: &[(&str, u32)]) -> AppRoute {
        AppRoute {
            name: "checkout".into(),
            listen: "127.0.0.1:8080".parse().expect("addr"),
            revisions: weights
                .iter()
                .enumerate()
                .map(|(i, (name, weight))| RevisionRoute {
                    name: name.to_string(),
                    weight: *weight,
                    endpoints: vec![Endpoint {
                        addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                        draining: false,
                    }],
                })
                .collect(),
            matches: vec![],
            sticky: None,
            mirror: None,
            faults: vec![],
            tls: None,
        }
    }

    fn table(app: AppRoute) -> RouteTable {
        compile(app, None)
    }

    fn compile(app: AppRoute, previous: Option<&RouteTable>) -> RouteTable {
        let config = ProxyConfig {
            version: 1,
            apps: vec![app],
        };
        RouteTable::compile(&config, previous).expect("valid config")
    }

    fn rule(on: MatchOn, kind: MatchKind, value: &str, revision: &str) -> MatchRule {
        MatchRule {
            on,
            kind,
            value: value.into(),
            revision: revision.into(),
        }
    }

    fn counts(table: &RouteTable, draws: usize, seed: u64) -> Vec<u64> {
        let mut rng = XorShift(seed);
        let mut counts = vec![0u64; table.apps()[0].revisions().len()];
        for _ in 0..draws {
            counts[table.pick(0, &Request::default(), rng.next()).revision] += 1;
        }
        counts
    }

    #[test]
    fn weighted_split_of_five_percent_is_within_four_standard_deviations() {
        let table = table(app(&[("stable", 9_500), ("canary", 500)]));
        let n: f64 = 100_000.0;
        let p = 0.05;
        let sd = (n * p * (1.0 - p)).sqrt();
        for seed in [1, 0x9E37_79B9, 0xDEAD_BEEF_CAFE] {
            let canary = counts(&table, 100_000, seed)[1] as f64;
            assert!((canary - n * p).abs() < 4.0 * sd, "seed {seed}: {canary}");
        }
    }

    #[test]
    fn a_revision_of_weight_zero_never_gets_traffic() {
        let table = table(app(&[("old", 0), ("stable", 9_999), ("canary", 1)]));
        let found = counts(&table, 100_000, 42);
        assert_eq!(found[0], 0);
        assert!(found[2] > 0 && found[2] < 40, "{found:?}");
        assert_eq!(table.pick(0, &Request::default(), 0).revision, 1);
        assert_eq!(table.pick(0, &Request::default(), u64::MAX).revision, 2);
    }

    #[test]
    fn a_lone_revision_takes_everything_whatever_its_weight() {
        let table = table(app(&[("only", 0)]));
        assert_eq!(table.apps()[0].revisions()[0].weight(), TOTAL_WEIGHT);
        assert_eq!(table.pick(0, &Request::default(), u64::MAX).revision, 0);
    }

    #[test]
    fn first_matching_rule_pins_even_a_revision_without_weight() {
        let mut route = app(&[("stable", 10_000), ("canary", 0), ("preview", 0)]);
        route.matches = vec![
            rule(
                MatchOn::Header("X-Canary".into()),
                MatchKind::Exact,
                "1",
                "canary",
            ),
            rule(
                MatchOn::Header("x-canary".into()),
                MatchKind::Prefix,
                "",
                "preview",
            ),
            rule(
                MatchOn::Cookie("beta".into()),
                MatchKind::Regex,
                "^(yes|true)$",
                "preview",
            ),
        ];
        let table = table(route);
        let to = |r: &Request| table.pick(0, r, 0).revision;
        assert_eq!(to(&header("x-canary", "1")), 1);
        assert_eq!(to(&header("x-canary", "10")), 2);
        assert_eq!(to(&cookie("a=b; beta=true")), 2);
        assert_eq!(to(&cookie("beta=truely")), 0);
        assert_eq!(to(&Request::default()), 0);
    }

    #[test]
    fn a_match_sets_no_sticky_cookie() {
        let mut route = app(&[("stable", 10_000), ("canary", 0)]);
        route.matches = vec![rule(
            MatchOn::Header("x-canary".into()),
            MatchKind::Exact,
            "1",
            "canary",
        )];
        route.sticky = Some(Stickiness::Cookie { name: "rev".into() });
        let table = table(route);
        let pick = table.pick(0, &header("x-canary", "1"), 0);
        assert_eq!((pick.revision, pick.sticky_set), (1, None));
    }

    #[test]
    fn cookie_stickiness_sets_the_cookie_then_honours_it() {
        let mut route = app(&[("stable", 5_000), ("canary", 5_000)]);
        route.sticky = Some(Stickiness::Cookie { name: "rev".into() });
        let table = table(route);
        let first = table.pick(0, &Request::default(), u64::MAX);
        assert_eq!(first.revision, 1);
        assert_eq!(
            first.sticky_set,
            Some(StickyCookie {
                name: "rev",
                value: "canary"
            })
        );
        let mut rng = XorShift(5);
        for _ in 0..1_000 {
            let again = table.pick(0, &cookie("rev=canary"), rng.next());
            assert_eq!((again.revision, again.sticky_set), (1, None));
        }
    }

    #[test]
    fn a_sticky_cookie_for_a_revision_without_weight_is_replaced() {
        let mut route = app(&[("stable", 10_000), ("canary", 0)]);
        route.sticky = Some(Stickiness::Cookie { name: "rev".into() });
        let table = table(route);
        for request in [cookie("rev=canary"), cookie("rev=unknown")] {
            let pick = table.pick(0, &request, 7);
            assert_eq!(pick.revision, 0);
            assert_eq!(pick.sticky_set.map(|c| c.value), Some("stable"));
        }
    }

    #[test]
    fn a_sticky_header_value_always_lands_on_the_same_revision() {
        let mut route = app(&[("stable", 5_000), ("canary", 5_000)]);
        route.sticky = Some(Stickiness::Header {
            name: "X-User".into(),
        });
        let table = table(route);
        let mut rng = XorShift(11);
        let mut seen = [0; 2];
        for user in [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
        ] {
            let request = header("x-user", user);
            let first = table.pick(0, &request, rng.next()).revision;
            for _ in 0..100 {
                assert_eq!(
                    table.pick(0, &request, rng.next()).revision,
                    first,
                    "{user}"
                );
            }
            seen[first] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn a_sticky_header_user_on_the_canary_stays_there_as_its_weight_grows() {
        let at = |canary: u32| {
            let mut route = app(&[("stable", 10_000 - canary), ("canary", canary)]);
            route.sticky = Some(Stickiness::Header {
                name: "x-user".into(),
            });
            table(route)
        };
        let (five, fifty) = (at(500), at(5_000));
        for i in 0..2_000 {
            let request = header("x-user", &format!("user-{i}"));
            if five.pick(0, &request, 0).revision == 1 {
                assert_eq!(fifty.pick(0, &request, 0).revision, 1);
            }
        }
    }

    #[test]
    fn mirror_copies_its_percentage_of_requests_routed_elsewhere() {
        let mut route = app(&[("stable", 9_000), ("canary", 1_000)]);
        route.mirror = Some(Mirror {
            revision: "canary".into(),
            percent: 2_000,
        });
        let table = table(route);
        let mut rng = XorShift(99);
        let (mut to_stable, mut mirrored) = (0.0, 0.0);
        for _ in 0..100_000 {
            let pick = table.pick(0, &Request::default(), rng.next());
            match pick.revision {
                0 => {
                    to_stable += 1.0;
                    if pick.mirror == Some(1) {
                        mirrored += 1.0;
                    }
                }
                _ => assert_eq!(pick.mirror, None),
            }
        }
        let sd = (to_stable * 0.2 * 0.8f64).sqrt();
        assert!(
            (mirrored - to_stable * 0.2).abs() < 4.0 * sd,
            "{mirrored} of {to_stable}"
        );
    }

    #[test]
    fn metrics_handles_survive_a_recompile_for_the_same_revision() {
        let first = table(app(&[("stable", 9_000), ("canary", 1_000)]));
        first.apps()[0].revisions()[1].metrics().record_request();
        let second = compile(app(&[("stable", 5_000), ("canary", 5_000)]), Some(&first));
        assert!(Arc::ptr_eq(
            first.apps()[0].revisions()[1].metrics(),
            second.apps()[0].revisions()[1].metrics()
        ));
        let third = compile(app(&[("stable", 5_000), ("next", 5_000)]), Some(&second));
        assert_eq!(
            third.apps()[0].revisions()[1].metrics().snapshot().requests,
            0
        );
        assert_eq!(third.metrics().len(), 2);
    }

    #[test]
    fn an_invalid_config_does_not_compile() {
        let mut route = app(&[("stable", 9_000), ("canary", 500)]);
        route.faults = vec![];
        let config = ProxyConfig {
            version: 2,
            apps: vec![route],
        };
        assert!(RouteTable::compile(&config, None).is_err());
    }

    #[test]
    fn listeners_resolve_to_their_app() {
        let table = table(app(&[("stable", 10_000)]));
        assert_eq!(
            table.app_index("127.0.0.1:8080".parse().expect("addr")),
            Some(0)
        );
        assert_eq!(
            table.app_index("127.0.0.1:8081".parse().expect("addr")),
            None
        );
        assert_eq!(table.version(), 1);
    }

    #[test]
    fn cookie_values_are_found_among_pairs_and_unquoted() {
        let header = "session=abc; rev=\"canary\";beta = yes";
        assert_eq!(cookie_value(header, "rev"), Some("canary"));
        assert_eq!(cookie_value(header, "session"), Some("abc"));
        assert_eq!(cookie_value(header, "beta"), Some("yes"));
        assert_eq!(cookie_value(header, "Rev"), None);
        assert_eq!(cookie_value("", "rev"), None);
    }
}
