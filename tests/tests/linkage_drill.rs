//! A drill's alarms escalate like real ones, but only ever on drill channels, through the
//! REAL `parkguard` binary and a real webhook receiver. The park's escalation policy names
//! the bureau desk (a production webhook) for both levels; two drills of the same
//! scenario raise the same alarm at once. Each drill's level 1 reaches the drill desk
//! (the drill channel its alarm went to) as 【演练】【升级 第1级 …】 under its own key, the
//! bureau desk gets nothing at all; drill A is stopped after its level 1 and never gets a
//! level 2, while drill B, still running, gets its level 2 on time.

#![allow(clippy::unwrap_used)]

mod console_common;

use anyhow::{Context, Result};
use console_common::{ApiClient, Daemon, add_user};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ENGINEER: &str = "chen.gong";
const ENGINEER_PASS: &str = "engineer-pass-2718";

/// (path, Idempotency-Key, body) of every webhook call, in arrival order. A body is the
/// envelope `{schema, key, drill, count, events: [...]}`.
type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

async fn start_receiver() -> Result<(u16, Received)> {
    use axum::extract::Path;
    use axum::routing::post;
    let got: Received = Default::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/{desk}",
        post(
            move |Path(desk): Path<String>, headers: axum::http::HeaderMap, body: String| {
                let sink = sink.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    sink.lock().unwrap().push((desk, key, body));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, got))
}

/// The events delivered to `desk` whose Chinese text contains `needle`, with the
/// idempotency key of the call that carried each.
fn calls(got: &Received, desk: &str, needle: &str) -> Vec<(String, Value)> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(d, _, _)| d == desk)
        .flat_map(|(_, k, b)| {
            b["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |e| (k.clone(), e))
        })
        .filter(|(_, e)| e["message_zh"].as_str().unwrap_or("").contains(needle))
        .collect()
}

