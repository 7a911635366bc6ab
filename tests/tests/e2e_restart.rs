//! The real `parkguard` binary end to end: MQTT (real mosquitto) → engine → journal and
//! spool → InfluxDB 2 API (real VictoriaMetrics); then `kill -9` and a restart, which must
//! neither forget the unacknowledged alarm nor announce it again.

#![allow(clippy::unwrap_used)]

use parkguard::store::journal::{EventFilter, Journal};
use parkguard_tests::servers::{mosquitto, victoria};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn parkguard_bin() -> PathBuf {
    // tests run from target/<profile>/deps; the daemon's binary sits in target/<profile>.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("parkguard");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p parkguard` (tests/run.sh does)",
        bin.display()
    );
    bin
}

fn config(data: &Path, mqtt_port: u16, influx_url: &str) -> String {
    format!(
        r#"
[park]
id = "e2e-park"
name = "端到端测试园区"

[data]
dir = "{data}"

[api]
listen = "127.0.0.1:0"

[influx]
url = "{influx_url}"
org = "park"
bucket = "parkguard"
batch_interval_ms = 200

[[mqtt_broker]]
id = "park"
host = "127.0.0.1"
port = {mqtt_port}
client_id = "parkguard-e2e"

[[mqtt_subscription]]
broker = "park"
topic = "gw/+"
format = "json"
tag_segment = 1
time_field = "ts"
time_format = "epoch_ms"

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
"#,
        data = data.display()
    )
}

