//! Topology: wires sources → engine → sinks for one validated park config.
//!
//! ```text
//! modbus lines ─┐
//! mqtt subs ────┼─► readings (bounded mpsc) ─► engine task ─► journal ─► outbox ─► channels
//! drills/replay ┘                                  ├─► events (broadcast) ─► SSE / log
//!                                                  └─► snapshot (watch) ─► API
//! ```
//!
//! Back-pressure of the readings channel: bounded at [`READINGS_CAPACITY`] batches. Modbus
//! pollers `try_send` and count a dropped poll when it is full (a poll is cheap to repeat
//! and the next one comes within its interval); the recorder thread hands each of their
//! batches to the engine first and a copy to the spool writer, so alarms never wait for a
//! fsync. MQTT subscribers do those two steps themselves (`MqttHandover`, one thread hop
//! less): the batch to the engine, then to the spool writer with a completion signal it
//! sends after the append and fsync, when the QoS 1 messages are acknowledged; they await
//! when a channel is full, so the broker keeps unacknowledged QoS 1 messages. The engine evaluates millions of readings a second,
//! so the channel fills only when a downstream stage (the journal) stalls.

use crate::config::ParkConfig;
use crate::engine_task::{self, EngineHandle, EngineTaskConfig};
use crate::store::export::JournalExport;
use crate::store::journal::{Journal, JournalRecord, RecordKind};
use crate::store::spool::{Spool, SpoolStats};
use anyhow::{Context, Result};
use parkguard_drivers::influx::{InfluxStats, InfluxWriter};
use parkguard_drivers::modbus::{self, ModbusMetrics};
use parkguard_drivers::mqtt::source::{Handover, HandoverClosed};
use parkguard_drivers::mqtt::{self, MqttStats};
use parkguard_rules::alarm::{EventKind, SourceKind};
use parkguard_rules::engine::{Engine, Event};
use parkguard_rules::warning::WarningScope;
use parkguard_rules::{PointTable, Reading};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// Capacity of the readings channel, in batches (one batch = one Modbus poll or one MQTT
/// message).
pub const READINGS_CAPACITY: usize = 4096;

/// A running park: handles the API and tests use.
pub struct Running {
    /// The engine task.
    pub engine: EngineHandle,
    /// Where sources send readings (drills use their own engine; this is the real path).
    pub readings: mpsc::Sender<Vec<Reading>>,
    /// The journal channel (weak, so it never keeps the journal writer alive at shutdown):
    /// drills send their events here, through the same journal and linkage router.
    pub journal: mpsc::WeakSender<Vec<Event>>,
    /// Modbus counters per device.
    pub modbus: Arc<ModbusMetrics>,
    /// MQTT counters per broker: (broker id, stats).
    pub mqtt: Vec<(String, Arc<MqttStats>)>,
    /// Spool counters.
    pub spool: Arc<SpoolStats>,
    /// InfluxDB writer counters (readings), when `[influx]` is configured.
    pub influx: Option<Arc<InfluxStats>>,
    /// InfluxDB writer counters of alarm events and warning grades (exported from the
    /// journal), when `[influx]` is configured.
    pub influx_events: Option<Arc<InfluxStats>>,
    /// The alarm journal file.
    pub journal_path: PathBuf,
    /// The linkage (routes, outboxes, escalation), when channels are configured: the API
    /// records 消警 closures through it.
    pub linkage: Option<Arc<crate::linkage::wire::Linkage>>,
    /// The spool / local archive directory.
    pub spool_dir: PathBuf,
    /// Cancel to stop every task.
    pub shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    engine_join: Option<JoinHandle<Engine>>,
}

