//! Scenarios an operator would recognise: a leak ramp, a detector losing its link, a
//! frozen controller, coincidence voting, warnings spreading, a restart.

mod common;

use common::*;
use parkguard_rules::alarm::{AlarmState, EventKind, SourceKind};
use parkguard_rules::engine::{
    BadQualityVote, Command, Engine, EngineConfig, Event, VoteGroupConfig, validate_vote_groups,
};
use parkguard_rules::warning::{Grade, WarningScope};
use parkguard_rules::{PointId, PointKind, Quality, defaults};

fn warnings(events: &[Event]) -> Vec<(WarningScope, Grade, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Warning(w) => Some((w.scope.clone(), w.to, secs(w.time))),
            _ => None,
        })
        .collect()
}

fn ent(code: &str) -> WarningScope {
    WarningScope::Enterprise { code: code.into() }
}

/// A leak ramps a methane detector from 0 to 60 %LEL over 2 minutes (0.5 %LEL/s), one
/// reading a second, default gas on-delay (2 s). Level-1 (25) is crossed at 50 s and must
/// be raised at 52 s; level-2 (50) is crossed at 100 s and must be raised at 102 s.
#[test]
fn leak_ramp_gives_level1_then_level2_at_the_right_times() {
    let on = defaults::on_delay(PointKind::Combustible).as_secs();
    assert_eq!(on, 2);
    let mut e = engine(vec![gas("GT-101", on)]);
    let mut out = Vec::new();
    for t in 0..=120 {
        let t = f64::from(t);
        e.on_reading(&good(0, 0.5 * t, t), &mut out);
        e.on_tick(at(t + 0.5), &mut out);
    }
    let raised: Vec<(String, f64, Option<f64>)> = alarms(&out)
        .into_iter()
        .filter(|a| a.annunciate)
        .map(|a| (a.alarm.clone(), secs(a.time), a.value))
        .collect();
    assert_eq!(
        raised,
        [
            ("GT-101:H".to_string(), 52.0, Some(26.0)),
            ("GT-101:HH".to_string(), 102.0, Some(51.0)),
        ]
    );
    assert_eq!(
        warnings(&out),
        [
            (ent("E1"), Grade::Blue, 52.0),
            (WarningScope::Park, Grade::Blue, 52.0),
            (ent("E1"), Grade::Yellow, 102.0),
            (WarningScope::Park, Grade::Yellow, 102.0),
        ]
    );
    // The leak is shut off: 60 → 0 %LEL in 1 min. HH returns below 48, H below 23.
    let mut out = Vec::new();
    for t in 121..=180 {
        let t = f64::from(t);
        e.on_reading(&good(0, 60.0 - (t - 120.0), t), &mut out);
    }
    let returns: Vec<(String, f64)> = alarms(&out)
        .into_iter()
        .filter(|a| a.kind == EventKind::Return)
        .map(|a| (a.alarm.clone(), secs(a.time)))
        .collect();
    assert_eq!(
        returns,
        [
            ("GT-101:HH".to_string(), 133.0),
            ("GT-101:H".to_string(), 158.0)
        ]
    );
    assert_eq!(e.warnings().park, Grade::None);
}

fn detector(tag: &str, device: &str) -> parkguard_rules::Point {
    with(gas(tag, 0), |p| p.device = Some(device.into()))
}

