//! Escalation through the daemon's wiring: the journal thread's exact path
//! (`Journal::append_with` + `Linkage::enqueue` in one transaction, `Linkage::wake` after
//! the commit) on a real SQLite journal, under a simulated clock. T1 = 2 min, T2 = 5 min:
//! the right channels get outbox rows at the right times, an acknowledgement stops it, and
//! a restart (a new `Linkage` on the same database) neither re-sends nor forgets a step.
//! And 消警: a closure of a returned and acknowledged alarm is recorded and queued for the
//! alarm's channels once, a second one is refused.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use parkguard::linkage::close::{
    AlarmFacts, CLOSURE_ID_BASE, CloseError, ClosureRequest, DataSnapshot, Sample, validate_closure,
};
use parkguard::linkage::escalate::{EscalationConfig, Policy};
use parkguard::linkage::escalation_log::{self, ESCALATION_ID_BASE};
use parkguard::linkage::outbox;
use parkguard::linkage::route::{RouteConfig, Router};
use parkguard::linkage::wire::Linkage;
use parkguard::store::journal::Journal;
use parkguard::topology::record_of;
use parkguard_rules::alarm::{AlarmEvent, AlarmState, Condition, EventKind, Priority, SourceKind};
use parkguard_rules::engine::Event;
use parkguard_rules::{PointTable, Timestamp};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const ALARM: &str = "GT-101:HH";

fn flags() -> BTreeMap<String, bool> {
    [
        ("enterprise-duty", false),
        ("bureau-desk", false),
        ("bureau-leaders", false),
        ("drill-room", true),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d))
    .collect()
}

fn policy() -> Policy {
    let c: EscalationConfig = serde_json::from_value(serde_json::json!({
        "name": "standard",
        "step": [
            { "after": "2m", "channels": ["bureau-desk"], "label": "园区应急管理局值班室" },
            { "after": "5m", "channels": ["bureau-leaders"], "label": "局领导" }
        ]
    }))
    .unwrap();
    c.validate(&flags()).unwrap()
}

fn linkage(path: &Path) -> Linkage {
    linkage_routing_to(path, &["enterprise-duty"])
}

/// A linkage whose one route (policy "standard") names `channels`.
fn linkage_routing_to(path: &Path, channels: &[&str]) -> Linkage {
    let route: RouteConfig = serde_json::from_value(serde_json::json!({
        "channels": channels, "escalation": "standard"
    }))
    .unwrap();
    let route = route.validate(0, &flags(), &["standard".into()]).unwrap();
    Linkage::new(
        Router::new(vec![route], flags()),
        vec![policy()],
        HashMap::new(),
        Arc::new(PointTable::new(Vec::new()).unwrap()),
        HashMap::from([("E001".to_string(), "甲化工".to_string())]),
        path,
    )
    .unwrap()
}

fn event(id: u64, kind: EventKind, to: AlarmState, t: Timestamp) -> Event {
    Event::Alarm(AlarmEvent {
        id,
        alarm: ALARM.into(),
        source: "GT-101".into(),
        source_kind: SourceKind::Point,
        enterprise: "E001".into(),
        area: None,
        condition: Condition::Hh,
        level: Some(2),
        priority: Priority::High,
        kind,
        from: AlarmState::Normal,
        to,
        active: true,
        annunciate: kind == EventKind::Activate,
        value: Some(32.5),
        limit: Some(25.0),
        unit: None,
        time: t,
        source_time: None,
        user: None,
        comment: None,
        shelved_until: None,
        suppressed_by: None,
        drill: None,
    })
}

/// A drill's copy of [`event`]: the same alarm, raised by drill `drill`'s own engine.
fn drill_event(id: u64, drill: &str, kind: EventKind, to: AlarmState, t: Timestamp) -> Event {
    let Event::Alarm(mut a) = event(id, kind, to, t) else {
        unreachable!("event() makes alarm events")
    };
    a.drill = Some(drill.into());
    Event::Alarm(a)
}

/// A linkage whose route also names the drill room (drill events go there only).
fn linkage_with_drill_room(path: &Path) -> Linkage {
    linkage_routing_to(path, &["enterprise-duty", "drill-room"])
}

