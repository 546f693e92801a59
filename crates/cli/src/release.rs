//! `gauntlet release APP --set FIELD=VALUE`: the step a CI pipeline runs after publishing a
//! build. It changes fields of one Application manifest in Git as one commit, and with
//! `--push` pushes it; the controller then rolls the change out.
//!
//! Where it works: `--repo` naming a local working copy (a directory with `.git`, the default
//! `.`) is edited in place and committed on its branch, which must be checked out and whose
//! manifest file must have no uncommitted changes; `--push` then pushes the branch to
//! `--remote`. Any other `--repo` (a URL, a bare repository) is fetched into a temporary
//! working copy; without `--push` that is a dry run: the commit is made, printed and thrown
//! away.
//!
//! How it edits: surgically. The manifest is parsed once more with positions (serde-saphyr,
//! the spec crate's parser), and only the bytes of the one scalar each FIELD names are
//! replaced, keeping its quoting style; everything else in the file (comments, order,
//! indentation, other documents) stays byte for byte. A key missing from a block mapping that
//! exists is added as the mapping's first entry. Block scalars (`|`, `>`), anchors, aliases and
//! tags are refused, as are scalars spanning several lines, and any edit whose re-parsed document differs from the original in
//! anything but that field. The whole tree is then validated as the controller would before
//! anything is committed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use gauntlet_source::revert::document_range;
use gauntlet_source::{Identity, WorkingCopy};
use gauntlet_spec::SourceFile;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

#[derive(Args)]
pub struct ReleaseArgs {
    /// The Application to change (`metadata.name`).
    app: String,
    /// A field of the Application and its new value, e.g. `spec.process.args[3]=v2` or
    /// `spec.process.artifact.url=https://...`; repeat for several (one commit).
    #[arg(long = "set", value_name = "FIELD=VALUE", required = true)]
    set: Vec<String>,
    /// A local working copy (edited in place) or any repository git can fetch (edited in a
    /// temporary clone).
    #[arg(long, default_value = ".")]
    repo: String,
    /// The branch to change.
    #[arg(long, default_value = "main")]
    branch: String,
    /// Sub-directory of the repository holding the manifests, as given to `gauntlet up`.
    #[arg(long, default_value = "")]
    path: String,
    /// The commit message (default `release APP: FIELD=VALUE, ...`).
    #[arg(long)]
    message: Option<String>,
    /// The commit's author, "Name <email>" (default: git's configured user).
    #[arg(long, value_parser = parse_identity)]
    author: Option<Identity>,
    /// Push the commit to the branch (never forced).
    #[arg(long)]
    push: bool,
    /// Where a local working copy pushes to: a remote's name or a URL.
    #[arg(long, default_value = "origin")]
    remote: String,
    #[command(flatten)]
    git: crate::git_auth::GitAuthArgs,
}

fn parse_identity(s: &str) -> Result<Identity, String> {
    s.parse()
}

pub fn run(args: ReleaseArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(release(args))
}

