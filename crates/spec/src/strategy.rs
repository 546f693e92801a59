//! `spec.strategy` and `kind: AnalysisTemplate`: the rules that the rollout crate's types
//! cannot say themselves.
//!
//! The types are `gauntlet-rollout`'s ([`Strategy`], [`AnalysisTemplateSpec`]), read strictly
//! by the parser like every other field, so a duration that does not parse or a misspelt step
//! is already a diagnostic. What is left is checked here, in three places:
//!
//! - [`application`]: a strategy on its own, with its application's `service`: a listen
//!   address to split traffic on, weights and percentages in range, header routes that match on
//!   one thing with regexes that compile, a guard that can work, and a preview address of its
//!   own.
//! - [`template`]: a template on its own, once when its file is read: its name, metrics,
//!   conditions that parse (with the column where they stop making sense) and arguments that are
//!   declared before they are used.
//! - [`tree`]: between documents: template names are unique, and every `templateName` names a
//!   template of the tree, given every argument that has no default.
//!
//! Listen addresses shared between applications, previews included, are checked with the
//! others in `validate.rs`; that every `chaos` step names a `ChaosExperiment` of the tree, in
//! `experiment.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use gauntlet_rollout::analysis::{
    substitute_str, AnalysisError, AnalysisTemplateSpec, Arg, MetricSpec, Provider, TemplateRef,
};
use gauntlet_rollout::engine::{CanaryStep, ChaosStep, HeaderRoute, Strategy, StringMatch};
use gauntlet_rollout::expr::{Condition, ParseError};
use gauntlet_rollout::guard::GuardConfigError;

use crate::diagnostic::{Diagnostic, Located, Origin};
use crate::model::ApplicationSpec;
use crate::parse::{DocumentText, Parsed};
use crate::validate::{is_dns_label, Invalid};

/// The field path of a blue/green preview address.
pub(crate) const PREVIEW: &str = "spec.strategy.blueGreen.previewListen";

/// What is wrong with a strategy or an analysis template, and what to write instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Problem {
    #[error("a rollout needs service.listen: the proxy splits traffic there")]
    NoListen,
    #[error("setWeight must be from 0 to 100 (percent of traffic to the candidate), got {0}")]
    Weight(f64),
    #[error("percent must be from 0 to 100, got {0}")]
    MirrorPercent(u32),
    #[error("a match needs exactly one of `header`, `cookie`; found {0}")]
    MatchKey(usize),
    #[error("`{pattern}` is not a valid regular expression: {error}")]
    Regex { pattern: String, error: String },
    #[error("{0}")]
    Guard(GuardConfigError),
    #[error(
        "previewListen must differ from service.listen: the candidate is previewed on an \
         address of its own"
    )]
    PreviewIsService,
    #[error("an AnalysisTemplate needs at least one metric")]
    NoMetrics,
    #[error("duplicate metric name `{0}`")]
    DuplicateMetric(String),
    #[error("duplicate argument `{0}`")]
    DuplicateArg(String),
    #[error("`{0}` names no metric of this template: use a metric's name, or \"*\" for all")]
    UnknownDryRun(String),
    #[error("`{condition}` does not parse at column {}: {}", .error.column, .error.message)]
    Condition {
        condition: String,
        error: ParseError,
    },
    #[error(
        "`{{{{args.{0}}}}}` is used but the template declares no argument `{0}`: add it to \
         spec.args"
    )]
    UndeclaredArg(String),
    #[error("must not be empty: give the program to run")]
    EmptyCommand,
    #[error("`{0}` is not an http:// or https:// URL")]
    Url(String),
    #[error("duplicate AnalysisTemplate name `{name}`, also defined at {first}")]
    DuplicateTemplate { name: String, first: Origin },
    #[error(
        "unknown AnalysisTemplate `{0}`: templateName must name an AnalysisTemplate of this tree"
    )]
    UnknownTemplate(String),
    #[error(
        "template `{template}` needs argument `{arg}`, which has no default: pass it in this \
         analysis's args as {{name: {arg}, value: ...}}"
    )]
    MissingArg { template: String, arg: String },
    #[error("template `{template}` with these args: {error}")]
    Resolve {
        template: String,
        error: AnalysisError,
    },
}

