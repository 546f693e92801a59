//! The proxy's configuration, as the controller pushes it over the admin API and as the proxy
//! keeps it on disk.
//!
//! A [`ProxyConfig`] is plain data: every application the proxy serves, where it listens, its
//! revisions with their weights and endpoints, the per-application routing extras (header and
//! cookie matches, stickiness, mirroring, fault rules) and TLS files. Revisions are named here;
//! the compiled [`RouteTable`](crate::route::RouteTable) refers to them by index.
//!
//! [`ProxyConfig::validate`] checks a whole configuration and returns every problem at once,
//! each naming the application and the field, so the admin API can answer `400` with all of
//! them and keep the configuration it runs. Percentages and weights are integers in units of
//! 0.01 %: 10,000 is everything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Weights and percentages are in units of 0.01 %; this is 100 %.
pub const TOTAL_WEIGHT: u32 = 10_000;

/// The most caller processes one fault rule may name.
pub const MAX_FAULT_CALLERS: usize = 4096;

/// Everything the proxy serves. `version` is chosen by the controller and only reported back,
/// so the controller can tell which configuration the proxy runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    pub version: u64,
    #[serde(default)]
    pub apps: Vec<AppRoute>,
}

/// One application: a listener and the revisions behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppRoute {
    pub name: String,
    /// The application's `service.listen`.
    pub listen: SocketAddr,
    pub revisions: Vec<RevisionRoute>,
    /// Explicit pins, tried in order before stickiness and weights; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Stickiness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultRule>,
    /// Serve this application over TLS (HTTP/2 and HTTP/1.1 by ALPN) instead of cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// The certificate chain (leaf first) and private key an application's listener serves TLS
/// with: PEM files on the proxy's host, as absolute paths. They are read each time a
/// configuration is applied (see [`tls`](crate::tls)), so pushing the configuration again
/// after renewing them serves the new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A revision of an application and the instances that serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionRoute {
    /// The revision hash (as the controller names revisions).
    pub name: String,
    /// Share of the application's traffic in units of 0.01 % (10,000 is all of it).
    pub weight: u32,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One instance of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// A draining endpoint gets no new requests; in-flight ones finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// Pins requests whose header or cookie matches to `revision`, whatever the weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchRule {
    /// What to look at: `{"header": "x-canary"}` or `{"cookie": "canary"}`.
    pub on: MatchOn,
    #[serde(rename = "match")]
    pub kind: MatchKind,
    pub value: String,
    pub revision: String,
}

/// The request part a [`MatchRule`] or [`Stickiness`] reads. Header names are
/// case-insensitive; cookie names are not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum MatchOn {
    Header(String),
    Cookie(String),
}

/// How a [`MatchRule`]'s value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MatchKind {
    Exact,
    Prefix,
    /// Unanchored, as in Gateway API's `RegularExpression`; anchor with `^…$` to match whole.
    Regex,
}

/// Keeps a user on one revision while weights move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Stickiness {
    /// The proxy sets this cookie to the revision it picked and honours it while that
    /// revision has weight.
    Cookie { name: String },
    /// The value of this header (a user or session id) is hashed into the weight space.
    Header { name: String },
}

/// Copies `percent` of the requests not already routed to `revision` to it; its responses are
/// discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    pub revision: String,
    pub percent: u32,
}

/// A chaos fault for `percent` of a revision's requests until `expires_at_ms` (Unix
/// milliseconds). The proxy stops applying it at expiry by itself: this is the fault's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    pub revision: String,
    pub kind: FaultKind,
    pub percent: u32,
    pub expires_at_ms: u64,
    /// Only requests from connections that these processes opened (an application's
    /// instances, by pid): a dependency fault between two applications. Absent: every client;
    /// empty: nobody (the callers have no process now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<Vec<u32>>,
}

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum FaultKind {
    /// Holds the request for `fixed_ms` plus a uniform `0..=jitter_ms` before forwarding it.
    Delay { fixed_ms: u64, jitter_ms: u64 },
    /// Answers with `status` without forwarding.
    Abort { status: u16 },
    /// Closes the client connection without an answer.
    Reset,
    /// Holds the request unanswered while the rule is in force (a partition), then forwards
    /// it as the network would once it heals; the client's own timeout decides before that.
    Blackhole,
}

