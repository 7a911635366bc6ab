//! Backtests: the same pure engine run over recorded history at full speed, once with the
//! current limits and once with candidate limits, so that a threshold change comes with its
//! evidence (alarms raised, time in alarm, chattering, floods, first-alarm times).

use parkguard_rules::alarm::{AlarmEvent, Condition, EventKind};
use parkguard_rules::engine::{Engine, EngineConfig, Event, VoteGroup};
use parkguard_rules::kpi::{self, KpiConfig, KpiReport};
use parkguard_rules::{AlarmLimits, PointId, PointTable, Reading, Timestamp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Run an engine over time-ordered readings, ticking every `tick` of reading time (the
/// engine runs on the readings' clock, exactly as in a live run). Returns every event.
pub fn run_engine(engine: &mut Engine, readings: &[Reading], tick: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    let tick_ns = (tick.as_nanos() as i64).max(1);
    let mut next_tick: Option<i64> = None;
    for r in readings {
        let t = r.receive_time.0;
        let nt = *next_tick.get_or_insert_with(|| (t / tick_ns + 1) * tick_ns);
        let mut nt = nt;
        while nt <= t {
            engine.on_tick(Timestamp(nt), &mut out);
            nt += tick_ns;
        }
        next_tick = Some(nt);
        engine.on_reading(r, &mut out);
    }
    if let Some(nt) = next_tick {
        engine.on_tick(Timestamp(nt), &mut out);
    }
    out
}

/// Limit-alarm statistics of one point in one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PointStats {
    /// Limit activations (H, HH, L, LL, rate of change).
    pub alarms: u64,
    /// Time with a limit condition present, seconds.
    pub time_in_alarm_s: f64,
    /// First activation, if any.
    pub first_alarm: Option<Timestamp>,
    /// Whether the point chattered (≥ 3 activations of one alarm within 1 min).
    pub chattering: bool,
}

/// One point where the two runs differ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointDiff {
    /// Tag.
    pub tag: String,
    /// With the current limits.
    pub current: PointStats,
    /// With the candidate limits.
    pub candidate: PointStats,
    /// Candidate first alarm minus current first alarm, seconds (positive = later).
    pub first_alarm_delta_s: Option<f64>,
}

/// Totals of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Limit activations.
    pub alarms: u64,
    /// Time in alarm, seconds, summed over points.
    pub time_in_alarm_s: f64,
    /// Points that chattered.
    pub chattering_points: u64,
    /// KPI report over every annunciated alarm.
    pub kpi: KpiReport,
}

/// The evidence for a threshold change.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BacktestReport {
    /// Readings replayed.
    pub readings: u64,
    /// History window.
    pub from: Timestamp,
    /// History window end.
    pub to: Timestamp,
    /// Points whose limits differ between the runs.
    pub changed_points: Vec<String>,
    /// Current limits.
    pub current: Totals,
    /// Candidate limits.
    pub candidate: Totals,
    /// Points whose statistics differ.
    pub points: Vec<PointDiff>,
}

fn is_limit(c: Condition) -> bool {
    matches!(
        c,
        Condition::H | Condition::Hh | Condition::L | Condition::Ll | Condition::RateOfChange
    )
}

