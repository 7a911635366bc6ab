//! The audit log: every write through the API (who, when, from where, what,
//! before → after, reason), append-only and hash-chained.
//!
//! Entries live in an SQLite table in the data dir. Each row stores
//! `hash = sha256(prev_hash ‖ "\n" ‖ canonical(entry))` where `canonical` is a JSON array of
//! the entry's fields in a fixed order, including its sequence number. So:
//! - an edited row no longer matches its own hash;
//! - a deleted row leaves a gap in `seq` and breaks the next row's `prev_hash`;
//! - reordered rows carry the wrong `seq` inside their hash.
//!
//! Triggers refuse `UPDATE` and `DELETE` (against accidents); someone with the file and a
//! SQLite shell can drop them, which the chain then reveals. Truncating the tail is the one
//! edit a chain cannot show by itself: the running process remembers the head it wrote and
//! [`AuditLog::verify`] reports a shorter log, and the head hash is logged (tracing) at
//! every append so an external log collector holds an independent copy.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Mutex;

/// Hash of the (virtual) entry before the first: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors of the audit store.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite failed.
    #[error("audit log: {0}")]
    Db(#[from] rusqlite::Error),
    /// The mutex was poisoned by a panic elsewhere.
    #[error("audit log: lock poisoned")]
    Poisoned,
}

/// What to record (the caller's part of an entry).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewEntry {
    /// Who (username, or `token:<name>`-qualified).
    pub actor: String,
    /// From where (client IP).
    pub ip: String,
    /// What: an action name such as `alarm.ack`, `limits.set`, `login`.
    pub action: String,
    /// On what: alarm id, point tag, user.
    pub target: String,
    /// State before (JSON), `null` when not applicable.
    pub before: serde_json::Value,
    /// State after (JSON).
    pub after: serde_json::Value,
    /// Why (mandatory for limit changes; the operator's comment otherwise).
    pub reason: String,
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number, 1-based, contiguous.
    pub seq: i64,
    /// When, ms since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// Who.
    pub actor: String,
    /// From where.
    pub ip: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Before (JSON text as stored).
    pub before: String,
    /// After (JSON text as stored).
    pub after: String,
    /// Why.
    pub reason: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Result of [`AuditLog::verify`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The chain is intact.
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// Hash of the last entry.
    pub head: String,
    /// Every problem found, each naming the entry.
    pub problems: Vec<String>,
}

fn hash_of(prev: &str, e: &Entry) -> String {
    let canonical = serde_json::json!([
        e.seq, e.ts_ms, e.actor, e.ip, e.action, e.target, e.before, e.after, e.reason
    ]);
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.to_string().as_bytes());
    crate::auth::users::hex(&h.finalize())
}

struct Inner {
    conn: Connection,
    /// (seq, hash) of the last entry this process wrote or read at open.
    head: (i64, String),
}

/// The audit log.
pub struct AuditLog {
    inner: Mutex<Inner>,
}

