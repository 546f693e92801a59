//! One flag, compiled: its variants, default variant, targeting and merged metadata, and the
//! function that decides which variant a context gets.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::evaluation::{ErrorCode, Evaluation, Reason};
use crate::targeting::{self, Env, Expr, Val};
use crate::Context;

/// Whether a flag is served. A disabled flag answers `DISABLED` and the caller's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Enabled,
    Disabled,
}

/// The one JSON type all variants of a flag share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    Boolean,
    String,
    /// Integers and floats: flagd does not tell them apart.
    Number,
    Object,
}

impl ValueType {
    pub(crate) fn of(v: &Value) -> Option<ValueType> {
        Some(match v {
            Value::Bool(_) => ValueType::Boolean,
            Value::String(_) => ValueType::String,
            Value::Number(_) => ValueType::Number,
            Value::Object(_) => ValueType::Object,
            Value::Null | Value::Array(_) => return None,
        })
    }

    /// The name used in messages: `boolean`, `string`, `number`, `object`.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Boolean => "boolean",
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Object => "object",
        }
    }
}

/// A flag's compiled targeting.
#[derive(Debug)]
pub(crate) enum Targeting {
    /// No rule (absent, null or `{}`): the default variant, reason `STATIC`.
    None,
    Rule(Expr),
    /// The rule cannot run; every evaluation answers `PARSE_ERROR` with this message.
    Broken(String),
}

/// A validated, compiled flag. Obtained from a [`FlagSet`](crate::FlagSet) or
/// [`Flags`](crate::Flags).
#[derive(Debug)]
pub struct Flag {
    pub(crate) key: String,
    pub(crate) source: Arc<str>,
    pub(crate) state: State,
    pub(crate) value_type: ValueType,
    /// Sorted by name, for binary search.
    pub(crate) variants: Vec<(String, Value)>,
    pub(crate) default_variant: Option<usize>,
    pub(crate) targeting: Targeting,
    pub(crate) targeting_json: Option<Value>,
    pub(crate) metadata: Map<String, Value>,
}

impl Flag {
    /// The flag's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The label of the flag set it came from (empty before it is merged into [`Flags`]).
    ///
    /// [`Flags`]: crate::Flags
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn value_type(&self) -> ValueType {
        self.value_type
    }

    /// Variants in name order.
    pub fn variants(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.variants.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of one variant.
    pub fn variant(&self, name: &str) -> Option<&Value> {
        self.variant_index(name).map(|i| &self.variants[i].1)
    }

    pub fn default_variant(&self) -> Option<&str> {
        self.default_variant.map(|i| self.variants[i].0.as_str())
    }

    /// The targeting rule as written (before `$ref`s are inlined), if any.
    pub fn targeting(&self) -> Option<&Value> {
        self.targeting_json.as_ref()
    }

    /// The flag's metadata merged over its flag set's.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// Evaluates the flag for `ctx`.
    pub fn evaluate(&self, ctx: &Context) -> Evaluation<'_> {
        if self.state == State::Disabled {
            return self.answer(None, Reason::Disabled);
        }
        match &self.targeting {
            Targeting::None => self.default_answer(Reason::Static),
            Targeting::Broken(message) => Evaluation::error(
                ErrorCode::ParseError,
                format!("flag \"{}\": {message}", self.key),
                &self.metadata,
            ),
            Targeting::Rule(expr) => {
                let env = Env::new(ctx.as_value(), &self.key, ctx.timestamp());
                let result = targeting::evaluate(expr, &env);
                self.targeted(&result)
            }
        }
    }

    fn targeted(&self, result: &Val<'_>) -> Evaluation<'_> {
        let mut number = String::new();
        let name = match result {
            Val::Null => return self.default_answer(Reason::Default),
            Val::Bool(true) => "true",
            Val::Bool(false) => "false",
            Val::Num(n) => {
                targeting::write_js_number(*n, &mut number);
                number.as_str()
            }
            Val::Str(s) => s,
            Val::String(s) => s.as_str(),
            Val::Json(_) | Val::Array(_) => {
                return Evaluation::error(
                    ErrorCode::General,
                    format!(
                        "flag \"{}\": targeting returned {}, not a variant name",
                        self.key,
                        result.to_json()
                    ),
                    &self.metadata,
                )
            }
        };
        match self.variant_index(name) {
            Some(i) => self.answer(Some(i), Reason::TargetingMatch),
            None => Evaluation::error(
                ErrorCode::General,
                format!(
                    "flag \"{}\": targeting returned \"{name}\", which is not one of its variants ({})",
                    self.key,
                    self.variant_names()
                ),
                &self.metadata,
            ),
        }
    }

    /// The default variant, or the caller's default (reason `DEFAULT`) when there is none.
    fn default_answer(&self, reason: Reason) -> Evaluation<'_> {
        match self.default_variant {
            Some(i) => self.answer(Some(i), reason),
            None => self.answer(None, Reason::Default),
        }
    }

    fn answer(&self, variant: Option<usize>, reason: Reason) -> Evaluation<'_> {
        let chosen = variant.map(|i| &self.variants[i]);
        Evaluation {
            value: chosen.map(|(_, v)| v),
            variant: chosen.map(|(k, _)| k.as_str()),
            reason,
            error: None,
            metadata: &self.metadata,
        }
    }

    pub(crate) fn variant_index(&self, name: &str) -> Option<usize> {
        self.variants
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
    }

    pub(crate) fn variant_names(&self) -> String {
        let names: Vec<&str> = self.variants.iter().map(|(k, _)| k.as_str()).collect();
        names.join(", ")
    }
}
