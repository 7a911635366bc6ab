//! Wiring the linkage into the real path: engine events → notifications → routes → the
//! outbox rows, inserted in the same SQLite transaction that journals the events (so an
//! event is never notified without being journalled, and never journalled without its
//! notifications queued), then one delivery worker per channel.
//!
//! What is notified: every alarm event that is *annunciated* (it entered
//! `unacknowledged`: a new alarm, a worse level, a re-alarm) and every warning-grade change
//! to a grade (not back to none). Returns to normal and operator actions are journalled but
//! not pushed. Drill events carry their drill id and the router gives them only to channels
//! marked `drill = true`.
//!
//! **Escalation** (T1, T2, …, [`super::escalate`]): an unacknowledged alarm on a route
//! with a policy escalates until it is acknowledged; each level is queued in the journal
//! transaction that is open when it falls due. A drill's alarms escalate too, apart from
//! the real ones ([`escalation_key`]) and only ever to drill channels: a level goes to
//! the drill channels among its step's channels, or, when the step names none, to the
//! drill channels the alarm itself went to, so that a drill exercises the chain with the
//! policies the park really uses. A drill's escalations end with the drill
//! ([`Linkage::drill_ended`]); after a restart none resumes (drills do not survive one).
//! Escalation runs on the wall clock, whatever the drill's speed: the people it reaches
//! answer in real time.
//!
//! **Early delivery.** The engine task hands every real (non-drill) notification to its
//! channels' workers ([`outbox::run_worker_early`]) the moment it raises the event, before
//! it hands the event to the journal ([`Linkage::dispatch_early`]); the worker publishes it
//! at once if its group is clear. An alarm thus reaches a linkage partner without waiting
//! for the journal's fsync (3.5 ms at the median on this project's virtual disk, 50–100 ms
//! at p99 while the spool syncs too), nor for the previous batch's fsync (the journal
//! thread commits one batch after another: while the host's disk was saturated its fsyncs
//! took up to 251 ms, and an alarm handed over inside its own transaction waited that long;
//! issue #11), nor for the worker's own bookkeeping commit. Order per enterprise: rows of
//! notifications not committed yet are invisible to the worker, so each hand-over carries
//! the older uncommitted notifications of its group on that channel
//! ([`outbox::EarlyNote::before`], kept until [`Linkage::committed`]), and the worker
//! publishes it early only if all of those went early too. What a crash between the
//! publish and the commit does:
//! - The partner has the alarm; the journal does not. The engine restarts from the
//!   journal, so the alarm is raised again by the next reading that is still beyond the
//!   limit (MQTT readings not yet acknowledged are redelivered by the broker) and notified
//!   again: the partner sees it twice, which at-least-once delivery allows anyway. If the
//!   value went back meanwhile, the partner saw an alarm the journal never recorded — the
//!   safe side of the error (the other side, an alarm journalled but never announced, is
//!   what the outbox prevents and still does).
//! - Its event id must not be reused for another event (partners deduplicate on it). So
//!   a notification goes early only when its id is at or below a watermark committed
//!   beforehand (table `linkage_watermark`, raised [`WATERMARK_SLACK`] ids ahead inside the
//!   journal transactions, so no extra fsync), and after a restart the engine continues
//!   above it ([`event_id_watermark`]); a restart therefore skips at most that many ids.
//! - Nothing is lost: the outbox row is committed with the journal record or not at all,
//!   and a committed row is marked delivered only by a worker that published it.

