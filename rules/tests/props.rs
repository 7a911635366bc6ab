//! Invariants of the engine under random inputs (proptest).

mod common;

use common::*;
use parkguard_rules::alarm::{AlarmState, EventKind, is_legal, state_fits_condition};
use parkguard_rules::engine::{
    BadQualityVote, Command, Engine, EngineConfig, Event, VoteGroupConfig, validate_vote_groups,
};
use parkguard_rules::{Quality, Timestamp};
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

fn activations(events: &[Event], alarm: &str) -> Vec<Timestamp> {
    alarms(events)
        .into_iter()
        .filter(|a| a.alarm == alarm && a.kind == EventKind::Activate)
        .map(|a| a.time)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A value oscillating inside the deadband (limit 25, deadband 2: between 23 and 27)
    /// never produces more than one activation, whatever the delays.
    #[test]
    fn oscillation_inside_the_deadband_activates_at_most_once(
        values in prop::collection::vec(23.0f64..27.0, 1..300),
        on in 0u64..4,
        off in 0u64..4,
        ticks in any::<bool>(),
    ) {
        let p = with(gas("G1", on), |p| p.limits.off_delay = Duration::from_secs(off));
        let mut e = engine(vec![p]);
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let t = i as f64 * 0.7;
            e.on_reading(&good(0, *v, t), &mut out);
            if ticks {
                e.on_tick(at(t + 0.35), &mut out);
            }
        }
        prop_assert!(activations(&out, "G1:H").len() <= 1);
        prop_assert!(path(&out, "G1:H").iter().all(|s| s.0 != EventKind::Return));
    }

    /// More generally: between two activations the value went below limit − deadband.
    #[test]
    fn re_activation_needs_a_clear_past_the_deadband(
        values in prop::collection::vec(0.0f64..40.0, 1..300),
    ) {
        let mut e = engine(vec![gas("G1", 0)]);
        let mut out = Vec::new();
        let mut lows_since_activation = 0;
        for (i, v) in values.iter().enumerate() {
            let before = activations(&out, "G1:H").len();
            e.on_reading(&good(0, *v, i as f64), &mut out);
            if activations(&out, "G1:H").len() > before {
                prop_assert!(before == 0 || lows_since_activation > 0);
                lows_since_activation = 0;
            }
            if *v < 23.0 {
                lows_since_activation += 1;
            }
        }
    }

    /// On-delay never raises early: every activation is preceded by good readings at or
    /// above the limit for at least the on-delay, without a break.
    #[test]
    fn on_delay_never_raises_early(
        steps in prop::collection::vec((1u64..2000, 20.0f64..30.0, 0u8..10, any::<bool>()), 1..200),
        on_ms in 0u64..5000,
    ) {
        let p = with(gas("G1", 0), |p| p.limits.on_delay = Duration::from_millis(on_ms));
        let mut e = engine(vec![p]);
        let mut out = Vec::new();
        let mut t = 0.0;
        let mut log: Vec<(f64, bool)> = Vec::new(); // (time, good and violating)
        for (dt_ms, v, q, tick) in steps {
            t += dt_ms as f64 / 1000.0;
            if tick {
                e.on_tick(at(t), &mut out);
            } else {
                let quality = if q == 0 { Quality::Fault } else { Quality::Good };
                e.on_reading(&reading(0, v, t, quality), &mut out);
                log.push((t, quality.is_good() && v >= 25.0));
            }
        }
        for ta in activations(&out, "G1:H") {
            let ta = secs(ta);
            let before: Vec<_> = log.iter().filter(|(lt, _)| *lt <= ta + 1e-9).collect();
            let run_start = before.iter().rev().take_while(|(_, viol)| *viol).last();
            prop_assert!(run_start.is_some(), "activation at {ta} without a violating reading");
            let t1 = run_start.unwrap().0;
            prop_assert!(ta - t1 >= on_ms as f64 / 1000.0 - 1e-6,
                "raised at {ta}, violated since {t1}, on-delay {on_ms} ms");
        }
    }

    /// Every alarm's event sequence is a legal path of the ISA-18.2 diagram, states agree
    /// with conditions, ids increase, and replaying the same inputs gives identical events.
    #[test]
    fn every_event_sequence_is_a_legal_isa_path_and_replay_is_identical(
        ops in prop::collection::vec(op(), 1..250),
    ) {
        let events = run_ops(&ops);
        let mut last_id = 0;
        let mut state: HashMap<&str, AlarmState> = HashMap::new();
        for ev in &events {
            prop_assert!(ev.id() > last_id, "ids increase");
            last_id = ev.id();
            let Event::Alarm(a) = ev else { continue };
            let from = *state.get(a.alarm.as_str()).unwrap_or(&AlarmState::Normal);
            prop_assert_eq!(a.from, from, "{} chain broken at {:?}", &a.alarm, a);
            prop_assert!(is_legal(a.kind, a.from, a.to), "illegal {:?}", a);
            prop_assert!(state_fits_condition(a.to, a.active), "state/condition {:?}", a);
            prop_assert_eq!(a.annunciate, a.to == AlarmState::Unacknowledged && a.from != AlarmState::Unacknowledged);
            if a.to == AlarmState::SuppressedByDesign {
                prop_assert!(a.suppressed_by.is_some());
            }
            state.insert(a.alarm.as_str(), a.to);
        }
        let again = run_ops(&ops);
        prop_assert_eq!(&again, &events);
        let j1 = serde_json::to_string(&events).unwrap();
        let j2 = serde_json::to_string(&again).unwrap();
        prop_assert_eq!(j1, j2);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Read {
        point: u32,
        value: f64,
        quality: Quality,
        dt_ms: u64,
    },
    Tick {
        dt_ms: u64,
    },
    Cmd {
        which: u8,
        target: usize,
        secs: u64,
    },
}