/// One place a strategy runs analysis: an `analysis` step, the background analysis, or a
/// blue/green pre- or post-promotion analysis.
pub(crate) struct AnalysisUse<'a> {
    /// Field path of the analysis, such as `spec.strategy.canary.steps[2].analysis`.
    pub path: String,
    pub templates: &'a [TemplateRef],
    pub args: &'a [Arg],
}

/// Every analysis of `strategy`, in manifest order.
pub(crate) fn analyses(strategy: &Strategy) -> Vec<AnalysisUse<'_>> {
    let mut uses = Vec::new();
    match strategy {
        Strategy::Canary(canary) => {
            for (i, step) in canary.steps.iter().enumerate() {
                if let CanaryStep::Analysis(step) = step {
                    uses.push(AnalysisUse {
                        path: format!("spec.strategy.canary.steps[{i}].analysis"),
                        templates: &step.templates,
                        args: &step.args,
                    });
                }
            }
            if let Some(background) = &canary.analysis {
                uses.push(AnalysisUse {
                    path: "spec.strategy.canary.analysis".to_string(),
                    templates: &background.templates,
                    args: &background.args,
                });
            }
        }
        Strategy::BlueGreen(blue_green) => {
            for (field, analysis) in [
                ("prePromotionAnalysis", &blue_green.pre_promotion_analysis),
                ("postPromotionAnalysis", &blue_green.post_promotion_analysis),
            ] {
                if let Some(analysis) = analysis {
                    uses.push(AnalysisUse {
                        path: format!("spec.strategy.blueGreen.{field}"),
                        templates: &analysis.templates,
                        args: &analysis.args,
                    });
                }
            }
        }
    }
    uses
}

/// Every `chaos` step of `strategy`, in manifest order, with the field path of the step's
/// `chaos` (`spec.strategy.canary.steps[4].chaos`). Only canaries have steps.
pub(crate) fn chaos_steps(strategy: &Strategy) -> Vec<(String, &ChaosStep)> {
    let Strategy::Canary(canary) = strategy else {
        return Vec::new();
    };
    canary
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| match step {
            CanaryStep::Chaos(chaos) => {
                Some((format!("spec.strategy.canary.steps[{i}].chaos"), chaos))
            }
            _ => None,
        })
        .collect()
}

/// The blue/green preview address of `spec`, if it has one.
pub(crate) fn preview_listen(spec: &ApplicationSpec) -> Option<&str> {
    match &spec.strategy {
        Some(Strategy::BlueGreen(blue_green)) => blue_green.preview_listen.as_deref(),
        _ => None,
    }
}

/// Problems of an application's strategy on its own, each with the path of its field.
pub(crate) fn application(spec: &ApplicationSpec) -> Vec<(String, Invalid)> {
    let mut problems: Vec<(String, Invalid)> = Vec::new();
    let Some(strategy) = &spec.strategy else {
        return problems;
    };
    let mut problem = |path: String, problem: Problem| problems.push((path, problem.into()));
    if spec.service.is_none() {
        problem("spec.strategy".to_string(), Problem::NoListen);
    }
    match strategy {
        Strategy::Canary(canary) => {
            for (i, step) in canary.steps.iter().enumerate() {
                let at = format!("spec.strategy.canary.steps[{i}]");
                match step {
                    CanaryStep::SetWeight(weight) if !(0.0..=100.0).contains(weight) => {
                        problem(format!("{at}.setWeight"), Problem::Weight(*weight));
                    }
                    CanaryStep::SetMirrorRoute(mirror) if mirror.percent > 100 => problem(
                        format!("{at}.setMirrorRoute.percent"),
                        Problem::MirrorPercent(mirror.percent),
                    ),
                    CanaryStep::SetHeaderRoute(route) => {
                        for (path, found) in header_route(route) {
                            problem(format!("{at}.setHeaderRoute{path}"), found);
                        }
                    }
                    CanaryStep::SetWeight(_)
                    | CanaryStep::SetMirrorRoute(_)
                    | CanaryStep::Pause(_)
                    | CanaryStep::Analysis(_)
                    | CanaryStep::Chaos(_) => {}
                }
            }
            if let Err(error) = canary.guard.validate() {
                let field = match &error {
                    GuardConfigError::NotAProbability { field, .. } => format!(".{field}"),
                    GuardConfigError::Ratio(_) => ".minErrorRatio".to_string(),
                    GuardConfigError::ErrorBudget(_) => String::new(),
                    GuardConfigError::SlowFraction { .. } => ".latency.maxSlowFraction".to_string(),
                };
                problem(
                    format!("spec.strategy.canary.guard{field}"),
                    Problem::Guard(error),
                );
            }
        }
        Strategy::BlueGreen(_) => {
            if let Some(preview) = preview_listen(spec) {
                match preview.parse::<SocketAddr>() {
                    Err(_) => problems.push((PREVIEW.to_string(), Invalid::Listen(preview.into()))),
                    Ok(address) => {
                        let service = spec.service.as_ref().map(|s| s.listen.parse());
                        if service == Some(Ok(address)) {
                            problems.push((PREVIEW.to_string(), Problem::PreviewIsService.into()));
                        }
                    }
                }
            }
        }
    }
    problems
}