/// A 4-channel detector (one device, four points) loses its link: one root-cause alarm is
/// annunciated; its points' comm-lost and later stale alarms are recorded as suppressed.
#[test]
fn a_detector_going_comm_lost_gives_one_root_cause_alarm() {
    let pts = vec![
        detector("AT-1-CH4", "GDS-1"),
        detector("AT-1-H2S", "GDS-1"),
        detector("AT-1-CO", "GDS-1"),
        detector("AT-1-O2", "GDS-1"),
        detector("AT-2-CH4", "GDS-2"),
    ];
    let mut e = engine(pts);
    let mut out = Vec::new();
    for p in 0..5 {
        e.on_reading(&good(p, 1.0, 0.0), &mut out);
    }
    assert!(out.is_empty());
    // The driver marks all four comm-lost, then stops sending for two minutes.
    for p in 0..4 {
        e.on_reading(&reading(p, f64::NAN, 1.0, Quality::CommLost), &mut out);
    }
    for t in 2..120 {
        let t = f64::from(t);
        e.on_reading(&good(4, 1.0, t), &mut out);
        e.on_tick(at(t), &mut out);
    }
    assert_eq!(annunciated(&out), ["device/GDS-1:COMM_LOST"]);
    let root = alarms(&out)[0];
    assert_eq!(root.source_kind, SourceKind::Device);
    assert_eq!(root.enterprise, "E1");
    // Every point's comm-lost and stale is recorded, suppressed, naming the root cause.
    for tag in ["AT-1-CH4", "AT-1-H2S", "AT-1-CO", "AT-1-O2"] {
        for cond in ["COMM_LOST", "STALE"] {
            let id = format!("{tag}:{cond}");
            assert_eq!(
                path(&out, &id),
                [(
                    EventKind::Activate,
                    AlarmState::Normal,
                    AlarmState::SuppressedByDesign
                )],
                "{id}"
            );
            let ev = alarms(&out).into_iter().find(|a| a.alarm == id).unwrap();
            assert_eq!(ev.suppressed_by.as_deref(), Some("device/GDS-1:COMM_LOST"));
        }
    }
    let view = e.alarm("AT-1-CO:COMM_LOST").unwrap();
    assert_eq!(
        view.suppressed_by.as_deref(),
        Some("device/GDS-1:COMM_LOST")
    );
    // The operator acknowledges the root cause; the link comes back.
    e.command(
        &Command::Acknowledge {
            target: "device/GDS-1".into(),
            user: "op".into(),
            comment: None,
        },
        at(120.0),
        &mut out,
    )
    .unwrap();
    let mut back = Vec::new();
    for p in 0..4 {
        e.on_reading(&good(p, 1.0, 121.0), &mut back);
    }
    assert!(annunciated(&back).is_empty(), "{:?}", annunciated(&back));
    assert_eq!(
        path(&back, "device/GDS-1:COMM_LOST"),
        [(
            EventKind::Return,
            AlarmState::Acknowledged,
            AlarmState::Normal
        )]
    );
    assert!(e.alarms().is_empty(), "{:#?}", e.alarms());
}

/// A controller that freezes behind a live TCP link sends nothing: when all its points are
/// stale, the device alarm is the one annunciated.
#[test]
fn a_frozen_device_gives_one_root_cause_alarm_too() {
    let mut e = engine(vec![
        detector("A", "GDS-9"),
        detector("B", "GDS-9"),
        detector("C", "GDS-9"),
    ]);
    let mut out = Vec::new();
    for p in 0..3 {
        e.on_reading(&good(p, 1.0, 0.0), &mut out);
    }
    for t in 1..10 {
        e.on_tick(at(f64::from(t)), &mut out);
    }
    assert_eq!(annunciated(&out), ["device/GDS-9:COMM_LOST"]);
    // One point alive again: the device answers, so the other two are plain stale alarms.
    let mut out = Vec::new();
    e.on_reading(&good(0, 1.0, 10.0), &mut out);
    assert_eq!(annunciated(&out), ["B:STALE", "C:STALE"]);
}

/// Without a device, a point's own comm-lost is the alarm, and it is the root cause of the
/// stale alarm that follows when nothing more arrives (an MQTT source gone silent).
#[test]
fn a_point_without_device_alarms_itself() {
    let mut e = engine(vec![gas("X", 0)]);
    let mut out = Vec::new();
    e.on_reading(&good(0, 1.0, 0.0), &mut out);
    e.on_reading(&reading(0, 0.0, 1.0, Quality::CommLost), &mut out);
    for t in 2..30 {
        e.on_tick(at(f64::from(t)), &mut out);
    }
    assert_eq!(annunciated(&out), ["X:COMM_LOST"]);
    let stale = alarms(&out)
        .into_iter()
        .find(|a| a.alarm == "X:STALE")
        .unwrap();
    assert_eq!(stale.to, AlarmState::SuppressedByDesign);
    assert_eq!(stale.suppressed_by.as_deref(), Some("X:COMM_LOST"));
    let mut back = Vec::new();
    e.on_reading(&good(0, 1.0, 30.0), &mut back);
    assert!(annunciated(&back).is_empty());
    assert_eq!(
        path(&back, "X:STALE"),
        [
            (
                EventKind::Return,
                AlarmState::SuppressedByDesign,
                AlarmState::SuppressedByDesign
            ),
            (
                EventKind::Unsuppress,
                AlarmState::SuppressedByDesign,
                AlarmState::Normal
            ),
        ]
    );
    assert_eq!(
        e.alarm("X:COMM_LOST").unwrap().state,
        AlarmState::ReturnedUnacknowledged
    );
    assert_eq!(e.alarm("X:STALE").unwrap().state, AlarmState::Normal);
}

