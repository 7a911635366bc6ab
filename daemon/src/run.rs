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

/// Run a validated config until SIGTERM/SIGINT.
pub fn run_config(cfg: ParkConfig) -> Result<()> {
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
        info!(summary = %cfg.summary(), data_dir = %cfg.data.dir.display(), "parkguard started");
        wait_for_signal(shutdown.clone()).await;
        info!("shutting down");
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
