//! Drills inside the running daemon.
//!
//! ```text
//! POST /api/v1/drills ─► Drills::start ─► drill task (owns its own Engine, drill id set)
//!                                          │  feed: scenario script or archive replay,
//!                                          │  on the drill's own clock, paced at 1×…max
//!   pause/resume/stop/ack ─► ctl (mpsc) ──►│
//!                                          ├─► journal channel (the real path's, lossless)
//!                                          │     └─► journal + linkage router: drill events
//!                                          │         reach drill channels only
//!                                          └─► shared status (alarms, progress) ─► GET
//! ```
//!
//! Real monitoring is never touched: the real engine task is a different engine with its
//! own alarm states; the drill shares only the journal writer, whose router refuses drill
//! events for production channels. A real alarm during a drill alarms and notifies as usual.
//!
//! Limits: a drill judges against the limits in force when it starts — the configured ones
//! with the versions stored through the API applied on top, read from the real path's
//! limits store ([`Drills::with_limits`], [`super::limits`]) — and its report names the
//! versions it ran (`limits`).
//!
//! The drill's clock: a scenario starts at the wall-clock time the drill was started and
//! advances one scenario step per batch; a replay runs on the recorded readings' clock.
//! Pacing maps the drill clock onto wall time at the chosen speed (1×, 10×, 60×) or runs as
//! fast as possible (`max`). When the feed ends the drill stays open for acknowledgements:
//! its clock then runs on at real time from the end, and the engine is no longer ticked (no
//! more readings would otherwise make every point stale). Stop closes it and stores the
//! report (`<data.dir>/drills/<id>.json` and `.html`).
//!
//! Back-pressure: the control channel is bounded ([`CTL_CAPACITY`]); the API `try_send`s and
//! answers 503 when it is full. The journal channel is the real path's lossless one: the
//! drill waits when it is full, as the real engine does.

use super::archive::{ArchiveFilter, read_archive};
use super::limits::{LimitsInForce, LimitsUsed};
use super::replay::ReplayStats;
use super::runner::{self, DrillReport};
use super::scenario::Scenario;
use crate::api::limits::LimitsStore;
use parkguard_rules::alarm::{AlarmState, Condition, Priority};
use parkguard_rules::engine::{Command, Engine, EngineConfig, Event, VoteGroup};
use parkguard_rules::{PointTable, Reading, Timestamp};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// Capacity of a drill's control channel (pause, resume, stop, acknowledge).
pub const CTL_CAPACITY: usize = 32;

/// The scenarios shipped with the demo park: name → TOML.
pub const BUILTIN_SCENARIOS: &[(&str, &str)] = &[
    (
        "chlorine-release",
        include_str!("../../../deploy/scenarios/chlorine-release.toml"),
    ),
    (
        "hydrocarbon-leak",
        include_str!("../../../deploy/scenarios/hydrocarbon-leak.toml"),
    ),
];

/// Why a drill request failed.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Drills cannot run here (no journal), or the daemon is stopping (503).
    #[error("{0}")]
    Unavailable(String),
    /// No such drill or scenario (404).
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the drill's state (409).
    #[error("{0}")]
    Conflict(String),
    /// Bad request (422).
    #[error("{0}")]
    Invalid(String),
}

/// Replay speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// Drill clock runs this many times faster than the wall clock.
    Factor(f64),
    /// As fast as possible.
    Max,
}

impl Speed {
    /// `1x`, `10x`, `60x` (any factor from 0.1 to 10000), or `max`.
    pub fn parse(s: &str) -> Result<Speed, String> {
        let t = s.trim().to_ascii_lowercase();
        if t == "max" {
            return Ok(Speed::Max);
        }
        let n = t.strip_suffix(['x', '×']).unwrap_or(&t);
        match n.parse::<f64>() {
            Ok(f) if (0.1..=10_000.0).contains(&f) => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "speed `{s}` is not one of 1x, 10x, 60x, max (or a factor 0.1x..10000x)"
            )),
        }
    }

    /// The label shown (`60x`, `max`).
    pub fn label(&self) -> String {
        match self {
            Speed::Factor(f) => format!("{f}x"),
            Speed::Max => "max".into(),
        }
    }
}

/// What feeds a drill.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplaySpec {
    /// RFC 3339 start of the window (default: the oldest archived reading).
    #[serde(default)]
    pub from: Option<String>,
    /// RFC 3339 end of the window, exclusive (default: the newest archived reading).
    #[serde(default)]
    pub to: Option<String>,
    /// Only these tags (default: every point).
    #[serde(default)]
    pub points: Vec<String>,
    /// Only points of these enterprises (default: every enterprise).
    #[serde(default)]
    pub enterprises: Vec<String>,
    /// Replay this file instead of the local archive: InfluxDB line protocol or an
    /// annotated-CSV export (`influx query --raw`) of measurement `reading`, detected by
    /// content — data taken from the production InfluxDB. A file name (no path) in
    /// `<data.dir>/replays/`: the API never reads arbitrary paths.
    #[serde(default)]
    pub file: Option<String>,
}

