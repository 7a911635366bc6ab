//! The HTTP API (`/api/v1`, JSON), the live event stream, health, metrics and the
//! operator console, served by axum.
//!
//! - [`backend`]: the seam to the engine ([`ApiBackend`]) and the wire types.
//! - [`events`]: the SSE hub (ids, ring buffer for `Last-Event-ID`, per-point throttling).
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`error`]: JSON errors and extractors that turn every bad request into a clear 4xx.
//! - [`testing`]: an in-process test double of the engine for router and browser tests.
//!
//! Every route is declared once in [`route_table`] with its minimum role; the router is
//! built from that table, the role test walks it, and a test compares it with the OpenAPI
//! document served at `/api/v1/openapi.json` (`daemon/assets/openapi.json`).
//!
//! Wiring (the daemon's `run`):
//! ```text
//! let hub = Arc::new(EventHub::new(HubSettings::default(), unix_ms));
//! tokio::spawn(hub.clone().run_flusher(shutdown.clone()));
//! let metrics = Arc::new(Metrics::default()); // shared with drivers and engine
//! // the engine task gets `hub` and `metrics`; its handles implement ApiBackend
//! let state = AppState::new(backend, hub, metrics, ParkInfo::from_config(&cfg),
//!                           &users_file, &cfg.data.dir.join("audit.db"), tls)?;
//! let listener = TcpListener::bind(&cfg.api.listen).await?;
//! match tls_files {
//!     None => api::serve(listener, api::router(state), shutdown).await?,
//!     Some((cert, key)) => api::tls::serve_tls(listener, api::router(state),
//!                                              api::tls::acceptor(&cert, &key)?, shutdown).await,
//! }
//! ```
//! `parkguard user add` calls [`crate::auth::add_user`]; `check-config` calls
//! [`crate::auth::check_users_file`] with `park.production`.

pub mod backend;
pub mod console;
mod drills;
pub mod engine_backend;
pub mod error;
pub mod events;
mod handlers;
pub mod limits;
pub mod metrics;
pub mod testing;
pub mod tls;
pub mod wire;

pub use backend::ApiBackend;
pub use error::ApiError;
pub use events::{EventHub, HubSettings};
pub use metrics::Metrics;

use crate::audit::AuditLog;
use crate::auth::{AuthService, Principal, Role, ct_eq};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use parkguard_rules::{Enterprise, GeoPoint, PointTable};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Largest request body accepted (JSON commands are small). 64 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// Name of the session cookie (HttpOnly).
pub const SESSION_COOKIE: &str = "pg_session";
/// Name of the CSRF cookie (readable by the console's script, echoed in the header).
pub const CSRF_COOKIE: &str = "pg_csrf";
/// Header that must echo the CSRF token on state-changing requests with a session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What the map and the console need to know of the park (static, from the config).
#[derive(Clone, Debug, Default)]
pub struct ParkInfo {
    /// Park id.
    pub id: String,
    /// Park name.
    pub name: String,
    /// Park boundary polygon.
    pub boundary: Vec<GeoPoint>,
    /// Enterprises.
    pub enterprises: Vec<Enterprise>,
    /// Points.
    pub table: Arc<PointTable>,
}

