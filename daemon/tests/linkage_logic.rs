//! Pure linkage logic under a simulated clock: escalation timeline (T1 = 2 min,
//! T2 = 5 min), routing and the drill gate, 消警 validation.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use parkguard::linkage::close::{
    AlarmFacts, ClosureRequest, DataSnapshot, Sample, validate_closure,
};
use parkguard::linkage::escalate::{EscalationConfig, Escalator};
use parkguard::linkage::route::{RouteConfig, RouteError, Router};
use parkguard_drivers::notify::{Notification, Priority, WarningGrade};
use parkguard_rules::{PointKind, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

fn channels() -> BTreeMap<String, bool> {
    [
        ("enterprise-duty", false),
        ("bureau-desk", false),
        ("bureau-leaders", false),
        ("city-bureau", false),
        ("drill-room", true),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d))
    .collect()
}

fn note(id: u64, enterprise: &str) -> Notification {
    Notification {
        event_id: id,
        alarm_id: format!("{enterprise}/GT-101/H"),
        drill: None,
        enterprise: enterprise.into(),
        enterprise_name: None,
        area: Some("tank-farm".into()),
        kind: PointKind::Toxic,
        tag: "GT-101".into(),
        point_name: "罐区硫化氢".into(),
        condition: "level-1".into(),
        priority: Priority::High,
        state: "unack".into(),
        value: Some(12.0),
        unit: "ppm".into(),
        limit: Some(7.1),
        time: Timestamp::from_secs(1_795_688_531),
        grade: Some(WarningGrade::Yellow),
        message_zh: "硫化氢一级报警".into(),
        message_en: "H2S level-1".into(),
    }
}

fn policy_toml() -> EscalationConfig {
    serde_json::from_value(serde_json::json!({
        "name": "standard",
        "repeat": "5m",
        "step": [
            { "after": "0s", "channels": ["enterprise-duty"], "label": "企业值班" },
            { "after": "2m", "channels": ["bureau-desk"], "label": "园区应急管理局值班室" },
            { "after": "5m", "channels": ["bureau-leaders", "city-bureau"], "label": "局领导/市局" }
        ]
    }))
    .unwrap()
}

/// Drive the escalator every 10 s of simulated time from the raise until `until`,
/// acknowledging at `ack`; return (seconds after raise, channels, repeat) of each due.
fn timeline(ack: Option<u64>, until: u64) -> Vec<(u64, Vec<String>, bool)> {
    let policy = policy_toml().validate(&channels()).unwrap();
    let mut esc = Escalator::new([policy]);
    let t0 = Timestamp::from_secs(1_795_688_531);
    let mut out = Vec::new();
    let rec = |out: &mut Vec<_>, dues: Vec<parkguard::linkage::escalate::Due>| {
        for d in dues {
            out.push((
                d.scheduled.since(t0).as_secs(),
                d.channels.clone(),
                d.repeat,
            ));
        }
    };
    rec(
        &mut out,
        esc.on_event("E001/GT-101/H", 1, "standard", t0).unwrap(),
    );
    // a second raise of the same alarm does not restart it
    rec(
        &mut out,
        esc.on_event("E001/GT-101/H", 2, "standard", t0 + Duration::from_secs(30))
            .unwrap(),
    );
    let mut s = 0;
    while s < until {
        s += 10;
        if Some(s) == ack {
            assert!(esc.on_ack("E001/GT-101/H"));
        }
        rec(&mut out, esc.on_tick(t0 + Duration::from_secs(s)));
    }
    out
}

