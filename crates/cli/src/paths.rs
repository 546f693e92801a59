//! Where a controller keeps its state, and how the CLI finds a running controller.
//!
//! Layout of a state directory: `token` (the admin bearer token, mode 0600), `controller.json`
//! (the API address of the running controller), `state.redb` (the store), `git/` (the bare
//! cache of the repository), `runtime/` (instance records), `logs/` and `artifacts/`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The state directory: the flag or `GAUNTLET_STATE_DIR`, else `$XDG_STATE_HOME/gauntlet`,
/// else `~/.local/state/gauntlet`.
pub fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = flag {
        return dir;
    }
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("gauntlet");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/gauntlet")
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
    let path = dir.join("token");
    let token = fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the API token at {} (set GAUNTLET_TOKEN, or use the controller's --state-dir)",
            path.display()
        )
    })?;
    Ok(token.trim().to_string())
}

/// Creates the state directory (0700) and, at first start, a random token file (0600).
pub fn ensure_state_dir(dir: &Path) -> Result<String> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", dir.display()))?;
    let path = dir.join("token");
    if let Ok(existing) = fs::read_to_string(&path) {
        let t = existing.trim();
        if !t.is_empty() {
            return Ok(t.to_string());
        }
    }
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for a new token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(token)
}
