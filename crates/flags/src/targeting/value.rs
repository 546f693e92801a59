//! The values targeting rules compute with, and JsonLogic's JavaScript-flavoured coercions
//! (truthiness, loose and strict equality, ordering, number and string conversion).
//!
//! A [`Val`] borrows from the compiled rule or the evaluation context wherever it can, so a rule
//! like `{"in": [{"var": "email"}, [...]]}` runs without allocating.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::Value;

/// A value during evaluation. `Json` only ever holds an array or an object; scalars borrowed
/// from JSON are converted to the scalar variants so each type has one representation.
#[derive(Clone, Debug)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    String(String),
    Json(&'a Value),
    Array(Vec<Val<'a>>),
}

impl<'a> Val<'a> {
    pub(crate) fn from_json(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Val::Str(s),
            Value::Array(_) | Value::Object(_) => Val::Json(v),
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_array(&self) -> bool {
        matches!(self, Val::Array(_) | Val::Json(Value::Array(_)))
    }

    /// The elements of an array value (nothing for any other value).
    pub(crate) fn items(&self) -> Items<'_, 'a> {
        match self {
            Val::Array(items) => Items::Owned(items.iter()),
            Val::Json(Value::Array(items)) => Items::Borrowed(items.iter()),
            _ => Items::Owned([].iter()),
        }
    }

    /// JavaScript truthiness, with JsonLogic's rule that an empty array is false.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::String(s) => !s.is_empty(),
            Val::Json(Value::Array(a)) => !a.is_empty(),
            Val::Json(_) => true,
            Val::Array(a) => !a.is_empty(),
        }
    }

    /// JavaScript `Number(x)`.
    pub(crate) fn to_number(&self) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Num(n) => *n,
            Val::Str(s) => str_to_number(s),
            Val::String(s) => str_to_number(s),
            Val::Json(Value::Object(_)) => f64::NAN,
            Val::Json(_) | Val::Array(_) => {
                let mut s = String::new();
                self.write_js_string(&mut s);
                str_to_number(&s)
            }
        }
    }

    /// Appends JavaScript's `String(x)` of this value.
    pub(crate) fn write_js_string(&self, out: &mut String) {
        match self {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Num(n) => write_js_number(*n, out),
            Val::Str(s) => out.push_str(s),
            Val::String(s) => out.push_str(s),
            Val::Json(Value::Object(_)) => out.push_str("[object Object]"),
            Val::Json(_) | Val::Array(_) => {
                for (i, item) in self.items().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !item.is_null() {
                        item.write_js_string(out);
                    }
                }
            }
        }
    }

    /// The value as owned JSON; numbers that JSON cannot hold (NaN, infinities) become null.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => number_to_json(*n),
            Val::Str(s) => Value::String((*s).to_owned()),
            Val::String(s) => Value::String(s.clone()),
            Val::Json(v) => (*v).clone(),
            Val::Array(items) => Value::Array(items.iter().map(Val::to_json).collect()),
        }
    }
}

/// Iterator over the elements of an owned or borrowed array.
pub(crate) enum Items<'s, 'a> {
    Owned(std::slice::Iter<'s, Val<'a>>),
    Borrowed(std::slice::Iter<'a, Value>),
}

impl<'a> Iterator for Items<'_, 'a> {
    type Item = Val<'a>;

    fn next(&mut self) -> Option<Val<'a>> {
        match self {
            Items::Owned(it) => it.next().cloned(),
            Items::Borrowed(it) => it.next().map(Val::from_json),
        }
    }
}

/// A JSON number for an integral `f64` is written as an integer, as JavaScript and Go do.
pub(crate) fn number_to_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// JavaScript's `String(n)` for the numbers rules meet (no exponent notation).
pub(crate) fn write_js_number(n: f64, out: &mut String) {
    if n.is_nan() {
        out.push_str("NaN");
    } else if n.is_infinite() {
        out.push_str(if n > 0.0 { "Infinity" } else { "-Infinity" });
    } else if n == 0.0 {
        out.push('0');
    } else {
        let _ = write!(out, "{n}");
    }
}

