//! `parkguard run`: load the config, start every task, wait for SIGTERM/SIGINT, shut down.

use crate::config::{self, ParkConfig};
use anyhow::{Context, Result, bail};
use std::path::Path;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Load `path`, refuse to start on any config error, then run until a signal.
pub fn run_file(path: &Path) -> Result<()> {
    let cfg = match config::load_file(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            bail!(
                "{} has {} error(s); nothing was started",
                path.display(),
                errors.len()
            );
        }
    };
    run_config(cfg)
}

/// What `demo` adds to a plain `run`.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Serve the Modbus simulator (the demo devices) here before the pollers start.
    pub modbus_sim: Option<std::net::SocketAddr>,
    /// Start the embedded MQTT broker (rumqttd) here before the subscribers.
    pub embedded_broker: Option<std::net::SocketAddr>,
    /// Publish simulated readings of every point without a Modbus device to the first
    /// MQTT broker of the config.
    pub mqtt_sim: bool,
    /// Create demo users (random passwords, printed at start; demo only).
    pub demo_users: bool,
}

/// Run a validated config until SIGTERM/SIGINT.
pub fn run_config(cfg: ParkConfig) -> Result<()> {
    run_config_with(cfg, Extras::default())
}

/// Run a validated config with demo extras until SIGTERM/SIGINT.
pub fn run_config_with(cfg: ParkConfig, extras: Extras) -> Result<()> {
    // The config's parse tree (~25 MB for 10,000 points) is freed by now: give it back
    // before the runtime, the threads and their buffers are allocated, so that start-up's
    // peak is the larger of the two and not their sum (issue #11).
    crate::mem::release_free_heap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("parkguard")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        // First, before anything that takes time: a stop during start-up is then clean.
        let signals = Signals::install();
        std::fs::create_dir_all(&cfg.data.dir)
            .with_context(|| format!("cannot create data dir {}", cfg.data.dir.display()))?;
        let shutdown = CancellationToken::new();
        let _sim = match extras.modbus_sim {
            Some(addr) => Some(
                parkguard_drivers::modbus::sim::serve(
                    addr,
                    &parkguard_drivers::modbus::sim::demo_devices(),
                )
                .await
                .with_context(|| format!("cannot start the Modbus simulator on {addr}"))?,
            ),
            None => None,
        };
        let _broker = match extras.embedded_broker {
            Some(addr) => Some(
                tokio::task::spawn_blocking(move || {
                    parkguard_drivers::mqtt::broker::start_embedded(addr)
                })
                .await
                .context("embedded broker task")?
                .map_err(|e| {
                    anyhow::anyhow!("cannot start the embedded MQTT broker on {addr}: {e}")
                })?,
            ),
            None => None,
        };
        if extras.mqtt_sim
            && let Some(broker) = cfg.mqtt_brokers.first().cloned()
        {
            {
                let points: Vec<_> = cfg
                    .table
                    .points()
                    .iter()
                    .filter(|p| p.device.is_none())
                    .map(parkguard_drivers::mqtt::sim::SimPoint::for_point)
                    .collect();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    let opts = parkguard_drivers::mqtt::sim::SimOptions::default();
                    if let Err(e) =
                        parkguard_drivers::mqtt::sim::run_simulator(&broker, points, opts, stop)
                            .await
                    {
                        tracing::error!(error = %e, "MQTT simulator stopped");
                    }
                });
            }
        }
        let running = crate::topology::start(&cfg, shutdown.clone()).await?;
        // The config's parse tree and the start-up's transient buffers are freed by now:
        // give them back to the system, and so on whenever the resident set grew by 2 MiB
        // (a console's event churn, an outage's backlog delivered) or 30 s passed. See
        // `crate::mem`.
        let released = crate::mem::release_free_heap();
        tracing::debug!(released, "freed start-up heap given back");
        tokio::spawn(crate::mem::trim_periodically(shutdown.clone()));
        // parkguard's own health as alarms in the operators' list (spool, InfluxDB).
        let _system_alarms = spawn_system_alarms(
            running.engine.clone(),
            SystemWatch {
                spool: Some(std::sync::Arc::clone(&running.spool)),
                influx: [running.influx.clone(), running.influx_events.clone()]
                    .into_iter()
                    .flatten()
                    .collect(),
            },
            SYSTEM_ALARM_PERIOD,
            shutdown.clone(),
        );
        let parts = crate::api::engine_backend::BackendParts {
            engine: running.engine.clone(),
            table: std::sync::Arc::clone(&cfg.table),
            engine_config: cfg.engine.clone(),
            journal_path: Some(running.journal_path.clone()),
            archive_dir: Some(running.spool_dir.clone()),
            modbus: Some(std::sync::Arc::clone(&running.modbus)),
            mqtt: running.mqtt.clone(),
            linkage: running.linkage.clone(),
            spool: Some(running.spool.clone()),
            influx: [running.influx.clone(), running.influx_events.clone()],
        };
        if extras.demo_users {
            let path = cfg.api.users_file(&cfg.data.dir);
            let created = crate::auth::create_demo_users(&path)
                .map_err(|e| anyhow::anyhow!("cannot create the demo users file {}: {e}", path.display()))?;
            eprintln!("\n  演示账号 / demo users (demo only; passwords change at every start):");
            for (name, role, password) in &created {
                eprintln!("    {name:<9} {role:<9?} {password}");
            }
        }
        let users_file = cfg.api.users_file(&cfg.data.dir);
        if !users_file.exists() {
            // No users yet: start with an empty file (nobody can log in; the API still
            // answers /healthz, /readyz and bearer-less 401s) and say how to add one.
            std::fs::write(&users_file, "# parkguard users: add with `parkguard user add`\n")
                .with_context(|| format!("cannot create {}", users_file.display()))?;
            warn!(file = %users_file.display(), "no users file: created an empty one; add users with `parkguard user add --file FILE NAME ROLE`");
        }
        let mut drills = crate::drill::live::Drills::new(crate::drill::live::DrillParts {
            table: std::sync::Arc::clone(&cfg.table),
            engine: cfg.engine.clone(),
            vote_groups: cfg.vote_groups.clone(),
            journal: Some(running.journal.clone()),
            data_dir: cfg.data.dir.clone(),
            spool_dir: running.spool_dir.clone(),
            shutdown: shutdown.clone(),
        });
        // Drills judge against the limits in force (stored through the API), not the file's.
        if let Some(at_start) = &running.engine.limits {
            drills = drills.with_limits(std::sync::Arc::clone(&at_start.store));
        }
        // A drill's alarms escalate to drill channels while it runs.
        if let Some(linkage) = &running.linkage {
            drills = drills.with_linkage(std::sync::Arc::clone(linkage));
        }
        let drills = std::sync::Arc::new(drills);
        let served = crate::api::wire::serve_with_drills(
            &cfg,
            parts,
            std::sync::Arc::new(crate::api::Metrics::default()),
            drills,
            shutdown.clone(),
        )
        .await
        .context("cannot start the HTTP API and console")?;
        let (addr, api_join) = (served.addr, served.join);
        info!(summary = %cfg.summary(), data_dir = %cfg.data.dir.display(), console = %format!("http://{addr}/"), "parkguard started");
        if extras.demo_users {
            eprintln!("  控制台 / console: http://{addr}/\n");
        }
        signals.wait(shutdown.clone()).await;
        info!("shutting down");
        running.stop().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), api_join).await;
        Ok(())
    })
}

