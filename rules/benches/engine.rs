//! Engine throughput: 10,000 points with default GB/T 50493 rules, readings at random.
//!
//! `cargo bench -p parkguard-rules --bench engine`
//!
//! - `readings/normal`: random points, values in the normal band with noise and rare
//!   excursions (≈ 0.1 % of readings cross a limit) — the steady state of a park.
//! - `readings/uniform`: random points, values uniform over the whole range — a storm in
//!   which most readings change some alarm (events are allocated).
//! - `on_tick/10k`: one tick over 10,000 points with nothing due.
//! - `snapshot/10k`: the snapshot the engine task publishes every second.
//!
//! Engine memory per point is printed before the runs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parkguard_rules::defaults;
use parkguard_rules::engine::{Engine, EngineConfig, Event};
use parkguard_rules::{
    AlarmLimits, Gas, Point, PointId, PointKind, PointTable, Quality, Reading, Timestamp, Unit,
};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const N: usize = 10_000;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn point(i: usize) -> Point {
    let (kind, gas, unit, hi) = match i % 4 {
        0 => (
            PointKind::Combustible,
            Some(Gas::Ch4),
            Unit::PercentLel,
            100.0,
        ),
        1 => (PointKind::Toxic, Some(Gas::H2s), Unit::Ppm, 100.0),
        2 => (PointKind::Oxygen, Some(Gas::O2), Unit::PercentVol, 30.0),
        _ => (PointKind::Pressure, None, Unit::MPa, 4.0),
    };
    let deadband = defaults::deadband_fraction(kind) * hi;
    let limits = if kind.is_gas() {
        let s = defaults::gas_setpoints(kind, gas, unit, hi).expect("default setpoints exist");
        AlarmLimits {
            hh: s.level2,
            h: Some(s.level1),
            l: s.low,
            deadband,
            on_delay: defaults::on_delay(kind),
            off_delay: defaults::off_delay(kind),
            ..Default::default()
        }
    } else {
        AlarmLimits {
            hh: Some(3.5),
            h: Some(3.0),
            l: Some(0.5),
            ll: Some(0.2),
            deadband,
            on_delay: defaults::on_delay(kind),
            off_delay: defaults::off_delay(kind),
            ..Default::default()
        }
    };
    Point {
        id: PointId(i as u32),
        tag: format!("AT-{i:05}"),
        name: format!("detector {i}"),
        enterprise: format!("E{:02}", i / 500),
        device: Some(format!("GDS-{:04}", i / 4)),
        hazard_installation: None,
        area: Some(format!("U{}", i / 100)),
        kind,
        gas,
        unit,
        range_lo: 0.0,
        range_hi: hi,
        limits,
        expected_interval: Duration::from_secs(1),
        location: None,
    }
}

fn normal_value(p: &Point, rng: &mut Rng, excursion: bool) -> f64 {
    match p.kind {
        PointKind::Oxygen => {
            if excursion {
                18.0
            } else {
                20.9 + (rng.f() - 0.5) * 0.4
            }
        }
        PointKind::Pressure => {
            if excursion {
                3.2
            } else {
                1.5 + (rng.f() - 0.5) * 0.2
            }
        }
        _ => {
            if excursion {
                0.6 * p.range_hi
            } else {
                rng.f() * 0.05 * p.range_hi
            }
        }
    }
}

fn setup() -> (Engine, Arc<PointTable>) {
    let table = Arc::new(PointTable::new((0..N).map(point).collect()).expect("valid table"));
    let e = Engine::new(table.clone(), EngineConfig::default(), Vec::new());
    (e, table)
}

fn readings(table: &PointTable, count: usize, uniform: bool, seed: u64) -> Vec<Reading> {
    let mut rng = Rng(seed);
    let t0 = 1_767_225_600_000_000_000i64;
    (0..count)
        .map(|i| {
            let pi = (rng.next() % N as u64) as usize;
            let p = &table.points()[pi];
            let v = if uniform {
                p.range_lo + rng.f() * (p.range_hi - p.range_lo)
            } else {
                let exc = rng.next().is_multiple_of(1000);
                normal_value(p, &mut rng, exc)
            };
            // 10 µs apart: the engine's clock runs on receive times.
            let t = Timestamp(t0 + i as i64 * 10_000);
            Reading {
                point: PointId(pi as u32),
                value: v,
                unit: p.unit,
                quality: Quality::Good,
                source_time: t,
                receive_time: t,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (mut e, table) = setup();
    let (total, per) = e.memory_bytes();
    eprintln!(
        "engine memory: {total} bytes for {N} points = {per:.0} bytes/point \
         (PointRt + 13 alarm slots + side tables; the shared PointTable is not counted)"
    );
    const BATCH: usize = 200_000;
    let normal = readings(&table, BATCH, false, 42);
    let uniform = readings(&table, BATCH, true, 7);
    let mut out: Vec<Event> = Vec::with_capacity(1 << 16);
    // Warm up: every point seen once so first-reading work is not measured.
    e.on_readings(&normal, &mut out);
    out.clear();

    let mut g = c.benchmark_group("readings");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("normal", |b| {
        b.iter(|| {
            e.on_readings(black_box(&normal), &mut out);
            out.clear();
        })
    });
    g.bench_function("uniform", |b| {
        b.iter(|| {
            e.on_readings(black_box(&uniform), &mut out);
            out.clear();
        })
    });
    g.finish();

    // Tick: refresh every point so nothing is stale, then tick at the same instant.
    let (mut e, table) = setup();
    let fresh = readings(&table, N * 20, false, 3);
    e.on_readings(&fresh, &mut out);
    let now = fresh.last().expect("readings").receive_time;
    e.on_tick(now, &mut out);
    out.clear();
    c.bench_function("on_tick/10k", |b| {
        b.iter(|| {
            e.on_tick(black_box(now), &mut out);
            out.clear();
        })
    });
    c.bench_function("snapshot/10k", |b| b.iter(|| black_box(e.snapshot())));
    eprintln!("tick engine stats: {:?}", e.stats());
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
