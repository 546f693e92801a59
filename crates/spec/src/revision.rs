//! The revision of an application: a short hash of what makes its instances what they are.
//!
//! Two specs with the same process and readiness probe run the same thing, so they share a
//! revision; scaling, moving the service, editing labels, the rollout strategy or `onFailure`
//! is not a new revision and needs no rollout. Analysis templates, chaos experiments and flags
//! live in documents of their own and are never part of a revision. The hash is over canonical
//! JSON (object keys sorted, defaults filled in), so it is the same on every machine and run,
//! and writing a default value out changes nothing.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{Application, Probe, ProcessSpec};

impl Application {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Revision hash: first 10 lower-hex chars of SHA-256 over canonical JSON of
    /// (spec.process, spec.readiness).
    ///
    /// Replicas, service, dependsOn, strategy, onFailure and metadata do NOT change the
    /// revision (scaling or changing how the next revision rolls out is not a new revision).
    pub fn revision(&self) -> String {
        let identity = Identity {
            process: &self.spec.process,
            readiness: &self.spec.readiness,
        };
        // Cannot fail: every map in the model has string keys.
        let identity = serde_json::to_value(identity).unwrap_or_default();
        let mut canonical = String::new();
        write_canonical(&identity, &mut canonical);
        let digest = Sha256::digest(canonical.as_bytes());
        let mut revision = hex::encode(digest);
        revision.truncate(10);
        revision
    }
}

/// What a revision is made of.
#[derive(Serialize)]
struct Identity<'a> {
    process: &'a ProcessSpec,
    readiness: &'a Option<Probe>,
}

/// Compact JSON with object keys sorted, whatever the map type or field order.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Application, Service};
    use crate::parse::{parse, SourceFile};

    fn app(spec: &str) -> Application {
        let contents = format!(
            "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata: {{name: web}}\n\
             spec:\n{spec}"
        );
        let files = [SourceFile {
            path: "web.yaml".into(),
            contents,
        }];
        match parse(&files) {
            Ok(mut state) => match state.applications.remove("web") {
                Some(app) => app.value.clone(),
                None => panic!("no app"),
            },
            Err(e) => panic!("{e}"),
        }
    }

    const BASE: &str = "  process: {command: [web], env: {B: '2', A: '1'}}\n";

    #[test]
    fn revision_is_ten_lower_hex_chars_and_stable() {
        let revision = app(BASE).revision();
        assert_eq!(revision.len(), 10);
        assert!(revision.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        // Pinned: a change here changes every deployed revision; do it only on purpose.
        assert_eq!(revision, app(BASE).revision());
        assert_eq!(revision, "1639c012e9");
    }

    #[test]
    fn scaling_does_not_change_revision() {
        let base = app(BASE);
        let mut scaled = base.clone();
        scaled.spec.replicas = 7;
        scaled.spec.service = Some(Service {
            listen: "127.0.0.1:9000".into(),
            tls: None,
        });
        scaled.spec.depends_on = vec!["db".into()];
        scaled.metadata.labels.insert("team".into(), "pay".into());
        assert_eq!(base.revision(), scaled.revision());
    }

    #[test]
    fn strategy_and_on_failure_do_not_change_revision() {
        let service = "  service: {listen: '127.0.0.1:8080'}\n";
        let plain = app(&format!("{BASE}{service}"));
        let canary = app(&format!(
            "{BASE}{service}  onFailure: revert\n  strategy:\n    canary:\n      steps:\n      \
             - setWeight: 5\n      - pause: {{duration: 30s}}\n      guard: {{alpha: 0.05}}\n"
        ));
        let blue_green = app(&format!(
            "{BASE}{service}  strategy: {{blueGreen: {{previewListen: '127.0.0.1:8081'}}}}\n"
        ));
        assert!(canary.spec.strategy.is_some() && blue_green.spec.strategy.is_some());
        assert_eq!(plain.revision(), canary.revision());
        assert_eq!(plain.revision(), blue_green.revision());
        assert_eq!(plain.revision(), "1639c012e9");
    }

    #[test]
    fn process_and_readiness_changes_make_a_new_revision() {
        let base = app(BASE).revision();
        assert_ne!(base, app(&BASE.replace("[web]", "[web, --v2]")).revision());
        let probed = format!("{BASE}  readiness: {{tcpSocket: {{}}}}\n");
        assert_ne!(base, app(&probed).revision());
    }

    #[test]
    fn key_order_and_spelled_out_defaults_do_not_change_revision() {
        let reordered = "  process: {env: {A: '1', B: '2'}, command: [web]}\n";
        assert_eq!(app(BASE).revision(), app(reordered).revision());
        let probe = format!("{BASE}  readiness: {{tcpSocket: {{}}}}\n");
        let spelled = format!("{BASE}  readiness: {{tcpSocket: {{}}, periodSeconds: 1}}\n");
        assert_eq!(app(&probe).revision(), app(&spelled).revision());
    }
}
