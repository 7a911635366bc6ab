//! The API over the REAL engine task: the demo park's config, a running engine fed through
//! its readings channel, a journal written from the engine's events, and the HTTP server
//! from `api::wire::serve` spoken to over real TCP (reqwest) — log in, watch a gas alarm
//! appear, acknowledge it, try to shelve it too long, change its limit, and see it in the
//! SSE stream and the hash-chained audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use parkguard::api::engine_backend::BackendParts;
use parkguard::auth::{Role, check_users_file, create_demo_users};
use parkguard::engine_task::{self, EngineTaskConfig, system_now};
use parkguard::store::journal::{Journal, JournalRecord, RecordKind};
use parkguard_rules::alarm::{AlarmState, SourceKind};
use parkguard_rules::engine::{Engine, Event};
use parkguard_rules::{Quality, Reading};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TAG: &str = "DEMO01-GT-101";
const WAIT: Duration = Duration::from_secs(30);

/// A logged-in client: session cookie and CSRF token.
struct Session {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Session {
    async fn login(base: &str, user: &str, password: &str) -> Session {
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{base}/api/v1/session/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "login of {user}");
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["username"], user);
        let csrf = body["csrf"].as_str().unwrap().to_string();
        Session {
            http,
            base: base.to_string(),
            cookie,
            csrf,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

/// Poll `f` until it returns `Some`, at most [`WAIT`].
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The journal writer a daemon runs: every engine event becomes a committed record.
fn journal_writer(path: std::path::PathBuf, mut rx: mpsc::Receiver<Vec<Event>>) {
    let mut j = Journal::open(&path).unwrap();
    while let Some(batch) = rx.blocking_recv() {
        let recs: Vec<JournalRecord> = batch
            .iter()
            .map(|e| match e {
                Event::Alarm(a) => JournalRecord {
                    id: a.id,
                    time: a.time,
                    kind: RecordKind::Alarm,
                    alarm_id: Some(a.alarm.clone()),
                    point: (a.source_kind == SourceKind::Point).then(|| a.source.clone()),
                    enterprise: Some(a.enterprise.clone()),
                    drill: a.drill.clone(),
                    payload: serde_json::to_value(e).unwrap(),
                },
                Event::Warning(w) => JournalRecord {
                    id: w.id,
                    time: w.time,
                    kind: RecordKind::Warning,
                    alarm_id: None,
                    point: None,
                    enterprise: None,
                    drill: w.drill.clone(),
                    payload: serde_json::to_value(e).unwrap(),
                },
            })
            .collect();
        j.append(&recs).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_the_running_engine() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/demo.toml"
    ))
    .unwrap();
    let mut cfg = parkguard::config::load_str("demo.toml", &text).unwrap();
    cfg.data.dir = dir.path().join("data");
    cfg.api.listen = "127.0.0.1:0".into();

    // Demo users: random passwords, refused by a production check.
    let users = cfg.api.users_file(&cfg.data.dir);
    let demo = create_demo_users(&users).unwrap();
    let pw = |name: &str| {
        demo.iter()
            .find(|(u, _, _)| u == name)
            .map(|(_, _, p)| p.clone())
            .unwrap()
    };
    assert_eq!(
        demo.iter()
            .map(|(u, r, _)| (u.as_str(), *r))
            .collect::<Vec<_>>(),
        [
            ("operator", Role::Operator),
            ("engineer", Role::Engineer),
            ("admin", Role::Admin)
        ]
    );
    assert!(check_users_file(&users, false).is_empty());
    let prod = check_users_file(&users, true);
    assert_eq!(prod.len(), 3, "{prod:?}");
    assert!(prod.iter().all(|e| e.contains("demo user")), "{prod:?}");

    // The engine, fed through its readings channel, journalled.
    let point = cfg.table.by_tag(TAG).unwrap().clone();
    let (h, hh) = (point.limits.h.unwrap(), point.limits.hh.unwrap());
    let engine = Engine::new(
        cfg.table.clone(),
        cfg.engine.clone(),
        cfg.vote_groups.clone(),
    );
    let (rtx, rrx) = mpsc::channel(64);
    let (jtx, jrx) = mpsc::channel(256);
    let journal_path = dir.path().join("journal.sqlite");
    Journal::open(&journal_path).unwrap();
    let jp = journal_path.clone();
    let writer = tokio::task::spawn_blocking(move || journal_writer(jp, jrx));
    let task_cfg = EngineTaskConfig {
        tick: Duration::from_millis(200),
        ..Default::default()
    };
    let (handle, engine_join) = engine_task::spawn(engine, rrx, Some(jtx), task_cfg);

    // A spool archive with ten minutes of the point's history (one sample a minute).
    let spool_dir = dir.path().join("spool");
    {
        let settings = parkguard::store::spool::SpoolConfig::default()
            .validate()
            .unwrap();
        let mut spool = parkguard::store::spool::Spool::open(&spool_dir, settings).unwrap();
        let now = system_now().0;
        let past: Vec<Reading> = (1..=10)
            .map(|i| {
                let t = parkguard_rules::Timestamp(now - i * 60_000_000_000);
                Reading {
                    point: point.id,
                    value: i as f64 * 0.01,
                    unit: point.unit,
                    quality: if i == 5 {
                        Quality::CommLost
                    } else {
                        Quality::Good
                    },
                    source_time: t,
                    receive_time: t,
                }
            })
            .collect();
        spool.append(&past, &cfg.table).unwrap();
        spool.sync().unwrap();
    }

    let shutdown = CancellationToken::new();
    let parts = BackendParts {
        engine: handle.clone(),
        table: cfg.table.clone(),
        engine_config: cfg.engine.clone(),
        journal_path: Some(journal_path.clone()),
        archive_dir: Some(spool_dir.clone()),
        modbus: None,
        mqtt: Vec::new(),
        linkage: None,
        spool: None,
        influx: [None, None],
    };
    let (addr, server) = parkguard::api::wire::serve(&cfg, parts, shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://{addr}");

    // A source: the point's value every 100 ms, from a shared cell.
    let value = Arc::new(AtomicU64::new(0.0f64.to_bits()));
    let source = {
        let value = value.clone();
        let pid = point.id;
        let unit = point.unit;
        let rtx = rtx.clone();
        tokio::spawn(async move {
            loop {
                let t = system_now();
                let r = Reading {
                    point: pid,
                    value: f64::from_bits(value.load(Ordering::Relaxed)),
                    unit,
                    quality: Quality::Good,
                    source_time: t,
                    receive_time: t,
                };
                if rtx.send(vec![r]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let op = Session::login(&base, "operator", &pw("operator")).await;
    let eng = Session::login(&base, "engineer", &pw("engineer")).await;

    // The SSE stream, opened before the alarm.
    let (sse_tx, mut sse_rx) = mpsc::unbounded_channel::<String>();
    let sse_resp = op
        .http
        .get(format!("{base}/api/v1/events"))
        .header("cookie", &op.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse_resp.status(), 200);
    let sse = tokio::spawn(async move {
        let mut resp = sse_resp;
        while let Ok(Some(chunk)) = resp.chunk().await {
            if sse_tx
                .send(String::from_utf8_lossy(&chunk).into_owned())
                .is_err()
            {
                return;
            }
        }
    });

    // A good value below level 1: shown live, no alarm.
    let low = h / 2.0;
    value.store(low.to_bits(), Ordering::Relaxed);
    let pv = until("the live value", || async {
        let (s, v) = op.get(&format!("/api/v1/points/{TAG}")).await;
        assert_eq!(s, 200);
        (v["value"].as_f64() == Some(low)).then_some(v)
    })
    .await;
    assert_eq!(pv["quality"], "good");
    assert_eq!(pv["state"], "normal");
    assert_eq!(pv["limits"]["h"].as_f64(), Some(h));

    // Over level 1 (below level 2): the H alarm appears, unacknowledged.
    let high = (h + hh) / 2.0;
    value.store(high.to_bits(), Ordering::Relaxed);
    let alarm = until("the active H alarm", || async {
        let (s, v) = op.get("/api/v1/alarms/active").await;
        assert_eq!(s, 200);
        v.as_array()
            .unwrap()
            .iter()
            // The activation's value comes with the engine's event, right behind the
            // snapshot.
            .find(|a| a["point"] == TAG && a["condition"] == "h" && a["value"].is_number())
            .cloned()
    })
    .await;
    assert_eq!(alarm["state"], "unack");
    assert_eq!(alarm["value"].as_f64(), Some(high));
    assert_eq!(alarm["limit"].as_f64(), Some(h));
    assert_eq!(alarm["enterprise"], "DEMO01");
    let id = alarm["id"].as_u64().unwrap();
    let (_, pv) = op.get(&format!("/api/v1/points/{TAG}")).await;
    assert_eq!(pv["state"], "alarm_unack");

    // The SSE stream delivered it.
    let mut seen = String::new();
    until("the alarm on the SSE stream", || {
        while let Ok(s) = sse_rx.try_recv() {
            seen.push_str(&s);
        }
        let found = seen.split("\n\n").any(|ev| {
            ev.contains("event: alarm") && ev.contains(TAG) && ev.contains("\"condition\":\"h\"")
        });
        async move { found.then_some(()) }
    })
    .await;

    // Acknowledge it: the engine's snapshot shows it acknowledged by the operator.
    let (s, v) = op
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/alarms/{id}/ack"),
            json!({"comment": "seen, patrol sent"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let snap = handle.snapshot.borrow().clone();
    let engine_alarm = snap
        .alarms
        .iter()
        .find(|a| a.alarm == format!("{TAG}:H"))
        .unwrap();
    assert_eq!(engine_alarm.state, AlarmState::Acknowledged);
    let (_, active) = op.get("/api/v1/alarms/active").await;
    let a = active
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"].as_u64() == Some(id))
        .unwrap()
        .clone();
    assert_eq!(a["state"], "ack");
    assert_eq!(a["acked_by"], "operator");
    // Acknowledging again is a conflict, not a success.
    let (s, _) = op
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/alarms/{id}/ack"),
            json!({"comment": ""}),
        )
        .await;
    assert_eq!(s, 409);

    // Shelving longer than allowed is refused, and changes nothing.
    let too_long = cfg.engine.shelve_max_s + 1;
    let (s, v) = op
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/alarms/{id}/shelve"),
            json!({"duration_s": too_long, "reason": "nuisance"}),
        )
        .await;
    assert!((400..500).contains(&s), "{s} {v}");
    let snap = handle.snapshot.borrow().clone();
    let st = snap
        .alarms
        .iter()
        .find(|a| a.alarm == format!("{TAG}:H"))
        .unwrap()
        .state;
    assert_eq!(st, AlarmState::Acknowledged);
    // An unknown alarm id is 404.
    let (s, _) = op
        .send(
            reqwest::Method::POST,
            "/api/v1/alarms/12345/ack",
            json!({"comment": ""}),
        )
        .await;
    assert_eq!(s, 404);

    // An operator may not change limits; an engineer may, with a reason.
    let span = point.range_hi - high;
    let new_limits = json!({
        "hh": high + span * 2.0 / 3.0, "h": high + span / 3.0, "l": point.limits.l, "ll": point.limits.ll,
        "deadband": point.limits.deadband, "on_delay_s": point.limits.on_delay.as_secs_f64(),
        "off_delay_s": point.limits.off_delay.as_secs_f64(),
    });
    let body = json!({"limits": new_limits, "reason": "recalibrated, MOC-2026-017", "expected_version": 1});
    let (s, _) = op
        .send(
            reqwest::Method::PUT,
            &format!("/api/v1/limits/{TAG}"),
            body.clone(),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = eng
        .send(
            reqwest::Method::PUT,
            &format!("/api/v1/limits/{TAG}"),
            body.clone(),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The same expected version again is stale now.
    let (s, _) = eng
        .send(reqwest::Method::PUT, &format!("/api/v1/limits/{TAG}"), body)
        .await;
    assert_eq!(s, 409);
    let (s, versions) = eng.get(&format!("/api/v1/limits/{TAG}/versions")).await;
    assert_eq!(s, 200);
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[1]["changed_by"], "engineer");
    assert_eq!(versions[1]["limits"]["h"], new_limits["h"]);

    // The engine uses the new limit: the same reading no longer alarms, the acknowledged
    // alarm returns to normal and leaves the active list.
    until("the H alarm to clear under the new limit", || async {
        let (_, v) = op.get("/api/v1/alarms/active").await;
        let still = v
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["point"] == TAG && (a["condition"] == "h" || a["condition"] == "hh"));
        (!still).then_some(())
    })
    .await;
    let (_, pv) = op.get(&format!("/api/v1/points/{TAG}")).await;
    assert_eq!(pv["state"], "normal");
    assert_eq!(pv["limits"]["h"], new_limits["h"]);

    // Point history from the spool archive: the last 15 minutes hold the ten samples, in
    // time order, the comm-lost one marked not good.
    let (s, h15) = op
        .get(&format!("/api/v1/points/{TAG}/history?minutes=15"))
        .await;
    assert_eq!(s, 200, "{h15}");
    let samples = h15["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 10, "{h15}");
    let values: Vec<f64> = samples.iter().map(|x| x["v"].as_f64().unwrap()).collect();
    assert_eq!(values[0], 0.1);
    assert_eq!(values[9], 0.01);
    assert_eq!(
        samples.iter().filter(|x| x["good"] == false).count(),
        1,
        "{h15}"
    );

    // Out of service needs an engineer; the point shows it, and returns.
    let reason = json!({"reason": "WO-4711 sensor replacement"});
    let path = format!("/api/v1/points/{TAG}/out-of-service");
    let (s, _) = op.send(reqwest::Method::POST, &path, reason.clone()).await;
    assert_eq!(s, 403);
    let (s, v) = eng.send(reqwest::Method::POST, &path, reason.clone()).await;
    assert_eq!(s, 200, "{v}");
    let (_, pv) = op.get(&format!("/api/v1/points/{TAG}")).await;
    assert_eq!(pv["state"], "out_of_service");
    let (s, _) = eng.send(reqwest::Method::POST, &path, reason.clone()).await;
    assert_eq!(s, 409, "already out of service");
    let path = format!("/api/v1/points/{TAG}/return-to-service");
    let (s, v) = eng.send(reqwest::Method::POST, &path, reason).await;
    assert_eq!(s, 200, "{v}");
    let (_, pv) = op.get(&format!("/api/v1/points/{TAG}")).await;
    assert_eq!(pv["state"], "normal");

    // The alarm's history, from the journal (written behind the engine, so wait for it):
    // one row for the activation, acknowledged by the operator, cleared; the later
    // out-of-service of the point does not reopen it.
    let row = until("the H activation in the history, closed", || async {
        let (s, hist) = op.get(&format!("/api/v1/alarms/history?point={TAG}")).await;
        assert_eq!(s, 200);
        let rows: Vec<Value> = hist
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["condition"] == "h")
            .cloned()
            .collect();
        assert!(rows.len() <= 1, "{hist}");
        rows.into_iter().find(|r| r["state"] == "normal")
    })
    .await;
    assert_eq!(row["acked_by"], "operator");
    assert!(row["cleared_ms"].as_i64().is_some(), "{row}");

    // KPIs over the journal count the activation.
    let (s, k) = op.get("/api/v1/kpis").await;
    assert_eq!(s, 200);
    assert!(k["alarms"].as_u64().unwrap() >= 1, "{k}");
    assert!(
        k["top10"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["point"] == TAG),
        "{k}"
    );

    // Every write is in the audit log and its hash chain verifies.
    let (s, ver) = eng.get("/api/v1/audit/verify").await;
    assert_eq!(s, 200);
    assert_eq!(ver["ok"], true, "{ver}");
    assert!(ver["entries"].as_i64().unwrap() >= 4, "{ver}");
    let (s, log) = eng.get("/api/v1/audit").await;
    assert_eq!(s, 200);
    let text = log.to_string();
    assert!(text.contains("alarm.ack"), "{text}");
    assert!(text.contains("MOC-2026-017"), "{text}");

    // Readiness and metrics see the engine.
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = op
        .http
        .get(format!("{base}/metrics"))
        .header("cookie", &op.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = r.text().await.unwrap();
    let readings: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("parkguard_engine_readings_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(readings >= 10.0, "{m}");
    assert!(
        m.contains("parkguard_active_alarms{priority=\"high\"}"),
        "{m}"
    );

    // Shut down: server, pump, engine, journal writer.
    shutdown.cancel();
    sse.abort();
    server.await.unwrap();
    source.abort();
    let _ = source.await;
    drop(rtx);
    drop(handle);
    let engine = engine_join.await.unwrap();
    assert!(engine.stats().readings >= 10);
    writer.await.unwrap();
}
