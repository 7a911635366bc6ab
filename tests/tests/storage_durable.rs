//! Durability through the real `parkguard` binary (real mosquitto, real VictoriaMetrics):
//! - alarm events and warning grades reach the database as `alarm_event` / `warning`
//!   series, also when the database is down while they happen and parkguard is killed
//!   with SIGKILL before it comes back;
//! - every MQTT QoS 1 reading the publisher got a PUBACK for reaches the database after
//!   parkguard was killed with SIGKILL in the middle of a sustained stream (parkguard
//!   acknowledges to the broker only after the spool append and fsync).

#![allow(clippy::unwrap_used)]

use parkguard::store::journal::{EventFilter, Journal};
use parkguard_drivers::mqtt::MqttPublisher;
use parkguard_drivers::mqtt::config::MqttBrokerConfig;
use parkguard_tests::servers::{mosquitto, victoria};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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

fn config(data: &Path, mqtt_port: u16, influx_url: &str) -> String {
    format!(
        r#"
[park]
id = "durable-park"
name = "持久性测试园区"

[data]
dir = "{data}"

[api]
listen = "127.0.0.1:0"

[influx]
url = "{influx_url}"
org = "park"
bucket = "parkguard"
batch_interval_ms = 200
retry_initial_ms = 100
retry_max_ms = 1000

[[mqtt_broker]]
id = "park"
host = "127.0.0.1"
port = {mqtt_port}
client_id = "parkguard-durable"
reconnect_initial_ms = 100
reconnect_max_s = 1

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
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_log(log: &Path, text: &str) {
    wait_for(text, Duration::from_secs(60), || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|l| l.contains(text))
    });
}

fn export(vm: &str, selector: &str) -> Vec<victoria::Series> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(victoria::export(vm, selector))
        .unwrap_or_default()
}

/// Real-path journal records: (id, kind).
fn journal_ids(path: &Path) -> Vec<(u64, String)> {
    let Ok(j) = Journal::open_readonly(path) else {
        return Vec::new();
    };
    j.query(&EventFilter {
        drill: Some(None),
        limit: Some(100_000),
        ..Default::default()
    })
    .unwrap_or_default()
    .into_iter()
    .map(|r| (r.id, r.kind.as_str().to_owned()))
    .collect()
}