/// What the journal thread does with one batch (an empty batch is a tick).
fn journal_batch(j: &mut Journal, l: &Linkage, events: &[Event], now: Timestamp) {
    let records: Vec<_> = events.iter().map(record_of).collect();
    let mut woken = Vec::new();
    j.append_with(&records, |tx| {
        woken = l.enqueue(tx, events, now)?;
        Ok(())
    })
    .unwrap();
    l.wake(&woken);
}

/// (event id, channel) of every outbox row, in queue order.
fn rows(path: &Path) -> Vec<(u64, String)> {
    let conn = outbox::open(path).unwrap();
    let mut out = Vec::new();
    for ch in [
        "enterprise-duty",
        "bureau-desk",
        "bureau-leaders",
        "drill-room",
    ] {
        for r in outbox::channel_rows(&conn, ch).unwrap() {
            out.push((r.event_id, r.channel));
        }
    }
    out.sort();
    out
}

/// Tick every 10 s of simulated time from `from` to `to` (seconds after t0); return the
/// new (seconds, channel) rows as they appeared.
fn tick(
    j: &mut Journal,
    l: &Linkage,
    path: &Path,
    t0: Timestamp,
    from: u64,
    to: u64,
) -> Vec<(u64, String)> {
    let mut seen = rows(path);
    let mut got = Vec::new();
    let mut s = from;
    while s < to {
        s += 10;
        journal_batch(j, l, &[], t0 + Duration::from_secs(s));
        let now = rows(path);
        for r in &now {
            if !seen.contains(r) {
                got.push((s, r.1.clone()));
            }
        }
        seen = now;
    }
    got
}

#[test]
fn t1_2min_t2_5min_through_the_journal_then_ack_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let mut j = Journal::open(&path).unwrap();
    let l = linkage(&path);
    let t0 = Timestamp::from_secs(1_795_688_531);

    journal_batch(
        &mut j,
        &l,
        &[event(
            1,
            EventKind::Activate,
            AlarmState::Unacknowledged,
            t0,
        )],
        t0,
    );
    assert_eq!(rows(&path), [(1, "enterprise-duty".to_string())]);
    assert_eq!(l.escalating(), [ALARM]);

    let got = tick(&mut j, &l, &path, t0, 0, 6 * 60);
    assert_eq!(
        got,
        [
            (120, "bureau-desk".to_string()),
            (300, "bureau-leaders".to_string())
        ],
        "T1 = 2 min → bureau desk, T2 = 5 min → leaders, nothing else"
    );
    let steps = escalation_log::steps(j.connection(), ALARM).unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].id, ESCALATION_ID_BASE);
    assert_eq!(steps[0].label, "园区应急管理局值班室");
    assert_eq!(steps[1].channels, ["bureau-leaders"]);
    // The step notification says which level it is, under its own idempotency key.
    let conn = outbox::open(&path).unwrap();
    let payload: String = conn
        .query_row(
            "SELECT payload FROM outbox WHERE channel = 'bureau-desk'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let n: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(n["event_id"], ESCALATION_ID_BASE);
    assert_eq!(n["alarm_id"], ALARM);
    assert!(
        n["message_zh"]
            .as_str()
            .unwrap()
            .starts_with("【升级 第1级 园区应急管理局值班室】"),
        "{n}"
    );

    // Acknowledge: the escalation stops, in the same transaction as the ack.
    let ack = event(
        2,
        EventKind::Acknowledge,
        AlarmState::Acknowledged,
        t0 + Duration::from_secs(370),
    );
    journal_batch(&mut j, &l, &[ack], t0 + Duration::from_secs(370));
    assert!(l.escalating().is_empty());
    assert!(escalation_log::load(j.connection()).unwrap().is_empty());
    assert!(tick(&mut j, &l, &path, t0, 370, 30 * 60).is_empty());
}