fn vote_engine(policy: BadQualityVote) -> Engine {
    let pts = vec![
        gas("D1", 0),
        gas("D2", 0),
        gas("D3", 0),
        with(gas("D4", 0), |p| p.area = Some("U2".into())),
    ];
    let t = table(pts);
    let groups = validate_vote_groups(
        &[VoteGroupConfig {
            id: "U1-GAS".into(),
            name: None,
            members: vec!["D1".into(), "D2".into(), "D3".into()],
            k: 2,
            bad_quality: policy,
        }],
        &t,
    )
    .expect("the test group is valid");
    Engine::new(t, EngineConfig::default(), groups)
}

#[test]
fn two_of_three_voting() {
    let mut e = vote_engine(BadQualityVote::Ignore);
    let mut out = Vec::new();
    for p in 0..3 {
        e.on_reading(&good(p, 1.0, 0.0), &mut out);
    }
    e.on_reading(&good(0, 30.0, 1.0), &mut out);
    assert_eq!(annunciated(&out), ["D1:H"], "one detector is not a vote");
    e.on_reading(&good(1, 30.0, 2.0), &mut out);
    assert_eq!(annunciated(&out), ["D1:H", "D2:H", "group/U1-GAS:VOTE_L1"]);
    let v = alarms(&out)
        .into_iter()
        .find(|a| a.alarm == "group/U1-GAS:VOTE_L1")
        .unwrap();
    assert_eq!((v.value, v.limit, v.level), (Some(2.0), Some(2.0), Some(1)));
    assert_eq!(secs(v.time), 2.0);
    // Level-2 needs two at level-2.
    e.on_reading(&good(0, 55.0, 3.0), &mut out);
    assert!(!annunciated(&out).contains(&"group/U1-GAS:VOTE_L2".to_string()));
    e.on_reading(&good(2, 60.0, 4.0), &mut out);
    assert!(annunciated(&out).contains(&"group/U1-GAS:VOTE_L2".to_string()));
    // A level-2 vote makes the enterprise orange.
    assert_eq!(
        e.warnings().enterprises,
        [("E1".to_string(), Grade::Orange)]
    );
    // Back to clean air: the group returns.
    for p in 0..3 {
        e.on_reading(&good(p, 0.0, 5.0), &mut out);
    }
    assert!(!e.alarm("group/U1-GAS:VOTE_L1").unwrap().active);
    assert!(!e.alarm("group/U1-GAS:VOTE_L2").unwrap().active);
}

#[test]
fn bad_quality_members_vote_as_configured() {
    for (policy, want_vote) in [
        (BadQualityVote::Trip, true),
        (BadQualityVote::Ignore, false),
    ] {
        let mut e = vote_engine(policy);
        let mut out = Vec::new();
        for p in 0..3 {
            e.on_reading(&good(p, 1.0, 0.0), &mut out);
        }
        e.on_reading(&reading(2, 0.0, 1.0, Quality::Fault), &mut out);
        e.on_reading(&good(0, 30.0, 2.0), &mut out);
        let voted = annunciated(&out).contains(&"group/U1-GAS:VOTE_L1".to_string());
        assert_eq!(voted, want_vote, "{policy:?}");
    }
    // Stale counts as bad too.
    let mut e = vote_engine(BadQualityVote::Trip);
    let mut out = Vec::new();
    for p in 0..4 {
        e.on_reading(&good(p, 1.0, 0.0), &mut out);
    }
    for t in 1..=5 {
        e.on_reading(&good(0, 1.0, f64::from(t)), &mut out);
        e.on_reading(&good(1, 1.0, f64::from(t)), &mut out);
        e.on_tick(at(f64::from(t)), &mut out);
    }
    assert!(!annunciated(&out).contains(&"group/U1-GAS:VOTE_L1".to_string()));
    e.on_reading(&good(0, 30.0, 6.0), &mut out);
    assert!(annunciated(&out).contains(&"group/U1-GAS:VOTE_L1".to_string()));
}

