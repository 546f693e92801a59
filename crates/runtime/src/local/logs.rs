//! Instance log files: where they live, their tail, and copy-truncate rotation.
//!
//! Each instance writes to `{state}/logs/{app}/{instance}.log`, opened with `O_APPEND` and
//! handed to the process as stdout and stderr. The file is the only channel between an
//! instance and Gauntlet, so the CLI reads logs straight from disk even when no controller
//! runs. Rotation is copy-truncate (as logrotate's `copytruncate`): the instance keeps its
//! file descriptor and, thanks to `O_APPEND`, continues writing at the new end of the
//! truncated file. Lines written between the copy and the truncation are lost; that window
//! is a few milliseconds every 10 MiB.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A live log larger than this is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept beside the live one: `{name}.log.1` (newest) to `{name}.log.3`.
pub const ROTATED_LOGS_KEPT: u32 = 3;

/// The directory holding the logs of `app`'s instances.
pub fn log_dir(state_dir: &Path, app: &str) -> PathBuf {
    state_dir.join("logs").join(app)
}

/// The live log file of one instance.
pub fn log_file(state_dir: &Path, app: &str, instance: &str) -> PathBuf {
    log_dir(state_dir, app).join(format!("{instance}.log"))
}

/// The live log files (`*.log`) of `app`'s instances, sorted by name; rotated files
/// (`*.log.1` ...) sit beside them. Empty when the app has no logs.
pub fn log_files(state_dir: &Path, app: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(log_dir(state_dir, app)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

/// Opens (creating it and its directory) a log file for appending.
pub(crate) fn open_for_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` when it is larger than `max_bytes`; returns whether it did.
pub(crate) fn rotate_if_needed(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    for n in (1..ROTATED_LOGS_KEPT).rev() {
        match fs::rename(rotated(path, n), rotated(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::copy(path, rotated(path, 1))?;
    // Truncate through a separate descriptor: the instance's O_APPEND descriptor then
    // writes at the new end of file, 0.
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The last `lines` lines of a log file (at most its last 64 KiB), for crash-loop reports.
pub(crate) fn tail(path: &Path, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let Ok(text) = read() else {
        return Vec::new();
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_shifts_copies_and_truncates_keeping_three() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("a.log");
        let mut writer = open_for_append(&live).unwrap();
        for round in 1..=4 {
            writeln!(writer, "round {round} xxxxxxxxxxxxxxxxxxxx").unwrap();
            assert!(rotate_if_needed(&live, 10).unwrap());
        }
        assert_eq!(fs::metadata(&live).unwrap().len(), 0);
        let read = |n| fs::read_to_string(rotated(&live, n)).unwrap();
        assert!(read(1).starts_with("round 4"));
        assert!(read(2).starts_with("round 3"));
        assert!(read(3).starts_with("round 2"));
        assert!(!rotated(&live, 4).exists());
        // The writer's O_APPEND descriptor continues at the start of the truncated file.
        writeln!(writer, "after").unwrap();
        assert_eq!(fs::read_to_string(&live).unwrap(), "after\n");
    }

    #[test]
    fn small_or_missing_logs_are_not_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("a.log");
        assert!(!rotate_if_needed(&live, 10).unwrap());
        fs::write(&live, "short").unwrap();
        assert!(!rotate_if_needed(&live, 10).unwrap());
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("a.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        fs::write(&live, text).unwrap();
        let t = tail(&live, 20);
        assert_eq!(t.len(), 20);
        assert_eq!(t[0], "line 11");
        assert_eq!(t[19], "line 30");
        assert!(tail(&dir.path().join("missing.log"), 20).is_empty());
    }

    #[test]
    fn log_files_lists_live_logs_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = log_dir(dir.path(), "web");
        fs::create_dir_all(&d).unwrap();
        for name in ["b.log", "a.log", "a.log.1"] {
            fs::write(d.join(name), "").unwrap();
        }
        assert_eq!(
            log_files(dir.path(), "web"),
            vec![d.join("a.log"), d.join("b.log")]
        );
        assert!(log_files(dir.path(), "none").is_empty());
    }
}
