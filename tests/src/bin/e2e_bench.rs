//! End-to-end benchmark of the real `parkguard` binary (issue #11): real mosquitto, real
//! VictoriaMetrics (standing in for InfluxDB 2), the built-in Modbus simulator, a generated
//! park and config, and the release daemon as a child process.
//!
//! ```text
//! cargo build --release -p parkguard          # the daemon under test
//! cargo run --release -p parkguard-tests --bin e2e-bench -- <scenario> [options]
//! ```
//!
//! Scenarios (every size is an option, so a quick run is possible):
//! - `burst`: `--readings 1000000` JSON readings over `--points 10000` at full speed.
//! - `steady`: `--rate 5000` readings/s for `--seconds 60` (run again with `--rate 20000`).
//! - `modbus`: `--devices 100` × `--registers 100` at `--hz 10`, polled by the daemon.
//! - `soak`: `--rate 5000` for `--seconds 3600` with VictoriaMetrics down for
//!   `--outage 300` s in the middle and the MQTT broker stopped (SIGTERM, it saves its
//!   sessions) and started again at 3/4 of the run (`--broker-restart no` to skip); a
//!   shortened run: `--seconds 300 --outage 60`.
//!
//! What is measured, and where:
//! - readings stored: counted **in VictoriaMetrics** (`count_over_time` of `reading_value`),
//!   never in parkguard; loss = published − stored once the count stops growing.
//! - alarm latency: a second MQTT connection publishes probe readings that cross (and
//!   return under) a level-1 limit on dedicated probe points every `--probe-ms`; latency is
//!   publish → the alarm message of the linkage MQTT channel on the broker (what a linkage
//!   partner receives; the probe enterprise is routed there, `group_window = "0s"`), and
//!   publish → the `alarm` event on the daemon's SSE stream (what the console sees).
//! - the broker alone: with every probe the probe connection also publishes an echo
//!   message that only the bench's alarm-channel reader subscribes to (publish → mosquitto
//!   → bench, parkguard not on the path), timed the same way under the same load: the floor
//!   of one broker hop (the MQTT alarm channel's path crosses the broker twice).
//! - the machine: busy, stolen (by the hypervisor: time this VM wanted to run and could
//!   not) and idle CPU from `/proc/stat` over the run; the latency tail follows the steal.
//! - load: [`parkguard_tests::loadgen`] from a thread of its own (pre-encoded PUBLISH
//!   packets, many per write), QoS `--qos` (default 1).
//! - the daemon runs with `MALLOC_ARENA_MAX=2` as deployed (systemd unit, Dockerfile).
//! - CPU: utime + stime of the daemon's PID from `/proc/PID/stat` over the run; peak RSS is
//!   its `VmHWM`.
//! - Modbus: polls/s, values/s from the daemon's `/metrics` counters over the window, CPU per
//!   poll, and poll-start jitter from the daemon's lateness histogram
//!   (`parkguard_modbus_poll_lateness_seconds`, all devices) over the window: each quantile
//!   is the upper bound of the bucket it falls in.

use anyhow::{Context, Result, bail, ensure};
use parkguard_drivers::modbus::sim::{self, SimDeviceSpec, SimKind};
use parkguard_tests::servers::{mosquitto, victoria};
use parkguard_tests::{Server, free_port, spawn_in, wait_listening};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARK: &str = "bench-park";
/// Probe points (level-1 limit 25 %LEL); each probe alternates high and low on one of them.
const PROBE_POINTS: usize = 20;
/// The enterprise of the probe points: the only one routed to the MQTT alarm channel.
const PROBE_ENTERPRISE: &str = "E2";
/// Topic of the echo messages that time the broker alone (no parkguard on their path).
const ECHO_TOPIC: &str = "bench/echo";

#[derive(Clone, Debug)]
struct Args {
    scenario: String,
    points: usize,
    readings: usize,
    rate: f64,
    seconds: u64,
    qos: u8,
    probe_ms: u64,
    devices: u8,
    registers: u16,
    hz: f64,
    warmup: u64,
    outage: u64,
    daemon: Option<PathBuf>,
    keep: bool,
    /// Restart the MQTT broker at 3/4 of a timed run (default for `soak`).
    broker_restart: bool,
    /// Readings per MQTT message (`--batch`): 1 = one reading per message on `gw/<tag>`;
    /// more = a gateway's JSON array `{"r":[{"tag":…,"value":…,"ts":…},…]}` on `gwb/<n>`,
    /// the way enterprise gateways publish one scan of their points.
    batch: usize,
    /// `modbus` only: keep a console's SSE stream open during the run (`--console`), as
    /// when an operator watches; the point events it receives are counted.
    console: bool,
    /// `[spool].group_commit_ms` of the daemon (`--group-commit-ms`); unset: its default.
    group_commit_ms: Option<u64>,
    /// mosquitto's `set_tcp_nodelay` (`--broker-nodelay yes|no`, default yes, as the
    /// README asks of the park's broker): with Nagle's algorithm on, mosquitto holds a
    /// small PUBLISH for a subscriber until that subscriber's TCP acknowledgement of the
    /// previous one.
    broker_nodelay: bool,
    /// mosquitto's `max_inflight_messages` (`--broker-inflight N`; default 0, no limit):
    /// 20 is mosquitto's own default.
    broker_inflight: u32,
}