#[test]
fn ack_before_t1_means_no_escalation_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let mut j = Journal::open(&path).unwrap();
    let l = linkage(&path);
    let t0 = Timestamp::from_secs(1_795_688_531);
    journal_batch(
        &mut j,
        &l,
        &[event(
            1,
            EventKind::Activate,
            AlarmState::Unacknowledged,
            t0,
        )],
        t0,
    );
    assert!(tick(&mut j, &l, &path, t0, 0, 110).is_empty());
    let t = t0 + Duration::from_secs(115);
    journal_batch(
        &mut j,
        &l,
        &[event(
            2,
            EventKind::Acknowledge,
            AlarmState::Acknowledged,
            t,
        )],
        t,
    );
    assert!(tick(&mut j, &l, &path, t0, 115, 20 * 60).is_empty());
    assert_eq!(rows(&path), [(1, "enterprise-duty".to_string())]);
}

#[test]
fn restart_neither_resends_nor_forgets_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let t0 = Timestamp::from_secs(1_795_688_531);
    {
        let mut j = Journal::open(&path).unwrap();
        let l = linkage(&path);
        journal_batch(
            &mut j,
            &l,
            &[event(
                1,
                EventKind::Activate,
                AlarmState::Unacknowledged,
                t0,
            )],
            t0,
        );
        let got = tick(&mut j, &l, &path, t0, 0, 150);
        assert_eq!(got, [(120, "bureau-desk".to_string())]);
    } // the daemon stops at 2.5 min
    // ... and comes back at 4 min: T1 is not re-sent, T2 still comes at 5 min.
    let mut j = Journal::open(&path).unwrap();
    let l = linkage(&path);
    assert_eq!(l.escalating(), [ALARM]);
    let got = tick(&mut j, &l, &path, t0, 240, 10 * 60);
    assert_eq!(got, [(300, "bureau-leaders".to_string())]);
    // Down past T2 entirely: the missed level goes out once at the first tick after.
    drop(l);
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = dir2.path().join("journal.sqlite");
    {
        let mut j2 = Journal::open(&path2).unwrap();
        let l2 = linkage(&path2);
        journal_batch(
            &mut j2,
            &l2,
            &[event(
                1,
                EventKind::Activate,
                AlarmState::Unacknowledged,
                t0,
            )],
            t0,
        );
    }
    let mut j2 = Journal::open(&path2).unwrap();
    let l2 = linkage(&path2);
    let got = tick(&mut j2, &l2, &path2, t0, 590, 700);
    assert_eq!(
        got,
        [
            (600, "bureau-desk".to_string()),
            (600, "bureau-leaders".to_string())
        ]
    );
}

#[test]
fn closure_is_recorded_and_published_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let mut j = Journal::open(&path).unwrap();
    let l = linkage(&path);
    let t0 = Timestamp::from_secs(1_795_688_531);
    let raise = event(1, EventKind::Activate, AlarmState::Unacknowledged, t0);
    journal_batch(&mut j, &l, std::slice::from_ref(&raise), t0);
    let t_ack = t0 + Duration::from_secs(60);
    journal_batch(
        &mut j,
        &l,
        &[event(
            2,
            EventKind::Acknowledge,
            AlarmState::Acknowledged,
            t_ack,
        )],
        t_ack,
    );
    let t_rtn = t0 + Duration::from_secs(600);
    let now = t0 + Duration::from_secs(3600);
    let facts = AlarmFacts {
        alarm_id: ALARM.into(),
        raised_at: t0,
        returned_at: Some(t_rtn),
        acked_at: Some(t_ack),
        closed: false,
    };
    let req = ClosureRequest {
        alarm_id: ALARM.into(),
        cause: "法兰垫片老化泄漏".into(),
        action: "更换垫片，复测合格".into(),
        reviewer: "张工".into(),
        snapshot: DataSnapshot {
            unit: "%LEL".into(),
            from: t0 - Duration::from_secs(60),
            to: t_rtn,
            samples: vec![Sample {
                time: t0,
                value: 32.5,
                quality: "good".into(),
            }],
        },
    };
    let closure = validate_closure(&req, &facts, now).unwrap();
    let base = l.notification_of(&raise).unwrap();
    let id = l.close(&path, &closure, t0, &base).unwrap();
    assert_eq!(id, CLOSURE_ID_BASE);
    assert_eq!(
        rows(&path),
        [
            (1, "enterprise-duty".to_string()),
            (CLOSURE_ID_BASE, "enterprise-duty".to_string())
        ]
    );
    let conn = outbox::open(&path).unwrap();
    let payload: String = conn
        .query_row(
            "SELECT payload FROM outbox WHERE event_id = ?1",
            [CLOSURE_ID_BASE as i64],
            |r| r.get(0),
        )
        .unwrap();
    let n: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(n["state"], "closed");
    assert!(
        n["message_zh"].as_str().unwrap().contains("审核人：张工"),
        "{n}"
    );
    assert!(parkguard::linkage::close::is_closed(&conn, ALARM, t0).unwrap());
    match l.close(&path, &closure, t0, &base) {
        Err(CloseError::AlreadyClosed(a)) => assert_eq!(a, ALARM),
        other => panic!("second closure must be refused: {other:?}"),
    }
    assert_eq!(
        rows(&path).len(),
        2,
        "nothing queued for the refused closure"
    );
}

