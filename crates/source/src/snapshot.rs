//! What a commit looks like to Gauntlet: its id, first message line, author, and the manifest
//! files under the configured sub-path. This module holds the pure parts: which tree entries
//! count as manifests, and how git's `ls-tree -r -l -z`, `cat-file --batch` and raw commit
//! formats are read.

use crate::SourceError;

pub use gauntlet_spec::SourceFile;

/// Largest manifest file accepted. A larger file rejects the whole commit: skipping it would make
/// the applications it defines look deleted.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// File name endings that are read as manifests (compared case-insensitively).
pub const MANIFEST_EXTENSIONS: [&str; 3] = [".yaml", ".yml", ".json"];

/// The manifests of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Full commit id.
    pub commit: String,
    /// First line of the commit message.
    pub message: String,
    /// `Name <email>` of the author.
    pub author: String,
    /// Manifest files under the sub-path, sorted by path; paths are relative to the repository
    /// root (`apps/checkout.yaml`), so errors point at the file a user would open.
    pub files: Vec<SourceFile>,
}

/// A configured sub-path in git's form: `None` for the whole repository, otherwise a relative
/// path without `./`, empty components or a trailing slash.
pub(crate) fn normalize_sub_path(path: &str) -> Result<Option<String>, SourceError> {
    let invalid = |why: &str| SourceError::InvalidConfig {
        reason: format!("sub-path {path:?} {why}"),
    };
    let trimmed = path.trim();
    if trimmed.starts_with('/') {
        return Err(invalid("must be relative to the repository root"));
    }
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("must not contain `..`")),
            p if p.contains('\\') || p.chars().any(char::is_control) => {
                return Err(invalid("must use `/` and contain no control characters"))
            }
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    })
}

/// One blob listed by `git ls-tree -r -l -z`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeFile {
    pub path: String,
    pub object: String,
    pub size: u64,
}

/// Reads `ls-tree -r -l -z` output and keeps the manifest files. Returns them and the number of
/// entries of any kind seen (zero means the sub-path does not exist).
pub(crate) fn manifest_entries(
    listing: &[u8],
    commit: &str,
) -> Result<(Vec<TreeFile>, usize), SourceError> {
    let mut seen = 0;
    let mut files = Vec::new();
    for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        seen += 1;
        let Some(tab) = record.iter().position(|b| *b == b'\t') else {
            return Err(unexpected("ls-tree", record));
        };
        let (meta, raw_path) = (&record[..tab], &record[tab + 1..]);
        let meta = std::str::from_utf8(meta).map_err(|_| unexpected("ls-tree", record))?;
        let fields: Vec<&str> = meta.split_ascii_whitespace().collect();
        let [mode, kind, object, size] = fields[..] else {
            return Err(unexpected("ls-tree", record));
        };
        // Regular files only: symlinks hold a target path, submodules ("commit") no content here.
        if kind != "blob" || !(mode == "100644" || mode == "100755") {
            continue;
        }
        if !is_manifest_name(raw_path) {
            continue;
        }
        let path = String::from_utf8(raw_path.to_vec()).map_err(|_| SourceError::NotUtf8 {
            commit: commit.to_string(),
            path: String::from_utf8_lossy(raw_path).into_owned(),
        })?;
        let size: u64 = size.parse().map_err(|_| unexpected("ls-tree", record))?;
        if size > MAX_FILE_BYTES {
            return Err(SourceError::FileTooLarge {
                commit: commit.to_string(),
                path,
                size,
                limit: MAX_FILE_BYTES,
            });
        }
        files.push(TreeFile {
            path,
            object: object.to_string(),
            size,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((files, seen))
}

fn is_manifest_name(path: &[u8]) -> bool {
    let lower = path.to_ascii_lowercase();
    MANIFEST_EXTENSIONS
        .iter()
        .any(|ext| lower.ends_with(ext.as_bytes()))
}

/// One object from `git cat-file --batch`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BatchObject<'a> {
    pub kind: &'a str,
    pub content: &'a [u8],
}

/// Splits `cat-file --batch` output (`<oid> <type> <size>\n<content>\n`, or `<name> missing\n`)
/// into objects, in request order; `None` for a missing one.
pub(crate) fn parse_batch(mut out: &[u8]) -> Result<Vec<Option<BatchObject<'_>>>, SourceError> {
    let mut objects = Vec::new();
    while !out.is_empty() {
        let Some(eol) = out.iter().position(|b| *b == b'\n') else {
            return Err(unexpected("cat-file", out));
        };
        let header =
            std::str::from_utf8(&out[..eol]).map_err(|_| unexpected("cat-file", &out[..eol]))?;
        let rest = &out[eol + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        match fields[..] {
            [_, "missing"] | [_, "ambiguous"] => {
                objects.push(None);
                out = rest;
            }
            [_, kind, size] => {
                let size: usize = size
                    .parse()
                    .map_err(|_| unexpected("cat-file", header.as_bytes()))?;
                if rest.len() < size + 1 || rest[size] != b'\n' {
                    return Err(unexpected("cat-file", header.as_bytes()));
                }
                objects.push(Some(BatchObject {
                    kind,
                    content: &rest[..size],
                }));
                out = &rest[size + 1..];
            }
            _ => return Err(unexpected("cat-file", header.as_bytes())),
        }
    }
    Ok(objects)
}

/// The author (`Name <email>`) and first message line of a raw commit object.
pub(crate) fn parse_commit(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw);
    let (headers, message) = text.split_once("\n\n").unwrap_or((&text, ""));
    let author = headers
        .lines()
        .find_map(|line| line.strip_prefix("author "))
        // `Name <email> 1700000000 +0100`: drop the time and zone.
        .map(|a| match a.rfind('>') {
            Some(end) => a[..=end].to_string(),
            None => a.to_string(),
        })
        .unwrap_or_default();
    let first_line = message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    (author, first_line)
}

