//! `kind: ChaosExperiment`: an experiment read on its own, and what it and the rollouts that run
//! it ask of the rest of the tree.
//!
//! The spec's types and rules are `gauntlet-chaos`'s: [`ChaosExperimentSpec::validate`] gives
//! every problem with its field path from the document (`spec.method[1].fault.cpu.cores`), and
//! [`experiment`] places each at its line, once when the file is read. What one document cannot
//! know is checked by [`tree`]: experiment names are unique, an experiment's target and every
//! `dependency` fault name an Application of the tree, and every `chaos` step of a strategy
//! names an experiment of the tree that targets the candidate of that step's application.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gauntlet_chaos::spec::{ChaosExperimentSpec, Fault, TargetRevision};

use crate::diagnostic::{Diagnostic, Located, Origin};
use crate::parse::{DocumentText, Parsed};
use crate::strategy;
use crate::validate::{is_dns_label, Invalid};

/// What is wrong between an experiment and the rest of the tree, and what to write instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Problem {
    #[error("duplicate ChaosExperiment name `{name}`, also defined at {first}")]
    DuplicateExperiment { name: String, first: Origin },
    #[error("unknown application `{0}`: target.application must name an Application of this tree")]
    UnknownTarget(String),
    #[error("unknown application `{0}`: a dependency fault must name an Application of this tree")]
    UnknownDependency(String),
    #[error(
        "unknown ChaosExperiment `{0}`: chaos.experiment must name a ChaosExperiment of this tree"
    )]
    UnknownExperiment(String),
    #[error(
        "experiment `{experiment}` targets the {revision} of `{application}`: the experiment of a \
         chaos step must target this application's candidate (target: {{application: {app}, \
         revision: candidate}})"
    )]
    GateTarget {
        experiment: String,
        application: String,
        revision: String,
        app: String,
    },
}

/// A `ChaosExperiment` that was read, with its text kept to place later diagnostics.
pub(crate) struct ParsedExperiment {
    /// `metadata.name`.
    pub name: String,
    pub experiment: Arc<Located<ChaosExperimentSpec>>,
    text: DocumentText,
}

impl ParsedExperiment {
    fn diagnostic(&self, path: &str, message: impl ToString) -> Diagnostic {
        self.text.diagnostic(&self.experiment.origin, path, message)
    }
}

/// Reads an experiment document's checks on its own: the parsed experiment and its problems.
pub(crate) fn experiment(
    name: String,
    experiment: Located<ChaosExperimentSpec>,
    text: DocumentText,
) -> (ParsedExperiment, Vec<Diagnostic>) {
    let parsed = ParsedExperiment {
        name,
        experiment: Arc::new(experiment),
        text,
    };
    let mut diagnostics = Vec::new();
    if !is_dns_label(&parsed.name) {
        let invalid = Invalid::Name(parsed.name.clone());
        diagnostics.push(parsed.diagnostic("metadata.name", invalid));
    }
    // The chaos crate's paths already start at the document (`spec.…`).
    diagnostics.extend(
        parsed
            .experiment
            .value
            .validate()
            .into_iter()
            .map(|invalid| parsed.diagnostic(&invalid.path, invalid.problem)),
    );
    (parsed, diagnostics)
}

