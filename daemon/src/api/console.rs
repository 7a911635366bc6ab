//! The operator console: static files embedded in the binary (no JavaScript build step).
//!
//! `daemon/assets/` holds `index.html`, `app.js`, `app.css` and the OpenAPI document. The
//! page loads no third-party code and nothing from the internet; a strict
//! Content-Security-Policy says so to the browser.

use super::error::{ApiError, P};
use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");
const OPENAPI: &str = include_str!("../../assets/openapi.json");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn with_headers(ct: &'static str, body: &'static str, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, cache),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// Every embedded asset: (URL name, content type, bytes). Used by the size check.
pub fn assets() -> [(&'static str, &'static str, &'static str); 3] {
    [
        ("index.html", "text/html; charset=utf-8", INDEX),
        ("app.js", "text/javascript; charset=utf-8", APP_JS),
        ("app.css", "text/css; charset=utf-8", APP_CSS),
    ]
}

pub(super) async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX, "no-cache")
}

pub(super) async fn asset(P(name): P<String>) -> Result<Response, ApiError> {
    match assets().iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => Ok(with_headers(ct, body, "no-cache")),
        None => Err(ApiError::not_found(format!("no asset `{name}`"))),
    }
}

pub(super) async fn openapi() -> Response {
    with_headers("application/json", OPENAPI, "no-cache")
}

/// The OpenAPI document as served.
pub fn openapi_text() -> &'static str {
    OPENAPI
}
