//! The notification outbox: one SQLite row per (event id, channel), queued in the same
//! transaction that journals the event ([`enqueue`]), delivered at least once by one
//! [`run_worker`] task per channel, marked `delivered` only on the receiver's confirmation.
//!
//! - **Order per alarm.** Rows are grouped by enterprise (drill events apart); within a
//!   group the worker always serves the oldest pending batch first and never skips a
//!   failing one, so events of one alarm (which belongs to one enterprise) reach the
//!   receiver in journal order. Other groups keep flowing.
//! - **Batches** ([`super::group`]): a batch is fixed (column `batch` = its first event id,
//!   the idempotency key) on its first attempt, so retries resend the same message.
//! - **Retries**: retryable failures (timeout, connection, 5xx, 429, robot rate limits)
//!   are retried forever with the shared exponential back-off
//!   ([`parkguard_drivers::backoff::Backoff`]); permanent ones (other 4xx, refused drill,
//!   bad config) mark the rows `failed` with the error, for the console and a system alarm.
//! - **Restart**: all state is in the table; a new worker resumes pending rows (a batch
//!   interrupted mid-flight is resent under the same key; receivers dedup on it).
//! - **Back-pressure**: the table is the queue, bounded only by disk; the lead's journal
//!   transaction never waits on delivery. [`channel_summaries`] reports the backlog.
//! - **Early delivery** ([`run_worker_early`]): the engine task hands a notification to
//!   the worker as it raises the event, *before* the journal has it, so that an alarm does
//!   not wait for the journal's fsyncs (its own and the previous batch's; 3.5 ms at the
//!   median on this project's disks, up to 251 ms while the host's disk was saturated) nor
//!   for the worker's own batch bookkeeping. The worker publishes it at once when nothing
//!   older of its group is pending — neither a committed row nor one of the uncommitted
//!   notifications the hand-over names ([`EarlyNote::before`]) that did not go early
//!   itself — and the grouping window allows it, so order per enterprise holds; the
//!   outbox row, committed with the journal record, stays the at-least-once record: when
//!   the worker later takes the row it marks it delivered without sending it again. Why
//!   publishing before the commit is safe: see [`crate::linkage::wire`] (a crash in
//!   between).

use super::group::{GroupHead, Grouping, Plan, plan};
use super::route::Admitted;
use crate::config::duration::ConfigDuration;
use parkguard_drivers::backoff::Backoff;
use parkguard_drivers::notify::{Deliver, DeliveryError, Notification};
use parkguard_rules::FieldError;
use parkguard_rules::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// SQLite failed.
    #[error("outbox database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The admission is for another event.
    #[error("admission is for event {admitted}, not {event}")]
    Mismatch {
        /// Admitted event id.
        admitted: u64,
        /// Event given.
        event: u64,
    },
    /// Payload (de)serialization.
    #[error("outbox payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// A blocking task panicked or was cancelled.
    #[error("outbox task: {0}")]
    Task(String),
}

/// Delivery status of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting or being retried.
    Pending,
    /// Confirmed by the receiver.
    Delivered,
    /// Given up (permanent error); see `last_error`.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Status {
        match s {
            "delivered" => Status::Delivered,
            "failed" => Status::Failed,
            _ => Status::Pending,
        }
    }
}

/// Delivery status of one event on one channel (for the console).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryStatus {
    /// Event id.
    pub event_id: u64,
    /// Channel.
    pub channel: String,
    /// Alarm.
    pub alarm_id: String,
    /// Status.
    pub status: Status,
    /// Attempts so far.
    pub attempts: u32,
    /// Next attempt (ms since epoch) while pending.
    pub next_attempt_ms: i64,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Delivery time (ms since epoch).
    pub delivered_at_ms: Option<i64>,
    /// Idempotency key of the message it went out in.
    pub batch: Option<u64>,
    /// Receiver's receipt.
    pub receipt: Option<String>,
}

/// Backlog of one channel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChannelSummary {
    /// Channel.
    pub channel: String,
    /// Rows pending.
    pub pending: u64,
    /// Rows delivered.
    pub delivered: u64,
    /// Rows failed.
    pub failed: u64,
    /// Enqueue time (ms) of the oldest pending row.
    pub oldest_pending_ms: Option<i64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     INTEGER NOT NULL,
    channel      TEXT    NOT NULL,
    alarm_id     TEXT    NOT NULL,
    group_key    TEXT    NOT NULL,
    drill        TEXT,
    payload      TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    enqueued_at  INTEGER NOT NULL,
    next_attempt INTEGER NOT NULL,
    batch        INTEGER,
    last_error   TEXT,
    delivered_at INTEGER,
    receipt      TEXT,
    UNIQUE (event_id, channel)
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (channel, status, group_key, seq);
CREATE INDEX IF NOT EXISTS outbox_event ON outbox (event_id);
";

/// Create the outbox table (idempotent). Call once on the journal's connection.
pub fn init_schema(conn: &Connection) -> Result<(), OutboxError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// Open (or create) a database file for the outbox: WAL journal, `synchronous = FULL`
/// (a confirmed delivery is never forgotten), 5 s busy timeout, schema created.
pub fn open(path: &Path) -> Result<Connection, OutboxError> {
    let conn = Connection::open(path)?;
    // The busy timeout first: setting the journal mode needs a lock another connection (the
    // journal writer, a delivery worker) may hold for a moment.
    conn.busy_timeout(Duration::from_secs(5))?;
    // Two connections setting up a fresh file at once: SQLite answers one of them "database
    // is locked" at once, without the busy timeout (3 times in 400 trials of three threads
    // opening one new file). A delivery worker failed that way at start in CI and was not
    // restarted by the test. The steps are idempotent, so they are simply retried.
    retry_busy(|| {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        init_schema(&conn)
    })?;
    Ok(conn)
}

/// The group a notification's row belongs to: its enterprise (a drill's apart). Order is
/// kept within a group.
pub fn group_key(n: &Notification) -> String {
    match &n.drill {
        Some(d) => format!("drill:{d}:{}", n.enterprise),
        None => n.enterprise.clone(),
    }
}

