//! Drills judge against the limits in force, not the configuration file's: over the REAL
//! topology (engine task, journal, limits store `<data.dir>/limits.sqlite`) and the HTTP
//! API, a scripted hydrogen reading of 15 %LEL — below the configured level-1 limit of
//! DEMO01-GT-103, above the one an engineer then sets through the API — raises no drill
//! alarm before the change and a level-1 drill alarm after it; the report names the limit
//! version the drill ran with.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use parkguard::auth::create_demo_users;
use parkguard::drill::live::{DrillParts, Drills};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod common;
use common::Session;

const WAIT: Duration = Duration::from_secs(40);
const TAG: &str = "DEMO01-GT-103";
/// The scripted value, %LEL: between the new level-1 limit and the configured one.
const VALUE: f64 = 15.0;
/// The level-1 limit the engineer sets, %LEL.
const NEW_H: f64 = 10.0;

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

/// Run the `h2-15` scenario as drill `id` at max speed until its script ends; stop it and
/// return (the drill's alarms when the script ended, the final report).
async fn drill(engineer: &Session, id: &str) -> (Vec<Value>, Value) {
    let (s, body) = engineer
        .send(
            Method::POST,
            "/api/v1/drills",
            json!({"id": id, "scenario": "h2-15", "speed": "max"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let status = until("the drill to finish its script", || async {
        let (_, st) = engineer.get(&format!("/api/v1/drills/{id}")).await;
        (st["state"] == "finished").then_some(st)
    })
    .await;
    assert!(status["readings"].as_u64().unwrap() > 0, "{status}");
    let (s, report) = engineer
        .send(
            Method::POST,
            &format!("/api/v1/drills/{id}/stop"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{report}");
    (status["alarms"].as_array().unwrap().clone(), report)
}

fn point_alarms(alarms: &[Value]) -> Vec<String> {
    alarms
        .iter()
        .filter(|a| a["source"] == TAG)
        .map(|a| a["alarm"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_runs_the_limits_changed_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/demo.toml"
    ))
    .unwrap();
    let mut cfg = parkguard::config::load_str("demo.toml", &text).unwrap();
    cfg.data.dir = dir.path().join("data");
    cfg.api.listen = "127.0.0.1:0".into();
    std::fs::create_dir_all(cfg.data.dir.join("scenarios")).unwrap();
    let demo = create_demo_users(&cfg.api.users_file(&cfg.data.dir)).unwrap();
    let pw = |name: &str| {
        demo.iter()
            .find(|(u, _, _)| u == name)
            .map(|(_, _, p)| p.clone())
            .unwrap()
    };
    let configured_h = cfg.table.by_tag(TAG).unwrap().limits.h.unwrap();
    assert!(
        NEW_H < VALUE && VALUE < configured_h,
        "the scripted value lies between the new ({NEW_H}) and the configured ({configured_h}) limit"
    );
    // 15 %LEL of hydrogen from 5 s on, held for 40 s (far longer than any gas on-delay).
    std::fs::write(
        cfg.data.dir.join("scenarios/h2-15.toml"),
        format!(
            "[scenario]\nname = \"氢气 15 %LEL / hydrogen at 15 %LEL\"\nduration = \"45s\"\n\
             [[event]]\nat = \"5s\"\naction = \"set\"\ntag = \"{TAG}\"\nvalue = {VALUE}\n"
        ),
    )
    .unwrap();

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
    // As `parkguard run` wires it (daemon/src/run.rs).
    let store = running.engine.limits.as_ref().unwrap().store.clone();
    let drills = Arc::new(
        Drills::new(DrillParts {
            table: cfg.table.clone(),
            engine: cfg.engine.clone(),
            vote_groups: cfg.vote_groups.clone(),
            journal: Some(running.journal.clone()),
            data_dir: cfg.data.dir.clone(),
            spool_dir: running.spool_dir.clone(),
            shutdown: shutdown.clone(),
        })
        .with_limits(store),
    );
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

    // With the configured limits, 15 %LEL raises nothing.
    let (alarms, report) = drill(&engineer, "drill-before").await;
    assert!(point_alarms(&alarms).is_empty(), "{alarms:?}");
    assert_eq!(report["limits"], json!([]), "{report}");

    // The engineer lowers the level-1 limit through the API (version 2).
    let (s, cur) = engineer.get(&format!("/api/v1/limits/{TAG}")).await;
    assert_eq!(s, 200, "{cur}");
    let mut limits = cur["current"]["limits"].clone();
    assert_eq!(limits["h"].as_f64(), Some(configured_h), "{cur}");
    limits["h"] = json!(NEW_H);
    let (s, body) = engineer
        .send(
            Method::PUT,
            &format!("/api/v1/limits/{TAG}"),
            json!({"limits": limits, "reason": "电解车间氢气一级报警下调 / lower level-1"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (_, versions) = engineer
        .get(&format!("/api/v1/limits/{TAG}/versions"))
        .await;
    assert_eq!(versions.as_array().unwrap().last().unwrap()["version"], 2);

    // The same script now alarms at level 1, per the new limit, and the report says which
    // version the drill ran.
    let (alarms, report) = drill(&engineer, "drill-after").await;
    assert_eq!(
        point_alarms(&alarms),
        [format!("{TAG}:H")],
        "level-1 per the new limit: {alarms:?}"
    );
    assert!(alarms.iter().all(|a| a["drill"] == "drill-after"));
    let used = report["limits"].as_array().unwrap();
    assert_eq!(used.len(), 1, "{report}");
    assert_eq!(used[0]["tag"], TAG);
    assert_eq!(used[0]["version"], 2);
    assert_eq!(used[0]["changed_by"], "engineer");
    let (s, html) = engineer
        .get_text("/api/v1/drills/drill-after/report?format=html")
        .await;
    assert_eq!(s, 200);
    assert!(
        html.contains(&format!("<td>{TAG}</td><td>2</td><td>engineer</td>")),
        "{html}"
    );

    // The real engine runs the new limit too (the drill did not take it from elsewhere).
    let (_, point) = engineer.get(&format!("/api/v1/limits/{TAG}")).await;
    assert_eq!(point["current"]["limits"]["h"].as_f64(), Some(NEW_H));

    shutdown.cancel();
    running.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), served.join).await;
}
