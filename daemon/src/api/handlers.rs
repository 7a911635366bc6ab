//! Route handlers. Each write: validate → backend (which applies it and publishes the
//! resulting state change on the hub, like any other change) → audit entry.

use super::backend::{Actor, AlarmCommand, AlarmFilter, AlarmView, LimitsDto, PointCommand};
use super::error::{ApiError, Body, P, Q};
use super::{AppState, CSRF_COOKIE, SESSION_COOKIE, client_ip, cookie};
use crate::audit::NewEntry;
use crate::auth::{LoginError, Principal};
use axum::Json;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use parkguard_rules::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Longest free text accepted (comments, reasons), characters.
const MAX_TEXT: usize = 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn actor(p: &Principal, ext: &Extensions) -> Actor {
    Actor {
        username: p.username.clone(),
        display_name: p.display_name.clone(),
        role: p.role,
        ip: client_ip(ext).to_string(),
    }
}

/// Check a free-text field: required (non-blank) or optional, and not too long.
fn text(field: &str, v: &str, required: bool, errs: &mut Vec<FieldError>) {
    if required && v.trim().is_empty() {
        errs.push(FieldError::new(field, "is required and must not be blank"));
    }
    if v.chars().count() > MAX_TEXT {
        errs.push(FieldError::new(
            field,
            format!("must have at most {MAX_TEXT} characters"),
        ));
    }
}

fn check(errs: Vec<FieldError>) -> Result<(), ApiError> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errs))
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn audit(
    st: &AppState,
    p: &Principal,
    ext: &Extensions,
    action: &str,
    target: &str,
    before: Value,
    after: Value,
    reason: &str,
) -> Result<(), ApiError> {
    let who = if p.via == "session" {
        p.username.clone()
    } else {
        format!("{} ({})", p.username, p.via)
    };
    let entry = NewEntry {
        actor: who,
        ip: client_ip(ext).to_string(),
        action: action.to_string(),
        target: target.to_string(),
        before,
        after,
        reason: reason.to_string(),
    };
    let log = st.audit.clone();
    let stored = tokio::task::spawn_blocking(move || log.append(entry, now_ms()))
        .await
        .map_err(|e| ApiError::internal("audit task", e))?
        .map_err(|e| ApiError::internal("audit append", e))?;
    st.metrics.inc(
        "parkguard_audit_entries_total",
        "Audit entries written, by action.",
        &[("action", action)],
        1.0,
    );
    st.hub.publish(
        "audit",
        &json!({"seq": stored.seq, "action": stored.action, "target": stored.target, "actor": stored.actor}),
    );
    Ok(())
}

fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------- health, metrics

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

pub(super) async fn readyz(State(st): State<AppState>) -> Response {
    let checks = st.backend.readiness().await;
    let ok = !checks.is_empty() && checks.iter().all(|c| c.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ok, "checks": checks}))).into_response()
}

pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    let mut out = String::with_capacity(8192);
    st.metrics.set(
        "parkguard_sse_clients",
        "Connected Server-Sent Events clients.",
        &[],
        st.hub.subscribers() as f64,
    );
    st.metrics.set(
        "parkguard_sessions",
        "Open console sessions.",
        &[],
        st.auth.session_count() as f64,
    );
    st.metrics.render(&mut out);
    st.backend.render_metrics(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

// ---------------------------------------------------------------- session

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct SessionOut<'a> {
    username: &'a str,
    display_name: &'a str,
    role: &'a str,
    csrf: Option<&'a str>,
}

fn session_out(p: &Principal) -> Value {
    to_value(&SessionOut {
        username: &p.username,
        display_name: &p.display_name,
        role: p.role.as_str(),
        csrf: p.csrf.as_deref(),
    })
}