const TARGETS: &[&str] = &[
    "G1:H",
    "G1:HH",
    "G1:COMM_LOST",
    "G1:STALE",
    "G2:H",
    "G2:FAULT",
    "G3:H",
    "G3:COMM_LOST",
    "G3:STALE",
    "group/V:VOTE_L1",
    "group/V:VOTE_L2",
    "device/D:COMM_LOST",
    "G1",
    "G3",
    "device/D",
    "group/V",
    "NOPE",
];

fn op() -> impl Strategy<Value = Op> {
    let quality = prop_oneof![
        6 => Just(Quality::Good),
        1 => Just(Quality::CommLost),
        1 => Just(Quality::Fault),
        1 => Just(Quality::OutOfRange),
    ];
    prop_oneof![
        6 => (0u32..3, prop_oneof![Just(0.0), Just(24.0), Just(26.0), Just(30.0), Just(55.0), Just(120.0)], quality, 0u64..3000)
            .prop_map(|(point, value, quality, dt_ms)| Op::Read { point, value, quality, dt_ms }),
        2 => (0u64..5000).prop_map(|dt_ms| Op::Tick { dt_ms }),
        2 => (0u8..6, 0..TARGETS.len(), prop_oneof![Just(0u64), Just(5), Just(60), Just(40_000)])
            .prop_map(|(which, target, secs)| Op::Cmd { which, target, secs }),
    ]
}

fn op_engine() -> Engine {
    let pts = vec![
        with(gas("G1", 1), |p| p.device = Some("D".into())),
        with(gas("G2", 0), |p| p.device = Some("D".into())),
        gas("G3", 2),
    ];
    let t = table(pts);
    let groups = validate_vote_groups(
        &[VoteGroupConfig {
            id: "V".into(),
            name: None,
            members: vec!["G1".into(), "G2".into(), "G3".into()],
            k: 2,
            bad_quality: BadQualityVote::Trip,
        }],
        &t,
    )
    .expect("the test group is valid");
    let cfg = EngineConfig {
        re_alarm_s: 20,
        ..Default::default()
    };
    Engine::new(t, cfg, groups)
}

fn run_ops(ops: &[Op]) -> Vec<Event> {
    let mut e = op_engine();
    let mut out = Vec::new();
    let mut t = 0.0;
    for o in ops {
        match o {
            Op::Read {
                point,
                value,
                quality,
                dt_ms,
            } => {
                t += *dt_ms as f64 / 1000.0;
                e.on_reading(&reading(*point, *value, t, *quality), &mut out);
            }
            Op::Tick { dt_ms } => {
                t += *dt_ms as f64 / 1000.0;
                e.on_tick(at(t), &mut out);
            }
            Op::Cmd {
                which,
                target,
                secs,
            } => {
                let target = TARGETS[*target].to_string();
                let user = "op".to_string();
                let cmd = match which {
                    0 => Command::Acknowledge {
                        target,
                        user,
                        comment: None,
                    },
                    1 => Command::Silence { user },
                    2 => Command::Shelve {
                        alarm: target,
                        duration: Duration::from_secs(*secs),
                        user,
                        reason: "test".into(),
                    },
                    3 => Command::Unshelve {
                        alarm: target,
                        user,
                        comment: None,
                    },
                    4 => Command::RemoveFromService {
                        target,
                        user,
                        reason: "WO".into(),
                    },
                    _ => Command::ReturnToService {
                        target,
                        user,
                        comment: None,
                    },
                };
                let before = out.len();
                if e.command(&cmd, at(t), &mut out).is_err() {
                    assert_eq!(out.len(), before, "a refused command emits nothing");
                }
            }
        }
    }
    out
}