/// Problems of a header route, with paths relative to it.
fn header_route(route: &HeaderRoute) -> Vec<(String, Problem)> {
    let mut problems = Vec::new();
    for (j, entry) in route.matches.iter().enumerate() {
        let keys = usize::from(entry.header.is_some()) + usize::from(entry.cookie.is_some());
        if keys != 1 {
            problems.push((format!(".match[{j}]"), Problem::MatchKey(keys)));
        }
        if let StringMatch::Regex(pattern) = &entry.value {
            if let Err(error) = regex::Regex::new(pattern) {
                problems.push((
                    format!(".match[{j}].value.regex"),
                    Problem::Regex {
                        pattern: pattern.clone(),
                        error: regex_error(&error),
                    },
                ));
            }
        }
    }
    problems
}

/// The one line of a regex error that says what is wrong (the rest draws a caret under the
/// pattern, which the message already quotes).
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or(&text)
        .trim()
        .to_string()
}

/// An `AnalysisTemplate` that was read, with its text kept to place later diagnostics.
pub(crate) struct ParsedTemplate {
    /// `metadata.name`.
    pub name: String,
    pub template: Arc<Located<AnalysisTemplateSpec>>,
    /// Whether the template has no problems of its own: only then is it resolved against the
    /// arguments of each analysis that names it.
    valid: bool,
    text: DocumentText,
}

impl ParsedTemplate {
    fn diagnostic(&self, path: &str, message: impl ToString) -> Diagnostic {
        self.text.diagnostic(&self.template.origin, path, message)
    }
}

/// Reads a template document's checks on its own: the parsed template and its problems.
pub(crate) fn template(
    name: String,
    template: Located<AnalysisTemplateSpec>,
    text: DocumentText,
) -> (ParsedTemplate, Vec<Diagnostic>) {
    let mut problems: Vec<(String, Invalid)> = Vec::new();
    if !is_dns_label(&name) {
        problems.push(("metadata.name".to_string(), Invalid::Name(name.clone())));
    }
    problems.extend(
        template_problems(&template.value)
            .into_iter()
            .map(|(path, problem)| (path, problem.into())),
    );
    let parsed = ParsedTemplate {
        name,
        template: Arc::new(template),
        valid: problems.is_empty(),
        text,
    };
    let diagnostics = problems
        .into_iter()
        .map(|(path, problem)| parsed.diagnostic(&path, problem))
        .collect();
    (parsed, diagnostics)
}

/// Problems of a template's `spec`, with paths from the document's root.
fn template_problems(spec: &AnalysisTemplateSpec) -> Vec<(String, Problem)> {
    let mut problems = Vec::new();
    let mut declared = BTreeMap::new();
    for (i, arg) in spec.args.iter().enumerate() {
        if declared.insert(arg.name.clone(), String::new()).is_some() {
            problems.push((
                format!("spec.args[{i}].name"),
                Problem::DuplicateArg(arg.name.clone()),
            ));
        }
    }
    if spec.metrics.is_empty() {
        problems.push(("spec.metrics".to_string(), Problem::NoMetrics));
    }
    let mut metric_names = BTreeSet::new();
    for (i, metric) in spec.metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        if !metric_names.insert(metric.name.as_str()) {
            problems.push((
                format!("{at}.name"),
                Problem::DuplicateMetric(metric.name.clone()),
            ));
        }
        for (path, problem) in self::metric(metric, &declared) {
            problems.push((format!("{at}.{path}"), problem));
        }
    }
    for (i, dry_run) in spec.dry_run.iter().enumerate() {
        let name = dry_run.metric_name.as_str();
        if name != "*" && !metric_names.contains(name) {
            problems.push((
                format!("spec.dryRun[{i}].metricName"),
                Problem::UnknownDryRun(name.to_string()),
            ));
        }
    }
    problems
}

