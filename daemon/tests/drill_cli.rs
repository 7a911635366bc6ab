//! `parkguard drill start|status|ack|stop|report --api URL`: the real binary against a
//! running daemon's API (real topology and HTTP server in this process, spoken to over TCP).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use parkguard::auth::create_demo_users;
use parkguard::drill::live::{DrillParts, Drills};
use serde_json::Value;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Run `parkguard drill ARGS` as `user`; (exit ok, stdout, stderr).
async fn pg(user: &str, password: &str, args: Vec<String>) -> (bool, String, String) {
    let user = user.to_string();
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_parkguard"))
            .arg("drill")
            .args(&args)
            .args(["--user", &user])
            .env("PARKGUARD_PASSWORD", password)
            .env_remove("PARKGUARD_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_commands_against_a_running_daemon() {
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
    let api = format!("http://{}", served.addr);
    let (eng, op) = (pw("engineer"), pw("operator"));

    // An operator may not start a drill: the CLI fails with the API's reason.
    let (ok, _, err) = pg(
        "operator",
        &op,
        args(&["start", "--api", &api, "--scenario", "chlorine-release"]),
    )
    .await;
    assert!(!ok);
    assert!(err.contains("403"), "{err}");

    let (ok, out, err) = pg(
        "engineer",
        &eng,
        args(&[
            "start",
            "--api",
            &api,
            "--scenario",
            "chlorine-release",
            "--speed",
            "max",
            "--id",
            "cli-1",
        ]),
    )
    .await;
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["id"], "cli-1");

    // Status until the script has run; then acknowledge one drill alarm as the operator.
    let mut alarm = None;
    for _ in 0..300 {
        let (ok, out, err) = pg("operator", &op, args(&["status", "--api", &api, "cli-1"])).await;
        assert!(ok, "{err}");
        let st: Value = serde_json::from_str(&out).unwrap();
        if st["state"] == "finished" {
            alarm = st["alarms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["state"] == "unacknowledged")
                .map(|a| a["alarm"].as_str().unwrap().to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alarm = alarm.expect("an unacknowledged drill alarm after the script");
    let (ok, out, err) = pg(
        "operator",
        &op,
        args(&["ack", "--api", &api, "cli-1", &alarm]),
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"acknowledged\": 1"), "{out}");

    let (ok, out, err) = pg("engineer", &eng, args(&["stop", "--api", &api, "cli-1"])).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["per_operator"][0]["operator"], "operator");
    assert_eq!(report["acks"][0]["alarm"], alarm.as_str());

    let page = dir.path().join("cli-1.html");
    let (ok, _, err) = pg(
        "operator",
        &op,
        args(&[
            "report",
            "--api",
            &api,
            "cli-1",
            "--html",
            page.to_str().unwrap(),
        ]),
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        std::fs::read_to_string(&page)
            .unwrap()
            .contains("演练 / DRILL — cli-1")
    );

    shutdown.cancel();
    running.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), served.join).await;
}
