//! Rules a manifest must follow beyond its shape: valid names and addresses, probes that make
//! sense, and a tree whose applications are unique, do not fight over a listen address and
//! depend on each other without cycles. The rules of `spec.strategy` and of analysis templates
//! are in `strategy.rs`.
//!
//! Every rule runs on every document, so a user sees all problems of a tree at once. The
//! checks are pure functions over parsed documents; `Parsed::diagnostic` places each problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::diagnostic::{Diagnostic, Origin};
use crate::model::{Application, Probe};
use std::sync::Arc;

use crate::parse::Parsed;
use crate::strategy;

/// The most instances one application may ask for; more is almost surely a typo.
pub const MAX_REPLICAS: u32 = 1000;

/// What is wrong with a valid-looking manifest, and what to write instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Invalid {
    #[error(
        "`{0}` is not a valid name: use 1 to 63 lower-case letters, digits and '-', \
         starting with a letter or digit"
    )]
    Name(String),
    #[error("must not be empty: give the program to run")]
    EmptyCommand,
    #[error("`{0}` is not a SHA-256 digest: expected 64 lower-case hex characters")]
    Sha256(String),
    #[error("unsupported URL `{0}`: expected an http://, https:// or file:// URL")]
    ArtifactUrl(String),
    #[error("a probe needs exactly one of `httpGet`, `tcpSocket`, `exec`; found {0}")]
    ProbeActions(usize),
    #[error("must be at least 1")]
    Zero,
    #[error("`{0}` is not an absolute path; name the file on the host, for example /etc/gauntlet/tls/cert.pem")]
    AbsolutePath(String),
    #[error("`{0}` is not a socket address: expected IP:port, for example 127.0.0.1:8080")]
    Listen(String),
    #[error("{0} replicas is more than the maximum of {MAX_REPLICAS}")]
    TooManyReplicas(u32),
    #[error("duplicate application name `{name}`, also defined at {first}")]
    DuplicateName { name: String, first: Origin },
    #[error("listen address `{address}` is also used by application `{other}` at {first}")]
    ListenInUse {
        address: SocketAddr,
        other: String,
        first: Origin,
    },
    #[error("unknown application `{0}`: dependsOn must name an Application of this tree")]
    UnknownDependency(String),
    #[error("an application cannot depend on itself")]
    SelfDependency,
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error(transparent)]
    Rollout(#[from] strategy::Problem),
}

/// Problems of one document on its own. They depend on nothing else, so the parser checks
/// each document once when it reads it and remembers the answer with the file.
pub(crate) fn document(parsed: &Parsed) -> Vec<Diagnostic> {
    application(&parsed.app.value)
        .into_iter()
        .map(|(path, problem)| parsed.diagnostic(&path, problem))
        .collect()
}

/// The problems between the applications of one tree: names, addresses, dependencies.
///
/// When some documents could not be read (`complete` is false), a `dependsOn` naming an
/// unknown application is not reported: it may well be defined in a broken document.
pub(crate) fn applications(apps: &[Arc<Parsed>], complete: bool) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    diagnostics.extend(unique_names(apps));
    diagnostics.extend(unique_listen_addresses(apps));
    diagnostics.extend(dependencies(apps, complete));
    diagnostics
}

/// Problems of one application on its own, each with the path of the offending field.
fn application(app: &Application) -> Vec<(String, Invalid)> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, invalid| problems.push((path.to_string(), invalid));
    if !is_dns_label(app.name()) {
        problem("metadata.name", Invalid::Name(app.name().to_string()));
    }
    let spec = &app.spec;
    if spec.replicas > MAX_REPLICAS {
        problem("spec.replicas", Invalid::TooManyReplicas(spec.replicas));
    }
    if spec.process.command.is_empty() {
        problem("spec.process.command", Invalid::EmptyCommand);
    }
    if let Some(artifact) = &spec.process.artifact {
        if !is_sha256(&artifact.sha256) {
            problem(
                "spec.process.artifact.sha256",
                Invalid::Sha256(artifact.sha256.clone()),
            );
        }
        if !["http://", "https://", "file://"]
            .iter()
            .any(|scheme| artifact.url.starts_with(scheme))
        {
            problem(
                "spec.process.artifact.url",
                Invalid::ArtifactUrl(artifact.url.clone()),
            );
        }
    }
    if let Some(probe) = &spec.readiness {
        for (field, invalid) in self::probe(probe) {
            problem(&format!("spec.readiness{field}"), invalid);
        }
    }
    if let Some(service) = &spec.service {
        if service.listen.parse::<SocketAddr>().is_err() {
            problem(
                "spec.service.listen",
                Invalid::Listen(service.listen.clone()),
            );
        }
        if let Some(tls) = &service.tls {
            for (field, path) in [
                ("spec.service.tls.certFile", &tls.cert_file),
                ("spec.service.tls.keyFile", &tls.key_file),
            ] {
                if !path.starts_with('/') {
                    problem(field, Invalid::AbsolutePath(path.clone()));
                }
            }
        }
    }
    problems.extend(strategy::application(spec));
    problems
}

