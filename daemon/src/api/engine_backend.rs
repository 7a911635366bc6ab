//! The real [`ApiBackend`]: the running engine task, its journal and the spool archive.
//!
//! - Points and active alarms come from the engine's snapshot (`watch`, latest only).
//! - Commands and limit changes go through the engine's request channel
//!   ([`EngineHandle::command`], [`EngineHandle::replace_limits_batch`]); a refused command
//!   comes back as a clear 4xx ([`command_error`]). A limit change of several points (a
//!   class) is ONE engine step: all points change between two readings, or none does.
//! - Alarm and warning history and the KPIs are read from the journal over a read-only
//!   SQLite connection (empty when the daemon runs without a journal).
//! - Point history is read from the spool archive (empty without one).
//! - Limit versions: version 1 is the configured limits, each change adds one. With a
//!   [`LimitsStore`] attached ([`EngineBackend::attach_limits`], done by `wire::serve`
//!   with what the topology loaded from `<data.dir>/limits.sqlite`) every version is
//!   stored before the change is answered. At start the topology applies the latest
//!   stored version of each point to the engine before its first reading — unless the
//!   configuration file's limits changed since, in which case the file wins and that is
//!   recorded as a new version ([`super::limits::plan_restore`]). Every change is also in
//!   the audit log.
//!
//! Alarm ids on the wire: the engine names alarms `TAG:HH`; the API's numeric `id` is a
//! stable 53-bit FNV-1a hash of that name ([`alarm_num`]), so it survives restarts and is
//! exact in JavaScript numbers.
//!
//! [`pump`] forwards the engine's events to the SSE hub.

use super::backend::*;
use super::events::EventHub;
use super::limits::{LimitsAtStart, LimitsStore, Origin, StoredVersion, runtime_limits};
use crate::engine_task::{EngineHandle, LimitsRefused};
use crate::store::journal::{EventFilter, Journal, RecordKind};
use parkguard_rules::alarm::{AlarmEvent, AlarmState as EState, Condition, EventKind, SourceKind};
use parkguard_rules::engine::{
    AlarmView as EAlarm, Command, CommandError, EngineConfig, Event, Snapshot,
};
use parkguard_rules::warning::WarningScope;
use parkguard_rules::{AlarmLimits, PointId, PointTable, Timestamp};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Everything the real backend reads from. Optional parts are simply absent in a daemon
/// that runs without them (no journal, no spool, no Modbus, no MQTT).
#[derive(Clone)]
pub struct BackendParts {
    /// The engine task.
    pub engine: EngineHandle,
    /// The point table the engine was built from.
    pub table: Arc<PointTable>,
    /// The engine's settings (shelve maximum, priorities).
    pub engine_config: EngineConfig,
    /// The alarm journal (SQLite), opened read-only per query.
    pub journal_path: Option<PathBuf>,
    /// The spool directory, for point history.
    pub archive_dir: Option<PathBuf>,
    /// Modbus per-device counters.
    pub modbus: Option<Arc<parkguard_drivers::modbus::ModbusMetrics>>,
    /// MQTT counters, one per broker: (broker id, stats).
    pub mqtt: Vec<(String, Arc<parkguard_drivers::mqtt::MqttStats>)>,
    /// The linkage, when channels are configured: 消警 closures are recorded and
    /// published through it (without it they are recorded in the journal only).
    pub linkage: Option<Arc<crate::linkage::wire::Linkage>>,
    /// Spool counters (for `/metrics`).
    pub spool: Option<Arc<crate::store::spool::SpoolStats>>,
    /// InfluxDB writer counters: readings, and alarm events / warning grades.
    pub influx: [Option<Arc<parkguard_drivers::influx::InfluxStats>>; 2],
}

/// What the snapshot does not carry about an alarm: the last activation's value and limit,
/// who acknowledged it, the last comment. Kept by [`pump`] from the engine's events.
#[derive(Clone, Debug, Default)]
struct Extra {
    value: Option<f64>,
    limit: Option<f64>,
    raised_ms: Option<i64>,
    acked_by: Option<String>,
    acked_ms: Option<i64>,
    comment: Option<String>,
    cleared_ms: Option<i64>,
}

#[derive(Default)]
struct Shared {
    extras: HashMap<String, Extra>,
    /// Scope (`park` or enterprise code) → (since ms, reason).
    grades: HashMap<String, (i64, String)>,
    /// Limit versions per tag, oldest first; absent = only the configured version 1.
    versions: HashMap<String, Vec<LimitsVersion>>,
}

/// The real backend. Cheap to clone behind an `Arc`.
pub struct EngineBackend {
    parts: BackendParts,
    shared: Mutex<Shared>,
    /// Serialises limit changes (check version, apply, record).
    limits_lock: tokio::sync::Mutex<()>,
    /// Where limit versions are persisted (none: in memory only).
    limits_store: std::sync::OnceLock<Arc<LimitsStore>>,
    /// The SSE hub, once [`pump`] runs: limit changes are published on it.
    hub: std::sync::OnceLock<Arc<EventHub>>,
    started: Instant,
}

/// How long a command may wait for the engine before the API answers 503.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a limit change's deadline the API still waits for the engine's answer
/// (the engine answers at once once it took the change; see `replace_batch`).
const REPLY_GRACE: Duration = Duration::from_secs(1);
/// A snapshot older than this makes `/readyz` fail (the engine ticks every second).
const SNAPSHOT_FRESH: Duration = Duration::from_secs(5);
/// Most samples one history request returns.
const MAX_SAMPLES: usize = 100_000;
/// Most readings one backtest preview replays (bounds its memory and time).
const MAX_BACKTEST_READINGS: usize = 2_000_000;

/// The wire id of an alarm name: 53-bit FNV-1a (stable, exact in JavaScript).
pub fn alarm_num(alarm: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in alarm.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & ((1u64 << 53) - 1)
}

fn ms(t: Timestamp) -> i64 {
    t.0.div_euclid(1_000_000)
}

fn now_ms() -> i64 {
    ms(crate::engine_task::system_now())
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The API's short condition name.
pub fn condition_name(c: Condition) -> String {
    match c {
        Condition::Hh => "hh".into(),
        Condition::H => "h".into(),
        Condition::L => "l".into(),
        Condition::Ll => "ll".into(),
        Condition::RateOfChange => "roc".into(),
        Condition::Stale => "stale".into(),
        Condition::VoteLevel1 | Condition::VoteLevel2 => "vote".into(),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "fault".into()),
    }
}

fn priority(p: parkguard_rules::Priority) -> Priority {
    match p {
        parkguard_rules::Priority::High => Priority::High,
        parkguard_rules::Priority::Medium => Priority::Medium,
        parkguard_rules::Priority::Low => Priority::Low,
    }
}

fn alarm_state(s: EState) -> AlarmState {
    match s {
        EState::Normal => AlarmState::Normal,
        EState::Unacknowledged => AlarmState::Unack,
        EState::Acknowledged => AlarmState::Ack,
        EState::ReturnedUnacknowledged => AlarmState::RtnUnack,
        // Suppressed by design is masked like a shelved alarm (the root cause annunciates).
        EState::Shelved | EState::SuppressedByDesign => AlarmState::Shelved,
        EState::OutOfService => AlarmState::OutOfService,
    }
}

fn grade(g: parkguard_rules::Grade) -> Grade {
    match g {
        parkguard_rules::Grade::None => Grade::None,
        parkguard_rules::Grade::Blue => Grade::Blue,
        parkguard_rules::Grade::Yellow => Grade::Yellow,
        parkguard_rules::Grade::Orange => Grade::Orange,
        parkguard_rules::Grade::Red => Grade::Red,
    }
}

fn quality_name(q: parkguard_rules::Quality) -> String {
    quality_str(q).to_string()
}

/// The snake_case name of a quality, as its serde tag `q` (checked by a test).
fn quality_str(q: parkguard_rules::Quality) -> &'static str {
    use parkguard_rules::Quality as Q;
    match q {
        Q::Good => "good",
        Q::CommLost => "comm_lost",
        Q::DeviceException { .. } => "device_exception",
        Q::OutOfRange => "out_of_range",
        Q::Fault => "fault",
        Q::Maintenance => "maintenance",
        Q::Inhibited => "inhibited",
        Q::Stale => "stale",
    }
}

/// The console state of one alarm.
fn alarm_point_state(s: EState) -> PointState {
    match s {
        EState::Unacknowledged => PointState::AlarmUnack,
        EState::Acknowledged => PointState::AlarmAck,
        EState::ReturnedUnacknowledged => PointState::RtnUnack,
        EState::Shelved | EState::SuppressedByDesign => PointState::Shelved,
        EState::OutOfService => PointState::OutOfService,
        EState::Normal => PointState::Normal,
    }
}

/// A point's state from the worst state of its alarms and its quality.
fn point_state(alarms: PointState, quality: Option<parkguard_rules::Quality>) -> PointState {
    if quality.is_some_and(|q| !q.is_good()) && PointState::Fault.rank() > alarms.rank() {
        PointState::Fault
    } else {
        alarms
    }
}

/// The worst alarm state of every point that has alarms in `snap` (one pass over the
/// alarms, so the pump does not scan them once per point).
fn alarm_states(snap: &Snapshot) -> HashMap<&str, PointState> {
    let mut m: HashMap<&str, PointState> = HashMap::new();
    for a in &snap.alarms {
        let s = alarm_point_state(a.state);
        let e = m.entry(a.source.as_str()).or_insert(PointState::Normal);
        if s.rank() > e.rank() {
            *e = s;
        }
    }
    m
}

/// Map a refused command to the API's error: unknown → 404, wrong state → 409, bad
/// request → 422.
pub fn command_error(e: CommandError) -> BackendError {
    let msg = e.to_string();
    match e {
        CommandError::UnknownTarget(_) => BackendError::NotFound(msg),
        CommandError::NotAnAlarm(_)
        | CommandError::MissingUser
        | CommandError::MissingReason(_)
        | CommandError::ZeroDuration
        | CommandError::ShelveTooLong { .. } => BackendError::Invalid(msg),
        _ => BackendError::Conflict(msg),
    }
}

impl EngineBackend {
    /// A backend over `parts`. Seeds what the snapshot lacks (activation values, who
    /// acknowledged) from the journal, when there is one.
    pub fn new(parts: BackendParts) -> Arc<Self> {
        let me = Arc::new(Self {
            parts,
            shared: Mutex::new(Shared::default()),
            limits_lock: tokio::sync::Mutex::new(()),
            limits_store: std::sync::OnceLock::new(),
            hub: std::sync::OnceLock::new(),
            started: Instant::now(),
        });
        if let Some(j) = me.journal()
            && let Ok(records) = j.latest_per_alarm()
        {
            // The last event of each alarm gives its state; walk back its activation.
            for r in records {
                let Some(id) = r.alarm_id.as_deref() else {
                    continue;
                };
                if let Ok(hist) = j.alarm_history(id) {
                    for rec in hist {
                        if let Some(a) = parse_alarm(rec.payload) {
                            me.note_event(&a);
                        }
                    }
                }
            }
        }
        me
    }

