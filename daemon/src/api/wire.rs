//! Wiring the API to the running engine: [`serve`] is what the daemon's `run` calls.
//!
//! It builds the SSE hub (and its flusher), the real backend
//! ([`super::engine_backend::EngineBackend`]) with its event pump, the handlers' state
//! (users file, audit log `<data.dir>/audit.db`, metrics), attaches the limits store
//! `<data.dir>/limits.sqlite` the topology opened (and applied to the engine before its
//! first reading), binds `[api] listen` and serves
//! plain HTTP, or HTTPS when `[api] tls_cert` and `tls_key` are both set.

use super::engine_backend::{BackendParts, EngineBackend, pump};
use super::{AppState, EventHub, HubSettings, Metrics, ParkInfo};
use crate::config::ParkConfig;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What [`serve_with`] started, for callers that want the pieces (tests, the drill path).
pub struct Served {
    /// The bound address (resolves port 0).
    pub addr: SocketAddr,
    /// Ends when `shutdown` fires and the server, pump and flusher have stopped.
    pub join: JoinHandle<()>,
    /// The hub (publish extra events, e.g. drill banners).
    pub hub: Arc<EventHub>,
    /// The metrics registry behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The backend.
    pub backend: Arc<EngineBackend>,
}

/// Serve the API and console for `cfg` over `parts` until `shutdown`. Returns the bound
/// address and the server task. Fails when the users file is missing or invalid, the
/// audit log cannot be opened, the TLS files are wrong, or the address cannot be bound.
pub async fn serve(
    cfg: &ParkConfig,
    parts: BackendParts,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let s = serve_with(cfg, parts, Arc::new(Metrics::default()), shutdown).await?;
    Ok((s.addr, s.join))
}

/// [`serve`] with a metrics registry shared with drivers and engine, returning every piece.
pub async fn serve_with(
    cfg: &ParkConfig,
    parts: BackendParts,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<Served> {
    let drills = Arc::new(crate::drill::live::Drills::unavailable());
    serve_with_drills(cfg, parts, metrics, drills, shutdown).await
}

/// [`serve_with`] plus the drills that run beside the real path (`/api/v1/drills`).
pub async fn serve_with_drills(
    cfg: &ParkConfig,
    parts: BackendParts,
    metrics: Arc<Metrics>,
    drills: Arc<crate::drill::live::Drills>,
    shutdown: CancellationToken,
) -> anyhow::Result<Served> {
    let tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(c), Some(k)) => Some(
            super::tls::acceptor(c, k)
                .with_context(|| format!("TLS files {} / {}", c.display(), k.display()))?,
        ),
        (None, None) => None,
        _ => bail!("[api] tls_cert and tls_key must be set together (or neither)"),
    };
    let users_file = cfg.api.users_file(&cfg.data.dir);
    std::fs::create_dir_all(&cfg.data.dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            cfg.data.dir.display()
        )
    })?;
    let audit_db = cfg.data.dir.join("audit.db");
    // Event ids start at the Unix time in ms so they keep increasing across restarts.
    let first_id = u64::try_from(crate::engine_task::system_now().0 / 1_000_000).unwrap_or(1);
    let hub = Arc::new(EventHub::new(
        HubSettings::for_points(cfg.table.points().len()),
        first_id,
    ));
    // Seeding from the journal reads SQLite: blocking work.
    let backend = tokio::task::spawn_blocking(move || EngineBackend::new(parts))
        .await
        .context("API backend task")?;
    // Limit versions persist in the data directory. The topology applied the latest
    // stored ones before the engine's first reading; the API takes over the store.
    match backend.parts().engine.limits.clone() {
        Some(at_start) => backend.attach_limits(&at_start),
        None => {
            let limits_db = cfg.data.dir.join("limits.sqlite");
            backend
                .restore_limits_late(&limits_db)
                .await
                .with_context(|| {
                    format!("cannot restore the stored limits {}", limits_db.display())
                })?;
        }
    }
    let state = {
        let backend = backend.clone();
        let hub = hub.clone();
        let metrics = metrics.clone();
        let park = ParkInfo::from_config(cfg);
        let tls_on = tls.is_some();
        // Argon2 and SQLite: blocking work.
        tokio::task::spawn_blocking(move || {
            AppState::new(backend, hub, metrics, park, &users_file, &audit_db, tls_on)
        })
        .await
        .context("API state task")??
    };
    let state = AppState { drills, ..state };
    let listener = tokio::net::TcpListener::bind(&cfg.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([api] listen)", cfg.api.listen))?;
    let addr = listener.local_addr()?;
    let router = super::router(state);
    // The helpers stop with the server, also when it fails on its own.
    let helpers = shutdown.child_token();
    let flusher = tokio::spawn(hub.clone().run_flusher(helpers.clone()));
    let pumper = tokio::spawn(pump(backend.clone(), hub.clone(), helpers.clone()));
    let sd = shutdown.clone();
    let join = tokio::spawn(async move {
        match tls {
            None => {
                if let Err(e) = super::serve(listener, router, sd).await {
                    tracing::error!(error = %e, "API server failed");
                }
            }
            Some(acc) => super::tls::serve_tls(listener, router, acc, sd).await,
        }
        helpers.cancel();
        let _ = flusher.await;
        let _ = pumper.await;
    });
    tracing::info!(%addr, tls = cfg.api.tls_cert.is_some(), "API and console listening");
    Ok(Served {
        addr,
        join,
        hub,
        metrics,
        backend,
    })
}
