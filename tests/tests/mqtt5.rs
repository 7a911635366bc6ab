//! MQTT 5 (`protocol = "5"`) against a real mosquitto started per test: the subscriber
//! behaves as over 3.1.1 (mapping, manual acks, persistent session, re-subscribe, back-off)
//! and the publisher reports a PUBACK with a failure reason code as a failed delivery.
//!
//! Messages parkguard reads are published with Debian's `mosquitto_pub -V 5` (a client no
//! one here wrote); bulk loads use parkguard's own v5 publisher, whose PUBACK-based
//! delivery report is itself under test. mosquitto's log names the protocol of every
//! client (`p5` = MQTT 5, `c0` = clean start off): the tests check that parkguard really
//! spoke MQTT 5.

use anyhow::{Context, Result, bail};
use parkguard_drivers::mqtt::config::{MqttBrokerConfig, MqttSubscriptionConfig, Subscription};
use parkguard_drivers::mqtt::{MqttBroker, MqttError, MqttPublisher, MqttStats, spawn_subscriber};
use parkguard_rules::{
    AlarmLimits, Gas, Point, PointId, PointKind, PointTable, Quality, Reading, Timestamp, Unit,
};
use parkguard_tests::servers::mosquitto::{self, MosquittoOptions};
use parkguard_tests::{Server, wait_listening};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn point(id: u32, tag: &str, kind: PointKind, gas: Option<Gas>, unit: Unit) -> Point {
    Point {
        id: PointId(id),
        tag: tag.into(),
        name: tag.into(),
        enterprise: "E1".into(),
        device: None,
        hazard_installation: None,
        area: None,
        kind,
        gas,
        unit,
        range_lo: 0.0,
        range_hi: 100.0,
        limits: AlarmLimits::default(),
        expected_interval: Duration::from_secs(1),
        location: None,
    }
}

/// AT-101 H2S in mg/m³, AT-102 CO in ppm, PT-201 pressure in MPa.
fn table() -> Arc<PointTable> {
    Arc::new(
        PointTable::new(vec![
            point(0, "AT-101", PointKind::Toxic, Some(Gas::H2s), Unit::MgPerM3),
            point(1, "AT-102", PointKind::Toxic, Some(Gas::Co), Unit::Ppm),
            point(2, "PT-201", PointKind::Pressure, None, Unit::MPa),
        ])
        .expect("table"),
    )
}

