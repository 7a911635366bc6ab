//! The engine task: the one owner of the real path's [`Engine`], and so the only writer of
//! alarm state (STYLE.md §6). Everyone else talks to it through channels:
//!
//! ```text
//! sources ──Vec<Reading>──► (bounded mpsc) ─┐
//! API ──EngineRequest + oneshot──► (mpsc) ──┼─► engine task ──► journal (bounded mpsc, lossless, optional)
//! 1 s interval (real clock) ────────────────┘        │      ├─► events (broadcast, lossy for laggards)
//!                                                     │      └─► snapshot (watch, latest only)
//! ```
//!
//! Back-pressure, channel by channel:
//! - **readings** (`mpsc::Receiver<Vec<Reading>>`, bounded, created by the topology): when
//!   full, senders wait. The engine never drops a reading; a Modbus poller that waits simply
//!   polls later, the MQTT subscriber stops acknowledging QoS1 so the broker keeps the
//!   messages. The engine evaluates well over a million readings a second, so the channel
//!   fills only if the journal stalls (below). Counted: `stats.readings`.
//! - **requests** (`mpsc`, bounded, [`EngineTaskConfig::request_capacity`]): when full,
//!   `send().await` waits; the HTTP API should `try_send` and answer 503 instead of queueing
//!   an operator's click behind a storm. Each request carries a `oneshot` for its answer; a
//!   dropped oneshot (client gone) is ignored.
//! - **journal** (`mpsc::Sender<Vec<Event>>`, bounded, optional): lossless. The engine
//!   *waits* when it is full, because an alarm event that is not journalled must not be
//!   announced. A stalled journal therefore stalls the engine and, through the readings
//!   channel, the sources; that is the intended failure mode. Notifications are queued by
//!   the journal thread in the event's transaction (the at-least-once record); the task
//!   itself only hands them to the linkage's channels early, as it raises them
//!   ([`EngineTaskConfig::early`]), never through the broadcast.
//! - **events** (`broadcast`, [`EngineTaskConfig::event_capacity`]): for SSE and live views.
//!   Never blocks the engine: a receiver that falls behind loses the oldest events and gets
//!   `RecvError::Lagged(n)` (it counts them) and must resynchronise from the snapshot.
//! - **snapshot** (`watch`): the latest [`Snapshot`] after every tick, command and limit
//!   change; readers see only the newest value, the engine never waits.
//!
//! The task runs on a thread of its own (see [`spawn`]), so that alarm evaluation never
//! queues behind the other tasks of the daemon's runtime.
//!
//! Order: the task handles one message at a time, and when several are waiting it takes a
//! request first, then a due tick, then readings (`biased` select). So a request (an
//! acknowledgement, a limit change) sent before a reading is handled before that reading,
//! and a limit change — one point or a whole class ([`EngineRequest::ReplaceLimitsBatch`])
//! — happens between two reading batches: no reading is ever judged with part of a class
//! changed. Requests are few and quick (the channel is bounded), so they cannot starve the
//! readings; the tick comes once a second and cannot either.

use parkguard_rules::engine::{Command, CommandError, Engine, Event, Snapshot};
use parkguard_rules::{AlarmLimits, FieldError, PointId, Reading, Timestamp};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

/// A request to the engine task, answered on its oneshot.
#[derive(Debug)]
pub enum EngineRequest {
    /// An operator/engineer command (acknowledge, shelve, out of service, …).
    Command {
        /// The command.
        cmd: Command,
        /// How many alarms changed, or why it was refused.
        reply: oneshot::Sender<Result<usize, CommandError>>,
    },
    /// Replace the limits of one point atomically (between two readings).
    ReplaceLimits {
        /// The point.
        point: PointId,
        /// The new limits.
        limits: AlarmLimits,
        /// Ok, or what is wrong with the limits.
        reply: oneshot::Sender<Result<(), Vec<FieldError>>>,
    },
    /// Replace the limits of several points (a class change, a restore) in ONE engine
    /// step: every entry is checked first and either all apply or none
    /// ([`Engine::replace_limits_batch`]); no reading is evaluated in between.
    ReplaceLimitsBatch {
        /// (point, new limits), each point at most once.
        changes: Vec<(PointId, AlarmLimits)>,
        /// When the task takes the request after this instant it refuses it
        /// ([`LimitsRefused::Expired`]) instead of applying it: a caller that stopped
        /// waiting for the answer can rely on nothing having changed.
        deadline: Option<tokio::time::Instant>,
        /// Ok (all applied), or why nothing was.
        reply: oneshot::Sender<Result<(), LimitsRefused>>,
    },
}

