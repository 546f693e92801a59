//! Feature flags in flagd's format, evaluated in process.
//!
//! Gauntlet serves flags that live in Git as flagd flag sets (`kind: FeatureFlags` documents
//! whose `spec` is a flag set, and `*.flagd.json` files). This crate is the part with no I/O:
//! it reads flag sets, merges them, and decides which variant a context gets, exactly as flagd
//! does (it passes flagd's compliance suite, `flagd-testbed/evaluator/gherkin`), but with every
//! targeting rule compiled when the flags load, so an evaluation costs tens to hundreds of
//! nanoseconds.
//!
//! # The pieces
//!
//! - [`FlagSet`] (`set.rs`): one flag set, from JSON text ([`FlagSet::from_json`]) or an
//!   already-parsed [`serde_json::Value`] ([`FlagSet::from_value`], for YAML documents).
//!   Validation is strict by default: every problem is a [`Problem`] naming the flag, the field
//!   and a JSON pointer. [`Validation::Lenient`] loads what flagd would and behaves as flagd does.
//! - [`Flags`] (`store.rs`): flag sets merged into one immutable store by
//!   [`Flags::from_sets`], each under a source label of the caller's choosing (a path); a key
//!   defined twice is a [`MergeError`] naming both sources. Swap a whole new `Flags` in on
//!   change (`Arc<Flags>`), so readers see one version at a time.
//! - [`Context`] (`context.rs`): the attributes rules read; `targetingKey` is one of them.
//! - [`Flags::evaluate`] / [`Flag::evaluate`] give an [`Evaluation`] (`evaluation.rs`): the
//!   value, variant, [`Reason`], [`ErrorCode`] and metadata, borrowed from the store. OFREP
//!   serves exactly this. The `resolve_*` methods (or [`Evaluation::boolean`] and friends)
//!   check the type as an OpenFeature SDK does and substitute the caller's default.
//! - `flag.rs` picks the variant; `targeting/` compiles and interprets JsonLogic with flagd's
//!   `fractional`, `sem_ver`, `starts_with`, `ends_with`, `$ref` and `$flagd` properties;
//!   `murmur3.rs` and `semver.rs` are the two algorithms flagd's operations rely on.
//!
//! # Semantics
//!
//! | situation | value | reason | error |
//! |---|---|---|---|
//! | no targeting | default variant | `STATIC` | |
//! | targeting returns a variant name (or `true`/`false`/a number naming one) | that variant | `TARGETING_MATCH` | |
//! | targeting returns null | default variant | `DEFAULT` | |
//! | no default variant, and no targeting or targeting returns null | caller's default | `DEFAULT` | |
//! | flag disabled | caller's default | `DISABLED` | |
//! | unknown key | caller's default | `ERROR` | `FLAG_NOT_FOUND` |
//! | targeting cannot be compiled (lenient load) | caller's default | `ERROR` | `PARSE_ERROR` |
//! | targeting returns a name that is not a variant | caller's default | `ERROR` | `GENERAL` |
//! | typed resolution of a value of another type | caller's default | `ERROR` | `TYPE_MISMATCH` |
//!
//! `fractional` is flagd's v2 bucketing: MurmurHash3 x86_32 (seed 0) of the bucketing value,
//! or of `$flagd.flagKey` followed by `targetingKey` when none is given (or it is null), then
//! `(hash * totalWeight) >> 32` picks the bucket. Variants and weights may be nested rules,
//! negative weights count as 0, and a total of 0 yields null. `$flagd.timestamp` is read from
//! the clock once per evaluation unless [`Context::at_timestamp`] fixes it.
//!
//! # Example
//!
//! ```
//! use gauntlet_flags::{Context, FlagSet, Flags, Reason};
//!
//! let set = FlagSet::from_json(r#"{
//!   "flags": {
//!     "new-checkout": {
//!       "state": "ENABLED",
//!       "variants": {"on": true, "off": false},
//!       "defaultVariant": "off",
//!       "targeting": {"if": [{"$ref": "staff"}, "on",
//!                            {"fractional": [["on", 10], ["off", 90]]}]}
//!     }
//!   },
//!   "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@example.com"]}}
//! }"#)?;
//! let flags = Flags::from_sets([("flags/checkout.yaml", set)])?;
//!
//! let ctx = Context::new().with_targeting_key("u-1").with("email", "ada@example.com");
//! let r = flags.resolve_boolean("new-checkout", &ctx, false);
//! assert!(r.value);
//! assert_eq!(r.variant, Some("on"));
//! assert_eq!(r.reason, Reason::TargetingMatch);
//!
//! let missing = flags.evaluate("old-checkout", &ctx);
//! assert_eq!(missing.error.map(|e| e.code.as_str()), Some("FLAG_NOT_FOUND"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod context;
mod evaluation;
mod flag;
mod murmur3;
mod semver;
mod set;
mod store;
mod targeting;

pub use context::{Context, ContextError};
pub use evaluation::{ErrorCode, EvalError, Evaluation, Reason, Resolution};
pub use flag::{Flag, State, ValueType};
pub use set::{FlagSet, FlagSetError, Problem, Validation};
pub use store::{DuplicateFlag, Flags, MergeError};

use serde_json::{Map, Value};

/// An empty map to lend where there is no metadata or no attributes.
pub(crate) fn empty_map() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}
