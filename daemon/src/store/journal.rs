//! The alarm journal: every alarm event, warning-grade change, operator action,
//! configuration change and system event, in SQLite (`<data_dir>/journal.sqlite`).
//!
//! - **Durable before anyone is told.** [`Journal::append`] writes a slice of records in
//!   one transaction and returns only after the commit is on disk (WAL,
//!   `synchronous = FULL`: the WAL is fsynced at every commit). Publish or notify after
//!   it returns, never before — with one argued exception: the linkage hands its
//!   notifications to the channel workers inside the transaction, before the commit,
//!   with their outbox rows as the at-least-once record (see [`crate::linkage::wire`]:
//!   what a crash in between does). [`Journal::append_with`] runs more statements (e.g.
//!   the notification outbox insert) inside the same transaction.
//! - **Crash-safe.** A process killed mid-transaction leaves the last committed state;
//!   SQLite rolls the WAL back on the next open. Ids are the engine's (an increasing u64
//!   sequence, gap-free within a run; a restart may skip up to
//!   [`crate::linkage::wire::WATERMARK_SLACK`] ids); `id` is the primary key, so a duplicate is refused, never stored twice.
//! - **Restart.** [`Journal::max_id`] continues the id sequence; [`Journal::latest_per_alarm`]
//!   gives the last record of every alarm, from which the engine rebuilds its states
//!   (unacknowledged, shelved with expiry, out of service, ...).
//! - **Migrations** are versioned in code ([`MIGRATIONS`], `PRAGMA user_version`), applied in
//!   order in one transaction each at open; a database from a newer parkguard is refused.
//! - **Payload** is the engine's serde JSON, stored as text; the columns used by queries are
//!   kept apart and indexed.

use parkguard_rules::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Alarm state change (raise, clear, return to normal, ...).
    Alarm,
    /// Warning-grade change.
    Warning,
    /// Operator action (acknowledge, shelve, out of service, comment).
    Operator,
    /// Configuration change (limits edited, points added).
    Config,
    /// System event (spool overflow, device lost, start/stop).
    System,
}

impl RecordKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Alarm => "alarm",
            RecordKind::Warning => "warning",
            RecordKind::Operator => "operator",
            RecordKind::Config => "config",
            RecordKind::System => "system",
        }
    }
    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "alarm" => RecordKind::Alarm,
            "warning" => RecordKind::Warning,
            "operator" => RecordKind::Operator,
            "config" => RecordKind::Config,
            "system" => RecordKind::System,
            _ => return None,
        })
    }
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Event id, assigned by the engine; strictly increasing, continues from
    /// [`Journal::max_id`] after a restart. Also the notification idempotency key.
    pub id: u64,
    /// Event time (the engine's clock: reading time in replay).
    pub time: Timestamp,
    /// Kind.
    pub kind: RecordKind,
    /// Alarm id (e.g. `GT-101:HH`), for alarm and operator records.
    pub alarm_id: Option<String>,
    /// Point tag.
    pub point: Option<String>,
    /// Enterprise code.
    pub enterprise: Option<String>,
    /// Drill id; `None` for the real path.
    pub drill: Option<String>,
    /// The engine's event, serialised.
    pub payload: serde_json::Value,
}

/// Journal errors.
#[derive(Debug, Error)]
pub enum JournalError {
    /// SQLite said no.
    #[error("journal {path}: {source}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// The database was written by a newer parkguard.
    #[error(
        "journal {path} has schema version {found}, this parkguard knows up to {known}: upgrade parkguard or restore a backup"
    )]
    TooNew {
        /// Database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A stored row cannot be read back.
    #[error("journal {path}: corrupt row {id}: {what}")]
    Corrupt {
        /// Database file.
        path: PathBuf,
        /// Row id.
        id: i64,
        /// What is wrong.
        what: String,
    },
    /// An id does not fit SQLite's signed 64-bit integer.
    #[error("journal: event id {0} exceeds i64::MAX")]
    IdRange(u64),
}

