//! MQTT ingestion benchmark: 1,000,000 JSON readings for 1,000 points published at full
//! speed to a real mosquitto (started here, like in the tests); parkguard's subscriber
//! decodes, maps and converts them and hands them to a counting channel.
//!
//! ```text
//! cargo run --release -p parkguard-tests --bin mqtt_bench [-- MESSAGES]
//! ```
//!
//! The publisher runs in a child process (this binary with `--publisher`) so that the CPU
//! time and RSS reported are the subscriber's alone. Reports, per QoS: messages received,
//! msg/s end to end (first publish → last reading handed over), CPU ms per 1,000 messages
//! (user + system of this process during the run), and peak RSS. A third run queues
//! MESSAGES/4 QoS 1 messages while the subscriber is away and times the drain of the
//! persistent session: the subscriber's own capacity, not the broker's forwarding rate.

use anyhow::{Context, Result, bail};
use parkguard_drivers::mqtt::config::MqttSubscriptionConfig;
use parkguard_drivers::mqtt::sim::json_payload;
use parkguard_drivers::mqtt::{MqttBroker, MqttStats, spawn_subscriber};
use parkguard_rules::{AlarmLimits, Gas, Point, PointId, PointKind, PointTable, Unit};
use parkguard_tests::servers::mosquitto;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const POINTS: usize = 1000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--publisher") {
        let port: u16 = args.get(2).context("port")?.parse()?;
        let qos: u8 = args.get(3).context("qos")?.parse()?;
        let n: usize = args.get(4).context("count")?.parse()?;
        return publisher(port, qos, n);
    }
    let n: usize = match args.get(1) {
        Some(a) => a.parse().context("MESSAGES must be a number")?,
        None => 1_000_000,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("mqtt_bench: {n} JSON messages, {POINTS} points, mosquitto on loopback");
    decode_only(n)?;
    null_subscriber(n)?;
    for qos in [0u8, 1] {
        rt.block_on(run(qos, n, false))?;
    }
    rt.block_on(run(1, n / 4, true))?;
    println!(
        "peak RSS of the subscriber process: {:.1} MiB",
        status_kib("VmHWM")? as f64 / 1024.0
    );
    Ok(())
}

/// The ceiling of this machine for any subscriber: the same QoS 0 load through mosquitto
/// to a subscriber that only counts the packets ([`parkguard_tests::loadgen::count_publishes`]).
fn null_subscriber(n: usize) -> Result<()> {
    let server = mosquitto::start()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let port = server.port;
    let cpu0 = cpu_ms()?;
    let counter = std::thread::spawn(move || {
        parkguard_tests::loadgen::count_publishes(
            port,
            "bench/+",
            n,
            Duration::from_secs(5),
            ready_tx,
        )
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("null subscriber never subscribed")?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["--publisher", &port.to_string(), "0", &n.to_string()])
        .status()?;
    let (got, span) = counter
        .join()
        .map_err(|_| anyhow::anyhow!("counter panicked"))??;
    let cpu = cpu_ms()? - cpu0;
    println!(
        "QoS 0 to a null subscriber (mosquitto + publisher ceiling): {got}/{n} in {:.2} s = {:.0} msg/s; its CPU {:.2} ms per 1,000 messages; publisher {status}",
        span.as_secs_f64(),
        got as f64 / span.as_secs_f64().max(1e-9),
        cpu / got.max(1) as f64 * 1000.0,
    );
    Ok(())
}

/// The pure part alone: decode + map + convert, no MQTT.
fn decode_only(n: usize) -> Result<()> {
    use parkguard_drivers::mqtt::decode::{decode_stateless, resolve};
    let sub: MqttSubscriptionConfig = serde_json::from_value(serde_json::json!({
        "broker": "bench", "topic": "bench/+", "format": "json",
        "tag_segment": 1, "unit_field": "unit", "time_field": "ts", "quality_field": "quality",
    }))?;
    let sub = sub
        .validate(&["bench"])
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let t = table();
    let topics: Vec<String> = (0..POINTS).map(|i| format!("bench/X-{i:04}")).collect();
    let payloads: Vec<Vec<u8>> = (0..POINTS)
        .map(|i| {
            json_payload(
                &topics[i][6..],
                i as f64 * 0.01,
                Unit::PercentLel,
                1_764_144_000_000,
            )
        })
        .collect();
    let rt = parkguard_rules::Timestamp(0);
    // The general path (the whole payload as a serde_json::Value: the only path before the
    // fast path existed) and what the subscriber runs (fast path for flat objects).
    for general in [true, false] {
        let cpu0 = cpu_ms()?;
        let start = Instant::now();
        let mut ok = 0usize;
        for i in 0..n {
            let (topic, payload) = (&topics[i % POINTS], &payloads[i % POINTS]);
            let d = if general {
                let mut d = parkguard_drivers::mqtt::decode::Decoded::default();
                parkguard_drivers::mqtt::decode::decode_json_general(
                    &sub, topic, payload, rt, &mut d,
                );
                d
            } else {
                decode_stateless(&sub, topic, payload, rt)
            };
            for r in &d.readings {
                ok += usize::from(resolve(&t, r, rt).is_ok());
            }
        }
        let wall = start.elapsed().as_secs_f64();
        println!(
            "decode+map only ({}): {ok} readings, {:.0} ns wall, {:.2} ms CPU per 1,000 messages",
            if general {
                "general path, serde_json::Value"
            } else {
                "as the subscriber runs it"
            },
            wall * 1e9 / n as f64,
            (cpu_ms()? - cpu0) / n as f64 * 1000.0
        );
    }
    Ok(())
}

fn cpu_ms() -> Result<f64> {
    // /proc/self/stat fields 14 (utime) and 15 (stime), in clock ticks (100 Hz).
    let s = std::fs::read_to_string("/proc/self/stat")?;
    let rest = s.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 * 10.0)
}

