//! Operator and engineer commands: acknowledge, silence, shelve, unshelve, out of service.
//!
//! A *target* is an alarm id (`TAG:HH`, `group/ID:VOTE_L2`, `device/ID:COMM_LOST`) or, where
//! it makes sense, a whole source (`TAG`, `group/ID`, `device/ID`): acknowledging a point
//! acknowledges all its unacknowledged alarms; taking a point out of service takes all its
//! alarms. Shelving is always one alarm (ISA-18.2: shelving is per alarm and time-limited).

use super::{Ctx, Engine, NC};
use crate::alarm::{
    AlarmState, DEVICE_PREFIX, EventKind, GROUP_PREFIX, SYSTEM_PREFIX, SystemAlarm,
};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::time::Duration;
use thiserror::Error;

/// A command to the engine. Every command names its user; the engine records it on the
/// events it causes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Acknowledge an alarm, or every unacknowledged alarm of a source.
    Acknowledge {
        /// Alarm id or source.
        target: String,
        /// Who.
        user: String,
        /// Optional remark.
        comment: Option<String>,
    },
    /// Silence the horn for every unacknowledged alarm. Not an acknowledgement: the alarms
    /// stay unacknowledged (GB 16808).
    Silence {
        /// Who.
        user: String,
    },
    /// Shelve one alarm for `duration` (≤ `shelve_max_s`).
    Shelve {
        /// Alarm id.
        alarm: String,
        /// How long.
        duration: Duration,
        /// Who.
        user: String,
        /// Why (required).
        reason: String,
    },
    /// Unshelve one alarm before its time runs out.
    Unshelve {
        /// Alarm id.
        alarm: String,
        /// Who.
        user: String,
        /// Optional remark.
        comment: Option<String>,
    },
    /// Take an alarm or a source out of service (maintenance).
    RemoveFromService {
        /// Alarm id or source.
        target: String,
        /// Who.
        user: String,
        /// Why (required), e.g. the work order.
        reason: String,
    },
    /// Return an alarm or a source to service.
    ReturnToService {
        /// Alarm id or source.
        target: String,
        /// Who.
        user: String,
        /// Optional remark.
        comment: Option<String>,
    },
    /// Raise (`active = true`) or return one of parkguard's own alarms
    /// (`system/spool:APPEND_FAILING`, …). Sent by the daemon's health watcher, not by a
    /// person; the alarm is then acknowledged, shelved and journalled like any other.
    /// Changes nothing (answers 0) when the alarm's condition is already as asked.
    System {
        /// Which alarm.
        alarm: SystemAlarm,
        /// Condition present.
        active: bool,
        /// A figure for the event (e.g. failures or readings dropped so far).
        value: Option<f64>,
        /// A remark for the event (what failed).
        detail: Option<String>,
    },
}

/// Why a command was refused. Nothing changed when a command fails.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CommandError {
    /// No such alarm or source.
    #[error("unknown alarm or source `{0}`")]
    UnknownTarget(String),
    /// The command needs one alarm, not a source.
    #[error("`{0}` is not an alarm id: name one alarm as TAG:CONDITION (e.g. `{0}:HH`)")]
    NotAnAlarm(String),
    /// Commands need a user.
    #[error("a user name is required")]
    MissingUser,
    /// Shelving and out-of-service need a reason.
    #[error("a reason is required to {0}")]
    MissingReason(&'static str),
    /// Acknowledge of an alarm that is not unacknowledged.
    #[error("`{alarm}` is {state:?}: only unacknowledged alarms can be acknowledged")]
    NotUnacknowledged {
        /// The alarm.
        alarm: String,
        /// Its state.
        state: AlarmState,
    },
    /// Acknowledge of a source with nothing to acknowledge.
    #[error("`{0}` has no unacknowledged alarm")]
    NothingToAcknowledge(String),
    /// Shelve for zero time.
    #[error("shelve duration must be more than 0 s")]
    ZeroDuration,
    /// Shelve for longer than allowed.
    #[error(
        "shelving `{alarm}` for {requested_s} s exceeds the maximum of {max_s} s: take it out of service instead"
    )]
    ShelveTooLong {
        /// The alarm.
        alarm: String,
        /// Requested, seconds.
        requested_s: u64,
        /// Allowed, seconds.
        max_s: u64,
    },
    /// Already shelved.
    #[error("`{0}` is already shelved: unshelve it first")]
    AlreadyShelved(String),
    /// Unshelve of an alarm that is not shelved.
    #[error("`{0}` is not shelved")]
    NotShelved(String),
    /// The alarm is out of service.
    #[error("`{0}` is out of service: return it to service first")]
    OutOfService(String),
    /// The alarm is suppressed by design.
    #[error("`{0}` is suppressed by design (its root cause is alarming): act on the root cause")]
    Suppressed(String),
    /// Nothing to take out of service.
    #[error("`{0}` is already out of service")]
    AlreadyOutOfService(String),
    /// Nothing to return to service.
    #[error("`{0}` is not out of service")]
    NotOutOfService(String),
}

