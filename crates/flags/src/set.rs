//! Reading one flagd flag set (`{"flags": {...}, "$evaluators": {...}, "metadata": {...}}`):
//! strict structural validation with a JSON pointer for every problem, then compilation of each
//! flag's targeting.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::context::json_type;
use crate::flag::{Flag, State, Targeting, ValueType};
use crate::targeting::{self, Severity};

/// How targeting problems are treated when a flag set loads.
///
/// Structural problems (a missing `state`, a `defaultVariant` that names no variant, variants of
/// mixed types, unknown fields, ...) always reject the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Validation {
    /// Any problem in a targeting rule rejects the set: an unknown operation, a `$ref` to a
    /// missing evaluator, a `sem_ver`/`fractional`/`starts_with`/`ends_with` that can only
    /// yield null, a constant result that names no variant, a negative or fractional weight.
    /// For flags in Git, reviewed before they are served.
    #[default]
    Strict,
    /// Load what flagd would load and behave as flagd does: a flag whose rule cannot be
    /// compiled answers `PARSE_ERROR`, an operation with bad arguments yields null. Problems are
    /// still listed in [`FlagSet::diagnostics`]. For flagd's compliance suite and for flag
    /// files written for flagd.
    Lenient,
}

/// One problem in a flag set: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The flag it concerns, if any.
    pub flag: Option<String>,
    /// The flag's field (`state`, `variants`, `defaultVariant`, `targeting`, `metadata`), or the
    /// flag set's (`flags`, `$evaluators`, `metadata`).
    pub field: String,
    /// A JSON pointer (RFC 6901) into the flag set, such as `/flags/new-checkout/defaultVariant`
    /// or `/$evaluators/is_staff/in/1`.
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.flag {
            Some(flag) => write!(f, "flag \"{flag}\", {}: {}", self.field, self.message)?,
            None => write!(f, "{}: {}", self.field, self.message)?,
        }
        write!(f, " (at {})", self.pointer)
    }
}

/// Why a flag set was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FlagSetError {
    /// `from_json` was given text that is not JSON.
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// The JSON is not a valid flag set; every problem found is listed.
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

impl FlagSetError {
    /// The problems, for an `Invalid` set (empty for a syntax error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            FlagSetError::Invalid(problems) => problems,
            FlagSetError::Syntax { .. } => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One parsed and compiled flag set, not yet merged with others. Immutable.
///
/// ```
/// use gauntlet_flags::FlagSet;
///
/// let err = FlagSet::from_json(r#"{"flags": {"f": {
///     "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "of"}}}"#)
///     .unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "flag \"f\", defaultVariant: \"of\" is not one of its variants (off, on) \
///      (at /flags/f/defaultVariant)"
/// );
/// ```
#[derive(Debug)]
pub struct FlagSet {
    pub(crate) flags: Vec<Flag>,
    diagnostics: Vec<Problem>,
}

impl FlagSet {
    /// Parses flag-set JSON text, strictly.
    pub fn from_json(json: &str) -> Result<FlagSet, FlagSetError> {
        FlagSet::from_json_with(json, Validation::Strict)
    }

    /// Reads a flag set already parsed as JSON (for example the `spec` of a `kind:
    /// FeatureFlags` YAML document), strictly.
    pub fn from_value(value: Value) -> Result<FlagSet, FlagSetError> {
        FlagSet::from_value_with(value, Validation::Strict)
    }

