//! parkguard's own system alarms in the operators' alarm list, over the REAL topology
//! (engine task, journal) and HTTP API, with the watcher `parkguard run` starts: the spool
//! failing to append raises `system/spool:APPEND_FAILING` (high priority) in
//! `/api/v1/alarms/active`; an operator acknowledges it; it returns when appends work
//! again; the journal has it. A spool overflow (latched) returns once acknowledged.
//! The flags are flipped by hand: filling a real disk is the storage tests' business.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use parkguard::auth::create_demo_users;
use parkguard::drill::live::Drills;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod common;
use common::Session;

const WAIT: Duration = Duration::from_secs(30);

/// The active alarm of the spool with `condition`, if listed.
async fn spool_alarm(s: &Session, condition: &str) -> Option<Value> {
    s.get_ok("/api/v1/alarms/active")
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["point"] == "spool" && a["condition"] == condition)
        .cloned()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_failures_are_alarms_operators_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/demo.toml"
    ))
    .unwrap();
    let mut cfg = parkguard::config::load_str("demo.toml", &text).unwrap();
    cfg.data.dir = dir.path().join("data");
    cfg.api.listen = "127.0.0.1:0".into();
    std::fs::create_dir_all(&cfg.data.dir).unwrap();
    let demo = create_demo_users(&cfg.api.users_file(&cfg.data.dir)).unwrap();
    let pw = |name: &str| {
        demo.iter()
            .find(|(u, _, _)| u == name)
            .map(|(_, _, p)| p.clone())
            .unwrap()
    };
    let shutdown = CancellationToken::new();
    let running = parkguard::topology::start(&cfg, shutdown.clone())
        .await
        .unwrap();
    // As `parkguard run` starts it, polling faster than its 1 s to keep the test short.
    let _watcher = parkguard::run::spawn_system_alarms(
        running.engine.clone(),
        parkguard::run::SystemWatch {
            spool: Some(running.spool.clone()),
            influx: Vec::new(),
        },
        Duration::from_millis(100),
        shutdown.clone(),
    );
    let parts = parkguard::api::engine_backend::BackendParts {
        engine: running.engine.clone(),
        table: cfg.table.clone(),
        engine_config: cfg.engine.clone(),
        journal_path: Some(running.journal_path.clone()),
        archive_dir: Some(running.spool_dir.clone()),
        modbus: None,
        mqtt: Vec::new(),
        linkage: None,
        spool: Some(running.spool.clone()),
        influx: [None, None],
    };
    let served = parkguard::api::wire::serve_with_drills(
        &cfg,
        parts,
        Arc::new(parkguard::api::Metrics::default()),
        Arc::new(Drills::unavailable()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", served.addr);
    let operator = Session::login(&base, "operator", &pw("operator")).await;
    assert!(
        spool_alarm(&operator, "spool_append_failing")
            .await
            .is_none()
    );

    // Appends fail (disk full): the alarm is in the operators' list, high priority.
    // The real spool clears the flag on its next good append (the demo park's offline
    // sources still produce comm-lost readings): keep the disk "failing" until told.
    running.spool.append_failures.store(3, Relaxed);
    let disk_bad = Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let (spool, bad) = (running.spool.clone(), disk_bad.clone());
        tokio::spawn(async move {
            while bad.load(Relaxed) {
                spool.append_failing.store(true, Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            spool.append_failing.store(false, Relaxed);
        });
    }
    let a = until("the append-failing system alarm", || async {
        spool_alarm(&operator, "spool_append_failing").await
    })
    .await;
    assert_eq!(a["priority"], "high", "{a}");
    assert_eq!(a["state"], "unack", "{a}");
    assert!(a["drill"].is_null(), "{a}");

    // Acknowledged like any alarm.
    let (s, body) = operator
        .post(
            &format!("/api/v1/alarms/{}/ack", a["id"]),
            json!({"comment": "清理数据盘 / freeing the data disk"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let a = spool_alarm(&operator, "spool_append_failing")
        .await
        .unwrap();
    assert_eq!(a["state"], "ack", "{a}");
    assert_eq!(a["acked_by"], "operator", "{a}");

    // Appends work again: after the off-delay (10 polls) the acknowledged alarm returns to
    // normal and leaves the list.
    disk_bad.store(false, Relaxed);
    until("the append-failing alarm to return", || async {
        spool_alarm(&operator, "spool_append_failing")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // Overflow is latched: it stays until acknowledged, then returns (flag cleared).
    running.spool.readings_dropped_unsent.store(500, Relaxed);
    running.spool.overflow_alarm.store(true, Relaxed);
    let o = until("the overflow system alarm", || async {
        spool_alarm(&operator, "spool_overflow").await
    })
    .await;
    assert_eq!(o["state"], "unack", "{o}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        spool_alarm(&operator, "spool_overflow").await.is_some(),
        "still listed while unacknowledged"
    );
    let (s, body) = operator
        .post(&format!("/api/v1/alarms/{}/ack", o["id"]), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    until("the acknowledged overflow alarm to return", || async {
        spool_alarm(&operator, "spool_overflow")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!running.spool.overflow_alarm.load(Relaxed), "flag cleared");

    // Journalled: the history has both activations.
    let history = until("the system alarms in the journal's history", || async {
        // (`point` filters by tag; a system alarm has none: filter here.)
        let h = operator.get_ok("/api/v1/alarms/history").await;
        let rows: Vec<Value> = h
            .as_array()?
            .iter()
            .filter(|r| r["point"] == "spool")
            .cloned()
            .collect();
        (rows.len() >= 2).then_some(rows)
    })
    .await;
    let conds: Vec<&str> = history
        .iter()
        .map(|r| r["condition"].as_str().unwrap())
        .collect();
    assert!(conds.contains(&"spool_append_failing"), "{history:?}");
    assert!(conds.contains(&"spool_overflow"), "{history:?}");

    shutdown.cancel();
    running.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), served.join).await;
}
