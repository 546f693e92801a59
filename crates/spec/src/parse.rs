//! From YAML text to typed documents, with a position and a field path on every error.
//!
//! Each file is cut into its `---`-separated documents first, so that one broken document does
//! not hide the problems of the next, and each document is read on its own: once for its
//! `apiVersion` and `kind`, then strictly as the type of that kind (see `document.rs`). Lines
//! are counted from the top of the file, whichever document they are in. serde-saphyr gives the
//! position of an error; serde_path_to_error gives the field path.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_path_to_error::Segment;
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

use std::collections::HashMap;
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Diagnostics, Located, Origin};
use crate::document::{known_kinds, Document, Kind};
use crate::experiment::{self, ParsedExperiment};
use crate::fields::FieldIndex;
use crate::flags::{self, DeclaredFlags, FlagDoc};
use crate::model::API_VERSION;
use crate::state::{Declared, DesiredState};
use crate::strategy::{self, ParsedTemplate};
use crate::validate;

/// One file of a source tree; `path` is relative to the tree root, '/'-separated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceFile {
    pub path: String,
    pub contents: String,
}

/// Parses and validates every file; all or nothing: any diagnostic rejects the whole tree.
///
/// ```
/// use gauntlet_spec::{parse, SourceFile};
///
/// let file = SourceFile {
///     path: "apps/web.yaml".into(),
///     contents: "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\n\
///                metadata: {name: web}\nspec:\n  process: {command: [web]}\n"
///         .into(),
/// };
/// let state = parse(&[file]).unwrap();
/// assert_eq!(state.applications["web"].origin.line, 1);
/// ```
pub fn parse(files: &[SourceFile]) -> Result<DesiredState, Diagnostics> {
    Parser::default().parse(files)
}

/// A parser that remembers each file's documents, so a commit that changes one file of ten
/// thousand re-reads one file. The whole-tree checks (unique names and addresses, the
/// `dependsOn` graph, the templates and experiments a strategy names, the applications an
/// experiment names) still run over every document, so the result is exactly [`parse`]'s.
#[derive(Default)]
pub struct Parser {
    files: HashMap<String, Arc<FileParse>>,
    /// The flag sets of the last valid tree and what they merged to, reused while no flag
    /// document changes.
    flags: Option<(Vec<Arc<FlagDoc>>, DeclaredFlags)>,
}

/// What one file's text parsed to.
struct FileParse {
    contents: String,
    applications: Vec<Arc<Parsed>>,
    templates: Vec<Arc<ParsedTemplate>>,
    experiments: Vec<Arc<ParsedExperiment>>,
    /// Flag sets that are valid on their own.
    flag_sets: Vec<Arc<FlagDoc>>,
    /// Documents that could not be read.
    problems: Vec<Diagnostic>,
    /// Documents that were read but are invalid on their own.
    invalid: Vec<Diagnostic>,
}

impl Parser {
    /// Parses and validates a whole tree, reusing what it read of unchanged files.
    pub fn parse(&mut self, files: &[SourceFile]) -> Result<DesiredState, Diagnostics> {
        let mut seen = HashMap::with_capacity(files.len());
        let mut diagnostics = Vec::new();
        let mut invalid = Vec::new();
        let mut applications: Vec<Arc<Parsed>> = Vec::new();
        let mut templates: Vec<Arc<ParsedTemplate>> = Vec::new();
        let mut experiments: Vec<Arc<ParsedExperiment>> = Vec::new();
        let mut flag_sets: Vec<Arc<FlagDoc>> = Vec::new();
        for file in files {
            let parsed = match self.files.get(&file.path) {
                Some(cached) if cached.contents == file.contents => cached.clone(),
                _ => Arc::new(parse_file(file)),
            };
            applications.extend(parsed.applications.iter().cloned());
            templates.extend(parsed.templates.iter().cloned());
            experiments.extend(parsed.experiments.iter().cloned());
            flag_sets.extend(parsed.flag_sets.iter().cloned());
            diagnostics.extend(parsed.problems.iter().cloned());
            invalid.extend(parsed.invalid.iter().cloned());
            seen.insert(file.path.clone(), parsed);
        }
        // Forget files that are gone, so the cache is exactly the last tree.
        self.files = seen;
        let complete = diagnostics.is_empty();
        diagnostics.append(&mut invalid);
        diagnostics.extend(validate::applications(&applications, complete));
        diagnostics.extend(strategy::tree(&applications, &templates, complete));
        diagnostics.extend(experiment::tree(&applications, &experiments, complete));
        diagnostics.extend(flags::conflicts(&flag_sets));
        if !diagnostics.is_empty() {
            diagnostics.sort();
            return Err(Diagnostics(diagnostics));
        }
        let flags = self.flags(flag_sets).map_err(|mut d| {
            d.sort();
            Diagnostics(d)
        })?;
        let applications = applications
            .iter()
            .map(|parsed| (parsed.app.value.name().to_string(), parsed.app.clone()))
            .collect();
        let templates = templates
            .iter()
            .map(|parsed| (parsed.name.clone(), parsed.template.clone()))
            .collect();
        let experiments = experiments
            .iter()
            .map(|parsed| (parsed.name.clone(), parsed.experiment.clone()))
            .collect();
        Ok(DesiredState {
            applications,
            templates,
            experiments,
            flags,
        })
    }

