//! What an evaluation answers: the value, the variant, flagd's reason and OpenFeature's error
//! code, untyped ([`Evaluation`]) or checked against the type the caller asked for
//! ([`Resolution`]).
//!
//! Both borrow from the [`Flags`](crate::Flags) they came from, so an evaluation copies nothing.

use std::fmt;

use serde_json::{Map, Value};

/// Why a flag resolved as it did (OpenFeature's resolution reasons, as flagd uses them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The flag has no targeting: its default variant.
    Static,
    /// Targeting returned null, or the flag has no default variant: the default variant, or the
    /// caller's default when there is none.
    Default,
    /// Targeting chose a variant.
    TargetingMatch,
    /// The flag is disabled: the caller's default.
    Disabled,
    /// See the error: the caller's default.
    Error,
}

impl Reason {
    /// The wire name: `STATIC`, `DEFAULT`, `TARGETING_MATCH`, `DISABLED`, `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OpenFeature's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No flag has this key.
    FlagNotFound,
    /// The flag's targeting could not be compiled (for example a `$ref` to a missing evaluator).
    ParseError,
    /// The flag's value is not of the type asked for.
    TypeMismatch,
    /// Not produced by the evaluator (flagd requires no targeting key); for servers.
    TargetingKeyMissing,
    /// Not produced by the evaluator; for servers given a context that is not an object.
    InvalidContext,
    /// Targeting returned something that is not one of the flag's variants.
    General,
}

impl ErrorCode {
    /// The wire name, such as `FLAG_NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An evaluation error: its code and a message naming the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EvalError {
    pub code: ErrorCode,
    pub message: String,
}

/// The untyped result of evaluating a flag, as OFREP serves it.
///
/// `value` is `None` when the caller's default applies (disabled flag, no default variant,
/// error); `reason` and `error` say which.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation<'f> {
    pub value: Option<&'f Value>,
    pub variant: Option<&'f str>,
    pub reason: Reason,
    pub error: Option<EvalError>,
    /// The flag's metadata merged over its flag set's (empty for an unknown flag).
    pub metadata: &'f Map<String, Value>,
}

/// The result of evaluating a flag as a given type; `value` is the caller's default whenever
/// the flag gave none or gave one of another type (`TYPE_MISMATCH`).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution<'f, T> {
    pub value: T,
    pub variant: Option<&'f str>,
    pub reason: Reason,
    pub error: Option<EvalError>,
    pub metadata: &'f Map<String, Value>,
}

impl<'f> Evaluation<'f> {
    pub(crate) fn error(
        code: ErrorCode,
        message: String,
        metadata: &'f Map<String, Value>,
    ) -> Self {
        Evaluation {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some(EvalError { code, message }),
            metadata,
        }
    }

    /// As a boolean.
    pub fn boolean(self, default: bool) -> Resolution<'f, bool> {
        self.typed(default, "a boolean", Value::as_bool)
    }

    /// As a string.
    pub fn string(self, default: &'f str) -> Resolution<'f, &'f str> {
        self.typed(default, "a string", Value::as_str)
    }

    /// As an integer: an integral number (`10` or `10.0`); `0.5` is a type mismatch.
    pub fn integer(self, default: i64) -> Resolution<'f, i64> {
        self.typed(default, "an integer", as_integer)
    }

    /// As a float: any number.
    pub fn float(self, default: f64) -> Resolution<'f, f64> {
        self.typed(default, "a number", Value::as_f64)
    }

    /// As an object.
    pub fn object(self, default: &'f Map<String, Value>) -> Resolution<'f, &'f Map<String, Value>> {
        self.typed(default, "an object", Value::as_object)
    }

    fn typed<T>(
        self,
        default: T,
        expected: &str,
        cast: impl FnOnce(&'f Value) -> Option<T>,
    ) -> Resolution<'f, T> {
        let Some(value) = self.value else {
            return Resolution {
                value: default,
                variant: self.variant,
                reason: self.reason,
                error: self.error,
                metadata: self.metadata,
            };
        };
        match cast(value) {
            Some(v) => Resolution {
                value: v,
                variant: self.variant,
                reason: self.reason,
                error: None,
                metadata: self.metadata,
            },
            None => Resolution {
                value: default,
                variant: None,
                reason: Reason::Error,
                error: Some(EvalError {
                    code: ErrorCode::TypeMismatch,
                    message: format!(
                        "variant \"{}\" is {}, not {expected}",
                        self.variant.unwrap_or_default(),
                        crate::context::json_type(value)
                    ),
                }),
                metadata: self.metadata,
            },
        }
    }
}

fn as_integer(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let f = v.as_f64()?;
        let integral = f.fract() == 0.0 && f.abs() < 9.2e18;
        integral.then_some(f as i64)
    })
}
