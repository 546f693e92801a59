//! Interprets a compiled rule against an evaluation context.
//!
//! Everything borrows: the rule's constants, the context's values, and the [`Env`] of one
//! evaluation (which carries the flag key and the lazily read clock). Operations that build new
//! strings or arrays (`cat`, `merge`, `map`, ...) are the only ones that allocate.

use std::cell::{Cell, OnceCell};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::compile::version_of;
use super::expr::{weight_of, MAX_TOTAL_WEIGHT};
use super::expr::{Expr, Fractional, Key, Op, Operand, Seed, SemVer, Var, VarPath, Weights};
use super::value::{compare, loose_eq, strict_eq, Val};
use crate::murmur3::Murmur3;

/// What one evaluation runs against.
pub(crate) struct Env<'a> {
    root: &'a Value,
    flag_key: &'a str,
    timestamp: Cell<Option<i64>>,
    flagd: OnceCell<Value>,
}

impl<'a> Env<'a> {
    /// `root` is the context's attributes (an object); `timestamp` fixes `$flagd.timestamp`,
    /// which is otherwise read from the system clock the first time a rule asks for it.
    pub(crate) fn new(root: &'a Value, flag_key: &'a str, timestamp: Option<i64>) -> Self {
        Env {
            root,
            flag_key,
            timestamp: Cell::new(timestamp),
            flagd: OnceCell::new(),
        }
    }

    fn timestamp(&self) -> i64 {
        if let Some(t) = self.timestamp.get() {
            return t;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.timestamp.set(Some(now));
        now
    }

    fn targeting_key(&self) -> Option<&'a str> {
        self.root.get("targetingKey")?.as_str()
    }
}

/// Where `var` reads from.
#[derive(Clone, Copy)]
enum Scope<'s, 'a> {
    Root,
    Item(&'s Val<'a>),
    Reduce {
        current: &'s Val<'a>,
        accumulator: &'s Val<'a>,
    },
}

/// Evaluates a rule at the top level of the context.
pub(crate) fn evaluate<'a>(expr: &'a Expr, env: &'a Env<'a>) -> Val<'a> {
    eval(expr, env, Scope::Root)
}

fn eval<'a>(e: &'a Expr, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    match e {
        Expr::Lit(v) => Val::from_json(v),
        Expr::Var(var) => eval_var(var, env, scope),
        Expr::Timestamp => Val::Num(env.timestamp() as f64),
        Expr::FlagdProps => Val::Json(flagd_props(env)),
        Expr::Array(items) => Val::Array(items.iter().map(|i| eval(i, env, scope)).collect()),
        Expr::Op(op, args) => eval_op(*op, args, env, scope),
        Expr::Fractional(f) => fractional(f, env, scope),
        Expr::SemVer(s) => sem_ver(s, env, scope),
    }
}

fn flagd_props<'a>(env: &'a Env<'a>) -> &'a Value {
    env.flagd
        .get_or_init(|| json!({"flagKey": env.flag_key, "timestamp": env.timestamp()}))
}

fn arg<'a>(args: &'a [Expr], i: usize, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    args.get(i).map_or(Val::Null, |a| eval(a, env, scope))
}

fn eval_op<'a>(op: Op, args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let a = |i: usize| arg(args, i, env, scope);
    match op {
        Op::If => eval_if(args, env, scope),
        Op::Eq => Val::Bool(loose_eq(&a(0), &a(1))),
        Op::Ne => Val::Bool(!loose_eq(&a(0), &a(1))),
        Op::StrictEq => Val::Bool(strict_eq(&a(0), &a(1))),
        Op::StrictNe => Val::Bool(!strict_eq(&a(0), &a(1))),
        Op::Not => Val::Bool(!a(0).truthy()),
        Op::Truthy => Val::Bool(a(0).truthy()),
        Op::Or => short_circuit(args, env, scope, true),
        Op::And => short_circuit(args, env, scope, false),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => Val::Bool(relation(op, args, env, scope)),
        Op::Add => Val::Num(numbers(args, env, scope).sum()),
        Op::Mul => Val::Num(numbers(args, env, scope).product()),
        Op::Sub if args.len() == 1 => Val::Num(-a(0).to_number()),
        Op::Sub => Val::Num(a(0).to_number() - a(1).to_number()),
        Op::Div => Val::Num(a(0).to_number() / a(1).to_number()),
        Op::Mod => Val::Num(a(0).to_number() % a(1).to_number()),
        Op::Min => extreme(args, env, scope, f64::min),
        Op::Max => extreme(args, env, scope, f64::max),
        Op::Cat => Val::String(cat(args, env, scope)),
        Op::Substr => substr(&a(0), &a(1), args.get(2).map(|_| a(2))),
        Op::In => Val::Bool(contains(&a(1), &a(0))),
        Op::Merge => merge(args, env, scope),
        Op::Missing => missing(args, env, scope),
        Op::MissingSome => missing_some(args, env, scope),
        Op::Map | Op::Filter | Op::All | Op::None | Op::Some | Op::Reduce => {
            per_element(op, args, env, scope)
        }
        Op::Log => a(0),
        Op::StartsWith | Op::EndsWith => string_test(op, &a(0), &a(1)),
    }
}