impl AuditLog {
    /// Open (creating) the log in `path` (an SQLite file; `:memory:` for tests).
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS audit (
                 seq INTEGER PRIMARY KEY,
                 ts_ms INTEGER NOT NULL,
                 actor TEXT NOT NULL,
                 ip TEXT NOT NULL,
                 action TEXT NOT NULL,
                 target TEXT NOT NULL,
                 before TEXT NOT NULL,
                 after TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 prev_hash TEXT NOT NULL,
                 hash TEXT NOT NULL
             );
             CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
                 BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
             CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
                 BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;",
        )?;
        let head = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .unwrap_or((0, GENESIS.to_string()));
        Ok(Self {
            inner: Mutex::new(Inner { conn, head }),
        })
    }

    /// Append an entry at `ts_ms`; returns it with its hash. Durable when this returns
    /// (`synchronous = FULL`). Blocking: call from `spawn_blocking` in async code.
    pub fn append(&self, e: NewEntry, ts_ms: i64) -> Result<Entry, AuditError> {
        let mut g = self.inner.lock().map_err(|_| AuditError::Poisoned)?;
        // Chain onto the stored tail (not only the remembered head) so two processes
        // sharing the file by mistake still produce one chain.
        let (last_seq, last_hash) = g
            .conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .unwrap_or((0, GENESIS.to_string()));
        let mut entry = Entry {
            seq: last_seq + 1,
            ts_ms,
            actor: e.actor,
            ip: e.ip,
            action: e.action,
            target: e.target,
            before: e.before.to_string(),
            after: e.after.to_string(),
            reason: e.reason,
            prev_hash: last_hash,
            hash: String::new(),
        };
        entry.hash = hash_of(&entry.prev_hash, &entry);
        g.conn.execute(
            "INSERT INTO audit (seq, ts_ms, actor, ip, action, target, before, after, reason, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                entry.seq,
                entry.ts_ms,
                entry.actor,
                entry.ip,
                entry.action,
                entry.target,
                entry.before,
                entry.after,
                entry.reason,
                entry.prev_hash,
                entry.hash
            ],
        )?;
        g.head = (entry.seq, entry.hash.clone());
        tracing::info!(seq = entry.seq, head = %entry.hash, action = %entry.action, actor = %entry.actor, target = %entry.target, "audit entry");
        Ok(entry)
    }

    /// Entries, newest first: at most `limit`, with `seq < before` when given.
    pub fn list(&self, limit: u32, before: Option<i64>) -> Result<Vec<Entry>, AuditError> {
        let g = self.inner.lock().map_err(|_| AuditError::Poisoned)?;
        let mut st = g.conn.prepare(
            "SELECT seq, ts_ms, actor, ip, action, target, before, after, reason, prev_hash, hash
             FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit], row_entry)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// Walk the whole chain and report every entry that was edited, deleted or moved.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        let g = self.inner.lock().map_err(|_| AuditError::Poisoned)?;
        let mut st = g.conn.prepare(
            "SELECT seq, ts_ms, actor, ip, action, target, before, after, reason, prev_hash, hash
             FROM audit ORDER BY rowid",
        )?;
        let rows = st.query_map([], row_entry)?;
        let mut problems = Vec::new();
        let mut prev_hash = GENESIS.to_string();
        let mut expected_seq = 1i64;
        let mut n = 0i64;
        for row in rows {
            let e = row?;
            n += 1;
            if e.seq != expected_seq {
                if e.seq > expected_seq {
                    problems.push(format!(
                        "entries {expected_seq}..{} are missing (deleted) before entry {}",
                        e.seq - 1,
                        e.seq
                    ));
                } else {
                    problems.push(format!(
                        "entry {} is out of order (expected {expected_seq})",
                        e.seq
                    ));
                }
            }
            if e.prev_hash != prev_hash {
                problems.push(format!(
                    "entry {}: does not follow the entry before it (previous hash differs)",
                    e.seq
                ));
            }
            let h = hash_of(&e.prev_hash, &e);
            if h != e.hash {
                problems.push(format!(
                    "entry {}: content does not match its hash (edited)",
                    e.seq
                ));
            }
            prev_hash = e.hash.clone();
            expected_seq = e.seq + 1;
        }
        let (head_seq, head_hash) = &g.head;
        if expected_seq - 1 < *head_seq {
            problems.push(format!(
                "the log ends at entry {} but this process wrote up to entry {head_seq} (tail deleted)",
                expected_seq - 1
            ));
        } else if expected_seq - 1 == *head_seq && *head_seq > 0 && prev_hash != *head_hash {
            problems.push(format!(
                "entry {head_seq}: differs from the entry this process wrote (replaced)"
            ));
        }
        Ok(Verification {
            ok: problems.is_empty(),
            entries: n,
            head: prev_hash,
            problems,
        })
    }
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get(0)?,
        ts_ms: r.get(1)?,
        actor: r.get(2)?,
        ip: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        before: r.get(6)?,
        after: r.get(7)?,
        reason: r.get(8)?,
        prev_hash: r.get(9)?,
        hash: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i32) -> NewEntry {
        NewEntry {
            actor: "li".into(),
            ip: "10.0.0.7".into(),
            action: "limits.set".into(),
            target: format!("GT-{i}"),
            before: serde_json::json!({"h": 20}),
            after: serde_json::json!({"h": 25}),
            reason: "校准后调整".into(),
        }
    }

    fn tamper(path: &Path, sql: &str) {
        let c = Connection::open(path).expect("open");
        c.execute_batch(
            "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
        )
        .expect("drop triggers");
        c.execute_batch(sql).expect("tamper");
    }

    #[test]
    fn chain_detects_edit_delete_reorder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("audit.db");
        let log = AuditLog::open(&p).expect("open");
        for i in 0..5 {
            log.append(entry(i), 1_700_000_000_000 + i64::from(i))
                .expect("append");
        }
        assert!(log.verify().expect("verify").ok);
        // The triggers refuse edits through SQL.
        let c = Connection::open(&p).expect("open");
        assert!(
            c.execute("UPDATE audit SET reason = 'x' WHERE seq = 2", [])
                .is_err()
        );
        assert!(c.execute("DELETE FROM audit WHERE seq = 2", []).is_err());
        drop(c);

        tamper(&p, "UPDATE audit SET after = '{\"h\":50}' WHERE seq = 3");
        let v = log.verify().expect("verify");
        assert!(!v.ok);
        assert_eq!(
            v.problems,
            vec!["entry 3: content does not match its hash (edited)"]
        );
    }

    #[test]
    fn chain_detects_deleted_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("audit.db");
        let log = AuditLog::open(&p).expect("open");
        for i in 0..5 {
            log.append(entry(i), 1_700_000_000_000).expect("append");
        }
        tamper(&p, "DELETE FROM audit WHERE seq = 2");
        let v = log.verify().expect("verify");
        assert!(!v.ok);
        assert!(v.problems[0].contains("entries 2..2 are missing"), "{v:?}");
        tamper(&p, "DELETE FROM audit WHERE seq = 5");
        let v = log.verify().expect("verify");
        assert!(
            v.problems.iter().any(|p| p.contains("tail deleted")),
            "{v:?}"
        );
    }

    #[test]
    fn chain_detects_swapped_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("audit.db");
        let log = AuditLog::open(&p).expect("open");
        for i in 0..4 {
            log.append(entry(i), 1_700_000_000_000).expect("append");
        }
        // Swap the contents of entries 2 and 3, keeping seq order.
        tamper(
            &p,
            "UPDATE audit SET target = CASE seq WHEN 2 THEN 'GT-2' WHEN 3 THEN 'GT-1' END WHERE seq IN (2, 3)",
        );
        let v = log.verify().expect("verify");
        assert!(!v.ok);
        assert!(
            v.problems.iter().any(|p| p.starts_with("entry 2:")),
            "{v:?}"
        );
        assert!(
            v.problems.iter().any(|p| p.starts_with("entry 3:")),
            "{v:?}"
        );
    }
}
