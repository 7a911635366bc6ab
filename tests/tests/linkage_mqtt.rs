//! The MQTT notification channel against a real mosquitto, read back with Debian's
//! `mosquitto_sub` (a client no one here wrote): topics, JSON body, QoS 1, and warnings
//! retained as current state (a late subscriber gets the newest grade and no alarm event).

use parkguard_drivers::mqtt::MqttBroker;
use parkguard_drivers::notify::{
    Channel, ChannelConfig, ChannelEnv, Notification, Priority, WarningGrade,
};
use parkguard_rules::{PointKind, Timestamp};
use parkguard_tests::Server;
use parkguard_tests::servers::mosquitto;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn alarm(id: u64) -> Notification {
    Notification {
        event_id: id,
        alarm_id: "E001/GT-101/HH".into(),
        drill: None,
        enterprise: "E001".into(),
        enterprise_name: Some("甲化工".into()),
        area: Some("罐区".into()),
        kind: PointKind::Combustible,
        tag: "GT-101".into(),
        point_name: "储罐区可燃气体".into(),
        condition: "HH".into(),
        priority: Priority::High,
        state: "unack".into(),
        value: Some(32.5),
        unit: "%LEL".into(),
        limit: Some(25.0),
        time: Timestamp::from_secs(1_795_688_531),
        grade: None,
        message_zh: "可燃气体浓度超二级报警值".into(),
        message_en: "combustible gas above level-2".into(),
    }
}

fn warning(id: u64, grade: Option<WarningGrade>) -> Notification {
    Notification {
        event_id: id,
        alarm_id: "warning/E001".into(),
        enterprise: "E001".into(),
        area: None,
        kind: PointKind::Other,
        tag: "warning/E001".into(),
        point_name: "甲化工".into(),
        condition: "WARNING".into(),
        priority: Priority::Critical,
        state: grade.map_or("none".into(), |g| format!("{g:?}").to_lowercase()),
        value: None,
        unit: String::new(),
        limit: None,
        grade,
        message_zh: "预警".into(),
        message_en: "warning".into(),
        ..alarm(id)
    }
}

/// A running `mosquitto_sub` printing `retain|qos|topic|payload` per message.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sub {
    fn start(server: &Server, topic: &str) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
            .args(["-q", "1", "-t", topic, "-F", "%r|%q|%t|%p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Sub { child, lines }
    }

    fn next(&self) -> (bool, u8, String, serde_json::Value) {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a message within 20 s");
        let mut parts = l.splitn(4, '|');
        let r = parts.next().expect("retain") == "1";
        let q: u8 = parts.next().expect("qos").parse().expect("qos number");
        let t = parts.next().expect("topic").to_string();
        let p = parts.next().expect("payload");
        let v = serde_json::from_str(p).unwrap_or_else(|e| panic!("not JSON ({e}): {p}"));
        (r, q, t, v)
    }

    /// Wait until the subscription is live: publish probes until one comes back.
    fn wait_subscribed(&self, server: &Server, probe_topic: &str) {
        for _ in 0..100 {
            mosquitto::publish(server, probe_topic, b"{\"probe\":true}", 1, false)
                .expect("mosquitto_pub");
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                assert!(l.contains("probe"), "first message is the probe: {l}");
                // drain further probes
                while self.lines.recv_timeout(Duration::from_millis(200)).is_ok() {}
                return;
            }
        }
        panic!("mosquitto_sub never subscribed");
    }
}

