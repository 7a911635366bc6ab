//! Unit tests of the engine's internals; behaviour is tested through the public API in
//! `rules/tests/`.

use super::*;

#[test]
fn limit_step_table() {
    use Phase::*;
    const S: i64 = 1_000_000_000;
    // (phase, since, value, high, t, on, off) → (phase, since); limit 25, deadband 2.
    let rows = [
        (Inactive, NEVER, 24.9, true, 0, 0, 0, (Inactive, NEVER)),
        (Inactive, NEVER, 25.0, true, 0, 0, 0, (Active, 0)),
        (Inactive, NEVER, 25.0, true, 0, 2 * S, 0, (Pending, 0)),
        (Pending, 0, 26.0, true, S, 2 * S, 0, (Pending, 0)),
        (Pending, 0, 26.0, true, 2 * S, 2 * S, 0, (Active, 2 * S)),
        (Pending, 0, 24.0, true, S, 2 * S, 0, (Inactive, 0)),
        (Active, 0, 23.0, true, S, 0, 0, (Active, 0)),
        (Active, 0, 22.9, true, S, 0, 0, (Inactive, S)),
        (Active, 0, 22.9, true, S, 0, 5 * S, (Clearing, S)),
        (Clearing, S, 22.0, true, 5 * S, 0, 5 * S, (Clearing, S)),
        (Clearing, S, 22.0, true, 6 * S, 0, 5 * S, (Inactive, 6 * S)),
        (Clearing, S, 23.5, true, 3 * S, 0, 5 * S, (Active, S)),
        // Low limit 25: trips at ≤ 25, clears above 27.
        (Inactive, NEVER, 25.0, false, 0, 0, 0, (Active, 0)),
        (Active, 0, 26.9, false, S, 0, 0, (Active, 0)),
        (Active, 0, 27.1, false, S, 0, 0, (Inactive, S)),
    ];
    for (ph, since, v, high, t, on, off, want) in rows {
        assert_eq!(
            limit_step(ph, since, v, 25.0, 2.0, high, t, on, off),
            want,
            "{ph:?} since {since} v {v} high {high} t {t}"
        );
    }
    // A removed limit (NaN) is inactive whatever the value.
    assert_eq!(
        limit_step(Active, 0, 99.0, f64::NAN, 2.0, true, S, 0, 0).0,
        Inactive
    );
}

#[test]
fn hot_fields_share_the_first_cache_line() {
    let p = std::mem::offset_of!(PointRt, lim);
    assert_eq!(p + 32, 64, "lim ends the first line");
    assert_eq!(std::mem::offset_of!(PointRt, last_value), 64);
    assert_eq!(std::mem::align_of::<PointRt>(), 64);
}

#[test]
fn memory_per_point_is_bounded() {
    // ≤ 1 KiB per point (issue 5); the figure is reported by the benchmark.
    assert!(
        std::mem::size_of::<PointRt>() <= 256,
        "{}",
        std::mem::size_of::<PointRt>()
    );
    assert!(
        std::mem::size_of::<Slot>() <= 40,
        "{}",
        std::mem::size_of::<Slot>()
    );
    assert!(std::mem::size_of::<PointRt>() + NC * std::mem::size_of::<Slot>() <= 1024);
}

#[test]
fn roc_window_tracks_the_minimum() {
    let mut r = RocRt::new(&crate::model::RateOfChange {
        rise_per_min: 10.0,
        window: Duration::from_secs(80),
    });
    const S: i64 = 1_000_000_000;
    assert_eq!(r.update(5.0, 0), 0.0);
    assert_eq!(r.update(3.0, S), 0.0);
    assert_eq!(r.update(8.0, 40 * S), 5.0);
    // 3.0 was seen at 1 s; 90 s later it is out of the window (80 s + one 10 s bucket).
    assert_eq!(r.update(9.0, 91 * S), 1.0);
}

/// A methane point in %LEL with level-1/2 limits 25 / 50 and the given expected interval.
fn methane(i: u32, expected_interval_s: u64) -> Point {
    Point {
        id: PointId(i),
        tag: format!("GT-{i}"),
        name: "methane".into(),
        enterprise: "E1".into(),
        device: None,
        hazard_installation: None,
        area: None,
        kind: PointKind::Combustible,
        gas: Some(crate::Gas::Ch4),
        unit: Unit::PercentLel,
        range_lo: 0.0,
        range_hi: 100.0,
        limits: AlarmLimits {
            h: Some(25.0),
            hh: Some(50.0),
            deadband: 2.0,
            ..Default::default()
        },
        expected_interval: Duration::from_secs(expected_interval_s),
        location: None,
    }
}

