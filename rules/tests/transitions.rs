//! Table-driven tests of every ISA-18.2 transition the engine makes, of the signal
//! processing (deadband, delays, quality, staleness, flatline, rate of change) and of every
//! command error.

mod common;

use common::*;
use parkguard_rules::alarm::{AlarmState, EventKind};
use parkguard_rules::engine::{Command, CommandError, Engine, EngineConfig, Event};
use parkguard_rules::{AlarmLimits, Flatline, PointKind, Quality, RateOfChange, Unit};
use std::time::Duration;

use AlarmState::{
    Acknowledged as A, Normal as N, OutOfService as O, ReturnedUnacknowledged as R, Shelved as S,
    Unacknowledged as U,
};
use EventKind::*;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Good reading (value, t).
    V(f64, f64),
    /// Reading with a bad quality (quality, t).
    Q(Quality, f64),
    /// Tick at t.
    T(f64),
    /// Acknowledge the alarm under test at t.
    Ack(f64),
    /// Silence at t.
    Sil(f64),
    /// Shelve for n seconds at t.
    Shv(u64, f64),
    Unshv(f64),
    Oos(f64),
    Rts(f64),
}

fn run(e: &mut Engine, alarm: &str, steps: &[Step]) -> Vec<Event> {
    let mut out = Vec::new();
    let user = "op1".to_string();
    for s in steps {
        let res = match *s {
            Step::V(v, t) => {
                e.on_reading(&good(0, v, t), &mut out);
                Ok(0)
            }
            Step::Q(q, t) => {
                e.on_reading(&reading(0, 0.0, t, q), &mut out);
                Ok(0)
            }
            Step::T(t) => {
                e.on_tick(at(t), &mut out);
                Ok(0)
            }
            Step::Ack(t) => e.command(
                &Command::Acknowledge {
                    target: alarm.into(),
                    user: user.clone(),
                    comment: None,
                },
                at(t),
                &mut out,
            ),
            Step::Sil(t) => e.command(&Command::Silence { user: user.clone() }, at(t), &mut out),
            Step::Shv(n, t) => e.command(
                &Command::Shelve {
                    alarm: alarm.into(),
                    duration: Duration::from_secs(n),
                    user: user.clone(),
                    reason: "nuisance under investigation".into(),
                },
                at(t),
                &mut out,
            ),
            Step::Unshv(t) => e.command(
                &Command::Unshelve {
                    alarm: alarm.into(),
                    user: user.clone(),
                    comment: None,
                },
                at(t),
                &mut out,
            ),
            Step::Oos(t) => e.command(
                &Command::RemoveFromService {
                    target: alarm.into(),
                    user: user.clone(),
                    reason: "WO-1 calibration".into(),
                },
                at(t),
                &mut out,
            ),
            Step::Rts(t) => e.command(
                &Command::ReturnToService {
                    target: alarm.into(),
                    user: user.clone(),
                    comment: None,
                },
                at(t),
                &mut out,
            ),
        };
        res.unwrap_or_else(|err| panic!("step {s:?}: {err}"));
    }
    out
}

type Row = (
    &'static str,
    &'static [Step],
    &'static [(EventKind, AlarmState, AlarmState)],
);