impl Running {
    /// Stop sources, let the engine drain, wait for every task.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        drop(self.readings);
        if let Some(j) = self.engine_join.take() {
            // The engine ends when every readings sender is gone (the recorder thread holds
            // the last one and ends when the sources' senders are gone).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), j).await;
        }
        // The recorder, spool-writer and journal threads end when their channels close;
        // the InfluxDB writer thread on cancellation.
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Start every task of `cfg`. Must run inside a tokio runtime.
///
/// Order: build the engine with the limits stored in `<data.dir>/limits.sqlite` (the
/// latest version of each point, unless the configuration file changed it since: see
/// [`crate::api::limits::plan_restore`]), so that not even the first reading after a
/// restart is judged against superseded limits; open the journal and rebuild the engine's
/// alarm states from it (so a restart neither forgets an unacknowledged alarm nor
/// re-announces an acknowledged one), open the spool, start the engine, the journal
/// writer, the recorder, the InfluxDB writer, and only then the sources.
pub async fn start(cfg: &ParkConfig, shutdown: CancellationToken) -> Result<Running> {
    start_with(cfg, shutdown, EngineTaskConfig::default()).await
}

/// [`start`] with the engine task's settings (tick, clock): tests drive a live run on a
/// clock of their own with it.
pub async fn start_with(
    cfg: &ParkConfig,
    shutdown: CancellationToken,
    task: EngineTaskConfig,
) -> Result<Running> {
    let data = &cfg.data.dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create data dir {}", data.display()))?;

    // Journal and restore.
    let journal_path = data.join("journal.sqlite");
    let journal = Journal::open(&journal_path)
        .with_context(|| format!("cannot open the alarm journal {}", journal_path.display()))?;
    let mut engine = Engine::new(
        Arc::clone(&cfg.table),
        cfg.engine.clone(),
        cfg.vote_groups.clone(),
    );
    // Stored limits, before anything else touches the engine.
    let limits_path = data.join("limits.sqlite");
    let (limits_at_start, stored_limits) = crate::api::limits::LimitsAtStart::load(
        &limits_path,
        &cfg.table,
        engine_task::system_now().0.div_euclid(1_000_000),
    )
    .with_context(|| format!("cannot open the limits store {}", limits_path.display()))?;
    // Checked by the plan with the engine's own rules: this cannot be refused.
    engine
        .replace_limits_batch(&stored_limits)
        .map_err(|errs| {
            let why: Vec<String> = errs.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("stored limits refused by the engine: {}", why.join("; "))
        })?;
    if !stored_limits.is_empty() {
        info!(
            points = stored_limits.len(),
            "stored limits applied before the engine starts"
        );
    }
    let latest = journal
        .latest_per_alarm()
        .context("cannot read the alarm journal")?;
    let restore: Vec<Event> = latest
        .iter()
        .filter(|r| r.drill.is_none())
        .filter_map(|r| match serde_json::from_value::<Event>(r.payload.clone()) {
            Ok(e) => Some(e),
            Err(e) => {
                warn!(id = r.id, error = %e, "journal record is not an engine event; skipped in restore");
                None
            }
        })
        .collect();
    let report = engine.restore(&restore);
    // Drills number their events far above the real path (see drill::runner): continue
    // from the real path's own highest id.
    let real_max: Option<i64> = journal
        .connection()
        .query_row("SELECT MAX(id) FROM events WHERE drill IS NULL", [], |r| {
            r.get(0)
        })
        .context("cannot read the alarm journal")?;
    // Above the linkage watermark too: ids up to it may have been published ahead of
    // their commit before a crash (linkage::wire, early delivery) and must not be reused.
    let watermark = crate::linkage::wire::event_id_watermark(journal.connection())
        .context("cannot read the alarm journal")?;
    let next_id = (real_max.unwrap_or(0).max(0) as u64).max(watermark) + 1;
    engine.set_next_event_id(next_id);
    info!(restored = restore.len(), next_event_id = next_id, report = ?report, "alarm states rebuilt from the journal");

    // Spool (and its reader for the InfluxDB writer, taken before the spool moves).
    let spool_dir = data.join("spool");
    let spool = Spool::open(&spool_dir, cfg.spool.clone())
        .with_context(|| format!("cannot open the spool {}", spool_dir.display()))?;
    let spool_stats = spool.stats();
    let mut threads = Vec::new();
    let mut influx_stats = None;
    let mut influx_event_stats = None;
    let mut journal_notify = None;
    if let Some(settings) = &cfg.influx {
        let writer = InfluxWriter::new(settings.clone(), data.join("influx-dead-letter.lp"))
            .map_err(|e| anyhow::anyhow!("cannot start the InfluxDB writer: {e}"))?;
        influx_stats = Some(writer.stats());
        let reader = spool
            .writer_reader(&cfg.park.id)
            .context("cannot open the spool for the InfluxDB writer")?;
        // Alarm events and warning grades: a second writer whose durable queue is the
        // journal itself (store::export), with its own cursor and dead-letter file.
        let event_writer =
            InfluxWriter::new(settings.clone(), data.join("influx-events-dead-letter.lp"))
                .map_err(|e| anyhow::anyhow!("cannot start the InfluxDB event writer: {e}"))?;
        influx_event_stats = Some(event_writer.stats());
        let notify = Arc::new(tokio::sync::Notify::new());
        let export = JournalExport::open(&journal_path, data, &cfg.park.id, Arc::clone(&notify))
            .context("cannot open the alarm journal for the InfluxDB event writer")?;
        journal_notify = Some(notify);
        let cancel = shutdown.clone();
        // The readers do small blocking file and SQLite reads: the writers get a
        // current-thread runtime on a thread of their own.
        threads.push(
            std::thread::Builder::new()
                .name("influx-writer".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(async {
                            tokio::join!(
                                writer
                                    .run(reader, cancel.clone())
                                    .instrument(info_span!("influx")),
                                event_writer
                                    .run(export, cancel)
                                    .instrument(info_span!("influx_events")),
                            );
                        }),
                        Err(e) => error!(error = %e, "cannot start the InfluxDB writer runtime"),
                    };
                })
                .context("cannot spawn the InfluxDB writer thread")?,
        );
    }

    // Engine task with its journal.
    // Journal channel: bounded, lossless — the engine waits when it is full (an event that
    // is not journalled must not be announced).
    let (journal_tx, journal_rx) = mpsc::channel::<Vec<Event>>(1024);
    let mut tasks = Vec::new();
    let linkage = if cfg.channels.is_empty() {
        None
    } else {
        let (linkage, workers) =
            crate::linkage::wire::start(cfg, journal_path.clone(), shutdown.clone())?;
        tasks.extend(workers);
        Some(Arc::new(linkage))
    };
    if linkage.is_some() && !cfg.escalations.is_empty() {
        tasks.push(crate::linkage::wire::spawn_escalation_ticker(
            journal_tx.clone(),
            shutdown.clone(),
        ));
    }
    threads.push(spawn_journal_writer(
        journal,
        journal_rx,
        linkage.clone(),
        journal_notify,
    )?);
    let journal_weak = journal_tx.downgrade();
    let (engine_tx, engine_rx) = mpsc::channel::<Vec<Reading>>(READINGS_CAPACITY);
    let mut task = task;
    task.early = linkage
        .as_ref()
        .map(|l| engine_task::EarlyLinkage(Arc::clone(l)));
    let (mut handle, engine_join) = engine_task::spawn(engine, engine_rx, Some(journal_tx), task);
    handle.limits = Some(Arc::new(limits_at_start));

    // Recorder: sources → engine, then → spool (alarm latency never waits on the disk).
    let (readings_tx, readings_rx) = mpsc::channel::<Vec<Reading>>(READINGS_CAPACITY);
    let (spool_tx, spool_rx) = mpsc::channel::<SpoolWork>(SPOOL_QUEUE);
    threads.push(spawn_spool_writer(
        spool,
        Arc::clone(&cfg.table),
        spool_rx,
        cfg.spool.group_commit,
    )?);
    // MQTT subscribers do the recorder's two steps themselves (`MqttHandover`): one thread
    // hop less between a message and its alarm.
    let mqtt_handover = MqttHandover {
        engine: engine_tx.clone(),
        spool: spool_tx.clone(),
        stats: Arc::clone(&spool_stats),
    };
    threads.push(spawn_recorder(
        readings_rx,
        engine_tx,
        spool_tx,
        Arc::clone(&spool_stats),
    )?);

    // Sources.
    let metrics = Arc::new(ModbusMetrics::new(&cfg.modbus_plan));
    tasks.extend(modbus::spawn(
        &cfg.modbus_plan,
        readings_tx.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let mut mqtt_stats = Vec::new();
    for broker in &cfg.mqtt_brokers {
        if !cfg.mqtt_subscriptions.iter().any(|s| s.broker == broker.id) {
            // A broker used only by an MQTT notification channel: nothing to subscribe.
            continue;
        }
        let stats = Arc::new(MqttStats::default());
        let task = mqtt::spawn_subscriber_with(
            broker.clone(),
            cfg.mqtt_subscriptions.clone(),
            Arc::clone(&cfg.table),
            mqtt_handover.clone(),
            Arc::clone(&stats),
            shutdown.clone(),
        )
        .with_context(|| format!("cannot start the MQTT subscriber of broker `{}`", broker.id))?;
        tasks.push(task);
        mqtt_stats.push((broker.id.clone(), stats));
    }
    drop(mqtt_handover);
    tasks.push(spawn_event_log(handle.events.subscribe(), shutdown.clone()));
    info!(
        points = cfg.table.len(),
        modbus_lines = cfg.modbus_plan.lines.len(),
        mqtt_brokers = cfg.mqtt_brokers.len(),
        influx = cfg.influx.is_some(),
        "topology started"
    );
    Ok(Running {
        linkage,
        engine: handle,
        readings: readings_tx,
        journal: journal_weak,
        modbus: metrics,
        mqtt: mqtt_stats,
        spool: spool_stats,
        influx: influx_stats,
        influx_events: influx_event_stats,
        journal_path,
        spool_dir,
        shutdown,
        tasks,
        threads,
        engine_join: Some(engine_join),
    })
}

/// The journal writer thread: every batch of engine events in one fsynced transaction.
/// On a failure it retries (with a pause) and never drops a batch: the engine waits.
fn spawn_journal_writer(
    mut journal: Journal,
    mut rx: mpsc::Receiver<Vec<Event>>,
    linkage: Option<Arc<crate::linkage::wire::Linkage>>,
    committed: Option<Arc<tokio::sync::Notify>>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            while let Some(batch) = rx.blocking_recv() {
                // An empty batch is the escalation tick: journal only when a step is due.
                if batch.is_empty()
                    && !linkage
                        .as_ref()
                        .is_some_and(|l| l.escalation_due(engine_task::system_now()))
                {
                    continue;
                }
                let records: Vec<JournalRecord> = batch.iter().map(record_of).collect();
                let mut pause = Duration::from_millis(100);
                loop {
                    let mut woken = Vec::new();
                    let result = match &linkage {
                        None => journal.append(&records),
                        Some(l) => journal.append_with(&records, |tx| {
                            woken = l.enqueue(tx, &batch, engine_task::system_now())?;
                            Ok(())
                        }),
                    };
                    match result {
                        Ok(()) => {
                            if let Some(l) = &linkage {
                                l.wake(&woken);
                                l.committed(&batch);
                            }
                            if let Some(n) = &committed {
                                n.notify_one();
                            }
                            break;
                        }
                        Err(e) => {
                            error!(error = %e, events = records.len(), "journal write failed; retrying (the engine waits)");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        })
        .context("cannot spawn the journal thread")
}

/// The journal record of an engine event.
pub fn record_of(ev: &Event) -> JournalRecord {
    let payload =
        serde_json::to_value(ev).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    match ev {
        Event::Alarm(a) => JournalRecord {
            id: a.id,
            time: a.time,
            kind: match a.kind {
                EventKind::Acknowledge
                | EventKind::Silence
                | EventKind::Shelve
                | EventKind::Unshelve
                | EventKind::RemoveFromService
                | EventKind::ReturnToService => RecordKind::Operator,
                _ => RecordKind::Alarm,
            },
            alarm_id: Some(a.alarm.clone()),
            point: (a.source_kind == SourceKind::Point).then(|| a.source.clone()),
            enterprise: Some(a.enterprise.clone()),
            drill: a.drill.clone(),
            payload,
        },
        Event::Warning(w) => JournalRecord {
            id: w.id,
            time: w.time,
            kind: RecordKind::Warning,
            alarm_id: None,
            point: None,
            enterprise: match &w.scope {
                WarningScope::Enterprise { code } => Some(code.clone()),
                WarningScope::Park => None,
            },
            drill: w.drill.clone(),
            payload,
        },
    }
}

/// Most readings the spool writer gathers into one spool append (one write, one fsync)
/// from the batches already waiting in its queue: group commit, so a fsync serves many
/// MQTT messages.
const GROUP_READINGS: usize = 65_536;

/// QoS 1 messages held back from acknowledgement that end a group commit's wait at once
/// (`[spool].group_commit_ms`): half of mosquitto's default in-flight window (20), so a
/// broker at its default never stops sending for the window while parkguard gathers, and
/// under load an append comes every 10 messages or sooner.
const GROUP_ACKS: usize = 10;

/// Most readings the recorder merges into one hand-over from the batches already waiting
/// (a scan cycle's polls arrive together: one engine wake-up and one spool queue entry for
/// them instead of one per poll).
const MERGE_READINGS: usize = 4096;

/// Batches between the recorder and the spool writer. Back-pressure: when the disk is
/// slower than the input for this many batches, the recorder waits, and with it the
/// sources (MQTT leaves its messages unacknowledged at the broker, Modbus polls wait).
/// The writer takes everything waiting into one append, so a short queue costs no
/// throughput; 1,024 batches (of up to 4,096 readings) held up to ~40 MiB in a burst.
const SPOOL_QUEUE: usize = 64;

/// A batch on its way to the spool, with the MQTT subscriber's completion signal.
struct SpoolWork {
    readings: Vec<Reading>,
    done: Option<oneshot::Sender<()>>,
    /// QoS 1 messages acknowledged by `done`.
    acks: usize,
}

/// The recorder: forwards every batch of the sources without a completion signal (Modbus)
/// to the engine at once, and a copy to the spool writer thread ([`spawn_spool_writer`]);
/// batches already waiting behind the first are merged into it ([`merge_waiting`]).
/// Two stages so that an alarm never waits for the disk: while the spool writer is in a
/// fsync (milliseconds, more on a busy disk), the next batches already reach the engine.
fn spawn_recorder(
    mut rx: mpsc::Receiver<Vec<Reading>>,
    engine: mpsc::Sender<Vec<Reading>>,
    spool_tx: mpsc::Sender<SpoolWork>,
    stats: Arc<SpoolStats>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || {
            // A current-thread runtime of its own: awaits the channels.
            let rt = match tokio::runtime::Builder::new_current_thread().build() {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the recorder runtime");
                    return;
                }
            };
            rt.block_on(async move {
                while let Some(first) = rx.recv().await {
                    let readings = merge_waiting(first, &mut rx, MERGE_READINGS);
                    let copy = readings.clone();
                    if engine.send(readings).await.is_err() {
                        warn!("engine task gone; recorder stops");
                        // Still archive what was received.
                        let _ = send_to_spool(
                            &spool_tx,
                            SpoolWork {
                                readings: copy,
                                done: None,
                                acks: 0,
                            },
                            &stats,
                        )
                        .await;
                        break;
                    }
                    let work = SpoolWork {
                        readings: copy,
                        done: None,
                        acks: 0,
                    };
                    if send_to_spool(&spool_tx, work, &stats).await.is_err() {
                        error!("spool writer gone; recorder stops");
                        break;
                    }
                }
            });
        })
        .context("cannot spawn the recorder thread")
}

/// The MQTT subscribers' hand-over: the recorder's two steps done by the subscriber task
/// itself — the batch to the engine at once, then a copy to the spool writer with the
/// completion signal it sends after the append and fsync, when the subscriber acknowledges
/// the QoS 1 messages. Without the recorder's thread hop a reading reaches the engine one
/// wake-up sooner. Back-pressure as before: the subscriber awaits a full engine channel or
/// spool queue, and the broker keeps the unacknowledged messages.
#[derive(Clone)]
struct MqttHandover {
    engine: mpsc::Sender<Vec<Reading>>,
    spool: mpsc::Sender<SpoolWork>,
    stats: Arc<SpoolStats>,
}

/// Queue `work` for the spool writer. When its queue is full (the disk is behind the
/// input) wait, and count the wait in `stats` (`parkguard_spool_queue_full_wait_seconds_total`
/// on `/metrics`): the source waits with it, and so does any alarm in its next messages,
/// so a disk stall that delays alarms shows here. Errs when the writer is gone.
async fn send_to_spool(
    tx: &mpsc::Sender<SpoolWork>,
    work: SpoolWork,
    stats: &SpoolStats,
) -> Result<(), HandoverClosed> {
    use std::sync::atomic::Ordering::Relaxed;
    match tx.try_send(work) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(HandoverClosed),
        Err(mpsc::error::TrySendError::Full(work)) => {
            let t = std::time::Instant::now();
            let sent = tx.send(work).await.map_err(|_| HandoverClosed);
            let waited = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.queue_full_waits.fetch_add(1, Relaxed);
            stats.queue_full_wait_us.fetch_add(waited, Relaxed);
            sent
        }
    }
}