/// A reading of a [`methane`] point at `s` seconds.
fn lel(i: u32, v: f64, quality: Quality, s: i64) -> Reading {
    Reading {
        point: PointId(i),
        value: v,
        unit: Unit::PercentLel,
        quality,
        source_time: Timestamp(s * 1_000_000_000),
        receive_time: Timestamp(s * 1_000_000_000),
    }
}

#[test]
fn limits_batch_is_all_or_nothing() {
    let point = |i: u32| methane(i, 3600);
    let table = Arc::new(PointTable::new(vec![point(0), point(1)]).expect("valid table"));
    let mut e = Engine::new(table, EngineConfig::default(), Vec::new());
    let at = |h: f64| AlarmLimits {
        h: Some(h),
        hh: Some(50.0),
        deadband: 2.0,
        ..Default::default()
    };
    // The second entry is inconsistent (h above hh), the third names no point.
    let errs = e
        .replace_limits_batch(&[
            (PointId(0), at(40.0)),
            (PointId(1), at(60.0)),
            (PointId(9), at(40.0)),
        ])
        .expect_err("refused");
    let fields: Vec<&str> = errs.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["points.GT-1.h", "points.#9"], "{errs:?}");
    let twice = e
        .replace_limits_batch(&[(PointId(0), at(40.0)), (PointId(0), at(30.0))])
        .expect_err("refused");
    assert_eq!(twice[0].field, "points.GT-0");
    assert!(e.check_limits(PointId(1), &at(40.0)).is_ok());
    let reading = |i: u32, v: f64, s: i64| lel(i, v, Quality::Good, s);
    let raised = |out: &[Event]| -> Vec<String> {
        let mut v: Vec<String> = out
            .iter()
            .filter_map(|ev| match ev {
                Event::Alarm(a) if a.kind == crate::alarm::EventKind::Activate => {
                    Some(a.alarm.clone())
                }
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    // Nothing changed: 30 %LEL is above the configured 25 on both points.
    let mut out = Vec::new();
    e.on_readings(&[reading(0, 30.0, 1), reading(1, 30.0, 1)], &mut out);
    assert_eq!(raised(&out), ["GT-0:H", "GT-1:H"]);
    // A valid batch applies to both: 35 is below 40 everywhere, both return.
    e.replace_limits_batch(&[(PointId(0), at(40.0)), (PointId(1), at(40.0))])
        .expect("valid batch");
    out.clear();
    e.on_readings(&[reading(0, 35.0, 2), reading(1, 35.0, 2)], &mut out);
    let returned = out
        .iter()
        .filter(|ev| matches!(ev, Event::Alarm(a) if a.kind == crate::alarm::EventKind::Return))
        .count();
    assert_eq!(returned, 2, "{out:?}");
}

/// A snapshot refreshed in place ([`Engine::snapshot_into`]) is the snapshot a fresh call
/// gives, through readings, bad quality, staleness and alarms; one of another table is
/// rebuilt, not patched.
#[test]
fn a_snapshot_refreshed_in_place_equals_a_fresh_one() {
    let table = |n: u32| {
        Arc::new(
            PointTable::new((0..n).map(|i| methane(i, 10 + u64::from(i))).collect())
                .expect("valid table"),
        )
    };
    let reading = lel;
    let mut e = Engine::new(table(4), EngineConfig::default(), Vec::new());
    let mut out = Vec::new();
    let mut kept = e.snapshot();
    let steps: [&[Reading]; 3] = [
        &[
            reading(0, 30.0, Quality::Good, 1),
            reading(1, 5.0, Quality::Good, 1),
        ],
        &[
            reading(1, 7.0, Quality::Fault, 2),
            reading(2, 60.0, Quality::Good, 2),
        ],
        &[reading(0, 3.0, Quality::Good, 3)],
    ];
    for (k, rs) in steps.iter().enumerate() {
        e.on_readings(rs, &mut out);
        e.snapshot_into(&mut kept);
        assert_eq!(kept, e.snapshot(), "after step {k}");
    }
    // Long past every point's expected interval: stale.
    e.on_tick(Timestamp(100_000_000_000), &mut out);
    e.snapshot_into(&mut kept);
    let fresh = e.snapshot();
    assert_eq!(kept, fresh);
    assert_eq!(fresh.points[1].quality, Some(Quality::Stale));
    assert!(!fresh.alarms.is_empty());
    // A snapshot of another engine's (smaller) table is rebuilt.
    let mut other = Engine::new(table(2), EngineConfig::default(), Vec::new()).snapshot();
    e.snapshot_into(&mut other);
    assert_eq!(other, e.snapshot());
    assert_eq!(other.points.len(), 4);
}
