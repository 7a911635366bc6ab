//! Running a drill: a separate engine instance (its own alarm states, every event stamped
//! with the drill id) fed by a scenario on the scenario's own clock, at a chosen speed.
//! Its events go to the same journal as the real path (so the record is complete) and to
//! the linkage router, which gives drill events to drill channels only. Real monitoring is
//! untouched: it runs in another engine, and a real alarm during a drill still alarms.

use super::limits::{LimitsInForce, LimitsUsed};
use super::scenario::{Scenario, ScenarioFile};
use crate::config::ParkConfig;
use parkguard_rules::alarm::{AlarmEvent, EventKind};
use parkguard_rules::engine::{Engine, Event};
use parkguard_rules::kpi::{self, KpiConfig, KpiReport};
use parkguard_rules::{Reading, Timestamp};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One line of the drill timeline.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimelineEntry {
    /// Seconds since the drill started (scenario clock).
    pub t_s: f64,
    /// What happened.
    pub what: String,
    /// Alarm id or warning scope.
    pub subject: String,
    /// Value at the moment, if any.
    pub value: Option<f64>,
}

/// The drill report (stored as JSON; rendered as a self-contained HTML page).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DrillReport {
    /// Drill id.
    pub drill: String,
    /// Scenario name.
    pub scenario: String,
    /// Start on the engine's clock.
    pub start: Timestamp,
    /// Length simulated, seconds.
    pub duration_s: f64,
    /// Readings fed.
    pub readings: u64,
    /// Annunciated alarms, warning changes and acknowledgements in order.
    pub timeline: Vec<TimelineEntry>,
    /// Alarms raised and never acknowledged during the drill.
    pub never_acknowledged: Vec<String>,
    /// Time to acknowledge per alarm, seconds.
    pub time_to_ack_s: Vec<(String, f64)>,
    /// Every first acknowledgement: alarm, operator, seconds from annunciation.
    pub acks: Vec<AckTime>,
    /// Time to acknowledge per operator.
    pub per_operator: Vec<OperatorAcks>,
    /// KPIs over the drill.
    pub kpi: KpiReport,
    /// The limit versions the drill ran with, for every point whose limits in force were
    /// not the configured version 1 (changed through the API, `<data.dir>/limits.sqlite`);
    /// every point not named ran its configured limits. See [`super::limits`].
    pub limits: Vec<LimitsUsed>,
}

/// One acknowledgement in a drill.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AckTime {
    /// Alarm id.
    pub alarm: String,
    /// Who acknowledged.
    pub operator: String,
    /// Seconds from the alarm's annunciation to the acknowledgement (drill clock).
    pub seconds: f64,
}

/// Time to acknowledge of one operator.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OperatorAcks {
    /// Login name.
    pub operator: String,
    /// Alarms acknowledged.
    pub acks: u32,
    /// Mean time to acknowledge, seconds.
    pub mean_s: f64,
    /// Longest time to acknowledge, seconds.
    pub max_s: f64,
}

/// Run `file` as drill `id` on `cfg`'s park with `limits` applied over the configured ones
/// (see [`super::limits`]). `speed` is the factor over real time (0 = as fast as possible).
/// Events are sent to `journal` (which must journal them before any notification). Returns
/// the report.
#[allow(clippy::too_many_arguments)] // each is one plain input of a drill run
pub async fn run(
    cfg: &ParkConfig,
    id: &str,
    file: ScenarioFile,
    limits: LimitsInForce,
    speed: f64,
    start: Timestamp,
    journal: Option<mpsc::Sender<Vec<Event>>>,
    cancel: CancellationToken,
) -> Result<DrillReport, String> {
    let name = file.scenario.name.clone();
    let mut scenario = Scenario::new(file, Arc::clone(&cfg.table)).map_err(|e| e.to_string())?;
    let mut ecfg = cfg.engine.clone();
    ecfg.drill = Some(id.to_string());
    let mut engine = Engine::new(Arc::clone(&cfg.table), ecfg, cfg.vote_groups.clone());
    engine.replace_limits_batch(&limits.apply).map_err(|errs| {
        format!("the limits in force are refused by the drill's engine: {errs:?}")
    })?;
    // Drill event ids must not collide with the real path's in the shared journal: start
    // them far above (the real path would need 2^62 events to reach them).
    engine.set_next_event_id((1u64 << 62) + (start.nanos().unsigned_abs() >> 8));
    let step = scenario.step();
    let total = scenario.duration();
    let mut all: Vec<Event> = Vec::new();
    let mut readings: Vec<Reading> = Vec::new();
    let mut fed = 0u64;
    let mut elapsed = Duration::ZERO;
    while elapsed <= total {
        if cancel.is_cancelled() {
            break;
        }
        readings.clear();
        scenario.readings_at(start, elapsed, &mut readings);
        fed += readings.len() as u64;
        let mut out = Vec::new();
        engine.on_readings(&readings, &mut out);
        engine.on_tick(start + elapsed, &mut out);
        if !out.is_empty() {
            if let Some(j) = &journal
                && j.send(out.clone()).await.is_err()
            {
                return Err("the journal is gone".into());
            }
            all.extend(out);
        }
        if speed > 0.0 {
            tokio::time::sleep(step.div_f64(speed)).await;
        }
        elapsed += step;
    }
    let mut r = report(id, &name, start, elapsed, fed, &all);
    r.limits = limits.used;
    Ok(r)
}