const USAGE: &str = "usage: e2e-bench burst|steady|modbus|soak [--points N] [--readings N] [--rate R] \
[--seconds S] [--qos 0|1] [--probe-ms MS] [--devices D] [--registers R] [--hz H] [--warmup S] \
[--outage S] [--broker-restart yes|no] [--batch N] [--daemon PATH] [--keep] [--console] \
[--group-commit-ms MS] [--broker-nodelay yes|no] [--broker-inflight N]";

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let scenario = it.next().context(USAGE)?;
    if matches!(scenario.as_str(), "--help" | "-h" | "help") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    if scenario == "--serve-modbus" {
        let devices: u8 = it.next().context("devices")?.parse()?;
        let registers: u16 = it.next().context("registers")?.parse()?;
        serve_modbus(devices, registers)?;
        std::process::exit(0);
    }
    let (rate, seconds, outage) = match scenario.as_str() {
        "burst" => (0.0, 0, 0),
        "steady" => (5000.0, 60, 0),
        "modbus" => (0.0, 30, 0),
        "soak" => (5000.0, 3600, 300),
        _ => bail!("unknown scenario {scenario:?}\n{USAGE}"),
    };
    let broker_restart = scenario == "soak";
    let mut a = Args {
        scenario,
        points: 10_000,
        readings: 1_000_000,
        rate,
        seconds,
        qos: 1,
        probe_ms: 100,
        devices: 100,
        registers: 100,
        hz: 10.0,
        warmup: 5,
        outage,
        daemon: None,
        keep: false,
        broker_restart,
        batch: 1,
        console: false,
        group_commit_ms: None,
        broker_nodelay: true,
        broker_inflight: 0,
    };
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--points" => a.points = v()?.parse()?,
            "--readings" => a.readings = v()?.parse()?,
            "--rate" => a.rate = v()?.parse()?,
            "--seconds" => a.seconds = v()?.parse()?,
            "--qos" => a.qos = v()?.parse()?,
            "--probe-ms" => a.probe_ms = v()?.parse()?,
            "--devices" => a.devices = v()?.parse()?,
            "--registers" => a.registers = v()?.parse()?,
            "--hz" => a.hz = v()?.parse()?,
            "--warmup" => a.warmup = v()?.parse()?,
            "--outage" => a.outage = v()?.parse()?,
            "--daemon" => a.daemon = Some(v()?.into()),
            "--keep" => a.keep = true,
            "--console" => a.console = true,
            "--broker-restart" => a.broker_restart = v()? != "no",
            "--batch" => a.batch = v()?.parse()?,
            "--group-commit-ms" => a.group_commit_ms = Some(v()?.parse()?),
            "--broker-nodelay" => a.broker_nodelay = v()? != "no",
            "--broker-inflight" => a.broker_inflight = v()?.parse()?,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    ensure!(
        a.points > 0 && a.qos <= 1 && a.probe_ms > 0 && (1..=1000).contains(&a.batch),
        "{USAGE}"
    );
    ensure!(
        (1..=247).contains(&a.devices) && (1..=125).contains(&a.registers),
        "need 1 ≤ devices ≤ 247 and 1 ≤ registers ≤ 125"
    );
    Ok(a)
}

