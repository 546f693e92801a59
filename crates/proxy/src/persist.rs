//! The accepted configuration on disk, so a proxy started alone serves its last one.
//!
//! The file is replaced atomically (write a temporary file, fsync it, rename it over the old
//! one, fsync the directory): after a crash at any point the file holds either the previous
//! configuration or the new one, whole.
//!
//! Beside it, `proxy.json` says which process serves and where its admin API listens
//! ([`ProcessInfo`]), written once the admin API is bound: the controller reads it to find a
//! proxy it started earlier (or that was restarted on another port) and to adopt it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{LoadError, ProxyConfig};

/// Why the persisted configuration could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source} (fix or remove the file to start without a configuration)")]
    Load { path: PathBuf, source: LoadError },
}

/// `<state-dir>/proxy/config.json`.
pub fn config_path(state_dir: &Path) -> PathBuf {
    state_dir.join("proxy").join("config.json")
}

/// `<state-dir>/proxy/proxy.json`.
pub fn process_path(state_dir: &Path) -> PathBuf {
    state_dir.join("proxy").join("proxy.json")
}

/// The running proxy, as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub pid: u32,
    /// Where the admin API listens (the bound address, so `:0` resolves to a real port).
    pub admin: std::net::SocketAddr,
}

/// Announces the running proxy, replacing the file atomically.
pub fn write_process_info(state_dir: &Path, info: &ProcessInfo) -> Result<(), PersistError> {
    let path = process_path(state_dir);
    let dir = state_dir.join("proxy");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PersistError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join("proxy.json.tmp");
    let bytes = serde_json::to_vec(info).map_err(|e| PersistError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

/// The proxy that last announced itself, if the file exists and parses.
pub fn read_process_info(state_dir: &Path) -> Option<ProcessInfo> {
    let bytes = fs::read(process_path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The persisted configuration, or `None` when there is none yet.
pub fn load(state_dir: &Path) -> Result<Option<ProxyConfig>, PersistError> {
    let path = config_path(state_dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path, source }),
    };
    ProxyConfig::from_json(&bytes)
        .map(Some)
        .map_err(|source| PersistError::Load { path, source })
}

/// Replaces the persisted configuration with `config`, atomically.
pub fn save(state_dir: &Path, config: &ProxyConfig) -> Result<(), PersistError> {
    let path = config_path(state_dir);
    let dir = state_dir.join("proxy");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PersistError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join("config.json.tmp");
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| PersistError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_configuration_loads_back_and_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("gauntlet-persist-{}", std::process::id()));
        assert!(load(&dir).unwrap().is_none());
        let config = ProxyConfig::from_json(
            br#"{"version": 7, "apps": [{"name": "a", "listen": "127.0.0.1:1",
                "revisions": [{"name": "v1", "weight": 10000,
                               "endpoints": [{"addr": "127.0.0.1:2"}]}]}]}"#,
        )
        .unwrap();
        save(&dir, &config).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(config));
        fs::remove_dir_all(&dir).unwrap();
    }
}