fn str_to_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    match t.parse::<f64>() {
        Ok(n) if !t.eq_ignore_ascii_case("inf") && !t.eq_ignore_ascii_case("nan") => n,
        _ => f64::NAN,
    }
}

/// JavaScript `===`: same type and same value; arrays and objects by content.
pub(crate) fn strict_eq(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Num(x), Val::Num(y)) => x == y,
        _ => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => x == y,
            (Some(_), None) | (None, Some(_)) => false,
            (None, None) => composite_eq(a, b),
        },
    }
}

fn composite_eq(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Json(Value::Object(x)), Val::Json(Value::Object(y))) => x == y,
        _ if a.is_array() && b.is_array() => {
            let mut xs = a.items();
            let mut ys = b.items();
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return true,
                    (Some(x), Some(y)) if strict_eq(&x, &y) => {}
                    _ => return false,
                }
            }
        }
        _ => false,
    }
}

/// JavaScript `==` (abstract equality) over JSON values.
pub(crate) fn loose_eq(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Null, _) | (_, Val::Null) => false,
        _ if is_composite(a) && is_composite(b) => strict_eq(a, b),
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        _ => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => x == y,
            _ if is_composite(a) || is_composite(b) => loose_eq(&primitive(a), &primitive(b)),
            _ => a.to_number() == b.to_number(),
        },
    }
}

fn is_composite(v: &Val<'_>) -> bool {
    matches!(v, Val::Json(_) | Val::Array(_))
}

/// JavaScript's ToPrimitive: arrays and objects become their string form.
fn primitive<'a>(v: &Val<'a>) -> Val<'a> {
    if is_composite(v) {
        let mut s = String::new();
        v.write_js_string(&mut s);
        Val::String(s)
    } else {
        v.clone()
    }
}

/// JavaScript's relational comparison: strings compare as strings, everything else as numbers.
/// `None` when the comparison is undefined (a NaN is involved), which makes `<` etc. false.
pub(crate) fn compare(a: &Val<'_>, b: &Val<'_>) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return Some(x.cmp(y));
    }
    a.to_number().partial_cmp(&b.to_number())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truthiness_follows_jsonlogic() {
        let arr = json!([]);
        for falsy in [
            Val::Null,
            Val::Bool(false),
            Val::Num(0.0),
            Val::Str(""),
            Val::Json(&arr),
        ] {
            assert!(!falsy.truthy(), "{falsy:?}");
        }
        let obj = json!({});
        assert!(Val::Json(&obj).truthy());
        assert!(Val::Str("0").truthy());
    }

    #[test]
    fn loose_equality_coerces_like_javascript() {
        assert!(loose_eq(&Val::Num(1.0), &Val::Str("1")));
        assert!(loose_eq(&Val::Bool(true), &Val::Num(1.0)));
        assert!(!loose_eq(&Val::Null, &Val::Num(0.0)));
        assert!(!strict_eq(&Val::Num(1.0), &Val::Str("1")));
        let one = json!([1]);
        assert!(loose_eq(&Val::Json(&one), &Val::Str("1")));
    }

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        let s = |n: f64| {
            let mut out = String::new();
            write_js_number(n, &mut out);
            out
        };
        assert_eq!(s(2.0), "2");
        assert_eq!(s(1.5), "1.5");
        assert_eq!(s(-0.0), "0");
        assert_eq!(s(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn comparison_is_string_wise_only_for_two_strings() {
        assert_eq!(
            compare(&Val::Str("10"), &Val::Str("9")),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare(&Val::Str("10"), &Val::Num(9.0)),
            Some(Ordering::Greater)
        );
        assert_eq!(compare(&Val::Str("x"), &Val::Num(9.0)), None);
    }
}
