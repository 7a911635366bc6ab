//! Outage: VictoriaMetrics stopped under load, restarted on the same data dir and port —
//! every reading arrives, none twice. The outage lasts `PARKGUARD_OUTAGE_SECS` seconds
//! (default 15; the 60 s: `PARKGUARD_OUTAGE_SECS=60`).

mod storage_common;

use parkguard_drivers::influx::schema;
use parkguard_tests::servers::victoria;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use storage_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_under_load_loses_nothing_and_duplicates_nothing() {
    let outage = Duration::from_secs(
        std::env::var("PARKGUARD_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15),
    );
    let data = tempfile::tempdir().expect("vm data dir");
    let port = parkguard_tests::free_port().expect("port");
    let mut vm = victoria::start_on(data.path(), port).expect("start victoria-metrics");
    let base = victoria::url(&vm);
    let dir = tempfile::tempdir().expect("tempdir");
    const N: u32 = 200;
    let table = Arc::new(table(N));
    let mut spool = open_spool(&dir.path().join("spool"), spool_settings(4 << 20, 1 << 30));
    let writer = start_writer(&spool, influx_config(&base), &dir.path().join("dead.lp"));
    let stats = spool.stats();

    // Load: 100 readings every 10 ms (10,000/s), fsync per append, from a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, produced, table) = (stop.clone(), produced.clone(), table.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Relaxed) {
                let batch: Vec<_> = (k..k + 100).map(|k| reading(&table, N, k)).collect();
                spool.append(&batch, &table).expect("append");
                k += 100;
                produced.store(k, Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            spool
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = stats.readings_delivered.load(Relaxed);
    assert!(before > 0, "writer delivers before the outage");
    vm.terminate(Duration::from_secs(20));
    drop(vm);
    println!("victoria-metrics stopped after {before} readings delivered; outage {outage:?}");
    tokio::time::sleep(outage).await;
    let during = stats.readings_delivered.load(Relaxed);
    let vm = victoria::start_on(data.path(), port).expect("restart victoria-metrics");
    println!(
        "restarted; {} readings produced, {} delivered, {} waiting",
        produced.load(Relaxed),
        during,
        produced.load(Relaxed) - during
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let _spool = producer.join().expect("producer");
    let total = produced.load(Relaxed);
    wait_for("backlog drained", Duration::from_secs(120), || {
        stats.readings_delivered.load(Relaxed) == total
    })
    .await;
    let ws = writer.stats.clone();
    writer.stop().await;
    assert!(
        ws.transient_errors.load(Relaxed) > 0,
        "the writer saw the outage"
    );
    assert_eq!(ws.lines_dead_lettered.load(Relaxed), 0);

    let name = format!("{}_{}", schema::READING, schema::field::VALUE);
    let series = victoria::export(&victoria::url(&vm), &format!("{{__name__=\"{name}\"}}"))
        .await
        .expect("export");
    let mut seen = HashSet::new();
    let mut dups = 0u64;
    for s in &series {
        let t = &s.labels[schema::tag::TAG];
        for (ts, v) in s.timestamps.iter().zip(&s.values) {
            let k = (ts - T0_MS) as u64;
            assert_eq!(
                *t,
                tag((k % u64::from(N)) as u32),
                "reading {k} in its series"
            );
            assert_eq!(v.to_bits(), value_of(k).to_bits(), "reading {k} value");
            if !seen.insert(k) {
                dups += 1;
            }
        }
    }
    let missing: Vec<u64> = (0..total).filter(|k| !seen.contains(k)).take(10).collect();
    println!(
        "{total} readings produced, {} stored, {dups} duplicates, {} transient errors",
        seen.len(),
        ws.transient_errors.load(Relaxed)
    );
    assert!(missing.is_empty(), "missing readings, e.g. {missing:?}");
    assert_eq!(dups, 0, "readings stored twice");
    assert_eq!(seen.len() as u64, total);
}