fn channel(port: u16, extra: serde_json::Value, cancel: &CancellationToken) -> Channel {
    let mut cfg = serde_json::json!({"type": "mqtt", "name": "bureau-bus", "broker": "bus"});
    if let (Some(o), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let cfg: ChannelConfig = serde_json::from_value(cfg).expect("mqtt channel table");
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let env = ChannelEnv {
        park: "yk".into(),
        mqtt_brokers: vec![MqttBroker::plain("bus", "127.0.0.1", port)],
        shutdown: cancel.clone(),
    };
    Channel::build_with(&cfg, &env).expect("channel builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_and_retained_warnings_reach_a_real_subscriber() {
    let server = mosquitto::start().expect("mosquitto");
    let cancel = CancellationToken::new();
    let sub = Sub::start(&server, "parkguard/#");
    sub.wait_subscribed(&server, "parkguard/probe");
    let ch = channel(server.port, serde_json::json!({}), &cancel);

    let d = ch
        .deliver_batch(&[
            alarm(41),
            warning(42, Some(WarningGrade::Orange)),
            warning(43, Some(WarningGrade::Red)),
        ])
        .await
        .expect("delivered: every PUBACK received");
    assert_eq!(d.receipt, "PUBACK x3");

    let (r, q, t, v) = sub.next();
    assert_eq!(t, "parkguard/yk/alarms/E001/GT-101");
    assert_eq!(q, 1, "QoS 1");
    assert!(!r, "live delivery never carries the retain flag");
    assert_eq!(v["schema"], "parkguard.event.v1");
    assert_eq!(v["event_id"], 41);
    assert_eq!(v["alarm_id"], "E001/GT-101/HH");
    assert_eq!(v["condition"], "HH");
    assert_eq!(v["value"], 32.5);
    assert_eq!(v["unit"], "%LEL");
    assert_eq!(v["priority"], "high");
    assert_eq!(v["time_local"], "2026-11-26 18:22:11");
    assert!(
        v["text_zh"]
            .as_str()
            .is_some_and(|s| s.contains("甲化工(E001) GT-101")),
        "{v}"
    );
    let back: Notification = serde_json::from_value(v).expect("body is a notification");
    assert_eq!(back, alarm(41));
    for (id, grade) in [(42, "orange"), (43, "red")] {
        let (_, q, t, v) = sub.next();
        assert_eq!(t, "parkguard/yk/warnings/E001");
        assert_eq!(q, 1);
        assert_eq!(v["event_id"], id);
        assert_eq!(v["grade"], grade);
    }

    // A late subscriber gets the current warning grade (retained, newest only) and no
    // alarm event (alarms are not retained).
    let late = Sub::start(&server, "parkguard/yk/#");
    let (r, _, t, v) = late.next();
    assert!(r, "the warning comes from the broker's retained store");
    assert_eq!(t, "parkguard/yk/warnings/E001");
    assert_eq!(v["event_id"], 43);
    assert_eq!(v["grade"], "red");
    assert!(
        late.lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing else is retained"
    );

    // The end of the warning replaces the retained grade.
    ch.deliver(&warning(44, None)).await.expect("delivered");
    let later = Sub::start(&server, "parkguard/yk/warnings/+");
    let (r, _, _, v) = later.next();
    assert!(r);
    assert_eq!(v["event_id"], 44);
    assert_eq!(v["grade"], serde_json::Value::Null);
    assert_eq!(v["state"], "none");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_channel_uses_drill_topics_and_custom_templates_apply() {
    let server = mosquitto::start().expect("mosquitto");
    let cancel = CancellationToken::new();
    let sub = Sub::start(&server, "#");
    sub.wait_subscribed(&server, "probe");
    let drill = channel(server.port, serde_json::json!({"drill": true}), &cancel);
    let mut n = alarm(7);
    n.drill = Some("2026-H2".into());
    drill
        .deliver(&n)
        .await
        .expect("drill event on a drill channel");
    let (_, _, t, v) = sub.next();
    assert_eq!(t, "parkguard/yk/drill/alarms/E001/GT-101");
    assert_eq!(v["drill"], "2026-H2");
    // The production channel refuses the drill event outright.
    let prod = channel(
        server.port,
        serde_json::json!({"name": "prod", "alarm_topic": "city/{park}/{enterprise}/{tag}/alarm"}),
        &cancel,
    );
    let e = prod.deliver(&n).await.expect_err("drill refused");
    assert!(!e.is_retryable(), "{e}");
    prod.deliver(&alarm(8)).await.expect("real event delivered");
    let (_, _, t, v) = sub.next();
    assert_eq!(t, "city/yk/E001/GT-101/alarm");
    assert_eq!(v["event_id"], 8);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_a_retryable_failure_then_delivery_resumes() {
    let mut server = mosquitto::start().expect("mosquitto");
    let port = server.port;
    let cancel = CancellationToken::new();
    let ch = channel(port, serde_json::json!({"timeout_ms": 1000}), &cancel);
    ch.deliver(&alarm(1)).await.expect("delivered while up");
    server.kill();
    let e = ch
        .deliver(&alarm(2))
        .await
        .expect_err("no broker, no PUBACK");
    assert!(e.is_retryable(), "the outbox retries it: {e}");
    // Same port again (the outbox's retry); the publisher reconnects on its back-off.
    mosquitto::crash_and_restart(&mut server).expect("mosquitto again");
    let sub = Sub::start(&server, "parkguard/#");
    sub.wait_subscribed(&server, "parkguard/probe");
    let mut ok = false;
    for _ in 0..60 {
        if ch.deliver(&alarm(2)).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "delivered after the broker came back");
    let (_, _, _, v) = sub.next();
    assert_eq!(v["event_id"], 2);
    cancel.cancel();
}
