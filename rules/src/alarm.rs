//! The ISA-18.2 / IEC 62682 alarm lifecycle: conditions, states, transitions and the event
//! every transition produces.
//!
//! An *alarm* is one condition of one source: `"FT-101:HH"` is the high-high alarm of point
//! `FT-101`, `"group/U1-GAS:VOTE_L2"` the level-2 vote of a voting group, `"device/GDS-3:COMM_LOST"`
//! the root-cause alarm of a device whose link is down. Each alarm has one [`AlarmState`]
//! and moves between states only along the edges of the ISA-18.2 state diagram
//! ([`is_legal`]); every move is an [`AlarmEvent`] that the journal stores as JSON.
//!
//! The *condition* (is the limit violated?) is kept apart from the *state* (what the
//! operator has seen): shelved, suppressed-by-design and out-of-service alarms keep being
//! evaluated, and their condition changes are recorded as events from that state to itself
//! with `annunciate = false`.

use crate::time::Timestamp;
use crate::units::Unit;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What an alarm watches.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Condition {
    /// High-high limit; level-2 of a gas point.
    Hh = 0,
    /// High limit; level-1 of a gas point (enrichment for oxygen).
    H = 1,
    /// Low limit (deficiency for oxygen).
    L = 2,
    /// Low-low limit.
    Ll = 3,
    /// Rise faster than the configured rate.
    RateOfChange = 4,
    /// Value stuck where it should move.
    Flatline = 5,
    /// No reading within `stale_multiple × expected_interval`.
    Stale = 6,
    /// Transport to the point's device failed.
    CommLost = 7,
    /// The device answered with an exception for this point.
    DeviceException = 8,
    /// Value outside the measuring range.
    OutOfRange = 9,
    /// Device fault.
    Fault = 10,
    /// Maintenance / calibration.
    Maintenance = 11,
    /// Inhibited at the device.
    Inhibited = 12,
    /// k of n members of a voting group in level-1 (or worse).
    VoteLevel1 = 13,
    /// k of n members of a voting group in level-2.
    VoteLevel2 = 14,
    /// A device's link is down: the root cause of its points' comm-lost and stale alarms.
    DeviceCommLost = 15,
    /// parkguard's spool cannot append readings (disk full, I/O error): readings are not
    /// kept for InfluxDB and MQTT messages stay unacknowledged at the broker.
    SpoolAppendFailing = 16,
    /// parkguard's spool reached its bound and dropped data InfluxDB never confirmed.
    SpoolOverflow = 17,
    /// parkguard's InfluxDB writer cannot write (the server refuses or is unreachable).
    InfluxWriteFailing = 18,
}

/// Number of conditions every point has (`Hh` ..= `Inhibited`).
pub const POINT_CONDITIONS: usize = 13;

impl Condition {
    /// The conditions of a point, in slot order.
    pub const POINT: [Condition; POINT_CONDITIONS] = [
        Condition::Hh,
        Condition::H,
        Condition::L,
        Condition::Ll,
        Condition::RateOfChange,
        Condition::Flatline,
        Condition::Stale,
        Condition::CommLost,
        Condition::DeviceException,
        Condition::OutOfRange,
        Condition::Fault,
        Condition::Maintenance,
        Condition::Inhibited,
    ];