#[test]
fn isa_transitions_of_a_level1_alarm() {
    use Step::*;
    let rows: &[Row] = &[
        (
            "normal → unack on alarm",
            &[V(10.0, 0.0), V(30.0, 1.0)],
            &[(Activate, N, U)],
        ),
        (
            "unack → ack on acknowledge",
            &[V(30.0, 0.0), Ack(1.0)],
            &[(Activate, N, U), (Acknowledge, U, A)],
        ),
        (
            "ack → normal on return",
            &[V(30.0, 0.0), Ack(1.0), V(10.0, 2.0)],
            &[(Activate, N, U), (Acknowledge, U, A), (Return, A, N)],
        ),
        (
            "unack → rtn-unack on return",
            &[V(30.0, 0.0), V(10.0, 1.0)],
            &[(Activate, N, U), (Return, U, R)],
        ),
        (
            "rtn-unack → normal on acknowledge",
            &[V(30.0, 0.0), V(10.0, 1.0), Ack(2.0)],
            &[(Activate, N, U), (Return, U, R), (Acknowledge, R, N)],
        ),
        (
            "rtn-unack → unack when it comes back",
            &[V(30.0, 0.0), V(10.0, 1.0), V(30.0, 2.0)],
            &[(Activate, N, U), (Return, U, R), (Activate, R, U)],
        ),
        (
            "standing ack → unack after the re-alarm time",
            &[
                V(30.0, 0.0),
                Ack(1.0),
                T(1800.0),
                V(30.0, 1800.5),
                T(1801.0),
            ],
            &[(Activate, N, U), (Acknowledge, U, A), (Realarm, A, U)],
        ),
        (
            "silence is not acknowledge",
            &[V(30.0, 0.0), Sil(1.0), V(10.0, 2.0)],
            &[(Activate, N, U), (Silence, U, U), (Return, U, R)],
        ),
        (
            "shelved: recorded, not annunciated; unshelve → normal",
            &[
                V(30.0, 0.0),
                Shv(600, 1.0),
                V(10.0, 2.0),
                V(30.0, 3.0),
                V(10.0, 4.0),
                Unshv(5.0),
            ],
            &[
                (Activate, N, U),
                (Shelve, U, S),
                (Return, S, S),
                (Activate, S, S),
                (Return, S, S),
                (Unshelve, S, N),
            ],
        ),
        (
            "shelve expires while active → unack",
            &[V(30.0, 0.0), Shv(60, 1.0), T(60.0), V(30.0, 60.5), T(61.0)],
            &[(Activate, N, U), (Shelve, U, S), (Unshelve, S, U)],
        ),
        (
            "shelve a normal alarm",
            &[V(10.0, 0.0), Shv(60, 1.0), V(30.0, 2.0), Unshv(3.0)],
            &[(Shelve, N, S), (Activate, S, S), (Unshelve, S, U)],
        ),
        (
            "out of service and back",
            &[V(30.0, 0.0), Oos(1.0), V(10.0, 2.0), V(30.0, 3.0), Rts(4.0)],
            &[
                (Activate, N, U),
                (RemoveFromService, U, O),
                (Return, O, O),
                (Activate, O, O),
                (ReturnToService, O, U),
            ],
        ),
        (
            "out of service overrides shelved",
            &[V(30.0, 0.0), Shv(60, 1.0), Oos(2.0), V(10.0, 3.0), Rts(4.0)],
            &[
                (Activate, N, U),
                (Shelve, U, S),
                (RemoveFromService, S, O),
                (Return, O, O),
                (ReturnToService, O, N),
            ],
        ),
        (
            "inside the deadband it stays; past it it returns",
            &[
                V(30.0, 0.0),
                V(24.0, 1.0),
                V(23.5, 2.0),
                V(25.5, 3.0),
                V(22.9, 4.0),
            ],
            &[(Activate, N, U), (Return, U, R)],
        ),
        (
            "just below the limit never alarms",
            &[V(24.99, 0.0), V(24.0, 1.0), V(24.99, 2.0)],
            &[],
        ),
        (
            "bad quality keeps the alarm (never cleared by a dead detector)",
            &[
                V(30.0, 0.0),
                Q(Quality::Fault, 1.0),
                Q(Quality::Fault, 2.0),
                V(10.0, 3.0),
            ],
            &[(Activate, N, U), (Return, U, R)],
        ),
    ];
    for (name, steps, want) in rows {
        let mut e = engine(vec![gas("G1", 0)]);
        let ev = run(&mut e, "G1:H", steps);
        assert_eq!(path(&ev, "G1:H"), *want, "{name}");
    }
}

#[test]
fn event_fields_of_an_activation_and_an_ack() {
    let mut e = engine(vec![gas("G1", 0)]);
    let mut out = Vec::new();
    let mut r = good(0, 31.5, 10.0);
    r.source_time = at(9.5);
    e.on_reading(&r, &mut out);
    e.command(
        &Command::Acknowledge {
            target: "G1:H".into(),
            user: "王工".into(),
            comment: Some("查看现场".into()),
        },
        at(20.0),
        &mut out,
    )
    .unwrap();
    let a = alarms(&out);
    assert_eq!(a.len(), 2);
    let act = a[0];
    assert_eq!(act.alarm, "G1:H");
    assert_eq!(act.source, "G1");
    assert_eq!(act.enterprise, "E1");
    assert_eq!(act.area.as_deref(), Some("U1"));
    assert_eq!(act.level, Some(1));
    assert_eq!(act.priority, parkguard_rules::Priority::Medium);
    assert_eq!((act.value, act.limit), (Some(31.5), Some(25.0)));
    assert_eq!(act.unit, Some(Unit::PercentLel));
    assert_eq!((act.time, act.source_time), (at(10.0), Some(at(9.5))));
    assert!(act.annunciate && act.active && act.user.is_none());
    let ack = a[1];
    assert_eq!(ack.user.as_deref(), Some("王工"));
    assert_eq!(ack.comment.as_deref(), Some("查看现场"));
    assert_eq!(ack.time, at(20.0));
    assert!(ack.id > act.id);
    assert!(!ack.annunciate);
}

