//! Alarm-management KPIs (ISA-18.2 / EEMUA 191, DOMAIN.md §5) from an event stream.
//!
//! [`compute`] is a pure function of alarm events and a time window, so the same code
//! serves the live console (the last hours of events) and the chief engineer's review of
//! history (a month from the journal). Only *annunciated activations* count as alarms: an
//! activation that reached an operator as unacknowledged (`kind = activate`,
//! `annunciate = true`). Suppressed, shelved and out-of-service activations are recorded but
//! are not what operators had to handle.

use crate::alarm::{AlarmEvent, EventKind, Priority};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// KPI thresholds; the defaults are the ISA-18.2 / EEMUA 191 figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KpiConfig {
    /// Operators sharing the alarms (divides the rate). Default 1.
    pub operators: u32,
    /// Rate bucket. Default 10 min.
    pub bucket: Duration,
    /// A bucket with more than this many alarms is a flood. Default 10.
    pub flood_above: u32,
    /// Chattering: this many activations of one alarm ... Default 3.
    pub chatter_count: u32,
    /// ... within this time. Default 60 s.
    pub chatter_window: Duration,
    /// An alarm standing longer than this is stale. Default 24 h.
    pub stale_after: Duration,
}

impl Default for KpiConfig {
    fn default() -> Self {
        Self {
            operators: 1,
            bucket: Duration::from_secs(600),
            flood_above: 10,
            chatter_count: 3,
            chatter_window: Duration::from_secs(60),
            stale_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// Alarm KPIs over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KpiReport {
    /// Window start.
    pub from: Timestamp,
    /// Window end.
    pub to: Timestamp,
    /// Annunciated activations in the window.
    pub alarms: u64,
    /// Average alarms per operator per bucket (10 min). Target 1–2; ≥ 5 is excessive.
    pub per_bucket_avg: f64,
    /// Most alarms per operator in one bucket.
    pub per_bucket_max: u64,
    /// Buckets with more than `flood_above` alarms: (bucket start, alarms).
    pub floods: Vec<(Timestamp, u64)>,
    /// Share of buckets in flood, 0–1.
    pub flood_share: f64,
    /// Alarms with ≥ `chatter_count` activations within `chatter_window`, with their
    /// activations in the window, most first.
    pub chattering: Vec<(String, u64)>,
    /// Alarms whose condition is still present at `to` and has been for longer than
    /// `stale_after`: (alarm, active since).
    pub stale: Vec<(String, Timestamp)>,
    /// The ten sources with most alarms: (source, alarms), most first.
    pub top10: Vec<(String, u64)>,
    /// Share of all alarms from the top ten sources, 0–1.
    pub top10_share: f64,
    /// Alarms per priority: high, medium, low.
    pub priority_counts: [u64; 3],
    /// Priority mix, 0–1 each: high, medium, low (target ≈ 0.05 / 0.15 / 0.80).
    pub priority_mix: [f64; 3],
}

fn is_alarm(e: &AlarmEvent) -> bool {
    e.kind == EventKind::Activate && e.annunciate
}

/// Compute the KPIs of the events with `from ≤ time < to`. Events may come in any order;
/// for stale alarms, events before `from` are used too (an alarm standing since last week).
pub fn compute(
    events: &[AlarmEvent],
    from: Timestamp,
    to: Timestamp,
    cfg: &KpiConfig,
) -> KpiReport {
    let mut r = KpiReport {
        from,
        to,
        ..Default::default()
    };
    let bucket_ns = (cfg.bucket.as_nanos() as i64).max(1);
    let span = to.0.saturating_sub(from.0).max(0);
    let nbuckets = ((span + bucket_ns - 1) / bucket_ns).max(1) as usize;
    let mut buckets = vec![0u64; nbuckets];
    let mut per_alarm: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut per_source: HashMap<&str, u64> = HashMap::new();
    // Stale: the latest condition change per alarm up to `to`.
    let mut last: HashMap<&str, (i64, u64, bool, i64)> = HashMap::new(); // time, id, active, since
    for e in events {
        if e.time.0 < to.0 {
            let entry = last
                .entry(e.alarm.as_str())
                .or_insert((i64::MIN, 0, false, i64::MIN));
            if (e.time.0, e.id) >= (entry.0, entry.1) {
                let since = if e.kind == EventKind::Activate {
                    e.time.0
                } else {
                    entry.3
                };
                *entry = (e.time.0, e.id, e.active, since);
            }
        }
        if e.time.0 < from.0 || e.time.0 >= to.0 || !is_alarm(e) {
            continue;
        }
        r.alarms += 1;
        let b = ((e.time.0 - from.0) / bucket_ns) as usize;
        buckets[b.min(nbuckets - 1)] += 1;
        per_alarm
            .entry(e.alarm.as_str())
            .or_default()
            .push(e.time.0);
        *per_source.entry(e.source.as_str()).or_default() += 1;
        let i = match e.priority {
            Priority::High => 0,
            Priority::Medium => 1,
            Priority::Low => 2,
        };
        r.priority_counts[i] += 1;
    }
    let ops = u64::from(cfg.operators.max(1));
    r.per_bucket_avg = r.alarms as f64 / nbuckets as f64 / ops as f64;
    r.per_bucket_max = buckets.iter().copied().max().unwrap_or(0) / ops;
    for (i, &n) in buckets.iter().enumerate() {
        if n > u64::from(cfg.flood_above) {
            r.floods.push((Timestamp(from.0 + i as i64 * bucket_ns), n));
        }
    }
    r.flood_share = r.floods.len() as f64 / nbuckets as f64;
    let win = cfg.chatter_window.as_nanos() as i64;
    let need = cfg.chatter_count.max(1) as usize;
    for (alarm, times) in &mut per_alarm {
        times.sort_unstable();
        let chatters = times.windows(need).any(|w| w[need - 1] - w[0] <= win);
        if chatters {
            r.chattering.push(((*alarm).to_owned(), times.len() as u64));
        }
    }
    r.chattering
        .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let stale_ns = cfg.stale_after.as_nanos() as i64;
    for (alarm, (_, _, active, since)) in last {
        if active && since != i64::MIN && to.0.saturating_sub(since) > stale_ns {
            r.stale.push((alarm.to_owned(), Timestamp(since)));
        }
    }
    r.stale.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut sources: Vec<(String, u64)> = per_source
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
    sources.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sources.truncate(10);
    let top: u64 = sources.iter().map(|s| s.1).sum();
    r.top10 = sources;
    if r.alarms > 0 {
        r.top10_share = top as f64 / r.alarms as f64;
        for i in 0..3 {
            r.priority_mix[i] = r.priority_counts[i] as f64 / r.alarms as f64;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::{AlarmState, Condition, SourceKind};

    const MIN: i64 = 60_000_000_000;

    fn ev(id: u64, alarm: &str, kind: EventKind, t_min: f64, prio: Priority) -> AlarmEvent {
        let (to, active, annunciate) = match kind {
            EventKind::Activate => (AlarmState::Unacknowledged, true, true),
            _ => (AlarmState::ReturnedUnacknowledged, false, false),
        };
        AlarmEvent {
            id,
            alarm: alarm.into(),
            source: alarm.split(':').next().unwrap().into(),
            source_kind: SourceKind::Point,
            enterprise: "E1".into(),
            area: None,
            condition: Condition::H,
            level: Some(1),
            priority: prio,
            kind,
            from: AlarmState::Normal,
            to,
            active,
            annunciate,
            value: None,
            limit: None,
            unit: None,
            time: Timestamp((t_min * MIN as f64) as i64),
            source_time: None,
            user: None,
            comment: None,
            shelved_until: None,
            suppressed_by: None,
            drill: None,
        }
    }

    #[test]
    fn rates_floods_chatter_stale_top10_mix() {
        let mut evs = Vec::new();
        let mut id = 0;
        let mut push = |alarm: &str, kind, t, p| {
            id += 1;
            evs.push(ev(id, alarm, kind, t, p));
        };
        // A flood in the second bucket (10–20 min): 12 alarms from 12 sources.
        for i in 0..12 {
            push(
                &format!("F{i}:H"),
                EventKind::Activate,
                10.5 + f64::from(i) * 0.5,
                Priority::Low,
            );
            push(
                &format!("F{i}:H"),
                EventKind::Return,
                10.6 + f64::from(i) * 0.5,
                Priority::Low,
            );
        }
        // A chattering alarm: 3 activations within 40 s in the first bucket.
        for k in 0..3 {
            let t = 1.0 + f64::from(k) * 0.3;
            push("C1:H", EventKind::Activate, t, Priority::Medium);
            push("C1:H", EventKind::Return, t + 0.1, Priority::Medium);
        }
        // Not chattering: 3 activations 2 min apart.
        for k in 0..3 {
            let t = 30.0 + f64::from(k) * 2.0;
            push("S1:H", EventKind::Activate, t, Priority::High);
            push("S1:H", EventKind::Return, t + 0.5, Priority::High);
        }
        // Standing since before the window (stale by the end), and a suppressed activation
        // that is recorded but not an alarm.
        push("OLD:H", EventKind::Activate, -2000.0, Priority::High);
        let mut sup = ev(
            999,
            "SUP:COMM_LOST",
            EventKind::Activate,
            5.0,
            Priority::Low,
        );
        sup.to = AlarmState::SuppressedByDesign;
        sup.annunciate = false;
        evs.push(sup);

        let r = compute(
            &evs,
            Timestamp(0),
            Timestamp(60 * MIN),
            &KpiConfig::default(),
        );
        assert_eq!(r.alarms, 12 + 3 + 3);
        assert!((r.per_bucket_avg - 18.0 / 6.0).abs() < 1e-9);
        assert_eq!(r.per_bucket_max, 12);
        assert_eq!(r.floods, [(Timestamp(10 * MIN), 12)]);
        assert!((r.flood_share - 1.0 / 6.0).abs() < 1e-9);
        assert_eq!(r.chattering, [("C1:H".to_string(), 3)]);
        assert_eq!(r.stale, [("OLD:H".to_string(), Timestamp(-2000 * MIN))]);
        assert_eq!(r.top10.len(), 10);
        assert_eq!(r.top10[0], ("C1".to_string(), 3));
        assert_eq!(r.top10[1], ("S1".to_string(), 3));
        assert!((r.top10_share - 14.0 / 18.0).abs() < 1e-9);
        assert_eq!(r.priority_counts, [3, 3, 12]);
        assert!((r.priority_mix.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // Two operators halve the rate.
        let two = KpiConfig {
            operators: 2,
            ..Default::default()
        };
        let r2 = compute(&evs, Timestamp(0), Timestamp(60 * MIN), &two);
        assert_eq!(r2.per_bucket_max, 6);
        // An empty window is all zeros, no division by zero.
        let e = compute(&[], Timestamp(0), Timestamp(0), &KpiConfig::default());
        assert_eq!((e.alarms, e.top10_share, e.per_bucket_avg), (0, 0.0, 0.0));
    }
}