use super::close::{self, CloseError, Closure};
use super::escalate::{Due, Escalator, Policy};
use super::escalation_log;
use super::outbox::{self, WorkerConfig};
use super::route::Router;
use parkguard_drivers::notify::{self, Channel, Notification, WarningGrade};
use parkguard_rules::alarm::{AlarmEvent, AlarmState, EventKind, Priority};
use parkguard_rules::engine::Event;
use parkguard_rules::warning::{Grade, WarningEvent, WarningScope};
use parkguard_rules::{PointKind, PointTable, Timestamp};
use rusqlite::OptionalExtension;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Everything the journal thread needs to queue notifications.
pub struct Linkage {
    /// The router (drill gate included).
    pub router: Router,
    /// Worker wake-ups by channel name.
    pub wake: HashMap<String, Arc<Notify>>,
    /// The built channels, in configuration order (for their counters on /metrics, e.g.
    /// [`Channel::mqtt_rejected`]); empty for a linkage made by [`Linkage::new`] alone.
    pub channels: Vec<Arc<Channel>>,
    /// The points, for names and kinds.
    pub table: Arc<PointTable>,
    /// Enterprise names by code.
    pub enterprise_names: HashMap<String, String>,
    /// Escalation: the committed state and the one of the transaction in flight (taken
    /// over by [`Linkage::wake`] after the commit, dropped if the transaction fails and is
    /// retried, so a failed commit neither loses nor doubles a step).
    escalation: Mutex<EscalationState>,
    policies: HashMap<String, Policy>,
    /// Early queues by channel name (see the module docs); empty for a linkage made by
    /// [`Linkage::new`] alone (then everything goes through the outbox rows only).
    pub early: HashMap<String, outbox::EarlyTx>,
    /// Drills running in this process ([`Linkage::drill_started`]): only their alarms
    /// escalate, and an escalation of a drill not in here ends at the next batch or tick.
    drills: Mutex<std::collections::HashSet<String>>,
    /// Notifications handed over early and not committed yet, by (channel, group)
    /// ([`Linkage::dispatch_early`], [`Linkage::committed`]).
    in_flight: Mutex<HashMap<(String, String), std::collections::BTreeSet<u64>>>,
    /// The committed watermark, for [`Linkage::dispatch_early`]: read without the
    /// escalation lock, which the journal thread holds through its transaction's writes
    /// (and those writes sleep in the kernel when the disk is saturated).
    committed_watermark: std::sync::atomic::AtomicU64,
}

/// The escalator's key of an alarm: its id on the real path, `drill:{drill id}/{alarm id}`
/// for a drill's, so that a drill of an alarm that is also active for real escalates on
/// its own and an acknowledgement in one never stops the other. (Which drill an
/// escalation belongs to is read from its stored notification, never parsed from the
/// key: a real tag may contain anything.)
pub fn escalation_key(alarm: &str, drill: Option<&str>) -> String {
    match drill {
        Some(d) => format!("drill:{d}/{alarm}"),
        None => alarm.to_string(),
    }
}

/// How far above the highest real event id journalled the watermark is kept: the most
/// ids a restart may skip. Raised when fewer than half of it remain.
pub const WATERMARK_SLACK: u64 = 1024;

const WATERMARK_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS linkage_watermark (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    event_id INTEGER NOT NULL
)";

