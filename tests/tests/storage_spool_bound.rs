//! Spool bound reached: the stated policy (keep newest, drop the oldest segment, count
//! what the writer had not delivered, raise the system alarm flag) — then the writer
//! delivers exactly what is left to a real VictoriaMetrics. Also retention by age.

mod storage_common;

use parkguard::store::spool::ArchiveReader;
use parkguard_drivers::influx::schema;
use parkguard_tests::servers::victoria;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};
use storage_common::*;

const N: u32 = 20;
const SEGMENT: u64 = 4096;
const MAX: u64 = 4 * SEGMENT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_drops_oldest_counts_alarms_and_delivers_the_rest() {
    let vm = victoria::start().expect("start victoria-metrics");
    let base = victoria::url(&vm);
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("spool");
    let table = table(N);
    let mut spool = open_spool(&spool_dir, spool_settings(SEGMENT, MAX));
    // A writer is attached (its cursor is at the start) but InfluxDB is not reachable yet.
    drop(spool.writer_reader(PARK).expect("reader"));
    let stats = spool.stats();
    const TOTAL: u64 = 3000;
    for start in (0..TOTAL).step_by(50) {
        let batch: Vec<_> = (start..start + 50).map(|k| reading(&table, N, k)).collect();
        spool.append(&batch, &table).expect("append");
        assert!(
            stats.bytes_on_disk.load(Relaxed) <= MAX,
            "bound held: {} > {MAX}",
            stats.bytes_on_disk.load(Relaxed)
        );
    }
    let dropped = stats.readings_dropped_unsent.load(Relaxed);
    println!(
        "appended {TOTAL}, segments dropped {}, undelivered readings dropped {dropped}, on disk {} B",
        stats.segments_dropped_full.load(Relaxed),
        stats.bytes_on_disk.load(Relaxed)
    );
    assert!(stats.overflow_alarm(), "system alarm flag raised");
    assert!(stats.segments_dropped_full.load(Relaxed) > 0);
    assert!(dropped > 0 && dropped < TOTAL);
    // The archive keeps the newest readings: a contiguous tail ending at the last one.
    let kept: Vec<u64> = ArchiveReader::open(&spool_dir)
        .expect("archive")
        .map(|r| (r.expect("read").reading.source_time.millis() - T0_MS) as u64)
        .collect();
    assert_eq!(kept.len() as u64, TOTAL - dropped, "dropped = counted");
    assert_eq!(kept, (dropped..TOTAL).collect::<Vec<_>>());

    // InfluxDB back: the writer delivers exactly what is left.
    let writer = start_writer(&spool, influx_config(&base), &dir.path().join("dead.lp"));
    wait_for("delivery", Duration::from_secs(60), || {
        stats.readings_delivered.load(Relaxed) == TOTAL - dropped
    })
    .await;
    writer.stop().await;
    let name = format!("{}_{}", schema::READING, schema::field::VALUE);
    let series = victoria::export(&base, &format!("{{__name__=\"{name}\"}}"))
        .await
        .expect("export");
    let stored: BTreeSet<u64> = series
        .iter()
        .flat_map(|s| s.timestamps.iter().map(|t| (t - T0_MS) as u64))
        .collect();
    let samples: usize = series.iter().map(|s| s.timestamps.len()).sum();
    assert_eq!(samples as u64, TOTAL - dropped, "none twice");
    assert_eq!(stored, (dropped..TOTAL).collect::<BTreeSet<_>>());
    // The flag stays until cleared.
    assert!(stats.overflow_alarm());
    stats.clear_overflow_alarm();
    assert!(!stats.overflow_alarm());
}

#[test]
fn archive_mode_bound_and_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = table(N);
    let mut spool = open_spool(dir.path(), spool_settings(SEGMENT, MAX));
    let stats = spool.stats();
    for start in (0..3000u64).step_by(50) {
        let batch: Vec<_> = (start..start + 50).map(|k| reading(&table, N, k)).collect();
        spool.append(&batch, &table).expect("append");
    }
    // No writer: nothing is "undelivered", but the archive lost retention: alarm.
    assert!(stats.overflow_alarm());
    assert!(stats.segments_dropped_full.load(Relaxed) > 0);
    assert_eq!(stats.readings_dropped_unsent.load(Relaxed), 0);
    stats.clear_overflow_alarm();
    // Retention: 31 days later every sealed segment expires; the active one stays.
    let segments = stats.segments.load(Relaxed);
    let expired = spool.expire(SystemTime::now() + Duration::from_secs(31 * 86_400));
    assert_eq!(expired as u64, segments - 1);
    assert_eq!(stats.segments.load(Relaxed), 1);
    assert!(!stats.overflow_alarm(), "plain retention is no alarm");
    // Not yet 30 days: nothing expires.
    spool.rotate().expect("rotate");
    assert_eq!(
        spool.expire(SystemTime::now() + Duration::from_secs(29 * 86_400)),
        0
    );
}