/// Build the report from a drill's events.
pub fn report(
    id: &str,
    scenario: &str,
    start: Timestamp,
    elapsed: Duration,
    readings: u64,
    events: &[Event],
) -> DrillReport {
    let t = |ts: Timestamp| (ts.0 - start.0) as f64 / 1e9;
    let mut timeline = Vec::new();
    let mut raised: Vec<(String, Timestamp)> = Vec::new();
    let mut acked: Vec<(String, f64)> = Vec::new();
    let mut acks: Vec<AckTime> = Vec::new();
    let alarms: Vec<AlarmEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::Alarm(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    for e in events {
        match e {
            Event::Alarm(a) if a.annunciate => {
                timeline.push(TimelineEntry {
                    t_s: t(a.time),
                    what: format!("报警 / alarm {}", a.condition.label_zh()),
                    subject: a.alarm.clone(),
                    value: a.value,
                });
                if !raised.iter().any(|(r, _)| *r == a.alarm) {
                    raised.push((a.alarm.clone(), a.time));
                }
            }
            Event::Alarm(a) if a.kind == EventKind::Acknowledge => {
                timeline.push(TimelineEntry {
                    t_s: t(a.time),
                    what: format!(
                        "确认 / acknowledged by {}",
                        a.user.clone().unwrap_or_default()
                    ),
                    subject: a.alarm.clone(),
                    value: None,
                });
                if let Some((_, at)) = raised.iter().find(|(r, _)| *r == a.alarm)
                    && !acked.iter().any(|(r, _)| *r == a.alarm)
                {
                    let seconds = (a.time.0 - at.0) as f64 / 1e9;
                    acked.push((a.alarm.clone(), seconds));
                    acks.push(AckTime {
                        alarm: a.alarm.clone(),
                        operator: a.user.clone().unwrap_or_default(),
                        seconds,
                    });
                }
            }
            Event::Alarm(_) => {}
            Event::Warning(w) => timeline.push(TimelineEntry {
                t_s: t(w.time),
                what: format!("预警 / warning {:?} → {:?}", w.from, w.to),
                subject: format!("{:?}", w.scope),
                value: None,
            }),
        }
    }
    let never_acknowledged = raised
        .iter()
        .filter(|(r, _)| !acked.iter().any(|(a, _)| a == r))
        .map(|(r, _)| r.clone())
        .collect();
    let mut per_operator: Vec<OperatorAcks> = Vec::new();
    for a in &acks {
        match per_operator.iter_mut().find(|o| o.operator == a.operator) {
            Some(o) => {
                o.mean_s = (o.mean_s * f64::from(o.acks) + a.seconds) / f64::from(o.acks + 1);
                o.acks += 1;
                o.max_s = o.max_s.max(a.seconds);
            }
            None => per_operator.push(OperatorAcks {
                operator: a.operator.clone(),
                acks: 1,
                mean_s: a.seconds,
                max_s: a.seconds,
            }),
        }
    }
    DrillReport {
        drill: id.to_string(),
        scenario: scenario.to_string(),
        start,
        duration_s: elapsed.as_secs_f64(),
        readings,
        timeline,
        never_acknowledged,
        time_to_ack_s: acked,
        acks,
        per_operator,
        kpi: kpi::compute(&alarms, start, start + elapsed, &KpiConfig::default()),
        limits: Vec::new(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A self-contained, printable HTML page of the report (no scripts, no external assets).
pub fn html(r: &DrillReport) -> String {
    let mut rows = String::new();
    for e in &r.timeline {
        rows.push_str(&format!(
            "<tr><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            e.t_s,
            esc(&e.what),
            esc(&e.subject),
            e.value.map(|v| format!("{v:.2}")).unwrap_or_default()
        ));
    }
    let mut ops = String::new();
    for o in &r.per_operator {
        ops.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td></tr>\n",
            esc(&o.operator),
            o.acks,
            o.mean_s,
            o.max_s
        ));
    }
    let limits = if r.limits.is_empty() {
        "<p>全部测点按配置文件限值（版本 1）/ every point ran its configured limits (version 1)</p>"
            .to_string()
    } else {
        let mut t = String::from(
            "<table><tr><th>位号 / tag</th><th>版本 / version</th><th>修改人 / by</th><th>原因 / reason</th></tr>\n",
        );
        for l in &r.limits {
            t.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&l.tag),
                l.version,
                esc(&l.changed_by),
                esc(&l.reason)
            ));
        }
        t.push_str(
            "</table><p>其余测点按配置文件限值 / every other point ran its configured limits</p>",
        );
        t
    };
    // A bar per 10-minute bucket: alarms per bucket, as inline SVG.
    let bars: String = {
        let n = r.kpi.alarms.max(1) as f64;
        let mut x = 0.0;
        let mut s = String::new();
        for (i, (_, count)) in r.kpi.top10.iter().enumerate() {
            let w = 300.0 * (*count as f64) / n;
            s.push_str(&format!(
                "<rect x=\"0\" y=\"{}\" width=\"{w:.1}\" height=\"14\" fill=\"#c0392b\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{}</text>",
                i * 18,
                w + 4.0,
                i * 18 + 11,
                esc(&r.kpi.top10[i].0)
            ));
            x += 1.0;
        }
        let _ = x;
        s
    };
    format!(
        "<!doctype html><html lang=\"zh-CN\"><meta charset=\"utf-8\"><title>演练报告 / Drill report {id}</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:2px 6px}}.banner{{background:#6c3483;color:#fff;padding:6px 12px;font-weight:bold}}</style>\
<div class=\"banner\">演练 / DRILL — {id}</div><h1>演练报告 / Drill report</h1>\
<p>场景 / scenario: {scenario}<br>时长 / duration: {dur:.0} s · 读数 / readings: {readings} · 报警 / alarms: {alarms}</p>\
<h2>所用限值版本 / limit versions in force</h2>{limits}\
<h2>未确认报警 / never acknowledged</h2><p>{never}</p>\
<h2>确认用时（按操作员）/ time to acknowledge per operator</h2><table><tr><th>操作员 / operator</th><th>确认数 / acks</th><th>平均 / mean (s)</th><th>最长 / max (s)</th></tr>\n{ops}</table>\
<h2>报警最多的测点 / top sources</h2><svg width=\"520\" height=\"{h}\">{bars}</svg>\
<h2>时间线 / timeline</h2><table><tr><th>t (s)</th><th>事件 / event</th><th>对象 / subject</th><th>值 / value</th></tr>\n{rows}</table></html>\n",
        id = esc(&r.drill),
        scenario = esc(&r.scenario),
        dur = r.duration_s,
        readings = r.readings,
        alarms = r.kpi.alarms,
        never = esc(&r.never_acknowledged.join(", ")),
        h = r.kpi.top10.len() * 18 + 4,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> ParkConfig {
        crate::config::load_str("demo.toml", crate::demo::DEMO_CONFIG).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn chlorine_drill_events_all_carry_the_drill_id_and_alarm_downwind() {
        let cfg = demo();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/scenarios/chlorine-release.toml"
        ))
        .unwrap();
        let file = Scenario::parse(&text).unwrap();
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let start = Timestamp::from_secs(1_764_115_200);
        let r = run(
            &cfg,
            "drill-2026-11",
            file,
            LimitsInForce::default(),
            0.0,
            start,
            Some(tx),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let mut journaled = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            journaled.extend(batch);
        }
        assert!(!journaled.is_empty());
        for e in &journaled {
            let drill = match e {
                Event::Alarm(a) => a.drill.as_deref(),
                Event::Warning(w) => w.drill.as_deref(),
            };
            assert_eq!(drill, Some("drill-2026-11"), "{e:?}");
        }
        let raised: Vec<&str> = r
            .timeline
            .iter()
            .filter(|e| e.what.starts_with("报警"))
            .map(|e| e.subject.as_str())
            .collect();
        assert!(
            raised.iter().any(|a| a.starts_with("PARK00-AT-S2:")),
            "{raised:?}"
        );
        assert!(
            !raised.iter().any(|a| a.starts_with("PARK00-AT-N1:")),
            "upwind station stayed clean: {raised:?}"
        );
        assert!(
            r.never_acknowledged.len() >= 4,
            "nobody acknowledged in this test"
        );
        let page = html(&r);
        assert!(page.contains("演练 / DRILL — drill-2026-11"));
        assert!(page.contains("PARK00-AT-S2"));
    }
}