    /// Suffix in the alarm id (`TAG:SUFFIX`).
    pub fn suffix(self) -> &'static str {
        match self {
            Condition::Hh => "HH",
            Condition::H => "H",
            Condition::L => "L",
            Condition::Ll => "LL",
            Condition::RateOfChange => "ROC",
            Condition::Flatline => "FLATLINE",
            Condition::Stale => "STALE",
            Condition::CommLost => "COMM_LOST",
            Condition::DeviceException => "DEVICE_EXCEPTION",
            Condition::OutOfRange => "OUT_OF_RANGE",
            Condition::Fault => "FAULT",
            Condition::Maintenance => "MAINTENANCE",
            Condition::Inhibited => "INHIBITED",
            Condition::VoteLevel1 => "VOTE_L1",
            Condition::VoteLevel2 => "VOTE_L2",
            Condition::DeviceCommLost => "COMM_LOST",
            Condition::SpoolAppendFailing => "APPEND_FAILING",
            Condition::SpoolOverflow => "OVERFLOW",
            Condition::InfluxWriteFailing => "WRITE_FAILING",
        }
    }

    /// Inverse of [`Condition::suffix`] for point conditions.
    pub fn point_from_suffix(s: &str) -> Option<Condition> {
        Condition::POINT.into_iter().find(|c| c.suffix() == s)
    }

    /// Alarm level: 2 for HH/LL and level-2 votes, 1 for H/L and level-1 votes.
    pub fn level(self) -> Option<u8> {
        match self {
            Condition::Hh | Condition::Ll | Condition::VoteLevel2 => Some(2),
            Condition::H | Condition::L | Condition::VoteLevel1 => Some(1),
            _ => None,
        }
    }

    /// Whether the condition is about the measured value (limits, rate, votes), as opposed to
    /// the health of the measurement (quality, staleness, flatline, device).
    pub fn is_process(self) -> bool {
        matches!(
            self,
            Condition::Hh
                | Condition::H
                | Condition::L
                | Condition::Ll
                | Condition::RateOfChange
                | Condition::VoteLevel1
                | Condition::VoteLevel2
        )
    }

    /// Short Chinese label for the console.
    pub fn label_zh(self) -> &'static str {
        match self {
            Condition::Hh => "高高报/二级报警",
            Condition::H => "高报/一级报警",
            Condition::L => "低报",
            Condition::Ll => "低低报",
            Condition::RateOfChange => "变化率报警",
            Condition::Flatline => "数据不变",
            Condition::Stale => "数据陈旧",
            Condition::CommLost => "通讯中断",
            Condition::DeviceException => "设备异常应答",
            Condition::OutOfRange => "超量程",
            Condition::Fault => "故障",
            Condition::Maintenance => "维护/标定",
            Condition::Inhibited => "屏蔽",
            Condition::VoteLevel1 => "表决一级报警",
            Condition::VoteLevel2 => "表决二级报警",
            Condition::DeviceCommLost => "设备通讯中断",
            Condition::SpoolAppendFailing => "系统：数据缓存写入失败",
            Condition::SpoolOverflow => "系统：数据缓存溢出，未上传数据被丢弃",
            Condition::InfluxWriteFailing => "系统：时序数据库写入失败",
        }
    }
}

/// parkguard's own health, raised as alarms in the operators' alarm list beside the
/// process alarms (`system/<source>:<SUFFIX>`, source kind `system`): when parkguard
/// cannot keep or forward its data, the people watching the console must know. Raised and
/// returned by [`crate::engine::Command::System`] from the daemon's watcher; acknowledged,
/// shelved and journalled like any alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SystemAlarm {
    /// `system/spool:APPEND_FAILING`.
    SpoolAppendFailing,
    /// `system/spool:OVERFLOW`.
    SpoolOverflow,
    /// `system/influx:WRITE_FAILING`.
    InfluxWriteFailing,
}

impl SystemAlarm {
    /// Every system alarm, in slot order.
    pub const ALL: [SystemAlarm; 3] = [
        SystemAlarm::SpoolAppendFailing,
        SystemAlarm::SpoolOverflow,
        SystemAlarm::InfluxWriteFailing,
    ];

