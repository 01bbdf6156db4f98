//! What the HTTP server keeps in the ledger besides calls: client API keys
//! (hashes only) and a probe that the file can still be written.
//!
//! The keys live in the ledger because the ledger is already the one file
//! that must be backed up and kept private; a second store would be a second
//! thing to lose.

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{Ledger, LedgerError};

/// One API key as stored: never the key itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Public id (also the key's middle part).
    pub id: String,
    /// Hex SHA-256 of the whole key.
    #[serde(skip)]
    pub key_sha256: String,
    /// Whose budget the key's calls use.
    pub user_id: String,
    /// A label for people.
    pub name: Option<String>,
    /// May act for other users and set budgets.
    pub admin: bool,
    /// When it was created, unix ms.
    pub created_ms: i64,
    /// When it was revoked, unix ms.
    pub revoked_ms: Option<i64>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        key_sha256: r.get(1)?,
        user_id: r.get(2)?,
        name: r.get(3)?,
        admin: r.get::<_, i64>(4)? != 0,
        created_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

const COLUMNS: &str = "id, key_sha256, user_id, name, admin, created_ms, revoked_ms";

impl Ledger {
    /// Stores a new key's hash.
    pub fn insert_api_key(&self, k: &ApiKeyRow) -> Result<(), LedgerError> {
        self.lock()
            .execute(
                "INSERT INTO api_keys (id, key_sha256, user_id, name, admin, created_ms, revoked_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    k.id,
                    k.key_sha256,
                    k.user_id,
                    k.name,
                    k.admin as i64,
                    k.created_ms,
                    k.revoked_ms
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The key with this public id, revoked or not.
    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, LedgerError> {
        self.lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every key, oldest first.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRow>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM api_keys ORDER BY created_ms, id"
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_map([], row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))
    }

    /// Number of keys not revoked.
    pub fn active_api_keys(&self) -> Result<u64, LedgerError> {
        self.lock()
            .query_row(
                "SELECT count(*) FROM api_keys WHERE revoked_ms IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Marks a key revoked. Returns false if no such key is active.
    pub fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, LedgerError> {
        self.lock()
            .execute(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Takes and drops the write lock: succeeds only if a call could be
    /// recorded now (the file is writable and no other process holds the
    /// lock past the busy timeout). Used by the readiness probe.
    pub fn check_writable(&self) -> Result<(), LedgerError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        tx.rollback().map_err(|e| self.err(e))
    }
}

/// API-key lookups on a read-only connection of their own.
///
/// Every HTTP request checks its key. On the ledger's one connection that
/// check would queue behind call settlements and holds; in WAL mode a
/// second connection reads beside the writer instead, and still sees a
/// revocation (from `keys revoke` in another process) at its next lookup,
/// since each lookup is its own read transaction.
pub struct KeyReader {
    ledger: Ledger,
    conn: Mutex<Option<Connection>>,
}

/// How long a lookup waits on a lock (a checkpoint, WAL recovery).
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl KeyReader {
    /// A reader over `ledger`'s file. The connection opens on first use.
    pub fn new(ledger: &Ledger) -> KeyReader {
        KeyReader {
            ledger: ledger.clone(),
            conn: Mutex::new(None),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            self.ledger.path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(READER_BUSY_TIMEOUT)?;
        Ok(conn)
    }

    /// The key with this public id, revoked or not. Falls back to the
    /// ledger's own connection if a reader cannot be opened or fails (a
    /// read-only ledger opened `immutable`, say), so a lookup never fails
    /// where the ledger itself would answer.
    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, LedgerError> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = self.open().ok();
        }
        if let Some(conn) = slot.as_ref() {
            let found = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"))
                .and_then(|mut stmt| stmt.query_row([id], row).optional());
            match found {
                Ok(found) => return Ok(found),
                Err(e) => {
                    tracing::debug!(error = %e, "key reader failed; using the ledger connection");
                    *slot = None;
                }
            }
        }
        drop(slot);
        self.ledger.api_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_reader_sees_inserts_and_revocations_from_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let l = Ledger::open(&path).unwrap();
        let reader = KeyReader::new(&l);
        assert_eq!(reader.api_key("abc").unwrap(), None);
        let k = ApiKeyRow {
            id: "abc".into(),
            key_sha256: "00".into(),
            user_id: "alice".into(),
            name: None,
            admin: false,
            created_ms: 5,
            revoked_ms: None,
        };
        l.insert_api_key(&k).unwrap();
        assert_eq!(reader.api_key("abc").unwrap(), Some(k));
        assert!(
            reader.conn.lock().unwrap().is_some(),
            "a connection of its own"
        );
        // Revoked by another process (another connection to the file).
        let other = Ledger::open(&path).unwrap();
        assert!(other.revoke_api_key("abc", 9).unwrap());
        assert_eq!(reader.api_key("abc").unwrap().unwrap().revoked_ms, Some(9));
    }

    #[test]
    fn keys_round_trip_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let k = ApiKeyRow {
            id: "abc".into(),
            key_sha256: "00".into(),
            user_id: "alice".into(),
            name: Some("laptop".into()),
            admin: false,
            created_ms: 5,
            revoked_ms: None,
        };
        l.insert_api_key(&k).unwrap();
        assert_eq!(l.api_key("abc").unwrap(), Some(k.clone()));
        assert_eq!(l.active_api_keys().unwrap(), 1);
        assert!(l.revoke_api_key("abc", 9).unwrap());
        assert!(!l.revoke_api_key("abc", 10).unwrap(), "already revoked");
        assert_eq!(l.api_key("abc").unwrap().unwrap().revoked_ms, Some(9));
        assert_eq!(l.active_api_keys().unwrap(), 0);
        assert_eq!(l.api_keys().unwrap().len(), 1);
        l.check_writable().unwrap();
    }
}