/// Problems of a probe, with paths relative to it (`""` for the probe itself).
fn probe(probe: &Probe) -> Vec<(&'static str, Invalid)> {
    let mut problems = Vec::new();
    let actions = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if actions != 1 {
        problems.push(("", Invalid::ProbeActions(actions)));
    }
    if probe
        .exec
        .as_ref()
        .is_some_and(|exec| exec.command.is_empty())
    {
        problems.push((".exec.command", Invalid::EmptyCommand));
    }
    for (field, value) in [
        (".periodSeconds", probe.period_seconds),
        (".timeoutSeconds", probe.timeout_seconds),
        (".successThreshold", probe.success_threshold),
        (".failureThreshold", probe.failure_threshold),
    ] {
        if value == 0 {
            problems.push((field, Invalid::Zero));
        }
    }
    problems
}

/// A DNS label (RFC 1123): lower-case letters, digits and '-', 1 to 63 characters, starting
/// with a letter or digit.
pub(crate) fn is_dns_label(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(allowed)
}

fn is_sha256(digest: &str) -> bool {
    digest.len() == 64 && digest.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// Each name once; later definitions are reported, naming the first.
fn unique_names(apps: &[Arc<Parsed>]) -> Vec<Diagnostic> {
    let mut first: BTreeMap<&str, &Origin> = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for app in apps {
        let name = app.app.value.name();
        match first.get(name) {
            Some(origin) => diagnostics.push(app.diagnostic(
                "metadata.name",
                Invalid::DuplicateName {
                    name: name.to_string(),
                    first: (*origin).clone(),
                },
            )),
            None => {
                first.insert(name, &app.app.origin);
            }
        }
    }
    diagnostics
}

/// Each listen address (`service.listen`, a blue/green `previewListen`) served by one
/// application; later claimants are reported. An application's preview on its own service
/// address is reported by `strategy::application`.
fn unique_listen_addresses(apps: &[Arc<Parsed>]) -> Vec<Diagnostic> {
    let mut first: BTreeMap<SocketAddr, &Arc<Parsed>> = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for app in apps {
        let spec = &app.app.value.spec;
        let service = spec
            .service
            .as_ref()
            .map(|service| ("spec.service.listen", service.listen.as_str()));
        let preview = strategy::preview_listen(spec).map(|preview| (strategy::PREVIEW, preview));
        for (field, listen) in service.into_iter().chain(preview) {
            let Ok(address) = listen.parse::<SocketAddr>() else {
                continue;
            };
            match first.get(&address) {
                Some(other) if Arc::ptr_eq(other, app) => {}
                Some(other) => diagnostics.push(app.diagnostic(
                    field,
                    Invalid::ListenInUse {
                        address,
                        other: other.app.value.name().to_string(),
                        first: other.app.origin.clone(),
                    },
                )),
                None => {
                    first.insert(address, app);
                }
            }
        }
    }
    diagnostics
}

/// `dependsOn` names existing applications other than itself, and has no cycles.
fn dependencies(apps: &[Arc<Parsed>], complete: bool) -> Vec<Diagnostic> {
    let mut by_name: BTreeMap<&str, &Arc<Parsed>> = BTreeMap::new();
    for app in apps {
        by_name.entry(app.app.value.name()).or_insert(app);
    }
    let mut diagnostics = Vec::new();
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for app in apps {
        let name = app.app.value.name();
        for (i, dependency) in app.app.value.spec.depends_on.iter().enumerate() {
            let path = format!("spec.dependsOn[{i}]");
            if dependency == name {
                diagnostics.push(app.diagnostic(&path, Invalid::SelfDependency));
            } else if by_name.contains_key(dependency.as_str()) {
                graph.entry(name).or_default().push(dependency);
            } else if complete {
                let unknown = Invalid::UnknownDependency(dependency.clone());
                diagnostics.push(app.diagnostic(&path, unknown));
            }
        }
    }
    for cycle in cycles(&graph) {
        if let Some(app) = cycle.first().and_then(|name| by_name.get(name.as_str())) {
            diagnostics.push(app.diagnostic("spec.dependsOn", Invalid::Cycle(cycle)));
        }
    }
    diagnostics
}

/// The cycles of a dependency graph, each starting and ending at its smallest name, found by a
/// depth-first search in name order (so the result does not depend on input order).
fn cycles(graph: &BTreeMap<&str, Vec<&str>>) -> BTreeSet<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        marks.insert(node, Mark::OnPath);
        path.push(node);
        let mut next: Vec<&str> = graph.get(node).cloned().unwrap_or_default();
        next.sort_unstable();
        next.dedup();
        for dependency in next {
            match marks.get(dependency) {
                None => visit(dependency, graph, marks, path, found),
                Some(Mark::OnPath) => {
                    if let Some(start) = path.iter().position(|n| *n == dependency) {
                        found.insert(rotate_to_smallest(&path[start..]));
                    }
                }
                Some(Mark::Done) => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = BTreeSet::new();
    for node in graph.keys() {
        if !marks.contains_key(node) {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// `[b, c, a]` becomes `[a, b, c, a]`: the cycle read from its smallest name, closed.
fn rotate_to_smallest(cycle: &[&str]) -> Vec<String> {
    let start = (0..cycle.len()).min_by_key(|i| cycle[*i]).unwrap_or(0);
    let mut names: Vec<String> = cycle[start..]
        .iter()
        .chain(&cycle[..start])
        .map(|name| name.to_string())
        .collect();
    if let Some(first) = names.first().cloned() {
        names.push(first);
    }
    names
}

#[cfg(test)]
mod tests {
    use crate::diagnostic::{Diagnostic, Diagnostics};
    use crate::parse::{parse, SourceFile};

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A valid application document; `spec` lines are appended under `spec:`.
    fn app(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\n\
             spec:\n  process:\n    command: [run]\n{spec}"
        )
    }

    fn file(path: &str, contents: &str) -> SourceFile {
        SourceFile {
            path: path.to_string(),
            contents: contents.to_string(),
        }
    }

    fn errors(files: &[SourceFile]) -> Vec<Diagnostic> {
        match parse(files) {
            Ok(state) => panic!("expected diagnostics, parsed {state:?}"),
            Err(Diagnostics(all)) => all,
        }
    }

    fn errors_of(contents: &str) -> Vec<Diagnostic> {
        errors(&[file("apps/a.yaml", contents)])
    }

    fn fields(all: &[Diagnostic]) -> Vec<&str> {
        all.iter().filter_map(|d| d.field.as_deref()).collect()
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["Checkout", "-checkout", "check_out", "", &"a".repeat(64)] {
            let all = errors_of(&app(&format!("'{bad}'"), ""));
            assert_eq!(fields(&all), ["metadata.name"], "{bad}: {all:#?}");
            assert_eq!(all[0].line, 4, "points at the name's line");
        }
        for good in ["a", "checkout-2", "0day", &"a".repeat(63)] {
            assert!(parse(&[file("a.yaml", &app(good, ""))]).is_ok(), "{good}");
        }
    }

    #[test]
    fn empty_command_is_rejected() {
        let all = errors_of(&app("a", "").replace("[run]", "[]"));
        assert_eq!(fields(&all), ["spec.process.command"]);
        assert_eq!(all[0].line, 7);
    }

    #[test]
    fn artifact_needs_a_hex_digest_and_a_known_scheme() {
        let spec = "    artifact: {url: 'ftp://x/a.tgz', sha256: ABC}\n";
        let all = errors_of(&app("a", spec));
        assert_eq!(
            fields(&all),
            ["spec.process.artifact.url", "spec.process.artifact.sha256"]
        );
        for url in ["http://h/a", "https://h/a", "file:///tmp/a"] {
            let ok = app(
                "a",
                &format!("    artifact: {{url: '{url}', sha256: {DIGEST}}}\n"),
            );
            assert!(parse(&[file("a.yaml", &ok)]).is_ok(), "{url}");
        }
    }

    #[test]
    fn probe_needs_exactly_one_action_and_positive_timings() {
        let none = errors_of(&app(
            "a",
            "  readiness: {periodSeconds: 0, timeoutSeconds: 0}\n",
        ));
        assert_eq!(
            fields(&none),
            [
                "spec.readiness",
                "spec.readiness.periodSeconds",
                "spec.readiness.timeoutSeconds"
            ]
        );
        assert!(none[0].message.contains("exactly one of"), "{}", none[0]);
        let two = errors_of(&app(
            "a",
            "  readiness: {httpGet: {}, tcpSocket: {}, failureThreshold: 0, successThreshold: 0}\n",
        ));
        assert_eq!(
            fields(&two),
            [
                "spec.readiness",
                "spec.readiness.failureThreshold",
                "spec.readiness.successThreshold"
            ]
        );
    }

    #[test]
    fn listen_must_be_an_ip_socket_address() {
        for bad in ["localhost:8080", "127.0.0.1", ":8080"] {
            let all = errors_of(&app("a", &format!("  service: {{listen: '{bad}'}}\n")));
            assert_eq!(fields(&all), ["spec.service.listen"], "{bad}");
        }
        let ok = app("a", "  service: {listen: '[::1]:8080'}\n");
        assert!(parse(&[file("a.yaml", &ok)]).is_ok());
    }

    #[test]
    fn shared_listen_address_is_rejected_naming_both() {
        let all = errors(&[
            file(
                "a.yaml",
                &app("a", "  service: {listen: '127.0.0.1:8080'}\n"),
            ),
            file(
                "b.yaml",
                &app("b", "  service: {listen: '127.0.0.1:8080'}\n"),
            ),
        ]);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            all[0].to_string(),
            "b.yaml:8:13: spec.service.listen: listen address `127.0.0.1:8080` is also used \
             by application `a` at a.yaml:1"
        );
    }

    #[test]
    fn too_many_replicas_are_rejected() {
        let all = errors_of(&app("a", "  replicas: 1001\n"));
        assert_eq!(fields(&all), ["spec.replicas"]);
        assert!(parse(&[file("a.yaml", &app("a", "  replicas: 1000\n"))]).is_ok());
    }

    #[test]
    fn duplicate_names_are_rejected_naming_both_files() {
        let all = errors(&[
            file("a.yaml", &app("web", "")),
            file("b.yaml", &format!("# x\n{}", app("web", ""))),
        ]);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            all[0].to_string(),
            "b.yaml:5:3: metadata.name: duplicate application name `web`, also defined at a.yaml:1"
        );
    }

    #[test]
    fn unknown_and_self_dependencies_are_rejected() {
        let all = errors_of(&app("a", "  dependsOn: [a, ghost]\n"));
        assert_eq!(fields(&all), ["spec.dependsOn[0]", "spec.dependsOn[1]"]);
        assert!(all[0].message.contains("itself"));
        assert!(all[1].message.contains("`ghost`"));
    }

    #[test]
    fn dependency_in_a_broken_document_is_not_called_unknown() {
        let all = errors(&[
            file("a.yaml", &app("a", "  dependsOn: [b]\n")),
            file("b.yaml", &app("b", "  replicaz: 2\n")),
        ]);
        assert_eq!(fields(&all), ["spec.replicaz"], "{all:#?}");
    }

    #[test]
    fn dependency_cycle_is_rejected() {
        let all = errors(&[
            file("c.yaml", &app("c", "  dependsOn: [a]\n")),
            file("b.yaml", &app("b", "  dependsOn: [c]\n")),
            file("a.yaml", &app("a", "  dependsOn: [b]\n")),
            file("d.yaml", &app("d", "  dependsOn: [a]\n")),
        ]);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            all[0].to_string(),
            "a.yaml:8:3: spec.dependsOn: dependency cycle: a -> b -> c -> a"
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let all = errors(&[
            file(
                "a.yaml",
                &app("Bad", "  replicas: 5000\n").replace("[run]", "[]"),
            ),
            file("b.yaml", &app("b", "  dependsOn: [ghost]\n")),
        ]);
        assert_eq!(
            fields(&all),
            [
                "metadata.name",
                "spec.process.command",
                "spec.replicas",
                "spec.dependsOn[0]"
            ]
        );
    }
}
