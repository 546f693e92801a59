//! Reading a tree of manifests from disk: every `*.yaml`, `*.yml` and `*.json` under a root (the
//! files the Git source hands over), in a stable order, so that parsing a checkout gives the
//! same result on every machine.

use std::fs;
use std::io;
use std::path::Path;

use crate::parse::SourceFile;

/// Reads `*.yaml`, `*.yml` and `*.json` files (`*.flagd.json` are flag sets) under `root` recursively (skip dot-directories such as
/// .git), sorted by path. Paths are relative to `root` and '/'-separated.
///
/// Symbolic links to directories are not followed, so a link cannot make the walk loop. An
/// error names the file or directory it is about.
pub fn read_dir(root: &Path) -> io::Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    walk(root, "", &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<SourceFile>) -> io::Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| with_path(e, dir))? {
        let entry = entry.map_err(|e| with_path(e, dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let relative = format!("{prefix}{name}");
        let file_type = entry.file_type().map_err(|e| with_path(e, &path))?;
        if file_type.is_dir() {
            if !name.starts_with('.') {
                walk(&path, &format!("{relative}/"), files)?;
            }
        } else if is_manifest_name(&name) && path.is_file() {
            let contents = fs::read_to_string(&path).map_err(|e| with_path(e, &path))?;
            files.push(SourceFile {
                path: relative,
                contents,
            });
        }
    }
    Ok(())
}

/// The same endings as the Git source's, case-insensitive.
fn is_manifest_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_and_json_recursively_sorted_skipping_dot_directories() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let write = |path: &str| -> io::Result<()> {
            let full = root.path().join(path);
            if let Some(parent) = full.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(full, path)
        };
        for path in [
            "b.yaml",
            "apps/z.yml",
            "apps/a.yaml",
            "README.md",
            ".git/x.yaml",
            "a.flagd.json",
        ] {
            write(path)?;
        }
        let files = read_dir(root.path())?;
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["a.flagd.json", "apps/a.yaml", "apps/z.yml", "b.yaml"]
        );
        assert_eq!(files[1].contents, "apps/a.yaml");
        Ok(())
    }

    #[test]
    fn missing_root_is_an_error_naming_it() {
        let error = read_dir(Path::new("/nonexistent/gauntlet")).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("/nonexistent/gauntlet"), "{message}");
    }
}
