//! Spool → writer → real VictoriaMetrics (`/api/v2/write`): 100,000 readings written and
//! read back exactly — values, every tag (spaces, commas, equals, quotes, backslashes,
//! Chinese) and timestamps — none missing, none twice.

mod storage_common;

use parkguard_drivers::influx::encode::{self, EventPoint, LineBatch};
use parkguard_drivers::influx::sink::{LineSource, SourceError};
use parkguard_drivers::influx::{InfluxWriter, schema};
use parkguard_tests::servers::victoria;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use storage_common::*;
use tokio_util::sync::CancellationToken;

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

/// A [`LineSource`] over a fixed list of lines (what an event outbox would be).
struct VecSource {
    lines: Vec<Vec<u8>>,
    next: usize,
    committed: Arc<AtomicUsize>,
}

impl LineSource for VecSource {
    fn fill(&mut self, batch: &mut LineBatch, max_lines: usize) -> Result<usize, SourceError> {
        let end = (self.next + max_lines).min(self.lines.len());
        for l in &self.lines[self.next..end] {
            batch.push_line(l);
        }
        let n = end - self.next;
        self.next = end;
        Ok(n)
    }
    fn commit(&mut self) -> Result<(), SourceError> {
        self.committed.store(self.next, Relaxed);
        Ok(())
    }
    async fn wait(&mut self, timeout: Duration) {
        tokio::time::sleep(timeout.min(Duration::from_millis(20))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_events_and_warnings_reach_victoria() {
    let vm = victoria::start().expect("start victoria-metrics");
    let base = victoria::url(&vm);
    let mut lines = Vec::new();
    for (id, measurement, grade) in [
        (1u64, schema::ALARM_EVENT, 2i64),
        (2, schema::ALARM_EVENT, 1),
        (3, schema::WARNING, 3),
    ] {
        let mut out = Vec::new();
        encode::event_line(
            &mut out,
            PARK,
            measurement,
            &EventPoint {
                id,
                time_ns: (T0_MS + id as i64) * 1_000_000,
                kind: "alarm",
                alarm_id: Some("GT-0 可燃气体:HH"),
                tag: Some(&tag(0)),
                enterprise: Some(&enterprise(0)),
                drill: None,
                state: "unack",
                grade: Some(grade),
                trigger_value: Some(52.5),
                message: Some("可燃气体二级报警, \"立即\" 处置"),
            },
        );
        lines.push(out);
    }
    let committed = Arc::new(AtomicUsize::new(0));
    let src = VecSource {
        lines,
        next: 0,
        committed: committed.clone(),
    };
    let w = InfluxWriter::new(
        influx_config(&base).validate().expect("cfg"),
        std::env::temp_dir().join("unused-dead-letter.lp"),
    )
    .expect("writer");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(w.run(src, cancel.clone()));
    wait_for("events delivered", Duration::from_secs(20), || {
        committed.load(Relaxed) == 3
    })
    .await;
    cancel.cancel();
    task.await.expect("writer task");
    let ids = victoria::export(
        &base,
        &format!(
            "{{__name__=~\"({}|{})_{}\"}}",
            schema::ALARM_EVENT,
            schema::WARNING,
            schema::field::EVENT_ID
        ),
    )
    .await
    .expect("export");
    let mut got: Vec<(String, i64, f64)> = ids
        .iter()
        .flat_map(|s| {
            assert_eq!(s.labels[schema::tag::ALARM], "GT-0 可燃气体:HH");
            assert_eq!(s.labels[schema::tag::TAG], tag(0));
            assert_eq!(s.labels[schema::tag::ENTERPRISE], enterprise(0));
            assert_eq!(s.labels[schema::tag::PARK], PARK);
            assert!(!s.labels.contains_key(schema::tag::DRILL));
            let name = s.labels["__name__"].clone();
            s.timestamps
                .iter()
                .zip(&s.values)
                .map(move |(t, v)| (name.clone(), *t, *v))
        })
        .collect();
    got.sort_by_key(|g| g.1);
    assert_eq!(
        got,
        [
            ("alarm_event_event_id".to_owned(), T0_MS + 1, 1.0),
            ("alarm_event_event_id".to_owned(), T0_MS + 2, 2.0),
            ("warning_event_id".to_owned(), T0_MS + 3, 3.0),
        ]
    );
    let grades = victoria::export(&base, "{__name__=~\".*_grade\"}")
        .await
        .expect("export");
    let mut g: Vec<f64> = grades.iter().flat_map(|s| s.values.clone()).collect();
    g.sort_by(f64::total_cmp);
    assert_eq!(g, [1.0, 2.0, 3.0]);
}
