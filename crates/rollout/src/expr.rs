//! The condition language of analysis metrics: `successCondition: result < 0.01`.
//!
//! A small, total expression language over JSON values, close to the subset of expr-lang that
//! Argo Rollouts' conditions use in practice:
//!
//! - literals: numbers (`0.01`, `3e2`), strings (`'ok'` or `"ok"`, with `\` escapes), `true`,
//!   `false`, `null`;
//! - `result` (the measurement), indexed `result[0]`, `result["p99"]` or `result.p99`;
//! - `!`, unary `-`, `* /`, `+ -`, `< <= > >=`, `== !=`, `&&`, `||` (that precedence, left
//!   associative; `&&`/`||` short-circuit), parentheses;
//! - functions `len(x)` (string, array or object), `isNaN(x)` (true for the string `"NaN"`
//!   Prometheus returns; JSON numbers are never NaN), `default(x, y)` (`y` when `x` is null),
//!   `abs(x)`.
//!
//! A missing field or an index out of range is `null`, so `default(result[1], 0) < 5` works;
//! comparing `null` or mixing types in `<` is an evaluation error, which the analysis run
//! records as a measurement Error rather than a Failure. `+` concatenates two strings. A
//! condition must evaluate to a boolean.
//!
//! ```
//! use gauntlet_rollout::expr::Condition;
//! let c = Condition::parse("result[0] >= 0.95 && result[1] < 300").unwrap();
//! assert_eq!(c.eval(&serde_json::json!([0.99, 120])), Ok(true));
//! ```

use std::fmt;

use serde_json::{Number, Value};
use thiserror::Error;

/// A condition that did not parse: what was expected and at which column (1-based,
/// in characters).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// A condition that parsed but could not be evaluated on this measurement.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// A parsed condition; keeps its source for display.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Condition {
    pub fn parse(source: &str) -> Result<Self, ParseError> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: source.chars().count() + 1,
        };
        let expr = p.expr(0)?;
        if let Some((tok, col)) = p.tokens.get(p.pos) {
            return Err(ParseError {
                column: *col,
                message: format!("unexpected {tok} after a complete condition"),
            });
        }
        Ok(Condition {
            source: source.to_string(),
            expr,
        })
    }

    /// Evaluates the condition against `result`; it must yield a boolean.
    pub fn eval(&self, result: &Value) -> Result<bool, EvalError> {
        match eval(&self.expr, result)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "condition `{}` evaluated to {other}, not true or false",
                self.source
            ))),
        }
    }

    /// Evaluates the expression to any value.
    pub fn value(&self, result: &Value) -> Result<Value, EvalError> {
        eval(&self.expr, result)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Str(s) => write!(f, "string '{s}'"),
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Op(o) => write!(f, "`{o}`"),
        }
    }
}