/// One problem in a configuration, located by application and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("app `{app}`, {field}: {problem}")]
pub struct ConfigError {
    /// The application's name, or `apps[i]` when it has none.
    pub app: String,
    /// The field's path inside the application, e.g. `revisions[1].weight`.
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("`{0}` is used twice; names must be unique")]
    Duplicate(String),
    #[error("{addr} is also the listen address of app `{other}`; each app needs its own")]
    ListenTaken { addr: SocketAddr, other: String },
    #[error("weights of revisions with endpoints sum to {sum}, expected {TOTAL_WEIGHT} (100 %)")]
    WeightSum { sum: u64 },
    #[error("revision `{0}` has weight but no endpoint that is not draining; give its weight to a revision that can serve")]
    WeightWithoutEndpoints(String),
    #[error("no revision is named `{0}`")]
    UnknownRevision(String),
    #[error("invalid regular expression: {0}")]
    Regex(String),
    #[error("status {0} is not an HTTP status; expected 100..=599")]
    Status(u16),
    #[error("{0} is over {TOTAL_WEIGHT} (100 %); percentages are in units of 0.01 %")]
    Percent(u32),
    #[error("`{name}` is not a valid {what}")]
    InvalidName { name: String, what: &'static str },
    #[error("`{0}` is relative; give the file's absolute path on the proxy's host")]
    RelativePath(PathBuf),
    /// A certificate or key file that cannot be read or used (found when applying).
    #[error("{0}")]
    Tls(String),
    #[error("more than {0} caller processes")]
    TooManyCallers(usize),
}

/// Every problem found in a configuration; the proxy keeps running the previous one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidConfig(pub Vec<ConfigError>);

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid proxy configuration:")?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

/// Why a configuration body could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("proxy configuration is not valid JSON for its schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
}

impl ProxyConfig {
    /// Parses and validates a configuration as the admin API receives it or the proxy reads
    /// it back from disk.
    pub fn from_json(bytes: &[u8]) -> Result<ProxyConfig, LoadError> {
        let config: ProxyConfig = serde_json::from_slice(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the whole configuration and returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = Vec::new();
        let mut names = BTreeSet::new();
        let mut listeners: BTreeMap<SocketAddr, String> = BTreeMap::new();
        for (index, app) in self.apps.iter().enumerate() {
            let label = if app.name.is_empty() {
                format!("apps[{index}]")
            } else {
                app.name.clone()
            };
            let mut report = |field: String, problem: Problem| {
                errors.push(ConfigError {
                    app: label.clone(),
                    field,
                    problem,
                })
            };
            if app.name.is_empty() {
                report("name".into(), Problem::Empty);
            } else if !names.insert(app.name.as_str()) {
                report("name".into(), Problem::Duplicate(app.name.clone()));
            }
            if let Some(other) = listeners.get(&app.listen) {
                report(
                    "listen".into(),
                    Problem::ListenTaken {
                        addr: app.listen,
                        other: other.clone(),
                    },
                );
            } else {
                listeners.insert(app.listen, label.clone());
            }
            validate_app(app, &mut report);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidConfig(errors))
        }
    }
}