#[test]
fn escalation_to_level2_re_alarms_while_level1_is_acknowledged() {
    let mut e = engine(vec![gas("G1", 0)]);
    let ev = run(
        &mut e,
        "G1:H",
        &[Step::V(30.0, 0.0), Step::Ack(1.0), Step::V(55.0, 2.0)],
    );
    assert_eq!(path(&ev, "G1:HH"), [(Activate, N, U)]);
    assert_eq!(annunciated(&ev), ["G1:H", "G1:HH"]);
    assert_eq!(e.alarm("G1:H").unwrap().state, A);
}

#[test]
fn on_delay_and_off_delay() {
    use Step::*;
    // (name, on-delay s, off-delay s, steps, times of H activations, times of H returns)
    type DelayRow = (
        &'static str,
        u64,
        u64,
        &'static [Step],
        &'static [f64],
        &'static [f64],
    );
    let rows: &[DelayRow] = &[
        (
            "raised at the reading that completes the delay",
            2,
            0,
            &[V(30.0, 0.0), V(30.0, 1.0), V(30.0, 2.0)],
            &[2.0],
            &[],
        ),
        (
            "a dip below the limit restarts it",
            2,
            0,
            &[
                V(30.0, 0.0),
                V(24.0, 1.0),
                V(30.0, 2.0),
                V(30.0, 3.0),
                V(30.0, 4.0),
            ],
            &[4.0],
            &[],
        ),
        (
            "a tick completes it with the last value",
            2,
            0,
            &[V(30.0, 0.0), T(1.0), T(2.5)],
            &[2.5],
            &[],
        ),
        (
            "bad quality restarts it",
            2,
            0,
            &[
                V(30.0, 0.0),
                Q(Quality::CommLost, 1.0),
                V(30.0, 1.5),
                T(3.0),
                T(3.5),
            ],
            &[3.5],
            &[],
        ),
        (
            "off-delay holds the alarm",
            0,
            5,
            &[V(30.0, 0.0), V(10.0, 1.0), V(10.0, 3.0), V(10.0, 6.0)],
            &[0.0],
            &[6.0],
        ),
        (
            "back inside during off-delay keeps it",
            0,
            5,
            &[
                V(30.0, 0.0),
                V(10.0, 1.0),
                V(24.0, 2.0),
                V(10.0, 3.0),
                T(7.0),
                T(8.0),
            ],
            &[0.0],
            &[8.0],
        ),
    ];
    for (name, on, off, steps, acts, rets) in rows {
        let p = with(gas("G1", *on), |p| {
            p.limits.off_delay = Duration::from_secs(*off)
        });
        let mut e = engine(vec![p]);
        let ev = run(&mut e, "G1:H", steps);
        let times = |k| -> Vec<f64> {
            alarms(&ev)
                .into_iter()
                .filter(|a| a.alarm == "G1:H" && a.kind == k)
                .map(|a| secs(a.time))
                .collect()
        };
        assert_eq!(times(Activate), *acts, "{name}: activations");
        assert_eq!(times(Return), *rets, "{name}: returns");
    }
}

