//! The seam between the HTTP API and the engine: [`ApiBackend`] and the types on the wire.
//!
//! The API never touches alarm state itself. Reads come from the engine's snapshot
//! (a `watch` channel in the engine task) and writes go to the engine's command channel,
//! which answers with the state before and after (DESIGN.md, data flow). The engine task
//! implements this trait over those handles; [`super::testing::TestBackend`] is an
//! in-process test double used by the router and browser tests beside — not instead of —
//! that real wiring.
//!
//! The API layer adds what is the same for every backend: authentication and roles,
//! input validation, the audit entry for every write, events, metrics.

use crate::auth::Role;
use parkguard_rules::{AlarmLimits, GeoPoint, PointKind};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so that [`ApiBackend`] is object safe.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who asks for a change (for the engine's own journal).
#[derive(Clone, Debug, Serialize)]
pub struct Actor {
    /// Login name.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Client IP.
    pub ip: String,
}

/// Why the backend refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such alarm, point or version (404).
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the current state, e.g. acknowledging an acknowledged alarm or a
    /// stale `expected_version` (409).
    #[error("{0}")]
    Conflict(String),
    /// Invalid request the API could not catch itself (422).
    #[error("{0}")]
    Invalid(String),
    /// The engine is not running or did not answer in time (503).
    #[error("{0}")]
    Unavailable(String),
}

/// State of a point as the console shows it (colour and label derive from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointState {
    /// Good value, no alarm.
    Normal,
    /// In alarm, not acknowledged (red, flashing).
    AlarmUnack,
    /// In alarm, acknowledged (red).
    AlarmAck,
    /// Returned to normal, not yet acknowledged.
    RtnUnack,
    /// Shelved by an operator (yellow: masked).
    Shelved,
    /// Out of service for maintenance (yellow: masked).
    OutOfService,
    /// Bad quality: fault, comm lost, stale (yellow: fault).
    Fault,
}

impl PointState {
    /// Urgency: a point shows the most urgent of its alarms' states and its quality.
    pub fn rank(self) -> u8 {
        match self {
            PointState::AlarmUnack => 6,
            PointState::AlarmAck => 5,
            PointState::RtnUnack => 4,
            PointState::Fault => 3,
            PointState::Shelved => 2,
            PointState::OutOfService => 1,
            PointState::Normal => 0,
        }
    }
}

/// A point with its live value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointView {
    /// Tag (位号).
    pub tag: String,
    /// Name.
    pub name: String,
    /// Enterprise code.
    pub enterprise: String,
    /// Kind.
    pub kind: PointKind,
    /// Unit symbol.
    pub unit: String,
    /// Last value (only meaningful with good quality).
    pub value: Option<f64>,
    /// Quality, snake_case (`good`, `comm_lost`, `stale`, …).
    pub quality: String,
    /// Device/source time of the last value, ms since the epoch.
    pub source_time_ms: Option<i64>,
    /// Receive time of the last value, ms since the epoch.
    pub receive_time_ms: Option<i64>,
    /// Alarm/quality state.
    pub state: PointState,
    /// Measuring range.
    pub range: [f64; 2],
    /// Current limits.
    pub limits: LimitsDto,
    /// Where it is.
    pub location: Option<GeoPoint>,
}

/// A point's new value on the live stream (SSE `point`, at most one per point per second):
/// only what changes with a reading. The static fields of [`PointView`] (name, unit,
/// range, limits, location) come from `GET /api/v1/points`; a client merges the update
/// into the point it holds. State changes (alarm, quality, service) are sent as a full
/// [`PointView`] at once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointUpdate<'a> {
    /// Tag (位号).
    pub tag: &'a str,
    /// Last value (only when good and fresh).
    pub value: Option<f64>,
    /// Quality, snake_case (`good`, `comm_lost`, `stale`, …; `none` before the first).
    pub quality: &'static str,
    /// Device/source time of the last value, ms since the epoch.
    pub source_time_ms: Option<i64>,
    /// Receive time of the last value, ms since the epoch.
    pub receive_time_ms: Option<i64>,
    /// Alarm/quality state.
    pub state: PointState,
}