fn validate_app(app: &AppRoute, report: &mut impl FnMut(String, Problem)) {
    if app.revisions.is_empty() {
        report("revisions".into(), Problem::Empty);
    }
    let cookie_sticky = matches!(app.sticky, Some(Stickiness::Cookie { .. }));
    let mut revision_names = BTreeSet::new();
    for (i, revision) in app.revisions.iter().enumerate() {
        if revision.name.is_empty() {
            report(format!("revisions[{i}].name"), Problem::Empty);
        } else if !revision_names.insert(revision.name.as_str()) {
            report(
                format!("revisions[{i}].name"),
                Problem::Duplicate(revision.name.clone()),
            );
        } else if cookie_sticky && !revision.name.bytes().all(is_cookie_octet) {
            report(
                format!("revisions[{i}].name"),
                Problem::InvalidName {
                    name: revision.name.clone(),
                    what: "cookie value (the sticky cookie carries the revision name)",
                },
            );
        }
        let mut addrs = BTreeSet::new();
        for (j, endpoint) in revision.endpoints.iter().enumerate() {
            if !addrs.insert(endpoint.addr) {
                report(
                    format!("revisions[{i}].endpoints[{j}].addr"),
                    Problem::Duplicate(endpoint.addr.to_string()),
                );
            }
        }
    }
    if app.revisions.len() > 1 {
        let mut sum = 0u64;
        for (i, revision) in app.revisions.iter().enumerate() {
            if revision.endpoints.iter().any(|e| !e.draining) {
                sum += u64::from(revision.weight);
            } else if revision.weight > 0 {
                report(
                    format!("revisions[{i}].weight"),
                    Problem::WeightWithoutEndpoints(revision.name.clone()),
                );
            }
        }
        if sum != u64::from(TOTAL_WEIGHT) {
            report("revisions[*].weight".into(), Problem::WeightSum { sum });
        }
    }
    let mut revision_ref = |field: String, name: &str| {
        if !revision_names.contains(name) {
            report(field, Problem::UnknownRevision(name.to_string()));
        }
    };
    for (i, rule) in app.matches.iter().enumerate() {
        revision_ref(format!("matches[{i}].revision"), &rule.revision);
    }
    if let Some(mirror) = &app.mirror {
        revision_ref("mirror.revision".into(), &mirror.revision);
    }
    for (i, fault) in app.faults.iter().enumerate() {
        revision_ref(format!("faults[{i}].revision"), &fault.revision);
    }
    for (i, rule) in app.matches.iter().enumerate() {
        let (field, name, what) = match &rule.on {
            MatchOn::Header(name) => ("header", name, "header name"),
            MatchOn::Cookie(name) => ("cookie", name, "cookie name"),
        };
        check_token(format!("matches[{i}].on.{field}"), name, what, report);
        if rule.kind == MatchKind::Regex {
            if let Err(error) = regex::Regex::new(&rule.value) {
                report(
                    format!("matches[{i}].value"),
                    Problem::Regex(error.to_string()),
                );
            }
        }
    }
    match &app.sticky {
        Some(Stickiness::Cookie { name }) => {
            check_token("sticky.cookie.name".into(), name, "cookie name", report)
        }
        Some(Stickiness::Header { name }) => {
            check_token("sticky.header.name".into(), name, "header name", report)
        }
        None => {}
    }
    if let Some(mirror) = &app.mirror {
        if mirror.percent > TOTAL_WEIGHT {
            report("mirror.percent".into(), Problem::Percent(mirror.percent));
        }
    }
    if let Some(tls) = &app.tls {
        for (field, path) in [
            ("tls.certFile", &tls.cert_file),
            ("tls.keyFile", &tls.key_file),
        ] {
            if path.as_os_str().is_empty() {
                report(field.into(), Problem::Empty);
            } else if path.is_relative() {
                report(field.into(), Problem::RelativePath(path.clone()));
            }
        }
    }
    for (i, fault) in app.faults.iter().enumerate() {
        if fault.percent > TOTAL_WEIGHT {
            report(
                format!("faults[{i}].percent"),
                Problem::Percent(fault.percent),
            );
        }
        if fault
            .callers
            .as_ref()
            .is_some_and(|c| c.len() > MAX_FAULT_CALLERS)
        {
            report(
                format!("faults[{i}].callers"),
                Problem::TooManyCallers(MAX_FAULT_CALLERS),
            );
        }
        if let FaultKind::Abort { status } = fault.kind {
            if !(100..=599).contains(&status) {
                report(
                    format!("faults[{i}].kind.abort.status"),
                    Problem::Status(status),
                );
            }
        }
    }
}

fn check_token(
    field: String,
    name: &str,
    what: &'static str,
    report: &mut impl FnMut(String, Problem),
) {
    if name.is_empty() {
        report(field, Problem::Empty);
    } else if !name.bytes().all(is_token_char) {
        report(
            field,
            Problem::InvalidName {
                name: name.to_string(),
                what,
            },
        );
    }
}