fn chans(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn escalation_timeline_t1_2min_t2_5min() {
    let got = timeline(None, 16 * 60);
    assert_eq!(
        got,
        vec![
            (0, chans(&["enterprise-duty"]), false),
            (120, chans(&["bureau-desk"]), false),
            (300, chans(&["bureau-leaders", "city-bureau"]), false),
            (600, chans(&["bureau-leaders", "city-bureau"]), true),
            (900, chans(&["bureau-leaders", "city-bureau"]), true),
        ]
    );
}

#[test]
fn acknowledge_stops_escalation() {
    // acknowledged at 3 min: level 2 (5 min) and repeats never go out
    let got = timeline(Some(180), 16 * 60);
    assert_eq!(
        got,
        vec![
            (0, chans(&["enterprise-duty"]), false),
            (120, chans(&["bureau-desk"]), false),
        ]
    );
    // acknowledged at 1 min 50 s: only the first level
    assert_eq!(
        timeline(Some(110), 600),
        vec![(0, chans(&["enterprise-duty"]), false)]
    );
}

#[test]
fn late_tick_sends_each_level_once_and_deadline_is_exact() {
    let policy = policy_toml().validate(&channels()).unwrap();
    let mut esc = Escalator::new([policy]);
    let t0 = Timestamp::from_secs(1000);
    esc.on_event("a", 1, "standard", t0).unwrap();
    assert_eq!(esc.next_deadline(), Some(t0 + Duration::from_secs(120)));
    // the process was stalled for 12 minutes: both levels once, one repeat, no burst
    let due = esc.on_tick(t0 + Duration::from_secs(720));
    let steps: Vec<(usize, bool)> = due.iter().map(|d| (d.step, d.repeat)).collect();
    assert_eq!(steps, vec![(1, false), (2, false), (2, true)]);
    assert_eq!(due[2].scheduled, t0 + Duration::from_secs(600));
    assert_eq!(esc.next_deadline(), Some(t0 + Duration::from_secs(900)));
    assert!(esc.on_tick(t0 + Duration::from_secs(899)).is_empty());
    assert!(esc.on_ack("a"));
    assert_eq!(esc.next_deadline(), None);
    assert!(!esc.on_ack("a"));
}

#[test]
fn escalation_resumes_after_restart_without_resending() {
    let policy = policy_toml().validate(&channels()).unwrap();
    let mut esc = Escalator::new([policy]);
    let t0 = Timestamp::from_secs(1000);
    // before the restart levels 0 and 1 went out (at 0 and 2 min); the daemon was down
    // from 3 min to 6 min
    esc.resume("a", 1, "standard", t0, 2, t0 + Duration::from_secs(120))
        .unwrap();
    let due = esc.on_tick(t0 + Duration::from_secs(360));
    let got: Vec<(usize, bool, u64)> = due
        .iter()
        .map(|d| (d.step, d.repeat, d.scheduled.since(t0).as_secs()))
        .collect();
    assert_eq!(
        got,
        [(2, false, 300)],
        "only the level that fell due while down"
    );
    assert!(esc.resume("b", 2, "nope", t0, 0, t0).is_err());
}

#[test]
fn escalation_config_errors_are_collected() {
    let bad: EscalationConfig = serde_json::from_value(serde_json::json!({
        "name": "x",
        "repeat": "5s",
        "step": [
            { "after": "2m", "channels": ["bureau-desk"] },
            { "after": "1m", "channels": ["nobody"] },
            { "after": "3m", "channels": [] }
        ]
    }))
    .unwrap();
    let fields: Vec<String> = bad
        .validate(&channels())
        .unwrap_err()
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        [
            "step[1].after",
            "step[1].channels[0]",
            "step[2].channels",
            "repeat"
        ]
    );
    let unknown = serde_json::from_value::<EscalationConfig>(serde_json::json!({
        "name": "x", "step": [], "T1": "2m"
    }));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `T1`")
    );
}

fn router() -> Router {
    let ch = channels();
    let esc = vec!["standard".to_string()];
    let routes: Vec<RouteConfig> = serde_json::from_value(serde_json::json!([
        { "name": "all-to-duty", "channels": ["enterprise-duty"], "escalation": "standard" },
        { "name": "toxic-high", "kinds": ["toxic"], "min_priority": "high",
          "channels": ["bureau-desk", "drill-room"] },
        { "name": "red", "min_grade": "red", "channels": ["bureau-leaders"] },
        { "name": "E002-only", "enterprises": ["E002"], "areas": ["tank-farm"],
          "channels": ["city-bureau"] }
    ]))
    .unwrap();
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, r)| r.validate(i, &ch, &esc).unwrap())
        .collect();
    Router::new(routes, ch)
}

fn names(r: &parkguard::linkage::route::Routed) -> Vec<&str> {
    r.channels.iter().map(|a| a.channel()).collect()
}

