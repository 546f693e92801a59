//! The desired state of a whole tree: every application of one commit, validated, by name,
//! its analysis templates and chaos experiments, by name, and the commit's feature flags,
//! merged.
//!
//! The reconciler compares this with what runs; `apply_order` tells it which applications to
//! bring up first, and `templates_of` which templates an application's rollout may run (its
//! `chaos` steps name experiments of `experiments`).

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use gauntlet_chaos::spec::ChaosExperimentSpec;
use gauntlet_rollout::analysis::AnalysisTemplateSpec;

use crate::diagnostic::{Located, Origin};
use crate::flags::DeclaredFlags;
use crate::model::Application;
use crate::strategy;

/// An application as one commit declares it: the manifest, where it is, and its revision
/// (computed once when the document is read, since every plan needs it).
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub value: Application,
    pub origin: Origin,
    /// [`Application::revision`] of `value`.
    pub revision: String,
}

/// A whole validated tree (one commit's worth of manifests). Applications are shared with the
/// parser's cache, so the next commit's state reuses what did not change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    pub applications: BTreeMap<String, Arc<Declared>>,
    /// Every `AnalysisTemplate` by `metadata.name`, with where it is declared. Templates are not
    /// part of any revision: changing one restarts nothing.
    pub templates: BTreeMap<String, Arc<Located<AnalysisTemplateSpec>>>,
    /// Every `ChaosExperiment` by `metadata.name`, with where it is declared. Experiments are
    /// not part of any revision: changing one restarts nothing.
    pub experiments: BTreeMap<String, Arc<Located<ChaosExperimentSpec>>>,
    /// Every flag of every `FeatureFlags` document and `*.flagd.json` file. Flags are not part
    /// of any application's revision: changing one restarts nothing.
    pub flags: DeclaredFlags,
}

impl DesiredState {
    /// The templates application `app`'s strategy names, by name: what the rollout engine's
    /// `RolloutSpec::templates` needs. Empty for an unknown application or one without a
    /// strategy; in a state built by [`parse`] every name is found.
    ///
    /// [`parse`]: crate::parse
    pub fn templates_of(&self, app: &str) -> BTreeMap<String, AnalysisTemplateSpec> {
        let Some(strategy) = self
            .applications
            .get(app)
            .and_then(|declared| declared.value.spec.strategy.as_ref())
        else {
            return BTreeMap::new();
        };
        strategy::analyses(strategy)
            .into_iter()
            .flat_map(|analysis| analysis.templates.iter())
            .filter_map(|reference| {
                let name = &reference.template_name;
                let template = self.templates.get(name)?;
                Some((name.clone(), template.value.clone()))
            })
            .collect()
    }

    /// Application names ordered so that every app comes after the apps it `dependsOn` (ties by
    /// name).
    ///
    /// Dependencies on applications outside the state are ignored. A state built by [`parse`]
    /// has no cycles; should one be built by hand, the applications on a cycle come last, by
    /// name, so the order is still total.
    ///
    /// [`parse`]: crate::parse
    pub fn apply_order(&self) -> Vec<String> {
        let mut waiting_on: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, app) in &self.applications {
            let deps: BTreeSet<&str> = app
                .value
                .spec
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|dep| *dep != name && self.applications.contains_key(*dep))
                .collect();
            for dep in &deps {
                dependents.entry(dep).or_default().push(name);
            }
            waiting_on.insert(name, deps);
        }
        let mut ready: BTreeSet<&str> = waiting_on
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(name, _)| *name)
            .collect();
        let mut order = Vec::with_capacity(self.applications.len());
        while let Some(name) = ready.pop_first() {
            order.push(name.to_string());
            waiting_on.remove(name);
            for dependent in dependents.get(name).into_iter().flatten() {
                if let Some(deps) = waiting_on.get_mut(dependent) {
                    deps.remove(name);
                    if deps.is_empty() {
                        ready.insert(dependent);
                    }
                }
            }
        }
        order.extend(waiting_on.keys().map(|name| name.to_string()));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::Origin;
    use crate::model::{ApplicationSpec, Metadata, ProcessSpec, API_VERSION};

    fn state(apps: &[(&str, &[&str])]) -> DesiredState {
        let applications = apps
            .iter()
            .map(|(name, deps)| {
                let app = Application {
                    api_version: API_VERSION.into(),
                    kind: "Application".into(),
                    metadata: Metadata {
                        name: name.to_string(),
                        labels: BTreeMap::new(),
                        annotations: BTreeMap::new(),
                    },
                    spec: ApplicationSpec {
                        replicas: 1,
                        process: ProcessSpec {
                            command: vec!["run".into()],
                            args: vec![],
                            env: BTreeMap::new(),
                            working_dir: None,
                            artifact: None,
                            termination_grace_period_seconds: None,
                        },
                        readiness: None,
                        service: None,
                        depends_on: deps.iter().map(|d| d.to_string()).collect(),
                        strategy: None,
                        on_failure: None,
                    },
                };
                let origin = Origin {
                    file: format!("{name}.yaml"),
                    line: 1,
                };
                let revision = app.revision();
                (
                    name.to_string(),
                    Arc::new(Declared {
                        value: app,
                        origin,
                        revision,
                    }),
                )
            })
            .collect();
        DesiredState {
            applications,
            ..DesiredState::default()
        }
    }

    #[test]
    fn dependencies_come_first_and_ties_go_by_name() {
        let state = state(&[
            ("web", &["api", "db"]),
            ("api", &["db"]),
            ("db", &[]),
            ("cache", &[]),
            ("worker", &["db"]),
        ]);
        assert_eq!(state.apply_order(), ["cache", "db", "api", "web", "worker"]);
    }

    #[test]
    fn hand_built_cycle_still_yields_every_application() {
        let state = state(&[("a", &["b"]), ("b", &["a"]), ("c", &[])]);
        assert_eq!(state.apply_order(), ["c", "a", "b"]);
    }

    #[test]
    fn empty_state_has_empty_order() {
        assert!(DesiredState::default().apply_order().is_empty());
    }
}