    /// The merged flags of a valid tree: the last ones again if the same flag documents
    /// declare them, so a commit that changes no flag compiles none.
    fn flags(&mut self, sets: Vec<Arc<FlagDoc>>) -> Result<DeclaredFlags, Vec<Diagnostic>> {
        if let Some((last, merged)) = &self.flags {
            let same =
                last.len() == sets.len() && last.iter().zip(&sets).all(|(a, b)| Arc::ptr_eq(a, b));
            if same {
                return Ok(merged.clone());
            }
        }
        let merged = flags::merge(&sets)?;
        self.flags = Some((sets, merged.clone()));
        Ok(merged)
    }
}

fn parse_file(file: &SourceFile) -> FileParse {
    let mut applications = Vec::new();
    let mut templates = Vec::new();
    let mut experiments = Vec::new();
    let mut flag_sets = Vec::new();
    let mut problems = Vec::new();
    let mut invalid = Vec::new();
    if flags::is_flagd_file(&file.path) {
        match flags::from_json_file(file) {
            Ok(set) => flag_sets.push(set),
            Err(mut found) => invalid.append(&mut found),
        }
        return FileParse {
            contents: file.contents.clone(),
            applications,
            templates,
            experiments,
            flag_sets,
            problems,
            invalid,
        };
    }
    for chunk in split_documents(&file.contents) {
        match read_document(&file.path, &chunk) {
            Ok(Some(Document::Application(app))) => {
                let revision = app.revision();
                let parsed = Parsed {
                    app: Arc::new(Declared {
                        value: app,
                        origin: chunk.origin(&file.path),
                        revision,
                    }),
                    text: DocumentText::of(&chunk),
                };
                invalid.extend(validate::document(&parsed));
                applications.push(Arc::new(parsed));
            }
            Ok(Some(Document::AnalysisTemplate(doc))) => {
                let template = Located {
                    value: doc.spec,
                    origin: chunk.origin(&file.path),
                };
                let (parsed, mut found) =
                    strategy::template(doc.metadata.name, template, DocumentText::of(&chunk));
                invalid.append(&mut found);
                templates.push(Arc::new(parsed));
            }
            Ok(Some(Document::ChaosExperiment(doc))) => {
                let spec = Located {
                    value: doc.spec,
                    origin: chunk.origin(&file.path),
                };
                let (parsed, mut found) =
                    experiment::experiment(doc.metadata.name, spec, DocumentText::of(&chunk));
                invalid.append(&mut found);
                experiments.push(Arc::new(parsed));
            }
            Ok(Some(Document::FeatureFlags(doc))) => {
                let (set, mut found) = flags::from_document(&file.path, &chunk, doc);
                if found.is_empty() {
                    flag_sets.push(set);
                }
                invalid.append(&mut found);
            }
            Ok(None) => {}
            Err(mut found) => problems.append(&mut found),
        }
    }
    FileParse {
        contents: file.contents.clone(),
        applications,
        templates,
        experiments,
        flag_sets,
        problems,
        invalid,
    }
}