/// `POST /api/v1/drills`: exactly one of `scenario` and `replay`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Drill id (letters, digits, `-`, `_`, `.`; ≤ 64); default `drill-<unix seconds>`.
    #[serde(default)]
    pub id: Option<String>,
    /// Scenario name: a shipped one (`chlorine-release`, `hydrocarbon-leak`) or
    /// `<data.dir>/scenarios/<name>.toml`.
    #[serde(default)]
    pub scenario: Option<String>,
    /// Replay of the local archive.
    #[serde(default)]
    pub replay: Option<ReplaySpec>,
    /// `1x` (default), `10x`, `60x` or `max`.
    #[serde(default)]
    pub speed: Option<String>,
}

/// Life of a drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillState {
    /// Feeding readings.
    Running,
    /// Paused by an engineer (clock stopped).
    Paused,
    /// The script or replay has ended; alarms can still be acknowledged.
    Finished,
    /// Stopped; the report is final.
    Stopped,
}

/// One drill alarm as the drill view shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrillAlarm {
    /// Alarm id (`TAG:HH`, `group/ID:VOTE_L2`, …): what `ack` takes.
    pub alarm: String,
    /// Tag, group or device.
    pub source: String,
    /// Enterprise code.
    pub enterprise: String,
    /// Condition.
    pub condition: Condition,
    /// Priority.
    pub priority: Priority,
    /// ISA-18.2 state.
    pub state: AlarmState,
    /// Condition present.
    pub active: bool,
    /// Since when (drill clock), ms.
    pub active_since_ms: Option<i64>,
    /// The drill this alarm belongs to.
    pub drill: String,
}

/// Status of one drill.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrillStatus {
    /// Drill id (on every event of the drill).
    pub id: String,
    /// `scenario:<name>` or `archive`.
    pub source: String,
    /// Scenario title or replay window.
    pub title: String,
    /// Speed label.
    pub speed: String,
    /// State.
    pub state: DrillState,
    /// Who started it.
    pub started_by: String,
    /// When it was started (wall clock), ms.
    pub started_ms: i64,
    /// Start of the drill clock, ms.
    pub start_ms: i64,
    /// The drill clock now, ms.
    pub clock_ms: i64,
    /// Length of the script or replay window, seconds.
    pub duration_s: f64,
    /// Readings fed so far.
    pub readings: u64,
    /// Events so far (alarms, warnings, acknowledgements).
    pub events: u64,
    /// Drill alarms not in `normal`.
    pub alarms: Vec<DrillAlarm>,
}

/// What the drill manager needs from the running daemon.
#[derive(Clone, Debug)]
pub struct DrillParts {
    /// The park's points.
    pub table: Arc<PointTable>,
    /// The engine settings (`drill` is set per drill).
    pub engine: EngineConfig,
    /// Vote groups.
    pub vote_groups: Vec<VoteGroup>,
    /// The real path's journal channel (weak: it must not keep the journal writer alive
    /// at shutdown). Drill events go there, and through it to the linkage router. `None`
    /// only in the API's test double: events are then kept for the report alone.
    pub journal: Option<mpsc::WeakSender<Vec<Event>>>,
    /// `<data.dir>`: scenarios in `scenarios/`, reports to `drills/`.
    pub data_dir: PathBuf,
    /// The local archive (spool directory) replays read.
    pub spool_dir: PathBuf,
    /// Daemon shutdown: every drill stops with it.
    pub shutdown: CancellationToken,
}

enum Ctl {
    Pause(oneshot::Sender<Result<(), DrillError>>),
    Resume(oneshot::Sender<Result<(), DrillError>>),
    Stop(oneshot::Sender<Result<(), DrillError>>),
    Ack {
        alarm: String,
        user: String,
        comment: Option<String>,
        reply: oneshot::Sender<Result<usize, DrillError>>,
    },
}

struct Shared {
    status: DrillStatus,
    events: Vec<Event>,
    report: Option<DrillReport>,
    /// The limit versions the drill runs (for the report).
    limits: Vec<LimitsUsed>,
}

struct Handle {
    id: String,
    ctl: mpsc::Sender<Ctl>,
    shared: Arc<Mutex<Shared>>,
}

/// The drills of a running daemon.
pub struct Drills {
    parts: Option<DrillParts>,
    /// The real path's limits store: each drill applies the limits in force from it at
    /// start ([`super::limits`]). `None`: drills run the configured limits.
    limits: Option<Arc<LimitsStore>>,
    /// The real path's linkage: a drill's alarms escalate to drill channels while the
    /// drill runs ([`crate::linkage::wire`]). `None`: no escalation.
    linkage: Option<Arc<crate::linkage::wire::Linkage>>,
    drills: Mutex<Vec<Arc<Handle>>>,
}