impl Handover for MqttHandover {
    async fn hand_over(
        &self,
        readings: Vec<Reading>,
        acks: usize,
    ) -> Result<Option<oneshot::Receiver<()>>, HandoverClosed> {
        let (done, rx) = oneshot::channel();
        let copy = readings.clone();
        self.engine
            .send(readings)
            .await
            .map_err(|_| HandoverClosed)?;
        let work = SpoolWork {
            readings: copy,
            done: Some(done),
            acks,
        };
        send_to_spool(&self.spool, work, &self.stats).await?;
        Ok(Some(rx))
    }
}

/// The spool writer thread: appends what it gathered ([`gather`]) to the spool (fsync per
/// `[spool].fsync`), and only then tells the MQTT subscribers their messages may be
/// acknowledged (QoS 1 readings are durable before the broker forgets them). Expires old
/// segments every minute. Ends when the recorder is gone and the queue is empty.
///
/// When an append fails (disk full with no segment left to drop, I/O or fsync error) the
/// failure is counted in [`SpoolStats`] (`append_failures`, `readings_not_spooled`,
/// `append_failing`), logged (at powers of two, and when it recovers), the durable
/// batches' `done` signals are dropped (their MQTT messages stay unacknowledged and are
/// redelivered after the subscriber reconnects), and the writer goes on: the engine
/// keeps evaluating every reading.
fn spawn_spool_writer(
    mut spool: Spool,
    table: Arc<PointTable>,
    mut rx: mpsc::Receiver<SpoolWork>,
    window: Duration,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || {
            // A current-thread runtime of its own: awaits the queue with a deadline.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the spool writer runtime");
                    return;
                }
            };
            let mut last_expire = std::time::Instant::now();
            let mut failures: u64 = 0;
            let mut group = Group::default();
            while rt.block_on(gather(&mut rx, &mut group, window)) {
                match spool.append(&group.readings, &table) {
                    Ok(()) => {
                        if failures > 0 {
                            info!(failed_appends = failures, "spool append works again");
                            failures = 0;
                        }
                        for d in group.done.drain(..) {
                            // A subscriber that reconnected meanwhile no longer waits.
                            let _ = d.send(());
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures.is_power_of_two() {
                            error!(error = %e, failures, readings = group.readings.len(), "spool append failed: readings not archived (MQTT QoS 1 messages left unacknowledged for redelivery)");
                        }
                        group.done.clear();
                    }
                }
                group.readings.clear();
                group.acks = 0;
                if last_expire.elapsed() > Duration::from_secs(60) {
                    last_expire = std::time::Instant::now();
                    let n = spool.expire(std::time::SystemTime::now());
                    if n > 0 {
                        info!(segments = n, "expired spool segments past retention");
                    }
                }
            }
            if let Err(e) = spool.sync() {
                error!(error = %e, "final spool sync failed");
            }
        })
        .context("cannot spawn the spool writer thread")
}