fn eval_if<'a>(args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let mut pairs = args.chunks_exact(2);
    for pair in &mut pairs {
        if eval(&pair[0], env, scope).truthy() {
            return eval(&pair[1], env, scope);
        }
    }
    match pairs.remainder() {
        [otherwise] => eval(otherwise, env, scope),
        _ => Val::Null,
    }
}

/// `or` (returns the first truthy value) and `and` (the first falsy one); else the last value.
fn short_circuit<'a>(
    args: &'a [Expr],
    env: &'a Env<'a>,
    scope: Scope<'_, 'a>,
    stop_when: bool,
) -> Val<'a> {
    let mut last = Val::Null;
    for a in args {
        last = eval(a, env, scope);
        if last.truthy() == stop_when {
            break;
        }
    }
    last
}

/// `<` and `<=` also take three arguments: `a < b < c`.
fn relation<'a>(op: Op, args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let holds = |x: &Val<'_>, y: &Val<'_>| {
        let ord = compare(x, y);
        match op {
            Op::Lt => ord == Some(Less),
            Op::Le => matches!(ord, Some(Less | Equal)),
            Op::Gt => ord == Some(Greater),
            _ => matches!(ord, Some(Greater | Equal)),
        }
    };
    let a = arg(args, 0, env, scope);
    let b = arg(args, 1, env, scope);
    if args.len() == 3 && matches!(op, Op::Lt | Op::Le) {
        holds(&a, &b) && holds(&b, &arg(args, 2, env, scope))
    } else {
        holds(&a, &b)
    }
}

fn numbers<'a, 's>(
    args: &'a [Expr],
    env: &'a Env<'a>,
    scope: Scope<'s, 'a>,
) -> impl Iterator<Item = f64> + use<'a, 's> {
    args.iter().map(move |a| eval(a, env, scope).to_number())
}

fn extreme<'a>(
    args: &'a [Expr],
    env: &'a Env<'a>,
    scope: Scope<'_, 'a>,
    pick: fn(f64, f64) -> f64,
) -> Val<'a> {
    let mut out: Option<f64> = None;
    for n in numbers(args, env, scope) {
        if n.is_nan() {
            return Val::Num(f64::NAN);
        }
        out = Some(out.map_or(n, |m| pick(m, n)));
    }
    out.map_or(Val::Null, Val::Num)
}

/// `cat` joins like JavaScript's `Array.join("")`: null contributes nothing.
fn cat<'a>(args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> String {
    let mut out = String::new();
    for a in args {
        let v = eval(a, env, scope);
        if !v.is_null() {
            v.write_js_string(&mut out);
        }
    }
    out
}

/// JavaScript's `substr(start, length)` over characters; negative values count from the end.
fn substr<'a>(source: &Val<'a>, start: &Val<'a>, len: Option<Val<'a>>) -> Val<'a> {
    let mut text = String::new();
    source.write_js_string(&mut text);
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len() as i64;
    let start = start.to_number();
    let start = if start.is_nan() { 0 } else { start as i64 };
    let from = if start < 0 {
        (n + start).max(0)
    } else {
        start.min(n)
    };
    let to = match len.map(|l| l.to_number()) {
        None => n,
        Some(l) if l.is_nan() => from,
        Some(l) if l < 0.0 => (n + l as i64).max(from),
        Some(l) => (from + l as i64).min(n),
    };
    Val::String(chars[from as usize..to as usize].iter().collect())
}

/// `in`: substring of a string, or element (by `===`) of an array.
fn contains(haystack: &Val<'_>, needle: &Val<'_>) -> bool {
    if let Some(h) = haystack.as_str() {
        return match needle.as_str() {
            Some(n) => h.contains(n),
            None => {
                let mut n = String::new();
                needle.write_js_string(&mut n);
                h.contains(n.as_str())
            }
        };
    }
    haystack.items().any(|item| strict_eq(&item, needle))
}

fn merge<'a>(args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let mut out = Vec::new();
    for a in args {
        let v = eval(a, env, scope);
        if v.is_array() {
            out.extend(v.items());
        } else {
            out.push(v);
        }
    }
    Val::Array(out)
}