/// Removes the temporary clone however the release ends.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn release(args: ReleaseArgs) -> Result<ExitCode> {
    let edits = args
        .set
        .iter()
        .map(|s| Edit::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let auth = args.git.auth()?;
    let local = Path::new(&args.repo).join(".git").is_dir();
    let mut scratch = Scratch(None);
    let copy = if local {
        WorkingCopy::open(Path::new(&args.repo), &args.branch, &args.remote, auth).await?
    } else {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("gauntlet-release-{}-{nanos}", std::process::id()));
        scratch.0 = Some(dir.clone());
        WorkingCopy::clone(&args.repo, &args.branch, auth, &dir, Some(1)).await?
    };

    let head = copy.head().await?;
    let mut files = copy.manifests(&head, &args.path).await?;
    let state = gauntlet_spec::parse(&files).map_err(|d| {
        anyhow::anyhow!("the manifests at {head} do not validate; fix them first:\n{d}")
    })?;
    let Some(declared) = state.applications.get(&args.app) else {
        let known: Vec<&str> = state.applications.keys().map(String::as_str).collect();
        bail!(
            "no Application named {:?} under {:?} at {head} (found: {})",
            args.app,
            if args.path.is_empty() {
                "."
            } else {
                &args.path
            },
            known.join(", ")
        );
    };
    let file = declared.origin.file.clone();
    if local && !copy.is_unmodified(&file).await? {
        bail!("{file} has uncommitted changes in {}; commit or stash them first, so that the release commits only its own change", args.repo);
    }
    let Some(index) = files.iter().position(|f| f.path == file) else {
        bail!("{file} is not among the manifests read");
    };
    let text = files[index].contents.clone();
    let range = document_range(&text, declared.origin.line);
    let line_offset = text[..range.start].matches('\n').count();
    let mut doc = text[range.clone()].to_string();
    for edit in &edits {
        doc = set_field(&doc, &edit.path, &edit.value).map_err(|e| {
            anyhow::anyhow!(
                "{file}:{}: {}: {}",
                e.line + line_offset,
                edit.field,
                e.message
            )
        })?;
    }
    let edited = format!("{}{doc}{}", &text[..range.start], &text[range.end..]);
    if edited == text {
        eprintln!("nothing to change: {file} already has those values; no commit made");
        println!("{head}");
        return Ok(ExitCode::SUCCESS);
    }
    files[index] = SourceFile {
        path: file.clone(),
        contents: edited.clone(),
    };
    match gauntlet_spec::parse(&files) {
        Ok(state) if state.applications.contains_key(&args.app) => {}
        Ok(_) => bail!("after the change, {file} no longer defines {:?}", args.app),
        Err(d) => bail!("the change would make the manifests invalid; nothing committed:\n{d}"),
    }

    copy.write(&file, &edited).await?;
    let message = args.message.clone().unwrap_or_else(|| {
        let sets: Vec<String> = edits
            .iter()
            .map(|e| format!("{}={}", e.field, e.value))
            .collect();
        format!("release {}: {}", args.app, sets.join(", "))
    });
    let commit = copy
        .commit(&[&file], &message, args.author.as_ref())
        .await?;
    if args.push {
        copy.push().await?;
        eprintln!(
            "pushed {commit} to {} of {}",
            args.branch,
            gauntlet_source::redact_url(&args.repo)
        );
    } else if local {
        eprintln!(
            "committed {commit} on {} (not pushed: no --push)",
            args.branch
        );
    } else {
        eprintln!("dry run: {commit} was made in a temporary clone and is discarded (no --push)");
    }
    println!("{commit}");
    Ok(ExitCode::SUCCESS)
}

/// One `--set FIELD=VALUE`.
struct Edit {
    field: String,
    path: Vec<Segment>,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Edit {
    fn parse(s: &str) -> Result<Edit> {
        let Some((field, value)) = s.split_once('=') else {
            bail!("--set {s:?}: expected FIELD=VALUE");
        };
        let path = parse_path(field).map_err(|e| anyhow::anyhow!("--set {s:?}: {e}"))?;
        if value.chars().any(|c| c.is_control() && c != '\t') {
            bail!("--set {field}: the value contains a line break or control character");
        }
        Ok(Edit {
            field: field.to_string(),
            path,
            value: value.to_string(),
        })
    }
}

/// `spec.process.args[3]` → `[spec, process, args, 3]`.
fn parse_path(field: &str) -> Result<Vec<Segment>, String> {
    let mut path = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return Err(format!(
                "{field:?} is not a field path like spec.process.args[3]"
            ));
        }
        path.push(Segment::Key(key.to_string()));
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((index, after)) = inner.split_once(']') else {
                return Err(format!("{field:?}: unclosed `[`"));
            };
            let index = index
                .parse()
                .map_err(|_| format!("{field:?}: {index:?} is not a list index"))?;
            path.push(Segment::Index(index));
            rest = after;
        }
        if !rest.is_empty() {
            return Err(format!(
                "{field:?} is not a field path like spec.process.args[3]"
            ));
        }
    }
    if path.first() == Some(&Segment::Key("metadata".into())) {
        return Err("metadata is not changed by a release".into());
    }
    Ok(path)
}

