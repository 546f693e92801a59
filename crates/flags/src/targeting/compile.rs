//! Compiles a flag's `targeting` JSON into an [`Expr`], inlining `$ref`s to `$evaluators` and
//! reporting each problem with its JSON pointer.
//!
//! Problems come in three [`Severity`]s, chosen so that a flag set flagd would load still
//! loads and behaves as flagd does (the compliance suite depends on it), while a strict load can
//! refuse all of them. A rule is compiled per flag because `$flagd.flagKey` is a constant of the
//! flag.

use serde_json::{Map, Value};

use super::expr::{
    weight_of, Bucket, Expr, Fractional, Key, Op, Operand, Seed, SemVer, Var, VarPath, Weights,
    MAX_TOTAL_WEIGHT,
};
use super::value::Val;
use crate::semver::{SemVerOp, Version};

/// How a problem changes evaluation when the flag set is loaded anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The rule cannot run: every evaluation of the flag is an error (`PARSE_ERROR`), as in
    /// flagd (unknown operation, `$ref` to a missing evaluator).
    Error,
    /// This operation always yields null, as flagd's does (wrong arguments to `sem_ver`,
    /// `starts_with`, `ends_with`, `fractional`).
    Null,
    /// Evaluation is unaffected but the rule is almost certainly wrong (a result that names no
    /// variant, a negative or fractional weight).
    Note,
}

#[derive(Clone, Debug)]
pub(crate) struct Diagnostic {
    pub(crate) severity: Severity,
    pub(crate) pointer: String,
    pub(crate) message: String,
}

/// The result of compiling one flag's targeting.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) expr: Expr,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

/// Compiles `rule`, found at JSON pointer `pointer`, for the flag `flag_key`; `is_variant`
/// says whether a name is one of the flag's variants.
pub(crate) fn compile(
    flag_key: &str,
    rule: &Value,
    evaluators: &Map<String, Value>,
    pointer: &str,
    is_variant: &dyn Fn(&str) -> bool,
) -> Compiled {
    let mut c = Compiler {
        flag_key,
        evaluators,
        path: vec![pointer.to_owned()],
        refs: Vec::new(),
        scoped: false,
        diagnostics: Vec::new(),
    };
    let expr = c.value(rule);
    c.check_results(rule, is_variant, 0);
    Compiled {
        expr,
        diagnostics: c.diagnostics,
    }
}

struct Compiler<'s> {
    flag_key: &'s str,
    evaluators: &'s Map<String, Value>,
    /// Pointer segments, already escaped; the first is the pointer of the rule's root.
    path: Vec<String>,
    /// `$ref`s being inlined, to catch cycles.
    refs: Vec<&'s str>,
    /// Inside the per-element argument of `map` and friends, where `var` reads the element.
    scoped: bool,
    diagnostics: Vec<Diagnostic>,
}

/// The deepest `$ref` chain or result nesting followed before giving up.
const MAX_DEPTH: usize = 64;

impl<'s> Compiler<'s> {
    fn report(&mut self, severity: Severity, message: String) {
        self.diagnostics.push(Diagnostic {
            severity,
            pointer: self.path.concat(),
            message,
        });
    }

    /// Reports an `Error` and stands in a null for the broken part.
    fn error(&mut self, message: String) -> Expr {
        self.report(Severity::Error, message);
        Expr::Lit(Value::Null)
    }

    /// Reports a `Null` problem and compiles the operation to the null it always yields.
    fn null(&mut self, message: String) -> Expr {
        self.report(
            Severity::Null,
            format!("{message}; this operation always evaluates to null"),
        );
        Expr::Lit(Value::Null)
    }

    fn at<T>(&mut self, segment: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(format!("/{}", escape_pointer(segment)));
        let out = f(self);
        self.path.pop();
        out
    }

    fn at_index<T>(&mut self, i: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        self.at(&i.to_string(), f)
    }