/// Why the engine task applied none of a batch of limits.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LimitsRefused {
    /// At least one entry is invalid (fields named `points.TAG.KEY`).
    #[error("invalid limits: {}", join_fields(.0))]
    Invalid(Vec<FieldError>),
    /// The request reached the engine after its deadline.
    #[error("the engine took the change after its deadline; nothing was changed")]
    Expired,
}

fn join_fields(errs: &[FieldError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Settings of the task (not user configuration: the topology picks them).
#[derive(Clone, Debug)]
pub struct EngineTaskConfig {
    /// Tick period. Default 1 s.
    pub tick: Duration,
    /// Capacity of the request channel. Default 64.
    pub request_capacity: usize,
    /// Capacity of the event broadcast. Default 4096.
    pub event_capacity: usize,
    /// The clock ticks read. Default: the system clock. (The engine itself never reads a
    /// clock; the task is where real time enters.)
    pub clock: fn() -> Timestamp,
    /// The linkage, to hand notifications to its channels as the events are raised, before
    /// they go to the journal ([`crate::linkage::wire::Linkage::dispatch_early`]). Default
    /// none: notifications go by their outbox rows only.
    pub early: Option<EarlyLinkage>,
}

/// The linkage as the engine task sees it: [`EngineTaskConfig::early`].
#[derive(Clone)]
pub struct EarlyLinkage(pub Arc<crate::linkage::wire::Linkage>);

impl std::fmt::Debug for EarlyLinkage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EarlyLinkage")
    }
}

impl Default for EngineTaskConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            request_capacity: 64,
            event_capacity: 4096,
            clock: system_now,
            early: None,
        }
    }
}

/// The system clock as a [`Timestamp`].
pub fn system_now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What the rest of the daemon holds to talk to the engine task.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    /// Requests (commands, limit changes). See the module docs for back-pressure.
    pub requests: mpsc::Sender<EngineRequest>,
    /// Subscribe for live events.
    pub events: broadcast::Sender<Arc<Event>>,
    /// The latest snapshot.
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The limits store and the version history the engine was started with (the
    /// topology applies the stored limits before the task starts, see
    /// [`crate::api::limits::LimitsAtStart`]). `None` for an engine started without them
    /// (drills, tests).
    pub limits: Option<Arc<crate::api::limits::LimitsAtStart>>,
}

