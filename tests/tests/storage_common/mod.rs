//! Shared pieces of the storage tests: a park with nasty tags, deterministic readings,
//! a writer wired to a spool.
#![allow(dead_code)]

use parkguard::store::spool::{Spool, SpoolConfig, SpoolSettings};
use parkguard_drivers::influx::sink::InfluxStats;
use parkguard_drivers::influx::{InfluxConfig, InfluxWriter};
use parkguard_rules::{
    AlarmLimits, Point, PointId, PointKind, PointTable, Quality, Reading, Timestamp, Unit,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Park id, written as the `park` tag: nasty on purpose.
pub const PARK: &str = "化工园区 A,1=\"x\"\\";

/// Tag of point `i`: spaces, commas, equals, quotes, backslashes (also at the end, and
/// before a special character), Chinese.
pub fn tag(i: u32) -> String {
    match i % 5 {
        0 => format!("GT-{i} 可燃气体"),
        1 => format!("PT,{i}=a \"b\""),
        2 => format!("TT\\{i}\\"),
        3 => format!("LT\\,{i}\\ x=\\=y"),
        _ => format!("AT-{i}'单引号' 二氧化硫"),
    }
}

/// Enterprise of point `i`.
pub fn enterprise(i: u32) -> String {
    format!("企业 {},有限=公司", i % 7)
}

/// `n` points with nasty tags.
pub fn table(n: u32) -> PointTable {
    let kinds = [
        (PointKind::Combustible, Unit::PercentLel),
        (PointKind::Toxic, Unit::Ppm),
        (PointKind::Pressure, Unit::MPa),
        (PointKind::Temperature, Unit::Celsius),
    ];
    let pts = (0..n)
        .map(|i| {
            let (kind, unit) = kinds[i as usize % kinds.len()];
            Point {
                id: PointId(i),
                tag: tag(i),
                name: format!("point {i}"),
                enterprise: enterprise(i),
                device: None,
                hazard_installation: None,
                area: None,
                kind,
                gas: None,
                unit,
                range_lo: 0.0,
                range_hi: 100.0,
                limits: AlarmLimits::default(),
                expected_interval: Duration::from_secs(1),
                location: None,
            }
        })
        .collect();
    PointTable::new(pts).expect("valid table")
}

/// Base time of the test data: 2024-01-01T00:00:00Z.
pub const T0_MS: i64 = 1_704_067_200_000;

/// Reading number `k` (global sequence) of a park with `n` points: point `k % n`, time
/// `T0 + k` ms (unique per series), value with three decimals (exact in VictoriaMetrics),
/// every 13th reading comm-lost.
pub fn reading(table: &PointTable, n: u32, k: u64) -> Reading {
    let p = (k % u64::from(n)) as u32;
    let t = Timestamp::from_millis(T0_MS + k as i64);
    Reading {
        point: PointId(p),
        value: value_of(k),
        unit: table.get(PointId(p)).expect("point").unit,
        quality: if k.is_multiple_of(13) {
            Quality::CommLost
        } else {
            Quality::Good
        },
        source_time: t,
        receive_time: t + Duration::from_millis(3),
    }
}

/// The value of reading `k`: the double nearest a three-decimal number (VictoriaMetrics
/// stores values as decimal mantissa and exponent, so it keeps these exactly; arbitrary
/// doubles can come back one ulp off).
pub fn value_of(k: u64) -> f64 {
    ((k % 200_000) as f64 - 50_000.0) / 1000.0
}

/// Spool settings for tests: small segments so rotation happens, fsync per append.
pub fn spool_settings(segment_bytes: u64, max_bytes: u64) -> SpoolSettings {
    SpoolConfig {
        segment_bytes,
        max_bytes,
        ..SpoolConfig::default()
    }
    .validate()
    .expect("valid spool config")
}

/// Open a spool in `dir`.
pub fn open_spool(dir: &Path, settings: SpoolSettings) -> Spool {
    Spool::open(dir, settings).expect("open spool")
}

/// Writer config for `base` with quick retries.
pub fn influx_config(base: &str) -> InfluxConfig {
    let mut c = InfluxConfig::new(base, "park-org", "readings");
    c.batch_interval_ms = 50;
    c.retry_initial_ms = 20;
    c.retry_max_ms = 500;
    c.timeout_ms = 5000;
    // Compressed, although the database is local (the default would not): these tests
    // prove the gzip path against the fake and the real VictoriaMetrics; the daemon's
    // end-to-end tests use the default and so the plain one.
    c.gzip = Some(true);
    c
}

/// A running writer.
pub struct RunningWriter {
    pub cancel: CancellationToken,
    pub stats: Arc<InfluxStats>,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningWriter {
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Start a writer forwarding `spool` to the server in `cfg`.
pub fn start_writer(spool: &Spool, cfg: InfluxConfig, dead_letter: &Path) -> RunningWriter {
    let settings = cfg.validate().expect("valid influx config");
    let writer = InfluxWriter::new(settings, dead_letter.to_path_buf()).expect("writer");
    let stats = writer.stats();
    let reader = spool.writer_reader(PARK).expect("reader");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(writer.run(reader, cancel.clone()));
    RunningWriter {
        cancel,
        stats,
        task,
    }
}

/// Poll `cond` every 20 ms until true; panic with `what` after `limit` (a guard against
/// hanging, not a performance assertion).
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
