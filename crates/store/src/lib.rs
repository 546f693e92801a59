//! The controller's durable memory: an embedded, transactional [redb] database under the state
//! directory.
//!
//! It holds two things. An append-only **audit log** ([`AuditRecord`]): every action the
//! controller takes, with the commit or user that caused it, in the order it happened. And a
//! small **key-value area** for the controller's own state (the last good commit, each
//! application's status), stored as JSON so it can evolve without migrations.
//!
//! Every write is one redb transaction committed with fsync: a `kill -9` at any moment leaves
//! either the old or the new value, never a torn one, and never loses an acknowledged record.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");
const STATE: TableDefinition<&str, &str> = TableDefinition::new("state");

/// Who caused an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "camelCase")]
pub enum Actor {
    /// A Git commit (its SHA).
    Commit(String),
    /// A person through the CLI or API (their user name).
    User(String),
    /// The controller on its own (self-heal, runtime events).
    Controller,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Commit(sha) => write!(f, "commit {}", short(sha)),
            Actor::User(name) => write!(f, "user {name}"),
            Actor::Controller => f.write_str("controller"),
        }
    }
}

fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Position in the log, assigned on append (1, 2, ...).
    #[serde(default)]
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub actor: Actor,
    /// The application concerned, or empty for source-wide actions.
    pub app: String,
    /// A verb: `create`, `scale`, `update`, `prune`, `restart`, `reject`, `sync`...
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub before: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after: String,
    pub reason: String,
}

impl AuditRecord {
    /// A record stamped with the current time.
    pub fn now(actor: Actor, app: &str, action: &str, reason: impl Into<String>) -> Self {
        AuditRecord {
            seq: 0,
            time_ms: now_ms(),
            actor,
            app: app.to_string(),
            action: action.to_string(),
            before: String::new(),
            after: String::new(),
            reason: reason.into(),
        }
    }

    /// Adds the before → after of the change.
    pub fn change(mut self, before: impl Into<String>, after: impl Into<String>) -> Self {
        self.before = before.into();
        self.after = after.into();
        self
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason} (is another controller running on this state directory?)")]
    Open { path: String, reason: String },
    #[error("store: {0}")]
    Db(String),
    #[error("store value {key} is not valid JSON for its type: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The store. Cheap to share behind an `Arc`; redb serializes writers itself.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file. Fails if another process holds it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(STATE).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// Appends records in one transaction and returns them with their sequence numbers.
    pub fn append(&self, records: Vec<AuditRecord>) -> Result<Vec<AuditRecord>, StoreError> {
        self.commit(&[], records)
    }

    /// Writes state values and appends audit records in one transaction: both or neither, so
    /// a state change is never without its record.
    pub fn commit(
        &self,
        puts: &[(&str, &str)],
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        if puts.is_empty() && records.is_empty() {
            return Ok(records);
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut out = Vec::with_capacity(records.len());
        {
            let mut state = txn.open_table(STATE).map_err(db_err)?;
            for (key, json) in puts {
                state.insert(*key, *json).map_err(db_err)?;
            }
            let mut table = txn.open_table(AUDIT).map_err(db_err)?;
            let first = match table.last().map_err(db_err)? {
                Some((k, _)) => k.value() + 1,
                None => 1,
            };
            for (seq, mut rec) in (first..).zip(records) {
                rec.seq = seq;
                let json = serde_json::to_string(&rec).map_err(db_err)?;
                table.insert(seq, json.as_str()).map_err(db_err)?;
                out.push(rec);
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    /// Stores `value` as JSON under `key` and appends `records`, in one transaction.
    pub fn put_with_records<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let json = serde_json::to_string(value).map_err(db_err)?;
        self.commit(&[(key, json.as_str())], records)
    }

    /// The last `limit` audit records, oldest first, optionally only those of one application.
    pub fn history(&self, app: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)?.rev() {
            let (key, value) = entry.map_err(db_err)?;
            let rec: AuditRecord =
                serde_json::from_str(value.value()).map_err(|source| StoreError::Decode {
                    key: key.value().to_string(),
                    source,
                })?;
            if app.is_none_or(|a| rec.app == a) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Number of audit records.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        table.len().map_err(db_err)
    }

    /// Stores `value` as JSON under `key`.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.put_with_records(key, value, Vec::new()).map(drop)
    }

    /// Reads the JSON value under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(STATE).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(v) => {
                serde_json::from_str(v.value())
                    .map(Some)
                    .map_err(|source| StoreError::Decode {
                        key: key.to_string(),
                        source,
                    })
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn appended_records_get_increasing_sequence_numbers_and_survive_reopen() {
        let (dir, store) = store();
        let recs = store
            .append(vec![
                AuditRecord::now(Actor::Commit("abc".into()), "a", "create", "new"),
                AuditRecord::now(Actor::Controller, "b", "restart", "died"),
            ])
            .unwrap();
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        drop(store);
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let more = store
            .append(vec![AuditRecord::now(
                Actor::User("ana".into()),
                "a",
                "sync",
                "asked",
            )])
            .unwrap();
        assert_eq!(more[0].seq, 3);
        assert_eq!(store.audit_len().unwrap(), 3);
    }

    #[test]
    fn history_filters_by_application_and_keeps_the_newest_oldest_first() {
        let (_dir, store) = store();
        for i in 0..5 {
            let app = if i % 2 == 0 { "a" } else { "b" };
            store
                .append(vec![AuditRecord::now(
                    Actor::Controller,
                    app,
                    "x",
                    format!("{i}"),
                )])
                .unwrap();
        }
        let a = store.history(Some("a"), 2).unwrap();
        assert_eq!(
            a.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
            vec!["2", "4"]
        );
        assert_eq!(store.history(None, 100).unwrap().len(), 5);
    }

    #[test]
    fn a_state_value_and_its_records_are_written_together() {
        let (_dir, store) = store();
        let recs = store
            .put_with_records(
                "snapshot",
                &"abc",
                vec![AuditRecord::now(
                    Actor::Commit("abc".into()),
                    "",
                    "apply",
                    "x",
                )],
            )
            .unwrap();
        assert_eq!(recs[0].seq, 1);
        assert_eq!(
            store.get::<String>("snapshot").unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(store.history(None, 10).unwrap()[0].action, "apply");
    }

    #[test]
    fn state_values_round_trip_as_json() {
        let (_dir, store) = store();
        assert_eq!(store.get::<String>("k").unwrap(), None);
        store.put("k", &vec![1, 2, 3]).unwrap();
        assert_eq!(store.get::<Vec<i32>>("k").unwrap(), Some(vec![1, 2, 3]));
        assert!(store.get::<String>("k").is_err());
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_with_a_clear_error() {
        let (dir, _store) = store();
        let err = match Store::open(&dir.path().join("state.redb")) {
            Ok(_) => panic!("second open succeeded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("another controller"), "{err}");
    }
}