fn start(cfg: &Path, log: &Path) -> Child {
    let err = std::fs::File::create(log).unwrap();
    Command::new(parkguard_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (alarm activations of GT-1:H, latest state of GT-1:H, max id)
fn journal_view(path: &Path) -> Option<(usize, String, u64)> {
    let j = Journal::open_readonly(path).ok()?;
    let recs = j
        .query(&EventFilter {
            alarm_id: Some("GT-1:H".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .ok()?;
    if recs.is_empty() {
        return None;
    }
    let activations = recs
        .iter()
        .filter(|r| r.payload["kind"] == "activate")
        .count();
    let latest = recs.iter().max_by_key(|r| r.id)?;
    Some((
        activations,
        latest.payload["to"].as_str()?.to_string(),
        j.max_id().ok()?,
    ))
}

/// Values of the `reading_value` series of `tag` in VictoriaMetrics, and its `park` label.
fn stored(vm: &str, tag: &str) -> Option<(Vec<f64>, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let series = rt
        .block_on(victoria::export(
            vm,
            &format!(r#"reading_value{{tag="{tag}"}}"#),
        ))
        .ok()?;
    let s = series.into_iter().next()?;
    Some((s.values, s.labels.get("park").cloned().unwrap_or_default()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn alarm_survives_kill_9_and_readings_reach_the_database() {
    let broker = mosquitto::start().unwrap();
    let vm = victoria::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, config(&data, broker.port, &victoria::url(&vm))).unwrap();
    let journal = data.join("journal.sqlite");

    let mut pg = start(&cfg, &dir.path().join("run1.log"));
    // Wait for the subscription (the session is persistent, but the first connect must
    // have happened for the broker to queue for it).
    wait_for("parkguard to subscribe", Duration::from_secs(30), || {
        std::fs::read_to_string(dir.path().join("run1.log"))
            .ok()
            .filter(|l| l.contains("mqtt connected"))
    });
    let payload = format!(r#"{{"value": 30.5, "ts": {}}}"#, now_ms());
    mosquitto::publish(&broker, "gw/GT-1", payload.as_bytes(), 1, false).unwrap();

    let (acts, state, max_before) = wait_for(
        "the level-1 alarm in the journal",
        Duration::from_secs(30),
        || journal_view(&journal),
    );
    assert_eq!(acts, 1);
    assert_eq!(state, "unacknowledged");

    // The reading reached the time-series database through /api/v2/write.
    let vm_url = victoria::url(&vm);
    let (values, park) = wait_for(
        "the reading in VictoriaMetrics",
        Duration::from_secs(30),
        || stored(&vm_url, "GT-1").filter(|(v, _)| v.contains(&30.5)),
    );
    assert_eq!(values, vec![30.5]);
    assert_eq!(park, "e2e-park");

    // Crash.
    pg.kill().unwrap();
    pg.wait().unwrap();

    // Restart; the condition is still present (a new reading above level-1).
    let mut pg = start(&cfg, &dir.path().join("run2.log"));
    wait_for("parkguard to restart", Duration::from_secs(30), || {
        std::fs::read_to_string(dir.path().join("run2.log"))
            .ok()
            .filter(|l| l.contains("mqtt connected"))
    });
    let log = std::fs::read_to_string(dir.path().join("run2.log")).unwrap();
    assert!(
        log.contains("alarm states rebuilt from the journal"),
        "{log}"
    );
    let payload = format!(r#"{{"value": 31.0, "ts": {}}}"#, now_ms());
    mosquitto::publish(&broker, "gw/GT-1", payload.as_bytes(), 1, false).unwrap();
    let (values, _) = wait_for(
        "the second reading in VictoriaMetrics",
        Duration::from_secs(30),
        || stored(&vm_url, "GT-1").filter(|(v, _)| v.contains(&31.0)),
    );
    assert_eq!(values, vec![30.5, 31.0], "each reading stored once");
    std::thread::sleep(Duration::from_millis(500));
    let (acts, state, max_after) = journal_view(&journal).unwrap();
    assert_eq!(
        acts, 1,
        "the restart must not announce the standing alarm again"
    );
    assert_eq!(
        state, "unacknowledged",
        "the restart must not forget it either"
    );
    assert!(max_after >= max_before, "event ids continue");

    let _ = Command::new("kill")
        .args(["-TERM", &pg.id().to_string()])
        .status();
    let status = pg.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

/// What the webhook receiver got: (Idempotency-Key, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

fn start_receiver(rt: &tokio::runtime::Runtime) -> (u16, Received) {
    use axum::routing::post;
    let got: Received = Default::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                sink.lock().unwrap().push((key, body));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

#[test]
fn an_alarm_reaches_the_webhook_once_and_is_journalled() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hook_port, got) = start_receiver(&rt);
    let broker = mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-for-the-test").unwrap();
    let mut text = config(&data, broker.port, "http://127.0.0.1:9");
    // No InfluxDB in this test: drop the [influx] table.
    let start_influx = text.find("[influx]").unwrap();
    let end_influx = text.find("[[mqtt_broker]]").unwrap();
    text.replace_range(start_influx..end_influx, "");
    text.push_str(&format!(
        r#"
[[channel]]
type = "webhook"
name = "bureau-desk"
url = "http://127.0.0.1:{hook_port}/hook"
secret_file = "{}"

[[channel]]
type = "webhook"
name = "drill-desk"
drill = true
url = "http://127.0.0.1:{hook_port}/hook"
secret_file = "{}"

[[route]]
name = "everything"
channels = ["bureau-desk", "drill-desk"]
"#,
        secret.display(),
        secret.display()
    ));
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut pg = start(&cfg, &dir.path().join("run.log"));
    wait_for("parkguard to subscribe", Duration::from_secs(30), || {
        std::fs::read_to_string(dir.path().join("run.log"))
            .ok()
            .filter(|l| l.contains("mqtt connected"))
    });
    let payload = format!(r#"{{"value": 40.0, "ts": {}}}"#, now_ms());
    mosquitto::publish(&broker, "gw/GT-1", payload.as_bytes(), 1, false).unwrap();
    let journal = data.join("journal.sqlite");
    let (_, _, _) = wait_for("the alarm in the journal", Duration::from_secs(30), || {
        journal_view(&journal)
    });
    let first = wait_for("the webhook delivery", Duration::from_secs(30), || {
        got.lock().unwrap().first().cloned()
    });
    let j = Journal::open_readonly(&journal).unwrap();
    let rec = j
        .query(&EventFilter {
            alarm_id: Some("GT-1:H".into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .find(|r| r.payload["annunciate"] == true)
        .expect("an annunciated event");
    assert_eq!(
        first.0,
        rec.id.to_string(),
        "idempotency key = journalled event id"
    );
    assert!(first.1.contains("GT-1"), "{}", first.1);
    assert!(
        first.1.contains("储罐区可燃气体"),
        "Chinese text: {}",
        first.1
    );
    // Give the outbox time to (wrongly) send more, then count: one alarm, one production
    // delivery, nothing to the drill channel (this is not a drill).
    std::thread::sleep(Duration::from_secs(2));
    let all = got.lock().unwrap().clone();
    let for_event: Vec<_> = all
        .iter()
        .filter(|(k, _)| *k == rec.id.to_string())
        .collect();
    assert_eq!(
        for_event.len(),
        1,
        "exactly one delivery of a real alarm: {all:?}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pg.id().to_string()])
        .status();
    assert!(pg.wait().unwrap().success());
}