/// The highest real event id that may have been published before its journal commit (0
/// when none). After a restart the engine must continue above
/// `max(highest real id journalled, this)`; read it before the linkage starts.
pub fn event_id_watermark(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    let exists: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'linkage_watermark'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row(
            "SELECT event_id FROM linkage_watermark WHERE one = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

fn set_watermark(conn: &rusqlite::Connection, id: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO linkage_watermark (one, event_id) VALUES (1, ?1)
         ON CONFLICT (one) DO UPDATE SET event_id = max(event_id, excluded.event_id)",
        [i64::try_from(id).unwrap_or(i64::MAX)],
    )?;
    Ok(())
}

#[derive(Clone, Debug, Default)]
struct Escalating {
    escalator: Escalator,
    /// Alarm id → (policy, the raise's notification).
    bases: HashMap<String, (String, Notification)>,
}

#[derive(Debug, Default)]
struct EscalationState {
    committed: Escalating,
    pending: Option<Escalating>,
    /// The committed watermark (early delivery only at or below it) and the one of the
    /// transaction in flight.
    watermark: u64,
    pending_watermark: Option<u64>,
}

/// Build the channels (reading their secrets), start one outbox worker per channel on the
/// journal database, and return what the journal thread needs.
pub fn start(
    cfg: &crate::config::ParkConfig,
    journal_path: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<(Linkage, Vec<JoinHandle<()>>)> {
    let mut flags = std::collections::BTreeMap::new();
    let mut wake = HashMap::new();
    let mut early = HashMap::new();
    let mut tasks = Vec::new();
    let mut channels = Vec::new();
    let env = notify::ChannelEnv {
        park: cfg.park.id.clone(),
        mqtt_brokers: cfg.mqtt_brokers.clone(),
        shutdown: shutdown.clone(),
    };
    for c in &cfg.channels {
        let channel = Channel::build_with(c, &env).map_err(|es| {
            anyhow::anyhow!(
                "channel `{}`: {}",
                c.name(),
                es.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        flags.insert(c.name().to_string(), c.drill());
        let notify = Arc::new(Notify::new());
        wake.insert(c.name().to_string(), Arc::clone(&notify));
        // Early queue: bounded, the journal thread try_sends (see outbox::EarlyTx).
        let (early_tx, mut early_rx) = tokio::sync::mpsc::channel(outbox::EARLY_CAPACITY);
        early.insert(c.name().to_string(), early_tx);
        let (path, worker_cfg, cancel): (PathBuf, WorkerConfig, _) =
            (journal_path.clone(), cfg.outbox.clone(), shutdown.clone());
        let channel = Arc::new(channel);
        channels.push(Arc::clone(&channel));
        tasks.push(tokio::spawn(async move {
            // A database error ends a worker; restart it after a pause (rows stay pending).
            loop {
                let r = outbox::run_worker_early(
                    path.clone(),
                    Arc::clone(&channel),
                    worker_cfg.clone(),
                    Arc::clone(&notify),
                    &mut early_rx,
                    cancel.clone(),
                )
                .await;
                if cancel.is_cancelled() {
                    break;
                }
                if let Err(e) = r {
                    error!(channel = %channel.name(), error = %e, "outbox worker failed; restarting");
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }));
    }
    let enterprise_names = cfg
        .enterprises
        .iter()
        .map(|e| (e.code.clone(), e.name.clone()))
        .collect();
    let mut linkage = Linkage::new(
        Router::new(cfg.routes.clone(), flags),
        cfg.escalations.clone(),
        wake,
        Arc::clone(&cfg.table),
        enterprise_names,
        &journal_path,
    )?;
    linkage.channels = channels;
    linkage.early = early;
    Ok((linkage, tasks))
}

/// The keys of `esc`'s escalations that belong to a drill not in `drills`.
fn ended_drill_escalations(
    esc: &Escalating,
    drills: &std::collections::HashSet<String>,
) -> Vec<String> {
    esc.bases
        .iter()
        .filter(|(_, (_, n))| n.drill.as_ref().is_some_and(|d| !drills.contains(d)))
        .map(|(k, _)| k.clone())
        .collect()
}

fn db_err(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(e.to_string())))
}

impl Linkage {
    /// A linkage over validated routes and policies; resumes the escalations stored in the
    /// journal database at `journal_path` (creating the outbox and escalation tables).
    pub fn new(
        router: Router,
        policies: Vec<Policy>,
        wake: HashMap<String, Arc<Notify>>,
        table: Arc<PointTable>,
        enterprise_names: HashMap<String, String>,
        journal_path: &std::path::Path,
    ) -> anyhow::Result<Linkage> {
        let conn = outbox::open(journal_path).map_err(|e| {
            anyhow::anyhow!("cannot open the outbox in {}: {e}", journal_path.display())
        })?;
        conn.execute_batch(WATERMARK_SCHEMA)
            .map_err(|e| anyhow::anyhow!("cannot create the linkage watermark: {e}"))?;
        let watermark = event_id_watermark(&conn)
            .map_err(|e| anyhow::anyhow!("cannot read the linkage watermark: {e}"))?;
        escalation_log::init_schema(&conn)
            .and_then(|()| escalation_log::load(&conn))
            .map_err(|e| anyhow::anyhow!("cannot read the escalations: {e}"))
            .map(|stored| {
                let mut esc = Escalating {
                    escalator: Escalator::new(policies.clone()),
                    bases: HashMap::new(),
                };
                for a in stored {
                    match esc.escalator.resume(
                        &a.alarm_id,
                        a.event_id,
                        &a.policy,
                        a.raised_at,
                        a.levels_sent,
                        a.last_sent,
                    ) {
                        Ok(()) => {
                            esc.bases.insert(a.alarm_id.clone(), (a.policy, a.base));
                        }
                        Err(e) => {
                            warn!(alarm = %a.alarm_id, error = %e, "stored escalation not resumed")
                        }
                    }
                }
                Linkage {
                    router,
                    wake,
                    channels: Vec::new(),
                    table,
                    enterprise_names,
                    escalation: Mutex::new(EscalationState {
                        committed: esc,
                        pending: None,
                        watermark,
                        pending_watermark: None,
                    }),
                    drills: Mutex::new(std::collections::HashSet::new()),
                    in_flight: Mutex::new(HashMap::new()),
                    committed_watermark: std::sync::atomic::AtomicU64::new(watermark),
                    policies: policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
                    early: HashMap::new(),
                }
            })
    }

    /// Queue the notifications of `events` inside the journal's transaction, start and stop
    /// escalations, and queue every escalation step due at `now` (the journal's clock).
    /// Returns the channels to wake after the commit; call [`Linkage::wake`] only after
    /// the commit succeeded. Called with no events, it only ticks the escalations.
    pub fn enqueue(
        &self,
        tx: &rusqlite::Transaction<'_>,
        events: &[Event],
        now: Timestamp,
    ) -> rusqlite::Result<Vec<String>> {
        let mut state = self.escalation.lock().unwrap_or_else(|e| e.into_inner());
        // Work on a copy: it becomes the committed state only after the commit.
        let mut esc = state.committed.clone();
        let drills = self
            .drills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Escalations of drills that ended (or of a previous process) end here.
        for key in ended_drill_escalations(&esc, &drills) {
            esc.escalator.on_ack(&key);
            esc.bases.remove(&key);
            escalation_log::stop(tx, &key)?;
            info!(escalation = %key, "drill over: its escalation ends");
        }
        let mut woken = Vec::new();
        for ev in events {
            if let Event::Alarm(a) = ev
                && !matches!(
                    a.to,
                    AlarmState::Unacknowledged | AlarmState::ReturnedUnacknowledged
                )
            {
                let key = escalation_key(&a.alarm, a.drill.as_deref());
                if esc.escalator.on_ack(&key) {
                    esc.bases.remove(&key);
                    escalation_log::stop(tx, &key)?;
                }
            }
            let Some(n) = self.notification_of(ev) else {
                continue;
            };
            let routed = self.router.route(&n);
            // A route may name production and drill channels side by side: each event
            // goes to the kind that fits it and the others refuse it, by design (logged at
            // debug by the router). Only an event that reaches no channel at all is worth a
            // warning (e.g. a drill on a park without a drill channel).
            if routed.channels.is_empty() && !routed.refused.is_empty() {
                warn!(event = n.event_id, refused = ?routed.refused, "notification refused by every channel of its routes: it goes nowhere");
            }
            for a in &routed.channels {
                outbox::enqueue(tx, a, &n, now).map_err(db_err)?;
                woken.push(a.channel().to_string());
            }
            // Escalate unacknowledged alarms: real ones, and those of a drill still running
            // (under their own key).
            if let (Event::Alarm(a), Some(policy)) = (ev, routed.escalations.first())
                && a.to == AlarmState::Unacknowledged
                && a.drill.as_ref().is_none_or(|d| drills.contains(d))
            {
                let key = escalation_key(&a.alarm, a.drill.as_deref());
                if esc.bases.contains_key(&key) {
                    continue;
                }
                let due = esc
                    .escalator
                    .on_event(&key, n.event_id, policy, now)
                    .map_err(db_err)?;
                escalation_log::start(
                    tx,
                    &escalation_log::Active {
                        alarm_id: key.clone(),
                        policy: policy.clone(),
                        event_id: n.event_id,
                        raised_at: now,
                        levels_sent: 0,
                        last_sent: now,
                        base: n.clone(),
                    },
                )?;
                esc.bases.insert(key, (policy.clone(), n.clone()));
                self.queue_steps(tx, &esc, due, now, &mut woken)?;
            }
        }
        let due = esc.escalator.on_tick(now);
        self.queue_steps(tx, &esc, due, now, &mut woken)?;
        // Keep the watermark ahead of the real ids (committed with this transaction).
        let top = events
            .iter()
            .filter(|e| event_drill(e).is_none())
            .map(Event::id)
            .max();
        state.pending_watermark = None;
        if let Some(top) = top
            && top + WATERMARK_SLACK / 2 > state.watermark
        {
            let w = top + WATERMARK_SLACK;
            set_watermark(tx, w)?;
            state.pending_watermark = Some(w);
        }
        state.pending = Some(esc);
        woken.sort();
        woken.dedup();
        Ok(woken)
    }

    /// Journal and queue escalation steps.
    fn queue_steps(
        &self,
        tx: &rusqlite::Transaction<'_>,
        esc: &Escalating,
        due: Vec<Due>,
        now: Timestamp,
        woken: &mut Vec<String>,
    ) -> rusqlite::Result<()> {
        for d in due {
            let Some((policy, base)) = esc.bases.get(&d.alarm_id) else {
                continue;
            };
            let label = self
                .policies
                .get(policy)
                .and_then(|p| p.steps.get(d.step))
                .map(|s| s.label.clone())
                .unwrap_or_default();
            let channels = self.step_channels(base, &d.channels);
            let id = escalation_log::record_step(
                tx,
                &escalation_log::StepRecord {
                    id: 0,
                    alarm_id: d.alarm_id.clone(),
                    event_id: d.event_id,
                    policy: policy.clone(),
                    step: d.step,
                    repeat: d.repeat,
                    scheduled_ns: d.scheduled.nanos(),
                    channels: channels.clone(),
                    label: label.clone(),
                },
            )?;
            let n = step_notification(base, id, &d, &label);
            info!(alarm = %d.alarm_id, step = d.step + 1, repeat = d.repeat, id, channels = ?channels, "escalation step");
            for c in &channels {
                match self.router.admit(&n, c) {
                    Ok(a) => {
                        outbox::enqueue(tx, &a, &n, now).map_err(db_err)?;
                        woken.push(c.clone());
                    }
                    Err(e) => {
                        warn!(alarm = %d.alarm_id, channel = %c, error = %e, "escalation step refused")
                    }
                }
            }
        }
        Ok(())
    }

    /// The channels a level of the escalation of `base` goes to: the step's channels for a
    /// real alarm (the router refuses drill channels); for a drill's alarm the drill
    /// channels among them, or, when the step names none, the drill channels `base` itself
    /// was routed to (see the module docs).
    fn step_channels(&self, base: &Notification, step: &[String]) -> Vec<String> {
        if base.drill.is_none() {
            return step.to_vec();
        }
        let own: Vec<String> = step
            .iter()
            .filter(|c| self.router.admit(base, c).is_ok())
            .cloned()
            .collect();
        if !own.is_empty() {
            return own;
        }
        self.router
            .route(base)
            .channels
            .iter()
            .map(|a| a.channel().to_string())
            .collect()
    }

    /// The engine raised `events` and is about to hand them to the journal: hand every real
    /// notification among them to its channels' workers now (see the module docs), each
    /// with the older notifications of its group on that channel not committed yet. Only
    /// ids at or below the committed watermark go early (a restart never reuses them); the
    /// others, and those whose queue is full, go by their outbox rows. Cheap when nothing
    /// is annunciated: most batches carry no notification at all.
    pub fn dispatch_early(&self, events: &[Event]) {
        if self.early.is_empty() {
            return;
        }
        let watermark = self
            .committed_watermark
            .load(std::sync::atomic::Ordering::Acquire);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            if event_drill(ev).is_some() {
                continue;
            }
            let Some(n) = self.notification_of(ev) else {
                continue;
            };
            for a in self.router.route(&n).channels {
                let Some(q) = self.early.get(a.channel()) else {
                    continue;
                };
                let waiting = in_flight
                    .entry((a.channel().to_string(), outbox::group_key(&n)))
                    .or_default();
                let before: Vec<u64> = waiting.range(..n.event_id).copied().collect();
                waiting.insert(n.event_id);
                if n.event_id <= watermark {
                    // A full queue only means "not early".
                    let _ = q.try_send(outbox::EarlyNote {
                        n: n.clone(),
                        before,
                    });
                }
            }
        }
    }

    /// The journal committed `events`: their rows are visible to the workers now, so they
    /// no longer hold back the early hand-over of younger ones.
    pub fn committed(&self, events: &[Event]) {
        if self.early.is_empty() || events.is_empty() {
            return;
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if in_flight.is_empty() {
            return;
        }
        for ev in events {
            let id = ev.id();
            for waiting in in_flight.values_mut() {
                waiting.remove(&id);
            }
        }
        in_flight.retain(|_, w| !w.is_empty());
    }

    /// A drill started: its alarms escalate (to drill channels) until
    /// [`Linkage::drill_ended`].
    pub fn drill_started(&self, drill: &str) {
        self.drills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(drill.to_string());
    }

    /// A drill is over (stopped, or its task ended): its escalations end at the journal
    /// thread's next batch or tick, which [`Linkage::escalation_due`] asks for at once.
    pub fn drill_ended(&self, drill: &str) {
        self.drills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(drill);
    }

    /// 消警: record a validated closure of the raise at `raised_at` and queue its
    /// notification (`base` = the raise's notification, state `closed`, cause, action,
    /// reviewer) for the channels its routes name, in one transaction on the journal
    /// database at `journal_path`; then wake those channels. Returns the closure's
    /// notification id. Any escalation still running for the alarm stops.
    pub fn close(
        &self,
        journal_path: &std::path::Path,
        closure: &Closure,
        raised_at: Timestamp,
        base: &Notification,
    ) -> Result<u64, CloseError> {
        let mut conn = outbox::open(journal_path).map_err(|e| CloseError::Db(db_err(e)))?;
        close::init_schema(&conn)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let id = close::record(&tx, closure, raised_at)?;
        let n = closure.notification(base, id);
        let mut woken = Vec::new();
        for a in self.router.route(&n).channels {
            outbox::enqueue(&tx, &a, &n, closure.closed_at)
                .map_err(|e| CloseError::Db(db_err(e)))?;
            woken.push(a.channel().to_string());
        }
        escalation_log::stop(&tx, &closure.alarm_id)?;
        tx.commit()?;
        {
            let mut state = self.escalation.lock().unwrap_or_else(|e| e.into_inner());
            state.committed.escalator.on_ack(&closure.alarm_id);
            state.committed.bases.remove(&closure.alarm_id);
        }
        woken.sort();
        woken.dedup();
        for c in &woken {
            if let Some(w) = self.wake.get(c) {
                w.notify_one();
            }
        }
        Ok(id)
    }

    /// Whether an escalation step is due at `now` (the journal thread ticks only then).
    pub fn escalation_due(&self, now: Timestamp) -> bool {
        let state = self.escalation.lock().unwrap_or_else(|e| e.into_inner());
        let drills = self.drills.lock().unwrap_or_else(|e| e.into_inner());
        state
            .committed
            .escalator
            .next_deadline()
            .is_some_and(|t| t <= now)
            || !ended_drill_escalations(&state.committed, &drills).is_empty()
    }

    /// Alarms currently escalating.
    pub fn escalating(&self) -> Vec<String> {
        let state = self.escalation.lock().unwrap_or_else(|e| e.into_inner());
        state
            .committed
            .escalator
            .active()
            .map(str::to_string)
            .collect()
    }

    /// The transaction committed: keep its escalation state and wake the workers of these
    /// channels.
    pub fn wake(&self, channels: &[String]) {
        {
            let mut state = self.escalation.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = state.pending.take() {
                state.committed = p;
            }
            if let Some(w) = state.pending_watermark.take() {
                state.watermark = state.watermark.max(w);
                self.committed_watermark
                    .store(state.watermark, std::sync::atomic::Ordering::Release);
            }
        }
        for c in channels {
            if let Some(n) = self.wake.get(c) {
                n.notify_one();
            }
        }
    }

    /// The notification of an engine event, if it is one that is pushed.
    pub fn notification_of(&self, ev: &Event) -> Option<Notification> {
        match ev {
            Event::Alarm(a) if a.annunciate => Some(self.alarm_notification(a)),
            Event::Alarm(_) => None,
            Event::Warning(w) if w.to != w.from => Some(self.warning_notification(w)),
            Event::Warning(_) => None,
        }
    }

    fn alarm_notification(&self, a: &AlarmEvent) -> Notification {
        let point = self.table.by_tag(&a.source);
        let name = point
            .map(|p| p.name.clone())
            .unwrap_or_else(|| a.source.clone());
        let unit = a.unit.map(|u| u.display().to_string()).unwrap_or_default();
        let value = a
            .value
            .map(|v| format!("{v:.2} {unit}"))
            .unwrap_or_default();
        let limit = a
            .limit
            .map(|v| format!("{v:.2} {unit}"))
            .unwrap_or_default();
        let ent = self
            .enterprise_names
            .get(&a.enterprise)
            .cloned()
            .unwrap_or_else(|| a.enterprise.clone());
        let drill_zh = if a.drill.is_some() {
            "【演练】"
        } else {
            ""
        };
        let drill_en = if a.drill.is_some() { "[DRILL] " } else { "" };
        let realarm = a.kind == EventKind::Realarm;
        Notification {
            event_id: a.id,
            alarm_id: a.alarm.clone(),
            drill: a.drill.clone(),
            enterprise: a.enterprise.clone(),
            enterprise_name: Some(ent.clone()),
            area: a.area.clone(),
            kind: point.map(|p| p.kind).unwrap_or(PointKind::Other),
            tag: a.source.clone(),
            point_name: name.clone(),
            condition: a.condition.suffix().to_string(),
            priority: match a.priority {
                Priority::High => notify::Priority::High,
                Priority::Medium => notify::Priority::Medium,
                Priority::Low => notify::Priority::Low,
            },
            state: format!("{:?}", a.to).to_lowercase(),
            value: a.value,
            unit,
            limit: a.limit,
            time: a.time,
            grade: None,
            message_zh: format!(
                "{drill_zh}{ent} {name}（{}）{}{}：当前值 {value}，限值 {limit}",
                a.source,
                a.condition.label_zh(),
                if realarm { "（重复报警）" } else { "" }
            ),
            message_en: format!(
                "{drill_en}{} {} ({}) {}{}: value {value}, limit {limit}",
                a.enterprise,
                a.source,
                name,
                a.condition.suffix(),
                if realarm { " (re-alarm)" } else { "" }
            ),
        }
    }

    fn warning_notification(&self, w: &WarningEvent) -> Notification {
        let (code, name) = match &w.scope {
            WarningScope::Park => ("PARK".to_string(), "园区 / park".to_string()),
            WarningScope::Enterprise { code } => (
                code.clone(),
                self.enterprise_names
                    .get(code)
                    .cloned()
                    .unwrap_or_else(|| code.clone()),
            ),
        };
        let grade_of = |g: Grade| match g {
            Grade::Blue => Some(WarningGrade::Blue),
            Grade::Yellow => Some(WarningGrade::Yellow),
            Grade::Orange => Some(WarningGrade::Orange),
            Grade::Red => Some(WarningGrade::Red),
            Grade::None => None,
        };
        let grade = grade_of(w.to);
        // A clear keeps the priority of the grade it ends, so it reaches whoever was told.
        let loudest = grade.or(grade_of(w.from));
        let drill_zh = if w.drill.is_some() {
            "【演练】"
        } else {
            ""
        };
        let drill_en = if w.drill.is_some() { "[DRILL] " } else { "" };
        Notification {
            event_id: w.id,
            alarm_id: format!("warning/{code}"),
            drill: w.drill.clone(),
            enterprise: code.clone(),
            enterprise_name: Some(name.clone()),
            area: None,
            kind: PointKind::Other,
            tag: format!("warning/{code}"),
            point_name: name.clone(),
            condition: "WARNING".into(),
            priority: if loudest >= Some(WarningGrade::Orange) {
                notify::Priority::Critical
            } else {
                notify::Priority::High
            },
            state: format!("{:?}", w.to).to_lowercase(),
            value: None,
            unit: String::new(),
            limit: None,
            time: w.time,
            grade,
            message_zh: match grade {
                Some(g) => format!("{drill_zh}{name} {}：{}", g.label_zh(), w.reason),
                None => format!("{drill_zh}{name} 预警解除：{}", w.reason),
            },
            message_en: match grade {
                Some(g) => format!("{drill_en}{code} warning {}: {}", g.label_en(), w.reason),
                None => format!("{drill_en}{code} warning cleared: {}", w.reason),
            },
        }
    }
}

fn event_drill(e: &Event) -> Option<&str> {
    match e {
        Event::Alarm(a) => a.drill.as_deref(),
        Event::Warning(w) => w.drill.as_deref(),
    }
}

/// Tick the escalations every second: an empty batch on the journal channel (the journal
/// thread journals and queues whatever step is due at the engine's clock).
///
/// Back-pressure: `try_send`; when the journal channel is full the tick is skipped (the
/// journal is busy with events, and every batch it journals also ticks).
pub fn spawn_escalation_ticker(
    journal: tokio::sync::mpsc::Sender<Vec<Event>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                        journal.try_send(Vec::new())
                    {
                        break;
                    }
                }
            }
        }
    })
}

