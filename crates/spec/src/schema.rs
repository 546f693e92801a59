//! The JSON Schema of a manifest document, generated from the Rust types so that it cannot
//! drift from what the parser accepts. Editors use it to complete and check manifests.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::document::Kind;
use crate::model::{AnalysisTemplate, Application, ChaosExperiment, FeatureFlags, API_VERSION};

/// JSON Schema (draft 2020-12) for one document: a `oneOf` over the known kinds, each with
/// `apiVersion` and `kind` pinned to their only valid values.
///
/// ```
/// let schema = gauntlet_spec::schema();
/// assert!(schema["$defs"]["Application"]["properties"]["spec"].is_object());
/// ```
pub fn schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let variants: Vec<Value> = Kind::ALL
        .iter()
        .map(|kind| match kind {
            Kind::Application => generator.subschema_for::<Application>(),
            Kind::AnalysisTemplate => generator.subschema_for::<AnalysisTemplate>(),
            Kind::ChaosExperiment => generator.subschema_for::<ChaosExperiment>(),
            Kind::FeatureFlags => generator.subschema_for::<FeatureFlags>(),
        })
        .map(Value::from)
        .collect();
    let mut definitions = generator.take_definitions(true);
    for kind in Kind::ALL {
        pin_header(&mut definitions, kind.as_str());
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Gauntlet manifest",
        "description": format!("One `{API_VERSION}` document."),
        "oneOf": variants,
        "$defs": definitions,
    })
}

/// Narrows a kind's `apiVersion` and `kind` from any string to their one valid value, which
/// makes the `oneOf` pick a single branch and lets editors complete them.
fn pin_header(definitions: &mut Map<String, Value>, kind: &str) {
    if let Some(Value::Object(properties)) = definitions
        .get_mut(kind)
        .and_then(|definition| definition.get_mut("properties"))
    {
        properties.insert("apiVersion".into(), json!({ "const": API_VERSION }));
        properties.insert("kind".into(), json!({ "const": kind }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_contains_the_application_properties() {
        let schema = schema();
        let application = &schema["$defs"]["Application"];
        for property in ["apiVersion", "kind", "metadata", "spec"] {
            assert!(
                application["properties"][property].is_object(),
                "{property}"
            );
        }
        assert_eq!(application["properties"]["kind"]["const"], "Application");
        assert_eq!(application["additionalProperties"], false);
        let spec = &schema["$defs"]["ApplicationSpec"]["properties"];
        for property in ["replicas", "process", "readiness", "service", "dependsOn"] {
            assert!(spec[property].is_object(), "{property}");
        }
    }

    #[test]
    fn schema_describes_strategies_and_analysis_templates() {
        let schema = schema();
        let definitions = &schema["$defs"];
        let spec = &definitions["ApplicationSpec"]["properties"];
        assert!(spec["strategy"].is_object() && spec["onFailure"].is_object());
        let strategy = definitions["Strategy"].to_string();
        assert!(
            strategy.contains("canary") && strategy.contains("blueGreen"),
            "{strategy}"
        );
        let template = &definitions["AnalysisTemplate"];
        assert_eq!(template["properties"]["kind"]["const"], "AnalysisTemplate");
        let metric = &definitions["MetricSpec"]["properties"];
        for property in [
            "interval",
            "successCondition",
            "consecutiveErrorLimit",
            "provider",
        ] {
            assert!(metric[property].is_object(), "{property}");
        }
        assert_eq!(definitions["DurationStr"]["type"], "string");
        assert_eq!(definitions["CanarySpec"]["additionalProperties"], false);
    }

    #[test]
    fn schema_is_a_one_of_over_known_kinds() {
        let schema = schema();
        let variants = schema["oneOf"].as_array().cloned().unwrap_or_default();
        assert_eq!(variants.len(), Kind::ALL.len());
        assert_eq!(variants[0]["$ref"], "#/$defs/Application");
    }

    #[test]
    fn schema_is_deterministic() {
        assert_eq!(schema().to_string(), schema().to_string());
    }
}