    /// Read from the journal what the snapshot lacks (activation value and limit, who
    /// acknowledged) for alarms in `snap` whose activation this backend has not seen: those
    /// raised after [`Self::new`] read the journal and before [`pump`] subscribed to the
    /// engine's events — at start the engine judges its first readings (e.g. QoS 1
    /// messages the broker kept) before the API is up. Once the journal has the
    /// activation, the alarm is known and not looked up again.
    fn fill_missing_extras(&self, snap: &Snapshot) {
        let missing: Vec<String> = {
            let g = lock(&self.shared);
            snap.alarms
                .iter()
                .filter(|a| a.state != EState::Normal)
                .filter(|a| g.extras.get(&a.alarm).is_none_or(|x| x.raised_ms.is_none()))
                .map(|a| a.alarm.clone())
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let Some(j) = self.journal() else {
            return;
        };
        for id in missing {
            if let Ok(hist) = j.alarm_history(&id) {
                for rec in hist {
                    if let Some(a) = parse_alarm(rec.payload) {
                        self.note_event(&a);
                    }
                }
            }
        }
    }

    /// The parts (for the pump and `serve`).
    pub fn parts(&self) -> &BackendParts {
        &self.parts
    }

    fn journal(&self) -> Option<Journal> {
        let p = self.parts.journal_path.as_ref()?;
        if !p.exists() {
            return None;
        }
        Journal::open_readonly(p).ok()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.parts.engine.snapshot.borrow().clone()
    }

    /// Remember what an alarm event tells beyond the snapshot.
    fn note_event(&self, a: &AlarmEvent) {
        let mut g = lock(&self.shared);
        let x = g.extras.entry(a.alarm.clone()).or_default();
        let t = ms(a.time);
        match a.kind {
            EventKind::Activate | EventKind::Realarm => {
                *x = Extra {
                    value: a.value,
                    limit: a.limit,
                    raised_ms: Some(t),
                    ..Default::default()
                };
            }
            EventKind::Acknowledge => {
                x.acked_by = a.user.clone();
                x.acked_ms = Some(t);
            }
            EventKind::Return => x.cleared_ms = Some(t),
            _ => {}
        }
        if a.comment.is_some() {
            x.comment = a.comment.clone();
        }
    }

    fn note_warning(&self, w: &parkguard_rules::WarningEvent) {
        let scope = match &w.scope {
            WarningScope::Park => "park".to_string(),
            WarningScope::Enterprise { code } => code.clone(),
        };
        lock(&self.shared)
            .grades
            .insert(scope, (ms(w.time), w.reason.clone()));
    }

    fn unit_of(&self, source: &str) -> String {
        self.parts
            .table
            .by_tag(source)
            .map(|p| p.unit.symbol().to_string())
            .unwrap_or_default()
    }

    /// The API view of one engine alarm.
    fn alarm_view(&self, a: &EAlarm) -> AlarmView {
        let x = lock(&self.shared)
            .extras
            .get(&a.alarm)
            .cloned()
            .unwrap_or_default();
        AlarmView {
            id: alarm_num(&a.alarm),
            point: a.source.clone(),
            enterprise: a.enterprise.clone(),
            condition: condition_name(a.condition),
            priority: priority(a.priority),
            state: alarm_state(a.state),
            value: x.value.unwrap_or(f64::NAN),
            limit: x.limit,
            unit: self.unit_of(&a.source),
            raised_ms: a.active_since.map(ms).or(x.raised_ms).unwrap_or_default(),
            first: false,
            acked_by: x.acked_by,
            acked_ms: x.acked_ms,
            comment: x.comment,
            shelved_until_ms: a.shelved_until.map(ms),
            cleared_ms: if a.active { None } else { x.cleared_ms },
            drill: None,
        }
    }

    /// The API view of an alarm event (for SSE and history).
    fn event_view(&self, a: &AlarmEvent) -> AlarmView {
        let x = lock(&self.shared)
            .extras
            .get(&a.alarm)
            .cloned()
            .unwrap_or_default();
        AlarmView {
            id: alarm_num(&a.alarm),
            point: a.source.clone(),
            enterprise: a.enterprise.clone(),
            condition: condition_name(a.condition),
            priority: priority(a.priority),
            state: alarm_state(a.to),
            value: x.value.or(a.value).unwrap_or(f64::NAN),
            limit: x.limit.or(a.limit),
            unit: a
                .unit
                .map(|u| u.symbol().to_string())
                .unwrap_or_else(|| self.unit_of(&a.source)),
            raised_ms: x.raised_ms.unwrap_or_else(|| ms(a.time)),
            first: false,
            acked_by: x.acked_by,
            acked_ms: x.acked_ms,
            comment: x.comment,
            shelved_until_ms: a.shelved_until.map(ms),
            cleared_ms: if a.active { None } else { x.cleared_ms },
            drill: a.drill.clone(),
        }
    }

    fn current_limits(&self, tag: &str) -> Option<LimitsDto> {
        if let Some(v) = lock(&self.shared).versions.get(tag).and_then(|v| v.last()) {
            return Some(v.limits.clone());
        }
        self.parts
            .table
            .by_tag(tag)
            .map(|p| LimitsDto::from(&p.limits))
    }

    /// The API view of point `ix` in `snap`.
    fn point_view(&self, snap: &Snapshot, tag: &str) -> Option<PointView> {
        let p = self.parts.table.by_tag(tag)?;
        let live = snap.points.get(p.id.index()).filter(|v| v.tag == p.tag);
        let mut alarms = PointState::Normal;
        for a in snap.alarms.iter().filter(|a| a.source == p.tag) {
            let s = alarm_point_state(a.state);
            if s.rank() > alarms.rank() {
                alarms = s;
            }
        }
        let quality = live.and_then(|v| v.quality);
        let state = point_state(alarms, quality);
        Some(PointView {
            tag: p.tag.clone(),
            name: p.name.clone(),
            enterprise: p.enterprise.clone(),
            kind: p.kind,
            unit: p.unit.symbol().to_string(),
            value: live.and_then(|v| v.value),
            quality: quality.map(quality_name).unwrap_or_else(|| "none".into()),
            source_time_ms: live.and_then(|v| v.source_time).map(ms),
            receive_time_ms: live.and_then(|v| v.receive_time).map(ms),
            state,
            range: [p.range_lo, p.range_hi],
            limits: self
                .current_limits(&p.tag)
                .unwrap_or_else(|| LimitsDto::from(&p.limits)),
            location: p.location,
        })
    }

    fn find_alarm(&self, id: u64) -> Result<EAlarm, BackendError> {
        self.snapshot()
            .alarms
            .iter()
            .find(|a| alarm_num(&a.alarm) == id)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(format!("no active alarm with id {id}")))
    }

    /// [`Self::find_alarm`], waiting for up to two newer snapshots when the alarm is not
    /// in the current one: the engine broadcasts an alarm's events at once but publishes
    /// its snapshot on the next tick (≤ 1 s later), so an operator who acknowledges an
    /// alarm the moment it appears would otherwise get a 404.
    async fn find_alarm_fresh(&self, id: u64) -> Result<EAlarm, BackendError> {
        if let Ok(a) = self.find_alarm(id) {
            return Ok(a);
        }
        let mut rx = self.parts.engine.snapshot.clone();
        rx.mark_unchanged();
        for _ in 0..2 {
            match tokio::time::timeout(SNAPSHOT_FRESH, rx.changed()).await {
                Ok(Ok(())) => {
                    if let Ok(a) = self.find_alarm(id) {
                        return Ok(a);
                    }
                }
                _ => break,
            }
        }
        self.find_alarm(id)
    }

    async fn run(&self, cmd: Command) -> Result<usize, BackendError> {
        match tokio::time::timeout(ENGINE_TIMEOUT, self.parts.engine.command(cmd)).await {
            Err(_) => Err(BackendError::Unavailable(
                "the engine did not answer within 5 s".into(),
            )),
            Ok(None) => Err(BackendError::Unavailable(
                "the engine is not running".into(),
            )),
            Ok(Some(r)) => r.map_err(command_error),
        }
    }