/// Schema migrations, in order; migration `i` brings the schema to version `i + 1`.
/// Append only: never edit a released migration.
pub const MIGRATIONS: &[&str] = &[
    // v1: the events table and its query indexes.
    "CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        time_ns     INTEGER NOT NULL,
        kind        TEXT    NOT NULL,
        alarm_id    TEXT,
        point       TEXT,
        enterprise  TEXT,
        drill       TEXT,
        payload     TEXT    NOT NULL
     ) STRICT;
     CREATE INDEX events_time ON events(time_ns);
     CREATE INDEX events_alarm ON events(alarm_id, id) WHERE alarm_id IS NOT NULL;
     CREATE INDEX events_point ON events(point, time_ns) WHERE point IS NOT NULL;
     CREATE INDEX events_enterprise ON events(enterprise, time_ns) WHERE enterprise IS NOT NULL;",
];

/// A query over the journal. Every set field narrows it; results are in id order.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// `time >= from`.
    pub from: Option<Timestamp>,
    /// `time < to`.
    pub to: Option<Timestamp>,
    /// Kind.
    pub kind: Option<RecordKind>,
    /// Alarm id.
    pub alarm_id: Option<String>,
    /// Point tag.
    pub point: Option<String>,
    /// Enterprise code.
    pub enterprise: Option<String>,
    /// `Some(Some(id))`: that drill only; `Some(None)`: the real path only; `None`: both.
    pub drill: Option<Option<String>>,
    /// Only ids greater than this (paging).
    pub after_id: Option<u64>,
    /// At most this many (default 1000).
    pub limit: Option<usize>,
    /// Newest first instead of oldest first.
    pub descending: bool,
}

/// The journal. Single writer (the engine task or its store task); open read-only
/// connections elsewhere with [`Journal::open_readonly`] for the API.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

const COLS: &str = "id, time_ns, kind, alarm_id, point, enterprise, drill, payload";

