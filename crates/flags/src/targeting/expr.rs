//! The compiled form of a targeting rule: an enum tree the interpreter walks without looking at
//! JSON again. Constants are kept as `serde_json::Value`s so they can be borrowed, not copied.

use serde_json::Value;

use crate::semver::{SemVerOp, Version};

#[derive(Debug)]
pub(crate) enum Expr {
    /// A constant: a scalar, or an array or object made only of constants.
    Lit(Value),
    Var(Box<Var>),
    /// `{"var": "$flagd.timestamp"}`: seconds since the Unix epoch at evaluation.
    Timestamp,
    /// `{"var": "$flagd"}`: the whole `$flagd` object.
    FlagdProps,
    /// An array literal with at least one non-constant element.
    Array(Box<[Expr]>),
    Op(Op, Box<[Expr]>),
    Fractional(Box<Fractional>),
    SemVer(Box<SemVer>),
}

/// The JsonLogic operations whose arguments are plain expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Missing,
    MissingSome,
    If,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    Truthy,
    Or,
    And,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Min,
    Max,
    Cat,
    Substr,
    In,
    Merge,
    /// `map`, `filter`, `all`, `none`, `some`, `reduce`: the second argument runs once per
    /// element with the element (or `current`/`accumulator`) as its data.
    Map,
    Filter,
    All,
    None,
    Some,
    Reduce,
    Log,
    StartsWith,
    EndsWith,
}

impl Op {
    pub(crate) fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "missing" => Op::Missing,
            "missing_some" => Op::MissingSome,
            "if" | "?:" => Op::If,
            "==" => Op::Eq,
            "===" => Op::StrictEq,
            "!=" => Op::Ne,
            "!==" => Op::StrictNe,
            "!" => Op::Not,
            "!!" => Op::Truthy,
            "or" => Op::Or,
            "and" => Op::And,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "min" => Op::Min,
            "max" => Op::Max,
            "cat" => Op::Cat,
            "substr" => Op::Substr,
            "in" => Op::In,
            "merge" => Op::Merge,
            "map" => Op::Map,
            "filter" => Op::Filter,
            "all" => Op::All,
            "none" => Op::None,
            "some" => Op::Some,
            "reduce" => Op::Reduce,
            "log" => Op::Log,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            _ => return None,
        })
    }

    /// Whether the second argument is evaluated per element, with the element as data.
    pub(crate) fn scopes_second_arg(self) -> bool {
        matches!(
            self,
            Op::Map | Op::Filter | Op::All | Op::None | Op::Some | Op::Reduce
        )
    }
}

#[derive(Debug)]
pub(crate) struct Var {
    pub(crate) path: VarPath,
    pub(crate) default: Option<Expr>,
}

#[derive(Debug)]
pub(crate) enum VarPath {
    /// `""` or no path: the whole data.
    Whole,
    /// A dotted path split at load time.
    Keys(Box<[Key]>),
    /// A path computed by an expression.
    Dynamic(Expr),
}

/// One segment of a dotted `var` path; `index` is set when it can also index an array.
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) name: Box<str>,
    pub(crate) index: Option<usize>,
}

impl Key {
    pub(crate) fn new(name: &str) -> Key {
        Key {
            name: name.into(),
            index: name.parse().ok(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Fractional {
    pub(crate) seed: Seed,
    pub(crate) buckets: Box<[Bucket]>,
    pub(crate) weights: Weights,
}

/// What `fractional` hashes.
#[derive(Debug)]
pub(crate) enum Seed {
    /// No bucketing value given: `$flagd.flagKey` followed by `targetingKey`.
    FlagAndTargetingKey,
    Expr(Expr),
}

#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) name: Expr,
    pub(crate) weight: Expr,
}

#[derive(Debug)]
pub(crate) enum Weights {
    /// All weights are constants: running totals, the last one being the total weight.
    Static(Box<[u64]>),
    /// At least one weight is computed per evaluation.
    Dynamic,
}

#[derive(Debug)]
pub(crate) struct SemVer {
    pub(crate) value: Expr,
    pub(crate) op: Operand<SemVerOp>,
    pub(crate) target: Operand<Version>,
}

/// An argument known at load time, or computed per evaluation.
#[derive(Debug)]
pub(crate) enum Operand<T> {
    Const(T),
    Dynamic(Expr),
}

/// The largest total weight flagd accepts (`i32::MAX`).
pub(crate) const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

/// The weight a bucket gets from a weight value: flagd clamps negatives to zero and this
/// truncates fractions; `None` for a value that is not a number (or null, which means 1).
pub(crate) fn weight_of(value: &Value) -> Option<u64> {
    match value {
        Value::Null => Some(1),
        Value::Number(n) => Some(n.as_f64().map_or(0, |w| w.max(0.0) as u64)),
        _ => None,
    }
}
