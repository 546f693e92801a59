//! Feature flags in the tree: `kind: FeatureFlags` documents and plain flagd `*.flagd.json`
//! files, each one flag set in flagd's format.
//!
//! Each set is checked on its own when its file is read (strictly, by `gauntlet-flags`: a flag
//! set in Git is reviewed before it is served, so a rule that can only yield null is an error,
//! not a surprise in production). The evaluator names a problem by JSON pointer; here it becomes
//! a field path and a line of the file, like every other diagnostic. Then the sets of the whole
//! tree are merged into one [`Flags`] store: a flag key defined twice is an error naming both
//! places. The store is built again only when a flag document changed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use gauntlet_flags::{FlagSet, FlagSetError, Flags};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diagnostic::{Diagnostic, Origin};
use crate::fields::FieldIndex;
use crate::model::FeatureFlags;
use crate::parse::{Chunk, SourceFile};

/// The flags of one commit, merged and compiled, ready to be served.
#[derive(Clone, Default)]
pub struct DeclaredFlags {
    /// Every flag of every set, by key. Shared: swap the whole `Arc` to serve a new commit.
    pub flags: Arc<Flags>,
    /// Hex SHA-256 of every flag set and where it is: equal digests serve equal flags (OFREP's
    /// ETags are derived from it).
    pub digest: String,
}

impl fmt::Debug for DeclaredFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeclaredFlags")
            .field("flags", &self.flags.len())
            .field("digest", &self.digest)
            .finish()
    }
}

impl PartialEq for DeclaredFlags {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

/// Whether a file is a plain flagd flag set rather than a manifest.
pub(crate) fn is_flagd_file(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".flagd.json")
}

/// One flag set as it was read, with what is needed to place a problem in its file.
#[derive(Debug)]
pub(crate) struct FlagDoc {
    pub origin: Origin,
    /// `metadata.name` of a `FeatureFlags` document; `None` for a flagd JSON file.
    name: Option<String>,
    set: Value,
    /// The field path of the set in its document: `spec` in a manifest, empty in a JSON file.
    prefix: &'static str,
    text: String,
    line_offset: usize,
    first_line: usize,
}

impl FlagDoc {
    fn file(&self) -> &str {
        &self.origin.file
    }

    /// The flag keys the set defines, in file order where the JSON keeps it.
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.set
            .get("flags")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|flags| flags.keys().map(String::as_str))
    }

    /// A diagnostic about the field at `path` (relative to the set), placed at that field's
    /// line when it can be found, else at the nearest enclosing field, else at the document.
    fn diagnostic(&self, path: &str, message: impl ToString) -> Diagnostic {
        self.diagnostic_at(join(self.prefix, path), message)
    }

    /// A diagnostic about the document's field `field` (a path from the document's root).
    fn diagnostic_at(&self, field: String, message: impl ToString) -> Diagnostic {
        let chunk = Chunk {
            text: &self.text,
            line_offset: self.line_offset,
            first_line: self.first_line,
        };
        let (line, column) = match FieldIndex::read(&chunk).position(&field) {
            Some(position) => (position.line, position.column),
            None => (self.origin.line, 1),
        };
        Diagnostic {
            file: self.origin.file.clone(),
            line,
            column,
            field: (!field.is_empty()).then_some(field),
            message: message.to_string(),
        }
    }

    /// Checks the set on its own, as the evaluator will load it.
    fn check(&self) -> Vec<Diagnostic> {
        match FlagSet::from_value(self.set.clone()) {
            Ok(_) => Vec::new(),
            Err(FlagSetError::Invalid(problems)) => problems
                .iter()
                .map(|p| self.diagnostic(&field_path(&self.set, &p.pointer), &p.message))
                .collect(),
            Err(other) => vec![self.diagnostic("", other)],
        }
    }
}

/// Reads a `FeatureFlags` document already parsed from `chunk`: the set, checked on its own.
pub(crate) fn from_document(
    file: &str,
    chunk: &Chunk<'_>,
    doc: FeatureFlags,
) -> (Arc<FlagDoc>, Vec<Diagnostic>) {
    let flag_doc = FlagDoc {
        origin: Origin {
            file: file.to_string(),
            line: chunk.first_line,
        },
        name: Some(doc.metadata.name),
        set: doc.spec,
        prefix: "spec",
        text: chunk.text.to_string(),
        line_offset: chunk.line_offset,
        first_line: chunk.first_line,
    };
    let mut diagnostics = Vec::new();
    if let Some(name) = &flag_doc.name {
        if !crate::validate::is_dns_label(name) {
            diagnostics.push(flag_doc.diagnostic_at(
                "metadata.name".into(),
                crate::validate::Invalid::Name(name.clone()),
            ));
        }
    }
    diagnostics.extend(flag_doc.check());
    (Arc::new(flag_doc), diagnostics)
}