/// A `protocol = "5"` broker config for `server` (`extra` may override any key), validated
/// like the daemon does.
fn broker_v5(server: &Server, extra: serde_json::Value) -> MqttBroker {
    let mut v = serde_json::json!({
        "id": "park",
        "host": "127.0.0.1",
        "port": server.port,
        "protocol": "5",
        "client_id": format!("parkguard-v5-{}", server.port),
        "reconnect_initial_ms": 50,
        "reconnect_max_s": 1,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    let c: MqttBrokerConfig = serde_json::from_value(v).expect("broker config");
    c.validate().expect("valid broker")
}

fn subs(json: &[serde_json::Value]) -> Vec<Subscription> {
    json.iter()
        .map(|j| {
            let c: MqttSubscriptionConfig =
                serde_json::from_value(j.clone()).expect("subscription config");
            c.validate(&["park"]).expect("valid subscription")
        })
        .collect()
}

struct Running {
    rx: mpsc::Receiver<Vec<Reading>>,
    stats: Arc<MqttStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn start(broker: &MqttBroker, subs: Vec<Subscription>, cap: usize) -> Running {
    // Test channel: bounded like the engine's; the test drains it.
    let (tx, rx) = mpsc::channel(cap);
    let stats = Arc::new(MqttStats::new());
    let stop = CancellationToken::new();
    let task = spawn_subscriber(
        broker.clone(),
        subs,
        table(),
        tx,
        stats.clone(),
        stop.clone(),
    )
    .expect("spawn subscriber");
    Running {
        rx,
        stats,
        stop,
        task,
    }
}

/// Receive readings until `n` arrived or `timeout` passed.
async fn collect(
    rx: &mut mpsc::Receiver<Vec<Reading>>,
    n: usize,
    timeout: Duration,
) -> Vec<Reading> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(batch)) => out.extend(batch),
            _ => break,
        }
    }
    out
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Publish with `mosquitto_pub -V 5` (MQTT 5, QoS 1).
fn pub5(server: &Server, topic: &str, payload: &str) -> Result<()> {
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-t", topic, "-q", "1", "-m", payload])
        .output()
        .context("run mosquitto_pub")?;
    anyhow::ensure!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Publish probes (value -1) until one reaches the subscriber (the subscription is
/// active), then drain late probes (300 ms of quiet). Returns everything received
/// meanwhile, probes included.
async fn probe(
    server: &Server,
    run: &mut Running,
    topic: &str,
    payload: &str,
) -> Result<Vec<Reading>> {
    let mut seen = Vec::new();
    for _ in 0..30 {
        pub5(server, topic, payload)?;
        let got = collect(&mut run.rx, 1, Duration::from_secs(1)).await;
        if !got.is_empty() {
            seen.extend(got);
            loop {
                let late = collect(&mut run.rx, 1, Duration::from_millis(300)).await;
                if late.is_empty() {
                    return Ok(seen);
                }
                seen.extend(late);
            }
        }
    }
    bail!("subscription never became active")
}

/// Values of the readings, without the probes (-1).
fn values(readings: &[Reading]) -> BTreeSet<i64> {
    readings
        .iter()
        .map(|r| r.value as i64)
        .filter(|v| *v != -1)
        .collect()
}

/// Receive until every value of `want` arrived (QoS 1 may deliver some twice) or
/// `timeout` passed; returns the values seen.
async fn receive_all(
    rx: &mut mpsc::Receiver<Vec<Reading>>,
    want: std::ops::Range<i64>,
    timeout: Duration,
) -> BTreeSet<i64> {
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + timeout;
    while want.clone().any(|i| !seen.contains(&i)) && Instant::now() < deadline {
        seen.extend(values(&collect(rx, 1, Duration::from_millis(200)).await));
    }
    seen
}

/// mosquitto logged a connection of `client_id` with MQTT 5 and clean start `clean`.
fn connected_with_v5(server: &Server, client_id: &str, clean: bool) -> bool {
    let want = format!(" as {client_id} (p5, c{}", u8::from(clean));
    server.log().contains(&want)
}

/// Stop mosquitto cleanly (SIGTERM: it writes its persistence file) and start it again on
/// the same port with the same config and persistence dir.
fn graceful_restart(server: &mut Server) -> Result<()> {
    server.terminate(Duration::from_secs(10));
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(server.path("stderr.log"))?;
    server.child = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(server.path("mosquitto.conf"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(err))
        .spawn()
        .context("restart mosquitto")?;
    wait_listening(server, Duration::from_secs(10))
}

/// Publish `range` as numbers on `topic` with parkguard's MQTT 5 publisher, each one
/// confirmed by the broker's PUBACK.
async fn publish_all(
    broker: &MqttBroker,
    topic: &'static str,
    range: std::ops::Range<i64>,
) -> Result<()> {
    let stop = CancellationToken::new();
    let publisher = MqttPublisher::spawn(broker, Duration::from_secs(10), stop.clone())?;
    let mut tasks = Vec::new();
    let chunk = ((range.end - range.start) / 10).max(1);
    let mut from = range.start;
    while from < range.end {
        let to = (from + chunk).min(range.end);
        let p = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for i in from..to {
                p.publish(topic, &(i as f64), false).await?;
            }
            Ok::<_, MqttError>(())
        }));
        from = to;
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(publisher.rejected(), 0);
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_ingest_over_mqtt5() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_v5(&server, serde_json::json!({}));
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"park/+/gds/+","format":"json","tag_segment":3,
            "unit_field":"unit","time_field":"ts","quality_field":"q"}),
        serde_json::json!({"broker":"park","topic":"gw/+/batch","format":"json","tag_field":"id",
            "value_field":"v","time_field":"t","time_format":"rfc3339","readings_field":"data"}),
    ]);
    let mut run = start(&broker, s, 16);
    probe(&server, &mut run, "park/e1/gds/PT-201", r#"{"value": -1}"#).await?;
    assert!(
        connected_with_v5(&server, &broker.client_id, false),
        "mosquitto saw no MQTT 5 persistent-session connect:\n{}",
        server.log()
    );

    // 10 ppm H2S into a mg/m³ point: 10 × 34.08 / 24.04.
    pub5(
        &server,
        "park/e1/gds/AT-101",
        r#"{"value": 10, "unit": "ppm", "ts": 1764144000123, "q": "good"}"#,
    )?;
    pub5(
        &server,
        "gw/7/batch",
        r#"{"data":[
        {"id":"AT-102","v":"35","t":"2025-11-26T16:00:00+08:00"},
        {"id":"AT-101","v":1.5,"t":"2025-11-26T08:00:01.5Z"}]}"#,
    )?;
    pub5(&server, "park/e1/gds/AT-999", r#"{"value": 1}"#)?;
    pub5(&server, "park/e1/gds/AT-101", r#"{"value": "#)?;
    pub5(
        &server,
        "park/e1/gds/AT-102",
        r#"{"value": 1, "q": "maintenance"}"#,
    )?;

    let got = collect(&mut run.rx, 4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!((got[0].point, got[0].unit), (PointId(0), Unit::MgPerM3));
    assert!((got[0].value - 10.0 * 34.08 / 24.04).abs() < 0.01);
    assert_eq!(
        got[0].source_time,
        Timestamp::from_millis(1_764_144_000_123)
    );
    assert_eq!((got[1].point, got[1].value), (PointId(1), 35.0));
    assert_eq!(got[1].source_time, Timestamp::from_secs(1_764_144_000));
    assert_eq!(
        (got[2].point, got[2].source_time),
        (PointId(0), Timestamp::from_millis(1_764_144_001_500))
    );
    assert_eq!(
        (got[3].point, got[3].quality),
        (PointId(1), Quality::Maintenance)
    );

    wait_for("problems counted", Duration::from_secs(5), || {
        run.stats.rejected.load(Relaxed) >= 2
    })
    .await?;
    let snap = run.stats.snapshot();
    let p = snap
        .problems
        .iter()
        .find(|p| p.topic == "park/e1/gds/AT-999")
        .context("unknown tag listed")?;
    assert_eq!(p.unknown_tags, vec!["AT-999".to_string()]);
    let p = snap
        .problems
        .iter()
        .find(|p| p.topic == "park/e1/gds/AT-101")
        .context("truncated json listed")?;
    assert_eq!(p.counts.get("unparseable"), Some(&1));
    assert!(snap.connected);
    assert_eq!(snap.connects, 1);
    // Manual acks: every QoS 1 message is acknowledged once handed over.
    wait_for(
        "every QoS 1 message acknowledged",
        Duration::from_secs(5),
        || run.stats.acked.load(Relaxed) == run.stats.messages.load(Relaxed),
    )
    .await?;
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_over_mqtt5_delivers_everything_published_while_away() -> Result<()> {
    persistent_session("5").await
}

/// The same over 3.1.1: the shared subscriber logic and its clean shutdown (DISCONNECT
/// after the last PUBACK, so that a restart gets nothing again) hold for both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_over_mqtt311_the_same_way() -> Result<()> {
    persistent_session("3.1.1").await
}

/// Stop parkguard, publish 1,000 QoS 1 messages (each PUBACKed), start it: all 1,000
/// arrive and are acknowledged; stop and start again: none comes twice.
async fn persistent_session(protocol: &str) -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_v5(&server, serde_json::json!({"protocol": protocol}));
    let sub_cfg =
        serde_json::json!({"broker":"park","topic":"s/+","format":"number","tag_segment":1});
    let mut run = start(&broker, subs(std::slice::from_ref(&sub_cfg)), 16);
    probe(&server, &mut run, "s/AT-101", "-1").await?;
    run.stop().await;

    // parkguard is away: 1,000 QoS 1 messages, each confirmed by the broker.
    publish_all(&broker, "s/AT-101", 0..1000).await?;

    let mut run = start(&broker, subs(std::slice::from_ref(&sub_cfg)), 16);
    let got = collect(&mut run.rx, 1000, Duration::from_secs(30)).await;
    assert_eq!(values(&got), (0..1000).collect::<BTreeSet<i64>>());
    let snap = run.stats.snapshot();
    assert_eq!(snap.sessions_lost, 0, "the broker kept the session");
    wait_for("all acknowledged", Duration::from_secs(10), || {
        run.stats.acked.load(Relaxed) == run.stats.messages.load(Relaxed)
    })
    .await?;
    run.stop().await;
    // The acknowledgements reached the broker: a restarted subscriber gets none again.
    let mut run = start(&broker, subs(&[sub_cfg]), 16);
    let mut again = probe(&server, &mut run, "s/AT-101", "-1").await?;
    again.extend(collect(&mut run.rx, 1, Duration::from_millis(500)).await);
    assert!(
        values(&again).is_empty(),
        "redelivered: {:?}",
        values(&again)
    );
    run.stop().await;
    let v5 = protocol == "5";
    assert_eq!(connected_with_v5(&server, &broker.client_id, false), v5);
    assert_eq!(
        connected_with_v5(&server, &format!("{}-pub", broker.client_id), true),
        v5,
        "the publisher spoke the broker's protocol with a clean start"
    );
    Ok(())
}

/// A clean MQTT 5 session (`clean_session = true`: clean start, expiry 0) keeps nothing
/// while parkguard is away: the control for the test above, proving the session expiry
/// is what keeps the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_mqtt5_session_keeps_nothing_while_away() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_v5(&server, serde_json::json!({"clean_session": true}));
    let sub_cfg =
        serde_json::json!({"broker":"park","topic":"s/+","format":"number","tag_segment":1});
    let mut run = start(&broker, subs(std::slice::from_ref(&sub_cfg)), 16);
    probe(&server, &mut run, "s/AT-101", "-1").await?;
    run.stop().await;
    publish_all(&broker, "s/AT-101", 0..50).await?;
    let mut run = start(&broker, subs(&[sub_cfg]), 16);
    let mut seen = probe(&server, &mut run, "s/AT-101", "-1").await?;
    seen.extend(collect(&mut run.rx, 1, Duration::from_millis(500)).await);
    assert!(values(&seen).is_empty(), "kept: {:?}", values(&seen));
    assert!(connected_with_v5(&server, &broker.client_id, true));
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_over_mqtt5_reconnect_and_lose_nothing() -> Result<()> {
    let mut server = mosquitto::start()?;
    let broker = broker_v5(&server, serde_json::json!({}));
    let sub_cfg =
        serde_json::json!({"broker":"park","topic":"r/+","format":"number","tag_segment":1});
    let mut run = start(&broker, subs(std::slice::from_ref(&sub_cfg)), 16);
    probe(&server, &mut run, "r/AT-101", "-1").await?;
    run.stop().await;

    // 1. Queued while parkguard is away, then the broker restarts (clean stop: it saves
    //    its persistence file): the session and its queue survive.
    publish_all(&broker, "r/AT-101", 0..300).await?;
    graceful_restart(&mut server)?;
    let mut run = start(&broker, subs(&[sub_cfg]), 16);
    let seen = receive_all(&mut run.rx, 0..300, Duration::from_secs(30)).await;
    assert_eq!(seen, (0..300).collect::<BTreeSet<i64>>());
    assert_eq!(run.stats.sessions_lost.load(Relaxed), 0);

    // 2. The broker restarts under a connected parkguard: it reconnects with the back-off,
    //    the session is still there (no re-subscribe), nothing published after is lost.
    graceful_restart(&mut server)?;
    wait_for("reconnect", Duration::from_secs(20), || {
        run.stats.connects.load(Relaxed) >= 2 && run.stats.connected.load(Relaxed)
    })
    .await?;
    assert!(run.stats.connection_errors.load(Relaxed) >= 1);
    assert_eq!(run.stats.sessions_lost.load(Relaxed), 0);
    publish_all(&broker, "r/AT-101", 300..600).await?;
    // Messages whose acknowledgement had not reached the broker before it stopped come
    // again (at least once); every new one arrives.
    let seen = receive_all(&mut run.rx, 300..600, Duration::from_secs(30)).await;
    assert!(
        (300..600).all(|i| seen.contains(&i)),
        "lost: {:?}",
        (300..600).filter(|i| !seen.contains(i)).collect::<Vec<_>>()
    );

    // 3. A crash that loses the broker's state (SIGKILL and its persistence file gone: a
    //    crash alone would restore the session saved at the last clean stop): parkguard
    //    sees `session_present = false` and subscribes again.
    server.kill();
    std::fs::remove_file(server.path("mosquitto.db")).context("persistence file")?;
    mosquitto::crash_and_restart(&mut server)?;
    wait_for(
        "reconnect with a lost session",
        Duration::from_secs(20),
        || run.stats.connects.load(Relaxed) >= 3 && run.stats.sessions_lost.load(Relaxed) == 1,
    )
    .await?;
    probe(&server, &mut run, "r/AT-101", "-1").await?;
    publish_all(&broker, "r/AT-101", 600..800).await?;
    let seen = receive_all(&mut run.rx, 600..800, Duration::from_secs(30)).await;
    assert!(
        (600..800).all(|i| seen.contains(&i)),
        "lost: {:?}",
        (600..800).filter(|i| !seen.contains(i)).collect::<Vec<_>>()
    );
    wait_for("all acknowledged", Duration::from_secs(10), || {
        run.stats.acked.load(Relaxed) == run.stats.messages.load(Relaxed)
    })
    .await?;
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publisher_waits_for_puback_and_fails_on_a_refusal() -> Result<()> {
    // Anonymous clients may only write below `park/`: mosquitto's ACL refuses the rest.
    let dir = tempfile::tempdir()?;
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite park/#\n")?;
    let mut server = mosquitto::start_with(&MosquittoOptions {
        tls: None,
        extra: format!("acl_file {}\n", acl.display()),
    })?;
    let broker = broker_v5(&server, serde_json::json!({}));
    let stop = CancellationToken::new();
    let publisher = MqttPublisher::spawn(&broker, Duration::from_secs(3), stop.clone())?;
    let body = serde_json::json!({"event": 17, "tag": "AT-101", "state": "alarm", "text": "硫化氢二级报警"});
    publisher.publish("park/alarms/AT-101", &body, true).await?;
    // An independent client sees the retained message.
    let lines = mosquitto::subscribe_lines(&server, "park/alarms/#", 1, Duration::from_secs(5))?;
    let (topic, payload) = lines
        .first()
        .and_then(|l| l.split_once(' '))
        .context("retained message")?;
    assert_eq!(topic, "park/alarms/AT-101");
    assert_eq!(serde_json::from_str::<serde_json::Value>(payload)?, body);
    assert_eq!(publisher.rejected(), 0);

    // The ACL refuses this topic: MQTT 5 says so in the PUBACK, a failed delivery.
    let r = publisher.publish("other/alarms/AT-101", &body, false).await;
    let err = r.expect_err("a refused publish is not a delivery");
    assert!(err.to_string().contains("NotAuthorized"), "{err}");
    assert_eq!(publisher.rejected(), 1);
    // MQTT 3.1.1 has no way to say it: the same publish looks delivered (and is dropped).
    let mut v311 = broker.clone();
    v311.protocol = parkguard_drivers::mqtt::config::MqttProtocol::V311;
    v311.client_id.push_str("-311");
    let p311 = MqttPublisher::spawn(&v311, Duration::from_secs(3), stop.clone())?;
    p311.publish("other/alarms/AT-101", &body, false).await?;
    assert_eq!(p311.rejected(), 0);

    // The connection still works after a refusal.
    let body2 = serde_json::json!({"event": 18, "tag": "AT-101", "state": "normal"});
    publisher
        .publish("park/alarms/AT-101", &body2, true)
        .await?;

    // Broker gone: no delivery is reported; back: the publisher reconnects by itself.
    server.kill();
    let r = publisher.publish("park/alarms/AT-101", &body, false).await;
    assert!(r.is_err(), "{r:?}");
    mosquitto::crash_and_restart(&mut server)?;
    let mut delivered = false;
    for _ in 0..10 {
        if publisher
            .publish("park/alarms/AT-101", &body2, true)
            .await
            .is_ok()
        {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "publisher did not recover");
    assert_eq!(publisher.rejected(), 1);
    stop.cancel();
    Ok(())
}

/// MQTT 5 announces parkguard's `max_packet_size` to the broker, which then discards a
/// larger message for parkguard instead of sending it (over 3.1.1 the connection breaks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_broker_withholds_packets_over_max_packet_size() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_v5(
        &server,
        serde_json::json!({"max_packet_size": 4096, "max_payload_size": 1024}),
    );
    let s =
        subs(&[serde_json::json!({"broker":"park","topic":"d/+","format":"json","tag_segment":1})]);
    let mut run = start(&broker, s, 16);
    probe(&server, &mut run, "d/AT-102", r#"{"value": -1}"#).await?;
    let huge = format!(r#"{{"value": 1, "pad": "{}"}}"#, "x".repeat(100_000));
    pub5(&server, "d/AT-101", &huge)?;
    // Over max_payload_size but under the packet limit: received, counted, dropped.
    let big = format!(r#"{{"value": 2, "pad": "{}"}}"#, "x".repeat(2_000));
    pub5(&server, "d/AT-101", &big)?;
    pub5(&server, "d/AT-101", r#"{"value": 42}"#)?;
    let got = collect(&mut run.rx, 1, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(|r| (r.point, r.value)).collect::<Vec<_>>(),
        vec![(PointId(0), 42.0)]
    );
    let snap = run.stats.snapshot();
    let counts = snap
        .problems
        .iter()
        .find(|p| p.topic == "d/AT-101")
        .map(|p| p.counts.clone())
        .unwrap_or_default();
    assert_eq!(counts.get("oversize"), Some(&1), "{counts:?}");
    assert_eq!(snap.connects, 1, "no reconnect was needed");
    assert_eq!(snap.connection_errors, 0);
    run.stop().await;
    Ok(())
}

/// Acknowledge only when durable, over MQTT 5: a batch whose `done` is dropped (the spool
/// could not store it) leaves its messages unacknowledged; the subscriber reconnects and
/// the broker delivers them again; once stored they are acknowledged and never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_acknowledges_only_durable_batches() -> Result<()> {
    use parkguard_drivers::mqtt::{DurableBatch, spawn_subscriber_with};
    let server = mosquitto::start()?;
    let broker = broker_v5(&server, serde_json::json!({}));
    let sub_cfg =
        serde_json::json!({"broker":"park","topic":"u/+","format":"number","tag_segment":1});
    let stats = Arc::new(MqttStats::new());
    let stop = CancellationToken::new();
    // Test channel: bounded like the daemon's; the test plays the spool.
    let (tx, mut rx) = mpsc::channel::<DurableBatch>(16);
    let task = spawn_subscriber_with(
        broker.clone(),
        subs(std::slice::from_ref(&sub_cfg)),
        table(),
        tx,
        stats.clone(),
        stop.clone(),
    )?;
    wait_for("connected", Duration::from_secs(10), || {
        stats.connected.load(Relaxed)
    })
    .await?;
    // The subscription is active once a probe comes through (stored).
    let mut stored = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        pub5(&server, "u/AT-101", "-1")?;
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            let _ = b.done.send(());
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscription never became active"
        );
    }
    for i in 0..20 {
        pub5(&server, "u/AT-101", &i.to_string())?;
    }
    // The first batch with data cannot be stored: `done` dropped.
    let first = loop {
        let b = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .context("subscriber stopped")?;
        if !values(&b.readings).is_empty() {
            break b;
        }
        let _ = b.done.send(());
    };
    let refused = values(&first.readings);
    drop(first.done);
    // Everything comes again after the reconnect; now it is stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..20).any(|i| !stored.contains(&i)) {
        anyhow::ensure!(Instant::now() < deadline, "not redelivered: {stored:?}");
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            stored.extend(values(&b.readings));
            let _ = b.done.send(());
        }
    }
    assert!(refused.iter().all(|v| stored.contains(v)));
    assert_eq!(stats.not_durable.load(Relaxed), 1);
    assert!(
        stats.connects.load(Relaxed) >= 2,
        "reconnected for redelivery"
    );
    // The test goes on playing the spool: messages read before the refusal may have been
    // handed over without their acknowledgements (their connection was dropped), so the
    // redelivered copies can come in batches after every value was seen once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.acked.load(Relaxed) < 21 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out waiting for all acknowledged: {} of 21",
            stats.acked.load(Relaxed)
        );
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            let _ = b.done.send(());
        }
    }
    stop.cancel();
    task.await?;
    // Stored and acknowledged: a new subscriber gets none of them again.
    let mut run = start(&broker, subs(&[sub_cfg]), 16);
    let mut again = probe(&server, &mut run, "u/AT-101", "-1").await?;
    again.extend(collect(&mut run.rx, 1, Duration::from_millis(500)).await);
    assert!(
        values(&again).is_empty(),
        "redelivered: {:?}",
        values(&again)
    );
    run.stop().await;
    Ok(())
}