    /// The part of parkguard it is about (`spool`, `influx`).
    pub fn source(self) -> &'static str {
        match self {
            SystemAlarm::SpoolAppendFailing | SystemAlarm::SpoolOverflow => "spool",
            SystemAlarm::InfluxWriteFailing => "influx",
        }
    }

    /// Its condition.
    pub fn condition(self) -> Condition {
        match self {
            SystemAlarm::SpoolAppendFailing => Condition::SpoolAppendFailing,
            SystemAlarm::SpoolOverflow => Condition::SpoolOverflow,
            SystemAlarm::InfluxWriteFailing => Condition::InfluxWriteFailing,
        }
    }

    /// The alarm id, `system/spool:APPEND_FAILING`.
    pub fn alarm_id(self) -> String {
        format!(
            "{SYSTEM_PREFIX}{}:{}",
            self.source(),
            self.condition().suffix()
        )
    }

    /// English text for operators (the Chinese one is [`Condition::label_zh`]).
    pub fn text_en(self) -> &'static str {
        match self {
            SystemAlarm::SpoolAppendFailing => {
                "system: the spool cannot write readings (disk full or I/O error)"
            }
            SystemAlarm::SpoolOverflow => {
                "system: the spool overflowed and dropped data not yet in InfluxDB"
            }
            SystemAlarm::InfluxWriteFailing => "system: writes to InfluxDB are failing",
        }
    }

    /// Its place in [`SystemAlarm::ALL`].
    pub fn index(self) -> usize {
        match self {
            SystemAlarm::SpoolAppendFailing => 0,
            SystemAlarm::SpoolOverflow => 1,
            SystemAlarm::InfluxWriteFailing => 2,
        }
    }
}

/// ISA-18.2 alarm states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// Condition absent, nothing to acknowledge.
    Normal,
    /// Condition present, not acknowledged (annunciated).
    Unacknowledged,
    /// Condition present, acknowledged.
    Acknowledged,
    /// Condition gone, never acknowledged.
    ReturnedUnacknowledged,
    /// Shelved by an operator for a limited time.
    Shelved,
    /// Suppressed by design (system logic, e.g. the device's comm-lost root-cause alarm).
    SuppressedByDesign,
    /// Out of service (maintenance), by an engineer.
    OutOfService,
}

impl AlarmState {
    /// States in which the condition is evaluated but not annunciated.
    pub fn is_overlay(self) -> bool {
        matches!(
            self,
            AlarmState::Shelved | AlarmState::SuppressedByDesign | AlarmState::OutOfService
        )
    }
    /// States that need the operator's acknowledgement.
    pub fn is_unacknowledged(self) -> bool {
        matches!(
            self,
            AlarmState::Unacknowledged | AlarmState::ReturnedUnacknowledged
        )
    }
}

/// What caused a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The condition became present.
    Activate,
    /// The condition went away.
    Return,
    /// Operator acknowledged.
    Acknowledge,
    /// Operator silenced the horn: recorded, the alarm stays unacknowledged.
    Silence,
    /// A standing acknowledged alarm is annunciated again after the re-alarm time.
    Realarm,
    /// Operator shelved.
    Shelve,
    /// Operator unshelved, or the shelve time ran out.
    Unshelve,
    /// System logic suppressed it (root cause elsewhere).
    Suppress,
    /// The suppressing cause went away.
    Unsuppress,
    /// Engineer took it out of service.
    RemoveFromService,
    /// Engineer returned it to service.
    ReturnToService,
}

/// Whether `from → to` by `kind` is an edge of the ISA-18.2 state diagram as parkguard
/// implements it (see the module docs and DOMAIN.md §5).
pub fn is_legal(kind: EventKind, from: AlarmState, to: AlarmState) -> bool {
    use AlarmState::*;
    use EventKind::*;
    let base = |s: AlarmState| {
        matches!(
            s,
            Normal | Unacknowledged | Acknowledged | ReturnedUnacknowledged
        )
    };
    match kind {
        Activate => {
            matches!(
                (from, to),
                (Normal, Unacknowledged)
                    | (ReturnedUnacknowledged, Unacknowledged)
                    | (Normal, SuppressedByDesign)
            ) || (from.is_overlay() && from == to)
        }
        Return => {
            matches!(
                (from, to),
                (Unacknowledged, ReturnedUnacknowledged) | (Acknowledged, Normal)
            ) || (from.is_overlay() && from == to)
        }
        Acknowledge => matches!(
            (from, to),
            (Unacknowledged, Acknowledged) | (ReturnedUnacknowledged, Normal)
        ),
        Silence => from == Unacknowledged && to == Unacknowledged,
        Realarm => from == Acknowledged && to == Unacknowledged,
        Shelve => base(from) && to == Shelved,
        Unshelve => from == Shelved && matches!(to, Normal | Unacknowledged | SuppressedByDesign),
        Suppress => base(from) && to == SuppressedByDesign,
        Unsuppress => from == SuppressedByDesign && matches!(to, Normal | Unacknowledged),
        RemoveFromService => from != OutOfService && to == OutOfService,
        ReturnToService => {
            from == OutOfService && matches!(to, Normal | Unacknowledged | SuppressedByDesign)
        }
    }
}