fn missing<'a>(args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let first = arg(args, 0, env, scope);
    let keys: Vec<Val<'a>> = if first.is_array() {
        first.items().collect()
    } else {
        let mut keys = vec![first];
        keys.extend(args.iter().skip(1).map(|a| eval(a, env, scope)));
        keys
    };
    Val::Array(absent_keys(keys, env, scope))
}

fn missing_some<'a>(args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let need = arg(args, 0, env, scope).to_number();
    let keys: Vec<Val<'a>> = arg(args, 1, env, scope).items().collect();
    let total = keys.len();
    let absent = absent_keys(keys, env, scope);
    if (total - absent.len()) as f64 >= need {
        Val::Array(Vec::new())
    } else {
        Val::Array(absent)
    }
}

/// The keys whose value is absent, null or the empty string.
fn absent_keys<'a>(keys: Vec<Val<'a>>, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Vec<Val<'a>> {
    keys.into_iter()
        .filter(|key| {
            let mut path = String::new();
            key.write_js_string(&mut path);
            let keys: Vec<Key> = path.split('.').map(Key::new).collect();
            match lookup(&keys, env, scope) {
                None | Some(Val::Null) => true,
                Some(v) => v.as_str() == Some(""),
            }
        })
        .collect()
}

fn per_element<'a>(op: Op, args: &'a [Expr], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let items = arg(args, 0, env, scope);
    let Some(logic) = args.get(1) else {
        return match op {
            Op::Map | Op::Filter => Val::Array(Vec::new()),
            Op::Reduce => arg(args, 2, env, scope),
            _ => Val::Bool(op == Op::None),
        };
    };
    let test = |item: &Val<'a>| eval(logic, env, Scope::Item(item)).truthy();
    match op {
        Op::Map => Val::Array(
            items
                .items()
                .map(|item| eval(logic, env, Scope::Item(&item)))
                .collect(),
        ),
        Op::Filter => Val::Array(items.items().filter(|i| test(i)).collect()),
        Op::All => Val::Bool(items.items().next().is_some() && items.items().all(|i| test(&i))),
        Op::Some => Val::Bool(items.items().any(|i| test(&i))),
        Op::None => Val::Bool(!items.items().any(|i| test(&i))),
        _ => {
            let mut accumulator = arg(args, 2, env, scope);
            for current in items.items() {
                let scope = Scope::Reduce {
                    current: &current,
                    accumulator: &accumulator,
                };
                accumulator = eval(logic, env, scope);
            }
            accumulator
        }
    }
}

fn string_test<'a>(op: Op, value: &Val<'a>, affix: &Val<'a>) -> Val<'a> {
    match (value.as_str(), affix.as_str()) {
        (Some(v), Some(a)) if op == Op::StartsWith => Val::Bool(v.starts_with(a)),
        (Some(v), Some(a)) => Val::Bool(v.ends_with(a)),
        _ => Val::Null,
    }
}

fn eval_var<'a>(var: &'a Var, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let found = match &var.path {
        VarPath::Whole => Some(whole(env, scope)),
        VarPath::Keys(keys) => lookup(keys, env, scope),
        VarPath::Dynamic(path) => {
            let mut text = String::new();
            eval(path, env, scope).write_js_string(&mut text);
            dynamic_lookup(&text, env, scope)
        }
    };
    match found {
        Some(v) => v,
        None => var
            .default
            .as_ref()
            .map_or(Val::Null, |d| eval(d, env, scope)),
    }
}

fn whole<'a>(env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    match scope {
        Scope::Root => Val::from_json(env.root),
        Scope::Item(item) => item.clone(),
        Scope::Reduce {
            current,
            accumulator,
        } => Val::Array(vec![current.clone(), accumulator.clone()]),
    }
}

fn dynamic_lookup<'a>(path: &str, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Option<Val<'a>> {
    if path.is_empty() {
        return Some(whole(env, scope));
    }
    if matches!(scope, Scope::Root) {
        match path {
            "$flagd.flagKey" => return Some(Val::Str(env.flag_key)),
            "$flagd.timestamp" => return Some(Val::Num(env.timestamp() as f64)),
            "$flagd" => return Some(Val::Json(flagd_props(env))),
            _ if path.starts_with("$flagd.") => return None,
            _ => {}
        }
    }
    let keys: Vec<Key> = path.split('.').map(Key::new).collect();
    lookup(&keys, env, scope)
}

/// Follows a dotted path; `None` when some step is missing.
fn lookup<'a>(keys: &[Key], env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Option<Val<'a>> {
    match scope {
        Scope::Root => json_path(env.root, keys).map(Val::from_json),
        Scope::Item(item) => val_path(item, keys),
        Scope::Reduce {
            current,
            accumulator,
        } => {
            let (first, rest) = keys.split_first()?;
            match &*first.name {
                "current" => val_path(current, rest),
                "accumulator" => val_path(accumulator, rest),
                _ => None,
            }
        }
    }
}