    pub fn from_json_with(json: &str, validation: Validation) -> Result<FlagSet, FlagSetError> {
        let value: Value = serde_json::from_str(json).map_err(|e| FlagSetError::Syntax {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        FlagSet::from_value_with(value, validation)
    }

    pub fn from_value_with(value: Value, validation: Validation) -> Result<FlagSet, FlagSetError> {
        let mut reader = Reader::default();
        let flags = reader.set(value);
        if !reader.problems.is_empty() {
            return Err(FlagSetError::Invalid(reader.problems));
        }
        if validation == Validation::Strict && !reader.diagnostics.is_empty() {
            return Err(FlagSetError::Invalid(reader.diagnostics));
        }
        Ok(FlagSet {
            flags,
            diagnostics: reader.diagnostics,
        })
    }

    /// Targeting problems a [`Validation::Lenient`] load let through (always empty after a
    /// strict load).
    pub fn diagnostics(&self) -> &[Problem] {
        &self.diagnostics
    }

    /// The flags, in key order.
    pub fn flags(&self) -> impl ExactSizeIterator<Item = &Flag> {
        self.flags.iter()
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

const SET_FIELDS: &str = "flags, $evaluators, metadata, $schema";
const FLAG_FIELDS: &str = "state, variants, defaultVariant, targeting, metadata";

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    diagnostics: Vec<Problem>,
}

impl Reader {
    fn problem(&mut self, flag: Option<&str>, field: &str, pointer: String, message: String) {
        self.problems.push(Problem {
            flag: flag.map(str::to_owned),
            field: field.to_owned(),
            pointer,
            message,
        });
    }

    fn set(&mut self, value: Value) -> Vec<Flag> {
        let Value::Object(mut top) = value else {
            self.problem(
                None,
                "flag set",
                String::new(),
                format!(
                    "a flag set is an object with a \"flags\" object, not {}",
                    json_type(&value)
                ),
            );
            return Vec::new();
        };
        for key in top.keys() {
            if !matches!(
                key.as_str(),
                "flags" | "$evaluators" | "metadata" | "$schema"
            ) {
                self.problem(
                    None,
                    key,
                    pointer(&[key]),
                    format!("unknown field; a flag set has {SET_FIELDS}"),
                );
            }
        }
        let evaluators = match top.remove("$evaluators") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                self.problem(
                    None,
                    "$evaluators",
                    pointer(&["$evaluators"]),
                    format!(
                        "must be an object of named rules, not {}",
                        json_type(&other)
                    ),
                );
                Map::new()
            }
        };
        let set_metadata = self.metadata(None, top.remove("metadata"), &["metadata"]);
        let flags = match top.remove("flags") {
            Some(Value::Object(flags)) => flags,
            None => {
                self.problem(
                    None,
                    "flags",
                    pointer(&["flags"]),
                    "is required: an object of flags by key".to_owned(),
                );
                return Vec::new();
            }
            Some(other) => {
                self.problem(
                    None,
                    "flags",
                    pointer(&["flags"]),
                    format!(
                        "must be an object of flags by key, not {}",
                        json_type(&other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<Flag> = flags
            .into_iter()
            .filter_map(|(key, def)| self.flag(key, def, &evaluators, &set_metadata))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        self.unreferenced_evaluator_problems(&evaluators);
        out
    }

    /// Problems in `$evaluators` that no flag's targeting reached (those that were reached are
    /// already reported under the flag).
    fn unreferenced_evaluator_problems(&mut self, evaluators: &Map<String, Value>) {
        for (name, body) in evaluators {
            let at = pointer(&["$evaluators", name]);
            let compiled = targeting::compile("", body, evaluators, &at, &|_| true);
            for d in compiled.diagnostics {
                let known = self
                    .diagnostics
                    .iter()
                    .any(|p| p.pointer == d.pointer && p.message == d.message);
                if !known {
                    self.diagnostics.push(Problem {
                        flag: None,
                        field: "$evaluators".to_owned(),
                        pointer: d.pointer,
                        message: d.message,
                    });
                }
            }
        }
    }

    fn flag(
        &mut self,
        key: String,
        def: Value,
        evaluators: &Map<String, Value>,
        set_metadata: &Map<String, Value>,
    ) -> Option<Flag> {
        let at = |field: &str| pointer(&["flags", &key, field]);
        let flag = Some(key.as_str());
        if key.is_empty() {
            self.problem(
                None,
                "flags",
                pointer(&["flags", ""]),
                "a flag key must not be empty".to_owned(),
            );
        }
        let Value::Object(mut def) = def else {
            self.problem(
                flag,
                "flag",
                pointer(&["flags", &key]),
                format!(
                    "a flag is an object with {FLAG_FIELDS}, not {}",
                    json_type(&def)
                ),
            );
            return None;
        };
        let before = self.problems.len();
        for field in def.keys() {
            if !FLAG_FIELDS.split(", ").any(|f| f == field) {
                self.problem(
                    flag,
                    field,
                    at(field),
                    format!("unknown field; a flag has {FLAG_FIELDS}"),
                );
            }
        }
        let state = self.state(&key, def.remove("state"));
        let (value_type, variants) = self.variants(&key, def.remove("variants"));
        let default_variant = match def.remove("defaultVariant") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => {
                let found = variants.binary_search_by(|(k, _)| k.as_str().cmp(&name));
                if found.is_err() && !variants.is_empty() {
                    let names: Vec<&str> = variants.iter().map(|(k, _)| k.as_str()).collect();
                    self.problem(
                        flag,
                        "defaultVariant",
                        at("defaultVariant"),
                        format!(
                            "\"{name}\" is not one of its variants ({})",
                            names.join(", ")
                        ),
                    );
                }
                found.ok()
            }
            Some(other) => {
                self.problem(
                    flag,
                    "defaultVariant",
                    at("defaultVariant"),
                    format!(
                        "must name a variant with a string, or be null, not {}",
                        json_type(&other)
                    ),
                );
                None
            }
        };
        let mut metadata = set_metadata.clone();
        metadata.extend(self.metadata(flag, def.remove("metadata"), &["flags", &key, "metadata"]));
        let targeting_json = match def.remove("targeting") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(rule @ Value::Object(_)) => Some(rule),
            Some(other) => {
                self.problem(
                    flag,
                    "targeting",
                    at("targeting"),
                    format!("must be a JsonLogic rule object, not {}", json_type(&other)),
                );
                None
            }
        };
        if self.problems.len() > before {
            return None;
        }
        let mut flag = Flag {
            key,
            source: Arc::from(""),
            state: state?,
            value_type: value_type?,
            variants,
            default_variant,
            targeting: Targeting::None,
            targeting_json,
            metadata,
        };
        flag.targeting = self.targeting(&flag, evaluators);
        Some(flag)
    }

    fn state(&mut self, key: &str, state: Option<Value>) -> Option<State> {
        let message = match state {
            Some(Value::String(s)) if s == "ENABLED" => return Some(State::Enabled),
            Some(Value::String(s)) if s == "DISABLED" => return Some(State::Disabled),
            None => "is required: \"ENABLED\" or \"DISABLED\"".to_owned(),
            Some(other) => format!("must be \"ENABLED\" or \"DISABLED\", not {other}"),
        };
        self.problem(
            Some(key),
            "state",
            pointer(&["flags", key, "state"]),
            message,
        );
        None
    }

    fn variants(
        &mut self,
        key: &str,
        variants: Option<Value>,
    ) -> (Option<ValueType>, Vec<(String, Value)>) {
        let at = pointer(&["flags", key, "variants"]);
        let map = match variants {
            Some(Value::Object(map)) if !map.is_empty() => map,
            Some(Value::Object(_)) => {
                self.problem(
                    Some(key),
                    "variants",
                    at,
                    "must name at least one variant".to_owned(),
                );
                return (None, Vec::new());
            }
            None => {
                self.problem(
                    Some(key),
                    "variants",
                    at,
                    "is required: an object of values by variant name".to_owned(),
                );
                return (None, Vec::new());
            }
            Some(other) => {
                self.problem(
                    Some(key),
                    "variants",
                    at,
                    format!(
                        "must be an object of values by variant name, not {}",
                        json_type(&other)
                    ),
                );
                return (None, Vec::new());
            }
        };
        let mut first: Option<(ValueType, String)> = None;
        let mut ok = true;
        for (name, value) in &map {
            let here = pointer(&["flags", key, "variants", name]);
            let Some(ty) = ValueType::of(value) else {
                self.problem(
                    Some(key),
                    "variants",
                    here,
                    format!(
                        "variant \"{name}\" is {}; a variant is a boolean, string, number or object",
                        json_type(value)
                    ),
                );
                ok = false;
                continue;
            };
            match &first {
                None => first = Some((ty, name.clone())),
                Some((want, first_name)) if *want != ty => {
                    self.problem(
                        Some(key),
                        "variants",
                        here,
                        format!(
                            "variant \"{name}\" is a {} but variant \"{first_name}\" is a {}; all variants of a flag have one type",
                            ty.as_str(),
                            want.as_str()
                        ),
                    );
                    ok = false;
                }
                Some(_) => {}
            }
        }
        let mut variants: Vec<(String, Value)> = map.into_iter().collect();
        variants.sort_by(|a, b| a.0.cmp(&b.0));
        (first.filter(|_| ok).map(|(ty, _)| ty), variants)
    }

    /// Metadata is an object of strings, numbers and booleans.
    fn metadata(
        &mut self,
        flag: Option<&str>,
        value: Option<Value>,
        at: &[&str],
    ) -> Map<String, Value> {
        let map = match value {
            None | Some(Value::Null) => return Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                self.problem(
                    flag,
                    "metadata",
                    pointer(at),
                    format!("must be an object, not {}", json_type(&other)),
                );
                return Map::new();
            }
        };
        for (name, value) in &map {
            if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                let mut here: Vec<&str> = at.to_vec();
                here.push(name);
                self.problem(
                    flag,
                    "metadata",
                    pointer(&here),
                    format!(
                        "\"{name}\" is {}; metadata values are strings, numbers or booleans",
                        json_type(value)
                    ),
                );
            }
        }
        map
    }

    fn targeting(&mut self, flag: &Flag, evaluators: &Map<String, Value>) -> Targeting {
        let Some(rule) = &flag.targeting_json else {
            return Targeting::None;
        };
        let is_variant = |name: &str| flag.variant_index(name).is_some();
        let compiled = targeting::compile(
            &flag.key,
            rule,
            evaluators,
            &pointer(&["flags", &flag.key, "targeting"]),
            &is_variant,
        );
        let mut broken = None;
        for d in compiled.diagnostics {
            if d.severity == Severity::Error && broken.is_none() {
                broken = Some(d.message.clone());
            }
            self.diagnostics.push(Problem {
                flag: Some(flag.key.clone()),
                field: "targeting".to_owned(),
                pointer: d.pointer,
                message: d.message,
            });
        }
        match broken {
            Some(message) => Targeting::Broken(message),
            None => Targeting::Rule(compiled.expr),
        }
    }
}

/// A JSON pointer from unescaped segments.
fn pointer(segments: &[&str]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", targeting::escape_pointer(s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(set: Value) -> Vec<String> {
        match FlagSet::from_value(set) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn structural_problems_name_flag_field_and_pointer() {
        let found = problems(json!({
            "flag": {},
            "flags": {
                "a": {"state": "ON", "variants": {"x": 1}, "defaultVariant": "x"},
                "b": {"state": "ENABLED", "variants": {"x": 1, "y": "two"}},
                "c": {"state": "ENABLED", "variants": {"x": true}, "defaultVarient": "x"},
                "d": {"state": "ENABLED", "variants": {}, "metadata": {"owner": ["me"]}}
            }
        }));
        assert_eq!(
            found,
            [
                "flag: unknown field; a flag set has flags, $evaluators, metadata, $schema (at /flag)",
                "flag \"a\", state: must be \"ENABLED\" or \"DISABLED\", not \"ON\" (at /flags/a/state)",
                "flag \"b\", variants: variant \"y\" is a string but variant \"x\" is a number; all variants of a flag have one type (at /flags/b/variants/y)",
                "flag \"c\", defaultVarient: unknown field; a flag has state, variants, defaultVariant, targeting, metadata (at /flags/c/defaultVarient)",
                "flag \"d\", variants: must name at least one variant (at /flags/d/variants)",
                "flag \"d\", metadata: \"owner\" is an array; metadata values are strings, numbers or booleans (at /flags/d/metadata/owner)",
            ]
        );
    }

    #[test]
    fn strict_load_rejects_what_lenient_load_compiles_to_flagd_behaviour() {
        let set = json!({"flags": {"f": {
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "missing"}, "on", "off"]}
        }}});
        let strict = problems(set.clone());
        assert_eq!(
            strict,
            ["flag \"f\", targeting: \"$ref\" names evaluator \"missing\", which \"$evaluators\" does not define (at /flags/f/targeting/if/0/$ref)"]
        );
        let lenient = FlagSet::from_value_with(set, Validation::Lenient).map_err(|e| e.to_string());
        let lenient = lenient
            .as_ref()
            .map(FlagSet::diagnostics)
            .map(<[Problem]>::len);
        assert_eq!(lenient, Ok(1));
    }