/// Reads a plain flagd file (`*.flagd.json`): the whole file is one flag set.
pub(crate) fn from_json_file(file: &SourceFile) -> Result<Arc<FlagDoc>, Vec<Diagnostic>> {
    let set: Value = serde_json::from_str(&file.contents).map_err(|e| {
        vec![Diagnostic {
            file: file.path.clone(),
            line: e.line().max(1),
            column: e.column().max(1),
            field: None,
            message: format!("not a valid flagd JSON file: {}", strip_position(&e)),
        }]
    })?;
    let doc = FlagDoc {
        origin: Origin {
            file: file.path.clone(),
            line: 1,
        },
        name: None,
        set,
        prefix: "",
        text: file.contents.clone(),
        line_offset: 0,
        first_line: 1,
    };
    let problems = doc.check();
    if problems.is_empty() {
        Ok(Arc::new(doc))
    } else {
        Err(problems)
    }
}

/// serde_json's message without its " at line L column C" (the diagnostic carries them).
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The problems between the flag sets of one tree: `FeatureFlags` names and flag keys must be
/// unique. Each later definition is reported, naming the first.
pub(crate) fn conflicts(docs: &[Arc<FlagDoc>]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut names: BTreeMap<&str, &Origin> = BTreeMap::new();
    let mut keys: BTreeMap<&str, &Arc<FlagDoc>> = BTreeMap::new();
    for doc in docs {
        if let Some(name) = &doc.name {
            match names.get(name.as_str()) {
                Some(first) => diagnostics.push(doc.diagnostic_at(
                    "metadata.name".into(),
                    format!("duplicate FeatureFlags name `{name}`, also defined at {first}"),
                )),
                None => {
                    names.insert(name, &doc.origin);
                }
            }
        }
        for key in doc.keys() {
            match keys.get(key) {
                Some(first) => {
                    let at = first.diagnostic(&flag_field(key), "");
                    diagnostics.push(doc.diagnostic(
                        &flag_field(key),
                        format!(
                            "flag \"{key}\" is also defined at {}:{}:{}; a flag key must be unique across flag sets",
                            at.file, at.line, at.column
                        ),
                    ));
                }
                None => {
                    keys.insert(key, doc);
                }
            }
        }
    }
    diagnostics
}