#[test]
fn quality_alarms_each_raise_their_own_alarm() {
    let rows = [
        (Quality::CommLost, "G1:COMM_LOST"),
        (Quality::DeviceException { code: 2 }, "G1:DEVICE_EXCEPTION"),
        (Quality::OutOfRange, "G1:OUT_OF_RANGE"),
        (Quality::Fault, "G1:FAULT"),
        (Quality::Maintenance, "G1:MAINTENANCE"),
        (Quality::Inhibited, "G1:INHIBITED"),
    ];
    for (q, id) in rows {
        let mut e = engine(vec![gas("G1", 0)]);
        let ev = run(
            &mut e,
            "",
            &[
                Step::V(5.0, 0.0),
                Step::Q(q, 1.0),
                Step::Q(q, 2.0),
                Step::V(5.0, 3.0),
            ],
        );
        assert_eq!(path(&ev, id), [(Activate, N, U), (Return, U, R)], "{q:?}");
        assert_eq!(annunciated(&ev), [id], "{q:?}");
        let colour =
            parkguard_rules::alarm::gb16808_colour(alarms(&ev)[0].condition, alarms(&ev)[0].to);
        assert_eq!(
            colour,
            parkguard_rules::alarm::Colour::Yellow,
            "fault colour is yellow"
        );
    }
    // One bad quality replaced by another: the first returns, the second activates.
    let mut e = engine(vec![gas("G1", 0)]);
    let ev = run(
        &mut e,
        "",
        &[
            Step::Q(Quality::Fault, 0.0),
            Step::Q(Quality::Maintenance, 1.0),
        ],
    );
    assert_eq!(path(&ev, "G1:FAULT"), [(Activate, N, U), (Return, U, R)]);
    assert_eq!(path(&ev, "G1:MAINTENANCE"), [(Activate, N, U)]);
}

#[test]
fn over_range_reading_is_a_high_gas_reading() {
    let mut e = engine(vec![gas("G1", 0)]);
    let mut out = Vec::new();
    e.on_reading(&reading(0, 100.0, 0.0, Quality::OutOfRange), &mut out);
    let ids = annunciated(&out);
    assert!(ids.contains(&"G1:HH".to_string()), "{ids:?}");
    assert!(ids.contains(&"G1:OUT_OF_RANGE".to_string()), "{ids:?}");
    // Under range says nothing about the gas: no limit alarm.
    let mut e = engine(vec![gas("G1", 0)]);
    let mut out = Vec::new();
    e.on_reading(&reading(0, -5.0, 0.0, Quality::OutOfRange), &mut out);
    assert_eq!(annunciated(&out), ["G1:OUT_OF_RANGE"]);
}

#[test]
fn stale_is_raised_by_ticks_and_cleared_by_a_reading() {
    use Step::*;
    let mut e = engine(vec![gas("G1", 0)]);
    // Interval 1 s, multiple 3: stale once more than 3 s passed without a reading.
    let ev = run(
        &mut e,
        "",
        &[V(5.0, 0.0), T(1.0), T(3.0), T(3.5), T(4.0), V(5.0, 4.5)],
    );
    let stale: Vec<_> = alarms(&ev)
        .into_iter()
        .filter(|a| a.alarm == "G1:STALE")
        .collect();
    assert_eq!(stale.len(), 2);
    assert_eq!((stale[0].kind, secs(stale[0].time)), (Activate, 3.5));
    assert_eq!(stale[0].limit, Some(3.0));
    assert_eq!((stale[1].kind, secs(stale[1].time)), (Return, 4.5));
    // A point that never reported goes stale counted from the engine's start.
    let mut e = engine(vec![gas("G1", 0), gas("G2", 0)]);
    let mut out = Vec::new();
    e.on_reading(&good(0, 1.0, 0.0), &mut out);
    e.on_reading(&good(0, 1.0, 3.0), &mut out);
    e.on_tick(at(3.5), &mut out);
    assert_eq!(annunciated(&out), ["G2:STALE"]);
    assert_eq!(e.point(parkguard_rules::PointId(1)).unwrap().quality, None);
}

#[test]
fn stale_value_is_never_shown_as_good() {
    let mut e = engine(vec![gas("G1", 0)]);
    let mut out = Vec::new();
    e.on_reading(&good(0, 7.0, 0.0), &mut out);
    assert_eq!(
        e.point(parkguard_rules::PointId(0)).unwrap().value,
        Some(7.0)
    );
    e.on_tick(at(10.0), &mut out);
    let v = e.point(parkguard_rules::PointId(0)).unwrap();
    assert_eq!(
        (v.value, v.raw_value, v.quality),
        (None, Some(7.0), Some(Quality::Stale))
    );
    e.on_reading(&reading(0, 9.0, 11.0, Quality::Fault), &mut out);
    let v = e.point(parkguard_rules::PointId(0)).unwrap();
    assert_eq!((v.value, v.quality), (None, Some(Quality::Fault)));
}