#[test]
fn an_out_of_service_member_does_not_vote() {
    let mut e = vote_engine(BadQualityVote::Ignore);
    let mut out = Vec::new();
    e.command(
        &Command::RemoveFromService {
            target: "D3".into(),
            user: "eng".into(),
            reason: "bump test WO-12".into(),
        },
        at(0.0),
        &mut out,
    )
    .unwrap();
    e.on_reading(&good(0, 30.0, 1.0), &mut out);
    e.on_reading(&good(2, 30.0, 1.0), &mut out);
    assert!(!e.alarm("group/U1-GAS:VOTE_L1").unwrap().active);
    e.command(
        &Command::ReturnToService {
            target: "D3".into(),
            user: "eng".into(),
            comment: None,
        },
        at(2.0),
        &mut out,
    )
    .unwrap();
    // Back in service with its gas still present: it alarms and votes at once.
    assert_eq!(e.alarm("D3:H").unwrap().state, AlarmState::Unacknowledged);
    assert!(e.alarm("group/U1-GAS:VOTE_L1").unwrap().active);
}

#[test]
fn vote_group_validation() {
    let t = table(vec![
        gas("D1", 0),
        gas("D2", 0),
        with(gas("Z1", 0), |p| p.enterprise = "E2".into()),
    ]);
    let cfg = |id: &str, members: &[&str], k| VoteGroupConfig {
        id: id.into(),
        name: None,
        members: members.iter().map(|s| s.to_string()).collect(),
        k,
        bad_quality: BadQualityVote::Trip,
    };
    let errs = validate_vote_groups(
        &[
            cfg("G", &["D1", "D2"], 3),
            cfg("G", &["D1", "NOPE", "D1"], 1),
            cfg("a:b", &["D1", "Z1"], 2),
        ],
        &t,
    )
    .unwrap_err();
    let got: Vec<(usize, &str)> = errs.iter().map(|(i, e)| (*i, e.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (0, "k"),
            (1, "id"),
            (1, "members.1"),
            (1, "members.2"),
            (2, "id"),
            (2, "members.1")
        ]
    );
}

#[test]
fn warnings_spread_to_red() {
    let pts = vec![
        gas("A1", 0),
        with(gas("A2", 0), |p| p.area = Some("U2".into())),
        with(gas("B1", 0), |p| p.enterprise = "E2".into()),
        with(gas("T1", 0), |p| {
            p.enterprise = "E3".into();
            p.kind = PointKind::Toxic;
        }),
    ];
    let mut e = engine(pts);
    let mut out = Vec::new();
    e.on_reading(&good(0, 55.0, 0.0), &mut out);
    assert_eq!(e.warnings().park, Grade::Yellow);
    e.on_reading(&good(1, 55.0, 1.0), &mut out);
    // Level-2 in two areas of E1: spreading → red enterprise, red park.
    assert_eq!(e.warnings().enterprises[0], ("E1".to_string(), Grade::Red));
    assert_eq!(e.warnings().park, Grade::Red);
    e.on_reading(&good(1, 0.0, 2.0), &mut out);
    e.on_reading(&good(0, 0.0, 2.0), &mut out);
    assert_eq!(e.warnings().park, Grade::None);
    // A toxic level-2 alone is orange; with a second enterprise at orange the park is red.
    e.on_reading(&good(3, 60.0, 3.0), &mut out);
    assert_eq!(e.warnings().park, Grade::Orange);
    // Out of service does not count.
    e.command(
        &Command::RemoveFromService {
            target: "T1".into(),
            user: "eng".into(),
            reason: "calibration WO-3".into(),
        },
        at(4.0),
        &mut out,
    )
    .unwrap();
    assert_eq!(e.warnings().park, Grade::None);
    let w = warnings(&out);
    assert_eq!(w.last().unwrap(), &(WarningScope::Park, Grade::None, 4.0));
}