/// `first` plus the batches already waiting in `rx`, in order, up to `max` readings (a
/// batch is never split: the last one taken may go past `max`).
fn merge_waiting(
    mut first: Vec<Reading>,
    rx: &mut mpsc::Receiver<Vec<Reading>>,
    max: usize,
) -> Vec<Reading> {
    while first.len() < max {
        match rx.try_recv() {
            Ok(more) => first.extend_from_slice(&more),
            Err(_) => break,
        }
    }
    first
}

/// What one spool append writes: readings, and the signals that acknowledge them upstream.
#[derive(Default)]
struct Group {
    readings: Vec<Reading>,
    done: Vec<oneshot::Sender<()>>,
    /// QoS 1 messages that `done` acknowledges.
    acks: usize,
}

impl Group {
    fn take(&mut self, w: SpoolWork) {
        self.readings.extend_from_slice(&w.readings);
        self.done.extend(w.done);
        self.acks += w.acks;
    }

    /// Whether gathering goes on: room for readings, and fewer QoS 1 messages held back
    /// than [`GROUP_ACKS`].
    fn open(&self) -> bool {
        self.readings.len() < GROUP_READINGS && self.acks < GROUP_ACKS
    }
}

/// Gather the next spool append into `group` (empty on entry): wait for a first batch,
/// take every batch already waiting, then keep taking batches until `window` after the
/// first one (group commit, `[spool].group_commit_ms`), so that a scan cycle's polls, or
/// the MQTT messages of a few milliseconds, share one write and one fsync. Holding
/// [`GROUP_ACKS`] QoS 1 messages back from acknowledgement, or [`GROUP_READINGS`]
/// readings, ends the wait at once. Returns false when the queue is closed and empty.
async fn gather(rx: &mut mpsc::Receiver<SpoolWork>, group: &mut Group, window: Duration) -> bool {
    let Some(first) = rx.recv().await else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + window;
    group.take(first);
    while group.readings.len() < GROUP_READINGS {
        match rx.try_recv() {
            Ok(w) => group.take(w),
            Err(_) => break,
        }
    }
    while group.open() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(w)) => group.take(w),
            // Closed (shutting down) or the window is over: write what we have.
            Ok(None) | Err(_) => break,
        }
    }
    true
}