fn unexpected(command: &str, near: &[u8]) -> SourceError {
    let near: String = String::from_utf8_lossy(near).chars().take(120).collect();
    SourceError::Git {
        command: format!("git {command}"),
        stderr: format!("unexpected output near {near:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_are_normalized_and_root_is_none() {
        assert_eq!(normalize_sub_path("").unwrap(), None);
        assert_eq!(normalize_sub_path(".").unwrap(), None);
        assert_eq!(normalize_sub_path("./").unwrap(), None);
        assert_eq!(normalize_sub_path("./apps/").unwrap(), Some("apps".into()));
        assert_eq!(
            normalize_sub_path("envs//prod/./").unwrap(),
            Some("envs/prod".into())
        );
    }

    #[test]
    fn sub_paths_cannot_escape_the_repository() {
        assert!(normalize_sub_path("/etc").is_err());
        assert!(normalize_sub_path("apps/../..").is_err());
    }

    fn listing(entries: &[&str]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.bytes().chain([0])).collect()
    }

    #[test]
    fn only_regular_yaml_and_json_files_are_manifests() {
        let out = listing(&[
            "100644 blob aaaa      12\tapps/b.yaml",
            "100755 blob bbbb       3\tapps/a.YML",
            "100644 blob cccc       4\tapps/c.json",
            "100644 blob dddd       5\tapps/README.md",
            "120000 blob eeee       6\tapps/link.yaml",
            "160000 commit ffff       -\tapps/sub.yaml",
        ]);
        let (files, seen) = manifest_entries(&out, "c0ffee").unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["apps/a.YML", "apps/b.yaml", "apps/c.json"]);
        assert_eq!(seen, 6);
        assert_eq!(
            files[1],
            TreeFile {
                path: "apps/b.yaml".into(),
                object: "aaaa".into(),
                size: 12
            }
        );
    }

    #[test]
    fn an_oversized_manifest_rejects_the_commit_naming_the_file() {
        let out = listing(&["100644 blob aaaa 1048577\tapps/huge.yaml"]);
        let err = manifest_entries(&out, "c0ffee").err().unwrap();
        assert!(
            matches!(err, SourceError::FileTooLarge { ref path, size: 1_048_577, .. } if path == "apps/huge.yaml")
        );
    }

    #[test]
    fn a_path_with_a_tab_or_newline_survives_nul_separation() {
        let out = listing(&["100644 blob aaaa 1\tweird\tname\n.yaml"]);
        let (files, _) = manifest_entries(&out, "c").unwrap();
        assert_eq!(files[0].path, "weird\tname\n.yaml");
    }

    #[test]
    fn batch_output_is_split_into_objects_in_order() {
        let out = b"1111 commit 5\nhello\n2222 missing\n3333 blob 0\n\n4444 blob 3\na\nb\n";
        let objects = parse_batch(out).unwrap();
        assert_eq!(objects.len(), 4);
        assert_eq!(
            objects[0],
            Some(BatchObject {
                kind: "commit",
                content: b"hello"
            })
        );
        assert_eq!(objects[1], None);
        assert_eq!(
            objects[2],
            Some(BatchObject {
                kind: "blob",
                content: b""
            })
        );
        assert_eq!(
            objects[3],
            Some(BatchObject {
                kind: "blob",
                content: b"a\nb"
            })
        );
    }

    #[test]
    fn truncated_batch_output_is_an_error() {
        assert!(parse_batch(b"1111 blob 10\nshort\n").is_err());
    }

    #[test]
    fn commit_author_and_subject_are_read_from_the_raw_object() {
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
parent 1111111111111111111111111111111111111111\n\
author Ada Lovelace <ada@example.com> 1700000000 +0100\n\
committer Bot <bot@example.com> 1700000001 +0000\n\
gpgsig -----BEGIN PGP SIGNATURE-----\n \n abc\n -----END PGP SIGNATURE-----\n\
\n\
Scale checkout to 3\n\nBecause Black Friday.\n";
        let (author, message) = parse_commit(raw);
        assert_eq!(author, "Ada Lovelace <ada@example.com>");
        assert_eq!(message, "Scale checkout to 3");
    }
}
