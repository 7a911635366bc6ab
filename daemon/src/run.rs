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
        let running = crate::topology::start(&cfg, shutdown.clone()).await?;
        info!(summary = %cfg.summary(), data_dir = %cfg.data.dir.display(), "parkguard started");
        wait_for_signal(shutdown.clone()).await;
        info!("shutting down");
        running.stop().await;
        Ok(())
    })
}

/// Resolve on SIGTERM or SIGINT (Ctrl-C) and cancel `token`.
pub async fn wait_for_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot install SIGTERM handler");
            None
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "signal received"),
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => info!(signal = "SIGTERM", "signal received"),
        _ = token.cancelled() => {}
    }
    token.cancel();
}