/// TLS with a test CA and a client certificate over MQTT 5; a Sparkplug B node parkguard
/// does not know is asked to rebirth (a QoS 0 publish of the subscriber, over v5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_over_tls_with_sparkplug_rebirth() -> Result<()> {
    use parkguard_drivers::mqtt::sparkplug::{Metric, MetricValue, Payload, datatype};
    use parkguard_tests::servers::mosquitto::MosquittoTls;
    let pki_dir = tempfile::tempdir()?;
    let pki = mosquitto::make_pki(pki_dir.path())?;
    let server = mosquitto::start_with(&MosquittoOptions {
        tls: Some(MosquittoTls {
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            require_client_cert: true,
        }),
        extra: String::new(),
    })?;
    let broker = broker_v5(
        &server,
        serde_json::json!({"tls": {"ca_file": pki.ca, "client_cert_file": pki.client_cert,
            "client_key_file": pki.client_key}}),
    );
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"spBv1.0/park/#","format":"sparkplug_b"}),
    ]);
    let mut run = start(&broker, s, 16);
    // An independent MQTT 5 TLS client: mosquitto_pub / mosquitto_sub with the test PKI.
    let tls_args = |cmd: &mut std::process::Command| {
        cmd.args(["-V", "5", "-h", "127.0.0.1", "-p", &server.port.to_string()])
            .arg("--cafile")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key);
    };
    let publish = |topic: &str, payload: &[u8]| -> Result<()> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), payload)?;
        let mut cmd = std::process::Command::new("mosquitto_pub");
        tls_args(&mut cmd);
        let out = cmd
            .args(["-t", topic, "-q", "1", "-f"])
            .arg(file.path())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let metric = |name: Option<&str>, alias: Option<u64>, v: f32| Metric {
        name: name.map(String::from),
        alias,
        timestamp: None,
        datatype: Some(datatype::FLOAT),
        is_historical: None,
        is_transient: None,
        is_null: None,
        value: Some(MetricValue::FloatValue(v)),
    };
    let payload = |seq: u64, metrics: Vec<Metric>| {
        prost::Message::encode_to_vec(&Payload {
            timestamp: Some(1_764_144_000_000),
            metrics,
            seq: Some(seq),
            uuid: None,
            body: None,
        })
    };
    // NDATA by name until one arrives: connected over TLS, subscribed.
    let mut got = Vec::new();
    for _ in 0..50 {
        publish(
            "spBv1.0/park/NDATA/gw1",
            &payload(0, vec![metric(Some("PT-201"), None, 0.5)]),
        )?;
        got = collect(&mut run.rx, 1, Duration::from_millis(300)).await;
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(
        got.first().map(|r| (r.point, r.value)),
        Some((PointId(2), 0.5))
    );
    assert!(connected_with_v5(&server, &broker.client_id, false));

    // Data by alias from a node whose birth parkguard never saw: an NCMD rebirth request.
    let mut watch = std::process::Command::new("stdbuf");
    watch.args(["-oL", "mosquitto_sub"]);
    tls_args(&mut watch);
    let mut child = watch
        .args([
            "-t",
            "spBv1.0/park/NCMD/#",
            "-C",
            "1",
            "-F",
            "%t %x",
            "-W",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut node = 0;
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        node += 1;
        // Repeated: the watcher may not have subscribed yet (rebirths are rate-limited
        // per node, so each attempt uses a new node id).
        publish(
            &format!("spBv1.0/park/NDATA/gw9-{node}"),
            &payload(9, vec![metric(None, Some(5), 1.0)]),
        )?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = child.wait_with_output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let (topic, hex) = line
        .trim()
        .split_once(' ')
        .context("no rebirth request seen")?;
    assert!(topic.starts_with("spBv1.0/park/NCMD/gw9-"), "{topic}");
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let cmd: Payload = prost::Message::decode(bytes.as_slice())?;
    assert_eq!(cmd.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
    assert_eq!(cmd.metrics[0].value, Some(MetricValue::BooleanValue(true)));
    run.stop().await;
    Ok(())
}

/// Username and password over MQTT 5: the right password connects; a wrong one is refused
/// (CONNACK reason code) and retried with the back-off, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_username_and_password() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users");
    let out = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&users)
        .args(["parkguard", "s3cret 密码"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = mosquitto::start_with(&MosquittoOptions {
        tls: None,
        extra: format!("password_file {}\n", users.display()),
    })?;
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"p/+","format":"number","tag_segment":1}),
    ]);
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "s3cret 密码\n")?;
    let good = broker_v5(
        &server,
        serde_json::json!({"username": "parkguard", "password_file": pw_file}),
    );
    let mut run = start(&good, s.clone(), 16);
    probe(&server, &mut run, "p/AT-101", "-1").await?;
    run.stop().await;

    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "guess\n")?;
    let mut wrong = broker_v5(
        &server,
        serde_json::json!({"username": "parkguard", "password_file": wrong_file}),
    );
    wrong.client_id.push_str("-wrong");
    let run = start(&wrong, s, 16);
    wait_for(
        "refused connections counted",
        Duration::from_secs(10),
        || run.stats.connection_errors.load(Relaxed) >= 2,
    )
    .await?;
    assert_eq!(run.stats.connects.load(Relaxed), 0);
    assert!(!run.task.is_finished(), "the subscriber keeps retrying");
    run.stop().await;
    Ok(())
}
