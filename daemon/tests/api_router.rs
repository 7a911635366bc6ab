//! The HTTP API through the router (in process, no socket) over the engine test double:
//! every endpoint × every role, every bad-input class, limits versions and restore,
//! the audit chain, SSE resumption, the OpenAPI document against the routes.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use parkguard::api::backend::{Grade, Priority, ReadyCheck};
use parkguard::api::testing::TestApp;
use parkguard::api::{route_specs, router};
use parkguard::auth::Role;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

const USERS: &[(&str, Role, &str)] = &[
    ("view", Role::Viewer, "viewer-pass-123"),
    ("oper", Role::Operator, "operator-pass-123"),
    ("eng", Role::Engineer, "engineer-pass-123"),
    ("adm", Role::Admin, "admin-pass-123"),
];

fn app() -> TestApp {
    TestApp::new(USERS).expect("test app")
}

/// A logged-in console user: session cookie + CSRF token.
#[derive(Clone)]
struct Sess {
    cookie: String,
    csrf: String,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

async fn send(r: &Router, req: Request<Body>) -> Resp {
    let resp = r.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let bytes = if is_sse {
        Default::default()
    } else {
        resp.into_body().collect().await.expect("body").to_bytes()
    };
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

fn req(method: Method, path: &str, s: Option<&Sess>, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(s) = s {
        b = b
            .header(header::COOKIE, &s.cookie)
            .header("x-csrf-token", &s.csrf);
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .expect("request"),
        None => b.body(Body::empty()).expect("request"),
    }
}

async fn login(r: &Router, user: &str, pw: &str) -> Sess {
    let resp = send(
        r,
        req(
            Method::POST,
            "/api/v1/session/login",
            None,
            Some(json!({"username": user, "password": pw})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "login {user}: {}", resp.text);
    let cookies: Vec<String> = resp
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("pg_session="))
        .expect("session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(!session.contains("Secure"), "no TLS here: {session}");
    let csrf_cookie = cookies
        .iter()
        .find(|c| c.starts_with("pg_csrf="))
        .expect("csrf cookie");
    assert!(
        !csrf_cookie.contains("HttpOnly"),
        "the console must read it"
    );
    let kv = |c: &str| c.split(';').next().expect("pair").to_string();
    let csrf = resp.body["csrf"]
        .as_str()
        .expect("csrf in body")
        .to_string();
    assert_eq!(kv(csrf_cookie), format!("pg_csrf={csrf}"));
    Sess {
        cookie: format!("{}; {}", kv(session), kv(csrf_cookie)),
        csrf,
    }
}

/// A body that is valid for the route, so that allowed roles get past validation.
fn valid_body(method: &Method, path: &str) -> Option<Value> {
    if *method == Method::GET {
        return None;
    }
    Some(match path {
        "/api/v1/session/login" => json!({"username": "view", "password": "viewer-pass-123"}),
        "/api/v1/session/logout" => return None,
        "/api/v1/users" => {
            json!({"username": "tmp.user", "display_name": "临时", "role": "viewer", "password": "temporary-pass-123"})
        }
        "/api/v1/drills" => json!({"scenario": "walk", "speed": "1x"}),
        "/api/v1/drills/{id}/ack" => json!({"alarm": "E01-GT-101", "comment": "演练"}),
        p if p.ends_with("/ack") => json!({"comment": "已通知现场"}),
        p if p.ends_with("/shelve") => json!({"duration_s": 600, "reason": "检修"}),
        p if p.ends_with("/unshelve") => json!({"reason": "检修完成"}),
        p if p.ends_with("/close") => json!({"cause": "误报", "action": "复位"}),
        p if p.ends_with("/out-of-service") || p.ends_with("/return-to-service") => {
            json!({"reason": "标定"})
        }
        p if p.ends_with("/restore") => json!({"version": 1, "reason": "恢复原值"}),
        "/api/v1/class-limits" => json!({
            "selector": {"enterprise": "E01", "kind": "combustible"},
            "set": {"on_delay_s": 3},
            "reason": "按GB/T 50493复核"
        }),
        "/api/v1/class-limits/preview" => json!({
            "selector": {"enterprise": "E01", "kind": "combustible"},
            "set": {"on_delay_s": 3}
        }),
        p if p.ends_with("/preview") => json!({
            "limits": {"hh": 0.68, "h": 0.34, "l": null, "ll": null, "deadband": 0.05, "on_delay_s": 2, "off_delay_s": 0},
            "hours": 1
        }),
        p if p.starts_with("/api/v1/limits/") => json!({
            "limits": {"hh": 0.68, "h": 0.34, "l": null, "ll": null, "deadband": 0.05, "on_delay_s": 2, "off_delay_s": 0},
            "reason": "按GB/T 50493复核"
        }),
        _ => json!({}),
    })
}

fn concrete(path: &str, alarm: u64) -> String {
    path.replace("{tag}", "E01-GT-101")
        .replace("{id}", &alarm.to_string())
        .replace("{name}", "app.js")
        .replace("{username}", "tmp.user")
}

#[tokio::test]
async fn every_endpoint_answers_each_role_as_declared() {
    let app = app();
    // Recorded history for the backtest previews.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    for tag in ["E01-GT-101", "E01-GT-102"] {
        for i in 0..10 {
            app.backend.set_value(
                tag,
                0.1 + f64::from(i) * 0.05,
                now - 600_000 + i64::from(i) * 60_000,
            );
        }
    }
    let r = app.router();
    let mut sessions = Vec::new();
    for (u, role, pw) in USERS {
        sessions.push((*role, login(&r, u, pw).await));
    }
    let specs = route_specs();
    assert!(specs.len() >= 30, "{} routes", specs.len());
    for spec in &specs {
        let Some(min) = spec.min_role else {
            // Public: answers without a session.
            let resp = send(
                &r,
                req(
                    spec.method.clone(),
                    &concrete(spec.path, 1),
                    None,
                    valid_body(&spec.method, spec.path),
                ),
            )
            .await;
            assert!(
                resp.status.is_success(),
                "{} {} public: {} {}",
                spec.method,
                spec.path,
                resp.status,
                resp.text
            );
            continue;
        };
        // Not logged in → 401.
        let alarm =
            app.backend
                .raise_alarm("E01-GT-101", "h", Priority::High, 0.5, Some(0.34), None);
        let path = concrete(spec.path, alarm);
        let resp = send(
            &r,
            req(
                spec.method.clone(),
                &path,
                None,
                valid_body(&spec.method, spec.path),
            ),
        )
        .await;
        assert_eq!(
            resp.status,
            StatusCode::UNAUTHORIZED,
            "{} {path}",
            spec.method
        );
        assert_eq!(resp.body["error"], "unauthenticated");
        for (role, sess) in &sessions {
            // A fresh alarm per call, so that state-changing commands are possible.
            let alarm =
                app.backend
                    .raise_alarm("E01-GT-101", "h", Priority::High, 0.5, Some(0.34), None);
            if spec.path.ends_with("/unshelve") {
                let b = r.clone();
                let eng = &sessions[2].1;
                let s = send(
                    &b,
                    req(
                        Method::POST,
                        &format!("/api/v1/alarms/{alarm}/shelve"),
                        Some(eng),
                        valid_body(&Method::POST, "/shelve"),
                    ),
                )
                .await;
                assert_eq!(s.status, StatusCode::OK, "{}", s.text);
            }
            if spec.path.ends_with("{username}") {
                let adm = &sessions[3].1;
                let s = send(
                    &r,
                    req(
                        Method::POST,
                        "/api/v1/users",
                        Some(adm),
                        valid_body(&Method::POST, "/api/v1/users"),
                    ),
                )
                .await;
                assert_eq!(s.status, StatusCode::OK, "{}", s.text);
            }
            if spec.path.ends_with("/return-to-service") {
                let eng = &sessions[2].1;
                let _ = send(
                    &r,
                    req(
                        Method::POST,
                        "/api/v1/points/E01-GT-101/out-of-service",
                        Some(eng),
                        valid_body(&Method::POST, "/out-of-service"),
                    ),
                )
                .await;
            }
            if spec.path.ends_with("/out-of-service") {
                let eng = &sessions[2].1;
                let _ = send(
                    &r,
                    req(
                        Method::POST,
                        "/api/v1/points/E01-GT-101/return-to-service",
                        Some(eng),
                        valid_body(&Method::POST, "/return-to-service"),
                    ),
                )
                .await;
            }
            let mut path = concrete(spec.path, alarm);
            if spec.path.starts_with("/api/v1/drills/{id}") {
                // A fresh drill per call (running at 1x), paused first for `resume`.
                let eng = &sessions[2].1;
                let id = format!("walk-{alarm}");
                let s = send(
                    &r,
                    req(
                        Method::POST,
                        "/api/v1/drills",
                        Some(eng),
                        Some(json!({"id": id, "scenario": "walk", "speed": "1x"})),
                    ),
                )
                .await;
                assert_eq!(s.status, StatusCode::CREATED, "{}", s.text);
                if spec.path.ends_with("/resume") {
                    let s = send(
                        &r,
                        req(
                            Method::POST,
                            &format!("/api/v1/drills/{id}/pause"),
                            Some(eng),
                            Some(json!({})),
                        ),
                    )
                    .await;
                    assert_eq!(s.status, StatusCode::OK, "{}", s.text);
                }
                if spec.path.ends_with("/ack") {
                    // The gas on-delay (2 s) passes before the drill alarm is up.
                    let mut tries = 0;
                    loop {
                        let s = send(
                            &r,
                            req(
                                Method::GET,
                                &format!("/api/v1/drills/{id}"),
                                Some(eng),
                                None,
                            ),
                        )
                        .await;
                        if s.text.contains("\"unacknowledged\"") {
                            break;
                        }
                        tries += 1;
                        assert!(tries < 100, "no drill alarm: {}", s.text);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
                path = spec.path.replace("{id}", &id);
            }
            // Logging out ends the session: use a fresh one for that route.
            let own;
            let sess = if spec.path.ends_with("/logout") {
                let (u, _, pw) = USERS.iter().find(|(_, r, _)| r == role).expect("user");
                own = login(&r, u, pw).await;
                &own
            } else {
                sess
            };
            let resp = send(
                &r,
                req(
                    spec.method.clone(),
                    &path,
                    Some(sess),
                    valid_body(&spec.method, spec.path),
                ),
            )
            .await;
            if *role < min {
                assert_eq!(
                    resp.status,
                    StatusCode::FORBIDDEN,
                    "{} {path} as {role:?} must be forbidden: {}",
                    spec.method,
                    resp.text
                );
                assert_eq!(resp.body["error"], "forbidden");
            } else {
                assert!(
                    resp.status.is_success(),
                    "{} {path} as {role:?}: {} {}",
                    spec.method,
                    resp.status,
                    resp.text
                );
            }
        }
    }
}

#[tokio::test]
async fn csrf_token_is_required_for_session_writes_but_not_bearer() {
    let app = app();
    let r = app.router();
    let s = login(&r, "oper", "operator-pass-123").await;
    let id = app
        .backend
        .raise_alarm("E02-GT-301", "h", Priority::High, 30.0, Some(25.0), None);
    let no_csrf = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/alarms/{id}/ack"))
        .header(header::COOKIE, &s.cookie)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"comment":""}"#))
        .expect("request");
    let resp = send(&r, no_csrf).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.body["error"], "csrf");
    let bad = Sess {
        csrf: "0".repeat(64),
        ..s.clone()
    };
    let resp = send(
        &r,
        req(
            Method::POST,
            &format!("/api/v1/alarms/{id}/ack"),
            Some(&bad),
            Some(json!({})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    // Nothing happened to the alarm.
    let active = send(
        &r,
        req(Method::GET, "/api/v1/alarms/active", Some(&s), None),
    )
    .await;
    assert_eq!(active.body[0]["state"], "unack");

    // Bearer tokens are not cookies: no CSRF token needed.
    let users = app.dir.path().join("users.toml");
    let token = parkguard::auth::add_token(&users, "oper", "scada-bridge").expect("token");
    let auth = parkguard::auth::AuthService::from_file(&users, Default::default()).expect("auth");
    let mut state = app.state.clone();
    state.auth = std::sync::Arc::new(auth);
    let r2 = router(state);
    let with_token = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/alarms/{id}/ack"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"comment":"via SCADA"}"#))
        .expect("request");
    let resp = send(&r2, with_token).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(resp.body["state"], "ack");
    let wrong = Request::builder()
        .uri("/api/v1/points")
        .header(header::AUTHORIZATION, "Bearer not-a-token")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&r2, wrong).await.status, StatusCode::UNAUTHORIZED);
    // The audit log names the token.
    let eng = login(&r2, "eng", "engineer-pass-123").await;
    let audit = send(&r2, req(Method::GET, "/api/v1/audit", Some(&eng), None)).await;
    let acks: Vec<&Value> = audit
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["action"] == "alarm.ack")
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["actor"], "oper (token:scada-bridge)");
}

#[tokio::test]
async fn login_is_rate_limited_per_user() {
    let app = app();
    let r = app.router();
    for i in 0..5 {
        let resp = send(
            &r,
            req(
                Method::POST,
                "/api/v1/session/login",
                None,
                Some(json!({"username": "oper", "password": format!("guess{i}")})),
            ),
        )
        .await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert_eq!(resp.body["message"], "wrong username or password");
    }
    // Even the right password is refused now.
    let resp = send(
        &r,
        req(
            Method::POST,
            "/api/v1/session/login",
            None,
            Some(json!({"username": "oper", "password": "operator-pass-123"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS, "{}", resp.text);
    let retry: u64 = resp.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=300).contains(&retry), "{retry}");
    // Another user is not affected by the per-user limit.
    login(&r, "eng", "engineer-pass-123").await;
    // Unknown users answer exactly like wrong passwords.
    let resp = send(
        &r,
        req(
            Method::POST,
            "/api/v1/session/login",
            None,
            Some(json!({"username": "nobody", "password": "x"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resp.body["message"], "wrong username or password");
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_never_500() {
    let app = app();
    let r = app.router();
    let eng = login(&r, "eng", "engineer-pass-123").await;
    let id = app
        .backend
        .raise_alarm("E01-PT-201", "h", Priority::Medium, 1.1, Some(1.0), None);
    let raw = |method: Method, path: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, &eng.cookie)
            .header("x-csrf-token", &eng.csrf);
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body)).expect("request")
    };
    let json_ct = Some("application/json");
    let ack = format!("/api/v1/alarms/{id}/ack");
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            raw(Method::POST, &ack, json_ct, b"{\"comment\": ".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            "not JSON at all",
            raw(Method::POST, &ack, json_ct, b"ack please".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            "unknown field",
            raw(
                Method::POST,
                &ack,
                json_ct,
                br#"{"comment":"x","force":true}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "wrong type",
            raw(
                Method::POST,
                &format!("/api/v1/alarms/{id}/shelve"),
                json_ct,
                br#"{"duration_s":"long","reason":"x"}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "missing field",
            raw(
                Method::POST,
                &format!("/api/v1/alarms/{id}/shelve"),
                json_ct,
                br#"{"reason":"x"}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "no content type",
            raw(Method::POST, &ack, None, b"{}".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "oversize body",
            raw(
                Method::POST,
                &ack,
                json_ct,
                format!("{{\"comment\":\"{}\"}}", "x".repeat(100_000)).into_bytes(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "bad alarm id",
            raw(
                Method::POST,
                "/api/v1/alarms/abc/ack",
                json_ct,
                b"{}".to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "negative alarm id",
            raw(
                Method::POST,
                "/api/v1/alarms/-1/ack",
                json_ct,
                b"{}".to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown alarm id",
            raw(
                Method::POST,
                "/api/v1/alarms/999999/ack",
                json_ct,
                b"{}".to_vec(),
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "unknown tag",
            raw(Method::GET, "/api/v1/points/NOPE-1", None, vec![]),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "unknown tag in limits",
            raw(Method::GET, "/api/v1/limits/NOPE-1/versions", None, vec![]),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "bad query value",
            raw(
                Method::GET,
                "/api/v1/alarms/history?limit=lots",
                None,
                vec![],
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown query parameter",
            raw(
                Method::GET,
                "/api/v1/alarms/history?colour=red",
                None,
                vec![],
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "limit out of bounds",
            raw(Method::GET, "/api/v1/alarms/history?limit=0", None, vec![]),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad priority",
            raw(
                Method::GET,
                "/api/v1/alarms/history?priority=urgent",
                None,
                vec![],
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "history minutes",
            raw(
                Method::GET,
                "/api/v1/points/E01-GT-101/history?minutes=999999",
                None,
                vec![],
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "shelve too long",
            raw(
                Method::POST,
                &format!("/api/v1/alarms/{id}/shelve"),
                json_ct,
                br#"{"duration_s":999999,"reason":"x"}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "blank shelve reason",
            raw(
                Method::POST,
                &format!("/api/v1/alarms/{id}/shelve"),
                json_ct,
                br#"{"duration_s":60,"reason":"  "}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "bad Last-Event-ID",
            {
                let mut q = raw(Method::GET, "/api/v1/events", None, vec![]);
                q.headers_mut()
                    .insert("last-event-id", "yesterday".parse().expect("v"));
                q
            },
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown endpoint",
            raw(Method::GET, "/api/v1/nothing", None, vec![]),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong method",
            raw(Method::DELETE, "/api/v1/points", None, vec![]),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "unknown asset",
            raw(Method::GET, "/assets/..%2Fsecret", None, vec![]),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (what, request, status, code) in cases {
        let resp = send(&r, request).await;
        assert_eq!(resp.status, status, "{what}: {}", resp.text);
        assert_eq!(resp.body["error"], code, "{what}: {}", resp.text);
        let msg = resp.body["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "{what}: no message");
    }
    // The unknown-field message names the field.
    let resp = send(
        &r,
        raw(
            Method::POST,
            &ack,
            json_ct,
            br#"{"comment":"x","force":true}"#.to_vec(),
        ),
    )
    .await;
    assert!(
        resp.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("force"),
        "{}",
        resp.text
    );
    // Acknowledging twice is a conflict, not a server error.
    let ok = send(&r, raw(Method::POST, &ack, json_ct, b"{}".to_vec())).await;
    assert_eq!(ok.status, StatusCode::OK);
    let again = send(&r, raw(Method::POST, &ack, json_ct, b"{}".to_vec())).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
}

fn limits_body(h: f64, hh: f64, reason: &str, expected: Option<u32>) -> Value {
    json!({
        "limits": {"hh": hh, "h": h, "l": null, "ll": null, "deadband": 0.02, "on_delay_s": 15, "off_delay_s": 5},
        "reason": reason,
        "expected_version": expected,
    })
}

#[tokio::test]
async fn limits_are_validated_versioned_restorable_and_audited() {
    let app = app();
    let r = app.router();
    let eng = login(&r, "eng", "engineer-pass-123").await;
    let path = "/api/v1/limits/E01-PT-201";
    let cur = send(&r, req(Method::GET, path, Some(&eng), None)).await;
    assert_eq!(cur.body["current"]["version"], 1);
    assert_eq!(cur.body["current"]["limits"]["h"], 1.0);
    assert_eq!(cur.body["unit"], "MPa");

    // Reason is mandatory; values are checked like the config file.
    let resp = send(
        &r,
        req(
            Method::PUT,
            path,
            Some(&eng),
            Some(limits_body(1.05, 1.25, "", Some(1))),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp.body["fields"][0]["field"], "reason");
    let resp = send(
        &r,
        req(
            Method::PUT,
            path,
            Some(&eng),
            Some(limits_body(1.3, 1.2, "x", Some(1))),
        ),
    )
    .await;
    assert_eq!(
        resp.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        resp.text
    );
    assert_eq!(resp.body["fields"][0]["field"], "limits.h");
    let resp = send(
        &r,
        req(
            Method::PUT,
            path,
            Some(&eng),
            Some(limits_body(1.0, 2.0, "x", Some(1))),
        ),
    )
    .await;
    assert_eq!(
        resp.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        resp.text
    );
    assert!(
        resp.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("measuring range"),
        "{}",
        resp.text
    );

    // A valid change makes version 2.
    let resp = send(
        &r,
        req(
            Method::PUT,
            path,
            Some(&eng),
            Some(limits_body(1.05, 1.25, "工艺变更后复核", Some(1))),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(resp.body["version"], 2);
    // A stale editor is refused.
    let resp = send(
        &r,
        req(
            Method::PUT,
            path,
            Some(&eng),
            Some(limits_body(1.1, 1.3, "x", Some(1))),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.text);
    // The point shows the new limits.
    let p = send(
        &r,
        req(Method::GET, "/api/v1/points/E01-PT-201", Some(&eng), None),
    )
    .await;
    assert_eq!(p.body["limits"]["h"], 1.05);
    // Restore version 1 → version 3 with version 1's values.
    let resp = send(
        &r,
        req(
            Method::POST,
            &format!("{path}/restore"),
            Some(&eng),
            Some(json!({"version": 1, "reason": "复核有误"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(resp.body["version"], 3);
    assert_eq!(resp.body["limits"]["h"], 1.0);
    let resp = send(
        &r,
        req(
            Method::POST,
            &format!("{path}/restore"),
            Some(&eng),
            Some(json!({"version": 9, "reason": "x"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let versions = send(
        &r,
        req(Method::GET, &format!("{path}/versions"), Some(&eng), None),
    )
    .await;
    let v: Vec<i64> = versions
        .body
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v["version"].as_i64().expect("n"))
        .collect();
    assert_eq!(v, vec![1, 2, 3]);
    assert_eq!(versions.body[1]["changed_by"], "eng");

    // Audit: who, from where, before → after, reason.
    let audit = send(&r, req(Method::GET, "/api/v1/audit", Some(&eng), None)).await;
    let entries = audit.body.as_array().expect("list");
    let set = entries
        .iter()
        .find(|e| e["action"] == "limits.set")
        .expect("limits.set entry");
    assert_eq!(set["actor"], "eng");
    assert_eq!(set["target"], "E01-PT-201");
    assert_eq!(set["reason"], "工艺变更后复核");
    let before: Value = serde_json::from_str(set["before"].as_str().expect("s")).expect("json");
    let after: Value = serde_json::from_str(set["after"].as_str().expect("s")).expect("json");
    assert_eq!(before["limits"]["h"], 1.0);
    assert_eq!(after["limits"]["h"], 1.05);
    let restore = entries
        .iter()
        .find(|e| e["action"] == "limits.restore")
        .expect("restore entry");
    assert_eq!(restore["reason"], "restore version 1: 复核有误");
    // Nothing was audited for the refused attempts.
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"].as_str().unwrap_or("").starts_with("limits."))
            .count(),
        2
    );
}

#[tokio::test]
async fn audit_verify_endpoint_detects_an_edited_row() {
    let app = app();
    let r = app.router();
    let eng = login(&r, "eng", "engineer-pass-123").await;
    for h in [1.01, 1.02, 1.03] {
        let resp = send(
            &r,
            req(
                Method::PUT,
                "/api/v1/limits/E01-PT-201",
                Some(&eng),
                Some(limits_body(h, 1.25, "调整", None)),
            ),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    let v = send(
        &r,
        req(Method::GET, "/api/v1/audit/verify", Some(&eng), None),
    )
    .await;
    assert_eq!(v.body["ok"], true, "{}", v.text);
    let n = v.body["entries"].as_i64().expect("n");
    assert!(n >= 4, "login + 3 changes: {n}");

    // Someone with a SQLite shell softens a change after the fact.
    let db = rusqlite::Connection::open(app.dir.path().join("audit.db")).expect("open");
    db.execute_batch("DROP TRIGGER audit_no_update; UPDATE audit SET after = replace(after, '1.02', '1.2') WHERE action = 'limits.set' AND after LIKE '%1.02%';")
        .expect("tamper");
    let seq: i64 = db
        .query_row(
            "SELECT seq FROM audit WHERE after LIKE '%1.2,%' OR after LIKE '%1.2}%'",
            [],
            |r| r.get(0),
        )
        .expect("tampered row");
    let v = send(
        &r,
        req(Method::GET, "/api/v1/audit/verify", Some(&eng), None),
    )
    .await;
    assert_eq!(v.body["ok"], false, "{}", v.text);
    assert_eq!(
        v.body["problems"][0],
        format!("entry {seq}: content does not match its hash (edited)")
    );
}

/// Read SSE frames from a streaming body until `n` events with ids (or a `reset`) arrived.
async fn read_events(
    body: &mut axum::body::Body,
    want: usize,
) -> Vec<(Option<u64>, String, String)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf[..end].to_string();
            buf.drain(..end + 2);
            let (mut id, mut ev, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    ev = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_string();
                }
            }
            if !ev.is_empty() {
                out.push((id, ev, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_resumes_after_last_event_id() {
    let app = app();
    let r = app.router();
    let s = login(&r, "view", "viewer-pass-123").await; // login itself publishes an audit event
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.backend.raise_alarm(
            "E02-GT-302",
            "h",
            Priority::High,
            8.0 + f64::from(i),
            Some(7.1),
            None,
        ));
    }
    let stream_req = |last: Option<u64>| {
        let mut q = req(Method::GET, "/api/v1/events", Some(&s), None);
        if let Some(l) = last {
            q.headers_mut()
                .insert("last-event-id", l.to_string().parse().expect("v"));
        }
        q
    };
    // First connection: no history, then live events.
    let resp = r.clone().oneshot(stream_req(None)).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let mut body = resp.into_body();
    let hello = read_events(&mut body, 1).await;
    assert_eq!(hello[0].1, "hello");
    let a5 = app
        .backend
        .raise_alarm("E01-GT-101", "hh", Priority::High, 0.9, Some(0.68), None);
    let live = read_events(&mut body, 2).await;
    assert_eq!(live[0].1, "alarm");
    let alarm: Value = serde_json::from_str(&live[0].2).expect("json");
    assert_eq!(alarm["id"], a5);
    assert_eq!(alarm["state"], "unack");
    let seen = live[1].0.expect("id"); // the point event that followed
    drop(body);

    // Meanwhile two more events happen.
    let a6 = app
        .backend
        .raise_alarm("E02-LT-401", "hh", Priority::Medium, 19.0, Some(18.5), None);
    // Reconnect with Last-Event-ID: exactly the missed events, in order, then live.
    let resp = r
        .clone()
        .oneshot(stream_req(Some(seen)))
        .await
        .expect("resp");
    let mut body = resp.into_body();
    let got = read_events(&mut body, 3).await;
    assert_eq!(got[0].1, "hello");
    assert_eq!(got[1].0, Some(seen + 1));
    assert_eq!(got[1].1, "alarm");
    assert_eq!(
        serde_json::from_str::<Value>(&got[1].2).expect("json")["id"],
        a6
    );
    assert_eq!(got[2].0, Some(seen + 2));
    assert_eq!(got[2].1, "point");
    app.backend
        .set_warning("E02", Grade::Orange, "储罐区两点一级报警");
    let next = read_events(&mut body, 1).await;
    assert_eq!(next[0].0, Some(seen + 3));
    assert_eq!(next[0].1, "warning");
    drop(body);

    // An id the hub never issued (e.g. from before a restart): the client must reload.
    let resp = r
        .clone()
        .oneshot(stream_req(Some(10_000_000)))
        .await
        .expect("resp");
    let mut body = resp.into_body();
    let got = read_events(&mut body, 2).await;
    assert_eq!(got[1].1, "reset");
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let app = app();
    let r = app.router();
    let resp = send(&r, req(Method::GET, "/api/v1/openapi.json", None, None)).await;
    assert_eq!(resp.status, StatusCode::OK);
    let doc = resp.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            documented.push((
                method.to_uppercase(),
                path.clone(),
                op["x-min-role"].as_str().expect("x-min-role").to_string(),
            ));
        }
    }
    let mut routed: Vec<(String, String, String)> = route_specs()
        .iter()
        .map(|s| {
            (
                s.method.to_string(),
                s.path.to_string(),
                s.min_role
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_else(|| "public".into()),
            )
        })
        .collect();
    documented.sort();
    routed.sort();
    assert_eq!(documented, routed, "openapi.json and route_table() differ");
    // Every referenced schema exists.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/").skip(1) {
        let name = &part[..part.find('"').expect("end")];
        let mut cur = &doc["components"];
        for seg in name.split('/') {
            cur = &cur[seg];
        }
        assert!(!cur.is_null(), "dangling $ref {name}");
    }
}

#[tokio::test]
async fn health_ready_metrics() {
    let app = app();
    let r = app.router();
    let resp = send(&r, req(Method::GET, "/healthz", None, None)).await;
    assert_eq!(resp.status, StatusCode::OK);
    let resp = send(&r, req(Method::GET, "/readyz", None, None)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    *app.backend.ready.lock().expect("lock") = vec![ReadyCheck {
        name: "mqtt:park-broker".into(),
        ok: false,
        detail: "connection refused".into(),
    }];
    let resp = send(&r, req(Method::GET, "/readyz", None, None)).await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.body["checks"][0]["detail"], "connection refused");

    let s = login(&r, "view", "viewer-pass-123").await;
    app.backend
        .raise_alarm("E01-GT-101", "h", Priority::High, 0.5, Some(0.34), None);
    let _ = send(&r, req(Method::GET, "/api/v1/points", Some(&s), None)).await;
    let resp = send(&r, req(Method::GET, "/metrics", Some(&s), None)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        resp.headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text;
    assert!(
        text.contains("# TYPE parkguard_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"parkguard_http_requests_total{route="/api/v1/points",method="GET",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"parkguard_active_alarms{priority="high"} 1"#),
        "{text}"
    );
    assert!(text.contains("parkguard_sessions 1"), "{text}");
    // Every sample line parses as `name{labels} number`.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let v = line.rsplit(' ').next().expect("value");
        assert!(v.parse::<f64>().is_ok(), "bad sample line: {line}");
    }
}

#[test]
fn console_first_load_is_under_300_kb() {
    let total: usize = parkguard::api::console::assets()
        .iter()
        .map(|(_, _, body)| body.len())
        .sum();
    assert!(total <= 300 * 1024, "console first load is {total} bytes");
    eprintln!("console first load: {total} bytes uncompressed");
}

#[tokio::test]
async fn console_is_served_with_a_strict_content_security_policy() {
    let app = app();
    let r = app.router();
    let resp = send(&r, req(Method::GET, "/", None, None)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.text.contains("/assets/app.js"));
    let csp = resp.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let js = send(&r, req(Method::GET, "/assets/app.js", None, None)).await;
    assert!(
        js.headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("text/javascript")
    );
    // The script loads nothing from the internet.
    assert!(
        !js.text.contains("http://") && !js.text.contains("https://"),
        "external URL in app.js"
    );
}

#[tokio::test]
async fn cookies_are_secure_when_the_listener_has_tls() {
    let app = app();
    let users = app.dir.path().join("users.toml");
    let settings = parkguard::auth::AuthSettings {
        tls: true,
        ..Default::default()
    };
    let mut state = app.state.clone();
    state.auth = std::sync::Arc::new(
        parkguard::auth::AuthService::from_file(&users, settings).expect("auth"),
    );
    let r = router(state);
    let resp = send(
        &r,
        req(
            Method::POST,
            "/api/v1/session/login",
            None,
            Some(json!({"username": "oper", "password": "operator-pass-123"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let cookies: Vec<&str> = resp
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(cookies.len(), 2);
    for c in cookies {
        assert!(c.contains("; Secure"), "{c}");
        assert!(c.contains("SameSite=Strict"), "{c}");
    }
}

#[tokio::test]
async fn active_alarms_come_sorted_by_priority_then_newest() {
    let app = app();
    let r = app.router();
    let s = login(&r, "view", "viewer-pass-123").await;
    let low = app
        .backend
        .raise_alarm("E02-LT-401", "h", Priority::Low, 17.5, Some(17.0), None);
    let high1 = app
        .backend
        .raise_alarm("E01-GT-101", "h", Priority::High, 0.4, Some(0.34), None);
    let medium = app
        .backend
        .raise_alarm("E01-PT-201", "h", Priority::Medium, 1.1, Some(1.0), None);
    std::thread::sleep(Duration::from_millis(5));
    let high2 = app
        .backend
        .raise_alarm("E02-GT-302", "h", Priority::High, 8.0, Some(7.1), None);
    let resp = send(
        &r,
        req(Method::GET, "/api/v1/alarms/active", Some(&s), None),
    )
    .await;
    let ids: Vec<u64> = resp
        .body
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, vec![high2, high1, medium, low]);
    // Only the first alarm of the burst carries the first-alarm marker.
    let first: Vec<bool> = resp
        .body
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["first"] == true)
        .collect();
    assert_eq!(first, vec![false, false, false, true]);
    // History filters.
    let h = send(
        &r,
        req(
            Method::GET,
            "/api/v1/alarms/history?priority=high&enterprise=E02",
            Some(&s),
            None,
        ),
    )
    .await;
    let ids: Vec<u64> = h
        .body
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, vec![high2]);
}

#[tokio::test]
async fn admins_manage_users_and_changes_apply_at_once() {
    let app = app();
    let r = app.router();
    let adm = login(&r, "adm", "admin-pass-123").await;
    let oper = login(&r, "oper", "operator-pass-123").await;
    let id = app
        .backend
        .raise_alarm("E01-GT-101", "h", Priority::High, 0.5, Some(0.34), None);
    // Demote the operator: their open session loses the right at once.
    let resp = send(
        &r,
        req(
            Method::POST,
            "/api/v1/users",
            Some(&adm),
            Some(json!({"username": "oper", "role": "viewer", "password": "operator-pass-123"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    let resp = send(
        &r,
        req(
            Method::POST,
            &format!("/api/v1/alarms/{id}/ack"),
            Some(&oper),
            Some(json!({})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.text);
    // Weak passwords are refused.
    let resp = send(
        &r,
        req(
            Method::POST,
            "/api/v1/users",
            Some(&adm),
            Some(json!({"username": "li", "role": "operator", "password": "123456"})),
        ),
    )
    .await;
    assert_eq!(
        resp.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        resp.text
    );
    // A new user can log in; a removed one is logged out and cannot log in again.
    let resp = send(&r, req(Method::POST, "/api/v1/users", Some(&adm), Some(json!({"username": "li.ming", "display_name": "李明", "role": "operator", "password": "li-ming-pass-42"})))).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    let li = login(&r, "li.ming", "li-ming-pass-42").await;
    let resp = send(
        &r,
        req(Method::DELETE, "/api/v1/users/li.ming", Some(&adm), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    let resp = send(&r, req(Method::GET, "/api/v1/points", Some(&li), None)).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    let resp = send(
        &r,
        req(
            Method::POST,
            "/api/v1/session/login",
            None,
            Some(json!({"username": "li.ming", "password": "li-ming-pass-42"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    // Admins cannot lock themselves out.
    let resp = send(
        &r,
        req(Method::DELETE, "/api/v1/users/adm", Some(&adm), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CONFLICT);
    let resp = send(
        &r,
        req(Method::DELETE, "/api/v1/users/nobody", Some(&adm), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    // The users file holds the change (survives a restart) and the audit log says who did it.
    let file = parkguard::auth::read_users_file(&app.dir.path().join("users.toml")).expect("users");
    assert_eq!(
        file.user
            .iter()
            .find(|u| u.username == "oper")
            .map(|u| u.role),
        Some(Role::Viewer)
    );
    assert!(file.user.iter().all(|u| u.username != "li.ming"));
    let entries = app.state.audit.list(50, None).expect("audit");
    let actions: Vec<&str> = entries
        .iter()
        .filter(|e| e.action.starts_with("user."))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(actions, vec!["user.remove", "user.add", "user.update"]);
}
