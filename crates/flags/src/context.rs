//! The evaluation context: the attributes a targeting rule reads (`targetingKey`, `email`,
//! nested objects, ...), as OpenFeature and OFREP send them.

use serde_json::{Map, Value};

/// Attributes of the subject a flag is evaluated for.
///
/// Build one per request and reuse it across flags; evaluation only borrows it.
///
/// ```
/// use gauntlet_flags::Context;
///
/// let ctx = Context::new()
///     .with_targeting_key("user-42")
///     .with("email", "ada@example.com");
/// assert_eq!(ctx.targeting_key(), Some("user-42"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    /// Always a JSON object.
    attributes: Value,
    timestamp: Option<i64>,
}

/// A context that is not a JSON object (OFREP answers this with `INVALID_CONTEXT`).
#[derive(Debug, thiserror::Error)]
#[error("an evaluation context must be a JSON object, not {found}")]
pub struct ContextError {
    /// The JSON type that was given instead.
    pub found: &'static str,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Context::from_map(Map::new())
    }

    /// A context with these attributes.
    pub fn from_map(attributes: Map<String, Value>) -> Self {
        Context {
            attributes: Value::Object(attributes),
            timestamp: None,
        }
    }

    /// A context from a JSON value: an object, or null for an empty context.
    pub fn from_value(value: Value) -> Result<Self, ContextError> {
        match value {
            Value::Object(map) => Ok(Context::from_map(map)),
            Value::Null => Ok(Context::new()),
            other => Err(ContextError {
                found: json_type(&other),
            }),
        }
    }

    /// Sets `targetingKey`, the subject's identity (what `fractional` buckets on by default).
    pub fn with_targeting_key(self, key: impl Into<String>) -> Self {
        self.with("targetingKey", key.into())
    }

    /// Sets one attribute.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets one attribute in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        if let Value::Object(map) = &mut self.attributes {
            map.insert(key.into(), value.into());
        }
    }

    /// Fixes `$flagd.timestamp` (Unix seconds) instead of reading the system clock, for tests
    /// and replays.
    pub fn at_timestamp(mut self, unix_seconds: i64) -> Self {
        self.timestamp = Some(unix_seconds);
        self
    }

    /// The `targetingKey` attribute, when it is a string.
    pub fn targeting_key(&self) -> Option<&str> {
        self.attributes.get("targetingKey")?.as_str()
    }

    /// All attributes.
    pub fn attributes(&self) -> &Map<String, Value> {
        match &self.attributes {
            Value::Object(map) => map,
            _ => crate::empty_map(),
        }
    }

    pub(crate) fn as_value(&self) -> &Value {
        &self.attributes
    }

    pub(crate) fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