fn stats(
    table: &PointTable,
    events: &[Event],
    to: Timestamp,
) -> (BTreeMap<PointId, PointStats>, Vec<AlarmEvent>) {
    let alarms: Vec<AlarmEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::Alarm(a) => Some(a.clone()),
            Event::Warning(_) => None,
        })
        .collect();
    let mut per: BTreeMap<PointId, PointStats> = BTreeMap::new();
    let mut active_since: BTreeMap<&str, Timestamp> = BTreeMap::new();
    for a in &alarms {
        if !is_limit(a.condition) {
            continue;
        }
        let Some(p) = table.by_tag(&a.source) else {
            continue;
        };
        let s = per.entry(p.id).or_default();
        match a.kind {
            EventKind::Activate => {
                s.alarms += 1;
                s.first_alarm.get_or_insert(a.time);
                active_since.entry(a.alarm.as_str()).or_insert(a.time);
            }
            EventKind::Return => {
                if let Some(since) = active_since.remove(a.alarm.as_str()) {
                    s.time_in_alarm_s += a.time.since(since).as_secs_f64();
                }
            }
            _ => {}
        }
    }
    for (alarm, since) in active_since {
        if let Some(tag) = alarm.rsplit_once(':').map(|(t, _)| t)
            && let Some(p) = table.by_tag(tag)
        {
            per.entry(p.id).or_default().time_in_alarm_s += to.since(since).as_secs_f64();
        }
    }
    (per, alarms)
}

fn totals(
    table: &PointTable,
    per: &mut BTreeMap<PointId, PointStats>,
    alarms: &[AlarmEvent],
    from: Timestamp,
    to: Timestamp,
) -> Totals {
    let report = kpi::compute(alarms, from, to, &KpiConfig::default());
    for (alarm, _) in &report.chattering {
        if let Some(tag) = alarm.rsplit_once(':').map(|(t, _)| t)
            && let Some(p) = table.by_tag(tag)
        {
            per.entry(p.id).or_default().chattering = true;
        }
    }
    Totals {
        alarms: per.values().map(|s| s.alarms).sum(),
        time_in_alarm_s: per.values().map(|s| s.time_in_alarm_s).sum(),
        chattering_points: per.values().filter(|s| s.chattering).count() as u64,
        kpi: report,
    }
}