/// The problems between experiments, the applications they act on and the rollouts that run
/// them.
///
/// When some documents could not be read (`complete` is false), a name that finds no
/// application or experiment is not reported: it may well be defined in a broken document.
pub(crate) fn tree(
    apps: &[Arc<Parsed>],
    experiments: &[Arc<ParsedExperiment>],
    complete: bool,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut first: BTreeMap<&str, &Origin> = BTreeMap::new();
    for experiment in experiments {
        match first.get(experiment.name.as_str()) {
            Some(origin) => diagnostics.push(experiment.diagnostic(
                "metadata.name",
                Problem::DuplicateExperiment {
                    name: experiment.name.clone(),
                    first: (*origin).clone(),
                },
            )),
            None => {
                first.insert(&experiment.name, &experiment.experiment.origin);
            }
        }
    }
    if !complete {
        return diagnostics;
    }
    let applications: BTreeSet<&str> = apps.iter().map(|app| app.app.value.name()).collect();
    for experiment in experiments {
        diagnostics.extend(
            unknown_applications(&experiment.experiment.value, &applications)
                .into_iter()
                .map(|(path, problem)| experiment.diagnostic(&path, problem)),
        );
    }
    for app in apps {
        let Some(strategy) = &app.app.value.spec.strategy else {
            continue;
        };
        let name = app.app.value.name();
        for (path, step) in strategy::chaos_steps(strategy) {
            let Some(declared) = experiments.iter().find(|e| e.name == step.experiment) else {
                diagnostics.push(app.diagnostic(
                    &format!("{path}.experiment"),
                    Problem::UnknownExperiment(step.experiment.clone()),
                ));
                continue;
            };
            let target = &declared.experiment.value.target;
            // A target that names no application is reported at the experiment.
            let elsewhere =
                target.application != name && applications.contains(target.application.as_str());
            if elsewhere
                || (target.application == name && target.revision != TargetRevision::Candidate)
            {
                diagnostics.push(app.diagnostic(
                    &format!("{path}.experiment"),
                    Problem::GateTarget {
                        experiment: step.experiment.clone(),
                        application: target.application.clone(),
                        revision: target.revision.to_string(),
                        app: name.to_string(),
                    },
                ));
            }
        }
    }
    diagnostics
}

