//! Where a controller keeps its state, and how the CLI finds a running controller.
//!
//! Layout of a state directory: `token` (the admin bearer token, mode 0600), `controller.json`
//! (the API address of the running controller), `state.redb` (the store), `git/` (the bare
//! cache of the repository), `runtime/` (instance records), `logs/` and `artifacts/`.
//!
//! Whoever can write the state directory can replace the token or the instance records, so
//! `gauntlet up` creates it private (0700), refuses one that others can write, and never
//! changes the mode of a directory it did not create.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The state directory: the flag or `GAUNTLET_STATE_DIR`, else `$XDG_STATE_HOME/gauntlet`,
/// else `~/.local/state/gauntlet`.
pub fn state_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    resolve_state_dir(
        flag,
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn resolve_state_dir(
    flag: Option<PathBuf>,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if let Some(xdg) = xdg_state_home.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("gauntlet"));
    }
    match home.filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/gauntlet")),
        // A shared fallback such as /tmp would let other users plant or read the token.
        None => bail!(
            "no state directory: HOME and XDG_STATE_HOME are unset; pass --state-dir DIR or set GAUNTLET_STATE_DIR"
        ),
    }
}

/// What a running controller writes so the CLI can find it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControllerInfo {
    pub listen: String,
    pub pid: u32,
}

pub fn write_controller_info(dir: &Path, info: &ControllerInfo) -> Result<()> {
    let path = dir.join("controller.json");
    let tmp = dir.join("controller.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(info)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn read_controller_info(dir: &Path) -> Result<ControllerInfo> {
    let path = dir.join("controller.json");
    let bytes = fs::read(&path).with_context(|| {
        format!(
            "no controller found: {} is missing (start one with `gauntlet up`, or pass the state directory it uses with --state-dir)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", path.display()))
}

/// The admin token: `GAUNTLET_TOKEN`, else the state directory's `token` file.
pub fn read_token(dir: &Path) -> Result<String> {
    if let Ok(t) = std::env::var("GAUNTLET_TOKEN") {
        if !t.is_empty() {
            return Ok(t);
        }
    }
    read_token_file(dir)
}

/// The state directory's `token` file, without looking at `GAUNTLET_TOKEN`.
pub fn read_token_file(dir: &Path) -> Result<String> {
    let path = dir.join("token");
    let token = fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the API token at {} (set GAUNTLET_TOKEN, or use the controller's --state-dir)",
            path.display()
        )
    })?;
    Ok(token.trim().to_string())
}

/// Prepares the state directory for a controller and returns the admin token: creates the
/// directory (0700) or checks an existing one, then checks the token file (ours, 0600) or
/// creates it with a random token.
pub fn ensure_state_dir(dir: &Path) -> Result<String> {
    prepare_dir(dir)?;
    let path = dir.join("token");
    let opened = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path);
    let mut file = match opened {
        Ok(mut f) => {
            check_token_file(&f, &path)?;
            let mut existing = String::new();
            f.read_to_string(&mut existing)
                .with_context(|| format!("reading {}", path.display()))?;
            let t = existing.trim();
            if !t.is_empty() {
                return Ok(t.to_string());
            }
            f.set_len(0)?;
            f.rewind()?;
            f
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{} is a symbolic link; the token file must be a regular file (remove it and start again)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let token = new_token()?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    Ok(token)
}

/// Creates `dir` with mode 0700, or checks that an existing one is a directory of ours that
/// no one else can write. An existing directory's mode is left alone: it may hold other files
/// whose permissions its owner chose.
fn prepare_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("the state directory {} is not a directory", dir.display());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "the state directory {} belongs to uid {}, not to this user (uid {me}); use a directory of your own with --state-dir",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        bail!(
            "the state directory {} is writable by other users (mode {mode:o}), who could replace the API token or the instance records; run `chmod go-w {}` or use another --state-dir",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The token file must be a regular file of ours; one readable by others is tightened to 0600.
fn check_token_file(file: &fs::File, path: &Path) -> Result<()> {
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "the token file {} belongs to uid {}, not to this user (uid {me}); remove it or use another --state-dir",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode != 0o600 {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting {} to mode 0600", path.display()))?;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the token file {} had mode {mode:o}, open to other users; it is now 0600 (if others may have read it, delete it and restart to get a new token)",
                path.display()
            );
        }
    }
    Ok(())
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a new token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_flag_wins_then_xdg_then_home() {
        let flag = resolve_state_dir(Some("/s".into()), Some("/x".into()), Some("/h".into()));
        assert_eq!(flag.unwrap(), PathBuf::from("/s"));
        let xdg = resolve_state_dir(None, Some("/x".into()), Some("/h".into()));
        assert_eq!(xdg.unwrap(), PathBuf::from("/x/gauntlet"));
        let home = resolve_state_dir(None, Some("".into()), Some("/h".into()));
        assert_eq!(home.unwrap(), PathBuf::from("/h/.local/state/gauntlet"));
    }

    #[test]
    fn without_home_or_xdg_there_is_no_default_state_dir() {
        let err = resolve_state_dir(None, None, None).unwrap_err().to_string();
        assert!(err.contains("--state-dir"), "{err}");
        assert!(resolve_state_dir(None, None, Some("".into())).is_err());
    }

    #[test]
    fn a_new_state_dir_is_private_and_gets_a_private_token() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/state");
        let token = ensure_state_dir(&dir).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("token")), 0o600);
        assert_eq!(ensure_state_dir(&dir).unwrap(), token);
    }

    #[test]
    fn an_existing_state_dir_keeps_its_mode() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_state_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o755);
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_state_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("writable by other users"), "{err}");
        assert!(!dir.join("token").exists());
        assert_eq!(mode(&dir), 0o777);
    }

    #[test]
    fn a_loose_token_file_is_tightened_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("token"), "abc\n").unwrap();
        fs::set_permissions(dir.join("token"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(ensure_state_dir(&dir).unwrap(), "abc");
        assert_eq!(mode(&dir.join("token")), 0o600);
    }

    #[test]
    fn a_token_file_that_is_a_symlink_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::write(root.path().join("elsewhere"), "abc\n").unwrap();
        std::os::unix::fs::symlink(root.path().join("elsewhere"), dir.join("token")).unwrap();
        let err = ensure_state_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn an_empty_token_file_gets_a_new_token() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("token"))
            .unwrap();
        let token = ensure_state_dir(&dir).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(read_token_file(&dir).unwrap(), token);
    }
}
