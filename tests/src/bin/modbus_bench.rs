//! Modbus polling benchmark: N simulated devices × R registers polled at H Hz over TCP
//! loopback, each device on its own connection, through the real poller
//! (`parkguard_drivers::modbus::spawn`).
//!
//! The simulator runs in a child process (this binary with `--serve`), so the figures are
//! the poller's own: polls/s, values/s, CPU % of one core (utime + stime from
//! /proc/self/stat over the measuring window), RSS (VmRSS / VmHWM) and poll-start jitter
//! (lateness against the absolute schedule, from the per-device histograms).
//!
//! ```text
//! cargo run --release -p parkguard-tests --bin modbus_bench -- --devices 100 --seconds 20
//! ```

use anyhow::{Context, Result, bail};
use parkguard_drivers::modbus::config::{ModbusDeviceConfig, ModbusPointConfig};
use parkguard_drivers::modbus::metrics::{LATENESS_BUCKETS_US, quantile};
use parkguard_drivers::modbus::sim::{self, SimDeviceSpec, SimKind};
use parkguard_drivers::modbus::{ModbusMetrics, plan, spawn};
use parkguard_rules::{AlarmLimits, Point, PointId, PointKind, Unit};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Args {
    devices: u8,
    registers: u16,
    hz: f64,
    seconds: u64,
    warmup: u64,
    threads: usize,
    serve: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        devices: 100,
        registers: 100,
        hz: 10.0,
        seconds: 20,
        warmup: 3,
        threads: 2,
        serve: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().context("missing value");
        match k.as_str() {
            "--devices" => a.devices = v()?.parse()?,
            "--registers" => a.registers = v()?.parse()?,
            "--hz" => a.hz = v()?.parse()?,
            "--seconds" => a.seconds = v()?.parse()?,
            "--warmup" => a.warmup = v()?.parse()?,
            "--threads" => a.threads = v()?.parse()?,
            "--serve" => a.serve = true,
            other => bail!(
                "unknown argument {other}; use --devices N (≤ 247) --registers R (≤ 125) --hz H --seconds S --warmup S --threads T"
            ),
        }
    }
    if a.devices == 0 || a.devices > 247 || a.registers == 0 || a.registers > 125 {
        bail!("need 1 ≤ devices ≤ 247 and 1 ≤ registers ≤ 125");
    }
    Ok(a)
}

fn specs(a: &Args) -> Vec<SimDeviceSpec> {
    (1..=a.devices)
        .map(|unit| SimDeviceSpec {
            unit,
            kind: SimKind::Bulk(a.registers),
        })
        .collect()
}

/// Child mode: serve the simulated devices until stdin closes (the parent exited).
fn serve(a: &Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let h = sim::serve("127.0.0.1:0".parse()?, &specs(a)).await?;
        println!("LISTEN {}", h.addr());
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await?;
        h.shutdown().await;
        Ok(())
    })
}

/// utime + stime of this process, seconds (USER_HZ = 100 on Linux).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn point(i: u32) -> Point {
    Point {
        id: PointId(i),
        tag: format!("B{i}"),
        name: String::new(),
        enterprise: "BENCH".into(),
        device: None,
        hazard_installation: None,
        area: None,
        kind: PointKind::Other,
        gas: None,
        unit: Unit::Percent,
        range_lo: 0.0,
        range_hi: 1000.0,
        limits: AlarmLimits::default(),
        expected_interval: Duration::from_millis(100),
        location: None,
    }
}