/// The release daemon: `--daemon PATH`, else `target/release/parkguard` beside this binary.
fn daemon_path(a: &Args) -> Result<PathBuf> {
    if let Some(p) = &a.daemon {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("binary dir")?
        .join(format!("parkguard{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        bin.exists(),
        "{} not built: run `cargo build --release -p parkguard` first",
        bin.display()
    );
    Ok(bin)
}

fn main() -> Result<()> {
    let a = args()?;
    let bin = daemon_path(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "e2e-bench {} with {} (built {})",
        a.scenario,
        bin.display(),
        std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .map(|t| format!(
                "{} s ago",
                t.elapsed().map(|d| d.as_secs()).unwrap_or_default()
            ))
            .unwrap_or_default()
    );
    match a.scenario.as_str() {
        "modbus" => rt.block_on(modbus(&a, &bin)),
        _ => rt.block_on(mqtt(&a, &bin)),
    }
}

// ---------------------------------------------------------------------------------------
// The daemon process

/// The daemon under test, with what is needed to talk to it.
struct Daemon {
    server: Server,
    api: String,
    token: String,
}

impl Daemon {
    fn start(bin: &Path, dir: tempfile::TempDir, config: &str) -> Result<Self> {
        let api_port = free_port()?;
        let users = dir.path().join("users.toml");
        parkguard::auth::add_user(
            &users,
            "bench",
            parkguard::auth::Role::Viewer,
            "bench-viewer-password",
        )?;
        let token = parkguard::auth::add_token(&users, "bench", "e2e-bench")?;
        let cfg = dir.path().join("park.toml");
        let config = config
            .replace("@API@", &format!("127.0.0.1:{api_port}"))
            .replace("@USERS@", &users.display().to_string())
            .replace("@DATA@", &dir.path().join("data").display().to_string());
        std::fs::write(&cfg, config)?;
        let check = Command::new(bin).arg("check-config").arg(&cfg).output()?;
        ensure!(
            check.status.success(),
            "generated config rejected: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info");
        // As deployed (deploy/systemd/parkguard.service, deploy/Dockerfile), unless the
        // caller's environment says otherwise.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            cmd.env("MALLOC_ARENA_MAX", "2");
        }
        let mut server = spawn_in("parkguard", cmd, api_port, dir)?;
        wait_listening(&mut server, Duration::from_secs(60))?;
        Ok(Self {
            server,
            api: format!("http://127.0.0.1:{api_port}"),
            token,
        })
    }

    fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// utime + stime of the daemon, seconds.
    fn cpu(&self) -> Result<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let ticks = stat_ticks(&s).context("utime + stime in /proc/PID/stat")?;
        Ok(ticks as f64 / 100.0)
    }

    /// A `/proc/PID/status` value in MiB (VmRSS, VmHWM).
    fn mem_mib(&self, key: &str) -> Result<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let Some(v) = status_value(&s, key) else {
            bail!("{key} not in /proc/PID/status")
        };
        Ok(v.trim_end_matches(" kB").trim().parse::<f64>()? / 1024.0)
    }

    async fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.server.log().contains(needle) {
            ensure!(
                Instant::now() < deadline,
                "daemon never logged {needle:?}:\n{}",
                tail(&self.server.log())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The cumulative buckets `(le, count)` of the Prometheus histogram `name` in
    /// `/metrics` (`+Inf` as infinity), in the order exported.
    async fn histogram(&self, name: &str) -> Result<Vec<(f64, f64)>> {
        let text = self.metrics_text().await?;
        let prefix = format!("{name}_bucket{{le=\"");
        Ok(text
            .lines()
            .filter_map(|l| {
                let (le, rest) = l.strip_prefix(&prefix)?.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, rest.trim().parse().ok()?))
            })
            .collect())
    }

    async fn metrics_text(&self) -> Result<String> {
        Ok(reqwest::Client::new()
            .get(format!("{}/metrics", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Sum of every sample of the Prometheus counter `name` in `/metrics`.
    async fn metric_sum(&self, name: &str) -> Result<f64> {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Generated park

fn header(a: &Args, influx: &str) -> String {
    let spool = match a.group_commit_ms {
        Some(ms) => format!("\n[spool]\ngroup_commit_ms = {ms}\n"),
        None => String::new(),
    };
    format!(
        r#"[park]
id = "{PARK}"
name = "基准测试园区"

[data]
dir = "@DATA@"

[api]
listen = "@API@"
users_file = "@USERS@"

[influx]
url = "{influx}"
org = "park"
bucket = "parkguard"
batch_interval_ms = 200

[[enterprise]]
code = "E1"
name = "一号企业"

[[enterprise]]
code = "{PROBE_ENTERPRISE}"
name = "探针企业"
{spool}"#
    )
}

fn mqtt_config(a: &Args, mqtt_port: u16, influx: &str) -> String {
    let mut c = header(a, influx);
    let _ = write!(
        c,
        r#"
[[mqtt_broker]]
id = "park"
host = "127.0.0.1"
port = {mqtt_port}
client_id = "parkguard-bench"

[[mqtt_subscription]]
broker = "park"
topic = "gw/+"
format = "json"
tag_segment = 1
time_field = "ts"
time_format = "epoch_ms"
qos = {qos}
"#,
        qos = a.qos
    );
    if a.batch > 1 {
        // Gateway batches: the tag inside each element of the array.
        let _ = write!(
            c,
            r#"
[[mqtt_subscription]]
broker = "park"
topic = "gwb/+"
format = "json"
tag_field = "tag"
readings_field = "r"
time_field = "ts"
time_format = "epoch_ms"
qos = {qos}
"#,
            qos = a.qos
        );
    }
    // Every probe alarm goes to the MQTT alarm channel (the load's values never alarm).
    let _ = write!(
        c,
        r#"
[[channel]]
type = "mqtt"
name = "bench-bus"
broker = "park"

# Each probe alarm on its own message: the bench times single alarms, not a flood.
[outbox]
group_window = "0s"

[[route]]
name = "probes"
enterprises = ["{PROBE_ENTERPRISE}"]
channels = ["bench-bus"]
"#
    );
    let tags = (0..a.points)
        .map(|i| (tag(i), "E1"))
        .chain((0..PROBE_POINTS).map(|i| (probe_tag(i), PROBE_ENTERPRISE)));
    for (t, ent) in tags {
        let _ = write!(
            c,
            r#"
[[point]]
tag = "{t}"
name = "{t}"
enterprise = "{ent}"
kind = "combustible"
gas = "ch4"
unit = "%LEL"
range = [0, 100]
interval = "1h"
limits = {{ h = 25, hh = 50, on_delay = "0s", off_delay = "0s" }}
"#
        );
    }
    c
}

/// The load's `i`-th reading: value (never near a limit) and source time.
fn value_at(i: usize, points: usize, base_ms: i64) -> (f64, i64) {
    let k = i / points;
    ((k % 200) as f64 * 0.1, base_ms + k as i64)
}

fn tag(i: usize) -> String {
    format!("P{i:05}")
}

fn probe_tag(i: usize) -> String {
    format!("AL-{i:02}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// VictoriaMetrics count

/// Samples of `reading_value` of the bench park stored in VictoriaMetrics.
async fn stored(vm: &str) -> Result<u64> {
    victoria::force_flush(vm).await?;
    let q = format!(r#"sum(count_over_time(reading_value{{park="{PARK}"}}[30d]))"#);
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{vm}/api/v1/query"))
        .query(&[("query", q.as_str()), ("nocache", "1")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let result = &v["data"]["result"];
    match result.as_array().and_then(|r| r.first()) {
        None => Ok(0),
        Some(r) => Ok(r["value"][1]
            .as_str()
            .context("count value")?
            .parse::<f64>()? as u64),
    }
}

/// Poll the stored count until it reaches `want` or stops growing for `patience`.
/// Returns (count, when it was last seen growing).
async fn wait_stored(vm: &str, want: u64, patience: Duration) -> Result<(u64, Instant)> {
    let mut last = stored(vm).await.unwrap_or(0);
    let mut last_change = Instant::now();
    while last < want && last_change.elapsed() < patience {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = stored(vm).await.unwrap_or(last);
        if n != last {
            last = n;
            last_change = Instant::now();
        }
    }
    Ok((last, last_change))
}

// ---------------------------------------------------------------------------------------
// Alarm latency: to the MQTT alarm channel (what a linkage partner receives) and to SSE

/// The two places an alarm is measured at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The linkage MQTT channel's alarm message on the broker.
    Mqtt,
    /// The `alarm` event on the daemon's SSE stream (what the console sees).
    Sse,
}

/// One probe crossing its limit, waiting for its alarm on each path.
struct Pending {
    at: Instant,
    mqtt: bool,
    sse: bool,
}

#[derive(Default)]
struct Probes {
    /// tag → the last probe that crossed its limit on that point.
    pending: HashMap<String, Pending>,
    mqtt_us: Vec<u64>,
    sse_us: Vec<u64>,
    /// Echo messages (bench → broker → bench, parkguard not involved) on their way.
    echo_at: HashMap<u64, Instant>,
    /// Their latencies: the broker's share of one hop under the same load.
    echo_us: Vec<u64>,
    sent: usize,
    /// Probes whose alarm had not arrived on a path when the point crossed again.
    mqtt_missed: usize,
    sse_missed: usize,
}

impl Probes {
    fn arrived(&mut self, point: &str, path: Via, now: Instant) {
        let Some(p) = self.pending.get_mut(point) else {
            return;
        };
        let (done, lat) = match path {
            Via::Mqtt => (&mut p.mqtt, &mut self.mqtt_us),
            Via::Sse => (&mut p.sse, &mut self.sse_us),
        };
        if !*done {
            *done = true;
            lat.push(now.duration_since(p.at).as_micros() as u64);
        }
    }

    fn echoed(&mut self, n: u64, now: Instant) {
        if let Some(at) = self.echo_at.remove(&n) {
            self.echo_us.push(now.duration_since(at).as_micros() as u64);
        }
    }

    fn crossed(&mut self, point: String, at: Instant) {
        if let Some(old) = self.pending.insert(
            point,
            Pending {
                at,
                mqtt: false,
                sse: false,
            },
        ) {
            self.mqtt_missed += usize::from(!old.mqtt);
            self.sse_missed += usize::from(!old.sse);
        }
        self.sent += 1;
    }

    fn unanswered(&self) -> (usize, usize) {
        let open = |f: fn(&Pending) -> bool| self.pending.values().filter(|p| !f(p)).count();
        (
            self.mqtt_missed + open(|p| p.mqtt),
            self.sse_missed + open(|p| p.sse),
        )
    }
}

/// Follow the daemon's SSE stream (reconnecting when it ends), handing each complete
/// event to `each` with the time its chunk arrived; `ready` is set once connected.
async fn follow_sse(
    api: &str,
    token: &str,
    ready: Option<&AtomicBool>,
    mut each: impl FnMut(&str, Instant),
) {
    loop {
        let r = reqwest::Client::new()
            .get(format!("{api}/api/v1/events"))
            .bearer_auth(token)
            .send()
            .await;
        let mut resp = match r.and_then(|r| r.error_for_status()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("SSE connect failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(ready) = ready {
            ready.store(true, Ordering::SeqCst);
        }
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let now = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            let mut at = 0;
            while let Some(end) = buf[at..].find("\n\n") {
                each(&buf[at..at + end + 2], now);
                at += end + 2;
            }
            buf.drain(..at);
        }
        eprintln!("SSE stream ended; reconnecting");
    }
}

/// Read the daemon's SSE stream and match `alarm` events to pending probes.
async fn sse_reader(
    api: String,
    token: String,
    probes: Arc<Mutex<Probes>>,
    ready: Arc<AtomicBool>,
) {
    follow_sse(&api, &token, Some(&ready), |ev, now| {
        if !ev.lines().any(|l| l == "event: alarm") {
            return;
        }
        let Some(data) = ev.lines().find_map(|l| l.strip_prefix("data: ")) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            return;
        };
        let Some(point) = v["point"].as_str() else {
            return;
        };
        probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .arrived(point, Via::Sse, now);
    })
    .await
}

/// A console's live stream: count the `point` and `reset` events of the daemon's SSE
/// stream.
async fn console_reader(
    api: String,
    token: String,
    points: Arc<AtomicU64>,
    resets: Arc<AtomicU64>,
) {
    follow_sse(&api, &token, None, |ev, _| {
        if ev.lines().any(|l| l == "event: point") {
            points.fetch_add(1, Ordering::SeqCst);
        } else if ev.lines().any(|l| l == "event: reset") {
            resets.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await
}

/// Subscribe to the linkage channel's alarm topic of the probe enterprise and match each
/// alarm message to its pending probe (the topic's last segment is the tag).
fn alarm_channel_reader(
    port: u16,
    probes: Arc<Mutex<Probes>>,
    ready: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let mut o = rumqttc::MqttOptions::new(
        format!("bench-alarms-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    tokio::spawn(async move {
        let topic = format!("parkguard/{PARK}/alarms/{PROBE_ENTERPRISE}/+");
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe_many([
                        rumqttc::SubscribeFilter::new(topic.clone(), rumqttc::QoS::AtMostOnce),
                        rumqttc::SubscribeFilter::new(
                            format!("{ECHO_TOPIC}/+"),
                            rumqttc::QoS::AtMostOnce,
                        ),
                    ]);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    ready.store(true, Ordering::SeqCst);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let now = Instant::now();
                    if let Some(n) = p.topic.strip_prefix(ECHO_TOPIC) {
                        if let Ok(n) = n.trim_start_matches('/').parse() {
                            probes
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .echoed(n, now);
                        }
                    } else if let Some(tag) = p.topic.rsplit('/').next() {
                        probes.lock().unwrap_or_else(|e| e.into_inner()).arrived(
                            tag,
                            Via::Mqtt,
                            now,
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("alarm channel subscriber: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

fn mqtt_client(
    port: u16,
    name: &str,
) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<Result<u64>>) {
    let mut o =
        rumqttc::MqttOptions::new(format!("{name}-{}", std::process::id()), "127.0.0.1", port);
    o.set_inflight(1000);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10_000);
    // Counts PUBACKs until the client disconnects.
    let pump = tokio::spawn(async move {
        let mut acks = 0u64;
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acks += 1,
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(acks),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("publisher connection: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    (client, pump)
}

/// Probe loop: every `probe_ms`, one probe point goes above its level-1 limit or back
/// under it; each crossing upwards is a probe waiting for its alarm. Returns the number of
/// probe readings published.
async fn probe_loop(
    client: rumqttc::AsyncClient,
    probes: Arc<Mutex<Probes>>,
    probe_ms: u64,
    stop: Arc<AtomicBool>,
    ctl: Arc<LoadCtl>,
) -> Result<u64> {
    let mut tick = tokio::time::interval(Duration::from_millis(probe_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut j = 0usize;
    let mut published = 0u64;
    let mut last_ts = 0i64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if ctl.pause.load(Ordering::SeqCst) {
            if !ctl.probes_paused.load(Ordering::SeqCst) {
                // Leave time for the PUBACKs of what was sent (rumqttc with a clean session
                // forgets unacknowledged messages when it reconnects).
                tokio::time::sleep(Duration::from_millis(500)).await;
                ctl.probes_paused.store(true, Ordering::SeqCst);
            }
            continue;
        }
        if ctl.probes_paused.swap(false, Ordering::SeqCst) {
            // Back: let the client reconnect before sending again.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let point = probe_tag((j / 2) % PROBE_POINTS);
        let high = j.is_multiple_of(2);
        j += 1;
        let value = if high { 30.0 } else { 5.0 };
        // Distinct, increasing source times per point (VictoriaMetrics keeps ms).
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        if high {
            probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .crossed(point.clone(), Instant::now());
        }
        let payload = format!(r#"{{"value":{value},"ts":{ts}}}"#);
        client
            .publish(
                format!("gw/{point}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
        published += 1;
        // The broker alone, under the same load: an echo from this client to the alarm
        // reader's connection, which parkguard does not subscribe to.
        let n = j as u64;
        probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .echo_at
            .insert(n, Instant::now());
        client
            .publish(
                format!("{ECHO_TOPIC}/{n}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                "",
            )
            .await?;
    }
    Ok(published)
}

/// Pausing the load and the probes (for a broker restart): `pause` asks, `load_paused` and
/// `probes_paused` answer once every message they sent is acknowledged.
#[derive(Default)]
struct LoadCtl {
    pause: AtomicBool,
    load_paused: AtomicBool,
    probes_paused: AtomicBool,
}

/// The load: `total` readings round-robin over `points`, at `rate` per second (0 = as fast
/// as the broker takes them), from a thread of its own with the low-overhead publisher
/// ([`parkguard_tests::loadgen`]). `progress` counts what was written to the socket.
#[allow(clippy::too_many_arguments)]
fn load_thread(
    port: u16,
    qos: u8,
    batch: usize,
    points: usize,
    total: usize,
    rate: f64,
    progress: Arc<std::sync::atomic::AtomicUsize>,
    ctl: Arc<LoadCtl>,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let connect = || {
            parkguard_tests::loadgen::Publisher::connect(
                port,
                &format!("bench-load-{}", std::process::id()),
                qos,
            )
        };
        let mut p = connect()?;
        let mut acked = 0u64;
        let topics: Vec<String> = (0..points).map(|i| format!("gw/{}", tag(i))).collect();
        let gateways: Vec<String> = (0..points.div_ceil(batch).max(1))
            .map(|g| format!("gwb/G{g:04}"))
            .collect();
        let base_ms = now_ms();
        let t0 = Instant::now();
        let tick = Duration::from_millis(10);
        let mut i = 0usize;
        let mut payload = String::with_capacity(64 * batch);
        while i < total {
            let upto = if rate > 0.0 {
                // Readings due by the end of the next 10 ms tick.
                let due = ((t0.elapsed() + tick).as_secs_f64() * rate) as usize;
                due.min(total)
            } else {
                (i + 1000).min(total)
            };
            while i < upto {
                payload.clear();
                if batch == 1 {
                    let (v, ts) = value_at(i, points, base_ms);
                    let _ = write!(payload, r#"{{"value":{v:.1},"ts":{ts}}}"#);
                    p.publish(&topics[i % points], payload.as_bytes())?;
                    i += 1;
                } else {
                    let end = (i + batch).min(upto);
                    let gateway = (i / batch) % gateways.len();
                    payload.push_str(r#"{"r":["#);
                    for j in i..end {
                        let (v, ts) = value_at(j, points, base_ms);
                        let sep = if j == i { "" } else { "," };
                        let _ = write!(
                            payload,
                            r#"{sep}{{"tag":"{}","value":{v:.1},"ts":{ts}}}"#,
                            tag(j % points)
                        );
                    }
                    payload.push_str("]}");
                    p.publish(&gateways[gateway], payload.as_bytes())?;
                    i = end;
                }
            }
            p.flush()?;
            progress.store(i, Ordering::Release);
            if ctl.pause.load(Ordering::SeqCst) {
                // Like a gateway during a broker restart: everything sent is acknowledged,
                // nothing more is sent until the broker is back; then it catches up.
                acked += p.finish(Duration::from_secs(600))?;
                ctl.load_paused.store(true, Ordering::SeqCst);
                while ctl.pause.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                p = loop {
                    match connect() {
                        Ok(p) => break p,
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
                ctl.load_paused.store(false, Ordering::SeqCst);
            }
            if rate > 0.0 {
                std::thread::sleep(tick);
            }
        }
        Ok(acked + p.finish(Duration::from_secs(600))?)
    })
}

// ---------------------------------------------------------------------------------------
// MQTT scenarios: burst, steady, soak

async fn mqtt(a: &Args, bin: &Path) -> Result<()> {
    let broker = mosquitto::start_with(&mosquitto::MosquittoOptions {
        // Later lines win over the harness's `max_inflight_messages 0`.
        extra: format!(
            "set_tcp_nodelay {}\nmax_inflight_messages {}\n",
            a.broker_nodelay, a.broker_inflight
        ),
        ..Default::default()
    })?;
    let vm_dir = tempfile::tempdir()?;
    let vm_data = vm_dir.path().join("vm");
    let vm_port = free_port()?;
    let mut vm = victoria::start_on(&vm_data, vm_port)?;
    let vm_url = victoria::url(&vm);
    let dir = tempfile::tempdir()?;
    let dir_path = dir.path().to_path_buf();
    let daemon = Daemon::start(bin, dir, &mqtt_config(a, broker.port, &vm_url))?;
    daemon
        .wait_log("mqtt connected", Duration::from_secs(30))
        .await?;
    let rss_idle = daemon.mem_mib("VmRSS")?;
    println!(
        "daemon pid {} up; {} points + {PROBE_POINTS} probe points; RSS idle {rss_idle:.1} MiB",
        daemon.pid(),
        a.points
    );

    let probes = Arc::new(Mutex::new(Probes::default()));
    let sse_ready = Arc::new(AtomicBool::new(false));
    let sse = tokio::spawn(sse_reader(
        daemon.api.clone(),
        daemon.token.clone(),
        probes.clone(),
        sse_ready.clone(),
    ));
    let alarms_ready = Arc::new(AtomicBool::new(false));
    let alarms = alarm_channel_reader(broker.port, probes.clone(), alarms_ready.clone());
    while !sse_ready.load(Ordering::SeqCst) || !alarms_ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (probe, probe_pump) = mqtt_client(broker.port, "bench-probe");
    let total = match a.scenario.as_str() {
        "burst" => a.readings,
        _ => (a.rate * a.seconds as f64).round() as usize,
    };
    let stop_probes = Arc::new(AtomicBool::new(false));
    let ctl = Arc::new(LoadCtl::default());
    let probe_task = tokio::spawn(probe_loop(
        probe.clone(),
        probes.clone(),
        a.probe_ms,
        stop_probes.clone(),
        ctl.clone(),
    ));

    let cpu0 = daemon.cpu()?;
    let cpu_times0 = cpu_times();
    let threads0 = thread_stats(daemon.pid());
    let t0 = Instant::now();
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = load_thread(
        broker.port,
        a.qos,
        a.batch,
        a.points,
        total,
        a.rate,
        progress.clone(),
        ctl.clone(),
    );
    let mut broker = broker;
    let mut restart_at =
        (a.broker_restart && a.rate > 0.0).then(|| Duration::from_secs(a.seconds * 3 / 4));
    let mut rss_samples: Vec<(f64, f64)> = Vec::new();
    let mut outage_done = a.outage == 0;
    let outage_at = Duration::from_secs(a.seconds.saturating_sub(a.outage) / 2);
    let mut in_outage: Option<Instant> = None;
    let mut next_report = Duration::from_secs(10);
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let el = t0.elapsed();
        if a.outage > 0 && !outage_done {
            match in_outage {
                None if el >= outage_at => {
                    println!(
                        "[{:>5.0} s] VictoriaMetrics stopped for {} s",
                        el.as_secs_f64(),
                        a.outage
                    );
                    // SIGTERM: a planned outage. (A SIGKILL also loses the last seconds
                    // VictoriaMetrics had acknowledged but not yet written to disk.)
                    vm.terminate(Duration::from_secs(30));
                    in_outage = Some(Instant::now());
                }
                Some(s) if s.elapsed() >= Duration::from_secs(a.outage) => {
                    vm = victoria::start_on(&vm_data, vm_port)?;
                    println!("[{:>5.0} s] VictoriaMetrics back", el.as_secs_f64());
                    outage_done = true;
                }
                _ => {}
            }
        }
        if restart_at.is_some_and(|at| el >= at) {
            restart_at = None;
            ctl.pause.store(true, Ordering::SeqCst);
            while !(ctl.load_paused.load(Ordering::SeqCst)
                && ctl.probes_paused.load(Ordering::SeqCst))
            {
                ensure!(!load.is_finished(), "load ended while pausing");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t = Instant::now();
            mosquitto::stop_and_restart(&mut broker)?;
            println!(
                "[{:>5.0} s] MQTT broker stopped (SIGTERM) and started again in {:.1} s",
                el.as_secs_f64(),
                t.elapsed().as_secs_f64()
            );
            ctl.pause.store(false, Ordering::SeqCst);
        }
        if el >= next_report {
            next_report += Duration::from_secs(10);
            let rss = daemon.mem_mib("VmRSS")?;
            rss_samples.push((el.as_secs_f64(), rss));
            let spool = dir_size(&dir_path.join("data").join("spool"));
            println!(
                "[{:>5.0} s] published {}, daemon CPU {:.1} s, RSS {rss:.1} MiB, spool {:.1} MiB",
                el.as_secs_f64(),
                progress.load(Ordering::Acquire),
                daemon.cpu()? - cpu0,
                spool as f64 / (1 << 20) as f64
            );
        }
    }
    let acked = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let publish_secs = t0.elapsed().as_secs_f64();
    stop_probes.store(true, Ordering::SeqCst);
    let probe_published = probe_task.await??;
    println!(
        "published {total} readings in {publish_secs:.2} s ({:.0}/s; {} per message; {} PUBACKs at QoS {}) + {probe_published} probe readings",
        total as f64 / publish_secs,
        a.batch,
        acked,
        a.qos
    );
    let want = (total as u64) + probe_published;
    let (count, last_growth) = wait_stored(&vm_url, want, Duration::from_secs(20)).await?;
    let stored_secs = last_growth.duration_since(t0).as_secs_f64();
    let cpu = daemon.cpu()? - cpu0;
    let threads1 = thread_stats(daemon.pid());
    let threads_secs = t0.elapsed().as_secs_f64();
    let hwm = daemon.mem_mib("VmHWM")?;
    let rss_end = daemon.mem_mib("VmRSS")?;
    // Give the last probe events time to arrive, then close the books.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sse.abort();
    alarms.abort();
    let p = std::mem::take(&mut *probes.lock().unwrap_or_else(|e| e.into_inner()));
    let (mqtt_open, sse_open) = p.unanswered();
    println!("--- {} results ---", a.scenario);
    println!(
        "stored in VictoriaMetrics: {count}/{want} readings, loss {}",
        want as i64 - count as i64
    );
    println!(
        "end to end: {:.0} readings/s stored (first publish → last sample counted, {stored_secs:.2} s)",
        count as f64 / stored_secs
    );
    println!(
        "daemon CPU: {cpu:.2} s = {:.2} ms per 1,000 readings; {:.2} cores while publishing",
        cpu * 1e6 / want.max(1) as f64,
        cpu / stored_secs
    );
    println!("daemon RSS: idle {rss_idle:.1} MiB, end {rss_end:.1} MiB, peak (VmHWM) {hwm:.1} MiB");
    if let (Some(first), Some(last)) = (rss_samples.first(), rss_samples.last()) {
        println!(
            "RSS over the run: {:.1} MiB at {:.0} s → {:.1} MiB at {:.0} s",
            first.1, first.0, last.1, last.0
        );
    }
    let pct = |lat: &[u64], q: f64| -> f64 {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
        }
    };
    for (what, lat, open) in [
        (
            "publish → alarm message on the MQTT alarm channel",
            p.mqtt_us,
            mqtt_open,
        ),
        ("publish → SSE `alarm` event", p.sse_us, sse_open),
    ] {
        let mut lat = lat;
        lat.sort_unstable();
        println!(
            "alarm latency {what} ({} probes, {} answered, {open} not answered): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.sent,
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
    }
    let mut echo = p.echo_us;
    echo.sort_unstable();
    println!(
        "the broker alone, same load (bench → mosquitto → bench, parkguard not on the path; the MQTT channel's path crosses the broker twice) ({} echoes, {} answered): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        echo.len() + p.echo_at.len(),
        echo.len(),
        pct(&echo, 0.5),
        pct(&echo, 0.99),
        pct(&echo, 1.0)
    );
    print_machine("the run", cpu_times0, cpu_times());
    print_threads(&threads0, &threads1, threads_secs);
    println!(
        "spool after the run: {} readings not yet delivered to the database (parkguard_spool_pending_readings), {} dropped unsent; {:.1} MiB on disk (kept for `spool.retention`)",
        daemon
            .metric_sum("parkguard_spool_pending_readings")
            .await?,
        daemon
            .metric_sum("parkguard_spool_readings_dropped_unsent_total")
            .await?,
        dir_size(&dir_path.join("data").join("spool")) as f64 / (1 << 20) as f64
    );
    println!(
        "back-pressure of the disk since the daemon started: {:.0} hand-overs waited for the spool writer's full queue, {:.1} ms in all (parkguard_spool_queue_full_wait_seconds_total; the subscriber, and any alarm in its next messages, waited with them)",
        daemon
            .metric_sum("parkguard_spool_queue_full_waits_total")
            .await?,
        daemon
            .metric_sum("parkguard_spool_queue_full_wait_seconds_total")
            .await?
            * 1e3
    );
    let _ = probe.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), probe_pump).await;
    if a.keep {
        println!("(--keep) daemon dir kept: {}", dir_path.display());
        std::mem::forget(daemon);
    }
    drop(broker);
    ensure!(count == want, "readings lost: {count}/{want} stored");
    Ok(())
}

/// The machine's CPU time (all CPUs, clock ticks) from the first line of `/proc/stat`.
#[derive(Clone, Copy)]
struct CpuTimes {
    /// user, nice, system, irq, softirq.
    busy_parts: [u64; 5],
    idle: u64,
    iowait: u64,
    steal: u64,
}

impl CpuTimes {
    fn busy(&self) -> u64 {
        self.busy_parts.iter().sum()
    }
    fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait + self.steal
    }
}

/// The machine's busy, stolen and idle share of its CPU time between two samples.
fn print_machine(over: &str, c0: Option<CpuTimes>, c1: Option<CpuTimes>) {
    if let (Some(c0), Some(c1)) = (c0, c1) {
        let total = c1.total().saturating_sub(c0.total()).max(1) as f64;
        println!(
            "machine over {over} (/proc/stat, {} CPUs): {:.1} % busy, {:.1} % stolen by the hypervisor, {:.1} % idle",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            100.0 * c1.busy().saturating_sub(c0.busy()) as f64 / total,
            100.0 * c1.steal.saturating_sub(c0.steal) as f64 / total,
            100.0 * c1.idle.saturating_sub(c0.idle) as f64 / total,
        );
    }
}

fn cpu_times() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    (f.len() >= 8).then(|| CpuTimes {
        busy_parts: [f[0], f[1], f[2], f[5], f[6]],
        idle: f[3],
        iowait: f[4],
        steal: f[7],
    })
}

/// One thread of the daemon: its name, CPU (utime + stime, clock ticks) and how often it
/// went to sleep (voluntary context switches: every wait for a channel, a timer, a socket
/// or the disk) or was preempted.
#[derive(Clone, Debug, PartialEq)]
struct ThreadStat {
    tid: u32,
    name: String,
    ticks: u64,
    voluntary: u64,
    preempted: u64,
}

/// utime + stime (clock ticks) of a `/proc/…/stat` text: its 14th and 15th fields, counted
/// after the name's closing parenthesis (a name may hold spaces and parentheses).
fn stat_ticks(stat: &str) -> Option<u64> {
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The value of `key` in a `/proc/…/status` text, trimmed.
fn status_value<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// A thread's figures from its `/proc/PID/task/TID/stat` and `status` texts.
fn parse_thread(tid: u32, stat: &str, status: &str) -> Option<ThreadStat> {
    let name = stat.rsplit_once(')')?.0.split_once('(')?.1.to_string();
    let field = |key: &str| status_value(status, key)?.parse::<u64>().ok();
    Some(ThreadStat {
        tid,
        name,
        ticks: stat_ticks(stat)?,
        voluntary: field("voluntary_ctxt_switches")?,
        preempted: field("nonvoluntary_ctxt_switches")?,
    })
}

/// Every thread of process `pid` now (threads that end meanwhile are skipped).
fn thread_stats(pid: u32) -> Vec<ThreadStat> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        parse_thread(tid, &stat, &status)
    })
    .collect()
}

/// Per thread name, over `secs` between two samples: CPU (ms per s), sleeps per second
/// (voluntary context switches) and preemptions per second; busiest first. Threads of one
/// name (the tokio workers and blocking threads are all `parkguard`) are added up.
fn thread_deltas(
    t0: &[ThreadStat],
    t1: &[ThreadStat],
    secs: f64,
) -> Vec<(String, usize, f64, f64, f64)> {
    let mut by_name: std::collections::BTreeMap<&str, (usize, u64, u64, u64)> =
        std::collections::BTreeMap::new();
    for t in t1 {
        let before = t0.iter().find(|b| b.tid == t.tid);
        let d = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0));
        let e = by_name.entry(t.name.as_str()).or_default();
        e.0 += 1;
        e.1 += d(t.ticks, before.map(|b| b.ticks));
        e.2 += d(t.voluntary, before.map(|b| b.voluntary));
        e.3 += d(t.preempted, before.map(|b| b.preempted));
    }
    let secs = secs.max(1e-9);
    let mut rows: Vec<_> = by_name
        .into_iter()
        .map(|(name, (n, ticks, vol, pre))| {
            (
                name.to_string(),
                n,
                ticks as f64 * 10.0 / secs,
                vol as f64 / secs,
                pre as f64 / secs,
            )
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.total_cmp(&a.3)));
    rows
}

/// Print [`thread_deltas`]: where the daemon's CPU went and how often each thread woke.
/// On a virtual machine a wake-up costs tens of microseconds, often more than the work it
/// wakes for (README, "End to end").
fn print_threads(t0: &[ThreadStat], t1: &[ThreadStat], secs: f64) {
    let rows = thread_deltas(t0, t1, secs);
    if rows.is_empty() {
        return;
    }
    let sleeps: f64 = rows.iter().map(|r| r.3).sum();
    println!(
        "daemon threads (/proc/PID/task, CPU ms per s, sleeps per s, preemptions per s), {sleeps:.0} sleeps per s in all:"
    );
    for (name, n, cpu, vol, pre) in rows {
        let name = if n > 1 { format!("{name} ×{n}") } else { name };
        println!("  {name:<20} {cpu:>6.1} ms/s  {vol:>7.1} sleeps/s  {pre:>6.1} preempted/s");
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Modbus scenario

/// Child mode: serve the simulated devices until stdin closes.
fn serve_modbus(devices: u8, registers: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let specs: Vec<SimDeviceSpec> = (1..=devices)
            .map(|unit| SimDeviceSpec {
                unit,
                kind: SimKind::Bulk(registers),
            })
            .collect();
        let h = sim::serve("127.0.0.1:0".parse()?, &specs).await?;
        println!("LISTEN {}", h.addr());
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await?;
        h.shutdown().await;
        Ok(())
    })
}

fn modbus_config(a: &Args, sim: std::net::SocketAddr, influx: &str) -> String {
    let mut c = header(a, influx);
    let interval_ms = (1000.0 / a.hz).round() as u64;
    for unit in 1..=a.devices {
        let _ = write!(
            c,
            r#"
[[modbus_device]]
id = "D{unit:03}"
transport = {{ kind = "tcp", host = "{}", port = {} }}
unit = {unit}
poll_interval_ms = {interval_ms}
timeout_ms = 1000
"#,
            sim.ip(),
            sim.port()
        );
    }
    for unit in 1..=a.devices {
        for r in 0..a.registers {
            let _ = write!(
                c,
                r#"
[[point]]
tag = "D{unit:03}-R{r:03}"
name = "D{unit:03}-R{r:03}"
enterprise = "E1"
kind = "other"
unit = "%"
range = [0, 1000]
interval = "1h"
modbus = {{ device = "D{unit:03}", address = {r}, decimals = 1 }}
"#
            );
        }
    }
    c
}

async fn modbus(a: &Args, bin: &Path) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "--serve-modbus",
            &a.devices.to_string(),
            &a.registers.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the simulator child")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let sim: std::net::SocketAddr = line
        .trim()
        .strip_prefix("LISTEN ")
        .context("simulator did not report its address")?
        .parse()?;
    let vm = victoria::start()?;
    let vm_url = victoria::url(&vm);
    let daemon = Daemon::start(bin, tempfile::tempdir()?, &modbus_config(a, sim, &vm_url))?;
    println!(
        "daemon pid {} up; {} devices × {} registers at {} Hz (simulator {sim}, own process)",
        daemon.pid(),
        a.devices,
        a.registers,
        a.hz
    );
    let point_events = Arc::new(AtomicU64::new(0));
    let resets = Arc::new(AtomicU64::new(0));
    let console = a.console.then(|| {
        tokio::spawn(console_reader(
            daemon.api.clone(),
            daemon.token.clone(),
            point_events.clone(),
            resets.clone(),
        ))
    });
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;
    let events0 = point_events.load(Ordering::SeqCst);
    let resets0 = resets.load(Ordering::SeqCst);
    let sample = || async {
        Ok::<_, anyhow::Error>((
            Instant::now(),
            daemon.cpu()?,
            daemon.metric_sum("parkguard_modbus_requests_total").await?,
            daemon
                .metric_sum("parkguard_modbus_responses_total")
                .await?,
            daemon.metric_sum("parkguard_modbus_readings_total").await?,
            daemon
                .metric_sum("parkguard_modbus_readings_dropped_total")
                .await?,
            daemon.metric_sum("parkguard_modbus_timeouts_total").await?
                + daemon
                    .metric_sum("parkguard_modbus_io_errors_total")
                    .await?
                + daemon
                    .metric_sum("parkguard_modbus_protocol_errors_total")
                    .await?,
        ))
    };
    const LATENESS: &str = "parkguard_modbus_poll_lateness_seconds";
    let late0 = daemon.histogram(LATENESS).await?;
    let s0 = sample().await?;
    let cpu_times0 = cpu_times();
    let threads0 = thread_stats(daemon.pid());
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let s1 = sample().await?;
    let late1 = daemon.histogram(LATENESS).await?;
    let cpu_times1 = cpu_times();
    let threads1 = thread_stats(daemon.pid());
    let secs = s1.0.duration_since(s0.0).as_secs_f64();
    let cpu = s1.1 - s0.1;
    let polls = s1.3 - s0.3;
    let configured = a.hz * f64::from(a.devices);
    println!(
        "--- modbus results ({secs:.1} s window after {} s warm-up) ---",
        a.warmup
    );
    println!(
        "polls/s {:.1} (configured {configured:.1}); requests/s {:.1}; values/s handed to the engine {:.0} (configured {:.0}), dropped {:.0}; faults {}",
        polls / secs,
        (s1.2 - s0.2) / secs,
        (s1.4 - s0.4) / secs,
        configured * f64::from(a.registers),
        s1.5 - s0.5,
        s1.6 - s0.6
    );
    println!(
        "daemon CPU {:.1} % of one core = {:.1} µs per poll; RSS {:.1} MiB, peak {:.1} MiB",
        cpu / secs * 100.0,
        cpu * 1e6 / polls.max(1.0),
        daemon.mem_mib("VmRSS")?,
        daemon.mem_mib("VmHWM")?
    );
    print_machine("the window", cpu_times0, cpu_times1);
    print_threads(&threads0, &threads1, secs);
    match console {
        Some(task) => {
            task.abort();
            println!(
                "a console connected (SSE): {:.0} point events/s received, {} resets (fell behind, must reload)",
                (point_events.load(Ordering::SeqCst) - events0) as f64 / secs,
                resets.load(Ordering::SeqCst) - resets0
            );
        }
        None => println!("no console connected (--console keeps an SSE stream open)"),
    }
    let window = histogram_delta(&late0, &late1);
    let ms = |q: f64| match histogram_quantile(&window, q) {
        Some(v) if v.is_finite() => format!("≤ {:.1} ms", v * 1e3),
        Some(_) => "beyond the last bucket".to_string(),
        None => "no polls".to_string(),
    };
    println!(
        "poll-start jitter over the window (how late each scheduled poll started; the daemon's `{LATENESS}`, {:.0} polls, all devices): p50 {}, p99 {}, p99.9 {}",
        window.last().map_or(0.0, |b| b.1),
        ms(0.5),
        ms(0.99),
        ms(0.999)
    );
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

/// Per-bucket growth of a cumulative histogram between two reads (same buckets).
fn histogram_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - was)
        })
        .collect()
}

/// The upper bound of the bucket of a cumulative histogram that holds quantile `q`
/// (`None` when it is empty).
fn histogram_quantile(cumulative: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = (q * total).ceil().max(1.0);
    cumulative.iter().find(|b| b.1 >= rank).map(|b| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window's jitter is what the histogram gained during it, and a quantile is the
    /// upper bound of the bucket it falls in.
    #[test]
    fn jitter_quantiles_come_from_the_window_of_a_cumulative_histogram() {
        let inf = f64::INFINITY;
        let before = [(0.001, 10.0), (0.005, 10.0), (0.05, 11.0), (inf, 11.0)];
        // During the window: 98 polls within 1 ms, 1 within 5 ms, 1 beyond 50 ms.
        let after = [(0.001, 108.0), (0.005, 109.0), (0.05, 110.0), (inf, 111.0)];
        let w = histogram_delta(&before, &after);
        assert_eq!(
            w,
            [(0.001, 98.0), (0.005, 99.0), (0.05, 99.0), (inf, 100.0)]
        );
        assert_eq!(histogram_quantile(&w, 0.5), Some(0.001));
        assert_eq!(histogram_quantile(&w, 0.99), Some(0.005));
        assert_eq!(histogram_quantile(&w, 0.999), Some(inf));
        assert_eq!(
            histogram_quantile(&histogram_delta(&after, &after), 0.5),
            None
        );
    }

    fn status(vol: u64, pre: u64) -> String {
        format!(
            "Name:\tx\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t{vol}\nnonvoluntary_ctxt_switches:\t{pre}\n"
        )
    }

    /// `/proc/PID/task/TID/stat`: utime and stime are the 14th and 15th fields; the name
    /// may hold spaces and parentheses.
    fn stat(tid: u32, name: &str, utime: u64, stime: u64) -> String {
        format!("{tid} ({name}) S 1 1 1 0 -1 4194624 100 0 0 0 {utime} {stime} 0 0 20 0 9 0 1 2 3")
    }

    #[test]
    fn a_thread_is_read_from_its_stat_and_status() {
        let t = parse_thread(7, &stat(7, "spool (writer)", 30, 12), &status(5, 2));
        assert_eq!(
            t,
            Some(ThreadStat {
                tid: 7,
                name: "spool (writer)".into(),
                ticks: 42,
                voluntary: 5,
                preempted: 2,
            })
        );
        assert_eq!(parse_thread(7, "garbage", &status(5, 2)), None);
        assert_eq!(parse_thread(7, &stat(7, "x", 1, 1), "Name:\tx\n"), None);
    }

    #[test]
    fn threads_of_one_name_are_added_up_busiest_first() {
        let t = |tid, name: &str, ticks, vol, pre| ThreadStat {
            tid,
            name: name.into(),
            ticks,
            voluntary: vol,
            preempted: pre,
        };
        let before = [
            t(1, "parkguard", 10, 100, 1),
            t(2, "parkguard", 20, 50, 0),
            t(3, "engine", 5, 10, 0),
        ];
        // Over 2 s: the two workers used 30 ticks (300 ms) and slept 300 times; a blocking
        // thread started meanwhile counts from zero (2 ticks, 20 sleeps); the engine used 10
        // ticks and slept 40 times.
        let after = [
            t(1, "parkguard", 25, 300, 3),
            t(2, "parkguard", 35, 150, 1),
            t(3, "engine", 15, 50, 0),
            t(9, "parkguard", 2, 20, 0),
        ];
        let rows = thread_deltas(&before, &after, 2.0);
        assert_eq!(rows.len(), 2);
        let (name, n, cpu, vol, pre) = &rows[0];
        assert_eq!((name.as_str(), *n), ("parkguard", 3));
        assert!((cpu - 160.0).abs() < 1e-9, "{cpu}"); // 32 ticks = 320 ms over 2 s
        assert!((vol - 160.0).abs() < 1e-9, "{vol}"); // 320 sleeps over 2 s
        assert!((pre - 1.5).abs() < 1e-9, "{pre}");
        let (name, n, cpu, vol, _) = &rows[1];
        assert_eq!((name.as_str(), *n), ("engine", 1));
        assert!((cpu - 50.0).abs() < 1e-9 && (vol - 20.0).abs() < 1e-9);
    }
}