/// One sample of a point's history.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Source time, ms since the epoch.
    pub t: i64,
    /// Value.
    pub v: f64,
    /// Quality good.
    pub good: bool,
}

/// Alarm state (ISA-18.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// Active, unacknowledged.
    Unack,
    /// Active, acknowledged.
    Ack,
    /// Returned to normal, unacknowledged.
    RtnUnack,
    /// Shelved.
    Shelved,
    /// Out of service.
    OutOfService,
    /// Over: returned and acknowledged (or closed).
    Normal,
}

/// Priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Highest.
    High,
    /// Medium.
    Medium,
    /// Low.
    Low,
}

/// An alarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmView {
    /// Alarm id (the engine's event id of its activation).
    pub id: u64,
    /// Point tag.
    pub point: String,
    /// Enterprise code.
    pub enterprise: String,
    /// Which limit: `hh`, `h`, `l`, `ll`, `roc`, `fault`, `stale`, `vote`.
    pub condition: String,
    /// Priority.
    pub priority: Priority,
    /// State.
    pub state: AlarmState,
    /// Value at activation.
    pub value: f64,
    /// The limit crossed.
    pub limit: Option<f64>,
    /// Unit symbol.
    pub unit: String,
    /// Activation time, ms since the epoch.
    pub raised_ms: i64,
    /// First alarm of the current burst (GB 16808 first-alarm indication).
    pub first: bool,
    /// Acknowledged by.
    pub acked_by: Option<String>,
    /// Acknowledged at, ms.
    pub acked_ms: Option<i64>,
    /// Last operator comment.
    pub comment: Option<String>,
    /// Shelved until, ms.
    pub shelved_until_ms: Option<i64>,
    /// Returned to normal at, ms.
    pub cleared_ms: Option<i64>,
    /// Drill id when this alarm belongs to a drill (shown under the drill banner).
    pub drill: Option<String>,
}

/// Filters of the alarm history (all optional, combined with AND).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmFilter {
    /// Enterprise code.
    pub enterprise: Option<String>,
    /// Point tag.
    pub point: Option<String>,
    /// Priority.
    pub priority: Option<Priority>,
    /// State.
    pub state: Option<AlarmState>,
    /// Raised at or after, ms.
    pub from_ms: Option<i64>,
    /// Raised before, ms.
    pub to_ms: Option<i64>,
    /// At most this many (default 200, max 5000).
    pub limit: Option<u32>,
}

/// An operator's command on an alarm.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AlarmCommand {
    /// Acknowledge.
    Ack {
        /// Comment.
        comment: String,
    },
    /// Shelve for a while.
    Shelve {
        /// How long (≤ the configured maximum).
        duration: Duration,
        /// Why.
        reason: String,
    },
    /// Unshelve.
    Unshelve {
        /// Why.
        reason: String,
    },
    /// Close (消警) with cause and action taken.
    Close {
        /// Cause.
        cause: String,
        /// Action taken.
        action: String,
        /// Reviewer (审核人); the acting user when not given.
        reviewer: Option<String>,
    },
}

/// An engineer's command on a point.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum PointCommand {
    /// Take out of service (maintenance): alarms still evaluated and recorded, not annunciated.
    OutOfService {
        /// Why.
        reason: String,
    },
    /// Return to service.
    ReturnToService {
        /// Why.
        reason: String,
    },
}

/// Limits on the wire (durations in seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDto {
    /// High-high / level-2.
    pub hh: Option<f64>,
    /// High / level-1.
    pub h: Option<f64>,
    /// Low.
    pub l: Option<f64>,
    /// Low-low.
    pub ll: Option<f64>,
    /// Deadband, in the point's unit.
    pub deadband: f64,
    /// On-delay, seconds.
    pub on_delay_s: f64,
    /// Off-delay, seconds.
    pub off_delay_s: f64,
}

impl From<&AlarmLimits> for LimitsDto {
    fn from(l: &AlarmLimits) -> Self {
        Self {
            hh: l.hh,
            h: l.h,
            l: l.l,
            ll: l.ll,
            deadband: l.deadband,
            on_delay_s: l.on_delay.as_secs_f64(),
            off_delay_s: l.off_delay.as_secs_f64(),
        }
    }
}

