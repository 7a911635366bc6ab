//! Linkage through the real `parkguard` binary: a reading over MQTT (real mosquitto)
//! raises an alarm, which the MQTT channel publishes on the park's alarm topic (read back
//! with `mosquitto_sub`), and which — left unacknowledged — the daemon's escalation ticker
//! escalates to a webhook after `after = "2s"`, as a notification of its own (id ≥ 2^61,
//! level text), recorded in the journal database with its delivery status.

#![allow(clippy::unwrap_used)]

use parkguard::linkage::escalation_log::{self, ESCALATION_ID_BASE};
use parkguard::linkage::outbox::{self, Status};
use parkguard_tests::servers::mosquitto;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn parkguard_bin() -> PathBuf {
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

type Received = Arc<Mutex<Vec<(String, String)>>>;

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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn alarm_goes_out_on_mqtt_and_escalates_to_the_webhook_when_unacknowledged() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hook_port, got) = start_receiver(&rt);
    let broker = mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-for-the-test").unwrap();
    let text = format!(
        r#"
[park]
id = "e2e-park"
name = "端到端测试园区"

[data]
dir = "{data}"

[api]
listen = "127.0.0.1:0"

[[mqtt_broker]]
id = "park"
host = "127.0.0.1"
port = {port}
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

[[channel]]
type = "mqtt"
name = "park-bus"
broker = "park"

[[channel]]
type = "webhook"
name = "bureau-desk"
url = "http://127.0.0.1:{hook_port}/hook"
secret_file = "{secret}"

[[escalation]]
name = "fast"
[[escalation.step]]
after = "2s"
channels = ["bureau-desk"]
label = "园区应急管理局值班室"

[[route]]
name = "everything"
kinds = ["combustible"]
channels = ["park-bus"]
escalation = "fast"
"#,
        data = data.display(),
        port = broker.port,
        secret = secret.display(),
    );
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, text).unwrap();

    // The subscriber listens before anything is published.
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", "parkguard/#", "-F", "%r|%t|%p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Default::default();
    {
        let out = sub.stdout.take().unwrap();
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
    }
    wait_for("mosquitto_sub subscribed", Duration::from_secs(20), || {
        mosquitto::publish(&broker, "parkguard/probe", b"{}", 1, false).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        (!lines.lock().unwrap().is_empty()).then_some(())
    });

    let log = dir.path().join("run.log");
    let mut pg: Child = Command::new(parkguard_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    wait_for("parkguard to subscribe", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("mqtt connected"))
    });
    let payload = format!(r#"{{"value": 40.0, "ts": {}}}"#, now_ms());
    let raised = Instant::now();
    mosquitto::publish(&broker, "gw/GT-1", payload.as_bytes(), 1, false).unwrap();

    // The MQTT channel publishes the alarm on the park's alarm topic.
    let alarm_line = wait_for("the alarm on MQTT", Duration::from_secs(30), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("|parkguard/e2e-park/alarms/E1/GT-1|"))
            .cloned()
    });
    let body: serde_json::Value =
        serde_json::from_str(alarm_line.splitn(3, '|').nth(2).unwrap()).unwrap();
    assert_eq!(body["schema"], "parkguard.event.v1");
    assert_eq!(body["tag"], "GT-1");
    assert_eq!(body["state"], "unacknowledged");
    let event_id = body["event_id"].as_u64().unwrap();
    assert!(event_id < ESCALATION_ID_BASE);

    // Unacknowledged: after 2 s the bureau desk is called, under a key of its own.
    let (key, hook_body) = wait_for("the escalation webhook", Duration::from_secs(30), || {
        got.lock().unwrap().first().cloned()
    });
    assert!(
        raised.elapsed() >= Duration::from_secs(2),
        "not before T1 = 2 s"
    );
    assert_eq!(key, ESCALATION_ID_BASE.to_string());
    assert!(
        hook_body.contains("【升级 第1级 园区应急管理局值班室】"),
        "{hook_body}"
    );
    assert!(hook_body.contains("GT-1"), "{hook_body}");

    // Recorded: the step, and every delivery confirmed.
    let journal = data.join("journal.sqlite");
    let conn = outbox::open(&journal).unwrap();
    let steps = escalation_log::steps(&conn, "GT-1:H").unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].channels, ["bureau-desk"]);
    let rows = wait_for("both deliveries marked", Duration::from_secs(30), || {
        let rows = outbox::alarm_rows(&conn, "GT-1:H").unwrap();
        (rows.len() == 2 && rows.iter().all(|r| r.status == Status::Delivered)).then_some(rows)
    });
    assert_eq!(rows[0].event_id, event_id);
    assert_eq!(rows[0].channel, "park-bus");
    assert_eq!(rows[0].receipt.as_deref(), Some("PUBACK x1"));
    assert_eq!(rows[1].channel, "bureau-desk");

    // No repeat is configured: one call only.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(got.lock().unwrap().len(), 1);

    let _ = Command::new("kill")
        .args(["-TERM", &pg.id().to_string()])
        .status();
    assert!(pg.wait().unwrap().success());
    let _ = sub.kill();
    let _ = sub.wait();
}
