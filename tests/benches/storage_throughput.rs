//! Benchmark: spool + InfluxDB writer into a real VictoriaMetrics.
//!
//! 1. Live: a producer appends batches of 1,000 readings (fsync per append) while the
//!    writer forwards them; readings/s end to end, CPU of producer + writer.
//! 0. Writer capacity: the same into an in-process server that answers 204 at once
//!    (what spool + writer can do when the database keeps up).
//! 2. Backlog: `BENCH_BACKLOG` readings (default 10,000,000) spooled with InfluxDB away,
//!    then the writer alone drains them; readings/s and the writer thread's CPU.
//!
//! `cargo bench -p parkguard-tests --bench storage_throughput`
//! (`BENCH_LIVE`, `BENCH_BACKLOG`, `BENCH_POINTS`, `BENCH_BATCH` override the sizes;
//! `BENCH_CONCURRENCY` the writer's requests in flight, default 4 like `[influx]`;
//! `BENCH_GZIP=0` sends uncompressed bodies).

use parkguard::store::spool::{Spool, SpoolConfig};
use parkguard_drivers::influx::{InfluxConfig, InfluxWriter};
use parkguard_rules::{
    AlarmLimits, Point, PointId, PointKind, PointTable, Quality, Reading, Timestamp, Unit,
};
use parkguard_tests::servers::victoria;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) from a `/proc/.../stat` file.
fn cpu_secs(stat: &str) -> f64 {
    let s = std::fs::read_to_string(stat).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime [11], stime [12] (clock ticks, 100 Hz).
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn table(n: u32) -> PointTable {
    PointTable::new(
        (0..n)
            .map(|i| Point {
                id: PointId(i),
                tag: format!("GT-{i:05} 可燃"),
                name: format!("p{i}"),
                enterprise: format!("E{:03}", i % 120),
                device: None,
                hazard_installation: None,
                area: None,
                kind: PointKind::Combustible,
                gas: None,
                unit: Unit::PercentLel,
                range_lo: 0.0,
                range_hi: 100.0,
                limits: AlarmLimits::default(),
                expected_interval: Duration::from_secs(1),
                location: None,
            })
            .collect(),
    )
    .expect("table")
}

fn reading(n: u32, k: u64) -> Reading {
    let t = Timestamp::from_millis(1_704_067_200_000 + (k / u64::from(n)) as i64 * 1000);
    Reading {
        point: PointId((k % u64::from(n)) as u32),
        value: ((k % 10_000) as f64) / 100.0,
        unit: Unit::PercentLel,
        quality: Quality::Good,
        source_time: t,
        receive_time: t,
    }
}

struct Writer {
    cancel: CancellationToken,
    thread: std::thread::JoinHandle<f64>,
}

/// The writer on a current-thread runtime in a thread of its own (≤ 1 core by
/// construction); the thread returns its CPU seconds.
fn start_writer(spool: &Spool, base: &str, batch: usize) -> Writer {
    let mut cfg = InfluxConfig::new(base, "org", "bucket");
    cfg.batch_size = batch;
    cfg.batch_interval_ms = 100;
    cfg.concurrency = env("BENCH_CONCURRENCY", 4) as usize;
    cfg.gzip = Some(env("BENCH_GZIP", 1) != 0);
    let w = InfluxWriter::new(
        cfg.validate().expect("cfg"),
        std::env::temp_dir().join("pg-bench-dead.lp"),
    )
    .expect("writer");
    let reader = spool.writer_reader("bench-park").expect("reader");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(w.run(reader, c));
        cpu_secs("/proc/thread-self/stat")
    });
    Writer { cancel, thread }
}