/// Problems of one metric, with paths relative to it. `declared` holds the template's
/// argument names (with empty values), to find `{{args.x}}` naming no argument.
fn metric(metric: &MetricSpec, declared: &BTreeMap<String, String>) -> Vec<(String, Problem)> {
    let mut problems = Vec::new();
    let mut strings: Vec<(String, &str)> = Vec::new();
    for (field, condition) in [
        ("successCondition", &metric.success_condition),
        ("failureCondition", &metric.failure_condition),
    ] {
        let Some(condition) = condition else {
            continue;
        };
        strings.push((field.to_string(), condition));
        // A condition with arguments is parsed once they are substituted (see `tree`).
        if condition.contains("{{") {
            continue;
        }
        if let Err(error) = Condition::parse(condition) {
            let condition = condition.clone();
            problems.push((field.to_string(), Problem::Condition { condition, error }));
        }
    }
    match &metric.provider {
        Provider::Builtin(builtin) => {
            strings.push(("provider.builtin.metric".into(), &builtin.metric));
        }
        Provider::Prometheus(prometheus) => {
            let address = (
                "provider.prometheus.address".to_string(),
                &prometheus.address,
            );
            problems.extend(url(&address.0, address.1));
            strings.push((address.0, address.1));
            strings.push(("provider.prometheus.query".into(), &prometheus.query));
        }
        Provider::Web(web) => {
            problems.extend(url("provider.web.url", &web.url));
            strings.push(("provider.web.url".into(), &web.url));
            if let Some(json_path) = &web.json_path {
                strings.push(("provider.web.jsonPath".into(), json_path));
            }
            for (name, value) in &web.headers {
                strings.push((format!("provider.web.headers.{name}"), value));
            }
        }
        Provider::Command(command) => {
            if command.command.is_empty() {
                problems.push(("provider.command.command".into(), Problem::EmptyCommand));
            }
            for (i, part) in command.command.iter().enumerate() {
                strings.push((format!("provider.command.command[{i}]"), part));
            }
        }
    }
    for (path, text) in strings {
        if let Err(AnalysisError::UndeclaredArg(arg)) = substitute_str(text, declared) {
            problems.push((path, Problem::UndeclaredArg(arg)));
        }
    }
    problems
}

/// An `http://` or `https://` URL; one with `{{args.x}}` in it is taken as it comes.
fn url(path: &str, value: &str) -> Option<(String, Problem)> {
    let ok = value.contains("{{") || ["http://", "https://"].iter().any(|s| value.starts_with(s));
    (!ok).then(|| (path.to_string(), Problem::Url(value.to_string())))
}

/// The problems between the documents of one tree: template names, and what each strategy's
/// analyses ask of the templates they name.
///
/// When some documents could not be read (`complete` is false), a `templateName` naming an
/// unknown template is not reported: it may well be defined in a broken document.
pub(crate) fn tree(
    apps: &[Arc<Parsed>],
    templates: &[Arc<ParsedTemplate>],
    complete: bool,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut by_name: BTreeMap<&str, &Arc<ParsedTemplate>> = BTreeMap::new();
    for template in templates {
        match by_name.get(template.name.as_str()) {
            Some(first) => diagnostics.push(template.diagnostic(
                "metadata.name",
                Problem::DuplicateTemplate {
                    name: template.name.clone(),
                    first: first.template.origin.clone(),
                },
            )),
            None => {
                by_name.insert(&template.name, template);
            }
        }
    }
    for app in apps {
        let Some(strategy) = &app.app.value.spec.strategy else {
            continue;
        };
        for analysis in analyses(strategy) {
            for (i, reference) in analysis.templates.iter().enumerate() {
                let name = &reference.template_name;
                let Some(template) = by_name.get(name.as_str()) else {
                    if complete {
                        diagnostics.push(app.diagnostic(
                            &format!("{}.templates[{i}].templateName", analysis.path),
                            Problem::UnknownTemplate(name.clone()),
                        ));
                    }
                    continue;
                };
                diagnostics.extend(
                    arguments(name, template, analysis.args)
                        .into_iter()
                        .map(|problem| app.diagnostic(&format!("{}.args", analysis.path), problem)),
                );
            }
        }
    }
    diagnostics
}