/// Queue `n` for the admitted channel inside the caller's transaction (the one that
/// journals the event). Returns `false` when that (event, channel) was already queued.
/// `now` is the wall-clock time of queuing (not the event's time: a drill replays on its
/// own clock); the row is due at once. Call `wake.notify_one()` for the channel's worker
/// after the commit.
pub fn enqueue(
    tx: &Transaction<'_>,
    admitted: &Admitted,
    n: &Notification,
    now: Timestamp,
) -> Result<bool, OutboxError> {
    if admitted.event_id() != n.event_id {
        return Err(OutboxError::Mismatch {
            admitted: admitted.event_id(),
            event: n.event_id,
        });
    }
    let payload = serde_json::to_string(n)?;
    let ms = now.millis();
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO outbox
            (event_id, channel, alarm_id, group_key, drill, payload, enqueued_at, next_attempt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        )?
        .execute(params![
            n.event_id as i64,
            admitted.channel(),
            n.alarm_id,
            group_key(n),
            n.drill,
            payload,
            ms
        ])?;
    Ok(inserted == 1)
}

fn row_status(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryStatus> {
    Ok(DeliveryStatus {
        event_id: r.get::<_, i64>(0)? as u64,
        channel: r.get(1)?,
        alarm_id: r.get(2)?,
        status: Status::parse(&r.get::<_, String>(3)?),
        attempts: r.get::<_, i64>(4)? as u32,
        next_attempt_ms: r.get(5)?,
        last_error: r.get(6)?,
        delivered_at_ms: r.get(7)?,
        batch: r.get::<_, Option<i64>>(8)?.map(|b| b as u64),
        receipt: r.get(9)?,
    })
}

const STATUS_COLS: &str = "event_id, channel, alarm_id, status, attempts, next_attempt, \
                           last_error, delivered_at, batch, receipt";

/// Delivery status of an event on every channel it was queued for.
pub fn status(conn: &Connection, event_id: u64) -> Result<Vec<DeliveryStatus>, OutboxError> {
    let mut st = conn.prepare(&format!(
        "SELECT {STATUS_COLS} FROM outbox WHERE event_id = ?1 ORDER BY channel"
    ))?;
    let rows = st.query_map([event_id as i64], row_status)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every row of one alarm (all its events, every channel), by event then channel.
pub fn alarm_rows(conn: &Connection, alarm_id: &str) -> Result<Vec<DeliveryStatus>, OutboxError> {
    let mut st = conn.prepare(&format!(
        "SELECT {STATUS_COLS} FROM outbox WHERE alarm_id = ?1 ORDER BY event_id, channel"
    ))?;
    let rows = st.query_map([alarm_id], row_status)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every alarm id with outbox rows (the API maps its numeric alarm ids onto them).
pub fn alarm_ids(conn: &Connection) -> Result<Vec<String>, OutboxError> {
    let mut st = conn.prepare("SELECT DISTINCT alarm_id FROM outbox")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the outbox table exists in this database (it does once linkage has run).
pub fn exists(conn: &Connection) -> Result<bool, OutboxError> {
    Ok(conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?)
}

/// Every row of a channel in queue order (for the console and tests).
pub fn channel_rows(conn: &Connection, channel: &str) -> Result<Vec<DeliveryStatus>, OutboxError> {
    let mut st = conn.prepare(&format!(
        "SELECT {STATUS_COLS} FROM outbox WHERE channel = ?1 ORDER BY seq"
    ))?;
    let rows = st.query_map([channel], row_status)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Backlog per channel.
pub fn channel_summaries(conn: &Connection) -> Result<Vec<ChannelSummary>, OutboxError> {
    let mut st = conn.prepare(
        "SELECT channel,
                SUM(status = 'pending'), SUM(status = 'delivered'), SUM(status = 'failed'),
                MIN(CASE WHEN status = 'pending' THEN enqueued_at END)
         FROM outbox GROUP BY channel ORDER BY channel",
    )?;
    let rows = st.query_map([], |r| {
        Ok(ChannelSummary {
            channel: r.get(0)?,
            pending: r.get::<_, i64>(1)? as u64,
            delivered: r.get::<_, i64>(2)? as u64,
            failed: r.get::<_, i64>(3)? as u64,
            oldest_pending_ms: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Settings of a delivery worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Grouping window and batch size.
    pub grouping: Grouping,
    /// First retry delay. Default 1 s.
    pub backoff_initial: Duration,
    /// Longest retry delay. Default 60 s.
    pub backoff_max: Duration,
    /// Poll the table this often even without a wake-up (rows queued by another process).
    /// Default 1 s.
    pub poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            grouping: Grouping::default(),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            poll: Duration::from_secs(1),
        }
    }
}

/// `[outbox]`: delivery settings shared by every channel's worker.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// After a message to a group (an enterprise), further alarms of that group wait this
    /// long and then go out together; the first alarm of a quiet group goes at once.
    /// `"0s"` disables it. 0–10 min. Default `"30s"`.
    #[serde(default = "default_window")]
    pub group_window: ConfigDuration,
    /// Most alarms in one message, 1–100. Default 20.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// First retry delay after a retryable failure, 100 ms – 1 min. Default `"1s"`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial: ConfigDuration,
    /// Longest retry delay (the delay doubles up to it, ±20 % jitter), ≥ `retry_initial`,
    /// ≤ 1 h. Retries never stop: delivery is at least once. Default `"60s"`.
    #[serde(default = "default_retry_max")]
    pub retry_max: ConfigDuration,
}

fn default_window() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_max_batch() -> usize {
    20
}
fn default_retry_initial() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_retry_max() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            group_window: default_window(),
            max_batch: default_max_batch(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
        }
    }
}

impl OutboxConfig {
    /// Validate into the worker settings; every error with its field.
    pub fn validate(&self) -> Result<WorkerConfig, Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.group_window.0 > Duration::from_secs(600) {
            errs.push(FieldError::new(
                "group_window",
                "longer than 10 min: alarms would wait too long",
            ));
        }
        if !(1..=100).contains(&self.max_batch) {
            errs.push(FieldError::new("max_batch", "use 1 to 100"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.retry_initial.0) {
            errs.push(FieldError::new("retry_initial", "use 100ms to 1m"));
        }
        if self.retry_max.0 < self.retry_initial.0 || self.retry_max.0 > Duration::from_secs(3600) {
            errs.push(FieldError::new(
                "retry_max",
                "must be at least `retry_initial` and at most 1h",
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(WorkerConfig {
            grouping: Grouping {
                window: self.group_window.0,
                max_batch: self.max_batch,
            },
            backoff_initial: self.retry_initial.0,
            backoff_max: self.retry_max.0,
            poll: Duration::from_secs(1),
        })
    }
}

fn wall_now() -> Timestamp {
    Timestamp::from_nanos(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
    )
}

type Db = Arc<Mutex<Connection>>;

/// Run a blocking SQLite closure off the async threads.
async fn with_db<T: Send + 'static>(
    db: &Db,
    f: impl FnOnce(&mut Connection) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, OutboxError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = db
            .lock()
            .map_err(|_| OutboxError::Task("outbox connection mutex poisoned".into()))?;
        f(&mut c)
    })
    .await
    .map_err(|e| OutboxError::Task(e.to_string()))?
}

fn heads(conn: &Connection, channel: &str) -> Result<Vec<GroupHead>, OutboxError> {
    let mut st = conn.prepare_cached(
        "SELECT o.group_key, o.seq, o.next_attempt, o.batch IS NOT NULL
         FROM outbox o
         JOIN (SELECT group_key, MIN(seq) AS s FROM outbox
               WHERE channel = ?1 AND status = 'pending' GROUP BY group_key) h
           ON o.seq = h.s",
    )?;
    let rows = st.query_map([channel], |r| {
        Ok(GroupHead {
            key: r.get(0)?,
            head_seq: r.get(1)?,
            next_attempt: Timestamp::from_millis(r.get(2)?),
            in_batch: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A row of a batch: queue position and its payload (or why it cannot be read).
type BatchRow = (i64, Result<Notification, String>);

/// Whether SQLite answered "busy"/"locked".
fn is_busy(e: &OutboxError) -> bool {
    matches!(
        e,
        OutboxError::Db(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Run `f` (one transaction), again after a short pause when SQLite answers busy. A
/// deferred transaction that read and then writes gets `SQLITE_BUSY` at once, without the
/// busy timeout, when another connection (the journal writer) committed in between; retrying
/// the whole transaction is the remedy. Seen under a reading burst: the worker failed and
/// restarted 2 s later, holding an alarm notification back for those 2 s.
fn retry_busy<T>(mut f: impl FnMut() -> Result<T, OutboxError>) -> Result<T, OutboxError> {
    let mut pause = Duration::from_millis(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Fix (if new) and load the next batch of `key`: rows in queue order. `early`: event ids
/// this worker published ahead of their commit. A new batch is the pending rows up to the
/// first that differs from the head in having gone out early: a batch's key is its head's
/// event id, so a batch headed by an early-sent row reuses that message's key and must
/// hold only rows that went out early with it (it is marked delivered, nothing is sent);
/// a receiver that deduplicates on the key would otherwise drop the rows that did not go
/// early. (They get a batch, and a key, of their own.)
fn take_batch(
    conn: &mut Connection,
    channel: &str,
    key: &str,
    max_batch: usize,
    early: &std::collections::HashSet<u64>,
) -> Result<(u64, Vec<BatchRow>), OutboxError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let head: Option<(i64, i64, Option<i64>)> = tx
        .prepare_cached(
            "SELECT seq, event_id, batch FROM outbox
             WHERE channel = ?1 AND group_key = ?2 AND status = 'pending'
             ORDER BY seq LIMIT 1",
        )?
        .query_row(params![channel, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((_, head_event, head_batch)) = head else {
        return Ok((0, Vec::new()));
    };
    let batch = match head_batch {
        Some(b) => b,
        None => {
            let candidates: Vec<(i64, u64)> = tx
                .prepare_cached(
                    "SELECT seq, event_id FROM outbox
                     WHERE channel = ?1 AND group_key = ?2 AND status = 'pending'
                       AND batch IS NULL
                     ORDER BY seq LIMIT ?3",
                )?
                .query_map(params![channel, key, max_batch.max(1) as i64], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            let head_early = early.contains(&(head_event as u64));
            let mut fix = tx.prepare_cached("UPDATE outbox SET batch = ?2 WHERE seq = ?1")?;
            for (seq, _) in candidates
                .iter()
                .take_while(|(_, e)| early.contains(e) == head_early)
            {
                fix.execute(params![seq, head_event])?;
            }
            head_event
        }
    };
    let rows = {
        let mut st = tx.prepare_cached(
            "SELECT seq, payload FROM outbox
             WHERE channel = ?1 AND batch = ?2 AND status = 'pending' ORDER BY seq",
        )?;
        let rows = st.query_map(params![channel, batch], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|r| {
            r.map(|(seq, p)| {
                (
                    seq,
                    serde_json::from_str::<Notification>(&p).map_err(|e| e.to_string()),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?
    };
    tx.commit()?;
    Ok((batch as u64, rows))
}

fn mark(
    conn: &mut Connection,
    seqs: &[i64],
    status: Status,
    now: Timestamp,
    next_attempt: Timestamp,
    error: Option<&str>,
    receipt: Option<&str>,
) -> Result<(), OutboxError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut st = tx.prepare_cached(
            "UPDATE outbox SET status = ?2, attempts = attempts + 1, next_attempt = ?3,
                 last_error = COALESCE(?4, last_error),
                 delivered_at = CASE WHEN ?2 = 'delivered' THEN ?5 ELSE delivered_at END,
                 receipt = COALESCE(?6, receipt)
             WHERE seq = ?1",
        )?;
        for s in seqs {
            st.execute(params![
                s,
                status.as_str(),
                next_attempt.millis(),
                error,
                now.millis(),
                receipt
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A notification handed to a channel's worker ahead of its journal commit, with the
/// notifications of its group on that channel that were raised before it and are not
/// committed yet (`before`): their rows are not visible to the worker, so it would not
/// know to wait for them. It publishes this one early only if every one of those went out
/// early too, so that an alarm never overtakes an older one of its enterprise.
#[derive(Clone, Debug)]
pub struct EarlyNote {
    /// The notification.
    pub n: Notification,
    /// Older notifications of its group on this channel not committed yet, by event id.
    pub before: Vec<u64>,
}

impl From<Notification> for EarlyNote {
    fn from(n: Notification) -> Self {
        Self {
            n,
            before: Vec::new(),
        }
    }
}

/// Sends notifications to a channel's worker ahead of their journal commit (see the module
/// docs). Back-pressure: the sender only ever `try_send`s; when the queue is full the
/// notification is simply not sent early and its outbox row delivers it as usual.
pub type EarlyTx = tokio::sync::mpsc::Sender<EarlyNote>;
/// The worker's end of [`EarlyTx`].
pub type EarlyRx = tokio::sync::mpsc::Receiver<EarlyNote>;
/// Capacity of an early queue (notifications).
pub const EARLY_CAPACITY: usize = 256;
/// Most early-sent event ids a worker remembers while waiting for their rows (a row
/// normally follows within milliseconds; the oldest are forgotten first, and a forgotten
/// one is merely sent a second time: at least once).
const EARLY_REMEMBERED: usize = 4096;

/// Deliver the outbox rows of `channel` until `cancel` fires. One worker per channel and
/// database. `wake` is notified by whoever enqueues (after commit); the table is also
/// polled every `cfg.poll`. Returns only on cancel or a database error (the caller
/// restarts it; nothing is lost, the rows stay pending). Runs in span `outbox{channel}`.
pub async fn run_worker<D: Deliver>(
    db_path: PathBuf,
    channel: Arc<D>,
    cfg: WorkerConfig,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<(), OutboxError> {
    let span = tracing::info_span!("outbox", channel = %channel.name());
    worker_loop(db_path, channel, cfg, wake, None, cancel)
        .instrument(span)
        .await
}

/// [`run_worker`] that also takes notifications ahead of their journal commit from `early`
/// (see the module docs: it publishes them at once when their group is clear and later
/// marks their rows delivered without sending them again). The receiver is borrowed so
/// that a restarted worker keeps the queue.
pub async fn run_worker_early<D: Deliver>(
    db_path: PathBuf,
    channel: Arc<D>,
    cfg: WorkerConfig,
    wake: Arc<Notify>,
    early: &mut EarlyRx,
    cancel: CancellationToken,
) -> Result<(), OutboxError> {
    let span = tracing::info_span!("outbox", channel = %channel.name());
    worker_loop(db_path, channel, cfg, wake, Some(early), cancel)
        .instrument(span)
        .await
}

/// What a worker keeps in memory between rounds.
#[derive(Default)]
struct WorkerState {
    /// Back-off per group: one enterprise's failing message does not slow the others, and
    /// the others' successes do not reset its back-off.
    backoffs: HashMap<String, Backoff>,
    /// When each group last sent (grouping window).
    last_sent: HashMap<String, Timestamp>,
    /// Event ids published early whose rows were not taken yet → the receipt, in the
    /// order sent (for forgetting the oldest).
    early_sent: HashMap<u64, String>,
    early_order: std::collections::VecDeque<u64>,
}

impl WorkerState {
    fn remember_early(&mut self, event_id: u64, receipt: String) {
        if self.early_sent.insert(event_id, receipt).is_none() {
            self.early_order.push_back(event_id);
        }
        while self.early_order.len() > EARLY_REMEMBERED {
            if let Some(old) = self.early_order.pop_front() {
                self.early_sent.remove(&old);
            }
        }
    }
    fn forget_early(&mut self, event_id: u64) -> Option<String> {
        let r = self.early_sent.remove(&event_id);
        if r.is_some() {
            self.early_order.retain(|e| *e != event_id);
        }
        r
    }
}

/// Pending rows of `key` on `channel` queued before `event_id`'s (all of them while its own
/// row is not committed yet; at most 64), and whether `event_id`'s own row was already
/// taken into a batch or finished. (Rows queued after it — the other events of its
/// transaction — come after it anyway.)
fn early_check(
    conn: &Connection,
    channel: &str,
    key: &str,
    event_id: u64,
) -> Result<(Vec<u64>, bool), OutboxError> {
    let mut st = conn.prepare_cached(
        "SELECT event_id FROM outbox
         WHERE channel = ?1 AND group_key = ?2 AND status = 'pending'
           AND seq < COALESCE((SELECT seq FROM outbox WHERE channel = ?1 AND event_id = ?3),
                              9223372036854775807)
         ORDER BY seq LIMIT 64",
    )?;
    let others = st
        .query_map(params![channel, key, event_id as i64], |r| {
            r.get::<_, i64>(0).map(|v| v as u64)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let taken: bool = conn
        .prepare_cached(
            "SELECT status != 'pending' OR batch IS NOT NULL FROM outbox
             WHERE channel = ?1 AND event_id = ?2",
        )?
        .query_row(params![channel, event_id as i64], |r| r.get(0))
        .optional()?
        .unwrap_or(false);
    Ok((others, taken))
}

/// Publish a notification that came ahead of its journal commit, when that keeps the
/// order of its group and the grouping window: nothing of the group is pending but rows
/// this worker already published early, its own row (if committed yet) was not taken,
/// and the group's window has passed. Otherwise it is left to its outbox row. A failed
/// attempt is only logged: the row is delivered (and retried) as usual.
async fn deliver_early<D: Deliver>(
    db: &Db,
    channel: &Arc<D>,
    name: &str,
    cfg: &WorkerConfig,
    st: &mut WorkerState,
    early: EarlyNote,
    cancel: &CancellationToken,
) -> Result<(), OutboxError> {
    let EarlyNote { n, before } = early;
    if n.drill.is_some() || st.early_sent.contains_key(&n.event_id) {
        return Ok(());
    }
    if let Some(older) = before.iter().find(|e| !st.early_sent.contains_key(e)) {
        debug!(channel = %name, event = n.event_id, older, "not sent early: an older notification of its group is neither committed nor sent early");
        return Ok(());
    }
    let key = group_key(&n);
    let now = wall_now();
    if st
        .last_sent
        .get(&key)
        .is_some_and(|t| *t + cfg.grouping.window > now)
    {
        return Ok(());
    }
    let (ch, k, id) = (name.to_string(), key.clone(), n.event_id);
    let (others, taken) = with_db(db, move |c| early_check(c, &ch, &k, id)).await?;
    if taken || others.iter().any(|e| !st.early_sent.contains_key(e)) {
        debug!(channel = %name, event = n.event_id, "not sent early: older rows of its group are pending");
        return Ok(());
    }
    let result = tokio::select! {
        r = channel.deliver_batch(std::slice::from_ref(&n)) => r,
        () = cancel.cancelled() => return Ok(()),
    };
    match result {
        Ok(d) => {
            debug!(channel = %name, event = n.event_id, "delivered ahead of the journal commit");
            st.last_sent.insert(key, wall_now());
            st.remember_early(n.event_id, d.receipt);
        }
        Err(e) => {
            warn!(channel = %name, event = n.event_id, error = %e, "early delivery failed; the outbox row will be delivered");
        }
    }
    Ok(())
}

async fn recv_early(early: &mut Option<&mut EarlyRx>) -> Option<EarlyNote> {
    match early {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn worker_loop<D: Deliver>(
    db_path: PathBuf,
    channel: Arc<D>,
    cfg: WorkerConfig,
    wake: Arc<Notify>,
    mut early: Option<&mut EarlyRx>,
    cancel: CancellationToken,
) -> Result<(), OutboxError> {
    let name = channel.name().to_string();
    let db: Db = Arc::new(Mutex::new(open(&db_path)?));
    // The early path's reads go through a connection of their own: in WAL mode they do not
    // wait for the bookkeeping connection's commit, whose fsync took up to 72 ms while the
    // host's disk was saturated (issue #11).
    let rdb: Db = Arc::new(Mutex::new(open(&db_path)?));
    let mut st = WorkerState::default();
    // Await a bookkeeping transaction while handing out the early notes that arrive
    // meanwhile: an alarm does not queue behind the worker's own commits.
    macro_rules! serving_early {
        ($work:expr) => {{
            let work = $work;
            tokio::pin!(work);
            loop {
                tokio::select! {
                    biased;
                    r = &mut work => break r,
                    Some(n) = recv_early(&mut early) => {
                        deliver_early(&rdb, &channel, &name, &cfg, &mut st, n, &cancel).await?;
                    }
                }
            }
        }};
    }
    info!(channel = %name, "outbox worker started");
    loop {
        if cancel.is_cancelled() {
            info!(channel = %name, "outbox worker stopped");
            return Ok(());
        }
        // Notifications ahead of their commit first: they are the newest alarms.
        while let Some(n) = early.as_mut().and_then(|rx| rx.try_recv().ok()) {
            deliver_early(&rdb, &channel, &name, &cfg, &mut st, n, &cancel).await?;
        }
        let now = wall_now();
        let ch = name.clone();
        let hs = serving_early!(with_db(&db, move |c| heads(c, &ch)))?;
        let wait = match plan(&hs, &st.last_sent, &cfg.grouping, now) {
            Plan::Send(key) => {
                let ch = name.clone();
                let k = key.clone();
                let max = cfg.grouping.max_batch;
                let early_ids: std::collections::HashSet<u64> =
                    st.early_sent.keys().copied().collect();
                let (batch_id, rows) = serving_early!(with_db(&db, move |c| retry_busy(|| {
                    take_batch(c, &ch, &k, max, &early_ids)
                })))?;
                if rows.is_empty() {
                    continue;
                }
                // Every row of the batch already went out early: record it, send nothing.
                let early_receipts: Option<Vec<String>> = rows
                    .iter()
                    .map(|(_, n)| {
                        n.as_ref()
                            .ok()
                            .and_then(|n| st.early_sent.get(&n.event_id).cloned())
                    })
                    .collect();
                if let Some(receipts) = early_receipts {
                    for (_, n) in &rows {
                        if let Ok(n) = n {
                            st.forget_early(n.event_id);
                        }
                    }
                    let seqs: Vec<i64> = rows.iter().map(|(s, _)| *s).collect();
                    let receipt = format!("early: {}", receipts.join("; "));
                    let done = wall_now();
                    debug!(channel = %name, batch = batch_id, events = seqs.len(), "already delivered ahead of the journal commit");
                    serving_early!(with_db(&db, move |c| {
                        retry_busy(|| {
                            mark(
                                c,
                                &seqs,
                                Status::Delivered,
                                done,
                                done,
                                None,
                                Some(&receipt),
                            )
                        })
                    }))?;
                    continue;
                }
                let mut seqs = Vec::with_capacity(rows.len());
                let mut batch = Vec::with_capacity(rows.len());
                let mut bad = None;
                for (seq, n) in rows {
                    seqs.push(seq);
                    match n {
                        Ok(n) => batch.push(n),
                        Err(e) => bad = Some(e),
                    }
                }
                let result = match bad {
                    Some(e) => Err(DeliveryError::Config(format!("unreadable payload: {e}"))),
                    None => {
                        tokio::select! {
                            r = channel.deliver_batch(&batch) => r,
                            () = cancel.cancelled() => {
                                // Not marked: the batch stays pending and is resent (same
                                // key) by the next worker.
                                info!(channel = %name, batch = batch_id, "outbox worker stopped mid-delivery");
                                return Ok(());
                            }
                        }
                    }
                };
                let done = wall_now();
                match result {
                    Ok(d) => {
                        debug!(channel = %name, batch = batch_id, events = seqs.len(), status = d.status, "delivered");
                        st.backoffs.remove(&key);
                        st.last_sent.insert(key, done);
                        let receipt = d.receipt;
                        serving_early!(with_db(&db, move |c| {
                            retry_busy(|| {
                                mark(
                                    c,
                                    &seqs,
                                    Status::Delivered,
                                    done,
                                    done,
                                    None,
                                    Some(&receipt),
                                )
                            })
                        }))?;
                    }
                    Err(e) if e.is_retryable() => {
                        let delay = st
                            .backoffs
                            .entry(key.clone())
                            .or_insert_with(|| {
                                Backoff::new(
                                    cfg.backoff_initial,
                                    cfg.backoff_max,
                                    fnv1a(&name) ^ fnv1a(&key),
                                )
                            })
                            .next_delay();
                        warn!(channel = %name, batch = batch_id, error = %e, retry_in_ms = delay.as_millis() as u64, "delivery failed, will retry");
                        let msg = e.to_string();
                        serving_early!(with_db(&db, move |c| {
                            retry_busy(|| {
                                mark(
                                    c,
                                    &seqs,
                                    Status::Pending,
                                    done,
                                    done + delay,
                                    Some(&msg),
                                    None,
                                )
                            })
                        }))?;
                    }
                    Err(e) => {
                        st.backoffs.remove(&key);
                        error!(channel = %name, batch = batch_id, error = %e, "delivery failed permanently");
                        let msg = e.to_string();
                        serving_early!(with_db(&db, move |c| {
                            retry_busy(|| {
                                mark(c, &seqs, Status::Failed, done, done, Some(&msg), None)
                            })
                        }))?;
                    }
                }
                continue;
            }
            Plan::WaitUntil(t) => t.since(now).min(cfg.poll),
            Plan::Idle => cfg.poll,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
            Some(n) = recv_early(&mut early) => {
                deliver_early(&rdb, &channel, &name, &cfg, &mut st, n, &cancel).await?;
            }
            () = cancel.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkguard_drivers::notify::{Delivered, Priority};
    use parkguard_rules::PointKind;
    use std::collections::HashSet;

    fn note(id: u64, enterprise: &str) -> Notification {
        Notification {
            event_id: id,
            alarm_id: format!("GT-{id}:H"),
            drill: None,
            enterprise: enterprise.into(),
            enterprise_name: None,
            area: None,
            kind: PointKind::Combustible,
            tag: format!("GT-{id}"),
            point_name: "methane".into(),
            condition: "H".into(),
            priority: Priority::High,
            state: "unacknowledged".into(),
            value: Some(30.0),
            unit: "%LEL".into(),
            limit: Some(25.0),
            time: Timestamp::from_secs(1_795_688_531),
            grade: None,
            message_zh: format!("事件 {id}"),
            message_en: format!("event {id}"),
        }
    }

    /// Records every attempt (event ids, whether it succeeded); fails once for the ids in
    /// `fail_once`.
    #[derive(Default)]
    struct Recorder {
        attempts: std::sync::Mutex<Vec<(Vec<u64>, bool)>>,
        fail_once: std::sync::Mutex<HashSet<u64>>,
    }

    impl Recorder {
        fn delivered(&self) -> Vec<u64> {
            let a = self.attempts.lock().unwrap();
            a.iter()
                .filter(|(_, ok)| *ok)
                .flat_map(|(ids, _)| ids.clone())
                .collect()
        }
    }

    impl Deliver for Recorder {
        fn name(&self) -> &str {
            "bus"
        }
        fn is_drill(&self) -> bool {
            false
        }
        async fn deliver_batch(&self, batch: &[Notification]) -> Result<Delivered, DeliveryError> {
            let ids: Vec<u64> = batch.iter().map(|n| n.event_id).collect();
            let fail = ids.iter().any(|i| self.fail_once.lock().unwrap().remove(i));
            self.attempts.lock().unwrap().push((ids, !fail));
            if fail {
                Err(DeliveryError::Connect("injected".into()))
            } else {
                Ok(Delivered {
                    status: 0,
                    receipt: "PUBACK".into(),
                })
            }
        }
    }

    /// The row of `n`, committed as the journal thread would (own transaction).
    fn commit_row(conn: &mut Connection, n: &Notification) {
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO outbox (event_id, channel, alarm_id, group_key, payload, enqueued_at,
                 next_attempt) VALUES (?1, 'bus', ?2, ?3, ?4, 0, 0)",
            params![
                n.event_id as i64,
                n.alarm_id,
                n.enterprise,
                serde_json::to_string(n).unwrap()
            ],
        )
        .unwrap();
        tx.commit().unwrap();
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(tokio::time::Instant::now() < end, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A worker with an early queue on the database at `path` (no grouping window, 300 ms
    /// retries, polling the table every `poll`), delivering to a [`Recorder`].
    struct EarlyWorker {
        rec: Arc<Recorder>,
        wake: Arc<Notify>,
        cancel: CancellationToken,
        early_tx: EarlyTx,
        worker: tokio::task::JoinHandle<()>,
    }

    fn early_worker(path: &Path, poll: Duration) -> EarlyWorker {
        let rec = Arc::new(Recorder::default());
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let (early_tx, mut early_rx) = tokio::sync::mpsc::channel(EARLY_CAPACITY);
        let cfg = WorkerConfig {
            grouping: Grouping {
                window: Duration::ZERO,
                max_batch: 20,
            },
            backoff_initial: Duration::from_millis(300),
            backoff_max: Duration::from_millis(300),
            poll,
        };
        let worker = {
            let (p, rec, wake, cancel) = (
                path.to_path_buf(),
                rec.clone(),
                wake.clone(),
                cancel.clone(),
            );
            tokio::spawn(async move {
                run_worker_early(p, rec, cfg, wake, &mut early_rx, cancel)
                    .await
                    .unwrap();
            })
        };
        EarlyWorker {
            rec,
            wake,
            cancel,
            early_tx,
            worker,
        }
    }

    /// Early delivery: a notification handed over before its row is committed goes out at
    /// once, and its row, once committed, is marked delivered without a second send. While
    /// an older row of the same enterprise is pending (here: being retried), a newer
    /// notification does not overtake it; another enterprise is not held up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn early_delivery_goes_before_the_commit_and_keeps_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut conn = open(&path).unwrap();
        let EarlyWorker {
            rec,
            wake,
            cancel,
            early_tx,
            worker,
        } = early_worker(&path, Duration::from_secs(1));

        // 10: handed over, not committed yet → published at once.
        early_tx.try_send(note(10, "E1").into()).unwrap();
        until("10 published ahead of its commit", || {
            rec.delivered() == [10]
        })
        .await;
        assert!(channel_rows(&conn, "bus").unwrap().is_empty());
        // Its row is committed: delivered without a second message.
        commit_row(&mut conn, &note(10, "E1"));
        wake.notify_one();
        until("row 10 delivered", || {
            channel_rows(&conn, "bus").unwrap()[0].status == Status::Delivered
        })
        .await;
        let row = &channel_rows(&conn, "bus").unwrap()[0];
        assert!(
            row.receipt.as_deref().unwrap().starts_with("early"),
            "{row:?}"
        );
        assert_eq!(row.attempts, 1);

        // 11 was not handed over (say the queue was full) and its first attempt fails:
        // it waits 300 ms for its retry. 12, handed over meanwhile, must not overtake it;
        // 20 of another enterprise goes at once.
        rec.fail_once.lock().unwrap().insert(11);
        commit_row(&mut conn, &note(11, "E1"));
        wake.notify_one();
        until("11 attempted", || rec.attempts.lock().unwrap().len() == 2).await;
        early_tx.try_send(note(12, "E1").into()).unwrap();
        commit_row(&mut conn, &note(12, "E1"));
        early_tx.try_send(note(20, "E2").into()).unwrap();
        until("20 published", || rec.delivered().contains(&20)).await;
        assert!(
            !rec.delivered().contains(&12),
            "12 overtook 11: {:?}",
            rec.delivered()
        );
        commit_row(&mut conn, &note(20, "E2"));
        wake.notify_one();
        until("everything delivered", || {
            channel_rows(&conn, "bus")
                .unwrap()
                .iter()
                .all(|r| r.status == Status::Delivered)
                && rec.delivered().len() == 4
        })
        .await;
        assert_eq!(rec.delivered(), [10, 20, 11, 12]);
        cancel.cancel();
        worker.await.unwrap();
    }

    /// An early note that arrives while the worker's own bookkeeping transaction waits for
    /// the disk (here: for a write lock another connection holds, as a slow fsync would) is
    /// published at once, not after that transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_early_note_does_not_wait_for_the_workers_own_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut conn = open(&path).unwrap();
        // Woken only when the test says so: nothing takes row 10 before the lock.
        let EarlyWorker {
            rec,
            wake,
            cancel,
            early_tx,
            worker,
        } = early_worker(&path, Duration::from_secs(600));
        // The worker has looked at the empty table and waits. Row 10 is committed; then
        // the disk "stalls": another connection holds the write lock, so the worker's
        // transaction taking row 10 into a batch cannot commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        commit_row(&mut conn, &note(10, "E1"));
        let mut stall = open(&path).unwrap();
        let held = stall
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            rec.delivered().is_empty(),
            "row 10 went out through a held lock"
        );
        // An alarm of another enterprise is handed over meanwhile: it goes out now.
        early_tx.try_send(note(20, "E2").into()).unwrap();
        until("20 published while the worker's transaction waits", || {
            rec.delivered() == [20]
        })
        .await;
        // The disk is back: row 10 goes out.
        held.commit().unwrap();
        until("10 delivered after the stall", || {
            rec.delivered() == [20, 10]
        })
        .await;
        cancel.cancel();
        worker.await.unwrap();
    }

    /// Notifications handed over before the journal committed the older ones of their
    /// group (the engine hands them over as they are raised, while the journal may be in a
    /// slow fsync): one goes early only if every older uncommitted one of its group went
    /// early too. Otherwise it waits for its row, behind the older one's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_early_note_does_not_overtake_an_older_uncommitted_one_of_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut conn = open(&path).unwrap();
        let EarlyWorker {
            rec,
            wake,
            cancel,
            early_tx,
            worker,
        } = early_worker(&path, Duration::from_secs(1));
        // 40 goes early; 41, raised after it before either was committed, may follow it.
        early_tx.try_send(note(40, "E4").into()).unwrap();
        early_tx
            .try_send(EarlyNote {
                n: note(41, "E4"),
                before: vec![40],
            })
            .unwrap();
        until("40 and 41 published early", || rec.delivered() == [40, 41]).await;
        // 30 was not handed over (its queue was full) and is not committed; 31 of the same
        // enterprise is handed over: it must wait. 50 of another enterprise goes at once.
        early_tx
            .try_send(EarlyNote {
                n: note(31, "E3"),
                before: vec![30],
            })
            .unwrap();
        early_tx.try_send(note(50, "E5").into()).unwrap();
        until("50 published", || rec.delivered().contains(&50)).await;
        assert!(
            !rec.delivered().contains(&31),
            "31 overtook 30: {:?}",
            rec.delivered()
        );
        // The journal commits: 30, then 31, go out from their rows, in order.
        for (id, e) in [(40, "E4"), (41, "E4"), (50, "E5"), (30, "E3"), (31, "E3")] {
            commit_row(&mut conn, &note(id, e));
        }
        wake.notify_one();
        until("everything delivered", || {
            channel_rows(&conn, "bus")
                .unwrap()
                .iter()
                .all(|r| r.status == Status::Delivered)
        })
        .await;
        assert_eq!(rec.delivered(), [40, 41, 50, 30, 31]);
        cancel.cancel();
        worker.await.unwrap();
    }

    /// A batch's key is its head's event id. A row that went out early went under that
    /// key already, so a batch it heads holds only rows that went out early too (marked
    /// delivered, nothing sent); the others get a batch and a key of their own, or a
    /// receiver deduplicating on the key would drop them. (With the grouping window, an
    /// alarm right after an early-sent one of its enterprise waits in the table, and both
    /// rows are taken together when the window ends.)
    #[test]
    fn a_batch_headed_by_an_early_sent_row_holds_only_early_sent_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut conn = open(&path).unwrap();
        // 10 went out early; 11 (within the grouping window) and 12 did not; 13 did.
        for id in [10, 11, 12, 13] {
            commit_row(&mut conn, &note(id, "E1"));
        }
        let early: std::collections::HashSet<u64> = [10, 13].into();
        let ids = |rows: &[BatchRow]| -> Vec<u64> {
            rows.iter()
                .map(|(_, n)| n.as_ref().unwrap().event_id)
                .collect()
        };
        let done = |conn: &mut Connection, rows: &[BatchRow]| {
            let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let t = Timestamp::from_millis(1);
            mark(conn, &seqs, Status::Delivered, t, t, None, Some("ok")).unwrap();
        };
        // Under key 10 only what went out under key 10: the early-sent row.
        let (key, rows) = take_batch(&mut conn, "bus", "E1", 20, &early).unwrap();
        assert_eq!((key, ids(&rows)), (10, vec![10]));
        done(&mut conn, &rows);
        // 11 and 12 under a key of their own (13 went early: not sent again).
        let (key, rows) = take_batch(&mut conn, "bus", "E1", 20, &early).unwrap();
        assert_eq!((key, ids(&rows)), (11, vec![11, 12]));
        done(&mut conn, &rows);
        let (key, rows) = take_batch(&mut conn, "bus", "E1", 20, &early).unwrap();
        assert_eq!((key, ids(&rows)), (13, vec![13]));
        // Without early rows the batch takes all pending rows, as before.
        for id in [20, 21] {
            commit_row(&mut conn, &note(id, "E2"));
        }
        let (key, rows) = take_batch(&mut conn, "bus", "E2", 20, &Default::default()).unwrap();
        assert_eq!((key, ids(&rows)), (20, vec![20, 21]));
    }

    /// The journal writer commits while the worker fixes a batch. A deferred transaction
    /// that reads, then writes, got busy at once from SQLite (no busy timeout: its read
    /// snapshot was stale); the worker's transactions now begin IMMEDIATE (the write lock
    /// first, waiting up to the busy timeout) and still retry a busy answer. The worker
    /// must never fail here (it used to fail and restart 2 s later).
    #[test]
    fn taking_batches_while_another_connection_writes_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut worker = open(&path).unwrap();
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut w = open(&writer_path).unwrap();
            for i in 0..3000i64 {
                let tx = w.transaction().unwrap();
                tx.execute(
                    "INSERT INTO outbox (event_id, channel, alarm_id, group_key, payload,
                         enqueued_at, next_attempt) VALUES (?1, 'bus', 'A', ?2, '{}', 0, 0)",
                    params![i, format!("E{}", i % 3)],
                )
                .unwrap();
                tx.commit().unwrap();
            }
        });
        let mut taken = 0usize;
        let mut rounds = 0usize;
        while !writer.is_finished() || rounds == 0 {
            rounds += 1;
            for key in ["E0", "E1", "E2"] {
                let (_, rows) =
                    retry_busy(|| take_batch(&mut worker, "bus", key, 20, &Default::default()))
                        .unwrap_or_else(|e| panic!("round {rounds}: {e}"));
                let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
                taken += seqs.len();
                retry_busy(|| {
                    mark(
                        &mut worker,
                        &seqs,
                        Status::Delivered,
                        Timestamp::from_millis(1),
                        Timestamp::from_millis(1),
                        None,
                        Some("ok"),
                    )
                })
                .unwrap_or_else(|e| panic!("round {rounds}: {e}"));
            }
        }
        writer.join().unwrap();
        assert!(taken > 0, "the worker took nothing in {rounds} rounds");
    }

    /// A delivery worker and the journal writer set up a fresh file at the same moment.
    /// Before `open` retried, SQLite answered one of three connections "database is locked"
    /// at once in about 3 of 400 trials; the worker then died at start (CI run of 80a0f57).
    /// 400 trials catch that with about 95 % probability.
    #[test]
    fn a_fresh_file_opened_by_three_connections_at_once_never_fails() {
        for trial in 0..400 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let start = Arc::new(std::sync::Barrier::new(3));
            let openers: Vec<_> = (0..3)
                .map(|k| {
                    let (path, start) = (path.clone(), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        let c = open(&path)?;
                        if k == 0 {
                            // as the test journal does right after opening
                            c.execute_batch("CREATE TABLE IF NOT EXISTS journal (a)")?;
                        }
                        Ok::<_, OutboxError>(())
                    })
                })
                .collect();
            for o in openers {
                if let Err(e) = o.join().unwrap() {
                    panic!("trial {trial}: {e}");
                }
            }
        }
    }

    #[test]
    fn outbox_config_defaults_and_errors() {
        let c: OutboxConfig = serde_json::from_str("{}").unwrap();
        let w = c.validate().unwrap();
        assert_eq!(w.grouping.window, Duration::from_secs(30));
        assert_eq!(w.grouping.max_batch, 20);
        let bad: OutboxConfig = serde_json::from_value(serde_json::json!({
            "group_window": "1h", "max_batch": 0, "retry_initial": "10ms", "retry_max": "2h"
        }))
        .unwrap();
        let fields: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["group_window", "max_batch", "retry_initial", "retry_max"]
        );
        assert!(serde_json::from_str::<OutboxConfig>(r#"{"window": "5s"}"#).is_err());
    }
}
