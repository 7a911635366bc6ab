//! MQTT ingestion and publishing against a real mosquitto started per test.
//!
//! Messages are published with Debian's `mosquitto_pub` (a client no one here wrote)
//! wherever a test is about what parkguard reads; bulk loads use parkguard's own publisher,
//! whose PUBACK-based delivery report is itself under test.

use anyhow::{Context, Result, bail};
use parkguard_drivers::mqtt::config::{MqttBrokerConfig, MqttSubscriptionConfig, Subscription};
use parkguard_drivers::mqtt::sparkplug::{Metric, MetricValue, Payload, datatype};
use parkguard_drivers::mqtt::{MqttBroker, MqttPublisher, MqttStats, spawn_subscriber};
use parkguard_rules::{
    AlarmLimits, Gas, Point, PointId, PointKind, PointTable, Quality, Reading, Timestamp, Unit,
};
use parkguard_tests::Server;
use parkguard_tests::servers::mosquitto::{self, MosquittoOptions, MosquittoTls};
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

/// AT-101 H2S in mg/m³, AT-102 CO in ppm, PT-201 pressure in MPa, plus `n` extra points
/// `X-0000`.. in %LEL.
fn table(n: u32) -> Arc<PointTable> {
    let mut pts = vec![
        point(0, "AT-101", PointKind::Toxic, Some(Gas::H2s), Unit::MgPerM3),
        point(1, "AT-102", PointKind::Toxic, Some(Gas::Co), Unit::Ppm),
        point(2, "PT-201", PointKind::Pressure, None, Unit::MPa),
    ];
    for i in 0..n {
        pts.push(point(
            3 + i,
            &format!("X-{i:04}"),
            PointKind::Combustible,
            Some(Gas::Ch4),
            Unit::PercentLel,
        ));
    }
    Arc::new(PointTable::new(pts).expect("table"))
}