    fn value(&mut self, v: &'s Value) -> Expr {
        match v {
            Value::Object(m) if m.is_empty() => Expr::Lit(v.clone()),
            Value::Object(m) if m.len() == 1 => {
                let Some((name, args)) = m.iter().next() else {
                    return Expr::Lit(v.clone());
                };
                self.at(name, |c| c.operation(name, args))
            }
            Value::Object(m) => {
                let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                self.error(format!(
                    "a rule object must have exactly one key, its operation; found {}",
                    keys.join(", ")
                ))
            }
            Value::Array(items) => {
                let exprs: Vec<Expr> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.at_index(i, |c| c.value(item)))
                    .collect();
                array_expr(exprs)
            }
            _ => Expr::Lit(v.clone()),
        }
    }

    fn operation(&mut self, name: &str, args: &'s Value) -> Expr {
        match name {
            "$ref" => self.reference(args),
            "var" => self.var(args),
            "fractional" => self.fractional(args),
            "sem_ver" => self.sem_ver(args),
            "starts_with" | "ends_with" => self.string_test(name, args),
            _ => match Op::from_name(name) {
                Some(op) => {
                    let args = self.args(op, args);
                    Expr::Op(op, args)
                }
                None => self.error(format!("unknown operation \"{name}\"")),
            },
        }
    }

    /// Compiles an operation's arguments; a single non-array argument stands for `[arg]`.
    fn args(&mut self, op: Op, args: &'s Value) -> Box<[Expr]> {
        let Value::Array(items) = args else {
            return Box::new([self.value(args)]);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.at_index(i, |c| {
                    if i == 1 && op.scopes_second_arg() {
                        let outer = std::mem::replace(&mut c.scoped, true);
                        let e = c.value(item);
                        c.scoped = outer;
                        e
                    } else {
                        c.value(item)
                    }
                })
            })
            .collect()
    }

    fn reference(&mut self, args: &'s Value) -> Expr {
        let Value::String(name) = args else {
            return self.error("\"$ref\" must name an evaluator with a string".to_owned());
        };
        let Some((key, body)) = self.evaluators.get_key_value(name.as_str()) else {
            return self.error(format!(
                "\"$ref\" names evaluator \"{name}\", which \"$evaluators\" does not define"
            ));
        };
        if self.refs.contains(&key.as_str()) || self.refs.len() >= MAX_DEPTH {
            return self.error(format!(
                "\"$ref\" to \"{name}\" refers back to itself through {}",
                self.refs.join(" -> ")
            ));
        }
        self.refs.push(key);
        let saved = std::mem::replace(
            &mut self.path,
            vec![format!("/$evaluators/{}", escape_pointer(key))],
        );
        let expr = self.value(body);
        self.path = saved;
        self.refs.pop();
        expr
    }

    fn var(&mut self, args: &'s Value) -> Expr {
        let (path, default) = match args {
            Value::Array(items) => (items.first(), items.get(1)),
            other => (Some(other), None),
        };
        let default = default.map(|d| self.at_index(1, |c| c.value(d)));
        let path = match path {
            None | Some(Value::Null) => VarPath::Whole,
            Some(Value::String(s)) if s.is_empty() => VarPath::Whole,
            Some(Value::String(s)) if !self.scoped && is_flagd_path(s) => {
                return self.flagd_var(s, default);
            }
            Some(Value::String(s)) => VarPath::Keys(s.split('.').map(Key::new).collect()),
            Some(Value::Number(n)) => VarPath::Keys(Box::new([Key::new(&n.to_string())])),
            Some(other) => VarPath::Dynamic(self.at_index(0, |c| c.value(other))),
        };
        Expr::Var(Box::new(Var { path, default }))
    }

    /// `$flagd.*` is set by the evaluator, never by the caller, so it is resolved here.
    fn flagd_var(&mut self, path: &str, default: Option<Expr>) -> Expr {
        match path {
            "$flagd.flagKey" => Expr::Lit(Value::String(self.flag_key.to_owned())),
            "$flagd.timestamp" => Expr::Timestamp,
            "$flagd" => Expr::FlagdProps,
            _ => default.unwrap_or(Expr::Lit(Value::Null)),
        }
    }

    fn string_test(&mut self, name: &str, args: &'s Value) -> Expr {
        let op = if name == "starts_with" {
            Op::StartsWith
        } else {
            Op::EndsWith
        };
        match args {
            Value::Array(items) if items.len() == 2 => {
                let args = self.args(op, args);
                if args
                    .iter()
                    .any(|a| matches!(a, Expr::Lit(v) if !v.is_string()))
                {
                    return self.null(format!("\"{name}\" compares two strings"));
                }
                Expr::Op(op, args)
            }
            _ => self.null(format!(
                "\"{name}\" takes two arguments, [value, {}]",
                if op == Op::StartsWith {
                    "prefix"
                } else {
                    "suffix"
                }
            )),
        }
    }

    fn sem_ver(&mut self, args: &'s Value) -> Expr {
        let Value::Array(items) = args else {
            return self.null("\"sem_ver\" takes [value, operator, version]".to_owned());
        };
        let [value, op, target] = items.as_slice() else {
            return self.null(format!(
                "\"sem_ver\" takes three arguments, [value, operator, version], not {}",
                items.len()
            ));
        };
        let value = self.at_index(0, |c| c.value(value));
        let op = match self.at_index(1, |c| c.value(op)) {
            Expr::Lit(Value::String(s)) => match SemVerOp::parse(&s) {
                Some(op) => Operand::Const(op),
                None => {
                    return self.at_index(1, |c| {
                        c.null(format!(
                            "\"{s}\" is not a sem_ver operator (=, !=, <, <=, >, >=, ^, ~)"
                        ))
                    })
                }
            },
            Expr::Lit(other) => {
                return self.at_index(1, |c| {
                    c.null(format!(
                        "the sem_ver operator must be a string, not {other}"
                    ))
                })
            }
            dynamic => Operand::Dynamic(dynamic),
        };
        let target = match self.at_index(2, |c| c.value(target)) {
            Expr::Lit(v) => match version_of(&Val::from_json(&v)) {
                Some(version) => Operand::Const(version),
                None => {
                    return self.at_index(2, |c| c.null(format!("{v} is not a semantic version")))
                }
            },
            dynamic => Operand::Dynamic(dynamic),
        };
        Expr::SemVer(Box::new(SemVer { value, op, target }))
    }

    fn fractional(&mut self, args: &'s Value) -> Expr {
        let Value::Array(items) = args else {
            return self.null(
                "\"fractional\" takes [bucketing value (optional), [variant, weight], ...]"
                    .to_owned(),
            );
        };
        let (seed, first_bucket) = match items.first() {
            None => return self.null("\"fractional\" needs at least one bucket".to_owned()),
            Some(Value::Array(_)) => (Seed::FlagAndTargetingKey, 0),
            Some(seed) => (Seed::Expr(self.at_index(0, |c| c.value(seed))), 1),
        };
        let mut buckets = Vec::with_capacity(items.len() - first_bucket);
        for (i, item) in items.iter().enumerate().skip(first_bucket) {
            match self.at_index(i, |c| c.bucket(item)) {
                Some(bucket) => buckets.push(bucket),
                None => return Expr::Lit(Value::Null),
            }
        }
        if buckets.is_empty() {
            return self.null("\"fractional\" needs at least one bucket".to_owned());
        }
        let weights = match static_weights(&buckets) {
            Some(Ok(cumulative)) => {
                let total = cumulative.last().copied().unwrap_or(0);
                if total == 0 {
                    return self.null("the weights of \"fractional\" add up to 0".to_owned());
                }
                if total > MAX_TOTAL_WEIGHT {
                    return self.null(format!(
                        "the weights of \"fractional\" add up to {total}, more than {MAX_TOTAL_WEIGHT}"
                    ));
                }
                Weights::Static(cumulative)
            }
            Some(Err(bad)) => {
                return self.null(format!(
                    "a \"fractional\" weight must be a number, not {bad}"
                ))
            }
            None => Weights::Dynamic,
        };
        Expr::Fractional(Box::new(Fractional {
            seed,
            buckets: buckets.into(),
            weights,
        }))
    }

    /// One `[variant, weight]` (or `[variant]`, weight 1); `None` after reporting a problem.
    fn bucket(&mut self, item: &'s Value) -> Option<Bucket> {
        let parts = match item {
            Value::Array(parts) if (1..=2).contains(&parts.len()) => parts,
            _ => {
                self.null(format!(
                    "a \"fractional\" bucket is [variant, weight] or [variant], not {item}"
                ));
                return None;
            }
        };
        let name = self.at_index(0, |c| c.value(&parts[0]));
        if let Expr::Lit(v @ (Value::Array(_) | Value::Object(_))) = &name {
            self.at_index(0, |c| {
                c.null(format!(
                    "a \"fractional\" variant must be a string, boolean or number, not {v}"
                ))
            });
            return None;
        }
        let weight = match parts.get(1) {
            Some(w) => self.at_index(1, |c| c.value(w)),
            None => Expr::Lit(Value::from(1)),
        };
        if let Expr::Lit(Value::Number(n)) = &weight {
            let w = n.as_f64().unwrap_or(0.0);
            if w < 0.0 {
                self.at_index(1, |c| {
                    c.report(
                        Severity::Note,
                        format!("weight {n} is negative and counts as 0"),
                    )
                });
            } else if w.fract() != 0.0 {
                self.at_index(1, |c| {
                    c.report(
                        Severity::Note,
                        format!("weight {n} is not a whole number and is rounded down"),
                    )
                });
            }
        }
        Some(Bucket { name, weight })
    }

    /// Reports every constant a rule can return that names no variant. Follows `if`/`?:`
    /// branches, `fractional` buckets and `$ref`s from the top of the rule; anything else
    /// computes its result, which is only known at evaluation.
    fn check_results(&mut self, v: &'s Value, is_variant: &dyn Fn(&str) -> bool, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let name = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => {
                let mut s = String::new();
                super::value::write_js_number(n.as_f64().unwrap_or(f64::NAN), &mut s);
                s
            }
            Value::Object(m) if m.len() == 1 => {
                if let Some((op, args)) = m.iter().next() {
                    self.at(op, |c| {
                        c.check_operation_results(op, args, is_variant, depth)
                    });
                }
                return;
            }
            _ => return,
        };
        if !is_variant(&name) {
            self.report(
                Severity::Note,
                format!("the rule can return \"{name}\", which is not a variant of the flag"),
            );
        }
    }

    fn check_operation_results(
        &mut self,
        op: &str,
        args: &'s Value,
        is_variant: &dyn Fn(&str) -> bool,
        depth: usize,
    ) {
        match (op, args) {
            ("if" | "?:", Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let is_result = i % 2 == 1 || i + 1 == items.len();
                    if is_result {
                        self.at_index(i, |c| c.check_results(item, is_variant, depth + 1));
                    }
                }
            }
            ("fractional", Value::Array(items)) => {
                let first = usize::from(!matches!(items.first(), Some(Value::Array(_))));
                for (i, bucket) in items.iter().enumerate().skip(first) {
                    if let Some(name) = bucket.as_array().and_then(|b| b.first()) {
                        self.at_index(i, |c| {
                            c.at_index(0, |c| c.check_results(name, is_variant, depth + 1))
                        });
                    }
                }
            }
            ("$ref", Value::String(name)) => {
                if let Some((key, body)) = self.evaluators.get_key_value(name.as_str()) {
                    let saved = std::mem::replace(
                        &mut self.path,
                        vec![format!("/$evaluators/{}", escape_pointer(key))],
                    );
                    self.check_results(body, is_variant, depth + 1);
                    self.path = saved;
                }
            }
            _ => {}
        }
    }
}