/// What is wrong with running `template` with `args`: arguments without a default that are not
/// given, else (for a template valid on its own) whatever substituting them breaks, such as a
/// condition that no longer parses.
fn arguments(name: &str, template: &ParsedTemplate, args: &[Arg]) -> Vec<Problem> {
    let spec = &template.template.value;
    let missing: Vec<Problem> = spec
        .args
        .iter()
        .filter(|arg| arg.value.is_none() && !args.iter().any(|given| given.name == arg.name))
        .map(|arg| Problem::MissingArg {
            template: name.to_string(),
            arg: arg.name.clone(),
        })
        .collect();
    if !missing.is_empty() || !template.valid {
        return missing;
    }
    match spec.resolve(args) {
        Ok(_) => Vec::new(),
        Err(error) => vec![Problem::Resolve {
            template: name.to_string(),
            error,
        }],
    }
}

#[cfg(test)]
mod tests {
    use gauntlet_rollout::engine::{CanaryStep, Strategy};

    use crate::diagnostic::{Diagnostic, Diagnostics};
    use crate::model::OnFailure;
    use crate::parse::{parse, SourceFile};

    /// A canary with every step kind but `chaos` (tested with experiments, in `experiment.rs`).
    /// Line numbers matter to the tests.
    const APP: &str = "\
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata: {name: web}
spec:
  process: {command: [web]}
  service: {listen: '127.0.0.1:8080'}
  onFailure: revert
  strategy:
    canary:
      steps:
      - setWeight: 5
      - pause: {duration: 30s}
      - analysis:
          templates: [{templateName: success-rate}]
          args: [{name: service, value: web}]
      - setHeaderRoute:
          match: [{header: x-canary, value: {exact: 'yes'}}]
      - setMirrorRoute: {percent: 10}
      - setWeight: 50
      - pause: {}
      analysis:
        templates: [{templateName: success-rate}]
        args: [{name: service, value: web}]
        startingStep: 2
      guard: {maxErrorRate: 0.05}
";

    /// A template with every field and every provider.
    const TEMPLATE: &str = "\
apiVersion: gauntlet.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: success-rate}
spec:
  args:
  - name: service
  - {name: threshold, value: '0.01'}
  metrics:
  - name: error-rate
    interval: 10s
    count: 3
    initialDelay: 5s
    successCondition: result < {{args.threshold}}
    failureCondition: result >= 0.5
    failureLimit: 0
    inconclusiveLimit: 1
    consecutiveErrorLimit: 4
    provider:
      builtin: {metric: errorRate, revision: candidate, window: 30s}
  - name: p99
    successCondition: result[0] < 300
    provider:
      prometheus: {address: 'http://127.0.0.1:9090', query: 'p99{app=\"{{args.service}}\"}'}
  - name: stats
    provider:
      web: {url: 'http://127.0.0.1:8080/stats', jsonPath: '$.ok', headers: {a: b}, timeout: 2s}
  - name: check
    provider:
      command: {command: [./check.sh, '{{args.service}}'], timeout: 5s}
  dryRun:
  - metricName: check
";

    fn file(path: &str, contents: &str) -> SourceFile {
        SourceFile {
            path: path.to_string(),
            contents: contents.to_string(),
        }
    }

    fn errors(app: &str, template: &str) -> Vec<Diagnostic> {
        match parse(&[file("web.yaml", app), file("t.yaml", template)]) {
            Ok(state) => panic!("expected diagnostics, parsed {state:?}"),
            Err(Diagnostics(all)) => all,
        }
    }

    /// The one diagnostic of a tree, rendered.
    fn only(app: &str, template: &str) -> String {
        let all = errors(app, template);
        assert_eq!(all.len(), 1, "{all:#?}");
        all[0].to_string()
    }