impl EngineHandle {
    /// Send a command and wait for its answer. `None` if the engine task has ended.
    pub async fn command(&self, cmd: Command) -> Option<Result<usize, CommandError>> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(EngineRequest::Command { cmd, reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Replace a point's limits and wait for the answer. `None` if the engine task has ended.
    pub async fn replace_limits(
        &self,
        point: PointId,
        limits: AlarmLimits,
    ) -> Option<Result<(), Vec<FieldError>>> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(EngineRequest::ReplaceLimits {
                point,
                limits,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Replace the limits of several points in one engine step, all or none (see
    /// [`EngineRequest::ReplaceLimitsBatch`]); refused as expired if the task gets to it
    /// after `deadline`. `None` if the engine task has ended.
    pub async fn replace_limits_batch(
        &self,
        changes: Vec<(PointId, AlarmLimits)>,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<Result<(), LimitsRefused>> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(EngineRequest::ReplaceLimitsBatch {
                changes,
                deadline,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }
}

/// Spawn the engine task. `engine` should already be restored from the journal
/// ([`Engine::restore`]). The task ends when `readings` is closed (every source dropped its
/// sender) and returns the engine.
pub fn spawn(
    engine: Engine,
    readings: mpsc::Receiver<Vec<Reading>>,
    journal: Option<mpsc::Sender<Vec<Event>>>,
    cfg: EngineTaskConfig,
) -> (EngineHandle, JoinHandle<Engine>) {
    // Requests: bounded, senders wait when full (the API should try_send → 503).
    let (req_tx, req_rx) = mpsc::channel(cfg.request_capacity.max(1));
    // Events: lossy for lagging receivers (they get Lagged(n) and resync from the snapshot).
    let (ev_tx, _) = broadcast::channel(cfg.event_capacity.max(16));
    // Snapshot: latest value only.
    let (snap_tx, snap_rx) = watch::channel(Arc::new(engine.snapshot()));
    let handle = EngineHandle {
        requests: req_tx,
        events: ev_tx.clone(),
        snapshot: snap_rx,
        limits: None,
    };
    let drill = engine.config().drill.clone();
    let task = Task {
        engine,
        journal,
        events: ev_tx,
        snapshot: snap_tx,
        spare: None,
        out: Vec::with_capacity(1024),
        clock: cfg.clock,
        early: cfg.early,
    };
    let span = info_span!("engine", drill = drill.as_deref().unwrap_or(""));
    // A thread of its own with a current-thread runtime: on the shared runtime a reading
    // that crosses a limit waited behind whatever else was running there — the MQTT
    // subscriber's decoding, the SSE pump serialising 10,000 points every second, HTTP
    // handlers — and on 2 cores that was milliseconds at p99 (issue #11). The engine's own
    // work is small. A plain thread, not `spawn_blocking`: dropping the daemon's runtime
    // must not wait for it. If the thread or its runtime cannot be made, the task runs on
    // the caller's runtime as before.
    type Run = std::pin::Pin<Box<dyn std::future::Future<Output = Engine> + Send>>;
    let run: Run = Box::pin(task.run(readings, req_rx, cfg.tick).instrument(span));
    let slot = Arc::new(std::sync::Mutex::new(Some(run)));
    let take = |slot: &std::sync::Mutex<Option<Run>>| {
        slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    };
    let (done_tx, done_rx) = oneshot::channel::<std::thread::Result<Engine>>();
    let thread_slot = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let Some(run) = take(&thread_slot) else {
                return;
            };
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        rt.block_on(run)
                    }));
                    let _ = done_tx.send(r);
                }
                Err(e) => {
                    warn!(error = %e, "no runtime for the engine thread: the engine task runs on the shared runtime");
                    // Give the task back; the caller's side runs it (below).
                    *thread_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
                    drop(done_tx);
                }
            }
        });
    if let Err(e) = &spawned {
        warn!(error = %e, "no engine thread: the engine task runs on the shared runtime");
    }
    let join = tokio::spawn(async move {
        match done_rx.await {
            Ok(Ok(engine)) => engine,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // No thread or no runtime there: run the task here.
            Err(_) => match take(&slot) {
                Some(run) => run.await,
                None => std::future::pending().await,
            },
        }
    });
    (handle, join)
}

struct Task {
    engine: Engine,
    journal: Option<mpsc::Sender<Vec<Event>>>,
    events: broadcast::Sender<Arc<Event>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The snapshot replaced last, when nobody else held it any more: the next one is
    /// written into it ([`Engine::snapshot_into`]) instead of allocated.
    spare: Option<Snapshot>,
    out: Vec<Event>,
    clock: fn() -> Timestamp,
    early: Option<EarlyLinkage>,
}

impl Task {
    /// Publish the engine's state now as the latest snapshot.
    fn publish_snapshot(&mut self) {
        let snap = match self.spare.take() {
            Some(mut s) => {
                self.engine.snapshot_into(&mut s);
                s
            }
            None => self.engine.snapshot(),
        };
        let old = self.snapshot.send_replace(Arc::new(snap));
        // Still held (an API request, the console pump): it goes when they drop it.
        self.spare = Arc::try_unwrap(old).ok();
    }

    async fn run(
        mut self,
        mut readings: mpsc::Receiver<Vec<Reading>>,
        mut requests: mpsc::Receiver<EngineRequest>,
        tick: Duration,
    ) -> Engine {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut requests_open = true;
        info!(points = self.engine.table().len(), "engine task started");
        loop {
            // Biased: requests, then a due tick, then readings (see the module docs).
            tokio::select! {
                biased;
                req = requests.recv(), if requests_open => {
                    match req {
                        Some(req) => {
                            self.request(req).await;
                        }
                        None => requests_open = false,
                    }
                }
                _ = interval.tick() => {
                    let now = (self.clock)();
                    self.engine.on_tick(now, &mut self.out);
                    self.publish().await;
                    self.publish_snapshot();
                }
                batch = readings.recv() => {
                    let Some(batch) = batch else { break };
                    self.engine.on_readings(&batch, &mut self.out);
                    self.publish().await;
                }
            }
        }
        self.publish_snapshot();
        let stats = self.engine.stats();
        info!(
            readings = stats.readings,
            events = stats.events,
            unknown_points = stats.unknown_points,
            "engine task stopped: readings channel closed"
        );
        self.engine
    }