impl Default for Drills {
    fn default() -> Self {
        Self::unavailable()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wall_ms() -> i64 {
    crate::engine_task::system_now().millis()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Drills {
    /// Drills refused with 503 (API tests, or a daemon without a journal).
    pub fn unavailable() -> Self {
        Self {
            parts: None,
            limits: None,
            linkage: None,
            drills: Mutex::new(Vec::new()),
        }
    }

    /// Drills beside the real path described by `parts`.
    pub fn new(parts: DrillParts) -> Self {
        Self {
            parts: Some(parts),
            limits: None,
            linkage: None,
            drills: Mutex::new(Vec::new()),
        }
    }

    /// Judge every drill against the limits in force in `store` (the real path's
    /// `<data.dir>/limits.sqlite`, [`crate::engine_task::EngineHandle::limits`]), read when
    /// the drill starts, instead of the configured ones. The daemon always sets it.
    pub fn with_limits(mut self, store: Arc<LimitsStore>) -> Self {
        self.limits = Some(store);
        self
    }

    /// Let the drills' alarms escalate through `linkage` (the real path's, whose router
    /// keeps drill notifications on drill channels) while each drill runs. The daemon sets
    /// it when channels are configured.
    pub fn with_linkage(mut self, linkage: Arc<crate::linkage::wire::Linkage>) -> Self {
        self.linkage = Some(linkage);
        self
    }

    fn parts(&self) -> Result<&DrillParts, DrillError> {
        self.parts.as_ref().ok_or_else(|| {
            DrillError::Unavailable("drills are not available in this process".into())
        })
    }

    fn handle(&self, id: &str) -> Result<Arc<Handle>, DrillError> {
        lock(&self.drills)
            .iter()
            .find(|h| h.id == id)
            .cloned()
            .ok_or_else(|| DrillError::NotFound(format!("no drill `{id}`")))
    }

    /// Every drill, oldest first.
    pub fn list(&self) -> Vec<DrillStatus> {
        lock(&self.drills)
            .iter()
            .map(|h| lock(&h.shared).status.clone())
            .collect()
    }

    /// One drill.
    pub fn get(&self, id: &str) -> Result<DrillStatus, DrillError> {
        Ok(lock(&self.handle(id)?.shared).status.clone())
    }

    /// The report: final once stopped, otherwise of the events so far.
    pub fn report(&self, id: &str) -> Result<DrillReport, DrillError> {
        let h = self.handle(id)?;
        let sh = lock(&h.shared);
        if let Some(r) = &sh.report {
            return Ok(r.clone());
        }
        Ok(report_of(&sh))
    }

    async fn ctl<T>(
        &self,
        id: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, DrillError>>) -> Ctl,
    ) -> Result<T, DrillError> {
        let h = self.handle(id)?;
        let (tx, rx) = oneshot::channel();
        match h.ctl.try_send(make(tx)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(DrillError::Unavailable(
                    "the drill is busy; try again".into(),
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(DrillError::Conflict(format!("drill `{id}` is stopped")));
            }
        }
        rx.await
            .map_err(|_| DrillError::Conflict(format!("drill `{id}` is stopped")))?
    }

    /// Pause a running drill (its clock stops).
    pub async fn pause(&self, id: &str) -> Result<DrillStatus, DrillError> {
        self.ctl(id, Ctl::Pause).await?;
        self.get(id)
    }

    /// Resume a paused drill.
    pub async fn resume(&self, id: &str) -> Result<DrillStatus, DrillError> {
        self.ctl(id, Ctl::Resume).await?;
        self.get(id)
    }

    /// Stop a drill and store its report; returns the report.
    pub async fn stop(&self, id: &str) -> Result<DrillReport, DrillError> {
        self.ctl(id, Ctl::Stop).await?;
        let h = self.handle(id)?;
        // The task stores the report before it answers the stop.
        let sh = lock(&h.shared);
        Ok(sh.report.clone().unwrap_or_else(|| report_of(&sh)))
    }

    /// Acknowledge a drill alarm (or every unacknowledged alarm of a source) as `user`.
    pub async fn ack(
        &self,
        id: &str,
        alarm: &str,
        user: &str,
        comment: Option<String>,
    ) -> Result<usize, DrillError> {
        let (alarm, user) = (alarm.to_string(), user.to_string());
        self.ctl(id, |reply| Ctl::Ack {
            alarm,
            user,
            comment,
            reply,
        })
        .await
    }

    /// Resolve a start request into a feed (reads the archive for a replay).
    async fn source(
        &self,
        req: &StartRequest,
    ) -> Result<(Feed, String, String, Duration), DrillError> {
        let parts = self.parts()?;
        match (&req.scenario, &req.replay) {
            (Some(name), None) => {
                let text = scenario_text(&parts.data_dir, name)?;
                let file = Scenario::parse(&text)
                    .map_err(|e| DrillError::Invalid(format!("scenario `{name}`: {e}")))?;
                let title = file.scenario.name.clone();
                let sc = Scenario::new(file, Arc::clone(&parts.table)).map_err(|e| {
                    DrillError::Invalid(format!("scenario `{name}` does not fit this park: {e}"))
                })?;
                let total = sc.duration();
                let feed = Feed::scenario(sc, crate::engine_task::system_now());
                Ok((feed, format!("scenario:{name}"), title, total))
            }
            (None, Some(spec)) => {
                let parse = |field: &str, v: &Option<String>| {
                    v.as_deref()
                        .map(|s| {
                            super::replay::parse_rfc3339(s)
                                .map(Timestamp::from_nanos)
                                .ok_or_else(|| {
                                    DrillError::Invalid(format!(
                                        "replay.{field}: `{s}` is not an RFC 3339 time like 2026-11-25T00:00:00+08:00"
                                    ))
                                })
                        })
                        .transpose()
                };
                let filter = ArchiveFilter {
                    from: parse("from", &spec.from)?,
                    to: parse("to", &spec.to)?,
                    points: spec.points.clone(),
                    enterprises: spec.enterprises.clone(),
                };
                for t in &filter.points {
                    if parts.table.by_tag(t).is_none() {
                        return Err(DrillError::Invalid(format!(
                            "replay.points: `{t}` is not a point of this park"
                        )));
                    }
                }
                let dir = parts.spool_dir.clone();
                let table = Arc::clone(&parts.table);
                let f = filter.clone();
                let file = match &spec.file {
                    None => None,
                    Some(name)
                        if !name.is_empty()
                            && !name.contains(['/', '\\'])
                            && !name.starts_with('.') =>
                    {
                        Some(parts.data_dir.join("replays").join(name))
                    }
                    Some(name) => {
                        return Err(DrillError::Invalid(format!(
                            "replay.file: `{name}` must be a file name in <data.dir>/replays/"
                        )));
                    }
                };
                if let Some(path) = &file
                    && !path.is_file()
                {
                    return Err(DrillError::NotFound(format!(
                        "replay.file: no file {}",
                        path.display()
                    )));
                }
                let readings = tokio::task::spawn_blocking(move || {
                    let mut stats = ReplayStats::default();
                    match file {
                        None => read_archive(&dir, &table, &f, &mut stats),
                        Some(path) => read_file(&path, &table, &f, &mut stats),
                    }
                })
                .await
                .map_err(|e| DrillError::Unavailable(format!("archive task: {e}")))?
                .map_err(DrillError::Unavailable)?;
                let feed = Feed::replay(readings, Duration::from_secs(1)).ok_or_else(|| {
                    DrillError::Invalid("the archive holds no readings in that window".into())
                })?;
                let total = feed.duration();
                let title = format!(
                    "回放 / replay {}{} – {}",
                    spec.file
                        .as_deref()
                        .map(|f| format!("{f} "))
                        .unwrap_or_default(),
                    spec.from.as_deref().unwrap_or("oldest"),
                    spec.to.as_deref().unwrap_or("newest")
                );
                let source = match &spec.file {
                    Some(f) => format!("file:{f}"),
                    None => "archive".into(),
                };
                Ok((feed, source, title, total))
            }
            _ => Err(DrillError::Invalid(
                "give exactly one of `scenario` and `replay`".into(),
            )),
        }
    }

    /// Start a drill as `by`. Returns its status.
    pub async fn start(&self, req: StartRequest, by: &str) -> Result<DrillStatus, DrillError> {
        let parts = self.parts()?.clone();
        let speed = Speed::parse(req.speed.as_deref().unwrap_or("1x"))
            .map_err(|e| DrillError::Invalid(format!("speed: {e}")))?;
        let id = match &req.id {
            Some(id) if valid_id(id) => id.clone(),
            Some(id) => {
                return Err(DrillError::Invalid(format!(
                    "id `{id}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
                )));
            }
            None => {
                let base = format!("drill-{}", wall_ms() / 1000);
                let mut id = base.clone();
                let mut n = 1;
                while self.handle(&id).is_ok() {
                    n += 1;
                    id = format!("{base}-{n}");
                }
                id
            }
        };
        if self.handle(&id).is_ok() {
            return Err(DrillError::Conflict(format!("drill `{id}` exists already")));
        }
        let (feed, source, title, total) = self.source(&req).await?;
        let journal = match &parts.journal {
            Some(weak) => Some(weak.upgrade().ok_or_else(|| {
                DrillError::Unavailable("the daemon is stopping; no new drills".into())
            })?),
            None => None,
        };
        let mut ecfg = parts.engine.clone();
        ecfg.drill = Some(id.clone());
        let mut engine = Engine::new(Arc::clone(&parts.table), ecfg, parts.vote_groups.clone());
        // The limits in force, read from the store now: a change stored later does not
        // reach a running drill (its report names the versions it ran).
        let limits = match &self.limits {
            Some(store) => {
                let (store, table) = (Arc::clone(store), Arc::clone(&parts.table));
                tokio::task::spawn_blocking(move || {
                    super::limits::from_store(&store, &table, wall_ms())
                })
                .await
                .map_err(|e| DrillError::Unavailable(format!("limits task: {e}")))?
                .map_err(|e| {
                    DrillError::Unavailable(format!("cannot read the limits in force: {e}"))
                })?
            }
            None => LimitsInForce::default(),
        };
        engine.replace_limits_batch(&limits.apply).map_err(|errs| {
            DrillError::Unavailable(format!(
                "the limits in force are refused by the drill's engine: {}",
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        for l in &limits.used {
            info!(drill = %id, tag = %l.tag, version = l.version, "drill runs stored limits");
        }
        // Drill event ids live far above the real path's (which continues from its own
        // maximum, see topology); the wall clock keeps successive drills apart.
        engine.set_next_event_id(
            (1u64 << 62) + (crate::engine_task::system_now().nanos().unsigned_abs() >> 8),
        );
        let start = feed.start();
        let status = DrillStatus {
            id: id.clone(),
            source,
            title,
            speed: speed.label(),
            state: DrillState::Running,
            started_by: by.to_string(),
            started_ms: wall_ms(),
            start_ms: start.millis(),
            clock_ms: start.millis(),
            duration_s: total.as_secs_f64(),
            readings: 0,
            events: 0,
            alarms: Vec::new(),
        };
        let shared = Arc::new(Mutex::new(Shared {
            status: status.clone(),
            events: Vec::new(),
            report: None,
            limits: limits.used,
        }));
        // Control: bounded; the API try_sends and answers 503 when full.
        let (ctl_tx, ctl_rx) = mpsc::channel(CTL_CAPACITY);
        {
            let mut list = lock(&self.drills);
            if list.iter().any(|h| h.id == id) {
                return Err(DrillError::Conflict(format!("drill `{id}` exists already")));
            }
            list.push(Arc::new(Handle {
                id: id.clone(),
                ctl: ctl_tx,
                shared: Arc::clone(&shared),
            }));
        }
        let task = Task {
            engine,
            feed,
            speed,
            journal,
            shared,
            report_dir: parts.data_dir.join("drills"),
            cancel: parts.shutdown.child_token(),
        };
        info!(drill = %id, source = %status.source, speed = %status.speed, by, "drill started");
        // Its escalations run from now until the task ends (stopped, or the daemon stops).
        let linkage = self.linkage.clone();
        if let Some(l) = &linkage {
            l.drill_started(&id);
        }
        let ended = id.clone();
        tokio::spawn(
            async move {
                task.run(ctl_rx).await;
                if let Some(l) = linkage {
                    l.drill_ended(&ended);
                }
            }
            .instrument(info_span!("drill", drill = %id)),
        );
        Ok(status)
    }
}

/// The TOML of scenario `name`: `<data.dir>/scenarios/<name>.toml` first, then the shipped
/// ones.
pub fn scenario_text(data_dir: &std::path::Path, name: &str) -> Result<String, DrillError> {
    if !valid_id(name) || name.starts_with('.') {
        return Err(DrillError::Invalid(format!(
            "scenario `{name}`: a name is letters, digits, `-`, `_`, `.`"
        )));
    }
    let path = data_dir.join("scenarios").join(format!("{name}.toml"));
    match std::fs::read_to_string(&path) {
        Ok(t) => return Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DrillError::Unavailable(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    }
    BUILTIN_SCENARIOS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t.to_string())
        .ok_or_else(|| {
            DrillError::NotFound(format!(
                "no scenario `{name}` (shipped: {}; or put {})",
                BUILTIN_SCENARIOS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                path.display()
            ))
        })
}

fn report_of(sh: &Shared) -> DrillReport {
    let s = &sh.status;
    let start = Timestamp::from_millis(s.start_ms);
    let elapsed = Duration::from_millis((s.clock_ms - s.start_ms).max(0) as u64);
    let mut r = runner::report(&s.id, &s.title, start, elapsed, s.readings, &sh.events);
    r.limits = sh.limits.clone();
    r
}

/// A drill's source of readings, stepping the drill clock.
pub enum Feed {
    /// A scenario script, one step per batch.
    Scenario {
        /// The script.
        sc: Box<Scenario>,
        /// Drill clock at elapsed 0.
        start: Timestamp,
        /// Next step's offset.
        elapsed: Duration,
    },
    /// Recorded readings, bucketed by `step` of their receive time.
    Replay {
        /// Readings in recording order.
        rs: Vec<Reading>,
        /// Next reading.
        pos: usize,
        /// The next bucket's end (inclusive).
        next_t: Timestamp,
        /// Bucket length.
        step: Duration,
        /// First reading's time.
        start: Timestamp,
        /// Last reading's time.
        end: Timestamp,
    },
}

impl Feed {
    /// A scenario starting at `start`.
    pub fn scenario(sc: Scenario, start: Timestamp) -> Feed {
        Feed::Scenario {
            sc: Box::new(sc),
            start,
            elapsed: Duration::ZERO,
        }
    }

    /// A replay of `rs` (recording order) in buckets of `step`; `None` when empty.
    pub fn replay(rs: Vec<Reading>, step: Duration) -> Option<Feed> {
        let start = rs.first()?.receive_time;
        let end = rs.iter().map(|r| r.receive_time).max()?;
        Some(Feed::Replay {
            rs,
            pos: 0,
            next_t: start,
            step: step.max(Duration::from_millis(1)),
            start,
            end,
        })
    }

    /// Drill clock at the start.
    pub fn start(&self) -> Timestamp {
        match self {
            Feed::Scenario { start, .. } | Feed::Replay { start, .. } => *start,
        }
    }

    /// Length of the script or replay.
    pub fn duration(&self) -> Duration {
        match self {
            Feed::Scenario { sc, .. } => sc.duration(),
            Feed::Replay { start, end, .. } => end.since(*start),
        }
    }

    /// The next batch into `out` (cleared) and the drill time to tick at; `None` at the end.
    pub fn next(&mut self, out: &mut Vec<Reading>) -> Option<Timestamp> {
        out.clear();
        match self {
            Feed::Scenario { sc, start, elapsed } => {
                if *elapsed > sc.duration() {
                    return None;
                }
                sc.readings_at(*start, *elapsed, out);
                let t = *start + *elapsed;
                *elapsed += sc.step();
                Some(t)
            }
            Feed::Replay {
                rs,
                pos,
                next_t,
                step,
                ..
            } => {
                if *pos >= rs.len() {
                    return None;
                }
                let t = *next_t;
                let from = *pos;
                while *pos < rs.len() && rs[*pos].receive_time <= t {
                    *pos += 1;
                }
                out.extend_from_slice(&rs[from..*pos]);
                *next_t = t + *step;
                Some(t)
            }
        }
    }
}

struct Task {
    engine: Engine,
    feed: Feed,
    speed: Speed,
    journal: Option<mpsc::Sender<Vec<Event>>>,
    shared: Arc<Mutex<Shared>>,
    report_dir: PathBuf,
    cancel: CancellationToken,
}

/// Batches between status refreshes and yields at `max` speed.
const MAX_SPEED_SLICE: u32 = 512;

impl Task {
    async fn run(mut self, mut ctl: mpsc::Receiver<Ctl>) {
        let mut buf = Vec::new();
        let mut out: Vec<Event> = Vec::new();
        let mut clock = self.feed.start();
        let mut readings = 0u64;
        let mut paused = false;
        // After the feed: (wall instant, drill time) the clock runs on from at 1×.
        let mut ended: Option<(Instant, Timestamp)> = None;
        // Pacing anchor: (wall instant, drill time) at the last start/resume.
        let mut anchor = (Instant::now(), clock);
        let mut pending: Option<Timestamp> = None;
        let mut slice = 0u32;
        let stop_reply = loop {
            // The drill clock as commands see it.
            let now_drill = |ended: &Option<(Instant, Timestamp)>, clock: Timestamp| match ended {
                Some((at, t)) => *t + at.elapsed(),
                None => clock,
            };
            if ended.is_none() && !paused && pending.is_none() {
                pending = self.feed.next(&mut buf);
                if pending.is_none() {
                    ended = Some((Instant::now(), clock));
                    self.refresh(clock, readings, DrillState::Finished);
                    info!(
                        readings,
                        "drill feed ended; open for acknowledgements until stopped"
                    );
                    continue;
                }
            }
            // Paused: the pending batch waits (the clock stops before it).
            let due = match (pending.filter(|_| !paused), self.speed) {
                (Some(t), Speed::Factor(f)) => Some(anchor.0 + t.since(anchor.1).div_f64(f)),
                (Some(_), Speed::Max) => Some(Instant::now()),
                (None, _) => None,
            };
            let fire = match due {
                Some(d) if d <= Instant::now() => {
                    // Due now: feed the batch, then take a control message without waiting
                    // (a command sent after a batch was due sees that batch's alarms).
                    if let Some(t) = pending.take() {
                        self.engine.on_readings(&buf, &mut out);
                        self.engine.on_tick(t, &mut out);
                        clock = t;
                        readings += buf.len() as u64;
                        let had_events = !out.is_empty();
                        if !self.publish(&mut out).await {
                            break None;
                        }
                        slice += 1;
                        if had_events
                            || matches!(self.speed, Speed::Factor(_))
                            || slice >= MAX_SPEED_SLICE
                        {
                            self.refresh(clock, readings, DrillState::Running);
                        }
                        if slice >= MAX_SPEED_SLICE {
                            slice = 0;
                            tokio::task::yield_now().await;
                        }
                    }
                    match ctl.try_recv() {
                        Ok(c) => Some(c),
                        Err(mpsc::error::TryRecvError::Empty) => None,
                        Err(mpsc::error::TryRecvError::Disconnected) => break None,
                    }
                }
                _ => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => break None,
                        c = ctl.recv() => match c {
                            Some(c) => Some(c),
                            None => break None,
                        },
                        _ = async {
                            match due {
                                Some(d) => tokio::time::sleep_until(d).await,
                                None => std::future::pending::<()>().await,
                            }
                        } => None,
                    }
                }
            };
            if self.cancel.is_cancelled() {
                break None;
            }
            if let Some(c) = fire {
                let state = match (ended.is_some(), paused) {
                    (true, _) => DrillState::Finished,
                    (false, true) => DrillState::Paused,
                    (false, false) => DrillState::Running,
                };
                match c {
                    Ctl::Stop(reply) => break Some(reply),
                    Ctl::Pause(reply) => {
                        let r = if ended.is_some() {
                            Err(DrillError::Conflict(
                                "the drill's feed has ended; stop it instead".into(),
                            ))
                        } else {
                            paused = true;
                            self.refresh(clock, readings, DrillState::Paused);
                            Ok(())
                        };
                        let _ = reply.send(r);
                    }
                    Ctl::Resume(reply) => {
                        let r = if paused {
                            paused = false;
                            anchor = (Instant::now(), clock);
                            self.refresh(clock, readings, DrillState::Running);
                            Ok(())
                        } else {
                            Err(DrillError::Conflict("the drill is not paused".into()))
                        };
                        let _ = reply.send(r);
                    }
                    Ctl::Ack {
                        alarm,
                        user,
                        comment,
                        reply,
                    } => {
                        let now = now_drill(&ended, clock);
                        let cmd = Command::Acknowledge {
                            target: alarm,
                            user,
                            comment,
                        };
                        let r = self.engine.command(&cmd, now, &mut out);
                        if !self.publish(&mut out).await {
                            break None;
                        }
                        self.refresh(clock, readings, state);
                        let _ = reply.send(r.map_err(|e| match e {
                            parkguard_rules::engine::CommandError::UnknownTarget(_) => {
                                DrillError::NotFound(e.to_string())
                            }
                            e => DrillError::Conflict(e.to_string()),
                        }));
                    }
                }
            }
        };
        // Stopped (or the daemon stops): final status and report.
        let clock = match ended {
            Some((_, t)) => t,
            None => clock,
        };
        self.refresh(clock, readings, DrillState::Stopped);
        let report = {
            let mut sh = lock(&self.shared);
            let r = report_of(&sh);
            sh.report = Some(r.clone());
            r
        };
        let dir = self.report_dir.clone();
        let stored = tokio::task::spawn_blocking(move || {
            // Kept in the journal database (the drill's record for the regulator, backed up
            // with the journal) and as files beside it (to print or archive).
            let journal = dir.parent().map(|d| d.join("journal.sqlite"));
            if let Some(j) = journal.filter(|j| j.exists())
                && let Err(e) = store_report_in_journal(&j, &report)
            {
                warn!(error = %e, journal = %j.display(), "cannot store the drill report in the journal");
            }
            store_report(&dir, &report)
        })
        .await;
        match stored {
            Ok(Ok(path)) => info!(report = %path.display(), "drill stopped; report stored"),
            Ok(Err(e)) => warn!(error = %e, "drill stopped; cannot store its report"),
            Err(e) => warn!(error = %e, "drill report task failed"),
        }
        if let Some(reply) = stop_reply {
            let _ = reply.send(Ok(()));
        }
    }

    /// Journal (waiting when full, like the real engine) and keep for the report. False
    /// when the journal is gone (the daemon stops).
    async fn publish(&mut self, out: &mut Vec<Event>) -> bool {
        if out.is_empty() {
            return true;
        }
        let batch = std::mem::take(out);
        lock(&self.shared).events.extend(batch.iter().cloned());
        if let Some(j) = &self.journal
            && j.send(batch).await.is_err()
        {
            warn!("journal channel closed: drill stops");
            return false;
        }
        true
    }

    fn refresh(&self, clock: Timestamp, readings: u64, state: DrillState) {
        let drill = self.engine.config().drill.clone().unwrap_or_default();
        let alarms = self
            .engine
            .alarms()
            .into_iter()
            .map(|a| DrillAlarm {
                alarm: a.alarm,
                source: a.source,
                enterprise: a.enterprise,
                condition: a.condition,
                priority: a.priority,
                state: a.state,
                active: a.active,
                active_since_ms: a.active_since.map(|t| t.millis()),
                drill: drill.clone(),
            })
            .collect();
        let mut sh = lock(&self.shared);
        let n = sh.events.len() as u64;
        let s = &mut sh.status;
        s.clock_ms = clock.millis();
        s.readings = readings;
        s.events = n;
        s.state = state;
        s.alarms = alarms;
    }
}

/// Recorded readings from a line-protocol or annotated-CSV file, filtered like the archive,
/// in time order.
fn read_file(
    path: &std::path::Path,
    table: &PointTable,
    f: &ArchiveFilter,
    stats: &mut ReplayStats,
) -> Result<Vec<Reading>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let annotated = text
        .lines()
        .any(|l| l.starts_with("#datatype") || l.starts_with(",result,table"));
    let records = if annotated {
        super::replay::parse_annotated_csv(&text, stats)
    } else {
        super::replay::parse_line_protocol(&text, stats)
    };
    let mut out = super::replay::to_readings(records, table, stats);
    out.retain(|r| {
        let p = table.get(r.point);
        f.from.is_none_or(|t| r.source_time >= t)
            && f.to.is_none_or(|t| r.source_time < t)
            && p.is_some_and(|p| f.keeps(&p.tag, &p.enterprise))
    });
    Ok(out)
}

/// The table of drill reports in the journal database.
const REPORT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS drill_report (
    drill     TEXT    PRIMARY KEY,
    stored_at INTEGER NOT NULL,
    json      TEXT    NOT NULL,
    html      TEXT    NOT NULL
)";

/// Store (or replace) a drill's final report in the journal database, table `drill_report`.
pub fn store_report_in_journal(journal: &std::path::Path, r: &DrillReport) -> anyhow::Result<()> {
    let conn = crate::linkage::outbox::open(journal)?;
    conn.execute_batch(REPORT_SCHEMA)?;
    conn.execute(
        "INSERT OR REPLACE INTO drill_report (drill, stored_at, json, html) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![
            r.drill,
            crate::engine_task::system_now().nanos(),
            serde_json::to_string(r)?,
            runner::html(r)
        ],
    )?;
    Ok(())
}

fn store_report(dir: &std::path::Path, r: &DrillReport) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join(format!("{}.json", r.drill));
    let text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(&json, text)?;
    std::fs::write(dir.join(format!("{}.html", r.drill)), runner::html(r))?;
    Ok(json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn speeds() {
        assert_eq!(Speed::parse("1x").unwrap(), Speed::Factor(1.0));
        assert_eq!(Speed::parse("60×").unwrap(), Speed::Factor(60.0));
        assert_eq!(Speed::parse("MAX").unwrap(), Speed::Max);
        assert!(Speed::parse("0x").is_err());
        assert!(Speed::parse("fast").is_err());
    }

    #[test]
    fn replay_feed_buckets_by_step_and_keeps_order() {
        let r = |s: i64, v: f64| Reading {
            point: parkguard_rules::PointId(0),
            value: v,
            unit: parkguard_rules::Unit::Ppm,
            quality: parkguard_rules::Quality::Good,
            source_time: Timestamp::from_secs(s),
            receive_time: Timestamp::from_secs(s),
        };
        let mut f = Feed::replay(
            vec![r(10, 1.0), r(10, 2.0), r(12, 3.0)],
            Duration::from_secs(1),
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(f.next(&mut out), Some(Timestamp::from_secs(10)));
        assert_eq!(out.iter().map(|r| r.value).collect::<Vec<_>>(), [1.0, 2.0]);
        assert_eq!(f.next(&mut out), Some(Timestamp::from_secs(11)));
        assert!(out.is_empty());
        assert_eq!(f.next(&mut out), Some(Timestamp::from_secs(12)));
        assert_eq!(out.len(), 1);
        assert_eq!(f.next(&mut out), None);
        assert_eq!(f.duration(), Duration::from_secs(2));
    }

    #[test]
    fn scenario_names_are_checked_and_shipped_ones_found() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scenario_text(dir.path(), "chlorine-release").is_ok());
        assert!(matches!(
            scenario_text(dir.path(), "../etc/passwd"),
            Err(DrillError::Invalid(_))
        ));
        assert!(matches!(
            scenario_text(dir.path(), "nope"),
            Err(DrillError::NotFound(_))
        ));
    }
}