impl ParkInfo {
    /// From a validated config.
    pub fn from_config(cfg: &crate::config::ParkConfig) -> Self {
        Self {
            id: cfg.park.id.clone(),
            name: cfg.park.name.clone(),
            boundary: cfg.park.boundary.clone(),
            enterprises: cfg.enterprises.clone(),
            table: cfg.table.clone(),
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The engine seam.
    pub backend: Arc<dyn ApiBackend>,
    /// Authentication.
    pub auth: Arc<AuthService>,
    /// Audit log.
    pub audit: Arc<AuditLog>,
    /// Live events.
    pub hub: Arc<EventHub>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Static park data.
    pub park: Arc<ParkInfo>,
    /// Drills beside live monitoring (refused with 503 unless the daemon wires them, see
    /// [`wire::serve_with_drills`]).
    pub drills: Arc<crate::drill::live::Drills>,
}

impl AppState {
    /// Everything the API needs, for `run`: users from `users_file` (refused when missing
    /// or invalid), the audit log at `audit_db` (created), the `hub` the engine publishes
    /// into, the engine's `backend`, and the metrics registry the drivers and engine count
    /// into (served on `/metrics`). `tls` marks cookies `Secure`.
    pub fn new(
        backend: Arc<dyn ApiBackend>,
        hub: Arc<EventHub>,
        metrics: Arc<Metrics>,
        park: ParkInfo,
        users_file: &std::path::Path,
        audit_db: &std::path::Path,
        tls: bool,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let settings = crate::auth::AuthSettings {
            tls,
            ..Default::default()
        };
        let auth = AuthService::from_file(users_file, settings)
            .with_context(|| format!("cannot load users from {}", users_file.display()))?;
        let audit = AuditLog::open(audit_db)
            .with_context(|| format!("cannot open the audit log {}", audit_db.display()))?;
        Ok(Self {
            backend,
            auth: Arc::new(auth),
            audit: Arc::new(audit),
            hub,
            metrics,
            park: Arc::new(park),
            drills: Arc::new(crate::drill::live::Drills::unavailable()),
        })
    }
}

/// One route: method, path (axum syntax), minimum role (`None` = public).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: Method,
    /// Path template, e.g. `/api/v1/alarms/{id}/ack`.
    pub path: &'static str,
    /// Minimum role; `None` for public routes.
    pub min_role: Option<Role>,
}

type Table = Vec<(RouteSpec, MethodRouter<AppState>)>;

fn r(
    method: Method,
    path: &'static str,
    min_role: Option<Role>,
    mr: MethodRouter<AppState>,
) -> (RouteSpec, MethodRouter<AppState>) {
    (
        RouteSpec {
            method,
            path,
            min_role,
        },
        mr,
    )
}

/// Every route with its minimum role. The router is built from this table.
pub fn route_table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Role::*;
    use handlers as h;
    let v = Some(Viewer);
    let o = Some(Operator);
    let e = Some(Engineer);
    let a = Some(Admin);
    let t: Table = vec![
        // console and public endpoints
        r(Method::GET, "/", None, get(console::index)),
        r(Method::GET, "/assets/{name}", None, get(console::asset)),
        r(Method::GET, "/healthz", None, get(h::healthz)),
        r(Method::GET, "/readyz", None, get(h::readyz)),
        r(Method::GET, "/metrics", v, get(h::metrics)),
        r(
            Method::GET,
            "/api/v1/openapi.json",
            None,
            get(console::openapi),
        ),
        // session
        r(Method::POST, "/api/v1/session/login", None, post(h::login)),
        r(Method::POST, "/api/v1/session/logout", v, post(h::logout)),
        r(Method::GET, "/api/v1/session", v, get(h::session)),
        // park, points
        r(Method::GET, "/api/v1/park", v, get(h::park)),
        r(Method::GET, "/api/v1/points", v, get(h::points)),
        r(Method::GET, "/api/v1/points/{tag}", v, get(h::point)),
        r(
            Method::GET,
            "/api/v1/points/{tag}/history",
            v,
            get(h::point_history),
        ),
        r(
            Method::POST,
            "/api/v1/points/{tag}/out-of-service",
            e,
            post(h::out_of_service),
        ),
        r(
            Method::POST,
            "/api/v1/points/{tag}/return-to-service",
            e,
            post(h::return_to_service),
        ),
        // alarms
        r(
            Method::GET,
            "/api/v1/alarms/active",
            v,
            get(h::alarms_active),
        ),
        r(
            Method::GET,
            "/api/v1/alarms/history",
            v,
            get(h::alarm_history),
        ),
        r(Method::POST, "/api/v1/alarms/{id}/ack", o, post(h::ack)),
        r(
            Method::POST,
            "/api/v1/alarms/{id}/shelve",
            o,
            post(h::shelve),
        ),
        r(
            Method::POST,
            "/api/v1/alarms/{id}/unshelve",
            o,
            post(h::unshelve),
        ),
        r(Method::POST, "/api/v1/alarms/{id}/close", o, post(h::close)),
        r(
            Method::GET,
            "/api/v1/alarms/{id}/deliveries",
            v,
            get(h::deliveries),
        ),
        r(Method::GET, "/api/v1/outbox", v, get(h::outbox)),
        // warnings, unmapped, KPIs
        r(Method::GET, "/api/v1/warnings", v, get(h::warnings)),
        r(
            Method::GET,
            "/api/v1/warnings/history",
            v,
            get(h::warning_history),
        ),
        r(Method::GET, "/api/v1/unmapped", v, get(h::unmapped)),
        r(Method::GET, "/api/v1/kpis", v, get(h::kpis)),
        // limits
        r(Method::GET, "/api/v1/limits/{tag}", v, get(h::limits_get)),
        r(Method::PUT, "/api/v1/limits/{tag}", e, put(h::limits_set)),
        r(
            Method::GET,
            "/api/v1/limits/{tag}/versions",
            v,
            get(h::limits_versions),
        ),
        r(
            Method::POST,
            "/api/v1/limits/{tag}/restore",
            e,
            post(h::limits_restore),
        ),
        r(
            Method::POST,
            "/api/v1/limits/{tag}/preview",
            e,
            post(h::limits_preview),
        ),
        r(
            Method::PUT,
            "/api/v1/class-limits",
            e,
            put(h::class_limits_set),
        ),
        r(
            Method::POST,
            "/api/v1/class-limits/preview",
            e,
            post(h::class_limits_preview),
        ),
        // audit
        r(Method::GET, "/api/v1/audit", e, get(h::audit_list)),
        r(Method::GET, "/api/v1/audit/verify", e, get(h::audit_verify)),
        // users
        r(Method::GET, "/api/v1/users", a, get(h::users)),
        r(Method::POST, "/api/v1/users", a, post(h::user_upsert)),
        r(
            Method::DELETE,
            "/api/v1/users/{username}",
            a,
            delete(h::user_remove),
        ),
        // drills (演练): engineers run them, operators acknowledge drill alarms
        r(Method::GET, "/api/v1/drills", v, get(drills::list)),
        r(Method::POST, "/api/v1/drills", e, post(drills::start)),
        r(Method::GET, "/api/v1/drills/{id}", v, get(drills::get)),
        r(
            Method::POST,
            "/api/v1/drills/{id}/pause",
            e,
            post(drills::pause),
        ),
        r(
            Method::POST,
            "/api/v1/drills/{id}/resume",
            e,
            post(drills::resume),
        ),
        r(
            Method::POST,
            "/api/v1/drills/{id}/stop",
            e,
            post(drills::stop),
        ),
        r(
            Method::POST,
            "/api/v1/drills/{id}/ack",
            o,
            post(drills::ack),
        ),
        r(
            Method::GET,
            "/api/v1/drills/{id}/report",
            v,
            get(drills::report),
        ),
        // live events
        r(Method::GET, "/api/v1/events", v, get(h::events)),
    ];
    t
}