/// Why a field could not be set; `line` is 1-based within the document.
#[derive(Debug)]
struct EditError {
    line: usize,
    message: String,
}

/// A YAML node with what an edit needs: scalars' kinds and where keys and values are.
enum Node {
    Scalar(ScalarKind),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScalarKind {
    String,
    /// Numbers, booleans and null.
    Other,
}

/// Sets the scalar at `path` of the YAML document `doc` to `value`, changing nothing else.
fn set_field(doc: &str, path: &[Segment], value: &str) -> Result<String, EditError> {
    let root: Spanned<Node> = serde_saphyr::from_str(doc).map_err(|e| EditError {
        line: 1,
        message: format!("the document does not read as YAML: {e}"),
    })?;
    let fail = |line: u64, message: String| EditError {
        line: usize::try_from(line).unwrap_or(1).max(1),
        message,
    };
    let mut node = &root;
    let mut walked = String::new();
    let (edited, replaced) = 'found: {
        for (i, segment) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            match (segment, &node.value) {
                (Segment::Key(key), Node::Map(entries)) => {
                    match entries.iter().find(|(k, _)| &k.value == key) {
                        Some((_, child)) => node = child,
                        None if last => {
                            break 'found (insert_key(doc, entries, key, value, node)?, None);
                        }
                        None => {
                            return Err(fail(
                                node.referenced.line(),
                                format!("{walked} has no `{key}`; add it to the manifest first"),
                            ))
                        }
                    }
                }
                (Segment::Index(index), Node::Seq(items)) => match items.get(*index) {
                    Some(child) => node = child,
                    None => {
                        return Err(fail(
                            node.referenced.line(),
                            format!(
                                "index {index} is out of range: {walked} has {} items",
                                items.len()
                            ),
                        ))
                    }
                },
                (Segment::Key(key), _) => {
                    return Err(fail(
                        node.referenced.line(),
                        format!("{walked} is not a mapping, so it has no `{key}`"),
                    ))
                }
                (Segment::Index(index), _) => {
                    return Err(fail(
                        node.referenced.line(),
                        format!("{walked} is not a list, so it has no item [{index}]"),
                    ))
                }
            }
            match segment {
                Segment::Key(k) if walked.is_empty() => walked.push_str(k),
                Segment::Key(k) => {
                    walked.push('.');
                    walked.push_str(k);
                }
                Segment::Index(i) => walked.push_str(&format!("[{i}]")),
            }
        }
        let Node::Scalar(kind) = node.value else {
            return Err(fail(
                node.referenced.line(),
                "is a mapping or a list, not a single value".into(),
            ));
        };
        let span = node.referenced.span();
        let (Some(start), Some(len)) = (span.byte_offset(), span.byte_len()) else {
            return Err(fail(
                node.referenced.line(),
                "its position is unknown".into(),
            ));
        };
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        let Some(old) = doc.get(start..end) else {
            return Err(fail(
                node.referenced.line(),
                "its position is unknown".into(),
            ));
        };
        if old.contains('\n') {
            return Err(fail(
                node.referenced.line(),
                "spans several lines (a block or folded scalar); edit it by hand".into(),
            ));
        }
        let rendered = match old.chars().next() {
            Some('"') => double_quoted(value),
            Some('\'') if value.chars().all(|c| !c.is_control()) => {
                format!("'{}'", value.replace('\'', "''"))
            }
            Some('\'') => double_quoted(value),
            Some('|' | '>' | '&' | '*' | '!') => {
                return Err(fail(
                    node.referenced.line(),
                    "is a block scalar, an anchor, an alias or tagged; edit it by hand".into(),
                ))
            }
            _ if plain_keeps_kind(value, kind) => value.to_string(),
            _ => double_quoted(value),
        };
        let edited = format!("{}{rendered}{}", &doc[..start], &doc[end..]);
        (edited, Some(node.referenced.line()))
    };
    verify(doc, &edited, path, value).map_err(|message| {
        fail(
            replaced.unwrap_or_else(|| root.referenced.line()),
            format!("cannot be changed safely here ({message}); edit it by hand"),
        )
    })?;
    Ok(edited)
}