#[test]
fn flatline_and_rate_of_change() {
    let p = with(gas("G1", 0), |p| {
        p.limits.flatline = Some(Flatline {
            after: Duration::from_secs(60),
            tolerance: 0.1,
        });
    });
    let mut e = engine(vec![p]);
    let mut out = Vec::new();
    for t in 0..=61 {
        e.on_reading(
            &good(0, 3.0 + 0.05 * f64::from(t % 2), f64::from(t)),
            &mut out,
        );
    }
    assert_eq!(path(&out, "G1:FLATLINE"), [(Activate, N, U)]);
    assert_eq!(secs(alarms(&out)[0].time), 60.0);
    e.on_reading(&good(0, 4.0, 62.0), &mut out);
    assert_eq!(
        path(&out, "G1:FLATLINE"),
        [(Activate, N, U), (Return, U, R)]
    );

    // Rate: more than 10 %LEL per minute over 1 min; a slow drift never trips it.
    let roc = |p: &mut parkguard_rules::Point| {
        p.limits.h = None;
        p.limits.hh = None;
        p.limits.rate_of_change = Some(RateOfChange {
            rise_per_min: 10.0,
            window: Duration::from_secs(60),
        });
    };
    let mut e = engine(vec![with(gas("G1", 0), roc)]);
    let mut out = Vec::new();
    for t in 0..600 {
        e.on_reading(&good(0, 0.05 * f64::from(t), f64::from(t)), &mut out); // 3 /min
    }
    assert!(path(&out, "G1:ROC").is_empty());
    let mut e = engine(vec![with(gas("G1", 0), roc)]);
    let mut out = Vec::new();
    for t in 0..120 {
        e.on_reading(&good(0, 0.5 * f64::from(t), f64::from(t)), &mut out); // 30 /min
    }
    let a = alarms(&out);
    assert_eq!(path(&out, "G1:ROC"), [(Activate, N, U)]);
    assert!(
        secs(a[0].time) <= 21.0,
        "rise of 10 needs 20 s at 30/min: {}",
        secs(a[0].time)
    );
    assert_eq!(a[0].limit, Some(10.0));
}

#[test]
fn process_point_low_limits() {
    let p = with(gas("PT-1", 0), |p| {
        p.kind = PointKind::Pressure;
        p.gas = None;
        p.unit = Unit::MPa;
        p.range_hi = 4.0;
        p.limits = AlarmLimits {
            l: Some(1.0),
            ll: Some(0.5),
            deadband: 0.1,
            ..Default::default()
        };
    });
    let mut e = engine(vec![p]);
    let mut out = Vec::new();
    for (v, t) in [
        (2.0, 0.0),
        (0.9, 1.0),
        (0.4, 2.0),
        (0.55, 3.0),
        (0.65, 4.0),
        (1.05, 5.0),
        (1.2, 6.0),
    ] {
        let mut r = good(0, v, t);
        r.unit = Unit::MPa;
        e.on_reading(&r, &mut out);
    }
    assert_eq!(path(&out, "PT-1:L"), [(Activate, N, U), (Return, U, R)]);
    assert_eq!(path(&out, "PT-1:LL"), [(Activate, N, U), (Return, U, R)]);
    let t = |id: &str, k| {
        alarms(&out)
            .into_iter()
            .find(|a| a.alarm == id && a.kind == k)
            .map(|a| secs(a.time))
    };
    assert_eq!(t("PT-1:LL", Return), Some(4.0), "LL clears above 0.5 + 0.1");
    assert_eq!(t("PT-1:L", Return), Some(6.0), "L clears above 1.0 + 0.1");
    // A reading in another unit is converted (kPa → MPa).
    let mut r = good(0, 300.0, 7.0);
    r.unit = Unit::KPa;
    e.on_reading(&r, &mut out);
    assert_eq!(path(&out, "PT-1:LL").len(), 3);
}

