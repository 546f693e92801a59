//! What the proxy should serve, computed from what Git asks for and what runs: the pure half
//! of traffic management.
//!
//! Every application with a `service.listen` becomes one proxy route. Its revisions are the
//! revisions that have instances, the desired revision first and the others in name order, so
//! the same inputs always give the same configuration and an unchanged state pushes nothing.
//! Within a revision:
//! - a **ready** instance is a serving endpoint (`127.0.0.1:{port}`);
//! - an instance **being stopped** is a draining endpoint: it gets no new requests, and the
//!   controller stops it once the proxy reports nothing in flight on it;
//! - an instance that is starting, unready or crashing is not an endpoint at all.
//!
//! Without a rollout strategy, weights follow the serving endpoints: each revision gets the
//! share of the application's ready instances it holds (in units of 0.01 %, the rounding
//! remainder going to the desired revision). During an update the new revision's traffic
//! grows with each instance that becomes ready; once all are ready the old ones drain.
//!
//! An application with no instance that can take traffic and none draining is left out: the
//! proxy does not listen for it until one can. Applications in `excluded` (their address is
//! held by another process) are left out too, so one taken port never blocks the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use gauntlet_proxy::config::{
    AppRoute, Endpoint, MatchKind, MatchOn, MatchRule, Mirror, RevisionRoute, TlsFiles,
    TOTAL_WEIGHT,
};
use gauntlet_rollout::engine::{StringMatch, Traffic};
use gauntlet_runtime::{Instance, Phase};
use gauntlet_spec::DesiredState;

/// The routes of every application with a `service.listen`, in name order.
pub fn routes(
    desired: &DesiredState,
    observed: &[Instance],
    excluded: &BTreeSet<String>,
) -> Vec<AppRoute> {
    routes_with(desired, observed, excluded, &BTreeMap::new())
}

/// [`routes`], with the applications under a rollout split as their rollout says.
pub fn routes_with(
    desired: &DesiredState,
    observed: &[Instance],
    excluded: &BTreeSet<String>,
    rollouts: &BTreeMap<String, Traffic>,
) -> Vec<AppRoute> {
    let mut by_app: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for inst in observed {
        by_app.entry(inst.app.as_str()).or_default().push(inst);
    }
    let mut out = Vec::new();
    for (name, declared) in &desired.applications {
        if excluded.contains(name) {
            continue;
        }
        let Some(service) = &declared.value.spec.service else {
            continue;
        };
        let Ok(listen) = service.listen.parse::<SocketAddr>() else {
            continue;
        };
        let instances = by_app.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(preview) = preview_route(name, &declared.value, rollouts.get(name), instances) {
            out.push(preview);
        }
        if let Some(mut route) = route(name, listen, &declared.revision, instances) {
            if let Some(traffic) = rollouts.get(name) {
                apply_rollout(&mut route, traffic);
            }
            route.tls = service.tls.as_ref().map(|t| TlsFiles {
                cert_file: t.cert_file.clone().into(),
                key_file: t.key_file.clone().into(),
            });
            out.push(route);
        }
    }
    out
}

fn route(
    name: &str,
    listen: SocketAddr,
    desired_revision: &str,
    instances: &[&Instance],
) -> Option<AppRoute> {
    let mut revisions: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
    for inst in instances {
        let draining = match inst.phase {
            Phase::Ready => false,
            Phase::Stopping => true,
            _ => continue,
        };
        revisions
            .entry(inst.revision.as_str())
            .or_default()
            .push(Endpoint {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, inst.port)),
                draining,
            });
    }
    if revisions.is_empty() {
        return None;
    }
    let mut ordered: Vec<RevisionRoute> = Vec::with_capacity(revisions.len());
    if let Some(endpoints) = revisions.remove(desired_revision) {
        ordered.push(revision(desired_revision, endpoints));
    }
    ordered.extend(revisions.into_iter().map(|(r, e)| revision(r, e)));
    split_by_serving_endpoints(&mut ordered);
    Some(AppRoute {
        name: name.to_string(),
        listen,
        revisions: ordered,
        matches: Vec::new(),
        sticky: None,
        mirror: None,
        faults: Vec::new(),
        tls: None,
    })
}