fn wait_delivered(spool: &Spool, n: u64) {
    let stats = spool.stats();
    while stats.readings_delivered.load(Relaxed) < n {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let live = env("BENCH_LIVE", 2_000_000);
    let backlog = env("BENCH_BACKLOG", 10_000_000);
    let points = env("BENCH_POINTS", 20_000) as u32;
    let batch = env("BENCH_BATCH", 10_000) as usize;
    let table = table(points);
    let vm = victoria::start().expect("victoria-metrics");
    let base = victoria::url(&vm);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = SpoolConfig {
        max_bytes: 64 << 30,
        ..SpoolConfig::default()
    };
    println!(
        "storage bench: {points} points, writer batch {batch}, concurrency {}, gzip {}, spool fsync=always per 1000-reading append",
        env("BENCH_CONCURRENCY", 4),
        env("BENCH_GZIP", 1) != 0,
    );

    // 0. Writer capacity against a null server.
    {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/api/v2/write",
                    axum::routing::post(|_body: axum::body::Bytes| async {
                        axum::http::StatusCode::NO_CONTENT
                    }),
                );
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(l.local_addr().expect("addr")).expect("send");
                axum::serve(l, app).await.expect("serve");
            });
        });
        let addr = rx.recv().expect("null server address");
        let mut spool =
            Spool::open(&dir.path().join("null"), cfg.validate().expect("cfg")).expect("spool");
        let mut k = 0;
        let mut buf = Vec::with_capacity(10_000);
        while k < live {
            buf.clear();
            buf.extend((k..k + 10_000).map(|k| reading(points, k)));
            spool.append(&buf, &table).expect("append");
            k += 10_000;
        }
        let t0 = Instant::now();
        let writer = start_writer(&spool, &format!("http://{addr}"), batch);
        wait_delivered(&spool, live);
        let wall = t0.elapsed();
        writer.cancel.cancel();
        let wcpu = writer.thread.join().expect("writer thread");
        println!(
            "null:    {live} spooled readings read, encoded, gzipped and posted in {:.2} s = {:.0} readings/s; \
             writer thread CPU {:.2} s = {:.2} cores ({:.0} readings per CPU second)",
            wall.as_secs_f64(),
            live as f64 / wall.as_secs_f64(),
            wcpu,
            wcpu / wall.as_secs_f64(),
            live as f64 / wcpu.max(1e-9),
        );
    }

    // 1. Live.
    {
        let mut spool =
            Spool::open(&dir.path().join("live"), cfg.validate().expect("cfg")).expect("spool");
        let writer = start_writer(&spool, &base, batch);
        let cpu0 = cpu_secs("/proc/self/stat");
        let t0 = Instant::now();
        let mut k = 0;
        let mut buf = Vec::with_capacity(1000);
        while k < live {
            buf.clear();
            buf.extend((k..k + 1000).map(|k| reading(points, k)));
            spool.append(&buf, &table).expect("append");
            k += 1000;
        }
        let appended = t0.elapsed();
        wait_delivered(&spool, live);
        let wall = t0.elapsed();
        let cpu = cpu_secs("/proc/self/stat") - cpu0;
        writer.cancel.cancel();
        let wcpu = writer.thread.join().expect("writer thread");
        let s = spool.stats();
        println!(
            "live:    {live} readings in {:.2} s = {:.0} readings/s end to end (append alone {:.0}/s); \
             process CPU {:.2} s = {:.2} cores (writer thread {:.2} cores); \
             spool {:.1} B/reading written, {} fsyncs",
            wall.as_secs_f64(),
            live as f64 / wall.as_secs_f64(),
            live as f64 / appended.as_secs_f64(),
            cpu,
            cpu / wall.as_secs_f64(),
            wcpu / wall.as_secs_f64(),
            s.bytes_appended.load(Relaxed) as f64 / live as f64,
            s.fsyncs.load(Relaxed),
        );
    }

    // 2. Backlog drain.
    {
        let mut spool =
            Spool::open(&dir.path().join("backlog"), cfg.validate().expect("cfg")).expect("spool");
        let t0 = Instant::now();
        let mut k = 0;
        let mut buf = Vec::with_capacity(10_000);
        while k < backlog {
            buf.clear();
            buf.extend((k..k + 10_000).map(|k| reading(points, k)));
            spool.append(&buf, &table).expect("append");
            k += 10_000;
        }
        let fill = t0.elapsed();
        let bytes = spool.stats().bytes_on_disk.load(Relaxed);
        let t1 = Instant::now();
        let writer = start_writer(&spool, &base, batch);
        wait_delivered(&spool, backlog);
        let wall = t1.elapsed();
        writer.cancel.cancel();
        let wcpu = writer.thread.join().expect("writer thread");
        println!(
            "backlog: {backlog} readings ({:.0} MB spooled in {:.1} s) drained in {:.2} s = {:.0} readings/s; \
             writer thread CPU {:.2} s = {:.2} cores",
            bytes as f64 / 1e6,
            fill.as_secs_f64(),
            wall.as_secs_f64(),
            backlog as f64 / wall.as_secs_f64(),
            wcpu,
            wcpu / wall.as_secs_f64(),
        );
    }
    let vm_cpu = cpu_secs(&format!("/proc/{}/stat", vm.pid()));
    println!("victoria-metrics used {vm_cpu:.1} CPU s over the run (same 2-core machine)");
}