/// The notification of an escalation step: the raise's notification under the step's own
/// id, its text prefixed with the level (`【升级 第2级 园区应急管理局值班室】` /
/// `[escalation level 2: …]`, `重复` / `repeat` for a repeat).
pub fn step_notification(base: &Notification, id: u64, d: &Due, label: &str) -> Notification {
    let mut n = base.clone();
    n.event_id = id;
    let level = d.step + 1;
    let (rep_zh, rep_en) = if d.repeat {
        ("重复", "repeat, ")
    } else {
        ("", "")
    };
    let who_zh = if label.is_empty() {
        String::new()
    } else {
        format!(" {label}")
    };
    let who_en = if label.is_empty() {
        String::new()
    } else {
        format!(": {label}")
    };
    // A drill's level says so first (the drill's alarm text has it too; once is enough).
    let (drill_zh, drill_en) = if base.drill.is_some() {
        ("【演练】", "[DRILL] ")
    } else {
        ("", "")
    };
    let base_zh = base
        .message_zh
        .strip_prefix(drill_zh)
        .unwrap_or(&base.message_zh);
    let base_en = base
        .message_en
        .strip_prefix(drill_en)
        .unwrap_or(&base.message_en);
    n.message_zh = format!("{drill_zh}【{rep_zh}升级 第{level}级{who_zh}】未确认报警：{base_zh}");
    n.message_en =
        format!("{drill_en}[{rep_en}escalation level {level}{who_en}] unacknowledged: {base_en}");
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::store::journal::Journal;
    use crate::topology::record_of;
    use parkguard_rules::alarm::{Condition, SourceKind};
    use std::collections::BTreeMap;

    fn alarm(id: u64) -> Event {
        Event::Alarm(AlarmEvent {
            id,
            alarm: format!("GT-{id}:H"),
            source: format!("GT-{id}"),
            source_kind: SourceKind::Point,
            enterprise: "E1".into(),
            area: None,
            condition: Condition::H,
            level: Some(1),
            priority: Priority::High,
            kind: EventKind::Activate,
            from: AlarmState::Normal,
            to: AlarmState::Unacknowledged,
            active: true,
            annunciate: true,
            value: Some(30.0),
            limit: Some(25.0),
            unit: None,
            time: Timestamp::from_secs(1_795_688_531),
            source_time: None,
            user: None,
            comment: None,
            shelved_until: None,
            suppressed_by: None,
            drill: None,
        })
    }

    fn linkage(path: &std::path::Path, early: outbox::EarlyTx) -> Linkage {
        let flags: BTreeMap<String, bool> = [("bus".to_string(), false)].into();
        let route: super::super::route::RouteConfig =
            serde_json::from_value(serde_json::json!({"channels": ["bus"]})).unwrap();
        let route = route.validate(0, &flags, &[]).unwrap();
        let mut l = Linkage::new(
            Router::new(vec![route], flags),
            Vec::new(),
            HashMap::from([("bus".to_string(), Arc::new(Notify::new()))]),
            Arc::new(PointTable::new(Vec::new()).unwrap()),
            HashMap::new(),
            path,
        )
        .unwrap();
        l.early = HashMap::from([("bus".to_string(), early)]);
        l
    }

    /// One journal transaction as the journal thread runs it; `commit = false` is a crash
    /// before the commit. Returns the notifications handed over early.
    fn journal(
        j: &mut Journal,
        l: &Linkage,
        rx: &mut outbox::EarlyRx,
        events: &[Event],
        commit: bool,
    ) -> Vec<u64> {
        // The engine hands the notifications over as it raises them, then the journal
        // thread runs its transaction.
        l.dispatch_early(events);
        let records: Vec<_> = events.iter().map(record_of).collect();
        let mut woken = Vec::new();
        let r = j.append_with(&records, |tx| {
            woken = l.enqueue(tx, events, Timestamp::from_secs(1_795_688_531))?;
            if commit {
                Ok(())
            } else {
                Err(rusqlite::Error::InvalidQuery) // the process dies: nothing commits
            }
        });
        if r.is_ok() {
            l.wake(&woken);
            l.committed(events);
        }
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.n.event_id)
            .collect()
    }

    /// The engine hands each notification over as it is raised, with the older ones of its
    /// group on that channel the journal has not committed yet: the worker lets none
    /// overtake them. Once committed they no longer hold anything back.
    #[test]
    fn a_hand_over_names_the_older_uncommitted_notifications_of_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut j = Journal::open(&path).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(outbox::EARLY_CAPACITY);
        let l = linkage(&path, tx);
        // A first alarm, committed, puts a watermark in place.
        assert!(journal(&mut j, &l, &mut rx, &[alarm(1)], true).is_empty());
        // The journal is slow: 2 and 3 are raised before it commits either.
        l.dispatch_early(&[alarm(2)]);
        l.dispatch_early(&[alarm(3)]);
        let got: Vec<(u64, Vec<u64>)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.n.event_id, e.before))
            .collect();
        assert_eq!(got, [(2, vec![]), (3, vec![2])]);
        // Committed: 4 has nothing to wait for.
        l.committed(&[alarm(2), alarm(3)]);
        l.dispatch_early(&[alarm(4)]);
        let got: Vec<(u64, Vec<u64>)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.n.event_id, e.before))
            .collect();
        assert_eq!(got, [(4, vec![])]);
    }

    /// Ids published ahead of their commit are always at or below the watermark that was
    /// durable before, so a restarted engine ([`event_id_watermark`]) never reuses one.
    #[test]
    fn early_ids_stay_under_a_durable_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let mut j = Journal::open(&path).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(outbox::EARLY_CAPACITY);
        let l = linkage(&path, tx);
        // A fresh journal has no watermark: the first alarm waits for its commit, which
        // raises the watermark.
        assert!(journal(&mut j, &l, &mut rx, &[alarm(1)], true).is_empty());
        assert_eq!(
            event_id_watermark(j.connection()).unwrap(),
            1 + WATERMARK_SLACK
        );
        // From then on alarms go early.
        assert_eq!(
            journal(&mut j, &l, &mut rx, &[alarm(2), alarm(3)], true),
            [2, 3]
        );
        // A crash between the early hand-over and the commit: 4 went out, nothing of its
        // transaction is stored, and the restarted engine continues above the watermark.
        assert_eq!(journal(&mut j, &l, &mut rx, &[alarm(4)], false), [4]);
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.max_id().unwrap(), 3);
        let w = event_id_watermark(j.connection()).unwrap();
        assert!(
            w >= 4,
            "event 4 was published; the watermark {w} must cover it"
        );
        // The watermark moves ahead inside the transactions as ids approach it, so the
        // early path never stops.
        let mut j = j;
        let near = w - WATERMARK_SLACK / 2 + 1;
        assert_eq!(journal(&mut j, &l, &mut rx, &[alarm(near)], true), [near]);
        assert_eq!(
            event_id_watermark(j.connection()).unwrap(),
            near + WATERMARK_SLACK
        );
    }
}