#[test]
fn routes_by_enterprise_area_kind_priority_grade() {
    let r = router();
    let n = note(1, "E001");
    let routed = r.route(&n);
    // A real event never goes to the drill channel of a matching route.
    assert_eq!(names(&routed), ["enterprise-duty", "bureau-desk"]);
    assert!(
        routed
            .refused
            .iter()
            .any(|e| matches!(e, parkguard::linkage::route::RouteError::RealToDrill { channel, .. } if channel == "drill-room")),
        "{:?}",
        routed.refused
    );
    assert_eq!(routed.escalations, ["standard"]);

    let mut low = note(2, "E002");
    low.priority = Priority::Medium;
    low.grade = Some(WarningGrade::Red);
    assert_eq!(
        names(&r.route(&low)),
        ["enterprise-duty", "bureau-leaders", "city-bureau"]
    );
    let mut other_area = low.clone();
    other_area.area = None;
    other_area.grade = None;
    assert_eq!(names(&r.route(&other_area)), ["enterprise-duty"]);
}

#[test]
fn drill_event_is_refused_by_production_channels() {
    let r = router();
    let mut d = note(9, "E001");
    d.drill = Some("2026-H2-tank-farm".into());
    // the router only admits the drill channel
    let routed = r.route(&d);
    assert_eq!(names(&routed), ["drill-room"]);
    assert_eq!(routed.refused.len(), 2);
    // offering it to a production channel directly is refused with an error
    let e = r.admit(&d, "bureau-desk").unwrap_err();
    assert_eq!(
        e,
        RouteError::DrillToProduction {
            event_id: 9,
            drill: "2026-H2-tank-farm".into(),
            channel: "bureau-desk".into()
        }
    );
    assert!(
        e.to_string()
            .contains("refused by production channel `bureau-desk`")
    );
    assert!(r.admit(&d, "drill-room").is_ok());
    assert_eq!(
        r.admit(&d, "nowhere").unwrap_err(),
        RouteError::UnknownChannel("nowhere".into())
    );
}

#[test]
fn route_config_rejects_unknown_channels() {
    let rc: RouteConfig =
        serde_json::from_value(serde_json::json!({"channels": ["ghost"], "escalation": "none"}))
            .unwrap();
    let errs = rc.validate(3, &channels(), &[]).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["channels[0]", "escalation"]);
}

fn facts() -> AlarmFacts {
    AlarmFacts {
        alarm_id: "E001/GT-101/H".into(),
        raised_at: Timestamp::from_secs(1000),
        returned_at: Some(Timestamp::from_secs(1600)),
        acked_at: Some(Timestamp::from_secs(1100)),
        closed: false,
    }
}

fn closure() -> ClosureRequest {
    ClosureRequest {
        alarm_id: "E001/GT-101/H".into(),
        cause: " 法兰垫片泄漏 ".into(),
        action: "更换垫片，复测合格".into(),
        reviewer: "张工".into(),
        snapshot: DataSnapshot {
            unit: "ppm".into(),
            from: Timestamp::from_secs(900),
            to: Timestamp::from_secs(1700),
            samples: (0..9)
                .map(|i| Sample {
                    time: Timestamp::from_secs(900 + i * 100),
                    value: if (1..7).contains(&i) { 12.0 } else { 0.5 },
                    quality: "good".into(),
                })
                .collect(),
        },
    }
}

#[test]
fn closure_validates_and_publishes() {
    let now = Timestamp::from_secs(2000);
    let c = validate_closure(&closure(), &facts(), now).unwrap();
    assert_eq!(c.cause, "法兰垫片泄漏");
    assert_eq!(c.closed_at, now);
    let n = c.notification(&note(1, "E001"), 77);
    assert_eq!((n.event_id, n.state.as_str()), (77, "closed"));
    assert!(
        n.message_zh
            .contains("原因：法兰垫片泄漏；处置措施：更换垫片，复测合格；审核人：张工")
    );
}

#[test]
fn closure_errors_are_collected() {
    let now = Timestamp::from_secs(2000);
    let mut f = facts();
    f.returned_at = None;
    f.acked_at = None;
    let mut req = closure();
    req.cause = "  ".into();
    req.reviewer = String::new();
    req.snapshot.from = Timestamp::from_secs(1200);
    req.snapshot.samples[3].value = f64::NAN;
    req.snapshot.samples.swap(4, 5);
    let errs = validate_closure(&req, &f, now).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "alarm_id",
            "alarm_id",
            "cause",
            "reviewer",
            "snapshot.from",
            "snapshot.samples[0].time",
            "snapshot.samples[1].time",
            "snapshot.samples[2].time",
            "snapshot.samples[3].value",
            "snapshot.samples[5].time"
        ],
        "{errs:?}"
    );
    // a closed alarm cannot be closed twice
    let mut closed = facts();
    closed.closed = true;
    assert!(validate_closure(&closure(), &closed, now).is_err());
}
