//! The kinds of document Gauntlet understands, and the one place that dispatches on `kind`.
//!
//! A document is first read only for its `apiVersion` and `kind`; then [`Kind::parse`] reads it
//! strictly as the type of that kind. Adding a kind (AnalysisTemplate, ChaosExperiment,
//! FeatureFlags) is a variant in [`Kind`] and in [`Document`]; the compiler then points at each
//! match that must learn it (parsing here, the schema in `schema.rs`).

use std::fmt;

use crate::diagnostic::Diagnostic;
use crate::model::{AnalysisTemplate, Application, ChaosExperiment, FeatureFlags};
use crate::parse::{self, Chunk};

/// A known value of a document's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Application,
    AnalysisTemplate,
    ChaosExperiment,
    FeatureFlags,
}

impl Kind {
    /// Every kind, in the order they are listed to users.
    pub const ALL: &'static [Kind] = &[
        Kind::Application,
        Kind::AnalysisTemplate,
        Kind::ChaosExperiment,
        Kind::FeatureFlags,
    ];

    /// The spelling used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Application => "Application",
            Kind::AnalysisTemplate => "AnalysisTemplate",
            Kind::ChaosExperiment => "ChaosExperiment",
            Kind::FeatureFlags => "FeatureFlags",
        }
    }

    /// The kind spelled `name`, if it is known (case-sensitive, as in Kubernetes).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|kind| kind.as_str() == name)
    }

    /// Reads `chunk` strictly as a document of this kind.
    pub(crate) fn parse(self, file: &str, chunk: &Chunk<'_>) -> Result<Document, Diagnostic> {
        match self {
            Kind::Application => parse::deserialize(file, chunk).map(Document::Application),
            Kind::AnalysisTemplate => {
                parse::deserialize(file, chunk).map(Document::AnalysisTemplate)
            }
            Kind::ChaosExperiment => parse::deserialize(file, chunk).map(Document::ChaosExperiment),
            Kind::FeatureFlags => {
                parse::deserialize_json_like(file, chunk).map(Document::FeatureFlags)
            }
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed document, whatever its kind.
// A document lives only between reading and filing it, one at a time: boxing the larger
// variant would cost an allocation per document for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Application(Application),
    AnalysisTemplate(AnalysisTemplate),
    ChaosExperiment(ChaosExperiment),
    FeatureFlags(FeatureFlags),
}

/// The known kinds as a message fragment: `` `Application`, `...` ``.
pub(crate) fn known_kinds() -> String {
    Kind::ALL
        .iter()
        .map(|kind| format!("`{kind}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.as_str()), Some(*kind));
        }
        assert_eq!(Kind::from_name("application"), None);
    }
}