/// Blue/green's preview: the revision the rollout previews, alone on `previewListen`, as the
/// application `{name}.preview` (a name no application can have, so it never collides).
fn preview_route(
    name: &str,
    app: &gauntlet_spec::Application,
    traffic: Option<&Traffic>,
    instances: &[&Instance],
) -> Option<AppRoute> {
    let revision = traffic?.preview.as_deref()?;
    let Some(gauntlet_rollout::engine::Strategy::BlueGreen(bg)) = &app.spec.strategy else {
        return None;
    };
    let listen: SocketAddr = bg.preview_listen.as_deref()?.parse().ok()?;
    let only: Vec<&Instance> = instances
        .iter()
        .copied()
        .filter(|i| i.revision == revision)
        .collect();
    route(&format!("{name}.preview"), listen, revision, &only)
}

/// Sets the weights, header route and mirror of a rollout on an application's route. A
/// revision the rollout weights but that has no serving endpoint (yet, or any more) gives its
/// weight to the other, so the proxy never routes to nothing while something can serve.
fn apply_rollout(route: &mut AppRoute, traffic: &Traffic) {
    let candidate = traffic.candidate.as_deref().unwrap_or("");
    let serves = |r: &RevisionRoute| r.endpoints.iter().any(|e| !e.draining);
    let has = |name: &str| route.revisions.iter().any(|r| r.name == name && serves(r));
    let (active_ok, candidate_ok) = (has(&traffic.active), has(candidate));
    let candidate_weight = match (active_ok, candidate_ok) {
        (true, true) => traffic.candidate_weight.min(TOTAL_WEIGHT),
        (false, true) => TOTAL_WEIGHT,
        _ => 0,
    };
    if !active_ok && !candidate_ok {
        // Nothing the rollout names can serve: keep the split by ready instances.
        return;
    }
    for r in &mut route.revisions {
        r.weight = if r.name == traffic.active && active_ok {
            TOTAL_WEIGHT - candidate_weight
        } else if r.name == candidate && candidate_ok {
            candidate_weight
        } else {
            0
        };
    }
    if candidate_ok {
        if let Some(header_route) = &traffic.header_route {
            route.matches = header_route
                .matches
                .iter()
                .filter_map(|m| {
                    let on = match (&m.header, &m.cookie) {
                        (Some(h), None) => MatchOn::Header(h.clone()),
                        (None, Some(c)) => MatchOn::Cookie(c.clone()),
                        _ => return None,
                    };
                    let (kind, value) = match &m.value {
                        StringMatch::Exact(v) => (MatchKind::Exact, v.clone()),
                        StringMatch::Prefix(v) => (MatchKind::Prefix, v.clone()),
                        StringMatch::Regex(v) => (MatchKind::Regex, v.clone()),
                    };
                    Some(MatchRule {
                        on,
                        kind,
                        value,
                        revision: candidate.to_string(),
                    })
                })
                .collect();
        }
        if traffic.mirror_percent > 0 {
            route.mirror = Some(Mirror {
                revision: candidate.to_string(),
                percent: (traffic.mirror_percent * 100).min(TOTAL_WEIGHT),
            });
        }
    }
}

fn revision(name: &str, mut endpoints: Vec<Endpoint>) -> RevisionRoute {
    endpoints.sort_by_key(|e| e.addr);
    RevisionRoute {
        name: name.to_string(),
        weight: 0,
        endpoints,
    }
}