/// Every `event_id` stored in VictoriaMetrics for measurement `m`, with duplicates.
fn stored_ids(vm: &str, m: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = export(vm, &format!(r#"{m}_event_id{{park="durable-park"}}"#))
        .into_iter()
        .flat_map(|s| s.values)
        .map(|v| v as u64)
        .collect();
    ids.sort_unstable();
    ids
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn kill_9(pg: &mut Child) {
    pg.kill().unwrap();
    pg.wait().unwrap();
}

fn term(mut pg: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &pg.id().to_string()])
        .status();
    let status = pg.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[test]
fn alarm_events_and_warnings_reach_the_database_through_an_outage_and_a_crash() {
    let broker = mosquitto::start().unwrap();
    let vm_dir = tempfile::tempdir().unwrap();
    let vm_port = parkguard_tests::free_port().unwrap();
    let vm = victoria::start_on(&vm_dir.path().join("vm"), vm_port).unwrap();
    let vm_url = victoria::url(&vm);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, config(&data, broker.port, &vm_url)).unwrap();
    let journal = data.join("journal.sqlite");

    let log1 = dir.path().join("run1.log");
    let mut pg = start(&cfg, &log1);
    wait_log(&log1, "mqtt connected");
    let payload = format!(r#"{{"value": 30.5, "ts": {}}}"#, now_ms());
    mosquitto::publish(&broker, "gw/GT-1", payload.as_bytes(), 1, false).unwrap();

    // The level-1 alarm: journalled, then an alarm_event series with its event id.
    let activation = wait_for(
        "the level-1 alarm in the journal",
        Duration::from_secs(30),
        || {
            let j = Journal::open_readonly(&journal).ok()?;
            let recs = j
                .query(&EventFilter {
                    alarm_id: Some("GT-1:H".into()),
                    ..Default::default()
                })
                .ok()?;
            recs.into_iter().find(|r| r.payload["kind"] == "activate")
        },
    );
    let series = wait_for("the alarm_event series", Duration::from_secs(30), || {
        let s = export(&vm_url, r#"alarm_event_event_id{alarm="GT-1:H"}"#);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(series.len(), 1, "{series:?}");
    let s = &series[0];
    assert_eq!(s.values, vec![activation.id as f64]);
    assert_eq!(s.timestamps, vec![activation.time.millis()]);
    for (k, v) in [
        ("park", "durable-park"),
        ("enterprise", "E1"),
        ("tag", "GT-1"),
        ("event", "alarm"),
    ] {
        assert_eq!(s.labels.get(k).map(String::as_str), Some(v), "{k}: {s:?}");
    }
    let grade = export(&vm_url, r#"alarm_event_grade{alarm="GT-1:H"}"#);
    assert_eq!(grade.len(), 1, "priority as a number: {grade:?}");
    assert!(
        export(&vm_url, r#"alarm_event_trigger_value{alarm="GT-1:H"}"#)
            .iter()
            .any(|s| s.values.contains(&30.5)),
        "the value that raised the alarm"
    );
    let before = journal_ids(&journal);
    assert!(
        before.iter().any(|(_, k)| k == "warning"),
        "a level-1 alarm changes the enterprise's warning grade: {before:?}"
    );
    wait_for("the warning series", Duration::from_secs(30), || {
        let s = export(&vm_url, r#"warning_grade{enterprise="E1"}"#);
        s.iter().any(|s| s.values.contains(&1.0)).then_some(())
    });

    // Outage: the database goes away; a level-2 alarm happens; parkguard is killed
    // before the database is back, and restarted. (SIGTERM: VictoriaMetrics loses its
    // last seconds of samples on SIGKILL, which is not what this test is about.)
    let mut vm = vm;
    vm.terminate(Duration::from_secs(20));
    drop(vm);
    let payload = format!(r#"{{"value": 60.0, "ts": {}}}"#, now_ms());
    mosquitto::publish(&broker, "gw/GT-1", payload.as_bytes(), 1, false).unwrap();
    wait_for(
        "the level-2 alarm in the journal",
        Duration::from_secs(30),
        || {
            journal_ids(&journal)
                .iter()
                .any(|(id, _)| *id > before.iter().map(|(i, _)| *i).max().unwrap_or(0))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    kill_9(&mut pg);
    let log2 = dir.path().join("run2.log");
    let pg = start(&cfg, &log2);
    wait_log(&log2, "mqtt connected");
    let vm = victoria::start_on(&vm_dir.path().join("vm"), vm_port).unwrap();

    // Every real-path journal record is in the database exactly once: alarm and
    // operator records as alarm_event, warning records as warning.
    let split = |all: &[(u64, String)]| {
        let mut alarm = Vec::new();
        let mut warning = Vec::new();
        for (id, k) in all {
            if k == "warning" {
                warning.push(*id);
            } else {
                alarm.push(*id);
            }
        }
        alarm.sort_unstable();
        warning.sort_unstable();
        (alarm, warning)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (want_alarm, want_warning) = loop {
        let want = split(&journal_ids(&journal));
        let got = (
            stored_ids(&vm_url, "alarm_event"),
            stored_ids(&vm_url, "warning"),
        );
        if got == want {
            break want;
        }
        assert!(
            Instant::now() < deadline,
            "journal (alarm_event, warning) ids {want:?} != stored {got:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        want_alarm.len() >= 2,
        "level-1 and level-2 activations: {want_alarm:?}"
    );
    assert!(
        export(&vm_url, r#"alarm_event_event_id{alarm="GT-1:HH"}"#).len() == 1,
        "the level-2 alarm raised during the outage"
    );
    println!(
        "alarm_event ids {want_alarm:?}, warning ids {want_warning:?}: all in the database once"
    );
    term(pg);
    drop(vm);
}

#[test]
fn every_qos1_reading_acknowledged_before_kill_9_reaches_the_database() {
    let broker = mosquitto::start().unwrap();
    let vm = victoria::start().unwrap();
    let vm_url = victoria::url(&vm);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, config(&data, broker.port, &vm_url)).unwrap();
    let log1 = dir.path().join("run1.log");
    let mut pg = start(&cfg, &log1);
    wait_log(&log1, "mqtt connected");

    // The publisher: 16 concurrent QoS 1 publishers; reading k has time t0 + k ms, so
    // each stored sample names the message it came from.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t0 = now_ms() - 3_600_000;
    let acked: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let stop = CancellationToken::new();
    let pub_cfg: MqttBrokerConfig = serde_json::from_value(serde_json::json!({
        "id": "park", "host": "127.0.0.1", "port": broker.port, "client_id": "loadgen",
    }))
    .unwrap();
    let pub_broker = pub_cfg.validate().unwrap();
    const WORKERS: i64 = 16;
    let mut workers = Vec::new();
    {
        let _g = rt.enter();
        let publisher =
            MqttPublisher::spawn(&pub_broker, Duration::from_secs(10), stop.clone()).unwrap();
        for w in 0..WORKERS {
            let (p, acked, stop) = (publisher.clone(), acked.clone(), stop.clone());
            workers.push(rt.spawn(async move {
                let mut k = w;
                while !stop.is_cancelled() {
                    let body =
                        serde_json::json!({ "value": (k % 1000) as f64 / 100.0, "ts": t0 + k });
                    if p.publish("gw/GT-1", &body, false).await.is_ok() {
                        acked.lock().unwrap().insert(k);
                    }
                    k += WORKERS;
                }
            }));
        }
    }
    let count = |a: &Arc<Mutex<BTreeSet<i64>>>| a.lock().unwrap().len();
    wait_for(
        "2,000 acknowledged publishes",
        Duration::from_secs(60),
        || (count(&acked) >= 2_000).then_some(()),
    );
    // Readings are reaching the database at full speed: kill -9 mid-stream.
    let at_kill = count(&acked);
    kill_9(&mut pg);
    // The publisher goes on for a while against the broker (parkguard is away; its
    // persistent session queues).
    wait_for(
        "1,000 more acknowledged publishes",
        Duration::from_secs(60),
        || (count(&acked) >= at_kill + 1_000).then_some(()),
    );
    stop.cancel();
    for w in workers {
        rt.block_on(w).unwrap();
    }
    let acked: BTreeSet<i64> = acked.lock().unwrap().clone();
    let spool_before = std::fs::read_dir(data.join("spool")).unwrap().count();
    assert!(spool_before > 0);

    let log2 = dir.path().join("run2.log");
    let pg = start(&cfg, &log2);
    wait_log(&log2, "mqtt connected");
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let stored: BTreeSet<i64> = export(&vm_url, r#"reading_value{tag="GT-1"}"#)
            .into_iter()
            .flat_map(|s| s.timestamps)
            .map(|t| t - t0)
            .collect();
        if acked.is_subset(&stored) || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let missing: Vec<i64> = acked.difference(&stored).copied().collect();
    println!(
        "publisher got PUBACK for {} readings ({} before the kill); {} stored; missing {}",
        acked.len(),
        at_kill,
        stored.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged readings never reached the database, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let max_published = acked.iter().max().copied().unwrap_or(0) + 2 * WORKERS;
    assert!(
        stored.iter().all(|k| (0..=max_published).contains(k)),
        "nothing stored that was not published"
    );
    term(pg);
    drop(vm);
    drop(broker);
}