/// Merges valid, conflict-free flag sets into the store that is served.
pub(crate) fn merge(docs: &[Arc<FlagDoc>]) -> Result<DeclaredFlags, Vec<Diagnostic>> {
    let mut hash = Sha256::new();
    let mut sets = Vec::with_capacity(docs.len());
    let mut diagnostics = Vec::new();
    for doc in docs {
        hash.update(doc.file().as_bytes());
        hash.update([0]);
        hash.update(doc.set.to_string().as_bytes());
        hash.update([0]);
        match FlagSet::from_value(doc.set.clone()) {
            Ok(set) => sets.push((doc.file().to_string(), set)),
            Err(e) => diagnostics.push(doc.diagnostic("", e)),
        }
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    let flags = Flags::from_sets(sets).map_err(|e| {
        // `conflicts` reports duplicates with their lines first; this is only a backstop.
        e.duplicates
            .iter()
            .map(|d| Diagnostic {
                file: d.second.clone(),
                line: 1,
                column: 1,
                field: None,
                message: d.to_string(),
            })
            .collect::<Vec<_>>()
    })?;
    Ok(DeclaredFlags {
        flags: Arc::new(flags),
        digest: hex::encode(hash.finalize()),
    })
}

/// `flags.KEY`, the path of a flag in its set.
fn flag_field(key: &str) -> String {
    format!("flags.{key}")
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// A JSON pointer into `set` (`/flags/new-checkout/targeting/if/0`) as a field path
/// (`flags.new-checkout.targeting.if[0]`): indexes into arrays in brackets, keys after dots.
fn field_path(set: &Value, pointer: &str) -> String {
    let mut out = String::new();
    let mut node = Some(set);
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        if let Some(Value::Array(items)) = node {
            if let Ok(i) = segment.parse::<usize>() {
                out.push_str(&format!("[{i}]"));
                node = items.get(i);
                continue;
            }
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&segment);
        node = node.and_then(|n| n.get(&segment));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use crate::Diagnostics;

    fn file(path: &str, contents: &str) -> SourceFile {
        SourceFile {
            path: path.to_string(),
            contents: contents.to_string(),
        }
    }

    const DOC: &str = "\
apiVersion: gauntlet.dev/v1alpha1
kind: FeatureFlags
metadata: {name: checkout-flags}
spec:
  flags:
    new-checkout:
      state: ENABLED
      variants: {on: true, off: false}
      defaultVariant: off
      targeting: {fractional: [[\"on\", 10], [\"off\", 90]]}
";

    const JSON: &str = r##"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "banner": {
      "state": "ENABLED",
      "variants": {"red": "#f00", "blue": "#00f"},
      "defaultVariant": "blue"
    }
  }
}
"##;

    fn errors(files: &[SourceFile]) -> Vec<Diagnostic> {
        match parse(files) {
            Ok(state) => panic!("expected diagnostics, parsed {state:?}"),
            Err(Diagnostics(all)) => all,
        }
    }

    #[test]
    fn a_feature_flags_document_in_yaml_is_served_as_written() {
        let state = parse(&[file("flags/checkout.yaml", DOC)]).unwrap();
        let flags = &state.flags.flags;
        assert_eq!(flags.len(), 1);
        let flag = flags.get("new-checkout").unwrap();
        assert_eq!(flag.source(), "flags/checkout.yaml");
        assert_eq!(flag.default_variant(), Some("off"));
        assert!(state.applications.is_empty());
        assert_eq!(state.flags.digest.len(), 64);
    }

    #[test]
    fn a_flagd_json_file_is_a_flag_set() {
        let state = parse(&[file("flags/ui.flagd.json", JSON)]).unwrap();
        let flag = state.flags.flags.get("banner").unwrap();
        assert_eq!(flag.variant("red"), Some(&serde_json::json!("#f00")));
    }

    #[test]
    fn an_invalid_flag_names_file_line_and_field() {
        let bad = DOC.replace("defaultVariant: off", "defaultVariant: of");
        let all = errors(&[file("flags/checkout.yaml", &bad)]);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            all[0].to_string(),
            "flags/checkout.yaml:9:7: spec.flags.new-checkout.defaultVariant: \"of\" is not one \
             of its variants (off, on)"
        );
    }

    #[test]
    fn a_problem_deep_in_targeting_points_at_its_line() {
        let bad = DOC.replace(
            "      targeting: {fractional: [[\"on\", 10], [\"off\", 90]]}\n",
            "      targeting:\n        if:\n        - {starts_with: [{var: email}]}\n        - on\n        - off\n",
        );
        let all = errors(&[file("flags/checkout.yaml", &bad)]);
        assert_eq!(all.len(), 1, "{all:#?}");
        let d = &all[0];
        assert_eq!(d.line, 12, "{d}");
        assert!(
            d.field
                .as_deref()
                .is_some_and(|f| f.starts_with("spec.flags.new-checkout.targeting.if[0]")),
            "{d}"
        );
    }

    #[test]
    fn an_invalid_json_flag_set_names_its_line() {
        let bad = JSON.replace("\"state\": \"ENABLED\"", "\"state\": \"ON\"");
        let all = errors(&[file("ui.flagd.json", &bad)]);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            (all[0].line, all[0].field.as_deref()),
            (5, Some("flags.banner.state"))
        );
        let broken = errors(&[file("ui.flagd.json", "{\"flags\": {\n  \"x\": \n}")]);
        assert_eq!(
            (broken[0].file.as_str(), broken[0].line),
            ("ui.flagd.json", 3)
        );
    }

    #[test]
    fn a_flag_key_defined_twice_names_both_places() {
        let json = JSON.replace("banner", "new-checkout");
        let all = errors(&[
            file("a/flags.flagd.json", &json),
            file("b/checkout.yaml", DOC),
        ]);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            all[0].to_string(),
            "b/checkout.yaml:6:5: spec.flags.new-checkout: flag \"new-checkout\" is also defined \
             at a/flags.flagd.json:4:5; a flag key must be unique across flag sets"
        );
    }

    #[test]
    fn feature_flags_names_are_dns_labels_and_unique() {
        let other = DOC.replace("new-checkout", "other");
        let all = errors(&[file("a.yaml", &format!("{DOC}---\n{other}"))]);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field.as_deref(), Some("metadata.name"));
        assert!(
            all[0].message.contains("also defined at a.yaml:1"),
            "{}",
            all[0]
        );
        let all = errors(&[file("a.yaml", &DOC.replace("checkout-flags", "Checkout"))]);
        assert_eq!(
            (all[0].line, all[0].field.as_deref()),
            (3, Some("metadata.name"))
        );
    }

    #[test]
    fn flags_do_not_change_any_application_revision() {
        let app = "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata: {name: web}\n\
                   spec:\n  process: {command: [web]}\n";
        let one = parse(&[file("app.yaml", app), file("f.yaml", DOC)]).unwrap();
        let changed = DOC.replace("10], [\"off\", 90", "50], [\"off\", 50");
        let two = parse(&[file("app.yaml", app), file("f.yaml", &changed)]).unwrap();
        assert_eq!(one.applications, two.applications);
        assert_ne!(one.flags.digest, two.flags.digest);
    }

    #[test]
    fn a_reused_parser_rebuilds_flags_only_when_they_change() {
        let mut parser = crate::Parser::default();
        let tree = [file("f.yaml", DOC), file("ui.flagd.json", JSON)];
        let one = parser.parse(&tree).unwrap();
        let two = parser.parse(&tree).unwrap();
        assert!(Arc::ptr_eq(&one.flags.flags, &two.flags.flags));
        let three = parser.parse(&tree[..1]).unwrap();
        assert!(three.flags.flags.get("banner").is_none());
        assert_eq!(three, parse(&tree[..1]).unwrap());
    }

    #[test]
    fn pointers_become_field_paths() {
        let set = serde_json::json!({"flags": {"a/b": {"targeting": {"if": [1, {"x": 2}]}}}});
        assert_eq!(
            field_path(&set, "/flags/a~1b/targeting/if/1/x"),
            "flags.a/b.targeting.if[1].x"
        );
        assert_eq!(field_path(&set, ""), "");
    }
}