#[test]
fn command_errors() {
    let mut e = engine(vec![gas("G1", 0)]);
    let mut out = Vec::new();
    e.on_reading(&good(0, 10.0, 0.0), &mut out);
    let cfg_max = EngineConfig::default().shelve_max_s;
    let ack = |target: &str| Command::Acknowledge {
        target: target.into(),
        user: "op".into(),
        comment: None,
    };
    let shelve = |alarm: &str, s: u64, reason: &str| Command::Shelve {
        alarm: alarm.into(),
        duration: Duration::from_secs(s),
        user: "op".into(),
        reason: reason.into(),
    };
    let rows: Vec<(Command, CommandError)> = vec![
        (
            ack("G1:H"),
            CommandError::NotUnacknowledged {
                alarm: "G1:H".into(),
                state: N,
            },
        ),
        (ack("G1"), CommandError::NothingToAcknowledge("G1".into())),
        (ack("NOPE:H"), CommandError::UnknownTarget("NOPE:H".into())),
        (
            Command::Acknowledge {
                target: "G1:H".into(),
                user: " ".into(),
                comment: None,
            },
            CommandError::MissingUser,
        ),
        (shelve("G1:H", 0, "x"), CommandError::ZeroDuration),
        (
            shelve("G1:H", cfg_max + 1, "x"),
            CommandError::ShelveTooLong {
                alarm: "G1:H".into(),
                requested_s: cfg_max + 1,
                max_s: cfg_max,
            },
        ),
        (
            shelve("G1:H", 60, ""),
            CommandError::MissingReason("shelve"),
        ),
        (shelve("G1", 60, "x"), CommandError::NotAnAlarm("G1".into())),
        (
            Command::Unshelve {
                alarm: "G1:H".into(),
                user: "op".into(),
                comment: None,
            },
            CommandError::NotShelved("G1:H".into()),
        ),
        (
            Command::ReturnToService {
                target: "G1".into(),
                user: "op".into(),
                comment: None,
            },
            CommandError::NotOutOfService("G1".into()),
        ),
        (
            Command::RemoveFromService {
                target: "G1".into(),
                user: "eng".into(),
                reason: "".into(),
            },
            CommandError::MissingReason("take out of service"),
        ),
    ];
    for (cmd, want) in rows {
        let before = out.len();
        assert_eq!(e.command(&cmd, at(1.0), &mut out), Err(want), "{cmd:?}");
        assert_eq!(out.len(), before, "a refused command changes nothing");
    }
    // States that refuse shelving.
    e.command(&shelve("G1:H", 60, "x"), at(2.0), &mut out)
        .unwrap();
    assert_eq!(
        e.command(&shelve("G1:H", 60, "x"), at(3.0), &mut out),
        Err(CommandError::AlreadyShelved("G1:H".into()))
    );
    e.command(
        &Command::RemoveFromService {
            target: "G1:HH".into(),
            user: "eng".into(),
            reason: "WO-7".into(),
        },
        at(4.0),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        e.command(&shelve("G1:HH", 60, "x"), at(5.0), &mut out),
        Err(CommandError::OutOfService("G1:HH".into()))
    );
    // Out of service for a whole point takes every alarm of it, once.
    let n = e
        .command(
            &Command::RemoveFromService {
                target: "G1".into(),
                user: "eng".into(),
                reason: "WO-8".into(),
            },
            at(6.0),
            &mut out,
        )
        .unwrap();
    assert_eq!(n, 12, "13 alarms, one of them already out of service");
    assert!(
        e.command(
            &Command::RemoveFromService {
                target: "G1".into(),
                user: "eng".into(),
                reason: "WO-8".into(),
            },
            at(7.0),
            &mut out,
        )
        .is_err()
    );
}

#[test]
fn replaced_limits_apply_to_the_next_reading() {
    let mut e = engine(vec![gas("G1", 0)]);
    let mut out = Vec::new();
    e.on_reading(&good(0, 20.0, 0.0), &mut out);
    assert!(out.is_empty());
    let mut l = gas("x", 0).limits;
    l.h = Some(15.0);
    e.replace_limits(parkguard_rules::PointId(0), l.clone())
        .unwrap();
    e.on_reading(&good(0, 20.0, 1.0), &mut out);
    assert_eq!(path(&out, "G1:H"), [(Activate, N, U)]);
    // Removing the limit returns the alarm on the next reading.
    l.h = None;
    e.replace_limits(parkguard_rules::PointId(0), l.clone())
        .unwrap();
    e.on_reading(&good(0, 20.0, 2.0), &mut out);
    assert_eq!(path(&out, "G1:H"), [(Activate, N, U), (Return, U, R)]);
    // Inconsistent limits are refused.
    l.h = Some(60.0);
    let err = e
        .replace_limits(parkguard_rules::PointId(0), l)
        .unwrap_err();
    assert_eq!(err[0].field, "h");
}
