//! Drills inside the running daemon, through the HTTP API over the REAL topology (engine
//! task, journal writer, linkage outbox with real webhook deliveries to a real HTTP
//! receiver): an engineer starts the chlorine-release scenario as a drill, its alarms carry
//! the drill id, a real alarm raised meanwhile shows in the real alarm list and reaches the
//! production channel while no drill event does, the drill channel gets drill events only,
//! an operator acknowledges a drill alarm, the engineer stops the drill and gets the report
//! with the time to acknowledge per operator (JSON and HTML). Pause and resume on a 1× drill.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use parkguard::auth::create_demo_users;
use parkguard::drill::live::{DrillParts, Drills};
use parkguard::engine_task::system_now;
use parkguard_rules::{Quality, Reading};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod common;
use common::Session;

const WAIT: Duration = Duration::from_secs(40);
const DRILL_ID_BASE: u64 = 1 << 62;
const REAL_TAG: &str = "PARK00-AT-E1";

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

/// What a webhook path received: (Idempotency-Key = event id, body).
type Received = Arc<Mutex<Vec<(u64, String)>>>;

async fn start_receiver() -> (u16, Received, Received) {
    use axum::routing::post;
    let prod: Received = Default::default();
    let drill: Received = Default::default();
    let hook = |sink: Received| {
        post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                sink.lock().unwrap().push((key, body));
                axum::http::StatusCode::OK
            }
        })
    };
    let app = axum::Router::new()
        .route("/prod", hook(prod.clone()))
        .route("/drill", hook(drill.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, prod, drill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_beside_live_monitoring_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, prod, drill_rx) = start_receiver().await;
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-for-the-test").unwrap();
    let mut text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/demo.toml"
    ))
    .unwrap();
    text.push_str(&format!(
        r#"
[[channel]]
type = "webhook"
name = "bureau-desk"
url = "http://127.0.0.1:{hook_port}/prod"
secret_file = "{s}"

[[channel]]
type = "webhook"
name = "drill-desk"
drill = true
url = "http://127.0.0.1:{hook_port}/drill"
secret_file = "{s}"

[[route]]
name = "everything"
channels = ["bureau-desk", "drill-desk"]
"#,
        s = secret.display()
    ));
    let mut cfg = parkguard::config::load_str("demo.toml", &text).unwrap();
    cfg.data.dir = dir.path().join("data");
    cfg.api.listen = "127.0.0.1:0".into();
    let users = cfg.api.users_file(&cfg.data.dir);
    std::fs::create_dir_all(&cfg.data.dir).unwrap();
    let demo = create_demo_users(&users).unwrap();
    let pw = |name: &str| {
        demo.iter()
            .find(|(u, _, _)| u == name)
            .map(|(_, _, p)| p.clone())
            .unwrap()
    };

    // The real topology (its Modbus and MQTT peers are absent: the real path raises its
    // own comm-lost and stale alarms, which is fine — it is the real path).
    let shutdown = CancellationToken::new();
    let running = parkguard::topology::start(&cfg, shutdown.clone())
        .await
        .unwrap();
    let parts = parkguard::api::engine_backend::BackendParts {
        engine: running.engine.clone(),
        table: cfg.table.clone(),
        engine_config: cfg.engine.clone(),
        journal_path: Some(running.journal_path.clone()),
        archive_dir: Some(running.spool_dir.clone()),
        modbus: None,
        mqtt: Vec::new(),
        linkage: None,
        spool: None,
        influx: [None, None],
    };
    let drills = Arc::new(Drills::new(DrillParts {
        table: cfg.table.clone(),
        engine: cfg.engine.clone(),
        vote_groups: cfg.vote_groups.clone(),
        journal: Some(running.journal.clone()),
        data_dir: cfg.data.dir.clone(),
        spool_dir: running.spool_dir.clone(),
        shutdown: shutdown.clone(),
    }));
    let served = parkguard::api::wire::serve_with_drills(
        &cfg,
        parts,
        Arc::new(parkguard::api::Metrics::default()),
        drills,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", served.addr);
    let engineer = Session::login(&base, "engineer", &pw("engineer")).await;
    let operator = Session::login(&base, "operator", &pw("operator")).await;

    // Operators may not start drills; a wrong request is a clear 4xx.
    let (s, _) = operator
        .post("/api/v1/drills", json!({"scenario": "chlorine-release"}))
        .await;
    assert_eq!(s, 403);
    let (s, body) = engineer
        .post("/api/v1/drills", json!({"scenario": "no-such-scenario"}))
        .await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = engineer
        .post(
            "/api/v1/drills",
            json!({"scenario": "chlorine-release", "speed": "fast"}),
        )
        .await;
    assert_eq!(s, 422, "{body}");

    // Start the chlorine release as fast as possible.
    let (s, body) = engineer
        .post(
            "/api/v1/drills",
            json!({"id": "drill-t1", "scenario": "chlorine-release", "speed": "max"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["id"], "drill-t1");
    let status = until("the drill to finish its script", || async {
        let (_, st) = operator.get("/api/v1/drills/drill-t1").await;
        (st["state"] == "finished").then_some(st)
    })
    .await;
    let alarms = status["alarms"].as_array().unwrap().clone();
    assert!(
        alarms
            .iter()
            .any(|a| a["alarm"].as_str().unwrap().starts_with("PARK00-AT-S2:")),
        "the southern station alarms in the drill: {alarms:?}"
    );
    assert!(
        alarms.iter().all(|a| a["drill"] == "drill-t1"),
        "{alarms:?}"
    );
    let (_, list) = operator.get("/api/v1/drills").await;
    assert_eq!(list["drills"][0]["id"], "drill-t1");

    // A real alarm during the drill: PARK00-AT-E1 far above its HH limit.
    let point = cfg.table.by_tag(REAL_TAG).unwrap().clone();
    let hh = point.limits.hh.unwrap();
    let t = system_now();
    running
        .readings
        .send(vec![Reading {
            point: point.id,
            value: hh * 1.5,
            unit: point.unit,
            quality: Quality::Good,
            source_time: t,
            receive_time: t,
        }])
        .await
        .unwrap();
    let real = until("the real alarm in the real alarm list", || async {
        let (_, v) = operator.get("/api/v1/alarms/active").await;
        v.as_array()?
            .iter()
            .find(|a| a["point"] == REAL_TAG && a["condition"] == "hh")
            .cloned()
    })
    .await;
    assert!(real["drill"].is_null(), "{real}");
    let (_, actives) = operator.get("/api/v1/alarms/active").await;
    assert!(
        actives
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["drill"].is_null()),
        "no drill alarm among the real ones"
    );

    // The operator acknowledges a drill alarm.
    let target = alarms
        .iter()
        .find(|a| a["state"] == "unacknowledged" && a["alarm"].as_str().unwrap().contains(":"))
        .expect("an unacknowledged drill alarm")["alarm"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, body) = operator
        .post(
            "/api/v1/drills/drill-t1/ack",
            json!({"alarm": target, "comment": "演练确认"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["acknowledged"], 1);
    let (s, _) = operator
        .post("/api/v1/drills/drill-t1/ack", json!({"alarm": target}))
        .await;
    assert_eq!(s, 409, "acknowledged twice");
    let (_, st) = operator.get("/api/v1/drills/drill-t1").await;
    let after = st["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alarm"] == target.as_str())
        .cloned();
    assert!(
        after.is_none_or(|a| a["state"] != "unacknowledged"),
        "acknowledged in the drill view"
    );

    // Deliveries: the real alarm reaches the production desk; drill events reach only the
    // drill desk.
    until("the real alarm at the production desk", || async {
        prod.lock()
            .unwrap()
            .iter()
            .any(|(_, b)| b.contains(REAL_TAG))
            .then_some(())
    })
    .await;
    until("drill events at the drill desk", || async {
        drill_rx
            .lock()
            .unwrap()
            .iter()
            .any(|(_, b)| b.contains("PARK00-AT-S2"))
            .then_some(())
    })
    .await;
    // Let the outbox (wrongly) send more, then check both desks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let p = prod.lock().unwrap();
        assert!(
            p.iter()
                .all(|(k, b)| *k < DRILL_ID_BASE && !b.contains("drill-t1")),
            "a drill event reached the production desk: {p:?}"
        );
        let d = drill_rx.lock().unwrap();
        assert!(
            d.iter()
                .all(|(k, b)| *k >= DRILL_ID_BASE && b.contains("drill-t1")),
            "a real event reached the drill desk: {d:?}"
        );
        assert!(
            !d.iter()
                .any(|(_, b)| b.contains(REAL_TAG) && !b.contains("drill-t1")),
            "the real alarm is not a drill event"
        );
    }

    // Stop and report: time to acknowledge per operator.
    let (s, report) = engineer
        .post("/api/v1/drills/drill-t1/stop", json!({}))
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["drill"], "drill-t1");
    let ops = report["per_operator"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{report}");
    assert_eq!(ops[0]["operator"], "operator");
    assert_eq!(ops[0]["acks"], 1);
    assert!(ops[0]["mean_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["acks"][0]["alarm"], target.as_str());
    assert!(
        report["never_acknowledged"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| *a != target.as_str())
    );
    let (s, again) = operator.get("/api/v1/drills/drill-t1/report").await;
    assert_eq!(s, 200);
    assert_eq!(again, report, "the stored report is the final one");
    let (s, html) = operator
        .get_text("/api/v1/drills/drill-t1/report?format=html")
        .await;
    assert_eq!(s, 200);
    assert!(html.contains("演练 / DRILL — drill-t1"), "{html}");
    assert!(html.contains("operator"));
    assert!(cfg.data.dir.join("drills/drill-t1.json").exists());
    assert!(cfg.data.dir.join("drills/drill-t1.html").exists());
    // And in the journal database, with the regulator's other records.
    let conn = parkguard::linkage::outbox::open(&cfg.data.dir.join("journal.sqlite")).unwrap();
    let (json_text, html_text): (String, String) = conn
        .query_row(
            "SELECT json, html FROM drill_report WHERE drill = 'drill-t1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let stored: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(stored, report, "the journal holds the final report");
    assert!(html_text.contains("演练 / DRILL — drill-t1"));
    let (s, st) = operator.get("/api/v1/drills/drill-t1").await;
    assert_eq!((s, st["state"].as_str()), (200, Some("stopped")));
    let (s, _) = engineer
        .post("/api/v1/drills/drill-t1/pause", json!({}))
        .await;
    assert_eq!(s, 409, "a stopped drill cannot be paused");

    // Pause and resume a drill at 1×: its clock stops while paused.
    let (s, body) = engineer
        .post(
            "/api/v1/drills",
            json!({"id": "drill-t2", "scenario": "hydrocarbon-leak", "speed": "1x"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, st) = engineer
        .post("/api/v1/drills/drill-t2/pause", json!({}))
        .await;
    assert_eq!((s, st["state"].as_str()), (200, Some("paused")), "{st}");
    let clock = st["clock_ms"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, st) = operator.get("/api/v1/drills/drill-t2").await;
    assert_eq!(st["clock_ms"].as_i64().unwrap(), clock, "paused clock");
    let (s, st) = engineer
        .post("/api/v1/drills/drill-t2/resume", json!({}))
        .await;
    assert_eq!((s, st["state"].as_str()), (200, Some("running")), "{st}");
    until("the resumed drill's clock to advance", || async {
        let (_, st) = operator.get("/api/v1/drills/drill-t2").await;
        (st["clock_ms"].as_i64()? > clock).then_some(())
    })
    .await;
    let (s, _) = engineer
        .post("/api/v1/drills/drill-t2/stop", json!({}))
        .await;
    assert_eq!(s, 200);

    // Replay of a line-protocol file exported from the production InfluxDB, placed in
    // <data.dir>/replays/: its level-2 reading raises the drill's alarms.
    let replays = cfg.data.dir.join("replays");
    std::fs::create_dir_all(&replays).unwrap();
    // 0 %LEL, then 60 %LEL for 20 s (longer than any on-delay), one reading a second.
    let lp: String = (0..21)
        .map(|i| {
            let v = if i == 0 { 0.0 } else { 60.0 };
            format!(
                "reading,park=demo,tag=DEMO01-GT-103 value={v},quality=0i {}\n",
                1_764_151_200_000_000_000i64 + i * 1_000_000_000
            )
        })
        .collect();
    std::fs::write(replays.join("prod.lp"), lp).unwrap();
    let (s, body) = engineer
        .post(
            "/api/v1/drills",
            json!({"id": "drill-t3", "replay": {"file": "../journal.sqlite"}, "speed": "max"}),
        )
        .await;
    assert_eq!(s, 422, "a path, not a file name: {body}");
    let (s, body) = engineer
        .post(
            "/api/v1/drills",
            json!({"id": "drill-t3", "replay": {"file": "missing.lp"}, "speed": "max"}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = engineer
        .post(
            "/api/v1/drills",
            json!({"id": "drill-t3", "replay": {"file": "prod.lp"}, "speed": "max"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let st = until("the replayed file's level-2 alarm in the drill", || async {
        let (_, st) = operator.get("/api/v1/drills/drill-t3").await;
        st["alarms"]
            .as_array()?
            .iter()
            .any(|a| a["alarm"] == "DEMO01-GT-103:HH")
            .then_some(st)
    })
    .await;
    assert_eq!(st["readings"], 21, "{st}");
    let (s, _) = engineer
        .post("/api/v1/drills/drill-t3/stop", json!({}))
        .await;
    assert_eq!(s, 200);

    shutdown.cancel();
    running.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), served.join).await;
}
