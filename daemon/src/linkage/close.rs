//! Closing the loop (消警): an alarm that returned to normal and was acknowledged is closed
//! with its cause, the action taken, the reviewer and a snapshot of the data around it
//! (DOMAIN.md §4: push → feedback → clearing). Pure validation into a [`Closure`], which
//! the daemon journals and publishes (as a notification with state `closed`).

use parkguard_drivers::notify::Notification;
use parkguard_rules::{FieldError, Timestamp};
use serde::{Deserialize, Serialize};

/// Most characters in `cause`.
pub const MAX_CAUSE: usize = 500;
/// Most characters in `action`.
pub const MAX_ACTION: usize = 1000;
/// Most characters in `reviewer`.
pub const MAX_REVIEWER: usize = 64;
/// Most samples in a snapshot.
pub const MAX_SAMPLES: usize = 10_000;

/// One sample of the snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Time (UTC ns).
    pub time: Timestamp,
    /// Value.
    pub value: f64,
    /// Quality label (`good`, `comm_lost`, …).
    pub quality: String,
}

/// The data around the alarm, as the reviewer saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSnapshot {
    /// Unit symbol of the values.
    pub unit: String,
    /// Start of the window (must be at or before the raise).
    pub from: Timestamp,
    /// End of the window (must be at or after the return to normal).
    pub to: Timestamp,
    /// Samples in time order within `[from, to]`.
    pub samples: Vec<Sample>,
}

/// A closure as submitted (API body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClosureRequest {
    /// The alarm to close.
    pub alarm_id: String,
    /// Cause found (原因).
    pub cause: String,
    /// Action taken (处置措施).
    pub action: String,
    /// Reviewer (审核人).
    pub reviewer: String,
    /// Data snapshot.
    pub snapshot: DataSnapshot,
}

/// What the journal knows about the alarm (the daemon fills it in).
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmFacts {
    /// Alarm id.
    pub alarm_id: String,
    /// When it was raised.
    pub raised_at: Timestamp,
    /// When it returned to normal, if it has.
    pub returned_at: Option<Timestamp>,
    /// When it was acknowledged, if it was.
    pub acked_at: Option<Timestamp>,
    /// Whether it is already closed.
    pub closed: bool,
}

/// A validated closure, ready to journal and publish.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Closure {
    /// Alarm id.
    pub alarm_id: String,
    /// Cause (trimmed).
    pub cause: String,
    /// Action (trimmed).
    pub action: String,
    /// Reviewer (trimmed).
    pub reviewer: String,
    /// When it was closed.
    pub closed_at: Timestamp,
    /// Snapshot.
    pub snapshot: DataSnapshot,
}

fn text(v: &str, field: &str, max: usize, what: &str, errs: &mut Vec<FieldError>) -> String {
    let t = v.trim();
    if t.is_empty() {
        errs.push(FieldError::new(field, format!("{what} is required")));
    } else if t.chars().count() > max {
        errs.push(FieldError::new(
            field,
            format!("{what} is longer than {max} characters"),
        ));
    }
    t.to_string()
}