    /// Replace the limits of every point in `changes` in one engine step, all or none
    /// ([`EngineHandle::replace_limits_batch`]). The engine refuses the batch if it gets to
    /// it after [`ENGINE_TIMEOUT`], so an answer of 503 means nothing changed (short of the
    /// runtime stalling for [`REPLY_GRACE`] between the engine's answer and this task).
    async fn replace_batch(
        &self,
        changes: Vec<(PointId, AlarmLimits)>,
    ) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + ENGINE_TIMEOUT;
        let answer = tokio::time::timeout_at(
            deadline + REPLY_GRACE,
            self.parts
                .engine
                .replace_limits_batch(changes, Some(deadline)),
        )
        .await;
        match answer {
            Err(_) | Ok(Some(Err(LimitsRefused::Expired))) => Err(BackendError::Unavailable(
                "the engine did not take the change within 5 s; nothing was changed".into(),
            )),
            Ok(None) => Err(BackendError::Unavailable(
                "the engine is not running".into(),
            )),
            Ok(Some(Err(LimitsRefused::Invalid(errs)))) => Err(BackendError::Invalid(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
            Ok(Some(Ok(()))) => Ok(()),
        }
    }

    /// Check versions, apply every change to the engine in one step (all or none, so a
    /// class change is atomic), persist all versions in one transaction (putting the old
    /// limits back, again in one step, if that fails), then remember them. Serialised by
    /// `limits_lock`.
    async fn apply_many(
        &self,
        changes: Vec<(String, AlarmLimits, Option<u32>)>,
        reason: String,
        by: Actor,
    ) -> Result<Vec<(LimitsVersion, LimitsVersion)>, BackendError> {
        let _guard = self.limits_lock.lock().await;
        let mut plan = Vec::with_capacity(changes.len());
        for (tag, limits, expected) in changes {
            let point = self
                .parts
                .table
                .by_tag(&tag)
                .ok_or_else(|| BackendError::NotFound(format!("no point with tag `{tag}`")))?;
            let versions = self.versions_of(&tag);
            let before = versions
                .last()
                .cloned()
                .ok_or_else(|| BackendError::NotFound(format!("no point with tag `{tag}`")))?;
            if let Some(exp) = expected
                && exp != before.version
            {
                return Err(BackendError::Conflict(format!(
                    "limits of `{tag}` are at version {}, not {exp}: reload and try again",
                    before.version
                )));
            }
            let old = if before.version == 1 {
                point.limits.clone()
            } else {
                runtime_limits(point, &before.limits)
            };
            plan.push((point.id, limits, old, before, versions));
        }
        self.replace_batch(
            plan.iter()
                .map(|(point, limits, ..)| (*point, limits.clone()))
                .collect(),
        )
        .await?;
        let undo: Vec<(PointId, AlarmLimits)> = plan
            .iter()
            .map(|(point, _, old, ..)| (*point, old.clone()))
            .collect();
        let now = now_ms();
        let mut out = Vec::with_capacity(plan.len());
        let mut rows = Vec::new();
        let mut lists = Vec::new();
        for (_, limits, _, before, mut versions) in plan {
            let after = LimitsVersion {
                tag: before.tag.clone(),
                version: before.version + 1,
                limits: LimitsDto::from(&limits),
                changed_by: by.username.clone(),
                changed_ms: now,
                reason: reason.clone(),
            };
            if before.version == 1 {
                // The configured version is stored with the first change, so that a
                // restart can tell whether the configuration file changed since.
                rows.push(StoredVersion {
                    version: before.clone(),
                    origin: Origin::Config,
                });
            }
            rows.push(StoredVersion {
                version: after.clone(),
                origin: Origin::Api,
            });
            versions.push(after.clone());
            lists.push(versions);
            out.push((before, after));
        }
        if let Some(store) = self.limits_store.get().cloned() {
            let change_id = (out.len() > 1).then_some(now);
            let res = tokio::task::spawn_blocking(move || store.append(&rows, change_id)).await;
            let err = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = err {
                tracing::error!(error = %e, "cannot persist limits: change rolled back");
                if let Err(undo_err) = self.replace_batch(undo).await {
                    // The engine runs the new limits (they passed validation) without a
                    // stored version: say so loudly.
                    tracing::error!(error = %undo_err, "cannot roll back limits in the engine");
                }
                return Err(BackendError::Unavailable(format!(
                    "the limits could not be stored ({e}); nothing was changed"
                )));
            }
        }
        {
            let mut g = lock(&self.shared);
            for versions in lists {
                if let Some(tag) = versions.last().map(|v| v.tag.clone()) {
                    g.versions.insert(tag, versions);
                }
            }
        }
        if let Some(hub) = self.hub.get() {
            for (_, after) in &out {
                hub.publish("limits", after);
            }
        }
        Ok(out)
    }

    /// Take over the limits store and the version history the engine was started with
    /// ([`LimitsAtStart`], made by the topology, which applied the stored limits before
    /// the engine's first reading). Later changes are stored there. Call once, at start.
    pub fn attach_limits(&self, at_start: &LimitsAtStart) {
        lock(&self.shared).versions = at_start.versions.clone();
        let _ = self.limits_store.set(at_start.store.clone());
    }

    /// For an engine that was started WITHOUT the stored limits (not through the
    /// topology, e.g. a test harness): load them from `path` and apply them now, in one
    /// engine step, then attach them ([`Self::attach_limits`]). Readings evaluated before
    /// this call were judged against the configured limits, hence the warning.
    pub async fn restore_limits_late(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let table = self.parts.table.clone();
        let path = path.to_path_buf();
        let (at_start, apply) =
            tokio::task::spawn_blocking(move || LimitsAtStart::load(&path, &table, now_ms()))
                .await??;
        if !apply.is_empty() {
            tracing::warn!(
                points = apply.len(),
                "the engine was started without the stored limits: applying them now"
            );
            let _guard = self.limits_lock.lock().await;
            self.replace_batch(apply)
                .await
                .map_err(|e| anyhow::anyhow!("cannot apply the stored limits: {e}"))?;
        }
        self.attach_limits(&at_start);
        Ok(())
    }

    /// The backtest behind [`ApiBackend::backtest_limits`]: the recorded readings of the
    /// candidate points over the last `hours` from the spool archive, replayed through the
    /// pure engine once with the current limits and once with the candidate.
    async fn backtest(
        &self,
        candidate: Vec<(String, AlarmLimits)>,
        hours: u32,
    ) -> Result<serde_json::Value, BackendError> {
        let Some(dir) = self.parts.archive_dir.clone() else {
            return Err(BackendError::Unavailable(
                "no local archive to replay (the spool is off)".into(),
            ));
        };
        // The table as the engine runs it now: configured points with their current limits.
        let mut points = self.parts.table.points().to_vec();
        for p in &mut points {
            let versions = self.versions_of(&p.tag);
            if let Some(v) = versions.last().filter(|v| v.version > 1) {
                p.limits = runtime_limits(p, &v.limits);
            }
        }
        let table = Arc::new(
            PointTable::new(points).map_err(|e| BackendError::Unavailable(e.to_string()))?,
        );
        let mut cand = Vec::with_capacity(candidate.len());
        for (tag, limits) in candidate {
            let id = table
                .id(&tag)
                .ok_or_else(|| BackendError::NotFound(format!("no point with tag `{tag}`")))?;
            cand.push((id, limits));
        }
        let cfg = self.parts.engine_config.clone();
        let to = crate::engine_task::system_now();
        let from = Timestamp(to.0 - i64::from(hours) * 3_600_000_000_000);
        tokio::task::spawn_blocking(move || {
            let wanted: std::collections::HashSet<PointId> =
                cand.iter().map(|(id, _)| *id).collect();
            let reader = crate::store::spool::ArchiveReader::open(&dir)
                .map_err(|e| BackendError::Unavailable(format!("archive: {e}")))?
                .between(from, to);
            let mut readings = Vec::new();
            for r in reader {
                let r = r.map_err(|e| BackendError::Unavailable(format!("archive: {e}")))?;
                // Map the archived point to today's table by tag.
                if let Some(id) = table.id(&r.point.tag).filter(|id| wanted.contains(id)) {
                    let mut reading = r.reading;
                    reading.point = id;
                    readings.push(reading);
                    if readings.len() >= MAX_BACKTEST_READINGS {
                        break;
                    }
                }
            }
            readings.sort_by_key(|r| r.receive_time.0);
            let report = crate::drill::backtest::backtest(table, cfg, Vec::new(), &readings, &cand)
                .map_err(BackendError::Invalid)?;
            let mut v = serde_json::to_value(&report)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            if let Some(m) = v.as_object_mut() {
                m.insert("hours".into(), hours.into());
                m.insert("from_ms".into(), serde_json::Value::from(ms(report.from)));
                m.insert("to_ms".into(), serde_json::Value::from(ms(report.to)));
            }
            Ok(v)
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("backtest task: {e}")))?
    }

    /// 消警 (DOMAIN.md §4, push → feedback → clearing): close an alarm whose condition has
    /// gone, with cause, action and reviewer. An alarm still returned-unacknowledged is
    /// acknowledged first (cause and action as the comment); one already back to normal is
    /// found in the journal. The closure (with the point's data from the local archive
    /// around the alarm) is recorded in the journal database and, when linkage channels are
    /// configured, published on the alarm's routes in the same transaction. 409 when the
    /// condition is still present or it is already closed.
    async fn close_alarm(
        &self,
        id: u64,
        cause: String,
        action: String,
        reviewer: Option<String>,
        by: Actor,
    ) -> Result<(AlarmView, AlarmView), BackendError> {
        use crate::linkage::close::{self, AlarmFacts, ClosureRequest, DataSnapshot, Sample};
        let unavailable = |e: &dyn std::fmt::Display| BackendError::Unavailable(e.to_string());
        let now = crate::engine_task::system_now();
        let mut acked_now = None;
        // Live: still in the engine's snapshot.
        let live = self.find_alarm_fresh(id).await.ok();
        if let Some(a) = &live {
            if a.active || !matches!(a.state, EState::ReturnedUnacknowledged | EState::Normal) {
                return Err(BackendError::Conflict(format!(
                    "`{}` cannot be closed: {}",
                    a.alarm,
                    if a.active {
                        "its condition is still present"
                    } else {
                        "it is shelved, suppressed or out of service"
                    }
                )));
            }
            if a.state == EState::ReturnedUnacknowledged {
                self.run(Command::Acknowledge {
                    target: a.alarm.clone(),
                    user: by.username.clone(),
                    comment: Some(format!("cause: {cause}; action: {action}")),
                })
                .await?;
                let mut g = lock(&self.shared);
                let x = g.extras.entry(a.alarm.clone()).or_default();
                x.acked_by = Some(by.username.clone());
                x.acked_ms = Some(ms(now));
                acked_now = Some(now);
            }
        }
        let path = self
            .parts
            .journal_path
            .clone()
            .ok_or_else(|| BackendError::Unavailable("no alarm journal".into()))?;
        let j = self
            .journal()
            .ok_or_else(|| BackendError::Unavailable("no alarm journal".into()))?;
        // The alarm's key and its last raise, from the journal (real path only).
        let key = match &live {
            Some(a) => a.alarm.clone(),
            None => {
                let mut stmt = j
                    .connection()
                    .prepare("SELECT DISTINCT alarm_id FROM events WHERE alarm_id IS NOT NULL AND drill IS NULL")
                    .map_err(|e| unavailable(&e))?;
                let keys: Vec<String> = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(|e| unavailable(&e))?
                    .filter_map(Result::ok)
                    .collect();
                keys.into_iter()
                    .find(|k| alarm_num(k) == id)
                    .ok_or_else(|| BackendError::NotFound(format!("no alarm with id {id}")))?
            }
        };
        let history = j.alarm_history(&key).map_err(|e| unavailable(&e))?;
        let mut raise: Option<(Timestamp, serde_json::Value)> = None;
        let (mut returned, mut acked) = (None, None);
        for r in &history {
            if r.drill.is_some() {
                continue;
            }
            let Some(a) = parse_alarm(r.payload.clone()) else {
                continue;
            };
            match a.kind {
                EventKind::Activate => {
                    raise = Some((a.time, r.payload.clone()));
                    returned = None;
                    acked = None;
                }
                EventKind::Return => returned = Some(a.time),
                EventKind::Acknowledge => acked = Some(a.time),
                _ => {}
            }
        }
        let Some((raised_at, raise_payload)) = raise else {
            return Err(BackendError::NotFound(format!(
                "alarm {id} (`{key}`) has no recorded activation"
            )));
        };
        if live.is_some() && returned.is_none() {
            // The engine says it has returned; the journal may not have it yet.
            returned = Some(now);
        }
        let acked = acked.or(acked_now);
        let closed = {
            let conn = crate::linkage::outbox::open(&path).map_err(|e| unavailable(&e))?;
            close::init_schema(&conn).map_err(|e| unavailable(&e))?;
            close::is_closed(&conn, &key, raised_at).map_err(|e| unavailable(&e))?
        };
        if closed {
            return Err(BackendError::Conflict(format!("`{key}` is already closed")));
        }
        if returned.is_none() {
            return Err(BackendError::Conflict(format!(
                "`{key}` has not returned to normal: it can be closed only after it returns"
            )));
        }
        if acked.is_none() {
            return Err(BackendError::Conflict(format!(
                "`{key}` is not acknowledged: acknowledge it before closing"
            )));
        }
        // The point's data around the alarm, from the local archive (10 min either side).
        let tag = key.split(':').next().unwrap_or(&key).to_string();
        let margin = 600_000_000_000;
        let from = Timestamp(raised_at.0 - margin);
        let to = Timestamp(
            returned
                .unwrap_or(now)
                .0
                .saturating_add(margin)
                .min(now.0.max(raised_at.0)),
        );
        let unit = self
            .parts
            .table
            .id(&tag)
            .and_then(|pid| self.parts.table.get(pid))
            .map(|p| p.unit.symbol().to_string())
            .unwrap_or_default();
        let dir = self.parts.archive_dir.clone();
        let tag2 = tag.clone();
        let samples = tokio::task::spawn_blocking(move || -> Vec<Sample> {
            let Some(dir) = dir else { return Vec::new() };
            let Ok(reader) = crate::store::spool::ArchiveReader::open(&dir) else {
                return Vec::new();
            };
            let mut out: Vec<Sample> = reader
                .between(from, to)
                .filter_map(Result::ok)
                .filter(|r| r.point.tag == tag2)
                .map(|r| Sample {
                    time: r.reading.source_time,
                    value: r.reading.value,
                    quality: format!("{:?}", r.reading.quality).to_lowercase(),
                })
                .take(close::MAX_SAMPLES)
                .collect();
            out.sort_by_key(|s| s.time.0);
            out
        })
        .await
        .map_err(|e| unavailable(&e))?;
        let req = ClosureRequest {
            alarm_id: key.clone(),
            cause,
            action,
            reviewer: reviewer.unwrap_or_else(|| by.username.clone()),
            snapshot: DataSnapshot {
                unit,
                from,
                to,
                samples,
            },
        };
        let facts = AlarmFacts {
            alarm_id: key.clone(),
            raised_at,
            returned_at: returned,
            acked_at: acked,
            closed,
        };
        let closure = close::validate_closure(&req, &facts, now).map_err(|errs| {
            BackendError::Invalid(
                errs.iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let linkage = self.parts.linkage.clone();
        let closed_cause = closure.cause.clone();
        let closure_id = tokio::task::spawn_blocking(move || -> Result<u64, BackendError> {
            let base = match (&linkage, serde_json::from_value::<Event>(raise_payload)) {
                (Some(l), Ok(ev)) => l.notification_of(&ev),
                _ => None,
            };
            match (&linkage, base) {
                (Some(l), Some(base)) => l
                    .close(&path, &closure, raised_at, &base)
                    .map_err(|e| BackendError::Unavailable(e.to_string())),
                // No channels: recorded in the journal database only.
                _ => {
                    let mut conn =
                        crate::linkage::outbox::open(&path).map_err(|e| unavailable(&e))?;
                    let tx = conn
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(|e| unavailable(&e))?;
                    let id =
                        close::record(&tx, &closure, raised_at).map_err(|e| unavailable(&e))?;
                    tx.commit().map_err(|e| unavailable(&e))?;
                    Ok(id)
                }
            }
        })
        .await
        .map_err(|e| unavailable(&e))??;
        tracing::info!(alarm = %key, closure = closure_id, by = %by.username, "alarm closed (消警)");
        let before = match &live {
            Some(a) => self.alarm_view(a),
            None => self
                .alarm_history(AlarmFilter {
                    point: Some(tag),
                    ..AlarmFilter::default()
                })
                .await?
                .into_iter()
                .find(|v| v.id == id)
                .ok_or_else(|| BackendError::NotFound(format!("no alarm with id {id}")))?,
        };
        let after = AlarmView {
            state: AlarmState::Normal,
            comment: Some(format!("消警 / closed: {closed_cause}")),
            ..before.clone()
        };
        Ok((before, after))
    }

    fn versions_of(&self, tag: &str) -> Vec<LimitsVersion> {
        if let Some(v) = lock(&self.shared).versions.get(tag) {
            return v.clone();
        }
        self.parts
            .table
            .by_tag(tag)
            .map(|p| {
                vec![LimitsVersion {
                    tag: tag.to_string(),
                    version: 1,
                    limits: LimitsDto::from(&p.limits),
                    changed_by: "config".into(),
                    changed_ms: 0,
                    reason: "as configured".into(),
                }]
            })
            .unwrap_or_default()
    }

    fn journal_alarm_events(&self, from: Timestamp, to: Timestamp) -> Vec<AlarmEvent> {
        let Some(j) = self.journal() else {
            return Vec::new();
        };
        let f = EventFilter {
            from: Some(from),
            to: Some(to),
            // Every kind: operator actions on alarms may be stored as `operator` records.
            kind: None,
            drill: Some(None),
            limit: Some(200_000),
            ..Default::default()
        };
        j.query(&f)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| parse_alarm(r.payload))
            .collect()
    }

    fn render(&self, out: &mut String) {
        let snap = self.snapshot();
        let s = snap.stats;
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "parkguard_engine_readings_total",
            "Readings evaluated by the engine.",
            s.readings,
        );
        counter(
            "parkguard_engine_events_total",
            "Events emitted by the engine.",
            s.events,
        );
        counter(
            "parkguard_engine_unknown_points_total",
            "Readings for unknown point ids (dropped).",
            s.unknown_points,
        );
        counter(
            "parkguard_engine_unit_mismatch_total",
            "Readings whose unit could not be converted.",
            s.unit_mismatch,
        );
        // Points by quality, and stale points (quality stale or a stale alarm standing).
        {
            let mut by_quality: std::collections::BTreeMap<String, u64> = Default::default();
            for p in &snap.points {
                let q = p.quality.map_or_else(|| "none".to_string(), quality_name);
                *by_quality.entry(q).or_default() += 1;
            }
            let _ = writeln!(
                out,
                "# HELP parkguard_points Points by the quality of their latest reading (`none`: no reading yet).\n# TYPE parkguard_points gauge"
            );
            for (q, n) in &by_quality {
                let _ = writeln!(out, "parkguard_points{{quality=\"{}\"}} {n}", esc(q));
            }
            let mut stale: std::collections::HashSet<PointId> = snap
                .points
                .iter()
                .filter(|p| p.quality == Some(parkguard_rules::Quality::Stale))
                .map(|p| p.id)
                .collect();
            for a in &snap.alarms {
                if a.condition == Condition::Stale
                    && a.state != EState::Normal
                    && let Some(id) = self.parts.table.id(&a.source)
                {
                    stale.insert(id);
                }
            }
            let _ = writeln!(
                out,
                "# HELP parkguard_points_stale Points with no fresh reading (stale quality or a standing stale alarm).\n# TYPE parkguard_points_stale gauge\nparkguard_points_stale {}",
                stale.len()
            );
        }
        if let Some(s) = &self.parts.spool {
            use std::sync::atomic::Ordering::Relaxed;
            let g = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            };
            g(
                out,
                "parkguard_spool_bytes",
                "gauge",
                "Size of all spool segments, bytes.",
                s.bytes_on_disk.load(Relaxed),
            );
            g(
                out,
                "parkguard_spool_segments",
                "gauge",
                "Spool segments on disk.",
                s.segments.load(Relaxed),
            );
            g(
                out,
                "parkguard_spool_readings_appended_total",
                "counter",
                "Readings appended to the spool.",
                s.readings_appended.load(Relaxed),
            );
            if self.parts.influx[0].is_some() {
                g(
                    out,
                    "parkguard_spool_pending_readings",
                    "gauge",
                    "Readings in the spool not yet confirmed by InfluxDB.",
                    s.readings_appended
                        .load(Relaxed)
                        .saturating_sub(s.readings_delivered.load(Relaxed)),
                );
            }
            g(
                out,
                "parkguard_spool_overflow",
                "gauge",
                "1 when the spool bound dropped data (system alarm), until cleared.",
                u64::from(s.overflow_alarm.load(Relaxed)),
            );
            g(
                out,
                "parkguard_spool_append_failing",
                "gauge",
                "1 while spool appends fail (disk full, I/O error).",
                u64::from(s.append_failing.load(Relaxed)),
            );
            g(
                out,
                "parkguard_spool_append_failures_total",
                "counter",
                "Spool appends that failed.",
                s.append_failures.load(Relaxed),
            );
            g(
                out,
                "parkguard_spool_readings_dropped_unsent_total",
                "counter",
                "Readings dropped by the bound or retention before InfluxDB confirmed them.",
                s.readings_dropped_unsent.load(Relaxed),
            );
            g(
                out,
                "parkguard_spool_queue_full_waits_total",
                "counter",
                "Hand-overs of readings that waited because the spool writer's queue was full (the disk behind the input; the source and its next alarms waited too).",
                s.queue_full_waits.load(Relaxed),
            );
            let _ = writeln!(
                out,
                "# HELP parkguard_spool_queue_full_wait_seconds_total Time those hand-overs waited.\n# TYPE parkguard_spool_queue_full_wait_seconds_total counter\nparkguard_spool_queue_full_wait_seconds_total {}",
                s.queue_full_wait_us.load(Relaxed) as f64 / 1e6
            );
        }
        for (which, stats) in ["readings", "events"].iter().zip(&self.parts.influx) {
            let Some(s) = stats else { continue };
            use std::sync::atomic::Ordering::Relaxed;
            let series: [(&str, &str, u64); 5] = [
                (
                    "lines_written",
                    "Lines InfluxDB confirmed.",
                    s.lines_written.load(Relaxed),
                ),
                (
                    "lines_dead_lettered",
                    "Lines InfluxDB rejected, kept in the dead-letter file.",
                    s.lines_dead_lettered.load(Relaxed),
                ),
                ("throttled", "429/503 replies.", s.throttled.load(Relaxed)),
                (
                    "auth_or_missing",
                    "401/403/404 replies (token, org or bucket wrong).",
                    s.auth_or_missing.load(Relaxed),
                ),
                (
                    "transient_errors",
                    "Connection errors and 5xx replies.",
                    s.transient_errors.load(Relaxed),
                ),
            ];
            for (name, help, v) in series {
                let _ = writeln!(
                    out,
                    "# HELP parkguard_influx_{name}_total {help}\n# TYPE parkguard_influx_{name}_total counter\nparkguard_influx_{name}_total{{stream=\"{which}\"}} {v}"
                );
            }
        }
        if let Some(j) = self.journal() {
            let conn = j.connection();
            if crate::linkage::outbox::exists(conn).unwrap_or(false)
                && let Ok(channels) = crate::linkage::outbox::channel_summaries(conn)
            {
                {
                    let _ = writeln!(
                        out,
                        "# HELP parkguard_outbox_pending Notifications waiting for delivery, by channel.\n# TYPE parkguard_outbox_pending gauge"
                    );
                    for c in &channels {
                        let _ = writeln!(
                            out,
                            "parkguard_outbox_pending{{channel=\"{}\"}} {}",
                            esc(&c.channel),
                            c.pending
                        );
                    }
                    let _ = writeln!(
                        out,
                        "# HELP parkguard_outbox_failed Notifications given up (permanent rejection), by channel.\n# TYPE parkguard_outbox_failed gauge"
                    );
                    for c in &channels {
                        let _ = writeln!(
                            out,
                            "parkguard_outbox_failed{{channel=\"{}\"}} {}",
                            esc(&c.channel),
                            c.failed
                        );
                    }
                    let now = now_ms();
                    let _ = writeln!(
                        out,
                        "# HELP parkguard_outbox_oldest_pending_seconds Age of the oldest undelivered notification, by channel (0: none).\n# TYPE parkguard_outbox_oldest_pending_seconds gauge"
                    );
                    for c in &channels {
                        let age = c.oldest_pending_ms.map_or(0, |t| (now - t).max(0) / 1000);
                        let _ = writeln!(
                            out,
                            "parkguard_outbox_oldest_pending_seconds{{channel=\"{}\"}} {age}",
                            esc(&c.channel)
                        );
                    }
                }
            }
        }
        // Publishes refused by the broker (MQTT 5 reason codes), per MQTT linkage channel:
        // the outbox retries them, so they show as backlog too, but only this says why.
        if let Some(linkage) = &self.parts.linkage {
            let mqtt: Vec<(&str, u64)> = linkage
                .channels
                .iter()
                .filter_map(|c| c.mqtt_rejected().map(|n| (c.name(), n)))
                .collect();
            if !mqtt.is_empty() {
                let _ = writeln!(
                    out,
                    "# HELP parkguard_linkage_mqtt_rejected_total Publishes the MQTT broker refused (MQTT 5 reason code), by channel.\n# TYPE parkguard_linkage_mqtt_rejected_total counter"
                );
                for (channel, n) in mqtt {
                    let _ = writeln!(
                        out,
                        "parkguard_linkage_mqtt_rejected_total{{channel=\"{}\"}} {n}",
                        esc(channel)
                    );
                }
            }
        }
        let mut by = [0u64; 3];
        for a in snap.alarms.iter().filter(|a| {
            matches!(
                a.state,
                EState::Unacknowledged | EState::Acknowledged | EState::ReturnedUnacknowledged
            )
        }) {
            by[match a.priority {
                parkguard_rules::Priority::High => 0,
                parkguard_rules::Priority::Medium => 1,
                parkguard_rules::Priority::Low => 2,
            }] += 1;
        }
        let _ = writeln!(
            out,
            "# HELP parkguard_active_alarms Alarms in alarm or unacknowledged, by priority.\n# TYPE parkguard_active_alarms gauge"
        );
        for (p, n) in ["high", "medium", "low"].iter().zip(by) {
            let _ = writeln!(out, "parkguard_active_alarms{{priority=\"{p}\"}} {n}");
        }
        let age = snap
            .time
            .map(|t| (now_ms() - ms(t)) as f64 / 1000.0)
            .unwrap_or(-1.0);
        let _ = writeln!(
            out,
            "# HELP parkguard_engine_snapshot_age_seconds Age of the engine's latest snapshot (-1 before the first).\n# TYPE parkguard_engine_snapshot_age_seconds gauge\nparkguard_engine_snapshot_age_seconds {age}"
        );
        if let Some(m) = &self.parts.modbus {
            let devs = m.snapshot();
            let series: [Series<parkguard_drivers::modbus::DeviceSnapshot>; 12] = [
                ("polls", "Scheduled Modbus polls started.", |d| d.polls),
                (
                    "polls_skipped",
                    "Scheduled Modbus polls skipped: the line was still busy past their slot.",
                    |d| d.polls_skipped,
                ),
                (
                    "polls_delayed_by_line",
                    "Modbus polls that started late because another device held the shared line.",
                    |d| d.polls_delayed_by_line,
                ),
                ("requests", "Modbus requests sent.", |d| d.requests),
                ("responses", "Modbus responses received.", |d| d.responses),
                ("exceptions", "Modbus exception responses.", |d| {
                    d.exceptions
                }),
                ("timeouts", "Modbus request timeouts.", |d| d.timeouts),
                ("io_errors", "Modbus I/O errors.", |d| d.io_errors),
                ("protocol_errors", "Malformed Modbus responses.", |d| {
                    d.protocol_errors
                }),
                ("connect_failures", "Failed Modbus connects.", |d| {
                    d.connect_failures
                }),
                ("readings", "Readings handed to the engine.", |d| {
                    d.readings_sent
                }),
                (
                    "readings_dropped",
                    "Readings dropped because the engine's channel was full.",
                    |d| d.readings_dropped,
                ),
            ];
            for (name, help, get) in series {
                let _ = writeln!(
                    out,
                    "# HELP parkguard_modbus_{name}_total {help}\n# TYPE parkguard_modbus_{name}_total counter"
                );
                for d in &devs {
                    let _ = writeln!(
                        out,
                        "parkguard_modbus_{name}_total{{device=\"{}\"}} {}",
                        esc(&d.id),
                        get(d)
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP parkguard_modbus_online Device answering (1) or not (0).\n# TYPE parkguard_modbus_online gauge"
            );
            for d in &devs {
                let _ = writeln!(
                    out,
                    "parkguard_modbus_online{{device=\"{}\"}} {}",
                    esc(&d.id),
                    u8::from(d.online)
                );
            }
            modbus_lateness(out, &devs);
        }
        if !self.parts.mqtt.is_empty() {
            let snaps: Vec<_> = self
                .parts
                .mqtt
                .iter()
                .map(|(b, s)| (esc(b), s.snapshot()))
                .collect();
            let series: [Series<parkguard_drivers::mqtt::MqttStatsSnapshot>; 5] = [
                ("connects", "MQTT connects.", |s| s.connects),
                (
                    "connection_errors",
                    "MQTT connection failures and losses.",
                    |s| s.connection_errors,
                ),
                ("readings", "MQTT readings handed to the engine.", |s| {
                    s.readings
                }),
                (
                    "rejected",
                    "MQTT messages rejected (unmapped, bad payload).",
                    |s| s.rejected,
                ),
                (
                    "out_of_order",
                    "MQTT readings older than the last one.",
                    |s| s.out_of_order,
                ),
            ];
            for (name, help, get) in series {
                let _ = writeln!(
                    out,
                    "# HELP parkguard_mqtt_{name}_total {help}\n# TYPE parkguard_mqtt_{name}_total counter"
                );
                for (b, s) in &snaps {
                    let _ = writeln!(
                        out,
                        "parkguard_mqtt_{name}_total{{broker=\"{b}\"}} {}",
                        get(s)
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP parkguard_mqtt_connected Connected (1) or not (0).\n# TYPE parkguard_mqtt_connected gauge"
            );
            for (b, s) in &snaps {
                let _ = writeln!(
                    out,
                    "parkguard_mqtt_connected{{broker=\"{b}\"}} {}",
                    u8::from(s.connected)
                );
            }
        }
    }
}

/// The alarm event in a journal payload: the engine's [`Event`] or a bare [`AlarmEvent`].
fn parse_alarm(payload: serde_json::Value) -> Option<AlarmEvent> {
    match serde_json::from_value::<Event>(payload.clone()) {
        Ok(Event::Alarm(a)) => Some(a),
        Ok(Event::Warning(_)) => None,
        Err(_) => serde_json::from_value(payload).ok(),
    }
}

/// The warning event in a journal payload: the engine's [`Event`] or a bare one.
fn parse_warning(payload: serde_json::Value) -> Option<parkguard_rules::WarningEvent> {
    match serde_json::from_value::<Event>(payload.clone()) {
        Ok(Event::Warning(w)) => Some(w),
        Ok(Event::Alarm(_)) => None,
        Err(_) => serde_json::from_value(payload).ok(),
    }
}

/// One counter family: name suffix, help, how to read it.
type Series<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The pollers' jitter: how late each scheduled poll started, as one histogram over all
/// devices (per device it would be 21 series each; the largest lateness per device is a
/// gauge beside it).
fn modbus_lateness(out: &mut String, devs: &[parkguard_drivers::modbus::DeviceSnapshot]) {
    use parkguard_drivers::modbus::metrics::LATENESS_BUCKETS_US;
    let mut hist = vec![0u64; LATENESS_BUCKETS_US.len() + 1];
    let mut sum_us = 0u64;
    for d in devs {
        for (h, n) in hist.iter_mut().zip(&d.lateness) {
            *h += n;
        }
        sum_us = sum_us.saturating_add(d.lateness_us_sum);
    }
    let _ = writeln!(
        out,
        "# HELP parkguard_modbus_poll_lateness_seconds How late scheduled Modbus polls started (all devices): the pollers' jitter.\n# TYPE parkguard_modbus_poll_lateness_seconds histogram"
    );
    let mut acc = 0u64;
    for (b, n) in LATENESS_BUCKETS_US.iter().zip(&hist) {
        acc += n;
        let _ = writeln!(
            out,
            "parkguard_modbus_poll_lateness_seconds_bucket{{le=\"{}\"}} {acc}",
            *b as f64 / 1e6
        );
    }
    acc += hist.last().copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "parkguard_modbus_poll_lateness_seconds_bucket{{le=\"+Inf\"}} {acc}\nparkguard_modbus_poll_lateness_seconds_sum {}\nparkguard_modbus_poll_lateness_seconds_count {acc}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP parkguard_modbus_poll_lateness_max_seconds Largest poll-start lateness of the device since the daemon started.\n# TYPE parkguard_modbus_poll_lateness_max_seconds gauge"
    );
    for d in devs {
        let _ = writeln!(
            out,
            "parkguard_modbus_poll_lateness_max_seconds{{device=\"{}\"}} {}",
            esc(&d.id),
            d.lateness_us_max as f64 / 1e6
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl ApiBackend for EngineBackend {
    fn points(&self) -> BoxFut<'_, Result<Vec<PointView>, BackendError>> {
        Box::pin(async move {
            let snap = self.snapshot();
            Ok(self
                .parts
                .table
                .points()
                .iter()
                .filter_map(|p| self.point_view(&snap, &p.tag))
                .collect())
        })
    }

    fn point(&self, tag: String) -> BoxFut<'_, Result<PointView, BackendError>> {
        Box::pin(async move {
            self.point_view(&self.snapshot(), &tag)
                .ok_or_else(|| BackendError::NotFound(format!("no point with tag `{tag}`")))
        })
    }

    fn point_history(
        &self,
        tag: String,
        from_ms: i64,
        to_ms: i64,
    ) -> BoxFut<'_, Result<Vec<Sample>, BackendError>> {
        Box::pin(async move {
            let Some(dir) = self.parts.archive_dir.clone() else {
                return Ok(Vec::new());
            };
            let from = Timestamp(from_ms.saturating_mul(1_000_000));
            let to = Timestamp(to_ms.saturating_mul(1_000_000));
            tokio::task::spawn_blocking(move || {
                let reader = crate::store::spool::ArchiveReader::open(&dir)
                    .map_err(|e| BackendError::Unavailable(format!("archive: {e}")))?
                    .between(from, to);
                let mut out = Vec::new();
                for r in reader {
                    let r = r.map_err(|e| BackendError::Unavailable(format!("archive: {e}")))?;
                    if r.point.tag == tag {
                        out.push(Sample {
                            t: ms(r.reading.source_time),
                            v: r.reading.value,
                            good: r.reading.quality.is_good(),
                        });
                        if out.len() >= MAX_SAMPLES {
                            break;
                        }
                    }
                }
                out.sort_by_key(|s| s.t);
                Ok(out)
            })
            .await
            .map_err(|e| BackendError::Unavailable(format!("archive task: {e}")))?
        })
    }

    fn alarms_active(&self) -> BoxFut<'_, Result<Vec<AlarmView>, BackendError>> {
        Box::pin(async move {
            let snap = self.snapshot();
            self.fill_missing_extras(&snap);
            let mut v: Vec<AlarmView> = snap.alarms.iter().map(|a| self.alarm_view(a)).collect();
            // First alarm of the burst: the earliest unacknowledged one.
            if let Some(first) = v
                .iter_mut()
                .filter(|a| a.state == AlarmState::Unack)
                .min_by_key(|a| a.raised_ms)
            {
                first.first = true;
            }
            Ok(v)
        })
    }

    fn alarm_history(
        &self,
        filter: AlarmFilter,
    ) -> BoxFut<'_, Result<Vec<AlarmView>, BackendError>> {
        Box::pin(async move {
            let Some(j) = self.journal() else {
                return Ok(Vec::new());
            };
            let f = EventFilter {
                from: filter
                    .from_ms
                    .map(|t| Timestamp(t.saturating_mul(1_000_000))),
                to: filter.to_ms.map(|t| Timestamp(t.saturating_mul(1_000_000))),
                kind: None,
                point: filter.point.clone(),
                enterprise: filter.enterprise.clone(),
                drill: Some(None),
                limit: Some(200_000),
                ..Default::default()
            };
            // The newest events (descending), then folded oldest first.
            let f = EventFilter {
                descending: true,
                ..f
            };
            let mut recs = j
                .query(&f)
                .map_err(|e| BackendError::Unavailable(format!("journal: {e}")))?;
            recs.reverse();
            // One row per activation; later events of the same alarm update it.
            let mut rows: Vec<AlarmView> = Vec::new();
            let mut open: HashMap<String, usize> = HashMap::new();
            for r in recs {
                let Some(a) = parse_alarm(r.payload) else {
                    continue;
                };
                let t = ms(a.time);
                match a.kind {
                    EventKind::Activate => {
                        open.insert(a.alarm.clone(), rows.len());
                        rows.push(AlarmView {
                            id: alarm_num(&a.alarm),
                            point: a.source.clone(),
                            enterprise: a.enterprise.clone(),
                            condition: condition_name(a.condition),
                            priority: priority(a.priority),
                            state: alarm_state(a.to),
                            value: a.value.unwrap_or(f64::NAN),
                            limit: a.limit,
                            unit: a
                                .unit
                                .map(|u| u.symbol().to_string())
                                .unwrap_or_else(|| self.unit_of(&a.source)),
                            raised_ms: t,
                            first: false,
                            acked_by: None,
                            acked_ms: None,
                            comment: a.comment.clone(),
                            shelved_until_ms: a.shelved_until.map(ms),
                            cleared_ms: None,
                            drill: None,
                        });
                    }
                    _ => {
                        if let Some(&i) = open.get(&a.alarm) {
                            let row = &mut rows[i];
                            row.state = alarm_state(a.to);
                            if a.kind == EventKind::Acknowledge {
                                row.acked_by = a.user.clone();
                                row.acked_ms = Some(t);
                            }
                            if a.kind == EventKind::Return {
                                row.cleared_ms = Some(t);
                            }
                            if a.comment.is_some() {
                                row.comment = a.comment.clone();
                            }
                            row.shelved_until_ms = a.shelved_until.map(ms);
                            // Over: later events (e.g. out of service) belong to no row.
                            if a.to == EState::Normal {
                                open.remove(&a.alarm);
                            }
                        }
                    }
                }
            }
            let limit = filter.limit.unwrap_or(200).min(5000) as usize;
            Ok(rows
                .into_iter()
                .rev()
                .filter(|r| filter.priority.is_none_or(|p| p == r.priority))
                .filter(|r| filter.state.is_none_or(|s| s == r.state))
                .take(limit)
                .collect())
        })
    }

    fn alarm_command(
        &self,
        id: u64,
        cmd: AlarmCommand,
        by: Actor,
    ) -> BoxFut<'_, Result<(AlarmView, AlarmView), BackendError>> {
        Box::pin(async move {
            if let AlarmCommand::Close {
                cause,
                action,
                reviewer,
            } = cmd
            {
                return self.close_alarm(id, cause, action, reviewer, by).await;
            }
            let a = self.find_alarm_fresh(id).await?;
            let before = self.alarm_view(&a);
            let nonempty = |s: String| (!s.trim().is_empty()).then_some(s);
            let command = match cmd {
                AlarmCommand::Ack { comment } => Command::Acknowledge {
                    target: a.alarm.clone(),
                    user: by.username.clone(),
                    comment: nonempty(comment),
                },
                AlarmCommand::Shelve { duration, reason } => Command::Shelve {
                    alarm: a.alarm.clone(),
                    duration,
                    user: by.username.clone(),
                    reason,
                },
                AlarmCommand::Unshelve { reason } => Command::Unshelve {
                    alarm: a.alarm.clone(),
                    user: by.username.clone(),
                    comment: nonempty(reason),
                },
                AlarmCommand::Close { .. } => {
                    unreachable!("handled by close_alarm before the alarm lookup")
                }
            };
            let acknowledges = matches!(command, Command::Acknowledge { .. });
            self.run(command).await?;
            if acknowledges {
                // The pump notes it too from the event; do it now so that the answer and
                // the next read show who acknowledged, whatever the pump's progress.
                let mut g = lock(&self.shared);
                let x = g.extras.entry(a.alarm.clone()).or_default();
                x.acked_by = Some(by.username.clone());
                x.acked_ms = Some(now_ms());
            }
            let after = self
                .snapshot()
                .alarms
                .iter()
                .find(|x| x.alarm == a.alarm)
                .map(|x| self.alarm_view(x))
                .unwrap_or_else(|| AlarmView {
                    state: AlarmState::Normal,
                    ..before.clone()
                });
            Ok((before, after))
        })
    }

    fn point_command(
        &self,
        tag: String,
        cmd: PointCommand,
        by: Actor,
    ) -> BoxFut<'_, Result<(PointView, PointView), BackendError>> {
        Box::pin(async move {
            let before = self
                .point_view(&self.snapshot(), &tag)
                .ok_or_else(|| BackendError::NotFound(format!("no point with tag `{tag}`")))?;
            let command = match cmd {
                PointCommand::OutOfService { reason } => Command::RemoveFromService {
                    target: tag.clone(),
                    user: by.username.clone(),
                    reason,
                },
                PointCommand::ReturnToService { reason } => Command::ReturnToService {
                    target: tag.clone(),
                    user: by.username.clone(),
                    comment: (!reason.trim().is_empty()).then_some(reason),
                },
            };
            self.run(command).await?;
            let after = self
                .point_view(&self.snapshot(), &tag)
                .unwrap_or_else(|| before.clone());
            Ok((before, after))
        })
    }