fn broker_for(server: &Server, extra: serde_json::Value) -> MqttBroker {
    let mut v = serde_json::json!({
        "id": "park",
        "host": "127.0.0.1",
        "port": server.port,
        "client_id": format!("parkguard-test-{}", server.port),
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
    async fn stop(self) -> mpsc::Receiver<Vec<Reading>> {
        self.stop.cancel();
        let _ = self.task.await;
        self.rx
    }
}

fn start(
    broker: &MqttBroker,
    subs: Vec<Subscription>,
    table: Arc<PointTable>,
    cap: usize,
) -> Running {
    // Test channel: bounded like the engine's; the test drains it.
    let (tx, rx) = mpsc::channel(cap);
    let stats = Arc::new(MqttStats::new());
    let stop = CancellationToken::new();
    let task = spawn_subscriber(broker.clone(), subs, table, tx, stats.clone(), stop.clone())
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

/// Publish probes until one reaches the subscriber: proves the subscription is active.
/// Probes sent while the subscription was being set up may still arrive late: they are
/// drained (300 ms of quiet) before the test goes on.
async fn probe(server: &Server, run: &mut Running, topic: &str, payload: &[u8]) -> Result<()> {
    for _ in 0..30 {
        mosquitto::publish(server, topic, payload, 1, false)?;
        if !collect(&mut run.rx, 1, Duration::from_secs(1))
            .await
            .is_empty()
        {
            while !collect(&mut run.rx, 1, Duration::from_millis(300))
                .await
                .is_empty()
            {}
            return Ok(());
        }
    }
    bail!("subscription never became active")
}

fn pub_(server: &Server, topic: &str, payload: &str) {
    mosquitto::publish(server, topic, payload.as_bytes(), 1, false).expect("mosquitto_pub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_number_payloads_with_wildcards_units_and_times() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_for(&server, serde_json::json!({}));
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"park/+/gds/+","format":"json","tag_segment":3,
            "unit_field":"unit","time_field":"ts","quality_field":"q"}),
        serde_json::json!({"broker":"park","topic":"park/+/pt/+","format":"number","tag_segment":3,
            "unit":"kPa"}),
        serde_json::json!({"broker":"park","topic":"gw/+/batch","format":"json","tag_field":"id",
            "value_field":"v","time_field":"t","time_format":"rfc3339","readings_field":"data"}),
    ]);
    let mut run = start(&broker, s, table(0), 16);
    probe(&server, &mut run, "park/e1/pt/PT-201", b"0").await?;

    // 10 ppm H2S into a mg/m³ point: 10 × 34.08 / 24.04.
    pub_(
        &server,
        "park/e1/gds/AT-101",
        r#"{"value": 10, "unit": "ppm", "ts": 1764144000123, "q": "good"}"#,
    );
    pub_(&server, "park/e1/pt/PT-201", "250.5");
    pub_(
        &server,
        "gw/7/batch",
        r#"{"data":[
        {"id":"AT-102","v":"35","t":"2025-11-26T16:00:00+08:00"},
        {"id":"AT-101","v":1.5,"t":"2025-11-26T08:00:01.5Z"}]}"#,
    );
    // Unknown tag and a segment that matches no subscription filter: counted, listed.
    pub_(&server, "park/e1/gds/AT-999", r#"{"value": 1}"#);
    pub_(
        &server,
        "park/e1/gds/AT-102",
        r#"{"value": 1, "q": "maintenance"}"#,
    );

    let got = collect(&mut run.rx, 5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5, "{got:?}");
    let h2s = &got[0];
    assert_eq!(h2s.point, PointId(0));
    assert_eq!(h2s.unit, Unit::MgPerM3);
    assert!(
        (h2s.value - 10.0 * 34.08 / 24.04).abs() < 0.01,
        "{}",
        h2s.value
    );
    assert_eq!(h2s.source_time, Timestamp::from_millis(1_764_144_000_123));
    assert_eq!(h2s.quality, Quality::Good);
    let pt = &got[1];
    assert_eq!((pt.point, pt.unit), (PointId(2), Unit::MPa));
    assert!((pt.value - 0.2505).abs() < 1e-9);
    assert!(
        pt.source_time == pt.receive_time,
        "number payloads use the receive time"
    );
    assert_eq!(got[2].point, PointId(1));
    assert_eq!(got[2].value, 35.0);
    assert_eq!(got[2].source_time, Timestamp::from_secs(1_764_144_000));
    assert_eq!(got[3].point, PointId(0));
    assert_eq!(
        got[3].source_time,
        Timestamp::from_millis(1_764_144_001_500)
    );
    assert_eq!(got[4].point, PointId(1));
    assert_eq!(got[4].quality, Quality::Maintenance);

    // A late reading (older than the newest of AT-101) is still handed over for storage,
    // and counted as out of order.
    pub_(
        &server,
        "park/e1/gds/AT-101",
        r#"{"value": 0.5, "unit": "mg/m3", "ts": 1764143999000}"#,
    );
    let late = collect(&mut run.rx, 1, Duration::from_secs(10)).await;
    assert_eq!(late.len(), 1);
    assert_eq!(
        late[0].source_time,
        Timestamp::from_millis(1_764_143_999_000)
    );
    assert_eq!(late[0].value, 0.5);
    assert_eq!(run.stats.out_of_order.load(Relaxed), 1);

    wait_for("unknown tag counted", Duration::from_secs(5), || {
        run.stats.rejected.load(Relaxed) >= 1
    })
    .await?;
    let snap = run.stats.snapshot();
    let p = snap
        .problems
        .iter()
        .find(|p| p.topic == "park/e1/gds/AT-999")
        .context("problem listed")?;
    assert_eq!(p.counts.get("unknown_tag"), Some(&1));
    assert_eq!(p.unknown_tags, vec!["AT-999".to_string()]);
    assert!(snap.connected);
    // Acknowledgements follow the hand-over (after a linger of a few ms).
    wait_for(
        "every QoS 1 message acknowledged",
        Duration::from_secs(5),
        || run.stats.acked.load(Relaxed) == run.stats.messages.load(Relaxed),
    )
    .await?;
    run.stop().await;
    Ok(())
}