/// A restart restores alarm states from the journal: an unacknowledged alarm is not
/// forgotten, an acknowledged one is not announced again, ids continue.
#[test]
fn restart_restores_states_from_persisted_events() {
    let pts = || vec![gas("G1", 0), gas("G2", 0), gas("G3", 0)];
    let mut a = engine(pts());
    let mut journal = Vec::new();
    a.on_reading(&good(0, 30.0, 0.0), &mut journal); // G1:H unack
    a.on_reading(&good(1, 30.0, 0.0), &mut journal); // G2:H, acked below
    a.on_reading(&good(2, 10.0, 0.0), &mut journal);
    a.command(
        &Command::Acknowledge {
            target: "G2:H".into(),
            user: "op".into(),
            comment: None,
        },
        at(1.0),
        &mut journal,
    )
    .unwrap();
    a.command(
        &Command::Shelve {
            alarm: "G3:H".into(),
            duration: std::time::Duration::from_secs(600),
            user: "op".into(),
            reason: "sensor swap".into(),
        },
        at(2.0),
        &mut journal,
    )
    .unwrap();
    // Through JSON, as the journal stores them.
    let json: Vec<String> = journal
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let back: Vec<Event> = json
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(back, journal);

    let mut b = engine(pts());
    let rep = b.restore(&back);
    assert_eq!(rep.applied, 4);
    assert!(rep.unknown.is_empty());
    assert_eq!(rep.next_event_id, a.next_event_id());
    assert_eq!(b.alarm("G1:H").unwrap().state, AlarmState::Unacknowledged);
    assert_eq!(b.alarm("G2:H").unwrap().state, AlarmState::Acknowledged);
    assert_eq!(b.alarm("G3:H").unwrap().shelved_until, Some(at(602.0)));
    assert_eq!(b.warnings(), a.warnings());
    let mut out = Vec::new();
    b.on_reading(&good(0, 31.0, 100.0), &mut out);
    b.on_reading(&good(1, 31.0, 100.0), &mut out);
    b.on_reading(&good(2, 10.0, 100.0), &mut out);
    assert!(
        out.is_empty(),
        "nothing re-announced, nothing forgotten: {out:#?}"
    );
    // Conditions that cleared while down return normally; the shelve still ends on time.
    b.on_reading(&good(1, 0.0, 101.0), &mut out);
    b.on_tick(at(602.0), &mut out);
    assert_eq!(
        path(&out, "G2:H"),
        [(
            EventKind::Return,
            AlarmState::Acknowledged,
            AlarmState::Normal
        )]
    );
    assert_eq!(
        path(&out, "G3:H"),
        [(EventKind::Unshelve, AlarmState::Shelved, AlarmState::Normal)]
    );
    assert!(out.iter().all(|e| e.id() >= rep.next_event_id));
    assert_eq!(b.alarm("G1:H").unwrap().state, AlarmState::Unacknowledged);
    // A restored suppression whose root cause is gone is released by the next reading.
    let mut d = engine(vec![gas("X", 0)]);
    let mut j = Vec::new();
    d.on_reading(&good(0, 1.0, 0.0), &mut j);
    d.on_reading(&reading(0, 0.0, 1.0, Quality::CommLost), &mut j);
    d.on_tick(at(10.0), &mut j);
    let mut r = engine(vec![gas("X", 0)]);
    r.restore(&j);
    assert_eq!(
        r.alarm("X:STALE").unwrap().state,
        AlarmState::SuppressedByDesign
    );
    let mut out = Vec::new();
    r.on_reading(&good(0, 1.0, 11.0), &mut out);
    assert_eq!(r.alarm("X:STALE").unwrap().state, AlarmState::Normal);
    r.on_tick(at(20.0), &mut out);
    assert_eq!(
        annunciated(&out),
        ["X:STALE"],
        "a later stale is announced again"
    );
    // A journal naming a point that no longer exists is reported, not fatal.
    let mut c = engine(vec![gas("G1", 0)]);
    let rep = c.restore(&back);
    assert_eq!(rep.unknown, ["G2:H", "G3:H"]);
}