    fn max_shelve(&self) -> Duration {
        self.parts.engine_config.shelve_max()
    }

    fn warnings(&self) -> BoxFut<'_, Result<WarningsView, BackendError>> {
        Box::pin(async move {
            let snap = self.snapshot();
            let g = lock(&self.shared);
            Ok(WarningsView {
                park: grade(snap.warnings.park),
                enterprises: snap
                    .warnings
                    .enterprises
                    .iter()
                    .map(|(code, gr)| {
                        let meta = g.grades.get(code);
                        EnterpriseGrade {
                            code: code.clone(),
                            grade: grade(*gr),
                            since_ms: meta.map(|m| m.0),
                            reason: meta.map(|m| m.1.clone()),
                        }
                    })
                    .collect(),
            })
        })
    }

    fn warning_history(&self, limit: u32) -> BoxFut<'_, Result<Vec<WarningChange>, BackendError>> {
        Box::pin(async move {
            let Some(j) = self.journal() else {
                return Ok(Vec::new());
            };
            let f = EventFilter {
                kind: Some(RecordKind::Warning),
                drill: Some(None),
                limit: Some(limit.clamp(1, 5000) as usize),
                descending: true,
                ..Default::default()
            };
            let recs = j
                .query(&f)
                .map_err(|e| BackendError::Unavailable(format!("journal: {e}")))?;
            Ok(recs
                .into_iter()
                .filter_map(|r| parse_warning(r.payload))
                .map(|w| WarningChange {
                    scope: match w.scope {
                        WarningScope::Park => "park".into(),
                        WarningScope::Enterprise { code } => code,
                    },
                    from: grade(w.from),
                    to: grade(w.to),
                    at_ms: ms(w.time),
                    reason: w.reason,
                })
                .collect())
        })
    }

    fn unmapped(&self) -> BoxFut<'_, Result<Vec<UnmappedEntry>, BackendError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (broker, stats) in &self.parts.mqtt {
                for p in stats.snapshot().problems {
                    for (reason, count) in &p.counts {
                        out.push(UnmappedEntry {
                            source: format!("mqtt:{broker}"),
                            key: p.topic.clone(),
                            reason: reason.clone(),
                            count: *count,
                            last_ms: 0,
                            sample: if p.unknown_tags.is_empty() {
                                p.last_error.chars().take(200).collect()
                            } else {
                                format!("unknown tags: {}", p.unknown_tags.join(", "))
                            },
                        });
                    }
                }
            }
            Ok(out)
        })
    }

    fn limit_versions(&self, tag: String) -> BoxFut<'_, Result<Vec<LimitsVersion>, BackendError>> {
        Box::pin(async move {
            let v = self.versions_of(&tag);
            if v.is_empty() {
                return Err(BackendError::NotFound(format!("no point with tag `{tag}`")));
            }
            Ok(v)
        })
    }

    fn set_limits(
        &self,
        tag: String,
        limits: AlarmLimits,
        expected_version: Option<u32>,
        reason: String,
        by: Actor,
    ) -> BoxFut<'_, Result<(LimitsVersion, LimitsVersion), BackendError>> {
        Box::pin(async move {
            let mut v = self
                .apply_many(vec![(tag.clone(), limits, expected_version)], reason, by)
                .await?;
            v.pop()
                .ok_or_else(|| BackendError::NotFound(format!("no point with tag `{tag}`")))
        })
    }

    fn deliveries(&self, id: u64) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        Box::pin(async move {
            use crate::linkage::{escalation_log, outbox};
            let empty = serde_json::json!({ "alarm_id": id, "deliveries": [], "escalation": [] });
            let Some(j) = self.journal() else {
                return Ok(empty);
            };
            let conn = j.connection();
            let failed = |e: &dyn std::fmt::Display| {
                BackendError::Unavailable(format!("cannot read the outbox: {e}"))
            };
            if !outbox::exists(conn).map_err(|e| failed(&e))? {
                return Ok(empty);
            }
            let Some(alarm) = outbox::alarm_ids(conn)
                .map_err(|e| failed(&e))?
                .into_iter()
                .find(|a| alarm_num(a) == id)
            else {
                return Ok(empty);
            };
            let rows = outbox::alarm_rows(conn, &alarm).map_err(|e| failed(&e))?;
            // The escalation tables exist only once a daemon with linkage started.
            let steps = escalation_log::steps(conn, &alarm).unwrap_or_default();
            Ok(serde_json::json!({
                "alarm_id": id,
                "alarm": alarm,
                "deliveries": rows,
                "escalation": steps,
            }))
        })
    }

    fn outbox(&self) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        Box::pin(async move {
            use crate::linkage::outbox;
            let Some(j) = self.journal() else {
                return Ok(serde_json::json!({ "channels": [] }));
            };
            let conn = j.connection();
            let failed = |e: &dyn std::fmt::Display| {
                BackendError::Unavailable(format!("cannot read the outbox: {e}"))
            };
            if !outbox::exists(conn).map_err(|e| failed(&e))? {
                return Ok(serde_json::json!({ "channels": [] }));
            }
            let channels = outbox::channel_summaries(conn).map_err(|e| failed(&e))?;
            Ok(serde_json::json!({ "channels": channels }))
        })
    }

    fn set_limits_many(
        &self,
        changes: Vec<(String, AlarmLimits)>,
        reason: String,
        by: Actor,
    ) -> BoxFut<'_, Result<Vec<(LimitsVersion, LimitsVersion)>, BackendError>> {
        Box::pin(async move {
            let changes = changes.into_iter().map(|(t, l)| (t, l, None)).collect();
            self.apply_many(changes, reason, by).await
        })
    }

    fn backtest_limits(
        &self,
        candidate: Vec<(String, AlarmLimits)>,
        hours: u32,
    ) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        Box::pin(async move { self.backtest(candidate, hours).await })
    }

    fn kpis(&self) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        Box::pin(async move {
            let to = crate::engine_task::system_now();
            let from = Timestamp(to.0 - 24 * 3600 * 1_000_000_000);
            let events = self.journal_alarm_events(Timestamp(i64::MIN / 2), to);
            let cfg = parkguard_rules::kpi::KpiConfig::default();
            let report = parkguard_rules::kpi::compute(&events, from, to, &cfg);
            let bucket = 600_000i64;
            let start = ms(from).div_euclid(bucket) * bucket;
            let mut per = vec![0u64; (((ms(to) - start) / bucket) + 1) as usize];
            for e in events
                .iter()
                .filter(|e| e.kind == EventKind::Activate && e.annunciate && e.time.0 >= from.0)
            {
                let i = ((ms(e.time) - start) / bucket) as usize;
                if let Some(n) = per.get_mut(i) {
                    *n += 1;
                }
            }
            let mut v = serde_json::to_value(&report).unwrap_or(serde_json::json!({}));
            if let Some(m) = v.as_object_mut() {
                m.insert(
                    "alarms_per_10min".into(),
                    per.iter()
                        .enumerate()
                        .map(|(i, n)| serde_json::json!({"t": start + i as i64 * bucket, "n": n}))
                        .collect(),
                );
                m.insert("floods".into(), report.floods.len().into());
                m.insert(
                    "chattering".into(),
                    report
                        .chattering
                        .iter()
                        .map(|(a, n)| serde_json::json!({"alarm": a, "count": n}))
                        .collect(),
                );
                m.insert(
                    "top10".into(),
                    report
                        .top10
                        .iter()
                        .map(|(p, n)| serde_json::json!({"point": p, "count": n}))
                        .collect(),
                );
                let [h, me, l] = report.priority_counts;
                m.insert(
                    "priority_mix".into(),
                    serde_json::json!({"high": h, "medium": me, "low": l}),
                );
                m.insert("window_hours".into(), 24.into());
            }
            Ok(v)
        })
    }

    fn readiness(&self) -> BoxFut<'_, Vec<ReadyCheck>> {
        Box::pin(async move {
            let mut checks = Vec::new();
            let alive = !self.parts.engine.requests.is_closed();
            let snap = self.snapshot();
            let age = snap.time.map(|t| now_ms() - ms(t));
            let fresh = match age {
                Some(a) => a <= SNAPSHOT_FRESH.as_millis() as i64,
                // Before the first tick: give it a few seconds.
                None => self.started.elapsed() <= SNAPSHOT_FRESH,
            };
            checks.push(ReadyCheck {
                name: "engine".into(),
                ok: alive && fresh,
                detail: if !alive {
                    "engine task has stopped".into()
                } else {
                    match age {
                        Some(a) => format!("snapshot {:.1} s old", a as f64 / 1000.0),
                        None => "no snapshot yet".into(),
                    }
                },
            });
            if let Some(p) = &self.parts.journal_path {
                let p = p.clone();
                let res = tokio::task::spawn_blocking(move || {
                    Journal::open_readonly(&p).and_then(|j| j.schema_version())
                })
                .await;
                let (ok, detail) = match res {
                    Ok(Ok(v)) => (true, format!("schema version {v}")),
                    Ok(Err(e)) => (false, e.to_string()),
                    Err(e) => (false, e.to_string()),
                };
                checks.push(ReadyCheck {
                    name: "journal".into(),
                    ok,
                    detail,
                });
            }
            if let Some(s) = &self.parts.spool {
                // The spool's system alarm: data was dropped by the bound, or appends fail.
                use std::sync::atomic::Ordering::Relaxed;
                let overflow = s.overflow_alarm.load(Relaxed);
                let failing = s.append_failing.load(Relaxed);
                checks.push(ReadyCheck {
                    name: "spool".into(),
                    ok: !overflow && !failing,
                    detail: match (overflow, failing) {
                        (_, true) => format!(
                            "appends failing (disk full or I/O error): {} failures",
                            s.append_failures.load(Relaxed)
                        ),
                        (true, false) => format!(
                            "bound reached: {} undelivered readings dropped",
                            s.readings_dropped_unsent.load(Relaxed)
                        ),
                        _ => format!(
                            "{} bytes in {} segments",
                            s.bytes_on_disk.load(Relaxed),
                            s.segments.load(Relaxed)
                        ),
                    },
                });
            }
            if let Some(m) = &self.parts.modbus {
                for d in m.snapshot() {
                    checks.push(ReadyCheck {
                        name: format!("modbus:{}", d.id),
                        ok: d.online,
                        detail: if d.online {
                            "answering".into()
                        } else {
                            "not answering".into()
                        },
                    });
                }
            }
            for (b, s) in &self.parts.mqtt {
                let c = s.snapshot().connected;
                checks.push(ReadyCheck {
                    name: format!("mqtt:{b}"),
                    ok: c,
                    detail: if c { "connected" } else { "disconnected" }.into(),
                });
            }
            checks
        })
    }

    fn render_metrics(&self, out: &mut String) {
        self.render(out);
    }
}