const OPS: [&str; 19] = [
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "(", ")", "[", "]", ".",
    ",",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                i += 1;
                if i < chars.len() && (chars[i] == '+' || chars[i] == '-') {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text: String = chars[start..i].iter().collect();
            let n = text.parse::<f64>().map_err(|_| ParseError {
                column: col,
                message: format!("`{text}` is not a number"),
            })?;
            out.push((Tok::Num(n), col));
        } else if c == '\'' || c == '"' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ParseError {
                            column: col,
                            message: format!("string starting here is not closed with {c}"),
                        })
                    }
                    Some(&q) if q == c => break,
                    Some('\\') => {
                        let escaped = chars.get(i + 1).copied().unwrap_or('\\');
                        s.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push((Tok::Str(s), col));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), col));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = OPS
                .iter()
                .find(|op| rest.starts_with(**op))
                .ok_or_else(|| {
                    let hint = match c {
                        '=' => " (use == to compare)",
                        '&' => " (use &&)",
                        '|' => " (use ||)",
                        _ => "",
                    };
                    ParseError {
                        column: col,
                        message: format!("unexpected character `{c}`{hint}"),
                    }
                })?;
            out.push((Tok::Op(op), col));
            i += op.len();
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Lit(Value),
    Result,
    Index(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

struct Parser {
    tokens: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
}

fn precedence(op: &str) -> Option<u8> {
    Some(match op {
        "||" => 1,
        "&&" => 2,
        "==" | "!=" => 3,
        "<" | "<=" | ">" | ">=" => 4,
        "+" | "-" => 5,
        "*" | "/" => 6,
        _ => return None,
    })
}

impl Parser {
    fn peek_op(&self) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some((Tok::Op(o), _)) => Some(o),
            _ => None,
        }
    }

    fn column(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(_, c)| *c)
    }

    fn error<T>(&self, expected: &str) -> Result<T, ParseError> {
        let found = match self.tokens.get(self.pos) {
            Some((tok, _)) => tok.to_string(),
            None => "the end of the condition".to_string(),
        };
        Err(ParseError {
            column: self.column(),
            message: format!("expected {expected}, found {found}"),
        })
    }

    fn expect(&mut self, op: &str) -> Result<(), ParseError> {
        if self.peek_op() == Some(op) {
            self.pos += 1;
            Ok(())
        } else {
            self.error(&format!("`{op}`"))
        }
    }

    fn expr(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while let Some(op) = self.peek_op() {
            let Some(prec) = precedence(op) else { break };
            if prec <= min {
                break;
            }
            self.pos += 1;
            let right = self.expr(prec)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek_op() {
            Some("!") => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some("-") => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.primary()?;
        loop {
            match self.peek_op() {
                Some("[") => {
                    self.pos += 1;
                    let index = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), Box::new(index));
                }
                Some(".") => {
                    self.pos += 1;
                    match self.tokens.get(self.pos) {
                        Some((Tok::Ident(name), _)) => {
                            let name = Value::String(name.clone());
                            self.pos += 1;
                            e = Expr::Index(Box::new(e), Box::new(Expr::Lit(name)));
                        }
                        _ => return self.error("a field name after `.`"),
                    }
                }
                _ => return Ok(e),
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let Some((tok, col)) = self.tokens.get(self.pos).cloned() else {
            return self.error("a value");
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Lit(number(n))),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Op("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" | "nil" => Ok(Expr::Lit(Value::Null)),
                "result" => Ok(Expr::Result),
                "len" | "isNaN" | "default" | "abs" => {
                    let arity = if name == "default" { 2 } else { 1 };
                    self.expect("(")?;
                    let mut args = vec![self.expr(0)?];
                    while self.peek_op() == Some(",") {
                        self.pos += 1;
                        args.push(self.expr(0)?);
                    }
                    self.expect(")")?;
                    if args.len() != arity {
                        return Err(ParseError {
                            column: col,
                            message: format!(
                                "{name}() takes {arity} argument(s), got {}",
                                args.len()
                            ),
                        });
                    }
                    Ok(Expr::Call(name, args))
                }
                _ => Err(ParseError {
                    column: col,
                    message: format!(
                        "unknown name `{name}`: use `result`, a literal, or one of len, isNaN, \
                         default, abs"
                    ),
                }),
            },
            Tok::Op(_) => {
                self.pos -= 1;
                self.error("a value")
            }
        }
    }
}