/// An application document that parsed, with its text kept to place later diagnostics.
pub(crate) struct Parsed {
    pub app: Arc<Declared>,
    text: DocumentText,
}

impl Parsed {
    /// A diagnostic about `path`, at the field's position when known, else at the document.
    pub(crate) fn diagnostic(&self, path: &str, message: impl ToString) -> Diagnostic {
        self.text.diagnostic(&self.app.origin, path, message)
    }
}

/// A document's text, kept to place diagnostics found after it was read at a field.
pub(crate) struct DocumentText {
    text: String,
    line_offset: usize,
    first_line: usize,
}

impl DocumentText {
    pub(crate) fn of(chunk: &Chunk<'_>) -> Self {
        DocumentText {
            text: chunk.text.to_string(),
            line_offset: chunk.line_offset,
            first_line: chunk.first_line,
        }
    }

    /// A diagnostic about `path` of the document at `origin`, at the field's position when
    /// known, else at the document.
    ///
    /// Field positions are read only here, when there is a problem to place: valid documents
    /// (nearly all of them) are never read a third time.
    pub(crate) fn diagnostic(
        &self,
        origin: &Origin,
        path: &str,
        message: impl ToString,
    ) -> Diagnostic {
        let chunk = Chunk {
            text: &self.text,
            line_offset: self.line_offset,
            first_line: self.first_line,
        };
        let (line, column) = match FieldIndex::read(&chunk).position(path) {
            Some(position) => (position.line, position.column),
            None => (origin.line, 1),
        };
        Diagnostic {
            file: origin.file.clone(),
            line,
            column,
            field: Some(path.to_string()),
            message: message.to_string(),
        }
    }
}

/// One document's text, cut out of its file.
pub(crate) struct Chunk<'a> {
    pub text: &'a str,
    /// Lines of the file before `text`; added to positions within `text`.
    pub line_offset: usize,
    /// 1-based line, in the file, of the document's first line of content.
    pub first_line: usize,
}