    #[test]
    fn a_canary_strategy_and_its_template_parse() {
        let state = parse(&[file("web.yaml", APP), file("t.yaml", TEMPLATE)]).unwrap();
        let spec = &state.applications["web"].value.spec;
        assert_eq!(spec.on_failure, Some(OnFailure::Revert));
        let Some(Strategy::Canary(canary)) = &spec.strategy else {
            panic!("{:?}", spec.strategy);
        };
        assert_eq!(canary.steps.len(), 7);
        assert_eq!(canary.steps[0], CanaryStep::SetWeight(5.0));
        assert!(matches!(&canary.steps[1], CanaryStep::Pause(p)
            if p.duration.as_ref().map(|d| d.as_ms()) == Some(30_000)));
        assert_eq!(canary.guard.max_error_rate, 0.05);
        assert_eq!(canary.analysis.as_ref().map(|a| a.starting_step), Some(2));

        let template = &state.templates["success-rate"];
        assert_eq!(
            (template.origin.file.as_str(), template.origin.line),
            ("t.yaml", 1)
        );
        let metrics = &template.value.metrics;
        assert_eq!(metrics.len(), 4);
        assert_eq!(
            metrics[0].interval.as_ref().map(|d| d.as_ms()),
            Some(10_000)
        );
        assert_eq!(metrics[0].consecutive_error_limit, Some(4));
        assert_eq!(template.value.dry_run[0].metric_name, "check");
        assert_eq!(
            state.templates_of("web").keys().collect::<Vec<_>>(),
            ["success-rate"]
        );
        assert!(state.templates_of("ghost").is_empty());
    }

    #[test]
    fn a_blue_green_strategy_parses_with_its_defaults() {
        let app = APP
            .split("  strategy:\n")
            .next()
            .unwrap_or_default()
            .to_string()
            + "  strategy:\n    blueGreen:\n      previewListen: '127.0.0.1:8081'\n      \
               prePromotionAnalysis: {templates: [{templateName: success-rate}], args: \
               [{name: service, value: web}]}\n";
        let state = parse(&[file("web.yaml", &app), file("t.yaml", TEMPLATE)]).unwrap();
        let Some(Strategy::BlueGreen(blue_green)) = &state.applications["web"].value.spec.strategy
        else {
            panic!("not blue/green");
        };
        assert!(blue_green.auto_promotion_enabled);
        assert_eq!(blue_green.scale_down_delay_seconds, 30);
        assert_eq!(state.templates_of("web").len(), 1);
    }

    #[test]
    fn on_failure_defaults_to_none_and_rejects_unknown_values() {
        let plain = APP.replace("  onFailure: revert\n", "");
        let state = parse(&[file("web.yaml", &plain), file("t.yaml", TEMPLATE)]).unwrap();
        assert_eq!(state.applications["web"].value.spec.on_failure, None);
        let all = errors(&APP.replace("revert", "retry"), TEMPLATE);
        assert_eq!(all[0].field.as_deref(), Some("spec.onFailure"), "{all:#?}");
        assert!(
            all[0].message.contains("`rollback`, `revert`"),
            "{}",
            all[0]
        );
    }

    #[test]
    fn a_chaos_step_must_name_a_chaos_experiment_of_the_tree() {
        let app = APP.replace(
            "setMirrorRoute: {percent: 10}",
            "chaos: {experiment: kill-one}",
        );
        assert_eq!(
            only(&app, TEMPLATE),
            "web.yaml:18:17: spec.strategy.canary.steps[4].chaos.experiment: unknown \
             ChaosExperiment `kill-one`: chaos.experiment must name a ChaosExperiment of this \
             tree"
        );
    }