/// The routes (without handlers), for tests and the OpenAPI check.
pub fn route_specs() -> Vec<RouteSpec> {
    route_table().into_iter().map(|(s, _)| s).collect()
}

/// Build the router.
pub fn router(state: AppState) -> Router {
    let mut router: Router<AppState> = Router::new();
    for (spec, mr) in route_table() {
        let mr = match spec.min_role {
            Some(role) => mr.route_layer(middleware::from_fn_with_state(
                (state.clone(), role),
                require_role,
            )),
            None => mr,
        };
        router = router.route(spec.path, mr);
    }
    router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serve `router` on `listener` until `shutdown` fires (plain HTTP; TLS terminates in
/// front or in a later rustls listener).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see /api/v1/openapi.json",
    )
}

/// The client's address (from the connection; `0.0.0.0` when unknown, e.g. in tests).
pub fn client_ip(req_ext: &axum::http::Extensions) -> IpAddr {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// A cookie's value from the `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who sent this request, if anyone: a bearer token, else a session cookie.
pub fn authenticate(auth: &AuthService, headers: &HeaderMap) -> Option<Principal> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = v.strip_prefix("Bearer ")?;
        return auth.bearer(token.trim());
    }
    auth.session(cookie(headers, SESSION_COOKIE)?)
}

async fn require_role(
    State((st, min)): State<(AppState, Role)>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(p) = authenticate(&st.auth, req.headers()) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "log in, or send `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && let Some(expected) = &p.csrf {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct_eq(sent, expected) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "missing or wrong X-CSRF-Token header (reload the console)",
            )
            .into_response();
        }
    }
    if p.role < min {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; you are {}",
                min.as_str(),
                p.role.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    st.metrics.inc(
        "parkguard_http_requests_total",
        "HTTP requests by route, method and status.",
        &[("route", &route), ("method", &method), ("status", &status)],
        1.0,
    );
    resp
}