impl Chunk<'_> {
    pub(crate) fn origin(&self, file: &str) -> Origin {
        Origin {
            file: file.to_string(),
            line: self.first_line,
        }
    }

    /// File position of a serde-saphyr location within this chunk.
    pub(crate) fn position(&self, location: Option<serde_saphyr::Location>) -> (usize, usize) {
        match location {
            Some(location) if location.line() > 0 => (
                self.line_offset + to_usize(location.line()),
                to_usize(location.column()).max(1),
            ),
            _ => (self.first_line, 1),
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Cuts a file into documents at `---` lines and after `...` lines, dropping documents that
/// hold only comments and blank lines.
///
/// YAML forbids a line that starts with `---` or `...` inside any scalar, so a line-based cut
/// is exact, and it keeps working past a syntax error in an earlier document.
pub(crate) fn split_documents(contents: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 0;
    let mut first_content = None;
    let mut offset = 0;
    for (index, line) in contents.split_inclusive('\n').enumerate() {
        let starts_document = is_marker(line, "---");
        let ends_document = is_marker(line, "...");
        if starts_document && offset > start {
            push_chunk(
                &mut chunks,
                &contents[start..offset],
                start_line,
                first_content,
            );
            (start, start_line, first_content) = (offset, index, None);
        }
        if first_content.is_none() && !ends_document && has_content(line, starts_document) {
            first_content = Some(index + 1);
        }
        offset += line.len();
        if ends_document {
            push_chunk(
                &mut chunks,
                &contents[start..offset],
                start_line,
                first_content,
            );
            (start, start_line, first_content) = (offset, index + 1, None);
        }
    }
    push_chunk(&mut chunks, &contents[start..], start_line, first_content);
    chunks
}

fn push_chunk<'a>(
    chunks: &mut Vec<Chunk<'a>>,
    text: &'a str,
    line_offset: usize,
    first_content: Option<usize>,
) {
    if let Some(first_line) = first_content {
        chunks.push(Chunk {
            text,
            line_offset,
            first_line,
        });
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether `line` holds YAML content: not blank, a comment, a directive or a bare `---`.
fn has_content(line: &str, starts_document: bool) -> bool {
    let rest = if starts_document {
        line.get(3..).unwrap_or_default()
    } else {
        line
    };
    let rest = rest.trim_start();
    !(rest.is_empty() || rest.starts_with('#') || (!starts_document && line.starts_with('%')))
}

/// What every document must say about itself before it can be read as its kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<Spanned<String>>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
}

/// Problems with a document's `apiVersion` or `kind`.
#[derive(Debug, thiserror::Error)]
enum HeaderError {
    #[error("missing field `apiVersion`, expected `{API_VERSION}`")]
    MissingApiVersion,
    #[error("unsupported apiVersion `{0}`, expected `{API_VERSION}`")]
    UnsupportedApiVersion(String),
    #[error("missing field `kind`, expected one of {}", known_kinds())]
    MissingKind,
    #[error("unknown kind `{found}`, expected one of {known}", known = known_kinds())]
    UnknownKind { found: String },
}

/// Reads one document: `Ok(None)` for an empty (null) document.
fn read_document(file: &str, chunk: &Chunk<'_>) -> Result<Option<Document>, Vec<Diagnostic>> {
    let Some(header) = deserialize::<Option<Header>>(file, chunk).map_err(|d| vec![d])? else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let header_problem = |field: &str, location: Option<serde_saphyr::Location>, error| {
        let (line, column) = chunk.position(location);
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            field: Some(field.to_string()),
            message: HeaderError::to_string(&error),
        }
    };
    match &header.api_version {
        None => problems.push(header_problem(
            "apiVersion",
            None,
            HeaderError::MissingApiVersion,
        )),
        Some(version) if version.value != API_VERSION => problems.push(header_problem(
            "apiVersion",
            Some(version.referenced),
            HeaderError::UnsupportedApiVersion(version.value.clone()),
        )),
        Some(_) => {}
    }
    let kind = match &header.kind {
        None => {
            problems.push(header_problem("kind", None, HeaderError::MissingKind));
            None
        }
        Some(kind) => {
            let known = Kind::from_name(&kind.value);
            if known.is_none() {
                problems.push(header_problem(
                    "kind",
                    Some(kind.referenced),
                    HeaderError::UnknownKind {
                        found: kind.value.clone(),
                    },
                ));
            }
            known
        }
    };
    match kind {
        Some(kind) if problems.is_empty() => kind.parse(file, chunk).map(Some).map_err(|d| vec![d]),
        _ => Err(problems),
    }
}

/// Deserializes one document strictly, turning any error into a diagnostic with its position
/// in the file and, when serde knows it, the field path.
pub(crate) fn deserialize<T: DeserializeOwned>(
    file: &str,
    chunk: &Chunk<'_>,
) -> Result<T, Diagnostic> {
    deserialize_with(file, chunk, false)
}

/// [`deserialize`] with YAML 1.2's booleans only (`true`/`false`; `on`, `off`, `yes`, `no` stay
/// strings), for documents whose free-form values are JSON: a flag set's variants are often
/// named `on` and `off`, as flagd (YAML 1.2) reads them.
pub(crate) fn deserialize_json_like<T: DeserializeOwned>(
    file: &str,
    chunk: &Chunk<'_>,
) -> Result<T, Diagnostic> {
    deserialize_with(file, chunk, true)
}

fn deserialize_with<T: DeserializeOwned>(
    file: &str,
    chunk: &Chunk<'_>,
    strict_booleans: bool,
) -> Result<T, Diagnostic> {
    let mut path = None;
    deserialize_yaml_with(chunk.text, strict_booleans, |de| {
        serde_path_to_error::deserialize(de).map_err(|error| {
            path = field_path_of(error.path());
            error.into_inner()
        })
    })
    .map_err(|error| {
        let (line, column) = chunk.position(error.location());
        let field = field_path(path, &error);
        let message = match error.without_snippet() {
            // Every kind is a mapping, so a document that is not is best told so plainly.
            serde_saphyr::Error::Unexpected { .. } if field.is_none() => {
                "a document must be a mapping with `apiVersion`, `kind`, `metadata` and `spec`"
                    .to_string()
            }
            other => message(other),
        };
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            field,
            message,
        }
    })
}