fn main() -> Result<()> {
    let a = args()?;
    if a.serve {
        return serve(&a);
    }
    // The simulator in a child process, so its CPU does not count.
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "--serve",
            "--devices",
            &a.devices.to_string(),
            "--registers",
            &a.registers.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start simulator child")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("LISTEN ")
        .context("simulator did not report its address")?
        .parse()?;

    let interval_ms = (1000.0 / a.hz).round() as u64;
    let mut devices = Vec::new();
    let mut maps = Vec::new();
    let mut points = Vec::new();
    for unit in 1..=a.devices {
        let d: ModbusDeviceConfig = toml::from_str(&format!(
            "id = \"dev{unit}\"\nunit = {unit}\npoll_interval_ms = {interval_ms}\ntimeout_ms = 1000\ntransport = {{ kind = \"tcp\", host = \"{}\", port = {} }}",
            addr.ip(),
            addr.port()
        ))?;
        devices.push(d.validate().map_err(|e| anyhow::anyhow!("{e:?}"))?);
        for r in 0..a.registers {
            let m: ModbusPointConfig = toml::from_str(&format!(
                "device = \"dev{unit}\"\naddress = {r}\ndecimals = 1"
            ))?;
            maps.push(m.validate().map_err(|e| anyhow::anyhow!("{e:?}"))?);
            points.push(point(points.len() as u32));
        }
    }
    let plan = plan(
        &devices,
        maps.iter().zip(&points).map(|(m, p)| (p.id, m, p)),
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let reads_per_poll = plan.read_count() as f64 / f64::from(a.devices);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()?;
    let metrics = Arc::new(ModbusMetrics::new(&plan));
    let good = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (result, tasks) = rt.block_on(async {
        // Bench channel: sized for a few hundred polls; drops would show in the metrics.
        let (tx, mut rx) = mpsc::channel::<Vec<parkguard_rules::Reading>>(1024);
        let (g, b) = (Arc::clone(&good), Arc::clone(&bad));
        let consumer = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                for r in batch {
                    if r.quality.is_good() {
                        g.fetch_add(1, Ordering::Relaxed);
                    } else {
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let tasks = spawn(&plan, tx, Arc::clone(&metrics), stop.clone());
        tokio::time::sleep(Duration::from_secs(a.warmup)).await;

        let snap0 = metrics.snapshot();
        let (cpu0, t0, good0) = (cpu_seconds(), Instant::now(), good.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(a.seconds)).await;
        let (cpu1, t1, good1) = (cpu_seconds(), Instant::now(), good.load(Ordering::Relaxed));
        let snap1 = metrics.snapshot();
        (
            (snap0, snap1, cpu1 - cpu0, t1 - t0, good1 - good0),
            (tasks, consumer),
        )
    });
    stop.cancel();
    rt.block_on(async {
        for t in tasks.0 {
            let _ = t.await;
        }
        let _ = tasks.1.await;
    });
    drop(child.stdin.take());
    let _ = child.wait();

    let (s0, s1, cpu, wall, good_values) = result;
    let polls: u64 = s1.iter().zip(&s0).map(|(b, a)| b.polls - a.polls).sum();
    let skipped: u64 = s1
        .iter()
        .zip(&s0)
        .map(|(b, a)| b.polls_skipped - a.polls_skipped)
        .sum();
    let errors: u64 = s1
        .iter()
        .zip(&s0)
        .map(|(b, a)| {
            (b.timeouts + b.io_errors + b.protocol_errors + b.exceptions)
                - (a.timeouts + a.io_errors + a.protocol_errors + a.exceptions)
        })
        .sum();
    let dropped: u64 = s1.iter().map(|d| d.readings_dropped).sum();
    let mut hist = vec![0u64; LATENESS_BUCKETS_US.len() + 1];
    for (b, a) in s1.iter().zip(&s0) {
        for (i, h) in hist.iter_mut().enumerate() {
            *h += b.lateness[i] - a.lateness[i];
        }
    }
    let lat_mean: f64 =
        s1.iter().map(|d| d.latency_us_mean as f64).sum::<f64>() / s1.len().max(1) as f64;
    let secs = wall.as_secs_f64();
    let polls_per_s = polls as f64 / secs;
    let cpu_pct = cpu / secs * 100.0;
    println!(
        "modbus bench: {} devices x {} registers at {} Hz over TCP loopback ({} worker threads, {:.1} reads/poll), {:.0} s measured after {} s warm-up",
        a.devices, a.registers, a.hz, a.threads, reads_per_poll, secs, a.warmup
    );
    println!(
        "  polls/s          {polls_per_s:.1} (target {:.0})",
        f64::from(a.devices) * a.hz
    );
    println!("  values/s         {:.0} good", good_values as f64 / secs);
    println!(
        "  CPU              {cpu_pct:.1} % of one core ({:.1} µs CPU per poll)",
        cpu / polls.max(1) as f64 * 1e6
    );
    println!(
        "  RSS              {:.1} MiB now, {:.1} MiB peak",
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
    println!(
        "  poll-start jitter p50 ≤ {} µs, p99 ≤ {} µs (histogram bucket bounds), max {} µs",
        quantile(&hist, 0.5),
        quantile(&hist, 0.99),
        s1.iter().map(|d| d.lateness_us_max).max().unwrap_or(0)
    );
    println!("  request latency  mean {lat_mean:.0} µs");
    println!("  skipped polls {skipped}, errors {errors}, readings dropped {dropped}");
    Ok(())
}