pub(super) async fn login(
    State(st): State<AppState>,
    ext: Extensions,
    Body(b): Body<LoginBody>,
) -> Result<Response, ApiError> {
    if b.username.len() > 64 || b.password.len() > 1024 {
        return Err(ApiError::bad_request("username or password too long"));
    }
    let ip = client_ip(&ext);
    let auth = st.auth.clone();
    let user = b.username.clone();
    let res = tokio::task::spawn_blocking(move || auth.login(&b.username, &b.password, ip))
        .await
        .map_err(|e| ApiError::internal("login task", e))?;
    match res {
        Ok(ok) => {
            let secure = if st.auth.settings.tls { "; Secure" } else { "" };
            let idle = st.auth.settings.idle_timeout.as_secs();
            let c1 = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={idle}{secure}",
                ok.session_token
            );
            let c2 = format!(
                "{CSRF_COOKIE}={}; Path=/; SameSite=Strict; Max-Age={idle}{secure}",
                ok.csrf
            );
            audit(
                &st,
                &ok.principal,
                &ext,
                "session.login",
                &ok.principal.username,
                Value::Null,
                json!({"role": ok.principal.role.as_str()}),
                "",
            )
            .await?;
            let mut resp = Json(session_out(&ok.principal)).into_response();
            for c in [c1, c2] {
                if let Ok(v) = c.parse() {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            Ok(resp)
        }
        Err(LoginError::BadCredentials) => {
            st.metrics.inc(
                "parkguard_login_failures_total",
                "Failed console logins, by reason.",
                &[("reason", "bad_credentials")],
                1.0,
            );
            tracing::warn!(user = %user, ip = %ip, "login failed");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong username or password",
            ))
        }
        Err(LoginError::RateLimited(d)) => {
            st.metrics.inc(
                "parkguard_login_failures_total",
                "Failed console logins, by reason.",
                &[("reason", "rate_limited")],
                1.0,
            );
            tracing::warn!(user = %user, ip = %ip, "login rate-limited");
            let secs = d.as_secs().max(1);
            Err(ApiError {
                retry_after: Some(secs),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many failed logins; try again in {secs} s"),
                )
            })
        }
    }
}

