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