/// SIGTERM / SIGINT handlers, installed before start-up so that a stop requested while the
/// daemon is still starting (systemd, a test) is honoured as a clean shutdown once start-up
/// completes, instead of killing the process half-started.
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Install the handlers (inside a tokio runtime).
    pub fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let one = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, signal = name, "cannot install signal handler");
                None
            }
        };
        Signals {
            term: one(SignalKind::terminate(), "SIGTERM"),
            int: one(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolve on SIGTERM or SIGINT (also one received since [`Signals::install`]) or when
    /// `token` is cancelled, and cancel `token`.
    pub async fn wait(mut self, token: CancellationToken) {
        async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(self.int.as_mut()) => info!(signal = "SIGINT", "signal received"),
            _ = recv(self.term.as_mut()) => info!(signal = "SIGTERM", "signal received"),
            _ = token.cancelled() => {}
        }
        token.cancel();
    }
}

/// Resolve on SIGTERM or SIGINT (Ctrl-C) and cancel `token`.
pub async fn wait_for_signal(token: CancellationToken) {
    Signals::install().wait(token).await;
}

/// `parkguard simulate`: field-device simulators for a park config, until SIGTERM/SIGINT.
pub fn simulate(path: &Path, modbus: Option<std::net::SocketAddr>, mqtt: bool) -> Result<()> {
    let cfg = match config::load_file(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            bail!("{} has {} error(s)", path.display(), errors.len());
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let _sim = match modbus {
            Some(addr) => {
                let h = parkguard_drivers::modbus::sim::serve(
                    addr,
                    &parkguard_drivers::modbus::sim::demo_devices(),
                )
                .await
                .with_context(|| format!("cannot serve the Modbus simulator on {addr}"))?;
                info!(addr = %h.addr(), "Modbus simulator serving units 1 (Midas), 2 (Oldham), 3 (4-in-1)");
                Some(h)
            }
            None => None,
        };
        if mqtt {
            let Some(broker) = cfg.mqtt_brokers.first().cloned() else {
                bail!("{} has no [[mqtt_broker]] to publish to (use --no-mqtt)", path.display());
            };
            let points: Vec<_> = cfg
                .table
                .points()
                .iter()
                .filter(|p| p.device.is_none())
                .map(parkguard_drivers::mqtt::sim::SimPoint::for_point)
                .collect();
            info!(points = points.len(), broker = %broker.id, "publishing simulated readings");
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let opts = parkguard_drivers::mqtt::sim::SimOptions::default();
                if let Err(e) = parkguard_drivers::mqtt::sim::run_simulator(&broker, points, opts, stop).await {
                    tracing::error!(error = %e, "MQTT simulator stopped");
                }
            });
        }
        wait_for_signal(shutdown).await;
        Ok(())
    })
}