/// Validate a closure at `now` against what the journal knows. Collects every error.
pub fn validate_closure(
    req: &ClosureRequest,
    facts: &AlarmFacts,
    now: Timestamp,
) -> Result<Closure, Vec<FieldError>> {
    let mut errs = Vec::new();
    if req.alarm_id != facts.alarm_id {
        errs.push(FieldError::new(
            "alarm_id",
            format!(
                "closure is for `{}`, not `{}`",
                req.alarm_id, facts.alarm_id
            ),
        ));
    }
    if facts.closed {
        errs.push(FieldError::new("alarm_id", "the alarm is already closed"));
    }
    match facts.returned_at {
        None => errs.push(FieldError::new(
            "alarm_id",
            "the alarm has not returned to normal: it can be closed only after it returns",
        )),
        Some(r) if r > now => {
            errs.push(FieldError::new("alarm_id", "return time is in the future"))
        }
        _ => {}
    }
    if facts.acked_at.is_none() {
        errs.push(FieldError::new(
            "alarm_id",
            "the alarm is not acknowledged: acknowledge it before closing",
        ));
    }
    let cause = text(&req.cause, "cause", MAX_CAUSE, "cause (原因)", &mut errs);
    let action = text(
        &req.action,
        "action",
        MAX_ACTION,
        "action taken (处置措施)",
        &mut errs,
    );
    let reviewer = text(
        &req.reviewer,
        "reviewer",
        MAX_REVIEWER,
        "reviewer (审核人)",
        &mut errs,
    );

    let s = &req.snapshot;
    if s.unit.trim().is_empty() {
        errs.push(FieldError::new("snapshot.unit", "unit is required"));
    }
    if s.from > facts.raised_at {
        errs.push(FieldError::new(
            "snapshot.from",
            "the snapshot must start at or before the alarm was raised",
        ));
    }
    if let Some(r) = facts.returned_at
        && s.to < r
    {
        errs.push(FieldError::new(
            "snapshot.to",
            "the snapshot must end at or after the alarm returned to normal",
        ));
    }
    if s.samples.is_empty() {
        errs.push(FieldError::new(
            "snapshot.samples",
            "the snapshot has no samples",
        ));
    } else if s.samples.len() > MAX_SAMPLES {
        errs.push(FieldError::new(
            "snapshot.samples",
            format!("more than {MAX_SAMPLES} samples: thin the snapshot"),
        ));
    }
    let mut prev: Option<Timestamp> = None;
    for (i, x) in s.samples.iter().enumerate() {
        if x.time < s.from || x.time > s.to {
            errs.push(FieldError::new(
                format!("snapshot.samples[{i}].time"),
                "sample outside the snapshot window",
            ));
        }
        if prev.is_some_and(|p| x.time < p) {
            errs.push(FieldError::new(
                format!("snapshot.samples[{i}].time"),
                "samples must be in time order",
            ));
        }
        prev = Some(x.time);
        if !x.value.is_finite() {
            errs.push(FieldError::new(
                format!("snapshot.samples[{i}].value"),
                "value is not a finite number",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Closure {
        alarm_id: req.alarm_id.clone(),
        cause,
        action,
        reviewer,
        closed_at: now,
        snapshot: s.clone(),
    })
}

impl Closure {
    /// The notification that publishes the closure: `base` is the alarm's last
    /// notification, `event_id` the journal id of the closure event.
    pub fn notification(&self, base: &Notification, event_id: u64) -> Notification {
        let mut n = base.clone();
        n.event_id = event_id;
        n.state = "closed".into();
        n.time = self.closed_at;
        n.message_zh = format!(
            "已消警。原因：{}；处置措施：{}；审核人：{}",
            self.cause, self.action, self.reviewer
        );
        n.message_en = format!(
            "closed. cause: {}; action: {}; reviewer: {}",
            self.cause, self.action, self.reviewer
        );
        n
    }
}

/// First id of closure notifications (2^61 + 2^60): above the engine's ids and the
/// escalation steps' ([`super::escalation_log::ESCALATION_ID_BASE`]), below the drills'
/// (2^62). Closures live in table `closure` and the outbox, never in `events`.
pub const CLOSURE_ID_BASE: u64 = (1 << 61) + (1 << 60);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS closure (
    id        INTEGER PRIMARY KEY,
    alarm_id  TEXT    NOT NULL,
    raised_at INTEGER NOT NULL,
    closed_at INTEGER NOT NULL,
    cause     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    reviewer  TEXT    NOT NULL,
    snapshot  TEXT    NOT NULL,
    UNIQUE (alarm_id, raised_at)
);
";

/// Create the closure table (idempotent).
pub fn init_schema(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// Why a closure could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// This raise of the alarm is already closed.
    #[error("alarm `{0}` is already closed")]
    AlreadyClosed(String),
    /// SQLite failed.
    #[error("closure database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// Record a validated closure of the alarm raised at `raised_at` inside the caller's
/// transaction; returns the closure's notification id. A second closure of the same raise
/// is refused.
pub fn record(
    tx: &rusqlite::Transaction<'_>,
    c: &Closure,
    raised_at: Timestamp,
) -> Result<u64, CloseError> {
    let id: i64 = tx.query_row(
        "SELECT COALESCE(MAX(id) + 1, ?1) FROM closure",
        [CLOSURE_ID_BASE as i64],
        |r| r.get(0),
    )?;
    let snapshot = serde_json::to_string(&c.snapshot)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let n = tx.execute(
        "INSERT OR IGNORE INTO closure
           (id, alarm_id, raised_at, closed_at, cause, action, reviewer, snapshot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            id,
            c.alarm_id,
            raised_at.nanos(),
            c.closed_at.nanos(),
            c.cause,
            c.action,
            c.reviewer,
            snapshot
        ],
    )?;
    if n == 0 {
        return Err(CloseError::AlreadyClosed(c.alarm_id.clone()));
    }
    Ok(id as u64)
}

/// Whether the raise of `alarm_id` at `raised_at` is closed (for [`AlarmFacts::closed`]).
pub fn is_closed(
    conn: &rusqlite::Connection,
    alarm_id: &str,
    raised_at: Timestamp,
) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM closure WHERE alarm_id = ?1 AND raised_at = ?2",
        rusqlite::params![alarm_id, raised_at.nanos()],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}