async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_escalates_on_its_drill_channel_only_and_stops_with_the_drill() -> Result<()> {
    let (port, got) = start_receiver().await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("scenarios"))?;
    add_user(
        &data.join("users.toml"),
        ENGINEER,
        "engineer",
        ENGINEER_PASS,
    )?;
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-for-the-test")?;
    // GT-1 goes to 40 %LEL two seconds into the drill and stays there: above its first
    // alarm level (H, 25 %LEL) and below the second, so one alarm, GT-1:H, stays raised
    // and unacknowledged.
    std::fs::write(
        data.join("scenarios/spike.toml"),
        r#"
[scenario]
name = "储罐区可燃气体泄漏 / Tank farm leak"
duration = "5s"

[[event]]
at = "2s"
action = "set"
tag = "GT-1"
value = 40.0
"#,
    )?;
    let text = format!(
        r#"
[park]
id = "drill-park"
name = "演练测试园区"

[data]
dir = "{data}"

[api]
listen = "127.0.0.1:0"

# The drill's raise and its levels go to one channel and one group (the drill's
# enterprise): no grouping window, so a level is not held back behind the raise.
[outbox]
group_window = "0s"

[[enterprise]]
code = "E1"
name = "一号企业"

[[point]]
tag = "GT-1"
name = "储罐区可燃气体"
enterprise = "E1"
kind = "combustible"
gas = "ch4"
unit = "%LEL"
range = [0, 100]
interval = "1h"
limits = {{ on_delay = "0s" }}

[[channel]]
type = "webhook"
name = "bureau-desk"
url = "http://127.0.0.1:{port}/bureau"
secret_file = "{secret}"

[[channel]]
type = "webhook"
name = "drill-desk"
drill = true
url = "http://127.0.0.1:{port}/drill"
secret_file = "{secret}"

[[escalation]]
name = "standard"
[[escalation.step]]
after = "2s"
channels = ["bureau-desk"]
label = "园区应急管理局值班室"
[[escalation.step]]
after = "12s"
channels = ["bureau-desk"]
label = "局领导"

[[route]]
name = "gas"
kinds = ["combustible"]
channels = ["bureau-desk", "drill-desk"]
escalation = "standard"
"#,
        data = data.display(),
        secret = secret.display(),
    );
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, text)?;
    let mut pg = Daemon::start(&cfg, &dir.path().join("run.log"))?;
    let base = pg.console_url().await?;
    let api = ApiClient::login(&base, ENGINEER, ENGINEER_PASS).await?;

    let started = Instant::now();
    for id in ["exercise-a", "exercise-b"] {
        let (status, body) = api
            .send(
                reqwest::Method::POST,
                "/api/v1/drills",
                &json!({"id": id, "scenario": "spike", "speed": "max"}),
            )
            .await?;
        anyhow::ensure!(status == 201, "start {id}: {status} {body}");
    }

    // Level 1 of each drill: on the drill desk, marked as a drill, each under its own key.
    let level1 = wait_until("level 1 of both drills", Duration::from_secs(30), || {
        let c = calls(&got, "drill", "【演练】【升级 第1级 园区应急管理局值班室】");
        (c.len() >= 2).then_some(c)
    })
    .await
    .with_context(|| {
        let log = pg.log();
        let tail = &log[log.len().saturating_sub(6000)..];
        format!(
            "received: {:?}\ndaemon log (end): {tail}",
            got.lock().unwrap()
        )
    })?;
    let mut drills: Vec<&str> = level1
        .iter()
        .filter_map(|(_, e)| e["drill"].as_str())
        .collect();
    drills.sort_unstable();
    assert_eq!(drills, ["exercise-a", "exercise-b"], "{level1:?}");
    for (_, e) in &level1 {
        assert_eq!(e["alarm_id"], "GT-1:H", "{e}");
        assert!(
            e["message_en"]
                .as_str()
                .unwrap_or("")
                .starts_with("[DRILL] [escalation level 1: 园区应急管理局值班室]"),
            "{e}"
        );
    }
    let keys: std::collections::BTreeSet<&String> = level1.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 2, "one key per drill's level: {level1:?}");
    // The raises themselves went to the drill desk too, each under a key of its own.
    let raises = calls(&got, "drill", "【演练】一号企业");
    assert_eq!(raises.len(), 2, "{raises:?}");

    // Drill A is stopped; drill B runs on.
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/drills/exercise-a/stop",
            &json!({}),
        )
        .await?;
    anyhow::ensure!(status == 200, "stop: {status} {body}");

    // Level 2 (12 s after the raise) reaches the drill desk for B alone.
    wait_until("level 2 of drill B", Duration::from_secs(40), || {
        (!calls(&got, "drill", "【演练】【升级 第2级 局领导】").is_empty()).then_some(())
    })
    .await?;
    assert!(
        started.elapsed() >= Duration::from_secs(12),
        "level 2 before its 12 s"
    );
    // Both drills raised the alarm within the same second: give A's level 2 that second
    // and more to come (it must not).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let level2 = calls(&got, "drill", "第2级");
    let log = pg.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("escalation") || l.contains("drill"))
        .collect();
    assert_eq!(
        level2.len(),
        1,
        "{level2:?}\ndaemon log on drills and escalation: {said:#?}"
    );
    assert_eq!(level2[0].1["drill"], "exercise-b");

    // Nothing of either drill — alarm or escalation — reached the production desk, though
    // the policy names it for both levels.
    let bureau: Vec<Value> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _, _)| d == "bureau")
        .map(|(_, _, b)| b.clone())
        .collect();
    assert!(
        bureau.is_empty(),
        "drill reached a production channel: {bureau:?}"
    );

    // The journal records A's escalation as one step, on the drill desk.
    let journal = data.join("journal.sqlite");
    let conn = parkguard::linkage::outbox::open(&journal).context("journal")?;
    let steps =
        parkguard::linkage::escalation_log::steps(&conn, "drill:exercise-a/GT-1:H").unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].channels, ["drill-desk"]);
    pg.stop()?;
    Ok(())
}
