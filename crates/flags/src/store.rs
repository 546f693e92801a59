//! [`Flags`]: the flags of several flag sets merged into one immutable store, keyed by flag key,
//! which is what gets evaluated and served.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::evaluation::{ErrorCode, Evaluation, Resolution};
use crate::{Context, Flag, FlagSet};

/// All flags being served. Immutable and `Send + Sync`: build a new one for each change and swap
/// it in whole (for example behind an `Arc`), so an evaluation sees one version, never a mix.
#[derive(Debug, Default)]
pub struct Flags {
    /// Sorted by key.
    flags: Vec<Flag>,
    index: HashMap<Box<str>, usize>,
}

/// A flag key defined by two flag sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateFlag {
    pub key: String,
    /// The source label of the set that defined it first.
    pub first: String,
    /// The source label of the set that defined it again.
    pub second: String,
}

impl fmt::Display for DuplicateFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flag \"{}\" is defined in both {} and {}; a flag key must be unique across flag sets",
            self.key, self.first, self.second
        )
    }
}

/// Flag sets that cannot be merged; every duplicate key is listed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.duplicates.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct MergeError {
    pub duplicates: Vec<DuplicateFlag>,
}

impl Flags {
    /// No flags: every evaluation answers `FLAG_NOT_FOUND`.
    pub fn empty() -> Self {
        Flags::default()
    }

    /// Merges flag sets, each with a source label the caller chooses (a file path, a document
    /// name) that errors and [`Flag::source`] report.
    ///
    /// ```
    /// use gauntlet_flags::{FlagSet, Flags};
    ///
    /// let set = |json| FlagSet::from_json(json).unwrap();
    /// let one = r#"{"flags": {"dark-mode": {"state": "ENABLED",
    ///     "variants": {"on": true, "off": false}, "defaultVariant": "off"}}}"#;
    /// let err = Flags::from_sets([("a.flagd.json", set(one)), ("flags/b.yaml", set(one))])
    ///     .unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "flag \"dark-mode\" is defined in both a.flagd.json and flags/b.yaml; \
    ///      a flag key must be unique across flag sets"
    /// );
    /// ```
    pub fn from_sets<I, S>(sets: I) -> Result<Self, MergeError>
    where
        I: IntoIterator<Item = (S, FlagSet)>,
        S: Into<String>,
    {
        let mut flags: Vec<Flag> = Vec::new();
        let mut index: HashMap<Box<str>, usize> = HashMap::new();
        let mut duplicates = Vec::new();
        for (source, set) in sets {
            let source: Arc<str> = Arc::from(source.into());
            for mut flag in set.flags {
                if let Some(&i) = index.get(flag.key.as_str()) {
                    duplicates.push(DuplicateFlag {
                        key: flag.key,
                        first: flags[i].source.to_string(),
                        second: source.to_string(),
                    });
                    continue;
                }
                flag.source = Arc::clone(&source);
                index.insert(flag.key.as_str().into(), flags.len());
                flags.push(flag);
            }
        }
        if !duplicates.is_empty() {
            return Err(MergeError { duplicates });
        }
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        let index = flags
            .iter()
            .enumerate()
            .map(|(i, f)| (f.key.as_str().into(), i))
            .collect();
        Ok(Flags { flags, index })
    }

    pub fn get(&self, key: &str) -> Option<&Flag> {
        self.index.get(key).map(|&i| &self.flags[i])
    }