/// Runs `f` on a deserializer for one document with Gauntlet's options.
pub(crate) fn deserialize_yaml<'de, T, F>(text: &'de str, f: F) -> Result<T, serde_saphyr::Error>
where
    for<'e> F: FnOnce(serde_saphyr::Deserializer<'de, 'e>) -> Result<T, serde_saphyr::Error>,
{
    deserialize_yaml_with(text, false, f)
}

fn deserialize_yaml_with<'de, T, F>(
    text: &'de str,
    strict_booleans: bool,
    f: F,
) -> Result<T, serde_saphyr::Error>
where
    for<'e> F: FnOnce(serde_saphyr::Deserializer<'de, 'e>) -> Result<T, serde_saphyr::Error>,
{
    // Manifests are small and hand-written: tight limits turn an alias bomb or a runaway
    // generator into a clear error instead of a stalled reconciler.
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: strict_booleans,
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_nodes: 100_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_total_scalar_bytes: 8 * 1024 * 1024,
        },
    };
    serde_saphyr::with_deserializer_from_str_with_options(text, options, f)
}

/// `spec.dependsOn[1]`; segments serde could not name (such as a duplicate key) are left out.
fn field_path_of(path: &serde_path_to_error::Path) -> Option<String> {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Segment::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The field an error is about: serde's path, plus the field name for a missing field (serde
/// reports it at the enclosing mapping).
fn field_path(path: Option<String>, error: &serde_saphyr::Error) -> Option<String> {
    match error.without_snippet() {
        serde_saphyr::Error::SerdeMissingField { field, .. } => Some(match path {
            Some(parent) => format!("{parent}.{field}"),
            None => field.to_string(),
        }),
        _ => path,
    }
}

/// The error's text without position (the diagnostic carries it), in serde's usual wording,
/// with control characters escaped so a hostile file cannot drive the terminal.
fn message(error: &serde_saphyr::Error) -> String {
    let error = error.without_snippet();
    let text = match error {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => format!("unknown field `{field}`, {}", one_of(expected)),
        serde_saphyr::Error::SerdeUnknownVariant {
            variant, expected, ..
        } => format!("unknown variant `{variant}`, {}", one_of(expected)),
        serde_saphyr::Error::InvalidScalar { ty, .. } => {
            format!("invalid value, expected {}", describe_scalar(ty))
        }
        other => UserMessageFormatter.format_message(other).into_owned(),
    };
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// What a user should write for a Rust scalar type.
fn describe_scalar(ty: &str) -> String {
    match ty {
        "u16" => "a whole number from 0 to 65535".to_string(),
        "u32" => "a whole number from 0 to 4294967295".to_string(),
        "bool" => "true or false".to_string(),
        other => format!("a value of type {other}"),
    }
}

fn one_of(expected: &[&str]) -> String {
    let names: Vec<String> = expected.iter().map(|name| format!("`{name}`")).collect();
    match names.as_slice() {
        [] => "there are no fields".to_string(),
        [only] => format!("expected {only}"),
        _ => format!("expected one of {}", names.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "\
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: checkout
spec:
  process:
    command: [checkout]
";

    fn file(path: &str, contents: &str) -> SourceFile {
        SourceFile {
            path: path.to_string(),
            contents: contents.to_string(),
        }
    }

    #[test]
    fn a_reused_parser_gives_exactly_what_a_fresh_parse_gives() {
        let other = APP.replace("checkout", "cart");
        let mut parser = Parser::default();
        let tree1 = [file("a.yaml", APP), file("b.yaml", &other)];
        assert_eq!(parser.parse(&tree1), parse(&tree1));

        // One file changes, one is removed, one is added: the cache must not leak the old ones.
        let changed = APP.replace("[checkout]", "[checkout, --v2]");
        let tree2 = [
            file("a.yaml", &changed),
            file("c.yaml", &other.replace("cart", "pay")),
        ];
        let reused = parser.parse(&tree2).unwrap();
        assert_eq!(reused, parse(&tree2).unwrap());
        assert!(!reused.applications.contains_key("cart"));
        assert_ne!(
            reused.applications["checkout"].revision,
            parse(&tree1).unwrap().applications["checkout"].revision
        );

        // An invalid file is reported on every parse, not only the first.
        let bad = [file("a.yaml", &APP.replace("command", "comand"))];
        assert!(parser.parse(&bad).is_err());
        assert_eq!(parser.parse(&bad), parse(&bad));
    }

    fn errors(contents: &str) -> Vec<Diagnostic> {
        match parse(&[file("apps/checkout.yaml", contents)]) {
            Ok(state) => panic!("expected diagnostics, parsed {state:?}"),
            Err(Diagnostics(all)) => all,
        }
    }

    fn only_error(contents: &str) -> Diagnostic {
        let all = errors(contents);
        assert_eq!(all.len(), 1, "{all:#?}");
        all[0].clone()
    }

    #[test]
    fn valid_document_parses_with_its_origin() {
        let state = parse(&[file("apps/checkout.yaml", APP)]).unwrap();
        let app = &state.applications["checkout"];
        assert_eq!(app.value.spec.process.command, vec!["checkout"]);
        assert_eq!(app.value.spec.replicas, 1);
        assert_eq!(app.origin.file, "apps/checkout.yaml");
        assert_eq!(app.origin.line, 1);
    }

    #[test]
    fn several_documents_per_file_with_comments_and_empty_documents() {
        let contents = format!(
            "# leading comment\n---\n{APP}---\n# only a comment\n---\n---\n{}",
            APP.replace("checkout", "payments")
        );
        let state = parse(&[file("apps/all.yaml", &contents)]).unwrap();
        assert_eq!(state.applications.len(), 2);
        assert_eq!(state.applications["checkout"].origin.line, 3);
        assert_eq!(state.applications["payments"].origin.line, 14);
    }

    #[test]
    fn document_end_marker_separates_documents() {
        let contents = format!("{APP}...\n{}", APP.replace("checkout", "payments"));
        let state = parse(&[file("apps/all.yaml", &contents)]).unwrap();
        assert_eq!(state.applications["payments"].origin.line, 9);
    }

    #[test]
    fn unknown_field_names_file_line_and_path() {
        let error = only_error(&APP.replace("command:", "comand:"));
        assert_eq!(error.file, "apps/checkout.yaml");
        assert_eq!((error.line, error.column), (7, 5));
        assert_eq!(error.field.as_deref(), Some("spec.process.comand"));
        assert!(
            error
                .message
                .starts_with("unknown field `comand`, expected one of `command`, `args`"),
            "{error}"
        );
    }

    #[test]
    fn second_document_errors_report_lines_relative_to_file() {
        let second = APP
            .replace("checkout", "payments")
            .replace("command:", "comand:");
        let error = only_error(&format!("{APP}---\n{second}"));
        assert_eq!((error.line, error.column), (15, 5), "{error}");
        assert_eq!(error.field.as_deref(), Some("spec.process.comand"));
    }

    #[test]
    fn third_document_errors_report_lines_relative_to_file() {
        let third = APP
            .replace("checkout", "c")
            .replace("  name: c\n", "  name: c\n  nme: x\n");
        let contents = format!("{APP}---\n{}---\n{third}", APP.replace("checkout", "b"));
        let error = only_error(&contents);
        assert_eq!(
            (error.line, error.field.as_deref()),
            (21, Some("metadata.nme")),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_path() {
        let error = only_error(&APP.replace("spec:\n", "spec:\n  replicas: many\n"));
        assert_eq!((error.line, error.column), (6, 13), "{error}");
        assert_eq!(error.field.as_deref(), Some("spec.replicas"));
        assert_eq!(
            error.message,
            "invalid value, expected a whole number from 0 to 4294967295"
        );
    }

    #[test]
    fn wrong_type_inside_a_list_names_the_index() {
        let error = only_error(&APP.replace("[checkout]", "[checkout, {a: b}]"));
        assert_eq!(
            error.field.as_deref(),
            Some("spec.process.command[1]"),
            "{error}"
        );
        assert_eq!(error.line, 7);
    }

    #[test]
    fn missing_required_field_names_its_path() {
        let error = only_error(&APP.replace("    command: [checkout]\n", "    args: [x]\n"));
        assert_eq!(
            error.field.as_deref(),
            Some("spec.process.command"),
            "{error}"
        );
        assert!(error.message.contains("missing field `command`"), "{error}");
        assert!((6..=8).contains(&error.line), "{error}");
    }

    #[test]
    fn syntax_error_gives_file_line_and_column() {
        let error = only_error(&APP.replace("[checkout]", "[checkout"));
        assert_eq!(error.file, "apps/checkout.yaml");
        assert!((7..=8).contains(&error.line), "{error}");
        assert!(error.column >= 1);
    }

    #[test]
    fn syntax_error_in_one_document_does_not_hide_the_next() {
        let broken = APP.replace("[checkout]", "[checkout");
        let second = APP
            .replace("checkout", "payments")
            .replace("command:", "comand:");
        let all = errors(&format!("{broken}---\n{second}"));
        assert_eq!(all.len(), 2, "{all:#?}");
        assert_eq!(all[1].line, 15);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let error = only_error(&APP.replace("spec:\n", "spec:\n  replicas: 1\n  replicas: 2\n"));
        assert_eq!(
            (error.line, error.field.as_deref()),
            (7, Some("spec")),
            "{error}"
        );
        assert!(
            error.message.contains("duplicate mapping key `replicas`"),
            "{error}"
        );
    }

    #[test]
    fn missing_api_version_is_rejected() {
        let error = only_error(&APP.replace("apiVersion: gauntlet.dev/v1alpha1\n", ""));
        assert_eq!(
            (error.line, error.field.as_deref()),
            (1, Some("apiVersion"))
        );
        assert!(error.message.contains("gauntlet.dev/v1alpha1"), "{error}");
    }

    #[test]
    fn wrong_api_version_is_rejected_at_its_line() {
        let error = only_error(&APP.replace("v1alpha1", "v9"));
        assert_eq!((error.line, error.column), (1, 13), "{error}");
        assert_eq!(
            error.message,
            "unsupported apiVersion `gauntlet.dev/v9`, expected `gauntlet.dev/v1alpha1`"
        );
    }

    #[test]
    fn missing_kind_is_rejected() {
        let error = only_error(&APP.replace("kind: Application\n", ""));
        assert_eq!(error.field.as_deref(), Some("kind"));
        assert_eq!(
            error.message,
            "missing field `kind`, expected one of `Application`, `AnalysisTemplate`, \
             `ChaosExperiment`, `FeatureFlags`"
        );
    }

    #[test]
    fn unknown_kind_names_it_and_lists_known_kinds() {
        let error = only_error(&APP.replace("kind: Application", "kind: Rollout"));
        assert_eq!((error.line, error.field.as_deref()), (2, Some("kind")));
        assert_eq!(
            error.message,
            "unknown kind `Rollout`, expected one of `Application`, `AnalysisTemplate`, \
             `ChaosExperiment`, `FeatureFlags`"
        );
    }

    #[test]
    fn non_mapping_document_is_rejected() {
        let error = only_error("just a string\n");
        assert_eq!(
            error.to_string(),
            "apps/checkout.yaml:1:1: a document must be a mapping with `apiVersion`, `kind`, \
             `metadata` and `spec`"
        );
        let list = only_error("# a list\n- a\n");
        assert_eq!(list.line, 2, "{list}");
        assert!(
            list.message.starts_with("a document must be a mapping"),
            "{list}"
        );
    }

    #[test]
    fn control_characters_in_messages_are_escaped() {
        let error = only_error(&APP.replace(
            "  name: checkout\n",
            "  name: checkout\n  \"a\\u001b[31m\": x\n",
        ));
        assert!(!error.message.contains('\u{1b}'), "{error:?}");
        assert!(error.message.contains("\\u{1b}"), "{error:?}");
    }

    #[test]
    fn split_keeps_line_offsets_and_skips_empty_documents() {
        let chunks = split_documents("# c\n---\na: 1\n---\n\n---\nb: 2\n...\n");
        let lines: Vec<(usize, usize)> = chunks
            .iter()
            .map(|c| (c.line_offset, c.first_line))
            .collect();
        assert_eq!(lines, vec![(1, 3), (5, 7)]);
        assert_eq!(chunks[1].text, "---\nb: 2\n...\n");
    }

    #[test]
    fn marker_with_inline_content_starts_a_document_on_that_line() {
        let chunks = split_documents("a: 1\n--- {b: 2}\n");
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].first_line, 2);
    }
}
