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