fn json_path<'a>(mut at: &'a Value, keys: &[Key]) -> Option<&'a Value> {
    for key in keys {
        at = match at {
            Value::Object(m) => m.get(&*key.name)?,
            Value::Array(items) => items.get(key.index?)?,
            _ => return None,
        };
    }
    Some(at)
}

fn val_path<'a>(start: &Val<'a>, keys: &[Key]) -> Option<Val<'a>> {
    let Some((first, rest)) = keys.split_first() else {
        return Some(start.clone());
    };
    match start {
        Val::Json(v) => json_path(v, keys).map(Val::from_json),
        Val::Array(items) => val_path(items.get(first.index?)?, rest),
        _ => None,
    }
}

fn sem_ver<'a>(s: &'a SemVer, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let Some(actual) = version_of(&eval(&s.value, env, scope)) else {
        return Val::Null;
    };
    let op = match &s.op {
        Operand::Const(op) => *op,
        Operand::Dynamic(e) => match eval(e, env, scope)
            .as_str()
            .and_then(crate::semver::SemVerOp::parse)
        {
            Some(op) => op,
            None => return Val::Null,
        },
    };
    let dynamic_target;
    let target = match &s.target {
        Operand::Const(v) => v,
        Operand::Dynamic(e) => match version_of(&eval(e, env, scope)) {
            Some(v) => {
                dynamic_target = v;
                &dynamic_target
            }
            None => return Val::Null,
        },
    };
    Val::Bool(op.holds(&actual, target))
}

fn fractional<'a>(f: &'a Fractional, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Val<'a> {
    let Some(hash) = bucketing_hash(&f.seed, env, scope) else {
        return Val::Null;
    };
    let index = match &f.weights {
        Weights::Static(cumulative) => pick(hash, cumulative),
        Weights::Dynamic => {
            let mut cumulative = Vec::with_capacity(f.buckets.len());
            let mut total = 0u64;
            for bucket in f.buckets.iter() {
                let w = eval(&bucket.weight, env, scope);
                let Some(w) = weight_of(&w.to_json()) else {
                    return Val::Null;
                };
                total = total.saturating_add(w);
                cumulative.push(total);
            }
            pick(hash, &cumulative)
        }
    };
    let Some(bucket) = index.and_then(|i| f.buckets.get(i)) else {
        return Val::Null;
    };
    match eval(&bucket.name, env, scope) {
        Val::Json(_) | Val::Array(_) => Val::Null,
        name => name,
    }
}

/// flagd's v2 bucketing: `(hash * totalWeight) >> 32` falls in exactly one bucket's range.
/// `None` when the total weight is 0 or above `i32::MAX`.
pub(crate) fn pick(hash: u32, cumulative: &[u64]) -> Option<usize> {
    let total = *cumulative.last()?;
    if total == 0 || total > MAX_TOTAL_WEIGHT {
        return None;
    }
    let point = (u64::from(hash) * total) >> 32;
    cumulative.iter().position(|&end| point < end)
}

/// The MurmurHash3 of the bucketing value; `None` when there is no string to bucket on.
fn bucketing_hash<'a>(seed: &'a Seed, env: &'a Env<'a>, scope: Scope<'_, 'a>) -> Option<u32> {
    let mut hasher = Murmur3::new(0);
    match seed {
        Seed::FlagAndTargetingKey => {}
        Seed::Expr(Expr::Op(Op::Cat, parts)) => {
            let mut scratch = String::new();
            for part in parts.iter() {
                match eval(part, env, scope) {
                    Val::Null => {}
                    Val::Str(s) => hasher.write(s.as_bytes()),
                    Val::String(s) => hasher.write(s.as_bytes()),
                    other => {
                        scratch.clear();
                        other.write_js_string(&mut scratch);
                        hasher.write(scratch.as_bytes());
                    }
                }
            }
            return Some(hasher.finish());
        }
        Seed::Expr(e) => match eval(e, env, scope) {
            Val::Str(s) => {
                hasher.write(s.as_bytes());
                return Some(hasher.finish());
            }
            Val::String(s) => {
                hasher.write(s.as_bytes());
                return Some(hasher.finish());
            }
            // flagd falls back to the targeting key when the bucketing value is missing.
            Val::Null => {}
            _ => return None,
        },
    }
    hasher.write(env.flag_key.as_bytes());
    hasher.write(env.targeting_key()?.as_bytes());
    Some(hasher.finish())
}