/// Run current and candidate limits over the same readings (time-ordered).
pub fn backtest(
    table: Arc<PointTable>,
    cfg: EngineConfig,
    groups: Vec<VoteGroup>,
    readings: &[Reading],
    candidate: &[(PointId, AlarmLimits)],
) -> Result<BacktestReport, String> {
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        return Err("no readings in the chosen window".into());
    };
    let (from, to) = (
        first.receive_time,
        last.receive_time + Duration::from_secs(1),
    );
    let tick = Duration::from_secs(1);

    let mut cur = Engine::new(Arc::clone(&table), cfg.clone(), groups.clone());
    let cur_events = run_engine(&mut cur, readings, tick);

    let mut cand = Engine::new(Arc::clone(&table), cfg, groups);
    let mut changed = Vec::new();
    for (id, limits) in candidate {
        let p = table.get(*id).ok_or("candidate names an unknown point")?;
        if &p.limits != limits {
            changed.push(p.tag.clone());
        }
        cand.replace_limits(*id, limits.clone()).map_err(|e| {
            format!(
                "candidate limits of `{}`: {}",
                p.tag,
                e.iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
    }
    let cand_events = run_engine(&mut cand, readings, tick);

    let (mut cur_per, cur_alarms) = stats(&table, &cur_events, to);
    let (mut cand_per, cand_alarms) = stats(&table, &cand_events, to);
    let current = totals(&table, &mut cur_per, &cur_alarms, from, to);
    let candidate_t = totals(&table, &mut cand_per, &cand_alarms, from, to);

    let mut points = Vec::new();
    let ids: std::collections::BTreeSet<PointId> =
        cur_per.keys().chain(cand_per.keys()).copied().collect();
    for id in ids {
        let c = cur_per.get(&id).cloned().unwrap_or_default();
        let k = cand_per.get(&id).cloned().unwrap_or_default();
        if c != k {
            let delta = match (c.first_alarm, k.first_alarm) {
                (Some(a), Some(b)) => Some((b.0 - a.0) as f64 / 1e9),
                _ => None,
            };
            points.push(PointDiff {
                tag: table.get(id).map(|p| p.tag.clone()).unwrap_or_default(),
                current: c,
                candidate: k,
                first_alarm_delta_s: delta,
            });
        }
    }
    Ok(BacktestReport {
        readings: readings.len() as u64,
        from,
        to,
        changed_points: changed,
        current,
        candidate: candidate_t,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkguard_rules::{Quality, Unit};

    /// A day of one pressure point at one reading per 10 s, flat at 0.8 MPa, with one
    /// 60-second excursion at the top of every hour whose height cycles through `PEAKS`.
    const PEAKS: [f64; 4] = [1.1, 1.25, 1.35, 1.45];

    fn day(table: &PointTable) -> (Vec<Reading>, Vec<f64>) {
        let p = table.by_tag("DEMO01-PT-201").unwrap();
        let t0 = Timestamp::from_secs(1_764_115_200); // 2025-11-26 00:00 UTC
        let mut out = Vec::new();
        let mut excursions = Vec::new();
        for i in 0..(24 * 360) {
            let sec = i * 10;
            let hour = sec / 3600;
            let in_hour = sec % 3600;
            let peak = PEAKS[(hour % 4) as usize];
            if in_hour == 0 {
                excursions.push(peak);
            }
            let v = if in_hour < 60 { peak } else { 0.8 };
            let t = t0 + Duration::from_secs(sec as u64);
            out.push(Reading {
                point: p.id,
                value: v,
                unit: Unit::MPa,
                quality: Quality::Good,
                source_time: t,
                receive_time: t,
            });
        }
        (out, excursions)
    }

    /// Independent count: excursions (each held 60 s, longer than the 15 s on-delay) at or
    /// above each limit.
    fn expected(excursions: &[f64], h: f64, hh: f64) -> u64 {
        excursions.iter().filter(|&&v| v >= h).count() as u64
            + excursions.iter().filter(|&&v| v >= hh).count() as u64
    }

    #[test]
    fn raising_a_limit_lowers_the_alarm_count_by_the_expected_amount() {
        let cfg = crate::config::load_str("demo.toml", crate::demo::DEMO_CONFIG).unwrap();
        let table = Arc::clone(&cfg.table);
        let p = table.by_tag("DEMO01-PT-201").unwrap().clone();
        assert_eq!((p.limits.h, p.limits.hh), (Some(1.2), Some(1.4)));
        let (readings, excursions) = day(&table);
        let mut cand = p.limits.clone();
        cand.h = Some(1.3);
        let r = backtest(
            Arc::clone(&table),
            cfg.engine.clone(),
            cfg.vote_groups.clone(),
            &readings,
            &[(p.id, cand)],
        )
        .unwrap();
        assert_eq!(r.readings, 8640);
        assert_eq!(r.changed_points, vec!["DEMO01-PT-201".to_string()]);
        assert_eq!(r.current.alarms, expected(&excursions, 1.2, 1.4), "{r:#?}");
        assert_eq!(r.candidate.alarms, expected(&excursions, 1.3, 1.4));
        assert_eq!(
            r.current.alarms - r.candidate.alarms,
            6,
            "one 1.25 MPa excursion every 4 h"
        );
        let d = &r.points[0];
        assert_eq!(d.tag, "DEMO01-PT-201");
        assert!(d.candidate.time_in_alarm_s < d.current.time_in_alarm_s);
        // The first alarm moves from the 01:00 excursion (1.25) to the 02:00 one (1.35).
        assert_eq!(d.first_alarm_delta_s, Some(3600.0));
    }

    #[test]
    fn same_history_same_events() {
        let cfg = crate::config::load_str("demo.toml", crate::demo::DEMO_CONFIG).unwrap();
        let (readings, _) = day(&cfg.table);
        let run = || {
            let mut e = Engine::new(
                Arc::clone(&cfg.table),
                cfg.engine.clone(),
                cfg.vote_groups.clone(),
            );
            serde_json::to_string(&run_engine(&mut e, &readings, Duration::from_secs(1))).unwrap()
        };
        assert_eq!(run(), run());
    }
}
