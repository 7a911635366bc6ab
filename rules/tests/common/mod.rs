//! Builders shared by the engine's integration tests.
#![allow(dead_code)]

use parkguard_rules::alarm::{AlarmEvent, AlarmState, EventKind};
use parkguard_rules::engine::{Engine, EngineConfig, Event, VoteGroup};
use parkguard_rules::{
    AlarmLimits, Gas, Point, PointId, PointKind, PointTable, Quality, Reading, Timestamp, Unit,
};
use std::sync::Arc;
use std::time::Duration;

/// Base time of every test: 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600;

pub fn at(secs: f64) -> Timestamp {
    Timestamp(T0 * 1_000_000_000 + (secs * 1e9).round() as i64)
}

pub fn secs(t: Timestamp) -> f64 {
    (t.0 - T0 * 1_000_000_000) as f64 / 1e9
}

/// Combustible CH4 detector in %LEL, 0–100, level-1 25, level-2 50, deadband 2, on-delay
/// `on_delay_s`, 1 s interval.
pub fn gas(tag: &str, on_delay_s: u64) -> Point {
    Point {
        id: PointId(0),
        tag: tag.into(),
        name: tag.into(),
        enterprise: "E1".into(),
        device: None,
        hazard_installation: None,
        area: Some("U1".into()),
        kind: PointKind::Combustible,
        gas: Some(Gas::Ch4),
        unit: Unit::PercentLel,
        range_lo: 0.0,
        range_hi: 100.0,
        limits: AlarmLimits {
            hh: Some(50.0),
            h: Some(25.0),
            deadband: 2.0,
            on_delay: Duration::from_secs(on_delay_s),
            ..Default::default()
        },
        expected_interval: Duration::from_secs(1),
        location: None,
    }
}

pub fn with(mut p: Point, f: impl FnOnce(&mut Point)) -> Point {
    f(&mut p);
    p
}

/// Table from points (ids assigned in order).
pub fn table(points: Vec<Point>) -> Arc<PointTable> {
    let pts = points
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.id = PointId(i as u32);
            p
        })
        .collect();
    Arc::new(PointTable::new(pts).expect("test table is valid"))
}

pub fn engine(points: Vec<Point>) -> Engine {
    Engine::new(table(points), EngineConfig::default(), Vec::new())
}

pub fn engine_with(points: Vec<Point>, cfg: EngineConfig, groups: Vec<VoteGroup>) -> Engine {
    Engine::new(table(points), cfg, groups)
}

pub fn reading(point: u32, value: f64, t: f64, quality: Quality) -> Reading {
    Reading {
        point: PointId(point),
        value,
        unit: Unit::PercentLel,
        quality,
        source_time: at(t),
        receive_time: at(t),
    }
}

pub fn good(point: u32, value: f64, t: f64) -> Reading {
    reading(point, value, t, Quality::Good)
}

pub fn alarms(events: &[Event]) -> Vec<&AlarmEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Alarm(a) => Some(a),
            Event::Warning(_) => None,
        })
        .collect()
}

/// (kind, from, to) of the events of one alarm.
pub fn path(events: &[Event], alarm: &str) -> Vec<(EventKind, AlarmState, AlarmState)> {
    alarms(events)
        .into_iter()
        .filter(|a| a.alarm == alarm)
        .map(|a| (a.kind, a.from, a.to))
        .collect()
}

/// Annunciated alarm ids, in order.
pub fn annunciated(events: &[Event]) -> Vec<String> {
    alarms(events)
        .into_iter()
        .filter(|a| a.annunciate)
        .map(|a| a.alarm.clone())
        .collect()
}
