//! Artifacts: builds of an application fetched from `http(s)://` or `file://`, verified
//! against the manifest's SHA-256 and cached by that hash in `{state}/artifacts/{sha256}/`.
//!
//! The hash is the cache key, so a second instance (or a second revision with the same build)
//! reuses the directory without downloading, and concurrent starts of the same artifact wait
//! for one download. Bytes are verified before anything is unpacked or made executable; a
//! mismatch is an error and nothing is kept. The cache directory appears with one `rename`
//! once it is complete, so a crash mid-download never leaves a half-unpacked build that
//! looks valid; leftovers (`.partial-*`) are removed when the runtime opens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gauntlet_spec::Artifact;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::RuntimeError;

pub(crate) struct ArtifactStore {
    root: PathBuf,
    client: reqwest::Client,
    /// One lock per hash, so concurrent starts download once.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ArtifactStore {
    pub fn new(root: PathBuf, client: reqwest::Client) -> Self {
        ArtifactStore {
            root,
            client,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Removes what interrupted downloads left behind. Called only while holding the state
    /// directory's lock, so no other download is in progress.
    pub fn remove_partials(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(".partial-") {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }

    /// The directory holding the verified, unpacked artifact; downloads it if not cached.
    pub async fn fetch(&self, artifact: &Artifact) -> Result<PathBuf, RuntimeError> {
        let url = artifact.url.as_str();
        let err = |reason: String| RuntimeError::Artifact {
            url: url.to_string(),
            reason,
        };
        let sha = artifact.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!(
                "sha256 {:?} is not 64 hexadecimal digits",
                artifact.sha256
            )));
        }
        let dir = self.root.join(&sha);
        if dir.is_dir() {
            return Ok(dir);
        }
        let lock = {
            let mut inflight = self
                .inflight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            inflight.entry(sha.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if dir.is_dir() {
            return Ok(dir);
        }

        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| err(format!("cannot create {}: {e}", self.root.display())))?;
        let download = self.root.join(format!(".partial-{sha}.download"));
        let partial = self.root.join(format!(".partial-{sha}"));
        let result = self
            .download_verify_unpack(url, &sha, &download, &partial, &dir)
            .await;
        let _ = tokio::fs::remove_file(&download).await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&partial).await;
        }
        result.map_err(err)?;
        Ok(dir)
    }

    async fn download_verify_unpack(
        &self,
        url: &str,
        sha: &str,
        download: &Path,
        partial: &Path,
        dir: &Path,
    ) -> Result<(), String> {
        let actual = self.download(url, download).await?;
        if actual != sha {
            return Err(format!(
                "sha256 mismatch: the manifest expects {sha} but the downloaded bytes hash to \
                 {actual}; refusing to run it (fix the URL or the sha256)"
            ));
        }
        let _ = tokio::fs::remove_dir_all(partial).await;
        tokio::fs::create_dir_all(partial)
            .await
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        if is_archive(url) {
            let (from, to) = (download.to_path_buf(), partial.to_path_buf());
            tokio::task::spawn_blocking(move || unpack(&from, &to))
                .await
                .map_err(|e| format!("unpacking was interrupted: {e}"))?
                .map_err(|e| format!("cannot unpack the .tar.gz: {e}"))?;
        } else {
            let target = partial.join(file_name(url));
            tokio::fs::rename(download, &target)
                .await
                .map_err(|e| format!("cannot store {}: {e}", target.display()))?;
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .await
                .map_err(|e| format!("cannot make {} executable: {e}", target.display()))?;
        }
        tokio::fs::rename(partial, dir)
            .await
            .map_err(|e| format!("cannot move the artifact into {}: {e}", dir.display()))
    }

    /// Writes the bytes at `url` to `dest`; returns their SHA-256 in lower-case hex.
    async fn download(&self, url: &str, dest: &Path) -> Result<String, String> {
        let mut out = tokio::fs::File::create(dest)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        let mut hasher = Sha256::new();
        let write_error = |e: std::io::Error| format!("cannot write {}: {e}", dest.display());
        if let Some(path) = url.strip_prefix("file://") {
            let mut src = tokio::fs::File::open(path)
                .await
                .map_err(|e| format!("cannot open {path}: {e}"))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = src
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("cannot read {path}: {e}"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).await.map_err(write_error)?;
            }
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let mut response = self
                .client
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("download failed: {e}"))?;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("download interrupted: {e}"))?
            {
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(write_error)?;
            }
        } else {
            return Err("unsupported URL scheme; use http://, https:// or file://".into());
        }
        out.flush().await.map_err(write_error)?;
        out.sync_all().await.map_err(write_error)?;
        Ok(hex::encode(hasher.finalize()))
    }
}

fn url_path(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn is_archive(url: &str) -> bool {
    let path = url_path(url);
    path.ends_with(".tar.gz") || path.ends_with(".tgz")
}

/// The file name an executable artifact is stored under: the URL's last path segment.
fn file_name(url: &str) -> String {
    match url_path(url).rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_string(),
        _ => "artifact".to_string(),
    }
}

fn unpack(archive: &Path, into: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(archive)?;
    // `Archive::unpack` refuses entries that would land outside `into` (`..`, absolute paths).
    tar::Archive::new(flate2::read::GzDecoder::new(file)).unpack(into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_recognised_by_suffix_ignoring_the_query() {
        assert!(is_archive("https://x/app-v2.tar.gz?token=1"));
        assert!(is_archive("file:///tmp/app.tgz"));
        assert!(!is_archive("https://x/app"));
    }

    #[test]
    fn executables_are_named_after_the_last_segment() {
        assert_eq!(file_name("https://x/dl/server?v=2"), "server");
        assert_eq!(file_name("https://x/dl/"), "artifact");
    }

    #[tokio::test]
    async fn a_malformed_sha256_is_rejected_before_any_download() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path().to_path_buf(), reqwest::Client::new());
        let err = store
            .fetch(&Artifact {
                url: "file:///etc/hostname".into(),
                sha256: "../../etc".into(),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("64 hexadecimal"), "{err}");
    }
}
