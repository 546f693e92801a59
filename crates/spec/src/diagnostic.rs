//! Where a manifest came from and what is wrong with it.
//!
//! Every problem found while reading a tree becomes a [`Diagnostic`] that names the file, line,
//! column and field, in the `file:line:column: field: message` form editors and terminals
//! already understand. [`Diagnostics`] carries all of them at once, so a user fixes a tree in
//! one pass instead of one error per run.

use std::fmt;

/// Where a document starts: file and 1-based line of its first line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A value together with the place in the source tree it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub origin: Origin,
}

/// One problem, rendered as `file:line:column: field: message` (field omitted when unknown),
/// for example:
///
/// ```text
/// apps/checkout.yaml:7:5: spec.process.comand: unknown field `comand`, expected one of `command`, `args`, ...
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based, relative to the whole file.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// Path of the offending field, such as `spec.process.command` or `spec.dependsOn[1]`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All problems of a tree, sorted by file, line and column; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct Diagnostics(pub Vec<Diagnostic>);

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(field: Option<&str>) -> Diagnostic {
        Diagnostic {
            file: "apps/a.yaml".into(),
            line: 7,
            column: 5,
            field: field.map(String::from),
            message: "bad".into(),
        }
    }

    #[test]
    fn diagnostic_renders_file_line_column_field_and_message() {
        assert_eq!(
            diagnostic(Some("spec.replicas")).to_string(),
            "apps/a.yaml:7:5: spec.replicas: bad"
        );
    }

    #[test]
    fn diagnostic_without_field_omits_it() {
        assert_eq!(diagnostic(None).to_string(), "apps/a.yaml:7:5: bad");
    }

    #[test]
    fn diagnostics_render_one_per_line() {
        let all = Diagnostics(vec![diagnostic(None), diagnostic(Some("x"))]);
        assert_eq!(
            all.to_string(),
            "apps/a.yaml:7:5: bad\napps/a.yaml:7:5: x: bad"
        );
    }
}