/// Whether a state agrees with the condition being present (`active`): unacknowledged and
/// acknowledged need it present, normal and returned-unacknowledged need it absent; the
/// overlay states allow both.
pub fn state_fits_condition(state: AlarmState, active: bool) -> bool {
    match state {
        AlarmState::Unacknowledged | AlarmState::Acknowledged => active,
        AlarmState::Normal | AlarmState::ReturnedUnacknowledged => !active,
        _ => true,
    }
}

/// Alarm priority.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
}

/// Indicator colour per GB 16808 for controllers: alarm (and alarm delay) red, fault and
/// mask yellow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// Red: a gas/process alarm.
    Red,
    /// Yellow: fault, loss of measurement, mask (shelved, suppressed, out of service).
    Yellow,
    /// No indication (normal).
    None,
}

/// The GB 16808 colour the console shows for an alarm of `condition` in `state`.
pub fn gb16808_colour(condition: Condition, state: AlarmState) -> Colour {
    match state {
        AlarmState::Normal => Colour::None,
        s if s.is_overlay() => Colour::Yellow,
        _ if condition.is_process() => Colour::Red,
        _ => Colour::Yellow,
    }
}

/// What an alarm belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A point (tag).
    Point,
    /// A voting group.
    Group,
    /// A device.
    Device,
    /// parkguard itself ([`SystemAlarm`]).
    System,
}

/// Prefix of group alarm ids: `group/<id>:VOTE_L1`.
pub const GROUP_PREFIX: &str = "group/";
/// Prefix of device alarm ids: `device/<id>:COMM_LOST`.
pub const DEVICE_PREFIX: &str = "device/";
/// Prefix of parkguard's own alarm ids: `system/spool:APPEND_FAILING` ([`SystemAlarm`]).
pub const SYSTEM_PREFIX: &str = "system/";