impl Engine {
    /// Slots a target names.
    fn target_slots(&self, target: &str) -> Result<Range<usize>, CommandError> {
        if let Some(s) = self.slot_of(target) {
            return Ok(s..s + 1);
        }
        if let Some(g) = target.strip_prefix(GROUP_PREFIX)
            && let Some(&g) = self.group_ix.get(g)
        {
            let a = self.gbase + 2 * g as usize;
            return Ok(a..a + 2);
        }
        if let Some(d) = target.strip_prefix(DEVICE_PREFIX)
            && let Some(&d) = self.device_ix.get(d)
        {
            let a = self.dbase + d as usize;
            return Ok(a..a + 1);
        }
        if let Some(src) = target.strip_prefix(SYSTEM_PREFIX) {
            // A source's system alarms are adjacent in `SystemAlarm::ALL`.
            let of: Vec<usize> = SystemAlarm::ALL
                .iter()
                .filter(|a| a.source() == src)
                .map(|a| a.index())
                .collect();
            if let (Some(first), Some(last)) = (of.first(), of.last()) {
                return Ok(self.sbase + first..self.sbase + last + 1);
            }
        }
        if let Some(pid) = self.table.id(target) {
            let a = pid.index() * NC;
            return Ok(a..a + NC);
        }
        Err(CommandError::UnknownTarget(target.to_owned()))
    }

    fn one_alarm(&self, alarm: &str) -> Result<usize, CommandError> {
        match self.slot_of(alarm) {
            Some(s) => Ok(s),
            None => match self.target_slots(alarm) {
                Ok(_) => Err(CommandError::NotAnAlarm(alarm.to_owned())),
                Err(e) => Err(e),
            },
        }
    }