/// The applications `spec` names that `applications` lacks, each at its field path. An empty
/// name, or a dependency on the target itself, is already a problem of the spec on its own.
fn unknown_applications(
    spec: &ChaosExperimentSpec,
    applications: &BTreeSet<&str>,
) -> Vec<(String, Problem)> {
    let mut problems = Vec::new();
    let known = |name: &str| name.trim().is_empty() || applications.contains(name);
    let target = spec.target.application.as_str();
    if !known(target) {
        problems.push((
            "spec.target.application".to_string(),
            Problem::UnknownTarget(target.to_string()),
        ));
    }
    for (i, activity) in spec.method.iter().enumerate() {
        if let Some(Fault::Dependency(dependency)) = &activity.fault {
            let name = dependency.application.as_str();
            if name != target && !known(name) {
                problems.push((
                    format!("spec.method[{i}].fault.dependency.application"),
                    Problem::UnknownDependency(name.to_string()),
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use gauntlet_chaos::spec::{Fault, TargetRevision};

    use crate::diagnostic::{Diagnostic, Diagnostics};
    use crate::parse::{parse, Parser, SourceFile};

    /// `checkout` rolls out with a chaos step; `payments` is what it depends on. Line numbers
    /// matter to the tests.
    const APPS: &str = "\
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata: {name: checkout}
spec:
  process: {command: [checkout]}
  service: {listen: '127.0.0.1:8080'}
  strategy:
    canary:
      steps:
      - setWeight: 10
      - chaos: {experiment: kill-one}
      - setWeight: 50
---
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata: {name: payments}
spec:
  process: {command: [payments]}
";

    /// An experiment with most of what a spec may say.
    const EXPERIMENT: &str = "\
apiVersion: gauntlet.dev/v1alpha1
kind: ChaosExperiment
metadata: {name: kill-one}
spec:
  target: {application: checkout, revision: candidate, mode: one}
  hypothesis:
    probes:
    - name: healthy
      http: {url: 'http://127.0.0.1:8080/healthz'}
      tolerance: {status: 200}
    continuous: {interval: 2s, failureThreshold: 3}
  method:
  - fault: {kill: {signal: KILL}}
  - fault: {cpu: {cores: 1, load: 50}}
    duration: 10s
    background: true
  - fault: {dependency: {application: payments, delay: {latency: 200ms}, percent: 50}}
    duration: 10s
  - fault: {memory: {size: 256Mi}}
    duration: 5s
  - pause: 10s
  rollbacks:
  - action: {command: [./restore.sh]}
  duration: 2m
  schedule: '0 3 * * *'
";

    fn file(path: &str, contents: &str) -> SourceFile {
        SourceFile {
            path: path.to_string(),
            contents: contents.to_string(),
        }
    }

    fn tree(apps: &str, experiment: &str) -> [SourceFile; 2] {
        [file("apps.yaml", apps), file("chaos.yaml", experiment)]
    }

    fn errors(apps: &str, experiment: &str) -> Vec<Diagnostic> {
        match parse(&tree(apps, experiment)) {
            Ok(state) => panic!("expected diagnostics, parsed {state:?}"),
            Err(Diagnostics(all)) => all,
        }
    }

    /// Every diagnostic of a tree, rendered.
    fn rendered(apps: &str, experiment: &str) -> Vec<String> {
        errors(apps, experiment)
            .iter()
            .map(Diagnostic::to_string)
            .collect()
    }

    #[test]
    fn a_valid_experiment_parses_into_the_state_with_its_origin() {
        let state = parse(&tree(APPS, EXPERIMENT)).unwrap();
        let experiment = &state.experiments["kill-one"];
        assert_eq!(
            (experiment.origin.file.as_str(), experiment.origin.line),
            ("chaos.yaml", 1)
        );
        let spec = &experiment.value;
        assert_eq!(spec.target.application, "checkout");
        assert_eq!(spec.target.revision, TargetRevision::Candidate);
        assert_eq!(spec.method.len(), 5);
        assert!(matches!(&spec.method[3].fault, Some(Fault::Memory(m)) if m.size.0 == 256 << 20));
        assert_eq!(spec.duration.as_ms(), 120_000);
        assert_eq!(spec.schedule.as_deref(), Some("0 3 * * *"));
    }

    #[test]
    fn a_chaos_step_naming_a_declared_experiment_passes_and_the_experiment_is_kept() {
        let state = parse(&tree(APPS, EXPERIMENT)).unwrap();
        assert_eq!(state.experiments.keys().collect::<Vec<_>>(), ["kill-one"]);
        let kept = &state.experiments["kill-one"];
        assert_eq!(kept.value.target.application, "checkout");
        assert_eq!(kept.origin.file, "chaos.yaml");
    }

    #[test]
    fn a_broken_experiment_is_reported_at_each_offending_field() {
        let broken = EXPERIMENT
            .replace("cores: 1", "cores: 0")
            .replace("size: 256Mi", "size: 64Gi");
        assert_eq!(
            rendered(APPS, &broken),
            [
                "chaos.yaml:14:19: spec.method[1].fault.cpu.cores: must be at least 1",
                "chaos.yaml:19:22: spec.method[3].fault.memory.size: 64Gi is over the limit of \
                 16Gi",
            ]
        );
    }

    #[test]
    fn a_problem_at_a_field_left_out_points_at_its_closest_ancestor() {
        // `percent` defaults to 100: every request of stable, which needs allowAllStable.
        let experiment = EXPERIMENT
            .replace("revision: candidate", "revision: stable")
            .replace(
                "  - fault: {memory: {size: 256Mi}}\n",
                "  - fault: {http: {abort: {status: 503}}}\n",
            );
        let apps = APPS.replace("      - chaos: {experiment: kill-one}\n", "");
        assert_eq!(
            rendered(&apps, &experiment),
            [
                "chaos.yaml:19:13: spec.method[3].fault.http.percent: a traffic fault on every \
              request of the stable revision is an outage: lower percent, target the candidate, \
              or set spec.blastRadius.allowAllStable"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_line_and_path() {
        let all = errors(APPS, &EXPERIMENT.replace("signal: KILL", "sig: KILL"));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            (all[0].line, all[0].column, all[0].field.as_deref()),
            (13, 20, Some("spec.method[0].fault.kill.sig")),
            "{}",
            all[0]
        );
        assert!(
            all[0].message.starts_with("unknown field `sig`"),
            "{}",
            all[0]
        );
        let all = errors(APPS, &EXPERIMENT.replace("  duration: 2m\n", "  ttl: 2m\n"));
        assert_eq!(
            (all[0].line, all[0].field.as_deref()),
            (24, Some("spec.ttl")),
            "{all:#?}"
        );
    }

    #[test]
    fn experiment_names_are_dns_labels_and_unique() {
        let twice = format!("{EXPERIMENT}---\n{EXPERIMENT}");
        assert_eq!(
            rendered(APPS, &twice),
            [
                "chaos.yaml:29:12: metadata.name: duplicate ChaosExperiment name `kill-one`, also \
              defined at chaos.yaml:1"
            ]
        );
        let badly_named = EXPERIMENT.replace("{name: kill-one}", "{name: Kill_One}");
        let all = errors(APPS, &badly_named);
        let fields: Vec<&str> = all.iter().filter_map(|d| d.field.as_deref()).collect();
        assert_eq!(
            fields,
            [
                "spec.strategy.canary.steps[1].chaos.experiment",
                "metadata.name"
            ],
            "{all:#?}"
        );
    }

    #[test]
    fn the_target_and_every_dependency_must_be_applications_of_the_tree() {
        let experiment = EXPERIMENT
            .replace("application: checkout,", "application: checkuot,")
            .replace("application: payments,", "application: paymnts,");
        assert_eq!(
            rendered(APPS, &experiment),
            [
                "chaos.yaml:5:12: spec.target.application: unknown application `checkuot`: \
                 target.application must name an Application of this tree",
                "chaos.yaml:17:26: spec.method[2].fault.dependency.application: unknown \
                 application `paymnts`: a dependency fault must name an Application of this tree",
            ]
        );
    }

    #[test]
    fn a_chaos_step_must_name_a_declared_experiment() {
        let apps = APPS.replace("{experiment: kill-one}", "{experiment: kill-two}");
        assert_eq!(
            rendered(&apps, EXPERIMENT),
            [
                "apps.yaml:11:17: spec.strategy.canary.steps[1].chaos.experiment: unknown \
              ChaosExperiment `kill-two`: chaos.experiment must name a ChaosExperiment of this \
              tree"
            ]
        );
    }

    #[test]
    fn a_chaos_step_must_name_an_experiment_on_its_own_candidate() {
        let stable = EXPERIMENT.replace("revision: candidate", "revision: stable");
        assert_eq!(
            rendered(APPS, &stable),
            [
                "apps.yaml:11:17: spec.strategy.canary.steps[1].chaos.experiment: experiment \
              `kill-one` targets the stable of `checkout`: the experiment of a chaos step must \
              target this application's candidate (target: {application: checkout, revision: \
              candidate})"
            ]
        );
    }

    #[test]
    fn names_in_a_tree_with_a_broken_document_are_not_called_unknown() {
        let broken = EXPERIMENT.replace("mode: one", "mode: some");
        let all = errors(APPS, &broken);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field.as_deref(), Some("spec.target.mode"));

        let apps = APPS.replace("[payments]", "[payments], replicaz: 2");
        let all = errors(&apps, &EXPERIMENT.replace("checkout,", "ghost,"));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field.as_deref(), Some("spec.process.replicaz"));
    }

    #[test]
    fn experiments_change_no_application_revision() {
        let without = APPS.replace("      - chaos: {experiment: kill-one}\n", "");
        let alone = parse(&[file("apps.yaml", &without)]).unwrap();
        let with = parse(&tree(APPS, EXPERIMENT)).unwrap();
        let edited = parse(&tree(
            APPS,
            &EXPERIMENT.replace("duration: 2m", "duration: 3m"),
        ))
        .unwrap();
        assert_ne!(with.experiments, edited.experiments);
        for name in ["checkout", "payments"] {
            let revision = &alone.applications[name].revision;
            assert_eq!(&with.applications[name].revision, revision, "{name}");
            assert_eq!(&edited.applications[name].revision, revision, "{name}");
        }
    }

    #[test]
    fn a_reused_parser_gives_exactly_what_a_fresh_parse_gives() {
        let mut parser = Parser::default();
        let first = tree(APPS, EXPERIMENT);
        assert_eq!(parser.parse(&first), parse(&first));
        let second = tree(APPS, &EXPERIMENT.replace("cores: 1", "cores: 2"));
        let reused = parser.parse(&second);
        assert_eq!(reused, parse(&second));
        let bad = tree(APPS, &EXPERIMENT.replace("cores: 1", "cores: 0"));
        assert!(parser.parse(&bad).is_err());
        assert_eq!(parser.parse(&bad), parse(&bad));
    }
}
