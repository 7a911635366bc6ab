//! Drill endpoints (`/api/v1/drills…`) over [`crate::drill::live::Drills`]. Starting,
//! pausing, resuming and stopping needs the engineer role; acknowledging a drill alarm the
//! operator role, as in real life. Every write is audited with the drill id.

use super::AppState;
use super::error::{ApiError, Body, P, Q};
use super::handlers::audit;
use crate::auth::Principal;
use crate::drill::live::{DrillError, StartRequest};
use crate::drill::runner;
use axum::Json;
use axum::extract::State;
use axum::http::{Extensions, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

impl From<DrillError> for ApiError {
    fn from(e: DrillError) -> Self {
        match e {
            DrillError::NotFound(m) => ApiError::not_found(m),
            DrillError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            DrillError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            DrillError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
        }
    }
}

fn to_value(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(super) async fn start(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    Body(b): Body<StartRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let status = st.drills.start(b.clone(), &p.username).await?;
    audit(
        &st,
        &p,
        &ext,
        "drill.start",
        &status.id,
        Value::Null,
        to_value(&b),
        "",
    )
    .await?;
    Ok((StatusCode::CREATED, Json(to_value(&status))))
}

pub(super) async fn list(State(st): State<AppState>) -> Json<Value> {
    Json(json!({ "drills": st.drills.list() }))
}

pub(super) async fn get(
    State(st): State<AppState>,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(to_value(&st.drills.get(&id)?)))
}

async fn control(
    st: AppState,
    p: Principal,
    ext: Extensions,
    id: String,
    action: &str,
) -> Result<Json<Value>, ApiError> {
    let out = match action {
        "drill.pause" => to_value(&st.drills.pause(&id).await?),
        "drill.resume" => to_value(&st.drills.resume(&id).await?),
        _ => to_value(&st.drills.stop(&id).await?),
    };
    audit(&st, &p, &ext, action, &id, Value::Null, Value::Null, "").await?;
    Ok(Json(out))
}

pub(super) async fn pause(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    control(st, p, ext, id, "drill.pause").await
}

pub(super) async fn resume(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    control(st, p, ext, id, "drill.resume").await
}

pub(super) async fn stop(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    control(st, p, ext, id, "drill.stop").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckBody {
    /// Alarm id (`TAG:HH`) or source tag.
    alarm: String,
    #[serde(default)]
    comment: String,
}

pub(super) async fn ack(
    State(st): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    ext: Extensions,
    P(id): P<String>,
    Body(b): Body<AckBody>,
) -> Result<Json<Value>, ApiError> {
    if b.alarm.trim().is_empty() || b.comment.chars().count() > 1000 {
        return Err(ApiError::invalid(vec![parkguard_rules::FieldError::new(
            "alarm",
            "name the drill alarm (TAG:CONDITION); comments at most 1000 characters",
        )]));
    }
    let comment = (!b.comment.is_empty()).then(|| b.comment.clone());
    let n = st.drills.ack(&id, &b.alarm, &p.username, comment).await?;
    audit(
        &st,
        &p,
        &ext,
        "drill.alarm.ack",
        &format!("{id}/{}", b.alarm),
        Value::Null,
        json!({"acknowledged": n}),
        &b.comment,
    )
    .await?;
    Ok(Json(
        json!({"drill": id, "alarm": b.alarm, "acknowledged": n}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    /// `json` (default) or `html`.
    #[serde(default)]
    format: Option<String>,
}

pub(super) async fn report(
    State(st): State<AppState>,
    P(id): P<String>,
    Q(q): Q<ReportQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let r = st.drills.report(&id)?;
    let wants_html = match q.format.as_deref() {
        Some("html") => true,
        Some("json") | None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.starts_with("text/html")),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format `{other}`: use json or html"
            )));
        }
    };
    if wants_html {
        Ok((
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            runner::html(&r),
        )
            .into_response())
    } else {
        Ok(Json(to_value(&r)).into_response())
    }
}