fn number(n: f64) -> Value {
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn eval(e: &Expr, result: &Value) -> Result<Value, EvalError> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Result => result.clone(),
        Expr::Index(base, index) => {
            let base = eval(base, result)?;
            let index = eval(index, result)?;
            match (&base, &index) {
                (Value::Array(items), Value::Number(n)) => {
                    let i = n.as_f64().unwrap_or(-1.0);
                    if i >= 0.0 && i.fract() == 0.0 {
                        items.get(i as usize).cloned().unwrap_or(Value::Null)
                    } else {
                        return Err(EvalError(format!("array index {n} is not a whole number")));
                    }
                }
                (Value::Object(map), Value::String(k)) => {
                    map.get(k).cloned().unwrap_or(Value::Null)
                }
                (Value::Null, _) => Value::Null,
                _ => {
                    return Err(EvalError(format!(
                        "cannot index {} with {}",
                        type_name(&base),
                        type_name(&index)
                    )))
                }
            }
        }
        Expr::Not(x) => match eval(x, result)? {
            Value::Bool(b) => Value::Bool(!b),
            other => return Err(EvalError(format!("`!` needs a boolean, got {other}"))),
        },
        Expr::Neg(x) => number(-num(&eval(x, result)?, "-")?),
        Expr::Bin("&&", l, r) => {
            Value::Bool(boolean(&eval(l, result)?, "&&")? && boolean(&eval(r, result)?, "&&")?)
        }
        Expr::Bin("||", l, r) => {
            Value::Bool(boolean(&eval(l, result)?, "||")? || boolean(&eval(r, result)?, "||")?)
        }
        Expr::Bin(op, l, r) => binary(op, eval(l, result)?, eval(r, result)?)?,
        Expr::Call(name, args) => {
            let a = eval(&args[0], result)?;
            match name.as_str() {
                "len" => match &a {
                    Value::String(s) => number(s.chars().count() as f64),
                    Value::Array(v) => number(v.len() as f64),
                    Value::Object(m) => number(m.len() as f64),
                    other => {
                        return Err(EvalError(format!("len() of {}", type_name(other))));
                    }
                },
                "isNaN" => {
                    Value::Bool(matches!(&a, Value::String(s) if s.eq_ignore_ascii_case("nan")))
                }
                "abs" => number(num(&a, "abs")?.abs()),
                _ => {
                    if a.is_null() {
                        eval(&args[1], result)?
                    } else {
                        a
                    }
                }
            }
        }
    })
}

fn num(v: &Value, op: &str) -> Result<f64, EvalError> {
    v.as_f64()
        .ok_or_else(|| EvalError(format!("`{op}` needs a number, got {}", type_name(v))))
}

fn boolean(v: &Value, op: &str) -> Result<bool, EvalError> {
    v.as_bool()
        .ok_or_else(|| EvalError(format!("`{op}` needs booleans, got {}", type_name(v))))
}