    async fn request(&mut self, req: EngineRequest) {
        match req {
            EngineRequest::Command { cmd, reply } => {
                let now = (self.clock)();
                let res = self.engine.command(&cmd, now, &mut self.out);
                if let Err(e) = &res {
                    debug!(error = %e, "command refused");
                }
                self.publish().await;
                self.publish_snapshot();
                let _ = reply.send(res);
            }
            EngineRequest::ReplaceLimits {
                point,
                limits,
                reply,
            } => {
                let res = self.engine.replace_limits(point, limits);
                if res.is_ok() {
                    info!(point = point.0, "limits replaced");
                }
                self.publish_snapshot();
                let _ = reply.send(res);
            }
            EngineRequest::ReplaceLimitsBatch {
                changes,
                deadline,
                reply,
            } => {
                let res = if deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
                    warn!(
                        points = changes.len(),
                        "limit change reached the engine after its deadline: refused"
                    );
                    Err(LimitsRefused::Expired)
                } else {
                    self.engine
                        .replace_limits_batch(&changes)
                        .map_err(LimitsRefused::Invalid)
                };
                if res.is_ok() {
                    info!(points = changes.len(), "limits replaced in one step");
                    self.publish_snapshot();
                }
                let _ = reply.send(res);
            }
        }
    }

    /// Hand the pending events to the journal (waiting if it is full) and the broadcast.
    async fn publish(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.out);
        // Linkage channels first: an alarm must not wait for the journal's fsyncs (the
        // journal commits one batch after another; see `crate::linkage::wire`).
        if let Some(l) = &self.early {
            l.0.dispatch_early(&events);
        }
        if let Some(j) = &self.journal {
            // `try_send` first: `send().await` spends the task's cooperative budget and,
            // once it is used up, yields even when the channel has room, so the events
            // (and the broadcast below) waited behind every other task of the runtime:
            // up to 13 ms at 5,000 readings/s (issue #11). Waiting only when full.
            let closed = match j.try_send(events.clone()) {
                Ok(()) => false,
                Err(mpsc::error::TrySendError::Full(evs)) => j.send(evs).await.is_err(),
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            };
            if closed {
                warn!(
                    events = events.len(),
                    "alarm journal channel closed: events not journalled"
                );
            }
        }
        for ev in events {
            // Err only when nobody listens: nothing to do.
            let _ = self.events.send(Arc::new(ev));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use parkguard_rules::alarm::{AlarmState, EventKind};
    use parkguard_rules::engine::EngineConfig;
    use parkguard_rules::{Gas, Point, PointKind, PointTable, Quality, Unit};

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
            // Short, so that a stale alarm comes within a few ticks of 10 ms.
            expected_interval: Duration::from_millis(20),
            location: None,
        };
        Arc::new(PointTable::new(vec![p]).unwrap())
    }

    fn reading(value: f64) -> Reading {
        let t = system_now();
        Reading {
            point: PointId(0),
            value,
            unit: Unit::PercentLel,
            quality: Quality::Good,
            source_time: t,
            receive_time: t,
        }
    }

    async fn next_alarm(
        rx: &mut broadcast::Receiver<Arc<Event>>,
    ) -> (String, EventKind, AlarmState) {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("an event within 10 s")
                .expect("broadcast open");
            if let Event::Alarm(a) = &*ev {
                return (a.alarm.clone(), a.kind, a.to);
            }
        }
    }

    #[tokio::test]
    async fn readings_commands_limits_ticks_and_snapshot() {
        let engine = Engine::new(table(), EngineConfig::default(), Vec::new());
        let (tx, rx) = mpsc::channel(8);
        let (jtx, mut jrx) = mpsc::channel(64);
        let cfg = EngineTaskConfig {
            tick: Duration::from_millis(10),
            ..Default::default()
        };
        let (h, join) = spawn(engine, rx, Some(jtx), cfg);
        let mut events = h.events.subscribe();

        // A reading over level-2 raises HH and H.
        tx.send(vec![reading(60.0)]).await.unwrap();
        let a = next_alarm(&mut events).await;
        let b = next_alarm(&mut events).await;
        let mut got = [a.0.clone(), b.0.clone()];
        got.sort();
        assert_eq!(got, ["GT-1:H", "GT-1:HH"]);
        assert_eq!(a.2, AlarmState::Unacknowledged);

        // Acknowledge through the request channel; the snapshot shows it at once. (A stale
        // alarm may come and go meanwhile: ticks run every 10 ms.)
        for alarm in ["GT-1:H", "GT-1:HH"] {
            let res = h
                .command(Command::Acknowledge {
                    target: alarm.into(),
                    user: "op".into(),
                    comment: None,
                })
                .await
                .unwrap();
            assert_eq!(res, Ok(1));
        }
        let snap = h.snapshot.borrow().clone();
        let levels: Vec<_> = snap
            .alarms
            .iter()
            .filter(|a| a.condition.level().is_some())
            .map(|a| (a.alarm.as_str(), a.state))
            .collect();
        assert_eq!(
            levels,
            [
                ("GT-1:HH", AlarmState::Acknowledged),
                ("GT-1:H", AlarmState::Acknowledged)
            ]
        );
        // Refused commands come back as errors.
        let res = h
            .command(Command::Unshelve {
                alarm: "GT-1:H".into(),
                user: "op".into(),
                comment: None,
            })
            .await
            .unwrap();
        assert_eq!(res, Err(CommandError::NotShelved("GT-1:H".into())));

        // Raise the limits at runtime: the next reading clears both (acknowledged → normal).
        let limits = AlarmLimits {
            h: Some(70.0),
            hh: Some(90.0),
            deadband: 2.0,
            ..Default::default()
        };
        h.replace_limits(PointId(0), limits).await.unwrap().unwrap();
        tx.send(vec![reading(60.0)]).await.unwrap();
        let mut returned = Vec::new();
        while returned.len() < 2 {
            let (id, kind, to) = next_alarm(&mut events).await;
            if kind == EventKind::Return && id != "GT-1:STALE" {
                assert_eq!(to, AlarmState::Normal);
                returned.push(id);
            }
        }
        returned.sort();
        assert_eq!(returned, ["GT-1:H", "GT-1:HH"]);

        // No more readings: ticks raise the stale alarm.
        loop {
            let (id, kind, _) = next_alarm(&mut events).await;
            if id == "GT-1:STALE" && kind == EventKind::Activate {
                break;
            }
        }

        // Closing the readings channel ends the task; the journal saw every event, in order.
        drop(tx);
        let engine = join.await.unwrap();
        assert!(engine.stats().readings >= 2);
        let mut journalled = Vec::new();
        while let Ok(batch) = jrx.try_recv() {
            journalled.extend(batch);
        }
        let ids: Vec<u64> = journalled.iter().map(Event::id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(ids.len() as u64, engine.stats().events);
        assert!(
            journalled
                .iter()
                .any(|e| matches!(e, Event::Alarm(a) if a.alarm == "GT-1:STALE"))
        );
    }

    /// Three points of one class (combustible, E1) and a sentinel of another.
    fn class_table() -> Arc<PointTable> {
        let p = |i: u32, enterprise: &str| Point {
            id: PointId(i),
            tag: format!("GT-{i}"),
            name: "methane".into(),
            enterprise: enterprise.into(),
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
            expected_interval: Duration::from_secs(3600),
            location: None,
        };
        Arc::new(PointTable::new(vec![p(0, "E1"), p(1, "E1"), p(2, "E1"), p(3, "E9")]).unwrap())
    }

    fn reading_of(point: u32, value: f64) -> Reading {
        Reading {
            point: PointId(point),
            ..reading(value)
        }
    }

    /// Level-1 (H) events of the class up to the sentinel's next event (the sentinel
    /// reading is the last of its batch, so everything before it has been evaluated).
    async fn class_events(rx: &mut broadcast::Receiver<Arc<Event>>) -> Vec<(String, EventKind)> {
        let mut got = Vec::new();
        loop {
            let (id, kind, _) = next_alarm(rx).await;
            if id.starts_with("GT-3:") {
                got.sort_by(|a: &(String, EventKind), b| a.0.cmp(&b.0));
                return got;
            }
            got.push((id, kind));
        }
    }

    #[tokio::test]
    async fn a_class_change_is_one_step_and_all_or_nothing() {
        let engine = Engine::new(class_table(), EngineConfig::default(), Vec::new());
        let (tx, rx) = mpsc::channel(64);
        let cfg = EngineTaskConfig {
            tick: Duration::from_secs(3600),
            ..Default::default()
        };
        let (h, join) = spawn(engine, rx, None, cfg);
        let mut events = h.events.subscribe();
        let class = [PointId(0), PointId(1), PointId(2)];
        let level1 = |h1: f64| AlarmLimits {
            h: Some(h1),
            hh: Some(50.0),
            deadband: 2.0,
            ..Default::default()
        };
        let at = |h1: f64| -> Vec<(PointId, AlarmLimits)> {
            class.iter().map(|p| (*p, level1(h1))).collect()
        };
        let all = |kind: EventKind| -> Vec<(String, EventKind)> {
            ["GT-0:H", "GT-1:H", "GT-2:H"]
                .iter()
                .map(|a| (a.to_string(), kind))
                .collect()
        };

        // One invalid entry (level-1 above level-2 on GT-2): nothing changes.
        let mut bad = at(40.0);
        bad[2].1 = level1(60.0);
        let res = h.replace_limits_batch(bad, None).await.unwrap();
        let Err(LimitsRefused::Invalid(errs)) = res else {
            panic!("refused as invalid: {res:?}")
        };
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "points.GT-2.h");
        // 30 %LEL: over the configured 25 on every point (a change to 40 would not alarm).
        tx.send(vec![
            reading_of(0, 30.0),
            reading_of(1, 30.0),
            reading_of(2, 30.0),
            reading_of(3, 30.0),
        ])
        .await
        .unwrap();
        assert_eq!(class_events(&mut events).await, all(EventKind::Activate));

        // A valid batch, with the readings queued right behind it (the test does not wait
        // for the answer first): every point of the class judges them with the new limits.
        // Several rounds, alternating, so that a reading evaluated before (or between the
        // points of) the change would show.
        // The sentinel (GT-3, level-1 at 25) alternates 30 / 0: one event per batch.
        let mut uses = 1;
        let mut sentinel = move || {
            uses += 1;
            if uses % 2 == 1 { 30.0 } else { 0.0 }
        };
        for round in 0..8 {
            let (h1, want) = if round % 2 == 0 {
                (40.0, EventKind::Return) // 30 < 40 - deadband: back to normal
            } else {
                (20.0, EventKind::Activate) // 30 > 20: alarm again
            };
            let (reply, answer) = oneshot::channel();
            h.requests
                .send(EngineRequest::ReplaceLimitsBatch {
                    changes: at(h1),
                    deadline: None,
                    reply,
                })
                .await
                .unwrap();
            tx.send(vec![
                reading_of(0, 30.0),
                reading_of(1, 30.0),
                reading_of(2, 30.0),
                reading_of(3, sentinel()),
            ])
            .await
            .unwrap();
            assert_eq!(
                class_events(&mut events).await,
                all(want),
                "round {round}: level-1 at {h1}"
            );
            assert_eq!(answer.await.unwrap(), Ok(()));
        }

        // A batch that reaches the engine after its deadline changes nothing.
        let past = tokio::time::Instant::now() - Duration::from_millis(1);
        let res = h.replace_limits_batch(at(40.0), Some(past)).await.unwrap();
        assert_eq!(res, Err(LimitsRefused::Expired));
        // (Level-1 is still 20 from the last round: 30 stays in alarm, no event.)
        tx.send(vec![
            reading_of(0, 30.0),
            reading_of(1, 30.0),
            reading_of(2, 30.0),
            reading_of(3, sentinel()),
        ])
        .await
        .unwrap();
        assert_eq!(class_events(&mut events).await, []);

        drop(tx);
        join.await.unwrap();
    }
}