/// Adds `key: value` as the first entry of a block mapping (`parent`) that has entries.
fn insert_key(
    doc: &str,
    entries: &[(Spanned<String>, Spanned<Node>)],
    key: &str,
    value: &str,
    parent: &Spanned<Node>,
) -> Result<String, EditError> {
    let refuse = || {
        EditError {
        line: usize::try_from(parent.referenced.line()).unwrap_or(1).max(1),
        message: format!(
            "has no `{key}`, and it can only be added to a block mapping that already has entries; add it by hand"
        ),
    }
    };
    let (first, _) = entries.first().ok_or_else(refuse)?;
    let offset = first
        .referenced
        .span()
        .byte_offset()
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(refuse)?;
    let line_start = doc[..offset].rfind('\n').map_or(0, |i| i + 1);
    let indent = &doc[line_start..offset];
    if !indent.chars().all(|c| c == ' ') {
        return Err(refuse());
    }
    let plain_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !plain_key {
        return Err(refuse());
    }
    let rendered = if plain_keeps_kind(value, ScalarKind::String) {
        value.to_string()
    } else {
        double_quoted(value)
    };
    Ok(format!(
        "{}{key}: {rendered}\n{indent}{}",
        &doc[..offset],
        &doc[offset..]
    ))
}

/// Whether `value` written plain reads back as the same text and of the same kind as the
/// scalar it replaces (a version `1.10` replacing a string must stay a string).
fn plain_keeps_kind(value: &str, kind: ScalarKind) -> bool {
    let Some(first) = value.chars().next() else {
        return false;
    };
    let indicator = "?:,[]{}#&*!|>'\"%@`".contains(first)
        || (first == '-' && value.chars().nth(1).is_none_or(|c| c == ' '));
    if indicator
        || value.trim() != value
        || value.contains(": ")
        || value.contains(" #")
        || value.ends_with(':')
        || value.contains([',', '[', ']', '{', '}'])
    {
        return false;
    }
    match serde_saphyr::from_str::<Value>(value) {
        Ok(Value::String(s)) => kind == ScalarKind::String && s == value,
        Ok(Value::Number(_) | Value::Bool(_)) => kind == ScalarKind::Other,
        _ => false,
    }
}

fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks that `edited` reads as `original` with only the field at `path` changed, to `value`.
fn verify(original: &str, edited: &str, path: &[Segment], value: &str) -> Result<(), String> {
    let mut before: Value = serde_saphyr::from_str(original).map_err(|e| e.to_string())?;
    let mut after: Value =
        serde_saphyr::from_str(edited).map_err(|e| format!("the result does not parse: {e}"))?;
    let new = pointer_mut(&mut after, path).ok_or("the field is gone after the edit")?;
    let reads = match &*new {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    if reads != value {
        return Err(format!("it would read back as {reads:?}"));
    }
    *new = Value::Null;
    match pointer_mut(&mut before, path) {
        Some(old) => *old = Value::Null,
        None => {
            let (last, parent) = path.split_last().ok_or("empty path")?;
            if let (Segment::Key(k), Some(Value::Object(map))) =
                (last, pointer_mut(&mut before, parent))
            {
                map.insert(k.clone(), Value::Null);
            }
        }
    }
    if before != after {
        return Err("other fields would change too".into());
    }
    Ok(())
}

fn pointer_mut<'a>(mut v: &'a mut Value, path: &[Segment]) -> Option<&'a mut Value> {
    for segment in path {
        v = match segment {
            Segment::Key(k) => v.as_object_mut()?.get_mut(k)?,
            Segment::Index(i) => v.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(v)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::String))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(ScalarKind::Other))
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

    const DOC: &str = "# the web app\nkind: Application\nspec:\n  replicas: 2 # two\n  process:\n    command: [web]\n    args: [\"--listen\", \"127.0.0.1:${PORT}\", \"--version\", \"v1\"]  # keep\n    env:\n      MODE: 'fast'   # quoted\n      VERSION: v1\n    artifact:\n      url: https://example.com/a/v1.tar.gz\n      sha256: aaaa\n  items:\n  - first\n  - second # 2nd\n";

    fn set(doc: &str, field: &str, value: &str) -> Result<String, EditError> {
        set_field(doc, &parse_path(field).unwrap(), value)
    }

    #[test]
    fn a_flow_list_item_keeps_its_quotes_and_the_rest_of_the_line() {
        let out = set(DOC, "spec.process.args[3]", "v2").unwrap();
        assert_eq!(out, DOC.replace("\"v1\"]  # keep", "\"v2\"]  # keep"));
    }

    #[test]
    fn plain_and_single_quoted_values_keep_their_style_and_comments() {
        let out = set(DOC, "spec.process.env.VERSION", "v2.1").unwrap();
        assert_eq!(out, DOC.replace("VERSION: v1", "VERSION: v2.1"));
        let out = set(DOC, "spec.process.env.MODE", "it's").unwrap();
        assert_eq!(out, DOC.replace("'fast'", "'it''s'"));
        let out = set(DOC, "spec.items[1]", "third").unwrap();
        assert_eq!(out, DOC.replace("- second # 2nd", "- third # 2nd"));
        let out = set(DOC, "spec.replicas", "3").unwrap();
        assert_eq!(out, DOC.replace("replicas: 2 # two", "replicas: 3 # two"));
    }

    #[test]
    fn a_value_that_would_change_type_is_quoted() {
        let out = set(DOC, "spec.process.env.VERSION", "1.10").unwrap();
        assert_eq!(out, DOC.replace("VERSION: v1", "VERSION: \"1.10\""));
        let out = set(DOC, "spec.process.artifact.sha256", "a: b #c").unwrap();
        assert_eq!(out, DOC.replace("sha256: aaaa", "sha256: \"a: b #c\""));
    }

    #[test]
    fn a_missing_key_of_a_block_mapping_is_added_first() {
        let out = set(DOC, "spec.process.env.COLOR", "blue").unwrap();
        assert_eq!(
            out,
            DOC.replace("      MODE:", "      COLOR: blue\n      MODE:")
        );
    }

    #[test]
    fn what_does_not_exist_is_refused_with_its_line() {
        let err = set(DOC, "spec.process.args[9]", "x").unwrap_err();
        assert!(err.message.contains("out of range"), "{err:?}");
        assert_eq!(err.line, 7);
        let err = set(DOC, "spec.nothing.here", "x").unwrap_err();
        assert!(err.message.contains("no `nothing`"), "{err:?}");
        let err = set(DOC, "spec.process", "x").unwrap_err();
        assert!(err.message.contains("not a single value"), "{err:?}");
    }

    #[test]
    fn multi_line_scalars_are_refused() {
        let doc = "spec:\n  note: |\n    text\n";
        let err = set(doc, "spec.note", "x").unwrap_err();
        assert!(err.message.contains("several lines"), "{err:?}");
        let doc = "spec:\n  note: >-\n    folded\n    text\nnext: 1\n";
        assert!(set(doc, "spec.note", "x").is_err());
    }

    #[test]
    fn field_paths_read_keys_and_indexes() {
        assert_eq!(
            parse_path("spec.process.args[3]").unwrap(),
            vec![
                Segment::Key("spec".into()),
                Segment::Key("process".into()),
                Segment::Key("args".into()),
                Segment::Index(3)
            ]
        );
        assert!(parse_path("spec..x").is_err());
        assert!(parse_path("spec.args[x]").is_err());
        assert!(parse_path("metadata.name").is_err());
    }
}