fn status_kib(key: &str) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            return Ok(v.trim().trim_end_matches(" kB").trim().parse()?);
        }
    }
    bail!("{key} not in /proc/self/status")
}

fn table() -> Arc<PointTable> {
    let points = (0..POINTS)
        .map(|i| Point {
            id: PointId(i as u32),
            tag: format!("X-{i:04}"),
            name: format!("X-{i:04}"),
            enterprise: "E1".into(),
            device: None,
            hazard_installation: None,
            area: None,
            kind: PointKind::Combustible,
            gas: Some(Gas::Ch4),
            unit: Unit::PercentLel,
            range_lo: 0.0,
            range_hi: 100.0,
            limits: AlarmLimits {
                hh: Some(50.0),
                h: Some(25.0),
                l: None,
                ll: None,
                deadband: 1.0,
                on_delay: Duration::ZERO,
                off_delay: Duration::ZERO,
                ..AlarmLimits::default()
            },
            expected_interval: Duration::from_secs(1),
            location: None,
        })
        .collect();
    Arc::new(PointTable::new(points).expect("dense ids"))
}

/// One run. `backlog`: publish everything while the subscriber is away (persistent
/// session), then time how fast it drains the queue — the subscriber's own capacity rather
/// than the publisher's or the broker's forwarding rate.
async fn run(qos: u8, n: usize, backlog: bool) -> Result<()> {
    let server = mosquitto::start()?;
    let broker = MqttBroker::plain("bench", "127.0.0.1", server.port);
    let sub: MqttSubscriptionConfig = serde_json::from_value(serde_json::json!({
        "broker": "bench", "topic": "bench/+", "format": "json", "qos": qos,
        "tag_segment": 1, "unit_field": "unit", "time_field": "ts", "quality_field": "quality",
    }))?;
    let sub = sub
        .validate(&["bench"])
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let start_sub = || -> Result<_> {
        // The counting "engine": bounded like the real one, drained as fast as it fills.
        let (tx, rx) = mpsc::channel(64);
        let stats = Arc::new(MqttStats::new());
        let stop = CancellationToken::new();
        let task = spawn_subscriber(
            broker.clone(),
            vec![sub.clone()],
            table(),
            tx,
            stats.clone(),
            stop.clone(),
        )?;
        Ok((task, rx, stats, stop))
    };
    let (mut task, mut rx, mut stats, mut stop) = start_sub()?;
    // Wait until subscribed: a probe from mosquitto_pub comes through.
    let probe = json_payload("X-0000", 1.0, Unit::PercentLel, 0);
    let mut ready = false;
    for _ in 0..100 {
        mosquitto::publish(&server, "bench/X-0000", &probe, qos, false)?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            ready = true;
            break;
        }
    }
    anyhow::ensure!(ready, "subscriber never received the probe");
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {}

    let exe = std::env::current_exe()?;
    let publish = || {
        std::process::Command::new(&exe)
            .args([
                "--publisher",
                &server.port.to_string(),
                &qos.to_string(),
                &n.to_string(),
            ])
            .spawn()
    };
    let mut child = None;
    if backlog {
        stop.cancel();
        let _ = task.await;
        drop(rx);
        let status = publish()?.wait()?;
        anyhow::ensure!(status.success(), "publisher failed: {status}");
        (task, rx, stats, stop) = start_sub()?;
    } else {
        child = Some(publish()?);
    }
    let cpu0 = cpu_ms()?;
    let t0 = Instant::now();
    let mut got = 0usize;
    let mut last = t0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(b)) => {
                got += b.len();
                last = Instant::now();
            }
            _ => break,
        }
    }
    let cpu = cpu_ms()? - cpu0;
    let status = match child.as_mut() {
        Some(c) => c.wait()?.to_string(),
        None => "done before the drain".to_string(),
    };
    let secs = last.duration_since(t0).as_secs_f64();
    let snap = stats.snapshot();
    println!(
        "QoS {qos}{}: {got}/{n} readings in {secs:.2} s = {:.0} msg/s; subscriber CPU {:.0} ms = {:.2} ms per 1,000 messages; RSS now {:.1} MiB; rejected {}, acked {}, publisher {status}",
        if backlog { " backlog drain" } else { "" },
        got as f64 / secs,
        cpu,
        cpu / got.max(1) as f64 * 1000.0,
        status_kib("VmRSS")? as f64 / 1024.0,
        snap.rejected,
        snap.acked,
    );
    stop.cancel();
    let _ = task.await;
    Ok(())
}

/// The load: pre-encoded PUBLISH packets written many per syscall
/// ([`parkguard_tests::loadgen`]), so the publisher leaves the cores to the broker and the
/// subscriber.
fn publisher(port: u16, qos: u8, n: usize) -> Result<()> {
    let mut p = parkguard_tests::loadgen::Publisher::connect(
        port,
        &format!("bench-pub-{}", std::process::id()),
        qos,
    )?;
    let topics: Vec<String> = (0..POINTS).map(|i| format!("bench/X-{i:04}")).collect();
    let base_ms = 1_764_144_000_000i64;
    for i in 0..n {
        let k = i % POINTS;
        let v = (i / POINTS) as f64 * 0.01 % 20.0;
        let payload = json_payload(
            &topics[k][6..],
            v,
            Unit::PercentLel,
            base_ms + (i / POINTS) as i64,
        );
        p.publish(&topics[k], &payload)?;
    }
    p.finish(Duration::from_secs(120))?;
    Ok(())
}