fn spb_metric(name: Option<&str>, alias: Option<u64>, dt: u32, v: MetricValue) -> Metric {
    Metric {
        name: name.map(String::from),
        alias,
        timestamp: None,
        datatype: Some(dt),
        is_historical: None,
        is_transient: None,
        is_null: None,
        value: Some(v),
    }
}

fn spb(ts: u64, seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    prost::Message::encode_to_vec(&Payload {
        timestamp: Some(ts),
        metrics,
        seq: Some(seq),
        uuid: None,
        body: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_b_birth_aliases_data_and_death() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_for(&server, serde_json::json!({}));
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"spBv1.0/park/#","format":"sparkplug_b"}),
    ]);
    let mut run = start(&broker, s, table(0), 16);
    // Probe with an NDATA by name (no alias needed).
    let probe_payload = spb(
        1,
        0,
        vec![spb_metric(
            Some("PT-201"),
            None,
            datatype::DOUBLE,
            MetricValue::DoubleValue(0.5),
        )],
    );
    probe(&server, &mut run, "spBv1.0/park/NDATA/gw1", &probe_payload).await?;

    // Data by alias from a node whose birth parkguard never saw (it started later): the
    // node is asked to rebirth with an NCMD `Node Control/Rebirth` = true.
    let ncmd = mosquitto::watch(&server, "spBv1.0/park/NCMD/#")?;
    let orphan = spb(
        5,
        9,
        vec![spb_metric(
            None,
            Some(5),
            datatype::FLOAT,
            MetricValue::FloatValue(1.0),
        )],
    );
    mosquitto::publish(&server, "spBv1.0/park/NDATA/gw9", &orphan, 1, false)?;
    let (topic, payload) = tokio::task::spawn_blocking(move || ncmd.next(Duration::from_secs(10)))
        .await?
        .context("no rebirth request")?;
    assert_eq!(topic, "spBv1.0/park/NCMD/gw9");
    let cmd: Payload = prost::Message::decode(payload.as_slice())?;
    assert_eq!(cmd.metrics.len(), 1);
    assert_eq!(cmd.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
    assert_eq!(cmd.metrics[0].value, Some(MetricValue::BooleanValue(true)));

    let dbirth = spb(
        1_764_144_000_000,
        1,
        vec![
            spb_metric(
                Some("AT-101"),
                Some(1),
                datatype::FLOAT,
                MetricValue::FloatValue(0.25),
            ),
            spb_metric(
                Some("AT-102"),
                Some(2),
                datatype::INT32,
                MetricValue::IntValue(7),
            ),
        ],
    );
    mosquitto::publish(&server, "spBv1.0/park/DBIRTH/gw1/gds1", &dbirth, 1, false)?;
    let ddata = spb(
        1_764_144_001_000,
        2,
        vec![
            spb_metric(None, Some(2), datatype::INT32, MetricValue::IntValue(12)),
            spb_metric(None, Some(1), datatype::FLOAT, MetricValue::FloatValue(1.5)),
            spb_metric(
                None,
                Some(99),
                datatype::FLOAT,
                MetricValue::FloatValue(1.0),
            ),
        ],
    );
    mosquitto::publish(&server, "spBv1.0/park/DDATA/gw1/gds1", &ddata, 1, false)?;
    mosquitto::publish(
        &server,
        "spBv1.0/park/DDEATH/gw1/gds1",
        &spb(1_764_144_002_000, 3, vec![]),
        1,
        false,
    )?;

    let got = collect(&mut run.rx, 6, Duration::from_secs(10)).await;
    let view: Vec<(u32, f64, Quality, i64)> = got
        .iter()
        .map(|r| {
            (
                r.point.0,
                if r.value.is_nan() { -1.0 } else { r.value },
                r.quality,
                r.source_time.millis(),
            )
        })
        .collect();
    assert_eq!(
        view,
        vec![
            (0, 0.25, Quality::Good, 1_764_144_000_000),
            (1, 7.0, Quality::Good, 1_764_144_000_000),
            (1, 12.0, Quality::Good, 1_764_144_001_000),
            (0, 1.5, Quality::Good, 1_764_144_001_000),
            (0, -1.0, Quality::CommLost, 1_764_144_002_000),
            (1, -1.0, Quality::CommLost, 1_764_144_002_000),
        ]
    );
    wait_for("unknown alias counted", Duration::from_secs(5), || {
        run.stats.rejected.load(Relaxed) >= 1
    })
    .await?;
    let snap = run.stats.snapshot();
    let p = snap
        .problems
        .iter()
        .find(|p| p.topic == "spBv1.0/park/DDATA/gw1/gds1")
        .context("listed")?;
    assert_eq!(p.counts.get("unknown_alias"), Some(&1));
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wrong_types_and_oversize_are_counted_and_survived() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_for(&server, serde_json::json!({"max_payload_size": 1024}));
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"d/+","format":"json",
        "tag_segment":1, "unit_field":"unit", "time_field":"ts"}),
    ]);
    let mut run = start(&broker, s, table(0), 16);
    probe(&server, &mut run, "d/AT-102", br#"{"value":0}"#).await?;

    pub_(&server, "d/AT-101", r#"{"value": 1.0,"#); // truncated
    pub_(&server, "d/AT-101", "\u{1F4A9} not json at all");
    pub_(&server, "d/AT-101", r#"{"value": {"nested": 1}}"#);
    pub_(&server, "d/AT-101", r#"{"value": "high"}"#);
    pub_(&server, "d/AT-101", r#"{"reading": 3}"#);
    pub_(&server, "d/AT-101", r#"{"value": 3, "ts": "last tuesday"}"#);
    pub_(&server, "d/AT-101", r#"{"value": 3, "unit": "furlongs"}"#);
    pub_(&server, "d/PT-201", r#"{"value": 3, "unit": "ppm"}"#); // ppm into MPa
    let huge = format!(r#"{{"value": 1, "pad": "{}"}}"#, "x".repeat(200_000));
    pub_(&server, "d/AT-101", &huge);
    mosquitto::publish(&server, "d/AT-101", &[0xff, 0xfe, 0x00, 0x80], 1, false)?;
    // And the subscriber still works.
    pub_(&server, "d/AT-101", r#"{"value": 42}"#);

    let got = collect(&mut run.rx, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].point, got[0].value), (PointId(0), 42.0));
    wait_for("all problems counted", Duration::from_secs(5), || {
        run.stats.rejected.load(Relaxed) >= 10
    })
    .await?;
    let snap = run.stats.snapshot();
    let counts = |topic: &str| {
        snap.problems
            .iter()
            .find(|p| p.topic == topic)
            .map(|p| p.counts.clone())
            .unwrap_or_default()
    };
    let a = counts("d/AT-101");
    assert_eq!(a.get("unparseable"), Some(&3), "{a:?}");
    assert_eq!(a.get("wrong_type"), Some(&2), "{a:?}");
    assert_eq!(a.get("missing_field"), Some(&1), "{a:?}");
    assert_eq!(a.get("bad_time"), Some(&1), "{a:?}");
    assert_eq!(a.get("unknown_unit"), Some(&1), "{a:?}");
    assert_eq!(a.get("oversize"), Some(&1), "{a:?}");
    assert_eq!(counts("d/PT-201").get("unit_rejected"), Some(&1));
    assert_eq!(snap.rejected, 10);
    assert!(snap.connected);
    assert_eq!(snap.connects, 1, "no reconnect was needed");
    run.stop().await;
    Ok(())
}

/// Values of the readings, without the probes (-1): on a loaded machine a second probe
/// may arrive after the first one was seen.
fn values(readings: &[Reading]) -> BTreeSet<i64> {
    readings
        .iter()
        .map(|r| r.value as i64)
        .filter(|v| *v != -1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_delivers_everything_published_while_away() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_for(&server, serde_json::json!({}));
    let sub_cfg =
        serde_json::json!({"broker":"park","topic":"s/+","format":"number","tag_segment":1});
    let t = table(0);
    let mut run = start(&broker, subs(std::slice::from_ref(&sub_cfg)), t.clone(), 16);
    probe(&server, &mut run, "s/AT-101", b"-1").await?;
    run.stop().await;

    // parkguard is away: 1,000 QoS 1 messages, each confirmed by the broker.
    let stop = CancellationToken::new();
    let publisher = MqttPublisher::spawn(&broker, Duration::from_secs(10), stop.clone())?;
    let mut tasks = Vec::new();
    for chunk in 0..10 {
        let p = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for i in chunk * 100..chunk * 100 + 100 {
                p.publish("s/AT-101", &(i as f64), false).await?;
            }
            Ok::<_, parkguard_drivers::mqtt::MqttError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    let mut run = start(&broker, subs(&[sub_cfg]), t, 16);
    let got = collect(&mut run.rx, 1000, Duration::from_secs(30)).await;
    assert_eq!(values(&got), (0..1000).collect::<BTreeSet<i64>>());
    let snap = run.stats.snapshot();
    assert_eq!(snap.sessions_lost, 0);
    run.stop().await;
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_come_back_after_a_crash_before_hand_over() -> Result<()> {
    let server = mosquitto::start()?;
    let broker = broker_for(&server, serde_json::json!({}));
    let sub_cfg =
        serde_json::json!({"broker":"park","topic":"c/+","format":"number","tag_segment":1});
    let t = table(0);
    let mut run = start(&broker, subs(std::slice::from_ref(&sub_cfg)), t.clone(), 1);
    probe(&server, &mut run, "c/AT-101", b"-1").await?;
    // The probe's ack follows its hand-over a moment later.
    wait_for("probe acknowledged", Duration::from_secs(5), || {
        run.stats.acked.load(Relaxed) == run.stats.messages.load(Relaxed)
    })
    .await?;
    let acked_after_probe = run.stats.acked.load(Relaxed);
    // The engine stalls: nothing drains the channel (capacity 1 batch).
    for i in 0..50 {
        pub_(&server, "c/AT-101", &i.to_string());
    }
    wait_for("messages received", Duration::from_secs(10), || {
        run.stats.messages.load(Relaxed) >= acked_after_probe + 2
    })
    .await?;
    let acked_before_crash = run.stats.acked.load(Relaxed) - acked_after_probe;
    // Crash: the subscriber dies with readings it could not hand over.
    let mut stale_rx = run.stop().await;
    let handed_over: Vec<Reading> = collect(&mut stale_rx, 100, Duration::from_millis(100)).await;
    drop(stale_rx);

    let mut run = start(&broker, subs(&[sub_cfg]), t, 16);
    let mut seen = values(&handed_over);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (0..50).any(|i| !seen.contains(&i)) && Instant::now() < deadline {
        seen.extend(values(
            &collect(&mut run.rx, 1, Duration::from_millis(200)).await,
        ));
    }
    assert!(
        (0..50).all(|i| seen.contains(&i)),
        "lost: {:?}",
        (0..50).filter(|i| !seen.contains(i)).collect::<Vec<_>>()
    );
    // Only what was handed over had been acknowledged.
    assert!(
        acked_before_crash <= handed_over.len() as u64,
        "acked {acked_before_crash}, handed over {}",
        handed_over.len()
    );
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_and_restart_reconnects_resubscribes_and_loses_nothing_after() -> Result<()> {
    let mut server = mosquitto::start()?;
    let broker = broker_for(&server, serde_json::json!({}));
    let sub_cfg =
        serde_json::json!({"broker":"park","topic":"r/+","format":"number","tag_segment":1});
    let mut run = start(&broker, subs(&[sub_cfg]), table(0), 16);
    probe(&server, &mut run, "r/AT-101", b"-1").await?;

    mosquitto::crash_and_restart(&mut server)?;
    // SIGKILL lost the broker's session (nothing autosaved): parkguard must subscribe again.
    wait_for(
        "reconnect with a lost session",
        Duration::from_secs(20),
        || run.stats.connects.load(Relaxed) >= 2 && run.stats.sessions_lost.load(Relaxed) == 1,
    )
    .await?;
    assert!(run.stats.connection_errors.load(Relaxed) >= 1);
    probe(&server, &mut run, "r/AT-101", b"-1").await?;
    let _ = collect(&mut run.rx, 1000, Duration::from_millis(300)).await; // drain probes

    let stop = CancellationToken::new();
    let publisher = MqttPublisher::spawn(&broker, Duration::from_secs(10), stop.clone())?;
    for i in 0..500 {
        publisher.publish("r/AT-101", &(i as f64), false).await?;
    }
    let got = collect(&mut run.rx, 500, Duration::from_secs(20)).await;
    assert_eq!(values(&got), (0..500).collect::<BTreeSet<i64>>());
    stop.cancel();
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_and_client_certificate() -> Result<()> {
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
    let tls = |ca: &std::path::Path| {
        serde_json::json!({"tls": {"ca_file": ca, "client_cert_file": pki.client_cert,
            "client_key_file": pki.client_key}})
    };
    let broker = broker_for(&server, tls(&pki.ca));
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"t/+","format":"number","tag_segment":1}),
    ]);
    let mut run = start(&broker, s.clone(), table(0), 16);

    // An independent TLS client publishes.
    let publish_tls = |v: &str| -> Result<()> {
        let out = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
                "-t",
                "t/AT-102",
                "-q",
                "1",
                "-m",
                v,
            ])
            .arg("--cafile")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let mut got = Vec::new();
    for _ in 0..100 {
        publish_tls("7.5")?;
        got = collect(&mut run.rx, 1, Duration::from_millis(200)).await;
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(
        got.first().map(|r| (r.point, r.value)),
        Some((PointId(1), 7.5))
    );
    run.stop().await;

    // A broker certificate from a CA parkguard does not trust: no connection, counted.
    let mut wrong = broker_for(&server, tls(&pki.other_ca));
    wrong.client_id.push_str("-wrong");
    let run = start(&wrong, s, table(0), 16);
    wait_for("tls failures counted", Duration::from_secs(10), || {
        run.stats.connection_errors.load(Relaxed) >= 2
    })
    .await?;
    assert_eq!(run.stats.connects.load(Relaxed), 0);
    assert!(!run.stats.connected.load(Relaxed));
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_reports_delivery_on_puback_and_retains() -> Result<()> {
    let mut server = mosquitto::start()?;
    let broker = broker_for(&server, serde_json::json!({}));
    let stop = CancellationToken::new();
    let publisher = MqttPublisher::spawn(&broker, Duration::from_secs(3), stop.clone())?;
    let body = serde_json::json!({"event": 17, "tag": "AT-101", "state": "alarm", "text": "硫化氢二级报警"});
    publisher.publish("park/alarms/AT-101", &body, true).await?;
    // An independent client sees the retained message.
    let lines = mosquitto::subscribe_lines(&server, "park/alarms/#", 1, Duration::from_secs(5))?;
    assert_eq!(lines.len(), 1);
    let (topic, payload) = lines[0].split_once(' ').context("topic payload")?;
    assert_eq!(topic, "park/alarms/AT-101");
    assert_eq!(serde_json::from_str::<serde_json::Value>(payload)?, body);

    // Broker gone: the publish fails instead of reporting a delivery.
    server.kill();
    let r = publisher.publish("park/alarms/AT-101", &body, false).await;
    assert!(r.is_err(), "{r:?}");

    // Broker back: the publisher reconnects by itself and the next attempt is delivered
    // (the outbox retries like this).
    mosquitto::crash_and_restart(&mut server)?;
    let body2 = serde_json::json!({"event": 18, "tag": "AT-101", "state": "normal"});
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
    let lines = mosquitto::subscribe_lines(&server, "park/alarms/#", 1, Duration::from_secs(5))?;
    let payload = lines
        .first()
        .and_then(|l| l.split_once(' '))
        .context("retained")?
        .1;
    assert_eq!(serde_json::from_str::<serde_json::Value>(payload)?, body2);
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_carries_the_simulator_to_the_subscriber() -> Result<()> {
    use parkguard_drivers::mqtt::broker;
    use parkguard_drivers::mqtt::sim::{SimOptions, SimPoint, run_simulator, sim_subscription};
    let port = broker::reserve_port()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let embedded = tokio::task::spawn_blocking(move || broker::start_embedded(addr)).await??;
    assert_eq!(embedded.addr, addr);
    // The port is taken now: a second broker there is refused, not silently dead.
    let second = tokio::task::spawn_blocking(move || broker::start_embedded(addr)).await?;
    assert!(second.is_err());

    let b = MqttBroker::plain("park", "127.0.0.1", port);
    let t = table(3);
    let opts = SimOptions {
        period: Duration::from_millis(50),
        ..SimOptions::default()
    };
    let sub = sim_subscription("park", &opts)
        .validate(&["park"])
        .expect("valid");
    let mut run = start(&b, vec![sub], t.clone(), 16);
    wait_for("connected", Duration::from_secs(5), || {
        run.stats.connected.load(Relaxed)
    })
    .await?;
    let points: Vec<SimPoint> = t.points().iter().map(SimPoint::for_point).collect();
    let stop = CancellationToken::new();
    let sim = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move { run_simulator(&b, points, opts, stop).await })
    };
    let got = collect(&mut run.rx, 60, Duration::from_secs(10)).await;
    let ids: BTreeSet<u32> = got.iter().map(|r| r.point.0).collect();
    assert_eq!(
        ids,
        (0..6).collect::<BTreeSet<u32>>(),
        "every simulated point arrives"
    );
    for r in &got {
        let p = t.get(r.point).context("point")?;
        assert_eq!(r.unit, p.unit);
        assert!(r.value >= p.range_lo && r.value <= p.range_hi, "{r:?}");
        assert!(r.quality.is_good());
    }
    assert_eq!(run.stats.rejected.load(Relaxed), 0);
    stop.cancel();
    sim.await??;
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password_from_a_file_or_the_environment() -> Result<()> {
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
    // `allow_anonymous true` is in the base config; a password file alone makes mosquitto
    // check the credentials of every client that sends a user name.
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "s3cret 密码\n")?;
    let s = subs(&[
        serde_json::json!({"broker":"park","topic":"u/+","format":"number","tag_segment":1}),
    ]);
    let from_file = broker_for(
        &server,
        serde_json::json!({"username": "parkguard", "password_file": pw_file}),
    );
    let mut run = start(&from_file, s.clone(), table(0), 16);
    probe(&server, &mut run, "u/AT-101", b"-1").await?;
    run.stop().await;

    // From the environment: a variable that is set (to something that is not the
    // password: `PATH`) is read and refused by the broker; an unset one stops start-up
    // with an error that names it. (Setting variables in-process needs `unsafe`.)
    let unset = broker_for(
        &server,
        serde_json::json!({"username": "parkguard", "password_env": "PARKGUARD_TEST_UNSET_PW_VAR"}),
    );
    let (tx, _rx) = mpsc::channel(1);
    let err = spawn_subscriber(
        unset,
        s.clone(),
        table(0),
        tx,
        Arc::new(MqttStats::new()),
        CancellationToken::new(),
    )
    .err()
    .context("an unset password variable must fail")?;
    assert!(
        err.to_string().contains("PARKGUARD_TEST_UNSET_PW_VAR"),
        "{err}"
    );
    let var = "PATH";
    let mut wrong = broker_for(
        &server,
        serde_json::json!({"username": "parkguard", "password_env": var}),
    );
    wrong.client_id.push_str("-env");
    let run = start(&wrong, s, table(0), 16);
    wait_for(
        "refused connections counted",
        Duration::from_secs(10),
        || run.stats.connection_errors.load(Relaxed) >= 2,
    )
    .await?;
    assert_eq!(run.stats.connects.load(Relaxed), 0);
    run.stop().await;
    Ok(())
}