/// An array literal: a constant when all its elements are.
fn array_expr(exprs: Vec<Expr>) -> Expr {
    if exprs.iter().all(|e| matches!(e, Expr::Lit(_))) {
        let values = exprs
            .into_iter()
            .map(|e| match e {
                Expr::Lit(v) => v,
                _ => Value::Null,
            })
            .collect();
        Expr::Lit(Value::Array(values))
    } else {
        Expr::Array(exprs.into())
    }
}

/// Running totals of the weights when all are constants (`None` if one is computed), or the
/// first constant that is not a weight.
fn static_weights(buckets: &[Bucket]) -> Option<Result<Box<[u64]>, Value>> {
    let mut total = 0u64;
    let mut cumulative = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        let Expr::Lit(w) = &bucket.weight else {
            return None;
        };
        match weight_of(w) {
            Some(w) => total = total.saturating_add(w),
            None => return Some(Err(w.clone())),
        }
        cumulative.push(total);
    }
    Some(Ok(cumulative.into()))
}

fn is_flagd_path(path: &str) -> bool {
    path == "$flagd" || path.starts_with("$flagd.")
}

/// A version from a `sem_ver` operand: a string, or a number such as `1.2` read as `"1.2"`.
pub(crate) fn version_of(v: &Val<'_>) -> Option<Version> {
    match v {
        Val::Num(n) => {
            let mut s = String::new();
            super::value::write_js_number(*n, &mut s);
            Version::parse(&s)
        }
        other => Version::parse(other.as_str()?),
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub(crate) fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