#[test]
fn delivery_status_and_escalation_steps_through_the_api_backend() {
    use parkguard::api::backend::ApiBackend;
    use parkguard::api::engine_backend::{BackendParts, EngineBackend, alarm_num};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let mut j = Journal::open(&path).unwrap();
    let l = linkage(&path);
    let t0 = Timestamp::from_secs(1_795_688_531);
    journal_batch(
        &mut j,
        &l,
        &[event(
            1,
            EventKind::Activate,
            AlarmState::Unacknowledged,
            t0,
        )],
        t0,
    );
    tick(&mut j, &l, &path, t0, 0, 130);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (got, backlog) = rt.block_on(async {
        let table = Arc::new(PointTable::new(Vec::new()).unwrap());
        let engine =
            parkguard_rules::engine::Engine::new(table.clone(), Default::default(), Vec::new());
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let (handle, _join) = parkguard::engine_task::spawn(engine, rx, None, Default::default());
        let backend = EngineBackend::new(BackendParts {
            engine: handle,
            table,
            engine_config: Default::default(),
            journal_path: Some(path.clone()),
            archive_dir: None,
            modbus: None,
            mqtt: Vec::new(),
            linkage: None,
            spool: None,
            influx: [None, None],
        });
        let got = backend.deliveries(alarm_num(ALARM)).await.unwrap();
        let none = backend
            .deliveries(alarm_num("no-such-alarm"))
            .await
            .unwrap();
        assert_eq!(none["deliveries"], serde_json::json!([]));
        (got, backend.outbox().await.unwrap())
    });
    assert_eq!(got["alarm"], ALARM);
    let d = got["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 2, "{got}");
    assert_eq!(d[0]["event_id"], 1);
    assert_eq!(d[0]["channel"], "enterprise-duty");
    assert_eq!(d[0]["status"], "pending", "no worker runs in this test");
    assert_eq!(d[1]["event_id"], ESCALATION_ID_BASE);
    assert_eq!(d[1]["channel"], "bureau-desk");
    assert_eq!(got["escalation"][0]["label"], "园区应急管理局值班室");
    assert_eq!(got["escalation"][0]["step"], 0);
    let channels = backlog["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 2, "{backlog}");
    assert!(channels.iter().all(|c| c["pending"] == 1), "{backlog}");
}

/// Drills escalate too, apart from the real path and only ever to drill channels. The same
/// alarm is raised for real and in two drills at once: the real one escalates to the
/// bureau as configured; the drills' levels go to the drill room (their steps name only
/// production channels, so each level goes where the drill alarm itself went), under their
/// own keys. Acknowledging in one drill stops that drill's escalation alone; a drill that
/// is over takes its escalations with it and starts no new one; a restart resumes none of
/// a drill's.
#[test]
fn a_drill_alarm_escalates_to_drill_channels_only_and_ends_with_its_ack_or_its_drill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let mut j = Journal::open(&path).unwrap();
    let l = linkage_with_drill_room(&path);
    let t0 = Timestamp::from_secs(1_795_688_531);
    let d1 = "drill:d1/GT-101:HH";
    let d2 = "drill:d2/GT-101:HH";
    l.drill_started("d1");
    l.drill_started("d2");
    let raise = |id, drill: Option<&str>, t| match drill {
        Some(d) => drill_event(id, d, EventKind::Activate, AlarmState::Unacknowledged, t),
        None => event(id, EventKind::Activate, AlarmState::Unacknowledged, t),
    };
    journal_batch(
        &mut j,
        &l,
        &[
            raise(1, None, t0),
            raise(2, Some("d1"), t0),
            raise(3, Some("d2"), t0),
        ],
        t0,
    );
    assert_eq!(
        rows(&path),
        [
            (1, "enterprise-duty".to_string()),
            (2, "drill-room".to_string()),
            (3, "drill-room".to_string())
        ],
        "the real alarm to the enterprise, the drills' to the drill room"
    );
    assert_eq!(l.escalating(), [ALARM, d1, d2]);

    // T1 at 2 min: the bureau desk for the real alarm, the drill room for each drill.
    let got = tick(&mut j, &l, &path, t0, 0, 130);
    assert_eq!(
        got,
        [
            (120, "bureau-desk".to_string()),
            (120, "drill-room".to_string()),
            (120, "drill-room".to_string())
        ]
    );
    let steps = escalation_log::steps(j.connection(), d1).unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].channels, ["drill-room"]);
    let conn = outbox::open(&path).unwrap();
    let payload: String = conn
        .query_row(
            "SELECT payload FROM outbox WHERE channel = 'drill-room' AND event_id = ?1",
            [steps[0].id as i64],
            |r| r.get(0),
        )
        .unwrap();
    let n: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(n["drill"], "d1", "{n}");
    assert!(
        n["message_zh"]
            .as_str()
            .unwrap()
            .starts_with("【演练】【升级 第1级 园区应急管理局值班室】未确认报警：甲化工"),
        "{n}"
    );
    assert!(
        n["message_en"]
            .as_str()
            .unwrap()
            .starts_with("[DRILL] [escalation level 1: 园区应急管理局值班室] unacknowledged: "),
        "{n}"
    );

    // Acknowledged in drill d1: its escalation stops, the real one and d2's go on.
    let t = t0 + Duration::from_secs(135);
    journal_batch(
        &mut j,
        &l,
        &[drill_event(
            4,
            "d1",
            EventKind::Acknowledge,
            AlarmState::Acknowledged,
            t,
        )],
        t,
    );
    assert_eq!(l.escalating(), [ALARM, d2]);

    // Drill d2 is stopped: the journal thread is asked to tick at once, and the tick ends
    // its escalation; a late event of d2 starts none. T2 at 5 min reaches the leaders for
    // the real alarm alone.
    l.drill_ended("d2");
    assert!(l.escalation_due(t0 + Duration::from_secs(136)));
    let t = t0 + Duration::from_secs(140);
    journal_batch(&mut j, &l, &[raise(5, Some("d2"), t)], t);
    assert_eq!(l.escalating(), [ALARM]);
    assert!(escalation_log::steps(j.connection(), d2).unwrap().len() == 1);
    let got = tick(&mut j, &l, &path, t0, 140, 310);
    assert_eq!(got, [(300, "bureau-leaders".to_string())]);

    // A drill running when the daemon stops: after the restart (no drill runs) its
    // escalation is dropped at the first tick, before anything of it goes out again.
    l.drill_started("d3");
    let t = t0 + Duration::from_secs(320);
    journal_batch(&mut j, &l, &[raise(6, Some("d3"), t)], t);
    assert_eq!(l.escalating(), [ALARM, "drill:d3/GT-101:HH"]);
    drop(l);
    let l = linkage_with_drill_room(&path);
    assert!(l.escalation_due(t));
    let got = tick(&mut j, &l, &path, t0, 320, 20 * 60);
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(l.escalating(), [ALARM]);
    assert!(
        escalation_log::load(j.connection())
            .unwrap()
            .iter()
            .all(|a| a.base.drill.is_none())
    );
}
