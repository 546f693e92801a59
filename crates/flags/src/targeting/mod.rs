//! Targeting rules: flagd's JsonLogic, compiled once when a flag set loads and then interpreted
//! per evaluation.
//!
//! - `compile.rs` turns a flag's `targeting` JSON into an [`Expr`] tree: `$ref`s to
//!   `$evaluators` are inlined, `var` paths are split, `$flagd.flagKey` becomes a constant,
//!   `sem_ver` constants and `fractional` weights are parsed, and every problem is reported with
//!   its JSON pointer and what it does at evaluation ([`Severity`]).
//! - `eval.rs` walks the tree against a context; it never parses JSON and allocates only when a
//!   rule builds a new string or array.
//! - `value.rs` holds the evaluation-time value type and JsonLogic's JavaScript coercions.

mod compile;
mod eval;
mod expr;
mod value;

pub(crate) use compile::{compile, escape_pointer, Severity};
pub(crate) use eval::{evaluate, Env};
pub(crate) use expr::Expr;
pub(crate) use value::{write_js_number, Val};

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::*;

    /// Compiles `rule` for flag `my-flag` and evaluates it against `data`.
    fn run(rule: Value, data: Value) -> Value {
        let compiled = compile("my-flag", &rule, &Map::new(), "", &|_| true);
        let errors: Vec<_> = compiled
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{rule}: {errors:?}");
        let env = Env::new(&data, "my-flag", Some(1_700_000_000));
        evaluate(&compiled.expr, &env).to_json()
    }

    #[test]
    fn jsonlogic_operations_match_the_reference_semantics() {
        let data = json!({
            "email": "ada@example.com", "age": 36, "tags": ["a", "b"],
            "user": {"name": "ada", "langs": [{"n": "rust"}, {"n": "go"}]}, "empty": ""
        });
        let cases = [
            (json!({"var": "user.name"}), json!("ada")),
            (json!({"var": "user.langs.1.n"}), json!("go")),
            (json!({"var": ["nope", "fallback"]}), json!("fallback")),
            (json!({"var": "$flagd.flagKey"}), json!("my-flag")),
            (json!({"var": "$flagd.timestamp"}), json!(1_700_000_000)),
            (json!({"var": {"cat": ["user", ".name"]}}), json!("ada")),
            (
                json!({"missing": ["email", "phone", "empty"]}),
                json!(["phone", "empty"]),
            ),
            (json!({"missing_some": [1, ["email", "phone"]]}), json!([])),
            (
                json!({"missing_some": [2, ["email", "phone"]]}),
                json!(["phone"]),
            ),
            (json!({"if": [false, 1, {"==": [1, "1"]}, 2, 3]}), json!(2)),
            (json!({"?:": [false, 1, 3]}), json!(3)),
            (json!({"if": [false, 1]}), json!(null)),
            (json!({"===": [1, "1"]}), json!(false)),
            (json!({"!==": [1, "1"]}), json!(true)),
            (json!({"!=": [1, "1"]}), json!(false)),
            (json!({"!": [[]]}), json!(true)),
            (json!({"!!": ["0"]}), json!(true)),
            (json!({"or": [0, "", "x", "y"]}), json!("x")),
            (json!({"and": [1, "", "y"]}), json!("")),
            (json!({"<": [1, {"var": "age"}, 40]}), json!(true)),
            (json!({"<=": [36, {"var": "age"}, 36]}), json!(true)),
            (json!({">": ["10", 9]}), json!(true)),
            (json!({">=": ["a", "b"]}), json!(false)),
            (json!({"+": [1, "2", 3.5]}), json!(6.5)),
            (json!({"-": [5]}), json!(-5)),
            (json!({"*": [2, 3]}), json!(6)),
            (json!({"/": [7, 2]}), json!(3.5)),
            (json!({"%": [7, 3]}), json!(1)),
            (json!({"min": [3, 1, 2]}), json!(1)),
            (json!({"max": [3, 1, 2]}), json!(3)),
            (json!({"cat": ["a", 1, null, true]}), json!("a1true")),
            (json!({"substr": ["jsonlogic", -5]}), json!("logic")),
            (json!({"substr": ["jsonlogic", 1, -5]}), json!("son")),
            (json!({"in": ["b", {"var": "tags"}]}), json!(true)),
            (json!({"in": ["example", {"var": "email"}]}), json!(true)),
            (json!({"merge": [[1, 2], 3, [[4]]]}), json!([1, 2, 3, [4]])),
            (
                json!({"map": [[1, 2], {"*": [{"var": ""}, 2]}]}),
                json!([2, 4]),
            ),
            (
                json!({"map": [{"var": "user.langs"}, {"var": "n"}]}),
                json!(["rust", "go"]),
            ),
            (
                json!({"filter": [[1, 2, 3], {">": [{"var": ""}, 1]}]}),
                json!([2, 3]),
            ),
            (
                json!({"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 10]}),
                json!(16),
            ),
            (json!({"all": [[], {"var": ""}]}), json!(false)),
            (
                json!({"all": [[1, 2], {">": [{"var": ""}, 0]}]}),
                json!(true),
            ),
            (
                json!({"none": [[1, 2], {">": [{"var": ""}, 5]}]}),
                json!(true),
            ),
            (
                json!({"some": [[1, 2], {">": [{"var": ""}, 1]}]}),
                json!(true),
            ),
            (
                json!({"starts_with": [{"var": "email"}, "ada"]}),
                json!(true),
            ),
            (
                json!({"ends_with": [{"var": "email"}, "@example.org"]}),
                json!(false),
            ),
            (json!({"ends_with": [{"var": "age"}, "6"]}), json!(null)),
            (json!({"sem_ver": ["1.2.3", ">=", "1.2"]}), json!(true)),
            (
                json!({"sem_ver": [{"var": "nope"}, "=", "1.0.0"]}),
                json!(null),
            ),
            (json!({"log": ["x"]}), json!("x")),
        ];
        for (rule, want) in cases {
            assert_eq!(run(rule.clone(), data.clone()), want, "{rule}");
        }
    }

    #[test]
    fn fractional_without_a_bucketing_value_hashes_flag_key_and_targeting_key() {
        // flagd-testbed's hash edge vectors for flag "fractional-hash-edge-flag".
        let rule = json!({"fractional": [{"var": "targetingKey"}, ["lower", 50], ["upper", 50]]});
        assert_eq!(
            run(rule.clone(), json!({"targetingKey": "ejOoVL"})),
            json!("lower")
        );
        assert_eq!(run(rule, json!({"targetingKey": "6LvT0"})), json!("upper"));
        let implicit = json!({"fractional": [["x", 1], ["y", 0]]});
        assert_eq!(
            run(implicit.clone(), json!({"targetingKey": "u"})),
            json!("x")
        );
        assert_eq!(run(implicit, json!({})), json!(null), "no targeting key");
    }

    #[test]
    fn refs_are_inlined_and_unknown_ones_are_errors() {
        let evaluators = json!({"staff": {"ends_with": [{"var": "email"}, "@x.com"]},
                                "loop": {"$ref": "loop"}});
        let evaluators = evaluators.as_object().cloned().unwrap_or_default();
        let ok = compile("f", &json!({"$ref": "staff"}), &evaluators, "/t", &|_| true);
        assert!(ok.diagnostics.is_empty(), "{:?}", ok.diagnostics);
        for bad in [
            json!({"$ref": "nobody"}),
            json!({"$ref": "loop"}),
            json!({"nope": [1]}),
        ] {
            let c = compile("f", &bad, &evaluators, "/t", &|_| true);
            assert_eq!(c.diagnostics[0].severity, Severity::Error, "{bad}");
        }
    }

    #[test]
    fn problems_carry_a_json_pointer() {
        let rule = json!({"if": [{"sem_ver": [{"var": "v"}, "===", "1.0.0"]}, "on", "off"]});
        let c = compile("f", &rule, &Map::new(), "/flags/f/targeting", &|v| {
            v == "on"
        });
        let found: Vec<(Severity, &str)> = c
            .diagnostics
            .iter()
            .map(|d| (d.severity, d.pointer.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (Severity::Null, "/flags/f/targeting/if/0/sem_ver/1"),
                (Severity::Note, "/flags/f/targeting/if/2"),
            ]
        );
    }
}