impl Journal {
    /// Open or create the journal at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let mut conn = Connection::open(path).map_err(sql(path))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql(path))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql(path))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql(path))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql(path))?;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// A read-only connection (for API queries beside the writer; WAL lets them run
    /// concurrently). The schema must already exist.
    pub fn open_readonly(path: &Path) -> Result<Self, JournalError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql(path))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, JournalError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql(&self.path))
    }

    /// Append `records` in one transaction; returns after the commit is durable.
    /// All or nothing: a duplicate id fails the whole call and stores none of them.
    pub fn append(&mut self, records: &[JournalRecord]) -> Result<(), JournalError> {
        self.append_with(records, |_| Ok(()))
    }

    /// Like [`Journal::append`], then runs `also` inside the same transaction before the
    /// commit (e.g. insert the notification outbox rows), so both land or neither.
    pub fn append_with<F>(&mut self, records: &[JournalRecord], also: F) -> Result<(), JournalError>
    where
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<()>,
    {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql(&path))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO events (id, time_ns, kind, alarm_id, point, enterprise, drill, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(sql(&path))?;
            for r in records {
                let id = i64::try_from(r.id).map_err(|_| JournalError::IdRange(r.id))?;
                st.execute(params![
                    id,
                    r.time.nanos(),
                    r.kind.as_str(),
                    r.alarm_id,
                    r.point,
                    r.enterprise,
                    r.drill,
                    r.payload.to_string(),
                ])
                .map_err(sql(&path))?;
            }
        }
        also(&tx).map_err(sql(&path))?;
        tx.commit().map_err(sql(&path))
    }

    /// The greatest id stored (0 when empty).
    pub fn max_id(&self) -> Result<u64, JournalError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM events", [], |r| r.get(0))
            .map_err(sql(&self.path))?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Number of records.
    pub fn count(&self) -> Result<u64, JournalError> {
        let v: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .map_err(sql(&self.path))?;
        Ok(v.max(0) as u64)
    }

    /// The last record of every alarm id (real path and drills alike; filter on
    /// `drill`), in id order: what the engine rebuilds its alarm states from.
    pub fn latest_per_alarm(&self) -> Result<Vec<JournalRecord>, JournalError> {
        self.query_sql(
            &format!(
                "SELECT {COLS} FROM events WHERE id IN (
                   SELECT MAX(id) FROM events WHERE alarm_id IS NOT NULL GROUP BY alarm_id, drill
                 ) ORDER BY id"
            ),
            Vec::new(),
        )
    }

    /// Every record of one alarm, oldest first.
    pub fn alarm_history(&self, alarm_id: &str) -> Result<Vec<JournalRecord>, JournalError> {
        self.query(&EventFilter {
            alarm_id: Some(alarm_id.to_owned()),
            limit: Some(usize::MAX),
            ..EventFilter::default()
        })
    }

    /// Records matching `f`.
    pub fn query(&self, f: &EventFilter) -> Result<Vec<JournalRecord>, JournalError> {
        let mut clauses: Vec<&str> = Vec::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        use rusqlite::types::Value as V;
        if let Some(t) = f.from {
            clauses.push("time_ns >= ?");
            args.push(V::Integer(t.nanos()));
        }
        if let Some(t) = f.to {
            clauses.push("time_ns < ?");
            args.push(V::Integer(t.nanos()));
        }
        if let Some(k) = f.kind {
            clauses.push("kind = ?");
            args.push(V::Text(k.as_str().into()));
        }
        if let Some(a) = &f.alarm_id {
            clauses.push("alarm_id = ?");
            args.push(V::Text(a.clone()));
        }
        if let Some(p) = &f.point {
            clauses.push("point = ?");
            args.push(V::Text(p.clone()));
        }
        if let Some(e) = &f.enterprise {
            clauses.push("enterprise = ?");
            args.push(V::Text(e.clone()));
        }
        match &f.drill {
            Some(Some(d)) => {
                clauses.push("drill = ?");
                args.push(V::Text(d.clone()));
            }
            Some(None) => clauses.push("drill IS NULL"),
            None => {}
        }
        if let Some(a) = f.after_id {
            clauses.push("id > ?");
            args.push(V::Integer(i64::try_from(a).unwrap_or(i64::MAX)));
        }
        let where_ = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let limit = i64::try_from(f.limit.unwrap_or(1000)).unwrap_or(i64::MAX);
        let order = if f.descending { "DESC" } else { "ASC" };
        self.query_sql(
            &format!("SELECT {COLS} FROM events {where_} ORDER BY id {order} LIMIT {limit}"),
            args,
        )
    }

    fn query_sql(
        &self,
        q: &str,
        args: Vec<rusqlite::types::Value>,
    ) -> Result<Vec<JournalRecord>, JournalError> {
        let path = &self.path;
        let mut st = self.conn.prepare_cached(q).map_err(sql(path))?;
        let rows = st
            .query_map(params_from_iter(args), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })
            .map_err(sql(path))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, t, kind, alarm_id, point, enterprise, drill, payload) =
                row.map_err(sql(path))?;
            let corrupt = |what: String| JournalError::Corrupt {
                path: path.clone(),
                id,
                what,
            };
            out.push(JournalRecord {
                id: id as u64,
                time: Timestamp::from_nanos(t),
                kind: RecordKind::parse(&kind).ok_or_else(|| corrupt(format!("kind `{kind}`")))?,
                alarm_id,
                point,
                enterprise,
                drill,
                payload: serde_json::from_str(&payload)
                    .map_err(|e| corrupt(format!("payload: {e}")))?,
            });
        }
        Ok(out)
    }

    /// `PRAGMA integrity_check` — "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String, JournalError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(sql(&self.path))
    }

    /// The underlying connection, for the lead's later tables (outbox) in their own
    /// migrations; prefer [`Journal::append_with`] for writes.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql(path))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(JournalError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql(path))?;
        tx.execute_batch(m).map_err(sql(path))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sql(path))?;
        tx.commit().map_err(sql(path))?;
        tracing::info!(db = %path.display(), version = i + 1, "journal schema migrated");
    }
    Ok(())
}