/// One version of a point's limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitsVersion {
    /// Point tag.
    pub tag: String,
    /// Version, 1 = as configured at start.
    pub version: u32,
    /// The limits.
    pub limits: LimitsDto,
    /// Who set them (`config` for version 1).
    pub changed_by: String,
    /// When, ms.
    pub changed_ms: i64,
    /// Why.
    pub reason: String,
}

/// Warning grade (provincial four colours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    /// No warning.
    None,
    /// 低 (blue).
    Blue,
    /// 一般 (yellow).
    Yellow,
    /// 较大 (orange).
    Orange,
    /// 重大 (red).
    Red,
}

/// Grade of one enterprise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnterpriseGrade {
    /// Enterprise code.
    pub code: String,
    /// Grade.
    pub grade: Grade,
    /// Since, ms.
    pub since_ms: Option<i64>,
    /// Why (rule that fired).
    pub reason: Option<String>,
}

/// Current warnings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarningsView {
    /// The park's grade.
    pub park: Grade,
    /// Each enterprise's grade (only those above `none` need be listed).
    pub enterprises: Vec<EnterpriseGrade>,
}

/// A grade change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarningChange {
    /// `park` or an enterprise code.
    pub scope: String,
    /// From.
    pub from: Grade,
    /// To.
    pub to: Grade,
    /// When, ms.
    pub at_ms: i64,
    /// Why.
    pub reason: String,
}

/// Data the drivers could not map onto a point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnmappedEntry {
    /// Source (`mqtt:<broker>`, `modbus:<device>`).
    pub source: String,
    /// Topic, tag or register.
    pub key: String,
    /// Why: `unknown_tag`, `bad_payload`, …
    pub reason: String,
    /// How often seen.
    pub count: u64,
    /// Last seen, ms.
    pub last_ms: i64,
    /// A sample (truncated).
    pub sample: String,
}

/// One readiness check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadyCheck {
    /// What (`engine`, `spool`, `modbus:<device>`, `mqtt:<broker>`).
    pub name: String,
    /// Ready.
    pub ok: bool,
    /// Detail for the operator.
    pub detail: String,
}