    #[test]
    fn an_unused_evaluator_is_still_checked() {
        let found = problems(json!({
            "flags": {"f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}},
            "$evaluators": {"unused": {"strats_with": [{"var": "email"}, "a"]}}
        }));
        assert_eq!(
            found,
            ["$evaluators: unknown operation \"strats_with\" (at /$evaluators/unused/strats_with)"]
        );
    }

    #[test]
    fn a_rule_returning_an_unknown_variant_is_refused_when_strict() {
        let found = problems(json!({"flags": {"f": {
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 10], ["of", 90]]}
        }}}));
        assert_eq!(
            found,
            ["flag \"f\", targeting: the rule can return \"of\", which is not a variant of the flag (at /flags/f/targeting/fractional/1/0)"]
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = FlagSet::from_json("{\n  \"flags\": {,}\n}").map(|_| ());
        assert!(
            matches!(
                err,
                Err(FlagSetError::Syntax {
                    line: 2,
                    column: 13,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn flag_metadata_overrides_set_metadata() {
        let set = FlagSet::from_value(json!({
            "metadata": {"flagSetId": "checkout", "version": 1},
            "flags": {"f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
                            "metadata": {"version": 2}}}
        }));
        let metadata = set
            .map(|s| s.flags[0].metadata.clone())
            .map_err(|e| e.to_string());
        assert_eq!(
            metadata.map(Value::Object),
            Ok(json!({"flagSetId": "checkout", "version": 2}))
        );
    }
}
