//! The durable side of escalation: which alarms are escalating (table `escalation`) and
//! every level or repeat that went out (table `escalation_step`), in the journal database,
//! written in the journal's transaction together with the outbox rows of the step. A
//! restart rebuilds the [`super::escalate::Escalator`] from `escalation` with
//! [`super::escalate::Escalator::resume`]: nothing already sent is sent again, nothing due
//! is forgotten. An acknowledgement deletes the row in the transaction that journals it.
//!
//! Each step notification gets an id of its own (its idempotency key, so a receiver keeps
//! a level-2 call apart from the level-1 call of the same alarm) from a range the engine
//! never reaches: [`ESCALATION_ID_BASE`] and up (the engine counts from 1, drills from
//! 2^62). Step ids live in `escalation_step` and the outbox, never in the `events` table,
//! so the engine's own id sequence and its restore are untouched.

use parkguard_drivers::notify::Notification;
use parkguard_rules::Timestamp;
use rusqlite::{Connection, Transaction, params};
use serde::Serialize;

/// First id of escalation step notifications (2^61).
pub const ESCALATION_ID_BASE: u64 = 1 << 61;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS escalation (
    alarm_id    TEXT    PRIMARY KEY,
    policy      TEXT    NOT NULL,
    event_id    INTEGER NOT NULL,
    raised_at   INTEGER NOT NULL,
    levels_sent INTEGER NOT NULL,
    last_sent   INTEGER NOT NULL,
    payload     TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS escalation_step (
    id        INTEGER PRIMARY KEY,
    alarm_id  TEXT    NOT NULL,
    event_id  INTEGER NOT NULL,
    policy    TEXT    NOT NULL,
    step      INTEGER NOT NULL,
    repeat    INTEGER NOT NULL,
    scheduled INTEGER NOT NULL,
    channels  TEXT    NOT NULL,
    label     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS escalation_step_alarm ON escalation_step (alarm_id, id);
";

/// Create the tables (idempotent).
pub fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// An alarm being escalated, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Active {
    /// Alarm id.
    pub alarm_id: String,
    /// Policy name.
    pub policy: String,
    /// Event that started it.
    pub event_id: u64,
    /// When it started (journal time of the raise).
    pub raised_at: Timestamp,
    /// Levels already notified.
    pub levels_sent: usize,
    /// Last notification (level or repeat).
    pub last_sent: Timestamp,
    /// The raise's notification (what each step re-sends).
    pub base: Notification,
}

/// One level or repeat that went out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// Its notification id (idempotency key), ≥ [`ESCALATION_ID_BASE`].
    pub id: u64,
    /// Alarm.
    pub alarm_id: String,
    /// Event that started the escalation.
    pub event_id: u64,
    /// Policy.
    pub policy: String,
    /// Level index (0 = first).
    pub step: usize,
    /// A repeat of a level already notified.
    pub repeat: bool,
    /// When it was due (ns since epoch, UTC).
    pub scheduled_ns: i64,
    /// Channels it was queued for.
    pub channels: Vec<String>,
    /// Who the level is.
    pub label: String,
}

/// Every stored escalation (to resume after a restart).
pub fn load(conn: &Connection) -> rusqlite::Result<Vec<Active>> {
    let mut st = conn.prepare(
        "SELECT alarm_id, policy, event_id, raised_at, levels_sent, last_sent, payload
         FROM escalation ORDER BY alarm_id",
    )?;
    let rows = st.query_map([], |r| {
        let payload: String = r.get(6)?;
        let base = serde_json::from_str(&payload).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(Active {
            alarm_id: r.get(0)?,
            policy: r.get(1)?,
            event_id: r.get::<_, i64>(2)? as u64,
            raised_at: Timestamp::from_nanos(r.get(3)?),
            levels_sent: r.get::<_, i64>(4)? as usize,
            last_sent: Timestamp::from_nanos(r.get(5)?),
            base,
        })
    })?;
    rows.collect()
}

/// Store a new escalation.
pub fn start(tx: &Transaction<'_>, a: &Active) -> rusqlite::Result<()> {
    let payload = serde_json::to_string(&a.base)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.execute(
        "INSERT OR REPLACE INTO escalation
           (alarm_id, policy, event_id, raised_at, levels_sent, last_sent, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            a.alarm_id,
            a.policy,
            a.event_id as i64,
            a.raised_at.nanos(),
            a.levels_sent as i64,
            a.last_sent.nanos(),
            payload
        ],
    )?;
    Ok(())
}

/// Record a step that goes out now: a fresh id, the step row, the escalation's progress.
/// Returns the step's notification id.
pub fn record_step(tx: &Transaction<'_>, s: &StepRecord) -> rusqlite::Result<u64> {
    let id: i64 = tx.query_row(
        "SELECT COALESCE(MAX(id) + 1, ?1) FROM escalation_step",
        [ESCALATION_ID_BASE as i64],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO escalation_step
           (id, alarm_id, event_id, policy, step, repeat, scheduled, channels, label)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id,
            s.alarm_id,
            s.event_id as i64,
            s.policy,
            s.step as i64,
            s.repeat,
            s.scheduled_ns,
            s.channels.join(","),
            s.label
        ],
    )?;
    tx.execute(
        "UPDATE escalation SET levels_sent = MAX(levels_sent, ?2), last_sent = ?3
         WHERE alarm_id = ?1",
        params![s.alarm_id, (s.step + 1) as i64, s.scheduled_ns],
    )?;
    Ok(id as u64)
}

/// The alarm was acknowledged (or left annunciation): forget its escalation.
pub fn stop(tx: &Transaction<'_>, alarm_id: &str) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM escalation WHERE alarm_id = ?1", [alarm_id])?;
    Ok(())
}

/// Every step of one alarm, oldest first (for the console and tests).
pub fn steps(conn: &Connection, alarm_id: &str) -> rusqlite::Result<Vec<StepRecord>> {
    let mut st = conn.prepare(
        "SELECT id, alarm_id, event_id, policy, step, repeat, scheduled, channels, label
         FROM escalation_step WHERE alarm_id = ?1 ORDER BY id",
    )?;
    let rows = st.query_map([alarm_id], |r| {
        let channels: String = r.get(7)?;
        Ok(StepRecord {
            id: r.get::<_, i64>(0)? as u64,
            alarm_id: r.get(1)?,
            event_id: r.get::<_, i64>(2)? as u64,
            policy: r.get(3)?,
            step: r.get::<_, i64>(4)? as usize,
            repeat: r.get(5)?,
            scheduled_ns: r.get(6)?,
            channels: channels
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            label: r.get(8)?,
        })
    })?;
    rows.collect()
}