fn binary(op: &str, l: Value, r: Value) -> Result<Value, EvalError> {
    match op {
        "==" | "!=" => {
            let equal = match (l.as_f64(), r.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => l == r,
            };
            Ok(Value::Bool(equal == (op == "==")))
        }
        "<" | "<=" | ">" | ">=" => {
            let ord = match (&l, &r) {
                (Value::String(a), Value::String(b)) => a.partial_cmp(b),
                _ => num(&l, op)?.partial_cmp(&num(&r, op)?),
            };
            let ord = ord.ok_or_else(|| EvalError(format!("cannot order {l} and {r}")))?;
            Ok(Value::Bool(match op {
                "<" => ord.is_lt(),
                "<=" => ord.is_le(),
                ">" => ord.is_gt(),
                _ => ord.is_ge(),
            }))
        }
        "+" if l.is_string() && r.is_string() => Ok(Value::String(format!(
            "{}{}",
            l.as_str().unwrap_or_default(),
            r.as_str().unwrap_or_default()
        ))),
        _ => {
            let (a, b) = (num(&l, op)?, num(&r, op)?);
            let v = match op {
                "+" => a + b,
                "-" => a - b,
                "*" => a * b,
                _ => a / b,
            };
            if v.is_finite() {
                Ok(number(v))
            } else {
                Err(EvalError(format!("{a} {op} {b} is not a finite number")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(src: &str, result: Value) -> Result<bool, EvalError> {
        Condition::parse(src).unwrap().eval(&result)
    }

    #[test]
    fn conditions_from_the_brief_evaluate() {
        assert_eq!(check("result < 0.01", json!(0.005)), Ok(true));
        assert_eq!(check("result < 0.01", json!(0.02)), Ok(false));
        let r = json!([0.97, 250]);
        assert_eq!(
            check("result[0] >= 0.95 && result[1] < 300", r.clone()),
            Ok(true)
        );
        assert_eq!(check("result[0] >= 0.98 && result[1] < 300", r), Ok(false));
        assert_eq!(
            check("result == 'ok' || len(result) > 2", json!("ok")),
            Ok(true)
        );
        assert_eq!(
            check("result == 'ok' || len(result) > 2", json!("no")),
            Ok(false)
        );
        assert_eq!(
            check("result == 'ok' || len(result) > 2", json!("fine")),
            Ok(true)
        );
    }

    #[test]
    fn precedence_and_arithmetic_follow_the_usual_rules() {
        assert_eq!(check("1 + 2 * 3 == 7", Value::Null), Ok(true));
        assert_eq!(check("(1 + 2) * 3 == 9", Value::Null), Ok(true));
        assert_eq!(check("10 - 4 - 3 == 3", Value::Null), Ok(true));
        assert_eq!(check("8 / 4 / 2 == 1", Value::Null), Ok(true));
        assert_eq!(check("!false && -result < 0", json!(2)), Ok(true));
        assert_eq!(check("true || false && false", Value::Null), Ok(true));
        assert_eq!(check("1 < 2 == true", Value::Null), Ok(true));
        assert_eq!(check("'a' + 'b' == 'ab'", Value::Null), Ok(true));
    }

    #[test]
    fn fields_indexes_and_functions_reach_into_json() {
        let r = json!({"p99": 120, "codes": {"5xx": 0}, "series": [1, 2, 3]});
        assert_eq!(check("result.p99 < 300", r.clone()), Ok(true));
        assert_eq!(check("result['codes'][\"5xx\"] == 0", r.clone()), Ok(true));
        assert_eq!(check("len(result.series) == 3", r.clone()), Ok(true));
        assert_eq!(
            check("default(result.missing, 7) == 7", r.clone()),
            Ok(true)
        );
        assert_eq!(
            check("default(result.series[9], 0) < 1", r.clone()),
            Ok(true)
        );
        assert_eq!(check("isNaN(result)", json!("NaN")), Ok(true));
        assert_eq!(check("isNaN(result)", json!(1.5)), Ok(false));
        assert_eq!(check("abs(result) <= 2e0", json!(-2)), Ok(true));
    }

    #[test]
    fn evaluation_errors_say_what_went_wrong() {
        assert!(check("result < 0.01", Value::Null).is_err());
        assert!(check("result < 0.01", json!("x")).is_err());
        assert!(check("result + 1", json!(1)).is_err(), "not a boolean");
        assert!(check("result / 0 > 1", json!(1)).is_err());
        assert!(check("result && true", json!(1)).is_err());
    }

    #[test]
    fn parse_errors_carry_the_column() {
        let e = Condition::parse("result <").unwrap_err();
        assert_eq!(e.column, 9);
        assert!(e.message.contains("expected a value"), "{e}");
        let e = Condition::parse("result = 1").unwrap_err();
        assert_eq!((e.column, e.message.contains("==")), (8, true), "{e}");
        let e = Condition::parse("reslt < 1").unwrap_err();
        assert_eq!(e.column, 1);
        let e = Condition::parse("(result < 1").unwrap_err();
        assert_eq!(e.column, 12);
        let e = Condition::parse("result < 1 2").unwrap_err();
        assert_eq!(e.column, 12);
        let e = Condition::parse("result == 'ok").unwrap_err();
        assert_eq!(e.column, 11);
        assert_eq!(
            e.to_string(),
            "column 11: string starting here is not closed with '"
        );
        let e = Condition::parse("len(1, 2) > 0").unwrap_err();
        assert_eq!(e.column, 1);
    }
}