    /// All flags, in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Flag> {
        self.flags.iter()
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Evaluates one flag, untyped (what OFREP serves).
    pub fn evaluate(&self, key: &str, ctx: &Context) -> Evaluation<'_> {
        match self.get(key) {
            Some(flag) => flag.evaluate(ctx),
            None => Evaluation::error(
                ErrorCode::FlagNotFound,
                format!("flag \"{key}\" not found"),
                crate::empty_map(),
            ),
        }
    }

    /// Evaluates every flag, in key order, disabled ones included (flagd's bulk evaluation
    /// leaves those out; filter on `reason`).
    pub fn evaluate_all<'f>(
        &'f self,
        ctx: &'f Context,
    ) -> impl Iterator<Item = (&'f Flag, Evaluation<'f>)> + 'f {
        self.flags
            .iter()
            .map(move |flag| (flag, flag.evaluate(ctx)))
    }

    pub fn resolve_boolean(&self, key: &str, ctx: &Context, default: bool) -> Resolution<'_, bool> {
        self.evaluate(key, ctx).boolean(default)
    }

    pub fn resolve_string<'f>(
        &'f self,
        key: &str,
        ctx: &Context,
        default: &'f str,
    ) -> Resolution<'f, &'f str> {
        self.evaluate(key, ctx).string(default)
    }

    pub fn resolve_integer(&self, key: &str, ctx: &Context, default: i64) -> Resolution<'_, i64> {
        self.evaluate(key, ctx).integer(default)
    }

    pub fn resolve_float(&self, key: &str, ctx: &Context, default: f64) -> Resolution<'_, f64> {
        self.evaluate(key, ctx).float(default)
    }

    pub fn resolve_object<'f>(
        &'f self,
        key: &str,
        ctx: &Context,
        default: &'f Map<String, Value>,
    ) -> Resolution<'f, &'f Map<String, Value>> {
        self.evaluate(key, ctx).object(default)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{ErrorCode, Reason};

    fn flags(set: Value) -> Flags {
        let set = FlagSet::from_value(set).unwrap_or_else(|e| panic!("{e}"));
        Flags::from_sets([("test", set)]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reasons_follow_flagd() {
        let flags = flags(json!({"flags": {
            "static": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a"},
            "off": {"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"},
            "no-default": {"state": "ENABLED", "variants": {"a": "A"}},
            "rule": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
                     "targeting": {"if": [{"==": [{"var": "k"}, 1]}, "b", null]}},
            "bad": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
                    "targeting": {"var": "k"}}
        }}));
        let hit = Context::new().with("k", 1);
        let miss = Context::new().with("k", "zzz");
        let case = |key: &str, ctx: &Context| {
            let r = flags.resolve_string(key, ctx, "fallback");
            (r.value.to_owned(), r.reason, r.error.map(|e| e.code))
        };
        let own = |s: &str| s.to_owned();
        assert_eq!(case("static", &hit), (own("A"), Reason::Static, None));
        assert_eq!(case("off", &hit), (own("fallback"), Reason::Disabled, None));
        assert_eq!(
            case("no-default", &hit),
            (own("fallback"), Reason::Default, None)
        );
        assert_eq!(case("rule", &hit), (own("B"), Reason::TargetingMatch, None));
        assert_eq!(case("rule", &miss), (own("A"), Reason::Default, None));
        assert_eq!(
            case("bad", &miss),
            (own("fallback"), Reason::Error, Some(ErrorCode::General))
        );
        assert_eq!(
            case("nope", &hit),
            (
                own("fallback"),
                Reason::Error,
                Some(ErrorCode::FlagNotFound)
            )
        );
        let mismatch = flags.resolve_boolean("static", &hit, true);
        assert_eq!(
            (mismatch.value, mismatch.error.map(|e| e.code)),
            (true, Some(ErrorCode::TypeMismatch))
        );
    }

    #[test]
    fn flags_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Flags>();
    }

    #[test]
    fn merging_reports_every_duplicate_with_both_sources() {
        let set = || {
            FlagSet::from_value(json!({"flags": {
                "a": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},
                "b": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}
            }}))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let err = Flags::from_sets([("one.yaml", set()), ("two.flagd.json", set())]);
        let keys: Vec<(String, String, String)> = err
            .err()
            .map(|e| e.duplicates)
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.key, d.first, d.second))
            .collect();
        let own = |s: &str| s.to_owned();
        assert_eq!(
            keys,
            [
                (own("a"), own("one.yaml"), own("two.flagd.json")),
                (own("b"), own("one.yaml"), own("two.flagd.json")),
            ]
        );
    }
}