/// Whether a query would find nothing for this id (helper for idempotent inserts).
pub fn contains(j: &Journal, id: u64) -> Result<bool, JournalError> {
    let id = i64::try_from(id).map_err(|_| JournalError::IdRange(id))?;
    j.conn
        .query_row("SELECT 1 FROM events WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .map_err(sql(&j.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(id: u64, alarm: &str, state: &str) -> JournalRecord {
        JournalRecord {
            id,
            time: Timestamp::from_secs(1_700_000_000 + id as i64),
            kind: RecordKind::Alarm,
            alarm_id: Some(alarm.into()),
            point: Some(alarm.split(':').next().unwrap_or(alarm).into()),
            enterprise: Some("E1".into()),
            drill: None,
            payload: json!({ "state": state, "id": id }),
        }
    }

    #[test]
    fn append_query_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sqlite");
        {
            let mut j = Journal::open(&path).expect("open");
            assert_eq!(j.schema_version().expect("v"), MIGRATIONS.len() as i64);
            assert_eq!(j.max_id().expect("max"), 0);
            j.append(&[rec(1, "GT-1:HH", "unack"), rec(2, "GT-2:H", "unack")])
                .expect("append");
            j.append(&[rec(3, "GT-1:HH", "acked")]).expect("append");
            // Duplicate id: whole call refused, nothing half-stored.
            let err = j.append(&[rec(4, "GT-3:H", "unack"), rec(3, "GT-3:H", "x")]);
            assert!(err.is_err());
            assert_eq!(j.count().expect("count"), 3);
        }
        let j = Journal::open(&path).expect("reopen");
        assert_eq!(j.max_id().expect("max"), 3);
        let latest = j.latest_per_alarm().expect("latest");
        assert_eq!(latest.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(latest[1].payload["state"], "acked");
        let h = j.alarm_history("GT-1:HH").expect("history");
        assert_eq!(h.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3]);
        let by_point = j
            .query(&EventFilter {
                point: Some("GT-2".into()),
                ..EventFilter::default()
            })
            .expect("q");
        assert_eq!(by_point.len(), 1);
        let range = j
            .query(&EventFilter {
                from: Some(Timestamp::from_secs(1_700_000_002)),
                to: Some(Timestamp::from_secs(1_700_000_003)),
                ..EventFilter::default()
            })
            .expect("q");
        assert_eq!(range.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
        assert!(contains(&j, 2).expect("c"));
        assert!(!contains(&j, 9).expect("c"));
    }

    #[test]
    fn append_with_rolls_back_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(&dir.path().join("j.sqlite")).expect("open");
        j.connection()
            .execute_batch("CREATE TABLE outbox (event_id INTEGER NOT NULL)")
            .expect("outbox");
        let r = j.append_with(&[rec(1, "A:H", "unack")], |tx| {
            tx.execute("INSERT INTO outbox VALUES (1)", [])?;
            tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(j.count().expect("count"), 0);
        let n: i64 = j
            .connection()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 0);
    }

    #[test]
    fn filters_by_enterprise_kind_drill_and_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(&dir.path().join("j.sqlite")).expect("open");
        let mut recs: Vec<_> = (1..=20)
            .map(|i| rec(i, &format!("GT-{}:H", i % 4), "unack"))
            .collect();
        for r in recs.iter_mut() {
            if r.id % 2 == 0 {
                r.enterprise = Some("E2".into());
            }
            if r.id % 5 == 0 {
                r.kind = RecordKind::Operator;
                r.drill = Some("drill-1".into());
            }
        }
        j.append(&recs).expect("append");
        let ids = |f: EventFilter| -> Vec<u64> {
            j.query(&f).expect("query").iter().map(|r| r.id).collect()
        };
        assert_eq!(
            ids(EventFilter {
                enterprise: Some("E2".into()),
                after_id: Some(14),
                ..Default::default()
            }),
            [16, 18, 20]
        );
        assert_eq!(
            ids(EventFilter {
                kind: Some(RecordKind::Operator),
                ..Default::default()
            }),
            [5, 10, 15, 20]
        );
        assert_eq!(
            ids(EventFilter {
                drill: Some(Some("drill-1".into())),
                descending: true,
                limit: Some(2),
                ..Default::default()
            }),
            [20, 15]
        );
        assert_eq!(
            ids(EventFilter {
                drill: Some(None),
                ..Default::default()
            })
            .len(),
            16
        );
        // Latest per alarm keeps drills apart from the real path.
        let latest = j.latest_per_alarm().expect("latest");
        assert!(latest.iter().any(|r| r.id == 20 && r.drill.is_some()));
        assert!(latest.iter().any(|r| r.id == 16 && r.drill.is_none()));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.sqlite");
        drop(Journal::open(&path).expect("open"));
        let c = Connection::open(&path).expect("raw");
        c.pragma_update(None, "user_version", 99).expect("bump");
        drop(c);
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::TooNew { found: 99, .. })
        ));
    }
}