/// RFC 9110 `tchar`: what header and cookie names are made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6265 `cookie-octet`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid two-revision app with every optional section, in the wire format.
    const CHECKOUT: &str = r#"{
        "version": 7,
        "apps": [{
            "name": "checkout",
            "listen": "127.0.0.1:8080",
            "revisions": [
                {"name": "stable", "weight": 9500, "endpoints": [
                    {"addr": "127.0.0.1:9001"}, {"addr": "127.0.0.1:9002", "draining": true}]},
                {"name": "canary", "weight": 500, "endpoints": [{"addr": "127.0.0.1:9003"}]}
            ],
            "matches": [{"on": {"header": "x-canary"}, "match": "exact", "value": "1", "revision": "canary"}],
            "sticky": {"cookie": {"name": "gauntlet-revision"}},
            "mirror": {"revision": "canary", "percent": 1000},
            "faults": [
                {"revision": "canary", "kind": {"delay": {"fixedMs": 100, "jitterMs": 50}}, "percent": 10000, "expiresAtMs": 1000},
                {"revision": "canary", "kind": {"abort": {"status": 503}}, "percent": 500, "expiresAtMs": 1000},
                {"revision": "canary", "kind": "reset", "percent": 1, "expiresAtMs": 1000}
            ]
        }]
    }"#;

    fn checkout() -> ProxyConfig {
        serde_json::from_str(CHECKOUT).expect("fixture parses")
    }

    fn problems(config: &ProxyConfig) -> Vec<(String, String, Problem)> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(InvalidConfig(errors)) => errors
                .into_iter()
                .map(|e| (e.app, e.field, e.problem))
                .collect(),
        }
    }

    #[test]
    fn wire_format_parses_every_section_and_validates() {
        let config = ProxyConfig::from_json(CHECKOUT.as_bytes()).expect("valid");
        let app = &config.apps[0];
        assert_eq!(config.version, 7);
        assert!(app.revisions[0].endpoints[1].draining);
        assert_eq!(app.matches[0].on, MatchOn::Header("x-canary".into()));
        assert_eq!(app.matches[0].kind, MatchKind::Exact);
        assert_eq!(
            app.faults[0].kind,
            FaultKind::Delay {
                fixed_ms: 100,
                jitter_ms: 50
            }
        );
        assert_eq!(app.faults[2].kind, FaultKind::Reset);
    }

    #[test]
    fn serialized_config_reads_back_identical() {
        let config = checkout();
        let bytes = serde_json::to_vec(&config).expect("serializes");
        assert_eq!(ProxyConfig::from_json(&bytes).expect("valid"), config);
    }

    #[test]
    fn unknown_fields_are_rejected_at_any_depth() {
        let typo = CHECKOUT.replace("\"draining\"", "\"drainng\"");
        let error = ProxyConfig::from_json(typo.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("drainng"), "{error}");
    }

    #[test]
    fn weights_must_sum_to_ten_thousand_over_revisions_with_endpoints() {
        let mut config = checkout();
        config.apps[0].revisions[1].weight = 400;
        assert_eq!(
            problems(&config),
            vec![(
                "checkout".into(),
                "revisions[*].weight".into(),
                Problem::WeightSum { sum: 9900 }
            )]
        );
    }

    #[test]
    fn weight_on_a_revision_without_serving_endpoints_is_named() {
        let mut config = checkout();
        config.apps[0].revisions[1].endpoints[0].draining = true;
        let found = problems(&config);
        assert!(found.contains(&(
            "checkout".into(),
            "revisions[1].weight".into(),
            Problem::WeightWithoutEndpoints("canary".into())
        )));
        assert!(found.contains(&(
            "checkout".into(),
            "revisions[*].weight".into(),
            Problem::WeightSum { sum: 9500 }
        )));
    }

    #[test]
    fn a_single_revision_needs_neither_weight_nor_endpoints() {
        let mut config = checkout();
        let app = &mut config.apps[0];
        app.revisions.truncate(1);
        app.revisions[0].weight = 0;
        app.revisions[0].endpoints.clear();
        app.matches.clear();
        app.mirror = None;
        app.faults.clear();
        assert_eq!(problems(&config), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_its_app_and_field() {
        let mut config = checkout();
        let mut second = config.apps[0].clone();
        second.name = "payments".into();
        second.matches[0].kind = MatchKind::Regex;
        second.matches[0].value = "(unclosed".into();
        second.mirror = Some(Mirror {
            revision: "gone".into(),
            percent: 10_001,
        });
        second.faults[1].kind = FaultKind::Abort { status: 600 };
        second.faults[2].revision = "old".into();
        second.sticky = Some(Stickiness::Header {
            name: "x user".into(),
        });
        config.apps.push(second);

        let found: Vec<(String, String)> = problems(&config)
            .into_iter()
            .map(|(app, field, _)| (app, field))
            .collect();
        let expected = [
            ("payments", "listen"),
            ("payments", "mirror.revision"),
            ("payments", "faults[2].revision"),
            ("payments", "matches[0].value"),
            ("payments", "sticky.header.name"),
            ("payments", "mirror.percent"),
            ("payments", "faults[1].kind.abort.status"),
        ];
        assert_eq!(
            found,
            expected
                .iter()
                .map(|(a, f)| (a.to_string(), f.to_string()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn error_message_says_what_to_fix() {
        let mut config = checkout();
        config.apps[0].faults[0].percent = 20_000;
        let message = config.validate().unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid proxy configuration:\n  app `checkout`, faults[0].percent: 20000 is over \
             10000 (100 %); percentages are in units of 0.01 %"
        );
    }

    #[test]
    fn duplicate_names_and_endpoints_are_rejected() {
        let mut config = checkout();
        config.apps.push(config.apps[0].clone());
        config.apps[1].listen = "127.0.0.1:8081".parse().expect("addr");
        config.apps[0].revisions[1].name = "stable".into();
        config.apps[0].revisions[0].endpoints[1].addr = "127.0.0.1:9001".parse().expect("addr");
        let found = problems(&config);
        assert!(found.contains(&(
            "checkout".into(),
            "name".into(),
            Problem::Duplicate("checkout".into())
        )));
        assert!(found.contains(&(
            "checkout".into(),
            "revisions[1].name".into(),
            Problem::Duplicate("stable".into())
        )));
        assert!(found.contains(&(
            "checkout".into(),
            "revisions[0].endpoints[1].addr".into(),
            Problem::Duplicate("127.0.0.1:9001".into())
        )));
    }

    #[test]
    fn cookie_stickiness_requires_revision_names_usable_as_cookie_values() {
        let mut config = checkout();
        config.apps[0].revisions[0].name = "has space".into();
        config.apps[0].matches.clear();
        config.apps[0].mirror = None;
        config.apps[0].faults.clear();
        assert!(matches!(
            &problems(&config)[..],
            [(_, field, Problem::InvalidName { .. })] if field == "revisions[0].name"
        ));
    }

    #[test]
    fn tls_files_must_be_given_as_absolute_paths() {
        let mut config = checkout();
        config.apps[0].tls = Some(TlsFiles {
            cert_file: "certs/web.pem".into(),
            key_file: PathBuf::new(),
        });
        assert_eq!(
            problems(&config),
            vec![
                (
                    "checkout".into(),
                    "tls.certFile".into(),
                    Problem::RelativePath("certs/web.pem".into())
                ),
                ("checkout".into(), "tls.keyFile".into(), Problem::Empty),
            ]
        );
        let tls = r#""tls": {"certFile": "/etc/web/cert.pem", "keyFile": "/etc/web/key.pem"},
            "faults""#;
        let config =
            ProxyConfig::from_json(CHECKOUT.replace(r#""faults""#, tls).as_bytes()).expect("valid");
        assert_eq!(
            config.apps[0].tls.as_ref().map(|t| t.key_file.as_path()),
            Some(std::path::Path::new("/etc/web/key.pem"))
        );
    }

    #[test]
    fn nameless_app_is_located_by_index() {
        let mut config = checkout();
        config.apps[0].name.clear();
        assert_eq!(
            problems(&config),
            vec![("apps[0]".into(), "name".into(), Problem::Empty)]
        );
    }
}