#[test]
fn drill_engine_stamps_every_event() {
    let cfg = EngineConfig {
        drill: Some("D-2026-05".into()),
        ..Default::default()
    };
    let mut e = engine_with(vec![gas("G1", 0)], cfg, Vec::new());
    let mut out = Vec::new();
    e.on_reading(&good(0, 60.0, 0.0), &mut out);
    assert!(!out.is_empty());
    for ev in &out {
        let d = match ev {
            Event::Alarm(a) => &a.drill,
            Event::Warning(w) => &w.drill,
        };
        assert_eq!(d.as_deref(), Some("D-2026-05"));
    }
    assert_eq!(e.snapshot().drill.as_deref(), Some("D-2026-05"));
    assert_eq!(e.snapshot().points[0].id, PointId(0));
}

/// parkguard's own spool cannot write: a high-priority system alarm in the operators' list,
/// acknowledged like any alarm (by id or by source), returned when the spool writes again,
/// and restored from the journal after a restart.
#[test]
fn system_alarm_is_raised_acknowledged_returned_and_restored() {
    use parkguard_rules::Priority;
    use parkguard_rules::alarm::SystemAlarm;
    let mut e = engine(vec![gas("GT-101", 0)]);
    let mut out = Vec::new();
    let raise = |active| Command::System {
        alarm: SystemAlarm::SpoolAppendFailing,
        active,
        value: Some(3.0),
        detail: Some("No space left on device".into()),
    };
    assert_eq!(e.command(&raise(true), at(10.0), &mut out), Ok(1));
    let mut journal: Vec<Event> = out.clone();
    let ev = alarms(&out);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].alarm, "system/spool:APPEND_FAILING");
    assert_eq!(SystemAlarm::SpoolAppendFailing.alarm_id(), ev[0].alarm);
    assert_eq!(ev[0].source, "spool");
    assert_eq!(ev[0].source_kind, SourceKind::System);
    assert_eq!(ev[0].priority, Priority::High);
    assert!(ev[0].annunciate && ev[0].active);
    assert_eq!(ev[0].comment.as_deref(), Some("No space left on device"));
    assert_eq!(ev[0].value, Some(3.0));
    // Raising it again changes nothing.
    out.clear();
    assert_eq!(e.command(&raise(true), at(11.0), &mut out), Ok(0));
    assert!(out.is_empty(), "{out:?}");
    let a = e.alarm("system/spool:APPEND_FAILING").expect("in the list");
    assert_eq!(a.state, AlarmState::Unacknowledged);
    assert!(
        e.alarms()
            .iter()
            .any(|a| a.alarm == "system/spool:APPEND_FAILING")
    );

    // Acknowledged by source, like a tag.
    let ack = Command::Acknowledge {
        target: "system/spool".into(),
        user: "operator".into(),
        comment: None,
    };
    assert_eq!(e.command(&ack, at(12.0), &mut out), Ok(1));
    assert_eq!(
        e.alarm("system/spool:APPEND_FAILING").unwrap().state,
        AlarmState::Acknowledged
    );
    journal.extend(out.iter().cloned());

    // A restart restores it from the journal.
    let mut restarted = engine(vec![gas("GT-101", 0)]);
    restarted.restore(&journal);
    assert_eq!(
        restarted
            .alarm("system/spool:APPEND_FAILING")
            .unwrap()
            .state,
        AlarmState::Acknowledged
    );

    // The spool writes again: the acknowledged alarm returns to normal.
    out.clear();
    assert_eq!(e.command(&raise(false), at(20.0), &mut out), Ok(1));
    assert_eq!(
        e.alarm("system/spool:APPEND_FAILING").unwrap().state,
        AlarmState::Normal
    );
    assert!(e.alarms().is_empty(), "{:?}", e.alarms());
}