    /// Execute a command at `now`. Returns how many alarms changed; on error nothing changed.
    pub fn command(
        &mut self,
        cmd: &Command,
        now: Timestamp,
        out: &mut Vec<super::Event>,
    ) -> Result<usize, CommandError> {
        let t = now.0;
        if let Command::System {
            alarm,
            active,
            value,
            detail,
        } = cmd
        {
            let n = self.system_alarm(*alarm, *active, *value, detail.as_deref(), t, out);
            if !self.warn.dirty.is_empty() {
                self.flush_warnings(t, out);
            }
            return Ok(usize::from(n > 0));
        }
        let user = match cmd {
            Command::Acknowledge { user, .. }
            | Command::Silence { user }
            | Command::Shelve { user, .. }
            | Command::Unshelve { user, .. }
            | Command::RemoveFromService { user, .. }
            | Command::ReturnToService { user, .. } => user.trim(),
            Command::System { .. } => "parkguard",
        };
        if user.is_empty() {
            return Err(CommandError::MissingUser);
        }
        let n = match cmd {
            Command::Acknowledge {
                target, comment, ..
            } => {
                let slots = self.target_slots(target)?;
                let single = slots.len() == 1;
                if single {
                    let st = self.slots[slots.start].state;
                    if !st.is_unacknowledged() {
                        return Err(CommandError::NotUnacknowledged {
                            alarm: target.clone(),
                            state: st,
                        });
                    }
                }
                let ctx = Ctx {
                    time: t,
                    user: Some(user),
                    comment: comment.as_deref(),
                    ..Default::default()
                };
                let mut n = 0;
                for s in slots {
                    let to = match self.slots[s].state {
                        AlarmState::Unacknowledged => AlarmState::Acknowledged,
                        AlarmState::ReturnedUnacknowledged => AlarmState::Normal,
                        _ => continue,
                    };
                    self.transition(s, EventKind::Acknowledge, to, &ctx, out);
                    n += 1;
                }
                if n == 0 {
                    return Err(CommandError::NothingToAcknowledge(target.clone()));
                }
                n
            }
            Command::Silence { .. } => {
                let ctx = Ctx {
                    time: t,
                    user: Some(user),
                    ..Default::default()
                };
                let mut n = 0;
                for s in 0..self.slots.len() {
                    let slot = self.slots[s];
                    if slot.state == AlarmState::Unacknowledged && !slot.silenced {
                        self.transition(
                            s,
                            EventKind::Silence,
                            AlarmState::Unacknowledged,
                            &ctx,
                            out,
                        );
                        n += 1;
                    }
                }
                n
            }
            Command::Shelve {
                alarm,
                duration,
                reason,
                ..
            } => {
                let s = self.one_alarm(alarm)?;
                if reason.trim().is_empty() {
                    return Err(CommandError::MissingReason("shelve"));
                }
                if duration.is_zero() {
                    return Err(CommandError::ZeroDuration);
                }
                let max = self.cfg.shelve_max();
                if *duration > max {
                    return Err(CommandError::ShelveTooLong {
                        alarm: alarm.clone(),
                        requested_s: duration.as_secs(),
                        max_s: max.as_secs(),
                    });
                }
                match self.slots[s].state {
                    AlarmState::Shelved => return Err(CommandError::AlreadyShelved(alarm.clone())),
                    AlarmState::OutOfService => {
                        return Err(CommandError::OutOfService(alarm.clone()));
                    }
                    AlarmState::SuppressedByDesign => {
                        return Err(CommandError::Suppressed(alarm.clone()));
                    }
                    _ => {}
                }
                self.slots[s].shelved_until = (now + *duration).0;
                let ctx = Ctx {
                    time: t,
                    user: Some(user),
                    comment: Some(reason),
                    ..Default::default()
                };
                self.transition(s, EventKind::Shelve, AlarmState::Shelved, &ctx, out);
                1
            }
            Command::Unshelve { alarm, comment, .. } => {
                let s = self.one_alarm(alarm)?;
                if self.slots[s].state != AlarmState::Shelved {
                    return Err(CommandError::NotShelved(alarm.clone()));
                }
                let ctx = Ctx {
                    time: t,
                    user: Some(user),
                    comment: comment.as_deref(),
                    ..Default::default()
                };
                let to = self.resolve(s);
                self.transition(s, EventKind::Unshelve, to, &ctx, out);
                1
            }
            Command::RemoveFromService { target, reason, .. } => {
                let slots = self.target_slots(target)?;
                if reason.trim().is_empty() {
                    return Err(CommandError::MissingReason("take out of service"));
                }
                let ctx = Ctx {
                    time: t,
                    user: Some(user),
                    comment: Some(reason),
                    ..Default::default()
                };
                let mut n = 0;
                for s in slots {
                    if self.slots[s].state == AlarmState::OutOfService {
                        continue;
                    }
                    self.transition(
                        s,
                        EventKind::RemoveFromService,
                        AlarmState::OutOfService,
                        &ctx,
                        out,
                    );
                    self.after_state_change(s, t, out);
                    n += 1;
                }
                if n == 0 {
                    return Err(CommandError::AlreadyOutOfService(target.clone()));
                }
                n
            }
            Command::ReturnToService {
                target, comment, ..
            } => {
                let slots = self.target_slots(target)?;
                let ctx = Ctx {
                    time: t,
                    user: Some(user),
                    comment: comment.as_deref(),
                    ..Default::default()
                };
                let mut n = 0;
                for s in slots {
                    if self.slots[s].state != AlarmState::OutOfService {
                        continue;
                    }
                    let to = self.resolve(s);
                    self.transition(s, EventKind::ReturnToService, to, &ctx, out);
                    self.after_state_change(s, t, out);
                    n += 1;
                }
                if n == 0 {
                    return Err(CommandError::NotOutOfService(target.clone()));
                }
                n
            }
            Command::System { .. } => 0, // handled above
        };
        if !self.warn.dirty.is_empty() {
            self.flush_warnings(t, out);
        }
        Ok(n)
    }
}