/// One transition of one alarm. Stored in the journal as JSON; notifications use `id` as
/// idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlarmEvent {
    /// Unique, strictly increasing over the engine's life (restored on restart).
    pub id: u64,
    /// Stable alarm id: `TAG:HH`, `group/ID:VOTE_L2`, `device/ID:COMM_LOST`.
    pub alarm: String,
    /// Tag, group id or device id.
    pub source: String,
    /// What `source` names.
    pub source_kind: SourceKind,
    /// Enterprise code.
    pub enterprise: String,
    /// Process unit / area, if known.
    pub area: Option<String>,
    /// The condition.
    pub condition: Condition,
    /// Level 1 or 2 for limit and vote alarms.
    pub level: Option<u8>,
    /// Priority from the configured mapping.
    pub priority: Priority,
    /// What happened.
    pub kind: EventKind,
    /// State before.
    pub from: AlarmState,
    /// State after.
    pub to: AlarmState,
    /// Whether the condition is present after this event.
    pub active: bool,
    /// Whether this event must be announced to operators (it entered `unacknowledged`).
    pub annunciate: bool,
    /// Value at that moment (reading value; for votes the number of members voting; for
    /// stale the seconds since the last reading; for rate of change the rise per minute).
    pub value: Option<f64>,
    /// The limit it was compared with (k for votes; the stale threshold in seconds).
    pub limit: Option<f64>,
    /// Unit of `value` and `limit` for point limit alarms.
    pub unit: Option<Unit>,
    /// Engine time: the reading's receive time, or `now` of a tick or command.
    pub time: Timestamp,
    /// The reading's source time, for events caused by a reading.
    pub source_time: Option<Timestamp>,
    /// Who, for operator actions.
    pub user: Option<String>,
    /// Why, for operator actions.
    pub comment: Option<String>,
    /// Until when, for shelve events.
    pub shelved_until: Option<Timestamp>,
    /// The root-cause alarm, for events of an alarm suppressed by design.
    pub suppressed_by: Option<String>,
    /// Drill id: set on every event of a drill engine, never on the real path.
    pub drill: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlarmState::*;
    use EventKind::*;

    #[test]
    fn diagram_edges() {
        // (kind, from, to, legal)
        let table = [
            (Activate, Normal, Unacknowledged, true),
            (Activate, ReturnedUnacknowledged, Unacknowledged, true),
            (Activate, Acknowledged, Unacknowledged, false),
            (Activate, Normal, SuppressedByDesign, true),
            (Activate, Shelved, Shelved, true),
            (Activate, OutOfService, OutOfService, true),
            (Activate, Normal, Acknowledged, false),
            (Return, Unacknowledged, ReturnedUnacknowledged, true),
            (Return, Acknowledged, Normal, true),
            (Return, Unacknowledged, Normal, false),
            (Return, SuppressedByDesign, SuppressedByDesign, true),
            (Acknowledge, Unacknowledged, Acknowledged, true),
            (Acknowledge, ReturnedUnacknowledged, Normal, true),
            (Acknowledge, Normal, Normal, false),
            (Acknowledge, Acknowledged, Acknowledged, false),
            (Silence, Unacknowledged, Unacknowledged, true),
            (Silence, Unacknowledged, Acknowledged, false),
            (Realarm, Acknowledged, Unacknowledged, true),
            (Realarm, Normal, Unacknowledged, false),
            (Shelve, Acknowledged, Shelved, true),
            (Shelve, OutOfService, Shelved, false),
            (Unshelve, Shelved, Unacknowledged, true),
            (Unshelve, Shelved, Acknowledged, false),
            (Suppress, Unacknowledged, SuppressedByDesign, true),
            (Suppress, Shelved, SuppressedByDesign, false),
            (Unsuppress, SuppressedByDesign, Normal, true),
            (Unsuppress, SuppressedByDesign, Shelved, false),
            (RemoveFromService, Shelved, OutOfService, true),
            (RemoveFromService, OutOfService, OutOfService, false),
            (ReturnToService, OutOfService, SuppressedByDesign, true),
            (ReturnToService, OutOfService, Acknowledged, false),
        ];
        for (k, f, t, legal) in table {
            assert_eq!(is_legal(k, f, t), legal, "{k:?} {f:?} → {t:?}");
        }
    }

    #[test]
    fn colours() {
        assert_eq!(gb16808_colour(Condition::Hh, Unacknowledged), Colour::Red);
        assert_eq!(
            gb16808_colour(Condition::VoteLevel2, Acknowledged),
            Colour::Red
        );
        assert_eq!(
            gb16808_colour(Condition::Fault, Unacknowledged),
            Colour::Yellow
        );
        assert_eq!(gb16808_colour(Condition::Hh, Shelved), Colour::Yellow);
        assert_eq!(gb16808_colour(Condition::Hh, Normal), Colour::None);
    }

    #[test]
    fn suffixes_round_trip() {
        for c in Condition::POINT {
            assert_eq!(Condition::point_from_suffix(c.suffix()), Some(c));
            assert_eq!(
                c as usize,
                Condition::POINT.iter().position(|x| *x == c).unwrap()
            );
        }
    }
}