/// Gives each revision the share of serving endpoints it holds; the first serving revision
/// takes the rounding remainder. With none serving, every weight stays 0.
fn split_by_serving_endpoints(revisions: &mut [RevisionRoute]) {
    let serving = |r: &RevisionRoute| r.endpoints.iter().filter(|e| !e.draining).count() as u64;
    let total: u64 = revisions.iter().map(serving).sum();
    if total == 0 {
        return;
    }
    let mut given = 0u32;
    for r in revisions.iter_mut() {
        r.weight = (u64::from(TOTAL_WEIGHT) * serving(r) / total) as u32;
        given += r.weight;
    }
    if let Some(first) = revisions.iter_mut().find(|r| serving(r) > 0) {
        first.weight += TOTAL_WEIGHT - given;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gauntlet_runtime::InstanceId;
    use gauntlet_spec::SourceFile;

    fn desired(apps: &[(&str, Option<&str>)]) -> DesiredState {
        let yaml: Vec<String> = apps
            .iter()
            .map(|(name, listen)| {
                let service = listen
                    .map(|l| format!("  service: {{listen: \"{l}\"}}\n"))
                    .unwrap_or_default();
                format!(
                    "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  replicas: 2\n  process: {{command: [\"/bin/true\"]}}\n{service}"
                )
            })
            .collect();
        gauntlet_spec::parse(&[SourceFile {
            path: "apps.yaml".into(),
            contents: yaml.join("---\n"),
        }])
        .expect("valid manifests")
    }

    fn inst(app: &str, revision: &str, port: u16, phase: Phase) -> Instance {
        Instance {
            id: InstanceId(format!("{app}-{revision}-{port}")),
            app: app.into(),
            revision: revision.into(),
            port,
            pid: Some(u32::from(port)),
            phase,
            restarts: 0,
            created_ms: 0,
        }
    }

    fn weights(route: &AppRoute) -> Vec<(String, u32, usize, usize)> {
        route
            .revisions
            .iter()
            .map(|r| {
                let draining = r.endpoints.iter().filter(|e| e.draining).count();
                (
                    r.name.clone(),
                    r.weight,
                    r.endpoints.len() - draining,
                    draining,
                )
            })
            .collect()
    }

    #[test]
    fn only_applications_with_a_listen_address_and_a_ready_instance_are_routed() {
        let d = desired(&[
            ("api", Some("127.0.0.1:8080")),
            ("worker", None),
            ("web", Some("127.0.0.1:8081")),
        ]);
        let api = d.applications["api"].revision.clone();
        let web = d.applications["web"].revision.clone();
        let observed = [
            inst("api", &api, 9001, Phase::Ready),
            inst("api", &api, 9002, Phase::Starting),
            inst("worker", "x", 9003, Phase::Ready),
            inst("web", &web, 9004, Phase::Starting),
        ];
        let routes = routes(&d, &observed, &BTreeSet::new());
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0].name, "api");
        assert_eq!(routes[0].listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(weights(&routes[0]), vec![(api, TOTAL_WEIGHT, 1, 0)]);
    }

    #[test]
    fn during_an_update_traffic_follows_ready_instances_and_stopping_ones_drain() {
        let d = desired(&[("api", Some("127.0.0.1:8080"))]);
        let new = d.applications["api"].revision.clone();
        let observed = [
            inst("api", "old", 9001, Phase::Ready),
            inst("api", "old", 9002, Phase::Ready),
            inst("api", &new, 9003, Phase::Ready),
            inst("api", &new, 9004, Phase::Starting),
        ];
        let r = &routes(&d, &observed, &BTreeSet::new())[0];
        assert_eq!(
            weights(r),
            vec![(new.clone(), 3334, 1, 0), ("old".into(), 6666, 2, 0)]
        );
        let observed = [
            inst("api", "old", 9001, Phase::Stopping),
            inst("api", "old", 9002, Phase::Stopping),
            inst("api", &new, 9003, Phase::Ready),
            inst("api", &new, 9004, Phase::Ready),
        ];
        let r = &routes(&d, &observed, &BTreeSet::new())[0];
        assert_eq!(
            weights(r),
            vec![(new, TOTAL_WEIGHT, 2, 0), ("old".into(), 0, 0, 2)]
        );
        let config = gauntlet_proxy::ProxyConfig {
            version: 1,
            apps: vec![r.clone()],
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn excluded_applications_are_left_out() {
        let d = desired(&[("api", Some("127.0.0.1:8080"))]);
        let rev = d.applications["api"].revision.clone();
        let observed = [inst("api", &rev, 9001, Phase::Ready)];
        let excluded = BTreeSet::from(["api".to_string()]);
        assert!(routes(&d, &observed, &excluded).is_empty());
    }
}