pub(super) async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
) -> Result<Response, ApiError> {
    if let Some(t) = cookie(&headers, SESSION_COOKIE) {
        st.auth.logout(t);
    }
    audit(
        &st,
        &p,
        &ext,
        "session.logout",
        &p.username,
        Value::Null,
        Value::Null,
        "",
    )
    .await?;
    let mut resp = Json(json!({"ok": true})).into_response();
    for c in [
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        format!("{CSRF_COOKIE}=; Path=/; SameSite=Strict; Max-Age=0"),
    ] {
        if let Ok(v) = c.parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

pub(super) async fn session(axum::Extension(p): axum::Extension<Principal>) -> Json<Value> {
    Json(session_out(&p))
}

// ---------------------------------------------------------------- park, points

pub(super) async fn park(State(st): State<AppState>) -> Json<Value> {
    let park = &st.park;
    let enterprises: Vec<Value> = park
        .enterprises
        .iter()
        .map(|e| json!({"code": e.code, "name": e.name, "location": e.location, "boundary": e.boundary}))
        .collect();
    let points: Vec<Value> = park
        .table
        .points()
        .iter()
        .map(|p| {
            json!({"tag": p.tag, "name": p.name, "enterprise": p.enterprise, "kind": p.kind,
                   "gas": p.gas, "unit": p.unit.symbol(), "location": p.location})
        })
        .collect();
    Json(json!({
        "id": park.id, "name": park.name, "timezone": "Asia/Shanghai",
        "boundary": park.boundary, "enterprises": enterprises, "points": points,
    }))
}

pub(super) async fn points(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(to_value(&st.backend.points().await?)))
}

fn known_tag(st: &AppState, tag: &str) -> Result<(), ApiError> {
    if st.park.table.id(tag).is_none() {
        return Err(ApiError::not_found(format!("no point with tag `{tag}`")));
    }
    Ok(())
}

pub(super) async fn point(
    State(st): State<AppState>,
    P(tag): P<String>,
) -> Result<Json<Value>, ApiError> {
    known_tag(&st, &tag)?;
    Ok(Json(to_value(&st.backend.point(tag).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    /// Minutes back from now (default 60, max 10080 = 7 days).
    minutes: Option<u32>,
}

pub(super) async fn point_history(
    State(st): State<AppState>,
    P(tag): P<String>,
    Q(q): Q<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    known_tag(&st, &tag)?;
    let minutes = q.minutes.unwrap_or(60);
    if minutes == 0 || minutes > 10_080 {
        return Err(ApiError::bad_request(
            "`minutes` must be between 1 and 10080",
        ));
    }
    let to = now_ms();
    let from = to - i64::from(minutes) * 60_000;
    let samples = st.backend.point_history(tag.clone(), from, to).await?;
    Ok(Json(
        json!({"tag": tag, "from_ms": from, "to_ms": to, "samples": samples}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    reason: String,
}

async fn point_cmd(
    st: AppState,
    p: Principal,
    ext: Extensions,
    tag: String,
    cmd: PointCommand,
    action: &str,
    reason: &str,
) -> Result<Json<Value>, ApiError> {
    known_tag(&st, &tag)?;
    let mut errs = Vec::new();
    text("reason", reason, true, &mut errs);
    check(errs)?;
    let (before, after) = st
        .backend
        .point_command(tag.clone(), cmd, actor(&p, &ext))
        .await?;
    audit(
        &st,
        &p,
        &ext,
        action,
        &tag,
        json!({"state": before.state}),
        json!({"state": after.state}),
        reason,
    )
    .await?;
    Ok(Json(to_value(&after)))
}

pub(super) async fn out_of_service(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(tag): P<String>,
    Body(b): Body<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    let cmd = PointCommand::OutOfService {
        reason: b.reason.clone(),
    };
    point_cmd(st, p, ext, tag, cmd, "point.out_of_service", &b.reason).await
}

pub(super) async fn return_to_service(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(tag): P<String>,
    Body(b): Body<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    let cmd = PointCommand::ReturnToService {
        reason: b.reason.clone(),
    };
    point_cmd(st, p, ext, tag, cmd, "point.return_to_service", &b.reason).await
}

// ---------------------------------------------------------------- alarms

/// Sort for the operator: priority first, then newest first.
pub fn sort_alarms(v: &mut [AlarmView]) {
    v.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.raised_ms.cmp(&a.raised_ms))
            .then(b.id.cmp(&a.id))
    });
}

pub(super) async fn alarms_active(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut v = st.backend.alarms_active().await?;
    sort_alarms(&mut v);
    Ok(Json(to_value(&v)))
}

pub(super) async fn alarm_history(
    State(st): State<AppState>,
    Q(mut f): Q<AlarmFilter>,
) -> Result<Json<Value>, ApiError> {
    let limit = f.limit.unwrap_or(200);
    if limit == 0 || limit > 5000 {
        return Err(ApiError::bad_request("`limit` must be between 1 and 5000"));
    }
    if let (Some(a), Some(b)) = (f.from_ms, f.to_ms)
        && a > b
    {
        return Err(ApiError::bad_request("`from_ms` must not be after `to_ms`"));
    }
    f.limit = Some(limit);
    Ok(Json(to_value(&st.backend.alarm_history(f).await?)))
}

async fn alarm_cmd(
    st: AppState,
    p: Principal,
    ext: Extensions,
    id: u64,
    cmd: AlarmCommand,
    action: &str,
    reason: &str,
) -> Result<Json<Value>, ApiError> {
    let (before, after) = st
        .backend
        .alarm_command(id, cmd.clone(), actor(&p, &ext))
        .await?;
    audit(
        &st,
        &p,
        &ext,
        action,
        &format!("alarm {id} ({})", after.point),
        json!({"state": before.state}),
        json!({"state": after.state, "command": to_value(&cmd)}),
        reason,
    )
    .await?;
    Ok(Json(to_value(&after)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckBody {
    #[serde(default)]
    comment: String,
}

pub(super) async fn ack(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<u64>,
    Body(b): Body<AckBody>,
) -> Result<Json<Value>, ApiError> {
    let mut errs = Vec::new();
    text("comment", &b.comment, false, &mut errs);
    check(errs)?;
    let cmd = AlarmCommand::Ack {
        comment: b.comment.clone(),
    };
    alarm_cmd(st, p, ext, id, cmd, "alarm.ack", &b.comment).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShelveBody {
    duration_s: u64,
    reason: String,
}

pub(super) async fn shelve(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<u64>,
    Body(b): Body<ShelveBody>,
) -> Result<Json<Value>, ApiError> {
    let mut errs = Vec::new();
    text("reason", &b.reason, true, &mut errs);
    let max = st.backend.max_shelve();
    if b.duration_s == 0 || b.duration_s > max.as_secs() {
        errs.push(FieldError::new(
            "duration_s",
            format!(
                "must be between 1 and {} s (the configured maximum)",
                max.as_secs()
            ),
        ));
    }
    check(errs)?;
    let cmd = AlarmCommand::Shelve {
        duration: Duration::from_secs(b.duration_s),
        reason: b.reason.clone(),
    };
    alarm_cmd(st, p, ext, id, cmd, "alarm.shelve", &b.reason).await
}

pub(super) async fn unshelve(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<u64>,
    Body(b): Body<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    let mut errs = Vec::new();
    text("reason", &b.reason, true, &mut errs);
    check(errs)?;
    let cmd = AlarmCommand::Unshelve {
        reason: b.reason.clone(),
    };
    alarm_cmd(st, p, ext, id, cmd, "alarm.unshelve", &b.reason).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CloseBody {
    cause: String,
    action: String,
    /// 审核人; the acting user when left out.
    #[serde(default)]
    reviewer: Option<String>,
}

pub(super) async fn close(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<u64>,
    Body(b): Body<CloseBody>,
) -> Result<Json<Value>, ApiError> {
    let mut errs = Vec::new();
    text("cause", &b.cause, true, &mut errs);
    text("action", &b.action, true, &mut errs);
    check(errs)?;
    let reason = format!("{} / {}", b.cause, b.action);
    let cmd = AlarmCommand::Close {
        cause: b.cause,
        action: b.action,
        reviewer: b.reviewer,
    };
    alarm_cmd(st, p, ext, id, cmd, "alarm.close", &reason).await
}

pub(super) async fn deliveries(
    State(st): State<AppState>,
    P(id): P<u64>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.backend.deliveries(id).await?))
}

pub(super) async fn outbox(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.backend.outbox().await?))
}

// ---------------------------------------------------------------- warnings, unmapped, kpis

pub(super) async fn warnings(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(to_value(&st.backend.warnings().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitQuery {
    limit: Option<u32>,
}

pub(super) async fn warning_history(
    State(st): State<AppState>,
    Q(q): Q<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(200);
    if limit == 0 || limit > 5000 {
        return Err(ApiError::bad_request("`limit` must be between 1 and 5000"));
    }
    Ok(Json(to_value(&st.backend.warning_history(limit).await?)))
}

pub(super) async fn unmapped(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(to_value(&st.backend.unmapped().await?)))
}

pub(super) async fn kpis(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.backend.kpis().await?))
}

// ---------------------------------------------------------------- limits

pub(super) async fn limits_get(
    State(st): State<AppState>,
    P(tag): P<String>,
) -> Result<Json<Value>, ApiError> {
    known_tag(&st, &tag)?;
    let versions = st.backend.limit_versions(tag.clone()).await?;
    let current = versions
        .last()
        .ok_or_else(|| ApiError::not_found(format!("no limits for `{tag}`")))?;
    let p = st.park.table.by_tag(&tag);
    Ok(Json(json!({
        "tag": tag,
        "unit": p.map(|p| p.unit.symbol()),
        "range": p.map(|p| [p.range_lo, p.range_hi]),
        "kind": p.map(|p| p.kind),
        "current": current,
    })))
}

pub(super) async fn limits_versions(
    State(st): State<AppState>,
    P(tag): P<String>,
) -> Result<Json<Value>, ApiError> {
    known_tag(&st, &tag)?;
    Ok(Json(to_value(&st.backend.limit_versions(tag).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetLimitsBody {
    limits: LimitsDto,
    reason: String,
    /// Refuse (409) if someone changed the limits since this version was read.
    expected_version: Option<u32>,
}

#[allow(clippy::too_many_arguments)]
async fn apply_limits(
    st: AppState,
    p: Principal,
    ext: Extensions,
    tag: String,
    dto: LimitsDto,
    expected: Option<u32>,
    reason: String,
    action: &str,
) -> Result<Json<Value>, ApiError> {
    let point = st
        .park
        .table
        .by_tag(&tag)
        .ok_or_else(|| ApiError::not_found(format!("no point with tag `{tag}`")))?
        .clone();
    let mut errs = Vec::new();
    text("reason", &reason, true, &mut errs);
    let limits = match super::limits::validate_limits(&point, &dto) {
        Ok(l) => Some(l),
        Err(mut e) => {
            errs.append(&mut e);
            None
        }
    };
    check(errs)?;
    let Some(limits) = limits else {
        return Err(ApiError::bad_request("invalid limits"));
    };
    let (before, after) = st
        .backend
        .set_limits(
            tag.clone(),
            limits,
            expected,
            reason.clone(),
            actor(&p, &ext),
        )
        .await?;
    audit(
        &st,
        &p,
        &ext,
        action,
        &tag,
        json!({"version": before.version, "limits": before.limits}),
        json!({"version": after.version, "limits": after.limits}),
        &reason,
    )
    .await?;
    Ok(Json(to_value(&after)))
}

pub(super) async fn limits_set(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(tag): P<String>,
    Body(b): Body<SetLimitsBody>,
) -> Result<Json<Value>, ApiError> {
    apply_limits(
        st,
        p,
        ext,
        tag,
        b.limits,
        b.expected_version,
        b.reason,
        "limits.set",
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RestoreBody {
    version: u32,
    reason: String,
}

pub(super) async fn limits_restore(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(tag): P<String>,
    Body(b): Body<RestoreBody>,
) -> Result<Json<Value>, ApiError> {
    known_tag(&st, &tag)?;
    let versions = st.backend.limit_versions(tag.clone()).await?;
    let old = versions
        .iter()
        .find(|v| v.version == b.version)
        .ok_or_else(|| {
            ApiError::not_found(format!("`{tag}` has no limits version {}", b.version))
        })?;
    let current = versions.last().map(|v| v.version);
    let reason = format!("restore version {}: {}", b.version, b.reason);
    if b.reason.trim().is_empty() {
        return Err(ApiError::invalid(vec![FieldError::new(
            "reason",
            "is required and must not be blank",
        )]));
    }
    apply_limits(
        st,
        p,
        ext,
        tag,
        old.limits.clone(),
        current,
        reason,
        "limits.restore",
    )
    .await
}

// ---------------------------------------------------------------- class changes, previews

/// Longest history a backtest preview replays, hours (one week).
const MAX_PREVIEW_HOURS: u32 = 168;

fn preview_hours(h: Option<u32>) -> Result<u32, ApiError> {
    let h = h.unwrap_or(24);
    if h == 0 || h > MAX_PREVIEW_HOURS {
        return Err(ApiError::invalid(vec![FieldError::new(
            "hours",
            format!("must be between 1 and {MAX_PREVIEW_HOURS}"),
        )]));
    }
    Ok(h)
}

/// Validate a class change against every matching point's current limits.
async fn class_changes(
    st: &AppState,
    selector: &super::limits::ClassSelector,
    set: &super::limits::LimitsPatch,
    include_unchanged: bool,
) -> Result<Vec<super::limits::ClassChange>, ApiError> {
    let mut current = std::collections::HashMap::new();
    for p in st
        .park
        .table
        .points()
        .iter()
        .filter(|p| selector.matches(p))
    {
        if let Some(v) = st.backend.limit_versions(p.tag.clone()).await?.pop() {
            current.insert(p.tag.clone(), v.limits);
        }
    }
    super::limits::validate_class(
        &st.park.table,
        |p| {
            current
                .get(&p.tag)
                .cloned()
                .unwrap_or_else(|| LimitsDto::from(&p.limits))
        },
        selector,
        set,
        include_unchanged,
    )
    .map_err(ApiError::invalid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClassLimitsBody {
    selector: super::limits::ClassSelector,
    set: super::limits::LimitsPatch,
    reason: String,
}

pub(super) async fn class_limits_set(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    Body(b): Body<ClassLimitsBody>,
) -> Result<Json<Value>, ApiError> {
    let mut errs = Vec::new();
    text("reason", &b.reason, true, &mut errs);
    check(errs)?;
    let changes = class_changes(&st, &b.selector, &b.set, false).await?;
    if changes.is_empty() {
        // PUT is idempotent: the class has these limits already; nothing to apply or audit.
        return Ok(Json(json!({"selector": b.selector, "points": []})));
    }
    let applied = st
        .backend
        .set_limits_many(
            changes
                .iter()
                .map(|c| (c.tag.clone(), c.limits.clone()))
                .collect(),
            b.reason.clone(),
            actor(&p, &ext),
        )
        .await?;
    let mut before = serde_json::Map::new();
    let mut after = serde_json::Map::new();
    for (bv, av) in &applied {
        before.insert(
            bv.tag.clone(),
            json!({"version": bv.version, "limits": bv.limits}),
        );
        after.insert(
            av.tag.clone(),
            json!({"version": av.version, "limits": av.limits}),
        );
    }
    let target = format!(
        "class {}",
        serde_json::to_string(&b.selector).unwrap_or_default()
    );
    audit(
        &st,
        &p,
        &ext,
        "limits.class",
        &target,
        Value::Object(before),
        json!({"set": b.set, "points": after}),
        &b.reason,
    )
    .await?;
    Ok(Json(json!({
        "selector": b.selector,
        "points": applied.iter().map(|(_, a)| to_value(a)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClassPreviewBody {
    selector: super::limits::ClassSelector,
    set: super::limits::LimitsPatch,
    hours: Option<u32>,
}

pub(super) async fn class_limits_preview(
    State(st): State<AppState>,
    Body(b): Body<ClassPreviewBody>,
) -> Result<Json<Value>, ApiError> {
    let hours = preview_hours(b.hours)?;
    let changes = class_changes(&st, &b.selector, &b.set, true).await?;
    let candidate = changes.into_iter().map(|c| (c.tag, c.limits)).collect();
    Ok(Json(st.backend.backtest_limits(candidate, hours).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PreviewBody {
    limits: LimitsDto,
    hours: Option<u32>,
}

pub(super) async fn limits_preview(
    State(st): State<AppState>,
    P(tag): P<String>,
    Body(b): Body<PreviewBody>,
) -> Result<Json<Value>, ApiError> {
    let hours = preview_hours(b.hours)?;
    let point = st
        .park
        .table
        .by_tag(&tag)
        .ok_or_else(|| ApiError::not_found(format!("no point with tag `{tag}`")))?;
    let limits = super::limits::validate_limits(point, &b.limits).map_err(ApiError::invalid)?;
    Ok(Json(
        st.backend
            .backtest_limits(vec![(tag, limits)], hours)
            .await?,
    ))
}

// ---------------------------------------------------------------- audit, users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

pub(super) async fn audit_list(
    State(st): State<AppState>,
    Q(q): Q<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let log = st.audit.clone();
    let v = tokio::task::spawn_blocking(move || log.list(limit, q.before))
        .await
        .map_err(|e| ApiError::internal("audit task", e))?
        .map_err(|e| ApiError::internal("audit list", e))?;
    Ok(Json(to_value(&v)))
}

pub(super) async fn audit_verify(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let log = st.audit.clone();
    let v = tokio::task::spawn_blocking(move || log.verify())
        .await
        .map_err(|e| ApiError::internal("audit task", e))?
        .map_err(|e| ApiError::internal("audit verify", e))?;
    Ok(Json(to_value(&v)))
}

pub(super) async fn users(State(st): State<AppState>) -> Json<Value> {
    let v: Vec<Value> = st
        .auth
        .users()
        .iter()
        .map(|u| {
            json!({"username": u.username, "display_name": u.display_name, "role": u.role,
                   "demo": u.demo, "tokens": u.token.iter().map(|t| &t.name).collect::<Vec<_>>()})
        })
        .collect();
    Json(Value::Array(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserBody {
    username: String,
    #[serde(default)]
    display_name: String,
    role: crate::auth::Role,
    password: String,
}

pub(super) async fn user_upsert(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    Body(b): Body<UserBody>,
) -> Result<Json<Value>, ApiError> {
    if b.username == p.username && b.role < p.role {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot lower your own role; ask another admin",
        ));
    }
    let auth = st.auth.clone();
    let (name, display, role, pw) = (
        b.username.clone(),
        b.display_name.clone(),
        b.role,
        b.password,
    );
    let before = tokio::task::spawn_blocking(move || auth.upsert_user(&name, &display, role, &pw))
        .await
        .map_err(|e| ApiError::internal("user task", e))?
        .map_err(|e| match e {
            crate::auth::AuthError::Invalid(m) => {
                ApiError::invalid(vec![FieldError::new("password", m)])
            }
            e => ApiError::internal("users file", e),
        })?;
    audit(
        &st,
        &p,
        &ext,
        if before.is_some() {
            "user.update"
        } else {
            "user.add"
        },
        &b.username,
        json!({"role": before}),
        json!({"role": b.role}),
        "",
    )
    .await?;
    Ok(Json(json!({"username": b.username, "role": b.role})))
}

pub(super) async fn user_remove(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(username): P<String>,
) -> Result<Json<Value>, ApiError> {
    if username == p.username {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot remove yourself; ask another admin",
        ));
    }
    let auth = st.auth.clone();
    let name = username.clone();
    let role = tokio::task::spawn_blocking(move || auth.remove_user(&name))
        .await
        .map_err(|e| ApiError::internal("user task", e))?
        .map_err(|e| match e {
            crate::auth::AuthError::Invalid(m) => ApiError::not_found(m),
            e => ApiError::internal("users file", e),
        })?;
    audit(
        &st,
        &p,
        &ext,
        "user.remove",
        &username,
        json!({"role": role}),
        Value::Null,
        "",
    )
    .await?;
    Ok(Json(json!({"removed": username})))
}

// ---------------------------------------------------------------- live events

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Same as the `Last-Event-ID` header (for clients that cannot set headers).
    last_event_id: Option<u64>,
}

/// Most events coalesced into one write to a client.
const MAX_BATCH: usize = 512;
/// A comment line this often keeps idle connections (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const RESET: &[u8] = b"event: reset\ndata: {}\n\n";

/// Server-Sent Events. Each event is formatted once by the hub; what is ready for a client
/// is written in one chunk (one syscall under load instead of one per event).
pub(super) async fn events(
    State(st): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<EventsQuery>,
) -> Result<Response, ApiError> {
    let header_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("`Last-Event-ID` must be an event id"))?,
        ),
        None => None,
    };
    let last = header_id.or(q.last_event_id);
    let sub = st.hub.subscribe(last);
    let mut first = format!(
        "event: hello\ndata: {}\n\n",
        json!({"next_id": st.hub.next_id()})
    )
    .into_bytes();
    if sub.reset {
        first.extend_from_slice(RESET);
    }
    for e in &sub.replay {
        first.extend_from_slice(&e.wire);
    }
    let last_sent = sub.replay.last().map(|e| e.id).or(last).unwrap_or(0);
    struct S {
        first: Option<Vec<u8>>,
        rx: tokio::sync::broadcast::Receiver<Arc<super::events::Event>>,
        last: u64,
        metrics: Arc<super::Metrics>,
        closed: bool,
    }
    impl S {
        fn lagged(&self, n: u64) {
            self.metrics.inc(
                "parkguard_sse_lagged_total",
                "Events an SSE client missed because it fell behind (it then reloads).",
                &[],
                n as f64,
            );
        }
        fn take(&mut self, e: &super::events::Event, buf: &mut Vec<u8>) {
            // Replay and live may overlap by a few events: send each id once.
            if e.id > self.last {
                self.last = e.id;
                buf.extend_from_slice(&e.wire);
            }
        }
    }
    let state = S {
        first: Some(first),
        rx: sub.rx,
        last: last_sent,
        metrics: st.metrics.clone(),
        closed: false,
    };
    let stream = stream::unfold(state, |mut s| async move {
        if let Some(b) = s.first.take() {
            return Some((Ok::<_, Infallible>(axum::body::Bytes::from(b)), s));
        }
        if s.closed {
            return None;
        }
        let mut buf = Vec::new();
        // An empty chunk must never be sent: wait until something is to be written.
        while buf.is_empty() {
            match tokio::time::timeout(KEEP_ALIVE, s.rx.recv()).await {
                Err(_) => buf.extend_from_slice(b": keep-alive\n\n"),
                Ok(Ok(e)) => s.take(&e, &mut buf),
                Ok(Err(RecvError::Lagged(n))) => {
                    s.lagged(n);
                    buf.extend_from_slice(RESET);
                }
                Ok(Err(RecvError::Closed)) => return None,
            }
            for _ in 0..MAX_BATCH {
                match s.rx.try_recv() {
                    Ok(e) => s.take(&e, &mut buf),
                    Err(TryRecvError::Lagged(n)) => {
                        s.lagged(n);
                        buf.extend_from_slice(RESET);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        s.closed = true;
                        break;
                    }
                }
            }
        }
        Some((Ok(axum::body::Bytes::from(buf)), s))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