/// How often the system-alarm watcher looks at the spool and InfluxDB writer counters.
pub const SYSTEM_ALARM_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// A system alarm returns only after its condition was absent this many polls in a row
/// (10 s at [`SYSTEM_ALARM_PERIOD`]): an off-delay, so that a disk failing on and off
/// gives one standing alarm, not one per failed append.
pub const SYSTEM_ALARM_RETURN_POLLS: u32 = 10;

/// InfluxDB writes count as failing after this long with errors and no successful write.
pub const INFLUX_FAILING_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether one InfluxDB writer is failing, from its counters polled over time (pure: time
/// is an argument): failing once errors were counted since its last successful request and
/// that success is [`INFLUX_FAILING_AFTER`] old (or there never was one); cleared by the
/// next successful request.
#[derive(Clone, Debug, Default)]
pub struct InfluxHealth {
    /// `requests_ok` at the last poll.
    ok: u64,
    /// Errors counted when `ok` last grew.
    errors_at_ok: u64,
    /// When `ok` last grew (or the first poll).
    ok_at: Option<std::time::Duration>,
}

impl InfluxHealth {
    /// Feed the counters at `now` (any monotonic clock); returns whether writes are failing.
    pub fn poll(&mut self, requests_ok: u64, errors: u64, now: std::time::Duration) -> bool {
        if self.ok_at.is_none() || requests_ok > self.ok {
            self.ok = requests_ok;
            self.errors_at_ok = errors;
            self.ok_at = Some(now);
        }
        let since = now.saturating_sub(self.ok_at.unwrap_or(now));
        errors > self.errors_at_ok && since >= INFLUX_FAILING_AFTER
    }
}

/// The sources the system-alarm watcher polls.
#[derive(Clone, Debug, Default)]
pub struct SystemWatch {
    /// The spool's counters and flags.
    pub spool: Option<std::sync::Arc<crate::store::spool::SpoolStats>>,
    /// The InfluxDB writers' counters (readings, events).
    pub influx: Vec<std::sync::Arc<parkguard_drivers::influx::InfluxStats>>,
}

/// Spawn the watcher that turns parkguard's own health into alarms in the operators' alarm
/// list ([`parkguard_rules::alarm::SystemAlarm`]): every `period` it reads the spool flags
/// (`append_failing`, `overflow_alarm`) and the InfluxDB writers' counters and sends
/// [`Command::System`](parkguard_rules::engine::Command::System) to the engine task, which
/// raises or returns the alarm (journalled, notified, acknowledgeable like any other). The
/// engine ignores a command that changes nothing, so the watcher sends the current
/// condition every time instead of tracking edges (a restart re-raises what still holds).
///
/// A raised alarm returns after [`SYSTEM_ALARM_RETURN_POLLS`] polls without its condition.
///
/// The spool's overflow flag is latched (the dropped data is gone for good): once an
/// operator acknowledged `system/spool:OVERFLOW` the watcher clears the flag, which
/// returns the alarm; a later overflow raises it again.
///
/// Back-pressure: it waits for the engine's answer (bounded request channel) before the
/// next poll, so at most one of its commands is ever queued.
pub fn spawn_system_alarms(
    engine: crate::engine_task::EngineHandle,
    watch: SystemWatch,
    period: std::time::Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use parkguard_rules::alarm::{AlarmState, SystemAlarm};
    use parkguard_rules::engine::Command;
    use std::sync::atomic::Ordering::Relaxed;
    let mut health = vec![InfluxHealth::default(); watch.influx.len()];
    // Polls in a row without the condition, per system alarm (the off-delay).
    let mut clear = [0u32; SystemAlarm::ALL.len()];
    let started = tokio::time::Instant::now();
    let task = async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut wanted: Vec<(SystemAlarm, bool, Option<f64>, String)> = Vec::new();
            if let Some(s) = &watch.spool {
                let failures = s.append_failures.load(Relaxed);
                wanted.push((
                    SystemAlarm::SpoolAppendFailing,
                    s.append_failing.load(Relaxed),
                    Some(failures as f64),
                    format!("{failures} failed appends; check the data disk"),
                ));
                let overflow = s.overflow_alarm.load(Relaxed);
                let acked = overflow
                    && engine.snapshot.borrow().alarms.iter().any(|a| {
                        a.alarm == SystemAlarm::SpoolOverflow.alarm_id()
                            && a.state == AlarmState::Acknowledged
                    });
                if acked {
                    s.clear_overflow_alarm();
                }
                let dropped = s.readings_dropped_unsent.load(Relaxed);
                wanted.push((
                    SystemAlarm::SpoolOverflow,
                    overflow && !acked,
                    Some(dropped as f64),
                    format!("{dropped} readings dropped before InfluxDB confirmed them"),
                ));
            }
            if !watch.influx.is_empty() {
                let now = started.elapsed();
                let mut failing = false;
                for (st, h) in watch.influx.iter().zip(health.iter_mut()) {
                    let errors = st.transient_errors.load(Relaxed)
                        + st.auth_or_missing.load(Relaxed)
                        + st.throttled.load(Relaxed);
                    failing |= h.poll(st.requests_ok.load(Relaxed), errors, now);
                }
                let last = watch
                    .influx
                    .iter()
                    .find_map(|s| s.last_error.lock().ok().and_then(|e| e.clone()))
                    .unwrap_or_default();
                wanted.push((SystemAlarm::InfluxWriteFailing, failing, None, last));
            }
            for (alarm, active, value, detail) in wanted {
                let quiet = &mut clear[alarm.index()];
                *quiet = if active { 0 } else { quiet.saturating_add(1) };
                if !active && *quiet < SYSTEM_ALARM_RETURN_POLLS {
                    continue;
                }
                let cmd = Command::System {
                    alarm,
                    active,
                    value,
                    detail: Some(format!("{}: {detail}", alarm.text_en())),
                };
                match engine.command(cmd).await {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) if active => {
                        warn!(alarm = %alarm.alarm_id(), detail = %detail, "system alarm raised")
                    }
                    Some(Ok(_)) => info!(alarm = %alarm.alarm_id(), "system alarm returned"),
                    Some(Err(e)) => {
                        warn!(alarm = %alarm.alarm_id(), error = %e, "system alarm refused")
                    }
                    None => return, // the engine task has ended
                }
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(
        task,
        tracing::info_span!("system_alarms"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn influx_fails_after_a_minute_of_errors_without_success() {
        let s = Duration::from_secs;
        let mut h = InfluxHealth::default();
        assert!(!h.poll(5, 0, s(0)), "healthy");
        assert!(
            !h.poll(5, 3, s(30)),
            "errors, but the last success is recent"
        );
        assert!(h.poll(5, 4, s(60)), "a minute of errors without success");
        assert!(!h.poll(6, 4, s(61)), "a success clears it");
        assert!(!h.poll(6, 4, s(200)), "no traffic is no failure");
        // Never a success, errors from the start.
        let mut h = InfluxHealth::default();
        assert!(!h.poll(0, 1, s(0)));
        assert!(h.poll(0, 9, s(60)));
    }
}
