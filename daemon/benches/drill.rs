//! Replay and backtest throughput (README, "Drills and backtests").
//!
//! `cargo bench -p parkguard --bench drill` — a day of the demo park at 1 Hz (every point,
//! one reading a second, with excursions past the limits), written to a real spool archive
//! and then:
//! 1. read back from the archive (`drill::archive::read_archive`),
//! 2. replayed as a drill at `max` speed through `drill::live::Drills` (the same task a
//!    running daemon uses; events kept in memory, no journal),
//! 3. backtested: current and candidate limits (every `h` raised 20 %) over the same day
//!    (`drill::backtest::backtest`, two engine runs),
//! 4. evaluated by the bare engine (`on_readings` + a 1 s `on_tick`), the ceiling.
//!
//! Targets (issue #9): replay/backtest ≥ 1,000,000 readings/s; a day of the demo park
//! backtested in < 3 min.

use parkguard::drill::archive::{ArchiveFilter, read_archive};
use parkguard::drill::backtest::backtest;
use parkguard::drill::live::{DrillParts, DrillState, Drills, ReplaySpec, StartRequest};
use parkguard::drill::replay::ReplayStats;
use parkguard::store::spool::{FsyncPolicy, Spool, SpoolConfig};
use parkguard_rules::engine::Engine;
use parkguard_rules::{Quality, Reading, Timestamp};
use std::time::{Duration, Instant};

const DAY: i64 = 86_400;

fn noise(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn main() -> anyhow::Result<()> {
    let cfg = parkguard::config::load_str("demo.toml", parkguard::demo::DEMO_CONFIG)
        .map_err(|e| anyhow::anyhow!("demo config: {e:?}"))?;
    let table = cfg.table.clone();
    let points = table.points().to_vec();
    let t0 = parkguard::engine_task::system_now().nanos() / 1_000_000_000 - DAY - 60;

    // A day at 1 Hz: a slow wave per point across its range; every ~2 h a 10-minute
    // excursion past its highest limit.
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("spool");
    let settings = SpoolConfig {
        fsync: FsyncPolicy::Never,
        ..SpoolConfig::default()
    }
    .validate()
    .map_err(|e| anyhow::anyhow!("spool config: {e:?}"))?;
    let mut spool = Spool::open(&spool_dir, settings)?;
    let mut total = 0u64;
    let mut batch = Vec::with_capacity(points.len());
    let gen_start = Instant::now();
    for s in 0..DAY {
        batch.clear();
        let t = Timestamp::from_secs(t0 + s);
        for (i, p) in points.iter().enumerate() {
            let (lo, hi) = (p.range_lo, p.range_hi);
            let span = hi - lo;
            let top = [p.limits.hh, p.limits.h]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or(hi);
            let phase = (s + 600 * i as i64) % 7200;
            let base = lo + span * (0.05 + 0.03 * ((s as f64) / 900.0 + i as f64).sin());
            let v = if phase < 600 { top + 0.05 * span } else { base };
            let v = v + 0.005 * span * (noise(s as u64 * 64 + i as u64) - 0.5);
            batch.push(Reading {
                point: p.id,
                value: v,
                unit: p.unit,
                quality: Quality::Good,
                source_time: t,
                receive_time: t,
            });
        }
        total += batch.len() as u64;
        spool.append(&batch, &table)?;
    }
    spool.sync()?;
    drop(spool);
    println!(
        "data: {} points × {DAY} s = {total} readings written to the archive in {:.1} s",
        points.len(),
        gen_start.elapsed().as_secs_f64()
    );

    // 1. Archive read.
    let t = Instant::now();
    let mut stats = ReplayStats::default();
    let readings = read_archive(&spool_dir, &table, &ArchiveFilter::default(), &mut stats)
        .map_err(anyhow::Error::msg)?;
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(readings.len() as u64, total);
    println!(
        "archive read:        {total} readings in {read_s:.2} s = {:.0} readings/s",
        total as f64 / read_s
    );

    // 4. Bare engine (ceiling).
    let t = Instant::now();
    let mut engine = Engine::new(table.clone(), cfg.engine.clone(), cfg.vote_groups.clone());
    let mut out = Vec::new();
    let mut events = 0usize;
    for chunk in readings.chunks(points.len()) {
        engine.on_readings(chunk, &mut out);
        engine.on_tick(chunk[0].receive_time, &mut out);
        events += out.len();
        out.clear();
    }
    let eng_s = t.elapsed().as_secs_f64();
    println!(
        "engine only:         {total} readings in {eng_s:.2} s = {:.0} readings/s ({events} events)",
        total as f64 / eng_s
    );

    // 2. Drill replay at max speed through the daemon's drill task.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (replay_s, replayed) = rt.block_on(async {
        let drills = Drills::new(DrillParts {
            table: table.clone(),
            engine: cfg.engine.clone(),
            vote_groups: cfg.vote_groups.clone(),
            journal: None,
            data_dir: dir.path().to_path_buf(),
            spool_dir: spool_dir.clone(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        });
        let t = Instant::now();
        drills
            .start(
                StartRequest {
                    id: Some("bench".into()),
                    scenario: None,
                    replay: Some(ReplaySpec {
                        from: None,
                        to: None,
                        points: Vec::new(),
                        enterprises: Vec::new(),
                        file: None,
                    }),
                    speed: Some("max".into()),
                },
                "bench",
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        loop {
            let st = drills.get("bench").map_err(|e| anyhow::anyhow!("{e}"))?;
            if st.state == DrillState::Finished {
                return anyhow::Ok((t.elapsed().as_secs_f64(), st.readings));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })?;
    assert_eq!(replayed, total);
    println!(
        "drill replay (max):  {total} readings in {replay_s:.2} s = {:.0} readings/s (archive read included)",
        total as f64 / replay_s
    );

    // 3. Backtest: current vs candidate (every h raised 20 %).
    let candidate: Vec<_> = points
        .iter()
        .filter_map(|p| {
            let mut l = p.limits.clone();
            l.h = Some(l.h? * 1.2);
            if let (Some(h), Some(hh)) = (l.h, l.hh)
                && h >= hh
            {
                l.h = Some(hh * 0.99);
            }
            Some((p.id, l))
        })
        .collect();
    let t = Instant::now();
    let r = backtest(
        table.clone(),
        cfg.engine.clone(),
        cfg.vote_groups.clone(),
        &readings,
        &candidate,
    )
    .map_err(anyhow::Error::msg)?;
    let bt_s = t.elapsed().as_secs_f64();
    println!(
        "backtest (2 runs):   a day of the demo park ({total} readings) in {bt_s:.2} s = {:.0} readings/s per run; alarms {} → {}",
        2.0 * total as f64 / bt_s,
        r.current.alarms,
        r.candidate.alarms
    );
    let day_s = read_s + bt_s;
    println!("a day of the demo park backtested from the archive: {day_s:.1} s (target < 180 s)");
    Ok(())
}
