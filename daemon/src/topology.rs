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
//! and the next one comes within its interval); the MQTT subscriber awaits, so the broker
//! keeps unacknowledged QoS 1 messages. The engine evaluates millions of readings a second,
//! so the channel fills only when a downstream stage (the journal) stalls.

use crate::config::ParkConfig;
use crate::engine_task::{self, EngineHandle, EngineTaskConfig};
use anyhow::Result;
use parkguard_drivers::modbus::{self, ModbusMetrics};
use parkguard_rules::Reading;
use parkguard_rules::engine::{Engine, Event};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// Capacity of the readings channel, in batches (one batch = one Modbus poll or one MQTT
/// message).
pub const READINGS_CAPACITY: usize = 4096;

/// A running park: handles the API and tests use.
pub struct Running {
    /// The engine task.
    pub engine: EngineHandle,
    /// Where sources send readings (drills use their own engine; this is the real path).
    pub readings: mpsc::Sender<Vec<Reading>>,
    /// Modbus counters per device.
    pub modbus: Arc<ModbusMetrics>,
    /// Cancel to stop every task.
    pub shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
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
            // The engine ends when every readings sender is gone.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), j).await;
        }
    }
}

/// Start every task of `cfg`. Must run inside a tokio runtime.
pub async fn start(cfg: &ParkConfig, shutdown: CancellationToken) -> Result<Running> {
    let (readings_tx, readings_rx) = mpsc::channel::<Vec<Reading>>(READINGS_CAPACITY);
    let engine = Engine::new(
        Arc::clone(&cfg.table),
        cfg.engine.clone(),
        cfg.vote_groups.clone(),
    );
    let (handle, engine_join) =
        engine_task::spawn(engine, readings_rx, None, EngineTaskConfig::default());

    let mut tasks = Vec::new();
    let metrics = Arc::new(ModbusMetrics::new(&cfg.modbus_plan));
    tasks.extend(modbus::spawn(
        &cfg.modbus_plan,
        readings_tx.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    tasks.push(spawn_event_log(handle.events.subscribe(), shutdown.clone()));
    info!(
        points = cfg.table.len(),
        modbus_lines = cfg.modbus_plan.lines.len(),
        "topology started"
    );
    Ok(Running {
        engine: handle,
        readings: readings_tx,
        modbus: metrics,
        shutdown,
        tasks,
        engine_join: Some(engine_join),
    })
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