    #[test]
    fn unknown_fields_in_a_strategy_are_rejected_with_their_path() {
        let all = errors(&APP.replace("startingStep", "startStep"), TEMPLATE);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            (all[0].line, all[0].field.as_deref()),
            (24, Some("spec.strategy.canary.analysis.startStep"))
        );
    }

    #[test]
    fn durations_must_parse() {
        let all = errors(
            &APP.replace("{duration: 30s}", "{duration: soon}"),
            TEMPLATE,
        );
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            (all[0].line, all[0].field.as_deref()),
            (12, Some("spec.strategy.canary.steps[1].pause.duration"))
        );
        assert!(
            all[0].message.contains("`soon` is not a duration"),
            "{}",
            all[0]
        );

        let all = errors(APP, &TEMPLATE.replace("interval: 10s", "interval: 10x"));
        assert_eq!(
            (all[0].file.as_str(), all[0].line, all[0].field.as_deref()),
            ("t.yaml", 10, Some("spec.metrics[0].interval")),
            "{all:#?}"
        );
    }

    #[test]
    fn a_template_name_must_name_a_template_of_the_tree() {
        let app = APP.replacen(
            "templates: [{templateName: success-rate}]",
            "templates: [{templateName: succes-rate}]",
            1,
        );
        assert_eq!(
            only(&app, TEMPLATE),
            "web.yaml:14:24: spec.strategy.canary.steps[2].analysis.templates[0].templateName: \
             unknown AnalysisTemplate `succes-rate`: templateName must name an \
             AnalysisTemplate of this tree"
        );
    }

    #[test]
    fn a_template_in_a_broken_document_is_not_called_unknown() {
        let all = errors(APP, &TEMPLATE.replace("count: 3", "cnt: 3"));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field.as_deref(), Some("spec.metrics[0].cnt"));
    }

    #[test]
    fn template_names_are_dns_labels_and_unique() {
        let all = errors(APP, &format!("{TEMPLATE}---\n{TEMPLATE}"));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            all[0].to_string(),
            "t.yaml:35:12: metadata.name: duplicate AnalysisTemplate name `success-rate`, also \
             defined at t.yaml:1"
        );
        let all = errors(
            APP,
            &TEMPLATE.replace("{name: success-rate}", "{name: Success}"),
        );
        assert_eq!(
            fields(&all),
            [
                "metadata.name",
                "spec.strategy.canary.steps[2].analysis.templates[0].templateName",
                "spec.strategy.canary.analysis.templates[0].templateName"
            ]
        );
    }

    fn fields(all: &[Diagnostic]) -> Vec<&str> {
        all.iter().filter_map(|d| d.field.as_deref()).collect()
    }

    #[test]
    fn arguments_without_a_default_must_be_given() {
        let app = APP.replacen("          args: [{name: service, value: web}]\n", "", 1);
        assert_eq!(
            only(&app, TEMPLATE),
            "web.yaml:13:9: spec.strategy.canary.steps[2].analysis.args: template \
             `success-rate` needs argument `service`, which has no default: pass it in this \
             analysis's args as {name: service, value: ...}"
        );
    }

    #[test]
    fn conditions_must_parse_and_the_error_names_the_column() {
        let template = TEMPLATE.replace("result >= 0.5", "result >= ");
        assert_eq!(
            only(APP, &template),
            "t.yaml:14:5: spec.metrics[0].failureCondition: `result >=` does not parse at \
             column 10: expected a value, found the end of the condition"
        );
    }

    #[test]
    fn conditions_with_arguments_are_checked_with_the_values_given() {
        let app = APP.replacen(
            "args: [{name: service, value: web}]",
            "args: [{name: service, value: web}, {name: threshold, value: 'x <'}]",
            1,
        );
        let message = only(&app, TEMPLATE);
        assert!(
            message.starts_with(
                "web.yaml:15:11: spec.strategy.canary.steps[2].analysis.args: template \
                 `success-rate` with these args: metric `error-rate`: successCondition:"
            ),
            "{message}"
        );
    }

    #[test]
    fn arguments_must_be_declared_before_they_are_used() {
        let template = TEMPLATE.replace("'{{args.service}}'], timeout", "'{{args.svc}}'], timeout");
        assert_eq!(
            only(APP, &template),
            "t.yaml:29:39: spec.metrics[3].provider.command.command[1]: `{{args.svc}}` is used \
             but the template declares no argument `svc`: add it to spec.args"
        );
    }

    #[test]
    fn a_template_needs_metrics_with_unique_names_and_working_providers() {
        let all = errors(APP, &TEMPLATE.replace("name: p99", "name: error-rate"));
        assert_eq!(fields(&all), ["spec.metrics[1].name"], "{all:#?}");
        let all = errors(
            APP,
            &TEMPLATE
                .replace("http://127.0.0.1:9090", "127.0.0.1:9090")
                .replace("[./check.sh, '{{args.service}}']", "[]")
                .replace("metricName: check", "metricName: chek"),
        );
        assert_eq!(
            fields(&all),
            [
                "spec.metrics[1].provider.prometheus.address",
                "spec.metrics[3].provider.command.command",
                "spec.dryRun[0].metricName"
            ],
            "{all:#?}"
        );
        let empty = "apiVersion: gauntlet.dev/v1alpha1\nkind: AnalysisTemplate\n\
                     metadata: {name: success-rate}\nspec:\n  metrics: []\n";
        let all = errors(APP, empty);
        assert!(fields(&all).contains(&"spec.metrics"), "{all:#?}");
    }

    #[test]
    fn header_routes_match_one_header_or_cookie_with_a_regex_that_compiles() {
        let app = APP.replace(
            "match: [{header: x-canary, value: {exact: 'yes'}}]",
            "match: [{header: a, cookie: b, value: {exact: x}}, {value: {prefix: x}}, \
             {cookie: beta, value: {regex: '(unclosed'}}]",
        );
        let all = errors(&app, TEMPLATE);
        assert_eq!(
            fields(&all),
            [
                "spec.strategy.canary.steps[3].setHeaderRoute.match[0]",
                "spec.strategy.canary.steps[3].setHeaderRoute.match[1]",
                "spec.strategy.canary.steps[3].setHeaderRoute.match[2].value.regex"
            ],
            "{all:#?}"
        );
        assert!(all[0]
            .message
            .contains("exactly one of `header`, `cookie`; found 2"));
        assert!(all[1].message.ends_with("found 0"));
        assert!(
            all[2]
                .message
                .starts_with("`(unclosed` is not a valid regular expression: "),
            "{}",
            all[2]
        );
        assert_eq!(all[2].line, 17);
    }

    #[test]
    fn weights_and_mirror_percentages_are_percentages() {
        let app = APP
            .replace("setWeight: 5\n", "setWeight: 150\n")
            .replace("setWeight: 50\n", "setWeight: -1\n")
            .replace("percent: 10", "percent: 101");
        let all = errors(&app, TEMPLATE);
        assert_eq!(
            fields(&all),
            [
                "spec.strategy.canary.steps[0].setWeight",
                "spec.strategy.canary.steps[4].setMirrorRoute.percent",
                "spec.strategy.canary.steps[5].setWeight"
            ],
            "{all:#?}"
        );
        assert_eq!(
            all[0].to_string(),
            "web.yaml:11:9: spec.strategy.canary.steps[0].setWeight: setWeight must be from 0 \
             to 100 (percent of traffic to the candidate), got 150"
        );
    }

    #[test]
    fn the_guard_must_be_able_to_work() {
        let app = APP.replace("{maxErrorRate: 0.05}", "{maxErrorRate: 0.05, alpha: 1.5}");
        assert_eq!(
            only(&app, TEMPLATE),
            "web.yaml:25:35: spec.strategy.canary.guard.alpha: guard.alpha must be strictly \
             between 0 and 1, got 1.5"
        );
    }

    #[test]
    fn a_strategy_needs_a_service_listen_address() {
        let app = APP.replace("  service: {listen: '127.0.0.1:8080'}\n", "");
        assert_eq!(
            only(&app, TEMPLATE),
            "web.yaml:7:3: spec.strategy: a rollout needs service.listen: the proxy splits \
             traffic there"
        );
    }

    fn blue_green(listen: &str, preview: &str) -> String {
        format!(
            "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata: {{name: web}}\n\
             spec:\n  process: {{command: [web]}}\n  service: {{listen: '{listen}'}}\n  \
             strategy:\n    blueGreen: {{previewListen: '{preview}'}}\n"
        )
    }

    #[test]
    fn a_preview_listen_address_parses_and_is_its_own() {
        let all = errors(&blue_green("127.0.0.1:8080", "localhost:8081"), TEMPLATE);
        assert_eq!(fields(&all), ["spec.strategy.blueGreen.previewListen"]);
        assert!(
            all[0].message.contains("not a socket address"),
            "{}",
            all[0]
        );
        assert_eq!(
            only(&blue_green("127.0.0.1:8080", "127.0.0.1:8080"), TEMPLATE),
            "web.yaml:8:17: spec.strategy.blueGreen.previewListen: previewListen must differ \
             from service.listen: the candidate is previewed on an address of its own"
        );
    }

    #[test]
    fn a_preview_listen_address_is_not_shared_with_another_application() {
        let other = blue_green("127.0.0.1:9000", "127.0.0.1:9001").replace("web", "api");
        let all = match parse(&[
            file("a.yaml", &other),
            file("b.yaml", &blue_green("127.0.0.1:9001", "127.0.0.1:9000")),
        ]) {
            Ok(_) => panic!("shared addresses accepted"),
            Err(Diagnostics(all)) => all,
        };
        let rendered: Vec<String> = all.iter().map(Diagnostic::to_string).collect();
        assert_eq!(
            rendered,
            [
                "b.yaml:6:13: spec.service.listen: listen address `127.0.0.1:9001` is also used \
                 by application `api` at a.yaml:1",
                "b.yaml:8:17: spec.strategy.blueGreen.previewListen: listen address \
                 `127.0.0.1:9000` is also used by application `api` at a.yaml:1"
            ]
        );
    }
}