/// Forward the engine's events to the SSE hub until `shutdown`: every alarm change as
/// `alarm`, the point's new state as `point` (unthrottled), warning changes as `warning`,
/// and new values (from the snapshot, throttled per point by the hub). When the broadcast
/// lags, the pump republishes every alarm and point state from the snapshot.
///
/// Alarm and warning events go through a task of their own (`alarm_pump`): in one loop
/// with the point updates, an alarm waited while the pump serialised the 10,000 points of a
/// snapshot (once a second, milliseconds each time; issue #11).
pub async fn pump(
    backend: Arc<EngineBackend>,
    hub: Arc<EventHub>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let _ = backend.hub.set(hub.clone());
    // Subscribed here, before this function returns to its caller's first await: no event
    // published after `pump` started is missed.
    let events = backend.parts.engine.events.subscribe();
    let alarms = tokio::spawn(alarm_pump(
        Arc::clone(&backend),
        Arc::clone(&hub),
        events,
        shutdown.clone(),
    ));
    let mut snaps = backend.parts.engine.snapshot.clone();
    let mut last_rx: Vec<Option<Timestamp>> = Vec::new();
    // The points whose value changed since the last pass, copied out of the snapshot so
    // that the pump lets go of it before it serialises them (below). Reused across passes.
    let mut changed: Vec<Change> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed_snap = snaps.changed() => {
                if changed_snap.is_err() {
                    // The engine task ended; only events (if any) remain.
                    shutdown.cancelled().await;
                    return;
                }
                let snap = snaps.borrow_and_update().clone();
                last_rx.resize(snap.points.len(), None);
                if !hub.wants_points() {
                    // Nobody listens: note what was seen, build nothing (the hub has
                    // recorded the gap; a client resuming from before it reloads).
                    for (i, p) in snap.points.iter().enumerate() {
                        last_rx[i] = p.receive_time;
                    }
                    continue;
                }
                // New values go out as the compact `PointUpdate` (the dynamic fields only;
                // the console keeps the rest from `/api/v1/points`): at 10,000 points a
                // full `PointView` per changed point per second cost ~11 % of the daemon's
                // CPU in a burst and most of the SSE ring's memory (issue #11).
                changed.clear();
                {
                    let states = alarm_states(&snap);
                    for (i, p) in snap.points.iter().enumerate() {
                        if p.receive_time != last_rx[i] {
                            last_rx[i] = p.receive_time;
                            let alarms = states.get(p.tag.as_str()).copied().unwrap_or(PointState::Normal);
                            changed.push(Change {
                                id: p.id,
                                value: p.value,
                                quality: p.quality.map(quality_str).unwrap_or("none"),
                                source_time_ms: p.source_time.map(ms),
                                receive_time_ms: p.receive_time.map(ms),
                                state: point_state(alarms, p.quality),
                            });
                        }
                    }
                }
                // Let go of the snapshot before serialising (which yields to the clients'
                // tasks and may take longer than the engine's tick): while the pump held
                // it, the engine could not reuse it for its next snapshot and built a new
                // one, ~2 MB for 10,000 points, each time (heaptrack of `e2e-bench modbus
                // --console`: 4.7 MB of the daemon's peak heap; issue #11).
                drop(snap);
                let now = Instant::now();
                for (n, c) in changed.iter().enumerate() {
                    if n % 256 == 255 {
                        // Let the clients' tasks drain their queues between slices of a
                        // 10,000-point pass, and the alarm pump run.
                        tokio::task::yield_now().await;
                    }
                    let Some(p) = backend.parts.table.get(c.id) else {
                        continue;
                    };
                    let update = PointUpdate {
                        tag: &p.tag,
                        value: c.value,
                        quality: c.quality,
                        source_time_ms: c.source_time_ms,
                        receive_time_ms: c.receive_time_ms,
                        state: c.state,
                    };
                    hub.publish_point(&p.tag, &update, now);
                }
            }
        }
    }
    let _ = alarms.await;
}

