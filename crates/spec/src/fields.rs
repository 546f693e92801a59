//! Where each field of one document is, so that a semantic error (a bad name, a cycle) points
//! at the offending line rather than at the top of the document.
//!
//! The document is read a second time into an untyped tree that keeps serde-saphyr's
//! positions of keys and list items, then flattened into `path -> position`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::parse::{deserialize_yaml, Chunk};

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of a document's fields, by path (`spec.process.command`, `spec.dependsOn[1]`).
#[derive(Debug, Default)]
pub(crate) struct FieldIndex(BTreeMap<String, Position>);

impl FieldIndex {
    /// Indexes `chunk`; a document that does not read as plain YAML gets an empty index
    /// (its diagnostics then point at the document's first line).
    pub(crate) fn read(chunk: &Chunk<'_>) -> Self {
        let mut index = BTreeMap::new();
        if let Ok(root) = deserialize_yaml(chunk.text, |de| Node::deserialize(de)) {
            root.flatten(chunk, "", &mut index);
        }
        FieldIndex(index)
    }

    /// Position of `path`, or of its nearest enclosing field that is present.
    pub(crate) fn position(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.0.get(path) {
                return Some(*position);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

/// A YAML node reduced to its shape and the positions of its keys and items.
enum Node {
    Scalar,
    Map(Vec<(Spanned<String>, Node)>),
    Seq(Vec<Spanned<Node>>),
}

impl Node {
    fn flatten(self, chunk: &Chunk<'_>, path: &str, index: &mut BTreeMap<String, Position>) {
        let mut record = |path: String, location, child: Node| {
            let (line, column) = chunk.position(Some(location));
            index
                .entry(path.clone())
                .or_insert(Position { line, column });
            child.flatten(chunk, &path, index);
        };
        match self {
            Node::Scalar => {}
            Node::Map(entries) => {
                for (key, value) in entries {
                    let child = if path.is_empty() {
                        key.value
                    } else {
                        format!("{path}.{}", key.value)
                    };
                    record(child, key.referenced, value);
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    record(format!("{path}[{i}]"), item.referenced, item.value);
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::split_documents;

    fn index(text: &str) -> FieldIndex {
        let chunks = split_documents(text);
        FieldIndex::read(&chunks[chunks.len() - 1])
    }

    #[test]
    fn keys_and_items_are_found_by_path_with_file_lines() {
        let fields = index("a: 1\n---\nspec:\n  process:\n    command:\n    - x\n    - y\n");
        let at = |path| fields.position(path).map(|p| (p.line, p.column));
        assert_eq!(at("spec.process"), Some((4, 3)));
        assert_eq!(at("spec.process.command"), Some((5, 5)));
        assert_eq!(at("spec.process.command[1]"), Some((7, 7)));
    }

    #[test]
    fn missing_path_falls_back_to_nearest_present_parent() {
        let fields = index("spec:\n  readiness: {periodSeconds: 0}\n");
        let position = fields.position("spec.readiness.httpGet.path");
        assert_eq!(position.map(|p| p.line), Some(2));
        assert_eq!(fields.position("metadata.name"), None);
    }
}