/// Log every annunciated alarm and every warning change (Chinese with English), so that
/// the journal of the process (systemd) records them too.
fn spawn_event_log(
    mut events: broadcast::Receiver<Arc<Event>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = events.recv() => match ev {
                        Ok(ev) => log_event(&ev),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            warn!(missed = n, "event log fell behind; the journal has every event");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        }
        .instrument(info_span!("event_log")),
    )
}

fn log_event(ev: &Event) {
    match ev {
        Event::Alarm(a) if a.annunciate => info!(
            id = a.id,
            alarm = %a.alarm,
            enterprise = %a.enterprise,
            priority = ?a.priority,
            value = ?a.value,
            limit = ?a.limit,
            drill = a.drill.as_deref().unwrap_or(""),
            "报警 / ALARM {} {}",
            a.alarm,
            a.condition.label_zh()
        ),
        Event::Alarm(_) => {}
        Event::Warning(w) => info!(id = w.id, warning = ?w, "预警变化 / warning grade changed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkguard_rules::{PointId, Quality, Timestamp, Unit};
    use tokio::time::Instant;

    fn batch(first: u32, n: u32) -> Vec<Reading> {
        (first..first + n)
            .map(|i| Reading {
                point: PointId(i),
                value: f64::from(i),
                unit: Unit::None,
                quality: Quality::Good,
                source_time: Timestamp(0),
                receive_time: Timestamp(0),
            })
            .collect()
    }

    fn ids(r: &[Reading]) -> Vec<u32> {
        r.iter().map(|r| r.point.0).collect()
    }

    /// A hand-over into a spool queue with room goes through without counting; one into a
    /// full queue waits until the writer takes a batch, and the wait is counted (the
    /// back-pressure of a slow disk on the sources, `/metrics`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hand_over_that_waits_for_a_full_spool_queue_is_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = SpoolStats::default();
        let (tx, mut rx) = mpsc::channel(1);
        let work = |n| SpoolWork {
            readings: batch(n, 1),
            done: None,
            acks: 0,
        };
        send_to_spool(&tx, work(1), &stats).await.unwrap();
        assert_eq!(stats.queue_full_waits.load(Relaxed), 0, "there was room");
        // The queue is full; the "writer" takes a batch 50 ms later.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let first = rx.recv().await.map(|w| ids(&w.readings));
            (first, rx)
        });
        send_to_spool(&tx, work(2), &stats).await.unwrap();
        let (first, mut rx) = writer.await.unwrap();
        assert_eq!(first, Some(vec![1]));
        assert_eq!(rx.recv().await.map(|w| ids(&w.readings)), Some(vec![2]));
        assert_eq!(stats.queue_full_waits.load(Relaxed), 1);
        let waited = stats.queue_full_wait_us.load(Relaxed);
        assert!(
            waited >= 40_000,
            "waited {waited} µs for the writer's 50 ms"
        );
        // The writer is gone: an error, not a hang.
        drop(rx);
        assert!(send_to_spool(&tx, work(3), &stats).await.is_err());
    }

    /// The recorder takes what waits behind the first batch, in order, and stops once it
    /// has `max` readings (a batch is not split).
    #[tokio::test]
    async fn the_recorder_merges_the_batches_already_waiting() {
        let (tx, mut rx) = mpsc::channel(16);
        for k in 1..4 {
            tx.send(batch(k * 10, 3)).await.expect("send");
        }
        assert_eq!(
            ids(&merge_waiting(batch(0, 3), &mut rx, 7)),
            [0, 1, 2, 10, 11, 12, 20, 21, 22]
        );
        assert_eq!(
            ids(&merge_waiting(batch(5, 1), &mut rx, 7)),
            [5, 30, 31, 32]
        );
        assert_eq!(ids(&merge_waiting(batch(6, 1), &mut rx, 7)), [6]);
    }

    /// Polls nobody acknowledges are gathered for the window after the first one (one
    /// append for a scan cycle); what comes later goes into the next append.
    #[tokio::test(start_paused = true)]
    async fn polls_of_one_window_share_one_append() {
        let (tx, mut rx) = mpsc::channel(64);
        let window = Duration::from_millis(20);
        let t0 = Instant::now();
        tokio::spawn(async move {
            for (at_ms, first) in [(0, 0), (3, 10), (19, 20), (25, 30), (50, 40)] {
                tokio::time::sleep_until(t0 + Duration::from_millis(at_ms)).await;
                let w = SpoolWork {
                    readings: batch(first, 2),
                    done: None,
                    acks: 0,
                };
                tx.send(w).await.expect("send");
            }
        });
        let mut g = Group::default();
        assert!(gather(&mut rx, &mut g, window).await);
        assert_eq!(ids(&g.readings), [0, 1, 10, 11, 20, 21]);
        assert_eq!(Instant::now() - t0, window);
        g.readings.clear();
        assert!(gather(&mut rx, &mut g, window).await);
        assert_eq!(ids(&g.readings), [30, 31]);
        assert_eq!(Instant::now() - t0, Duration::from_millis(25) + window);
        g.readings.clear();
        assert!(gather(&mut rx, &mut g, window).await);
        assert_eq!(ids(&g.readings), [40, 41]);
        g.readings.clear();
        // The sender is gone and the queue empty: the writer ends.
        assert!(!gather(&mut rx, &mut g, window).await);
    }

    /// MQTT QoS 1 batches are gathered for the window too, but once [`GROUP_ACKS`]
    /// messages are held back from acknowledgement the append comes at once; a window of
    /// 0 (`group_commit_ms = 0`) appends what is waiting without waiting for more.
    #[tokio::test(start_paused = true)]
    async fn ten_acknowledgements_waiting_end_the_window_at_once() {
        let (tx, mut rx) = mpsc::channel(64);
        let window = Duration::from_millis(20);
        let t0 = Instant::now();
        let mut acked = Vec::new();
        let mut work = Vec::new();
        for (at_ms, first, acks) in [(0, 0, 0), (4, 10, 3), (5, 20, GROUP_ACKS - 4), (8, 30, 2)] {
            let done = if acks > 0 {
                let (done, rx) = oneshot::channel();
                acked.push(rx);
                Some(done)
            } else {
                None
            };
            let w = SpoolWork {
                readings: batch(first, 1),
                done,
                acks,
            };
            work.push((at_ms, w));
        }
        tokio::spawn(async move {
            for (at_ms, w) in work {
                tokio::time::sleep_until(t0 + Duration::from_millis(at_ms)).await;
                tx.send(w).await.expect("send");
            }
        });
        let mut g = Group::default();
        assert!(gather(&mut rx, &mut g, window).await);
        // 3 + 6 messages held at 5 ms: still gathering; 11 at 8 ms: append.
        assert_eq!(ids(&g.readings), [0, 10, 20, 30]);
        assert_eq!(Instant::now() - t0, Duration::from_millis(8));
        assert_eq!((g.done.len(), g.acks), (3, GROUP_ACKS + 1));
        for d in g.done.drain(..) {
            d.send(()).expect("the subscriber waits");
        }
        for a in acked {
            a.await.expect("acknowledged");
        }

        // Fewer messages wait the whole window.
        g.readings.clear();
        g.acks = 0;
        let (tx2, mut rx2) = mpsc::channel(4);
        let (done2, _acked2) = oneshot::channel();
        tx2.send(SpoolWork {
            readings: batch(40, 1),
            done: Some(done2),
            acks: 1,
        })
        .await
        .expect("send");
        let t1 = Instant::now();
        assert!(gather(&mut rx2, &mut g, window).await);
        assert_eq!(ids(&g.readings), [40]);
        assert_eq!(Instant::now() - t1, window);

        // No window: at once.
        g.readings.clear();
        g.acks = 0;
        g.done.clear();
        tx2.send(SpoolWork {
            readings: batch(50, 1),
            done: None,
            acks: 0,
        })
        .await
        .expect("send");
        let t2 = Instant::now();
        assert!(gather(&mut rx2, &mut g, Duration::ZERO).await);
        assert_eq!(ids(&g.readings), [50]);
        assert_eq!(Instant::now(), t2);
    }
}