/// A point whose value changed, as [`pump`] copies it out of a snapshot.
#[derive(Clone, Copy)]
struct Change {
    id: PointId,
    value: Option<f64>,
    quality: &'static str,
    source_time_ms: Option<i64>,
    receive_time_ms: Option<i64>,
    state: PointState,
}

/// The alarm half of [`pump`]: engine events to the hub, resynchronising from the snapshot
/// when the broadcast lagged. Ends on `shutdown` or when the engine's broadcast closes.
async fn alarm_pump(
    backend: Arc<EngineBackend>,
    hub: Arc<EventHub>,
    mut events: tokio::sync::broadcast::Receiver<Arc<parkguard_rules::engine::Event>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => match ev {
                Ok(ev) => match &*ev {
                    Event::Alarm(a) => {
                        backend.note_event(a);
                        hub.publish("alarm", &backend.event_view(a));
                        if a.source_kind == SourceKind::Point
                            && let Some(pv) = backend.point_view(&backend.snapshot(), &a.source)
                        {
                            hub.publish_point_state(&a.source, &pv, Instant::now());
                        }
                    }
                    Event::Warning(w) => {
                        backend.note_warning(w);
                        if let Ok(v) = backend.warnings().await {
                            hub.publish("warning", &v);
                        }
                    }
                },
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "SSE pump lagged behind the engine: resynchronising from the snapshot");
                    let snap = backend.snapshot();
                    for a in &snap.alarms {
                        hub.publish("alarm", &backend.alarm_view(a));
                    }
                    let now = Instant::now();
                    for p in backend.parts.table.points() {
                        if let Some(pv) = backend.point_view(&snap, &p.tag) {
                            hub.publish_point_state(&p.tag, &pv, now);
                        }
                    }
                    if let Ok(v) = backend.warnings().await {
                        hub.publish("warning", &v);
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::api::HubSettings;
    use crate::engine_task::system_now;
    use parkguard_rules::engine::Engine;
    use parkguard_rules::{Gas, Point, PointId, PointKind, Quality, Reading, Unit, WarningEvent};
    use tokio::sync::{broadcast, mpsc, watch};

    /// Backend parts around an engine handle, with no journal, sources or sinks.
    fn bare_parts(
        table: Arc<PointTable>,
        requests: mpsc::Sender<crate::engine_task::EngineRequest>,
        events: broadcast::Sender<Arc<Event>>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
    ) -> BackendParts {
        BackendParts {
            engine: EngineHandle {
                requests,
                events,
                snapshot,
                limits: None,
            },
            table,
            engine_config: EngineConfig::default(),
            journal_path: None,
            archive_dir: None,
            modbus: None,
            mqtt: Vec::new(),
            linkage: None,
            spool: None,
            influx: [None, None],
        }
    }

    fn table() -> Arc<PointTable> {
        let p = Point {
            id: PointId(0),
            tag: "GT-1".into(),
            name: "methane".into(),
            enterprise: "E1".into(),
            device: None,
            hazard_installation: None,
            area: None,
            kind: PointKind::Combustible,
            gas: Some(Gas::Ch4),
            unit: Unit::PercentLel,
            range_lo: 0.0,
            range_hi: 100.0,
            limits: AlarmLimits {
                h: Some(25.0),
                hh: Some(50.0),
                deadband: 2.0,
                ..Default::default()
            },
            expected_interval: Duration::from_secs(10),
            location: None,
        };
        Arc::new(PointTable::new(vec![p]).unwrap())
    }

    #[test]
    fn wire_ids_are_stable_and_javascript_safe() {
        assert_eq!(alarm_num("GT-1:H"), alarm_num("GT-1:H"));
        assert_ne!(alarm_num("GT-1:H"), alarm_num("GT-1:HH"));
        assert!(alarm_num("device/GW-1:COMM_LOST") < 1 << 53);
    }

    /// The quality names on the stream and in the REST views are the serde tags of
    /// `Quality` (the console and API clients compare them).
    #[test]
    fn quality_names_are_the_serde_tags() {
        use parkguard_rules::Quality as Q;
        for q in [
            Q::Good,
            Q::CommLost,
            Q::DeviceException { code: 2 },
            Q::OutOfRange,
            Q::Fault,
            Q::Maintenance,
            Q::Inhibited,
            Q::Stale,
        ] {
            let v = serde_json::to_value(q).unwrap();
            assert_eq!(v["q"].as_str(), Some(quality_str(q)), "{q:?}");
        }
    }

    #[test]
    fn refused_commands_map_to_clear_4xx() {
        let e = command_error(CommandError::UnknownTarget("X".into()));
        assert!(matches!(e, BackendError::NotFound(_)));
        let e = command_error(CommandError::ShelveTooLong {
            alarm: "GT-1:H".into(),
            requested_s: 9,
            max_s: 8,
        });
        assert!(matches!(e, BackendError::Invalid(m) if m.contains("exceeds the maximum")));
        let e = command_error(CommandError::NotShelved("GT-1:H".into()));
        assert!(matches!(e, BackendError::Conflict(_)));
    }

    /// The spool's system alarm (bound reached, or appends failing) fails `/readyz` and shows
    /// on `/metrics`; stale points are counted.
    #[tokio::test]
    async fn spool_alarm_fails_readiness_and_shows_in_metrics() {
        use std::sync::atomic::Ordering::Relaxed;
        let table = table();
        let mut engine = Engine::new(table.clone(), EngineConfig::default(), Vec::new());
        let t = system_now();
        let mut out = Vec::new();
        engine.on_readings(
            &[Reading {
                point: PointId(0),
                value: 1.0,
                unit: Unit::PercentLel,
                quality: Quality::Stale,
                source_time: t,
                receive_time: t,
            }],
            &mut out,
        );
        let (req_tx, _req_rx) = mpsc::channel(1);
        let (ev_tx, _) = broadcast::channel(16);
        let (_snap_tx, snap_rx) = watch::channel(Arc::new(engine.snapshot()));
        let spool = Arc::new(crate::store::spool::SpoolStats::default());
        let backend = EngineBackend::new(BackendParts {
            spool: Some(spool.clone()),
            ..bare_parts(table, req_tx, ev_tx, snap_rx)
        });
        let spool_check = |checks: Vec<ReadyCheck>| {
            checks
                .into_iter()
                .find(|c| c.name == "spool")
                .expect("a spool check")
        };
        assert!(spool_check(backend.readiness().await).ok);
        spool.overflow_alarm.store(true, Relaxed);
        spool.readings_dropped_unsent.store(500, Relaxed);
        let c = spool_check(backend.readiness().await);
        assert!(!c.ok);
        assert!(c.detail.contains("500 undelivered"), "{}", c.detail);
        spool.append_failing.store(true, Relaxed);
        let c = spool_check(backend.readiness().await);
        assert!(c.detail.contains("appends failing"), "{}", c.detail);
        let mut m = String::new();
        backend.render_metrics(&mut m);
        assert!(m.contains("\nparkguard_spool_overflow 1\n"), "{m}");
        assert!(m.contains("\nparkguard_spool_append_failing 1\n"), "{m}");
        assert!(m.contains("\nparkguard_points_stale 1\n"), "{m}");
        assert!(m.contains("parkguard_points{quality=\"stale\"} 1\n"), "{m}");
        // Without [influx] there is no pending figure to report.
        assert!(!m.contains("parkguard_spool_pending_readings"), "{m}");
    }

    /// A refusing MQTT 5 broker (fault injection: it accepts every connection and answers
    /// every QoS 1 PUBLISH with PUBACK reason 0x87 "not authorised", as mosquitto does for
    /// a topic its ACL denies; `tests/tests/mqtt5.rs` checks the counter against mosquitto
    /// itself). Returns its port.
    async fn refusing_mqtt5_broker() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    loop {
                        let mut head = [0u8; 1];
                        if sock.read_exact(&mut head).await.is_err() {
                            return;
                        }
                        let (mut len, mut shift) = (0usize, 0);
                        loop {
                            let mut b = [0u8; 1];
                            if sock.read_exact(&mut b).await.is_err() {
                                return;
                            }
                            len |= usize::from(b[0] & 0x7f) << shift;
                            shift += 7;
                            if b[0] & 0x80 == 0 {
                                break;
                            }
                        }
                        let mut body = vec![0u8; len];
                        if sock.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let reply: Vec<u8> = match head[0] >> 4 {
                            1 => vec![0x20, 3, 0, 0, 0], // CONNACK: success, no properties
                            3 if head[0] & 0x06 == 0x02 => {
                                // PUBLISH QoS 1: topic, then the packet id.
                                let t = usize::from(u16::from_be_bytes([body[0], body[1]]));
                                let (hi, lo) = (body[2 + t], body[3 + t]);
                                vec![0x40, 4, hi, lo, 0x87, 0] // PUBACK: not authorised
                            }
                            12 => vec![0xd0, 0], // PINGRESP
                            14 => return,        // DISCONNECT
                            _ => Vec::new(),
                        };
                        if !reply.is_empty() && sock.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    /// The pollers' jitter on `/metrics`: one cumulative histogram over all devices (in
    /// seconds, as Prometheus expects), its sum and count, and the largest lateness per
    /// device.
    #[test]
    fn modbus_poll_lateness_is_one_histogram_over_all_devices() {
        use parkguard_drivers::modbus::DeviceMetrics;
        let a = DeviceMetrics::new("A");
        let b = DeviceMetrics::new("B");
        // A: 3 polls on time-ish (80 µs), one 2.5 ms late; B: one 40 ms, one 7 s late.
        for _ in 0..3 {
            a.record_lateness(Duration::from_micros(80));
        }
        a.record_lateness(Duration::from_micros(2_500));
        b.record_lateness(Duration::from_millis(40));
        b.record_lateness(Duration::from_secs(7));
        let mut out = String::new();
        modbus_lateness(&mut out, &[a.snapshot(), b.snapshot()]);
        let line = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no {name} in\n{out}"))
                .to_string()
        };
        let bucket = |le: &str| {
            line(&format!(
                "parkguard_modbus_poll_lateness_seconds_bucket{{le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.0001"), "3");
        assert_eq!(bucket("0.002"), "3");
        assert_eq!(bucket("0.003"), "4");
        assert_eq!(bucket("0.05"), "5");
        assert_eq!(bucket("5"), "5");
        assert_eq!(bucket("+Inf"), "6");
        assert_eq!(line("parkguard_modbus_poll_lateness_seconds_count"), "6");
        let sum: f64 = line("parkguard_modbus_poll_lateness_seconds_sum")
            .parse()
            .unwrap();
        assert!((sum - 7.04274).abs() < 1e-9, "{sum}");
        assert_eq!(
            line("parkguard_modbus_poll_lateness_max_seconds{device=\"B\"}"),
            "7"
        );
        assert_eq!(
            line("parkguard_modbus_poll_lateness_max_seconds{device=\"A\"}"),
            "0.0025"
        );
        assert!(out.contains("# TYPE parkguard_modbus_poll_lateness_seconds histogram"));
    }

    /// Publishes an MQTT linkage channel's broker refused are on `/metrics` per channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt_channel_refusals_show_in_metrics() {
        use parkguard_drivers::notify::{Channel, ChannelConfig, ChannelEnv, Notification};
        let port = refusing_mqtt5_broker().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let mut broker = parkguard_drivers::mqtt::MqttBroker::plain("bus", "127.0.0.1", port);
        broker.protocol = parkguard_drivers::mqtt::config::MqttProtocol::V5;
        let cfg: ChannelConfig = serde_json::from_value(serde_json::json!(
            {"type": "mqtt", "name": "bureau-bus", "broker": "bus", "timeout_ms": 5000}
        ))
        .unwrap();
        let env = ChannelEnv {
            park: "yk".into(),
            mqtt_brokers: vec![broker],
            shutdown: stop.clone(),
        };
        let channel = Arc::new(Channel::build_with(&cfg, &env).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let table = table();
        let mut linkage = crate::linkage::wire::Linkage::new(
            crate::linkage::route::Router::new(Vec::new(), Default::default()),
            Vec::new(),
            HashMap::new(),
            table.clone(),
            HashMap::new(),
            &dir.path().join("journal.sqlite"),
        )
        .unwrap();
        linkage.channels = vec![channel.clone()];
        let engine = Engine::new(table.clone(), EngineConfig::default(), Vec::new());
        let (req_tx, _req_rx) = mpsc::channel(1);
        let (ev_tx, _) = broadcast::channel(16);
        let (_snap_tx, snap_rx) = watch::channel(Arc::new(engine.snapshot()));
        let backend = EngineBackend::new(BackendParts {
            linkage: Some(Arc::new(linkage)),
            ..bare_parts(table, req_tx, ev_tx, snap_rx)
        });
        let line = "\nparkguard_linkage_mqtt_rejected_total{channel=\"bureau-bus\"} ";
        let mut m = String::new();
        backend.render_metrics(&mut m);
        assert!(m.contains(&format!("{line}0\n")), "{m}");
        assert!(
            m.contains("# TYPE parkguard_linkage_mqtt_rejected_total counter"),
            "{m}"
        );

        let n = Notification {
            event_id: 7,
            alarm_id: "GT-1:HH".into(),
            drill: None,
            enterprise: "E1".into(),
            enterprise_name: None,
            area: None,
            kind: PointKind::Combustible,
            tag: "GT-1".into(),
            point_name: "methane".into(),
            condition: "HH".into(),
            priority: parkguard_drivers::notify::Priority::High,
            state: "unack".into(),
            value: Some(60.0),
            unit: "%LEL".into(),
            limit: Some(50.0),
            time: system_now(),
            grade: None,
            message_zh: "可燃气体浓度超二级报警值".into(),
            message_en: "combustible gas above level-2".into(),
        };
        for i in 1..=2u64 {
            let r = channel.deliver(&n).await;
            assert!(r.is_err(), "a refused publish is no delivery: {r:?}");
            let mut m = String::new();
            backend.render_metrics(&mut m);
            assert!(m.contains(&format!("{line}{i}\n")), "{m}");
        }
        stop.cancel();
    }

    /// The pump falls behind the engine's broadcast (more events than it holds arrive
    /// before the pump runs): it republishes every alarm from the snapshot.
    #[tokio::test]
    async fn pump_resynchronises_from_the_snapshot_when_it_lags() {
        let table = table();
        let mut engine = Engine::new(table.clone(), EngineConfig::default(), Vec::new());
        let t = system_now();
        let mut out = Vec::new();
        engine.on_readings(
            &[Reading {
                point: PointId(0),
                value: 60.0,
                unit: Unit::PercentLel,
                quality: Quality::Good,
                source_time: t,
                receive_time: t,
            }],
            &mut out,
        );
        assert!(out.len() >= 2, "{out:?}");
        let (req_tx, _req_rx) = mpsc::channel(1);
        let (ev_tx, _) = broadcast::channel(16);
        let (_snap_tx, snap_rx) = watch::channel(Arc::new(engine.snapshot()));
        let parts = bare_parts(table, req_tx, ev_tx.clone(), snap_rx);
        let backend = EngineBackend::new(parts);
        let hub = Arc::new(EventHub::new(HubSettings::default(), 1));
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(pump(backend, hub.clone(), cancel.clone()));
        while ev_tx.receiver_count() == 0 {
            tokio::task::yield_now().await;
        }
        // Forty warning events without yielding (current-thread runtime): the pump's
        // receiver holds 16, so it lags. The alarms were never sent as events.
        for i in 0..40 {
            let w = Event::Warning(WarningEvent {
                id: 100 + i,
                scope: WarningScope::Park,
                from: parkguard_rules::Grade::None,
                to: parkguard_rules::Grade::Blue,
                time: t,
                reason: "test".into(),
                drill: None,
            });
            ev_tx.send(Arc::new(w)).unwrap();
        }
        let kinds = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let sub = hub.subscribe(Some(0));
                let kinds: Vec<(String, String)> = sub
                    .replay
                    .iter()
                    .map(|e| (e.kind.to_string(), e.data().to_string()))
                    .collect();
                if kinds.iter().filter(|(k, _)| k == "warning").count() >= 16 {
                    return kinds;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let alarms: Vec<&String> = kinds
            .iter()
            .filter(|(k, _)| k == "alarm")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(alarms.len(), 2, "{kinds:?}");
        assert!(alarms.iter().any(|d| d.contains("\"condition\":\"hh\"")));
        assert!(alarms.iter().any(|d| d.contains("\"condition\":\"h\"")));
        assert!(
            kinds
                .iter()
                .any(|(k, d)| k == "point" && d.contains("\"state\":\"alarm_unack\"")),
            "{kinds:?}"
        );
        cancel.cancel();
        task.await.unwrap();
    }

    /// The pump over `engine`'s snapshot with a console connected (with none, value
    /// updates are not built at all): the snapshot sender, the hub, the console's
    /// subscription, the pump's cancel token and its task.
    fn pump_with_console(
        table: Arc<PointTable>,
        engine: &Engine,
    ) -> (
        watch::Sender<Arc<Snapshot>>,
        Arc<EventHub>,
        crate::api::events::Subscription,
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let (req_tx, _req_rx) = mpsc::channel(1);
        let (ev_tx, _) = broadcast::channel(16);
        let (snap_tx, snap_rx) = watch::channel(Arc::new(engine.snapshot()));
        let backend = EngineBackend::new(bare_parts(table, req_tx, ev_tx, snap_rx));
        let hub = Arc::new(EventHub::new(HubSettings::default(), 1));
        let console = hub.subscribe(None);
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(pump(backend, hub.clone(), cancel.clone()));
        (snap_tx, hub, console, cancel, task)
    }

    /// The pump lets go of a snapshot before it serialises the changed points: while it
    /// is still sending them (it yields every 256 points), only the watch and whoever
    /// else took it hold the snapshot, so the engine can write its next one into it
    /// instead of allocating ~2 MB for 10,000 points.
    #[tokio::test]
    async fn the_pump_lets_go_of_the_snapshot_before_sending_the_values() {
        let one = table();
        let template = one.get(PointId(0)).unwrap().clone();
        let points: Vec<Point> = (0..600u32)
            .map(|i| Point {
                id: PointId(i),
                tag: format!("GT-{i}"),
                ..template.clone()
            })
            .collect();
        let table = Arc::new(PointTable::new(points).unwrap());
        let mut engine = Engine::new(table.clone(), EngineConfig::default(), Vec::new());
        let (snap_tx, hub, _console, cancel, task) = pump_with_console(table, &engine);
        let t = system_now();
        let readings: Vec<Reading> = (0..600u32)
            .map(|i| Reading {
                point: PointId(i),
                value: 1.0,
                unit: Unit::PercentLel,
                quality: Quality::Good,
                source_time: t,
                receive_time: t,
            })
            .collect();
        let mut out = Vec::new();
        engine.on_readings(&readings, &mut out);
        let snap = Arc::new(engine.snapshot());
        snap_tx.send(Arc::clone(&snap)).unwrap();
        // Current-thread runtime: the pump runs until its first yield, after 255 of the
        // 600 updates.
        let sent = |hub: &EventHub| {
            hub.subscribe(Some(0))
                .replay
                .iter()
                .filter(|e| e.kind == "point")
                .count()
        };
        while sent(&hub) == 0 {
            tokio::task::yield_now().await;
        }
        let mid_pass = sent(&hub);
        assert!(
            mid_pass < 600,
            "the pump did not yield: {mid_pass} updates at once"
        );
        // Held by the watch and by this test; not by the pump in the middle of its pass.
        assert_eq!(
            Arc::strong_count(&snap),
            2,
            "after {mid_pass} of 600 updates"
        );
        while sent(&hub) < 600 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        task.await.unwrap();
    }

    /// A new snapshot sends each changed point as the compact update: value, quality,
    /// times and state (alarm, or fault for bad quality), without the static fields.
    #[tokio::test]
    async fn new_values_go_out_as_compact_point_updates() {
        let table = table();
        let mut engine = Engine::new(table.clone(), EngineConfig::default(), Vec::new());
        let (snap_tx, hub, _console, cancel, task) = pump_with_console(table, &engine);
        let t = system_now();
        let mut out = Vec::new();
        let reading = |value, quality| Reading {
            point: PointId(0),
            value,
            unit: Unit::PercentLel,
            quality,
            source_time: t,
            receive_time: t,
        };
        let points = |hub: &EventHub| -> Vec<serde_json::Value> {
            hub.subscribe(Some(0))
                .replay
                .iter()
                .filter(|e| e.kind == "point")
                .map(|e| serde_json::from_str(e.data()).unwrap())
                .collect()
        };
        let wait_for = |n: usize| {
            let hub = hub.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        let p = points(&hub);
                        if p.len() >= n {
                            return p;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .unwrap()
            }
        };
        engine.on_readings(&[reading(60.0, Quality::Good)], &mut out);
        snap_tx.send(Arc::new(engine.snapshot())).unwrap();
        let got = wait_for(1).await;
        let u = &got[0];
        assert_eq!(u["tag"], "GT-1", "{u}");
        assert_eq!(u["value"], 60.0, "{u}");
        assert_eq!(u["quality"], "good", "{u}");
        assert_eq!(u["state"], "alarm_unack", "{u}");
        assert_eq!(u["source_time_ms"], u["receive_time_ms"], "{u}");
        assert!(u["source_time_ms"].as_i64().is_some(), "{u}");
        assert!(u.get("name").is_none() && u.get("limits").is_none(), "{u}");

        // A bad reading a second later (the throttle lets one update per point per
        // second through): no value shown as good, and the fault shows.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let t2 = system_now();
        let mut bad = reading(0.0, Quality::Fault);
        bad.source_time = t2;
        bad.receive_time = t2;
        engine.on_readings(&[bad], &mut out);
        snap_tx.send(Arc::new(engine.snapshot())).unwrap();
        let got = wait_for(2).await;
        let u = &got[1];
        assert_eq!(u["quality"], "fault", "{u}");
        assert!(u["value"].is_null(), "{u}");
        // The alarm (latched while unacknowledged) outranks the fault.
        assert_eq!(u["state"], "alarm_unack", "{u}");
        cancel.cancel();
        task.await.unwrap();
    }
}
