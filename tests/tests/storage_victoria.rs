//! Spool → writer → real VictoriaMetrics (`/api/v2/write`): 100,000 readings written and
//! read back exactly — values, every tag (spaces, commas, equals, quotes, backslashes,
//! Chinese) and timestamps — none missing, none twice.

mod storage_common;

use parkguard_drivers::influx::schema;
use parkguard_tests::servers::victoria;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use storage_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_readings_round_trip_exactly() {
    let vm = victoria::start().expect("start victoria-metrics");
    let base = victoria::url(&vm);
    let dir = tempfile::tempdir().expect("tempdir");
    const N: u32 = 500;
    const TOTAL: u64 = 100_000;
    let table = table(N);
    let mut spool = open_spool(&dir.path().join("spool"), spool_settings(1 << 20, 1 << 30));
    let writer = start_writer(&spool, influx_config(&base), &dir.path().join("dead.lp"));
    let stats = spool.stats();
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<_> = chunk.iter().map(|&k| reading(&table, N, k)).collect();
        spool.append(&batch, &table).expect("append");
    }
    wait_for("all readings delivered", Duration::from_secs(120), || {
        stats.readings_delivered.load(Relaxed) == TOTAL
    })
    .await;
    let wstats = writer.stats.clone();
    writer.stop().await;
    assert_eq!(wstats.lines_written.load(Relaxed), TOTAL);
    assert_eq!(wstats.lines_dead_lettered.load(Relaxed), 0);

    // Expected, per tag: (timestamp ms → (value, quality)).
    let mut want: HashMap<String, BTreeMap<i64, (f64, f64)>> = HashMap::new();
    for k in 0..TOTAL {
        let r = reading(&table, N, k);
        want.entry(tag(r.point.0)).or_default().insert(
            r.source_time.millis(),
            (r.value, f64::from(r.quality.code())),
        );
    }
    let value_name = format!("{}_{}", schema::READING, schema::field::VALUE);
    let quality_name = format!("{}_{}", schema::READING, schema::field::QUALITY);
    let series = victoria::export(&base, &format!("{{__name__=~\"{}_.*\"}}", schema::READING))
        .await
        .expect("export");
    let mut got: HashMap<String, BTreeMap<i64, (f64, f64)>> = HashMap::new();
    let mut samples = 0usize;
    for s in &series {
        let t = s.labels.get(schema::tag::TAG).expect("tag label").clone();
        let id = table
            .id(&t)
            .unwrap_or_else(|| panic!("unknown tag read back: {t:?}"));
        let p = table.get(id).expect("point");
        assert_eq!(s.labels[schema::tag::PARK], PARK);
        assert_eq!(s.labels[schema::tag::ENTERPRISE], p.enterprise);
        assert_eq!(s.labels[schema::tag::KIND], p.kind.as_str());
        assert_eq!(s.labels[schema::tag::UNIT], p.unit.symbol());
        assert_eq!(s.labels.len(), 6, "labels: {:?}", s.labels);
        let name = &s.labels["__name__"];
        let m = got.entry(t).or_default();
        for (ts, v) in s.timestamps.iter().zip(&s.values) {
            samples += 1;
            let e = m.entry(*ts).or_insert((f64::NAN, f64::NAN));
            let slot = if *name == value_name {
                &mut e.0
            } else if *name == quality_name {
                &mut e.1
            } else {
                panic!("unexpected metric {name}")
            };
            assert!(slot.is_nan(), "sample {name} {ts} stored twice");
            *slot = *v;
        }
    }
    assert_eq!(got.len(), N as usize, "every point's series");
    assert_eq!(
        samples as u64,
        2 * TOTAL,
        "value + quality per reading, none twice"
    );
    for (t, w) in &want {
        let g = &got[t];
        assert_eq!(g.len(), w.len(), "{t}: sample count");
        for (ts, (v, q)) in w {
            let (gv, gq) = g.get(ts).unwrap_or_else(|| panic!("{t}: missing {ts}"));
            assert_eq!(gv.to_bits(), v.to_bits(), "{t} @ {ts}: value");
            assert_eq!(gq, q, "{t} @ {ts}: quality");
        }
    }
    println!(
        "read back {samples} samples of {} series; tags e.g. {:?}",
        series.len(),
        [tag(0), tag(1), tag(2), tag(3), tag(4)]
    );
}
