//! The runtime's memory across controller restarts: one record per instance in
//! `{state}/runtime/instances.json`, rewritten atomically (temporary file, fsync, rename,
//! fsync of the directory) after every change, so a controller killed at any moment leaves
//! either the old or the new file, never a torn one.
//!
//! A record names the process by pid *and* start time (field 22 of `/proc/{pid}/stat`): a
//! pid alone may have been reused by an unrelated process after a reboot or a long outage.
//!
//! A record also says whether the instance was ready, so a controller that restarts can show
//! an adopted, serving process as ready at once instead of withdrawing it until its probe
//! passes again. The file is rewritten whenever readiness changes (not at every probe).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{InstanceId, InstanceSpec, RuntimeError};

/// Bumped when the file's shape changes incompatibly.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceRecord {
    pub id: InstanceId,
    pub spec: InstanceSpec,
    pub port: u16,
    /// The running process, if any.
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub restarts: u32,
    pub created_ms: u64,
    /// The instance was `Phase::Ready` when the record was written. Absent in files written
    /// before this field existed, which load as not ready.
    #[serde(default)]
    pub ready: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordsFile {
    version: u32,
    instances: Vec<InstanceRecord>,
}

fn state_error(path: &Path, source: io::Error) -> RuntimeError {
    RuntimeError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the records; a missing file means no instances.
pub(crate) fn load(path: &Path) -> Result<Vec<InstanceRecord>, RuntimeError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_error(path, e)),
    };
    let file: RecordsFile = serde_json::from_slice(&bytes)
        .map_err(|e| state_error(path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
    if file.version != FORMAT_VERSION {
        return Err(state_error(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "format version {} is not {FORMAT_VERSION}; written by another Gauntlet release",
                    file.version
                ),
            ),
        ));
    }
    Ok(file.instances)
}

/// Replaces the records atomically.
pub(crate) fn save(path: &Path, instances: Vec<InstanceRecord>) -> Result<(), RuntimeError> {
    let file = RecordsFile {
        version: FORMAT_VERSION,
        instances,
    };
    let bytes = serde_json::to_vec_pretty(&file)
        .map_err(|e| state_error(path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let tmp = path.with_extension("json.tmp");
    let write = || -> io::Result<()> {
        // Owner-only: specs carry environment variables, which may hold secrets.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| state_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gauntlet_spec::ProcessSpec;

    #[test]
    fn records_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        assert!(load(&path).unwrap().is_empty());
        let record = InstanceRecord {
            id: InstanceId("web-abc-1".into()),
            spec: InstanceSpec {
                app: "web".into(),
                revision: "abc".into(),
                process: ProcessSpec::new(["sleep", "1"]),
                readiness: None,
            },
            port: 1234,
            pid: Some(42),
            start_time: Some(99),
            restarts: 2,
            created_ms: 7,
            ready: true,
        };
        save(&path, vec![record.clone()]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![record]);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_file_written_before_readiness_was_recorded_loads_as_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        let old = r#"{
          "version": 1,
          "instances": [{
            "id": "web-abc-k3x9q",
            "spec": {
              "app": "web",
              "revision": "abc",
              "process": { "command": ["sleep", "1"] },
              "readiness": null
            },
            "port": 1234,
            "pid": 42,
            "startTime": 99,
            "restarts": 0,
            "createdMs": 7
          }]
        }"#;
        fs::write(&path, old).unwrap();
        let records = load(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].pid, Some(42));
        assert!(!records[0].ready);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("instances.json"), "{err}");
    }
}