/// What the engine offers the API. Every method answers quickly from the engine's
/// snapshot or command channel; none may block the engine.
///
/// Events: the backend publishes every state change on the [`super::EventHub`] — whatever
/// caused it (a reading, a timer, an API command, a command from another channel) — so the
/// hub has one writer per kind and the console one source of truth:
/// `hub.publish("alarm", &AlarmView)` on every alarm state change,
/// `hub.publish_point_state(tag, &PointView, now)` on a point's state change (alarm,
/// quality, service; unthrottled, supersedes a waiting value update),
/// `hub.publish_point(tag, &PointView, now)` for new values (throttled per point),
/// `hub.publish("warning", &WarningsView)` when a grade changes,
/// `hub.publish("limits", &LimitsVersion)` when limits change. Drill engines publish
/// their alarms with `drill` set. The API itself publishes only `audit` events.
pub trait ApiBackend: Send + Sync + 'static {
    /// Every point with its live state.
    fn points(&self) -> BoxFut<'_, Result<Vec<PointView>, BackendError>>;
    /// One point.
    fn point(&self, tag: String) -> BoxFut<'_, Result<PointView, BackendError>>;
    /// History of a point between two times (ms).
    fn point_history(
        &self,
        tag: String,
        from_ms: i64,
        to_ms: i64,
    ) -> BoxFut<'_, Result<Vec<Sample>, BackendError>>;
    /// Active alarms (any order; the API sorts).
    fn alarms_active(&self) -> BoxFut<'_, Result<Vec<AlarmView>, BackendError>>;
    /// Alarm history, newest first.
    fn alarm_history(
        &self,
        filter: AlarmFilter,
    ) -> BoxFut<'_, Result<Vec<AlarmView>, BackendError>>;
    /// Apply an alarm command; returns the alarm before and after.
    fn alarm_command(
        &self,
        id: u64,
        cmd: AlarmCommand,
        by: Actor,
    ) -> BoxFut<'_, Result<(AlarmView, AlarmView), BackendError>>;
    /// Apply a point command; returns the point before and after.
    fn point_command(
        &self,
        tag: String,
        cmd: PointCommand,
        by: Actor,
    ) -> BoxFut<'_, Result<(PointView, PointView), BackendError>>;
    /// The longest shelving the configuration allows.
    fn max_shelve(&self) -> Duration;
    /// Current warnings.
    fn warnings(&self) -> BoxFut<'_, Result<WarningsView, BackendError>>;
    /// Warning changes, newest first.
    fn warning_history(&self, limit: u32) -> BoxFut<'_, Result<Vec<WarningChange>, BackendError>>;
    /// Unmapped data.
    fn unmapped(&self) -> BoxFut<'_, Result<Vec<UnmappedEntry>, BackendError>>;
    /// Every version of a point's limits, oldest first (the last is current).
    fn limit_versions(&self, tag: String) -> BoxFut<'_, Result<Vec<LimitsVersion>, BackendError>>;
    /// Apply new limits atomically if the current version is `expected_version` (when
    /// given); returns the versions before and after. The API validated them already.
    fn set_limits(
        &self,
        tag: String,
        limits: AlarmLimits,
        expected_version: Option<u32>,
        reason: String,
        by: Actor,
    ) -> BoxFut<'_, Result<(LimitsVersion, LimitsVersion), BackendError>>;
    /// Apply several points' limits as one change (a class change): all or none — a
    /// failure on any point restores the ones already applied. Returns (before, after)
    /// per point. The API validated them already. Default: not supported (503).
    fn set_limits_many(
        &self,
        changes: Vec<(String, AlarmLimits)>,
        reason: String,
        by: Actor,
    ) -> BoxFut<'_, Result<Vec<(LimitsVersion, LimitsVersion)>, BackendError>> {
        let _ = (changes, reason, by);
        Box::pin(async {
            Err(BackendError::Unavailable(
                "class changes are not supported by this backend".into(),
            ))
        })
    }
    /// What candidate limits would have done on the recorded history of the last `hours`
    /// compared with the current limits (a backtest report as JSON). Default: not
    /// supported (503).
    fn backtest_limits(
        &self,
        candidate: Vec<(String, AlarmLimits)>,
        hours: u32,
    ) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        let _ = (candidate, hours);
        Box::pin(async {
            Err(BackendError::Unavailable(
                "backtests are not supported by this backend".into(),
            ))
        })
    }
    /// Alarm KPIs as JSON. The console reads: `alarms_per_10min: [{t: ms, n}]`,
    /// `floods: n`, `chattering: [..]` (length shown), `top10: [{point, count}]`,
    /// `priority_mix: {high, medium, low}`; other keys are passed through.
    fn kpis(&self) -> BoxFut<'_, Result<serde_json::Value, BackendError>>;
    /// Linkage delivery status of one alarm: `{alarm, deliveries: [{event_id, channel,
    /// status, attempts, next_attempt_ms, last_error, delivered_at_ms, batch, receipt}],
    /// escalation: [{id, step, repeat, scheduled_ns, channels, label}]}`. Default: the
    /// backend has no linkage (empty lists).
    fn deliveries(&self, id: u64) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        Box::pin(async move {
            Ok(serde_json::json!({ "alarm_id": id, "deliveries": [], "escalation": [] }))
        })
    }
    /// Backlog per linkage channel: `{channels: [{channel, pending, delivered, failed,
    /// oldest_pending_ms}]}`. Default: none.
    fn outbox(&self) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        Box::pin(async move { Ok(serde_json::json!({ "channels": [] })) })
    }
    /// Readiness: drivers connected, engine running, spool writable.
    fn readiness(&self) -> BoxFut<'_, Vec<ReadyCheck>>;
    /// Append the backend's Prometheus metrics (text format) to `out`.
    fn render_metrics(&self, out: &mut String);
}
