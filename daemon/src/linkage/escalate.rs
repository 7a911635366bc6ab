//! Escalation: if an alarm is not acknowledged within T1, notify the next level, then
//! T2, …; repeat the current level every `repeat` until the next level or the
//! acknowledgement. A pure state machine: [`Escalator::on_event`] starts a track,
//! [`Escalator::on_ack`] stops it, [`Escalator::on_tick`] returns the notifications due at
//! `now`; [`Escalator::next_deadline`] says when to tick next. No clock, no I/O.
//!
//! Typical policy (DOMAIN.md §4, every minute configurable): enterprise duty officer at
//! once → park bureau duty desk after 2 min → bureau leadership / city bureau after 5 min.
//! Each due step goes once, even when a tick comes late (no bursts of missed repeats).

use crate::config::duration::ConfigDuration;
use parkguard_rules::{FieldError, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// `[[escalation]]`: a named escalation policy.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    /// Policy name (routes refer to it). Required.
    pub name: String,
    /// Levels, in order; `after` strictly increasing. Required, at least one.
    pub step: Vec<StepConfig>,
    /// Re-notify the current level this often while unacknowledged (e.g. `"10m"`).
    /// Default: no repeats. At least 10 s.
    #[serde(default)]
    pub repeat: Option<ConfigDuration>,
}

/// `[[escalation.step]]`: one level.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Time after the alarm was raised at which this level is notified if still
    /// unacknowledged (`"0s"` = at once, `"2m"`, `"5m"`). Required.
    pub after: ConfigDuration,
    /// Channels (`[[channel]]` names) of this level. Required, non-empty.
    pub channels: Vec<String>,
    /// Who this level is, for the console (e.g. `园区应急管理局值班室`). Default empty.
    #[serde(default)]
    pub label: String,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Name.
    pub name: String,
    /// Levels.
    pub steps: Vec<Step>,
    /// Repeat interval of the current level.
    pub repeat: Option<Duration>,
}

/// A validated level.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Offset from the raise.
    pub after: Duration,
    /// Channels.
    pub channels: Vec<String>,
    /// Label.
    pub label: String,
}

impl EscalationConfig {
    /// Validate against the channel table (name → drill flag).
    pub fn validate(&self, channels: &BTreeMap<String, bool>) -> Result<Policy, Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.name.trim().is_empty() {
            errs.push(FieldError::new("name", "must not be empty"));
        }
        if self.step.is_empty() {
            errs.push(FieldError::new(
                "step",
                "add at least one [[escalation.step]] (after, channels)",
            ));
        }
        let mut prev: Option<Duration> = None;
        for (i, s) in self.step.iter().enumerate() {
            if let Some(p) = prev
                && s.after.0 <= p
            {
                errs.push(FieldError::new(
                    format!("step[{i}].after"),
                    format!(
                        "steps must be in increasing time: {:?} is not after the previous step's {:?}",
                        s.after.0, p
                    ),
                ));
            }
            prev = Some(s.after.0);
            if s.channels.is_empty() {
                errs.push(FieldError::new(
                    format!("step[{i}].channels"),
                    "list at least one channel",
                ));
            }
            for (j, c) in s.channels.iter().enumerate() {
                if !channels.contains_key(c) {
                    errs.push(FieldError::new(
                        format!("step[{i}].channels[{j}]"),
                        format!("unknown channel `{c}`"),
                    ));
                }
            }
        }
        if let Some(r) = self.repeat
            && r.0 < Duration::from_secs(10)
        {
            errs.push(FieldError::new(
                "repeat",
                "repeat interval must be at least 10s (or leave it out for no repeats)",
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Policy {
            name: self.name.clone(),
            steps: self
                .step
                .iter()
                .map(|s| Step {
                    after: s.after.0,
                    channels: s.channels.clone(),
                    label: s.label.clone(),
                })
                .collect(),
            repeat: self.repeat.map(|r| r.0),
        })
    }
}

/// A notification due now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The alarm.
    pub alarm_id: String,
    /// The event that started the escalation (its payload is what is re-sent).
    pub event_id: u64,
    /// Level index (0 = first).
    pub step: usize,
    /// Channels to notify.
    pub channels: Vec<String>,
    /// `true` for a repeat of a level already notified.
    pub repeat: bool,
    /// When it was scheduled (≤ the `now` that produced it).
    pub scheduled: Timestamp,
}

#[derive(Clone, Debug)]
struct Track {
    policy: String,
    event_id: u64,
    start: Timestamp,
    /// next level to notify
    next_step: usize,
    /// when the current level was last notified (level or repeat)
    last: Timestamp,
}

/// Escalation state of every unacknowledged alarm.
#[derive(Clone, Debug, Default)]
pub struct Escalator {
    policies: HashMap<String, Policy>,
    tracks: BTreeMap<String, Track>,
}

/// Why an escalation could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscalationError {
    /// Unknown policy.
    #[error("unknown escalation policy `{0}`")]
    UnknownPolicy(String),
}

impl Escalator {
    /// An escalator over validated policies.
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        Self {
            policies: policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
            tracks: BTreeMap::new(),
        }
    }

    /// An alarm was raised (unacknowledged) at `now`: start escalating it under `policy`
    /// and return the levels due at once. A second raise of an alarm already escalating
    /// keeps the running track (escalation counts from the first unacknowledged raise).
    pub fn on_event(
        &mut self,
        alarm_id: &str,
        event_id: u64,
        policy: &str,
        now: Timestamp,
    ) -> Result<Vec<Due>, EscalationError> {
        if !self.policies.contains_key(policy) {
            return Err(EscalationError::UnknownPolicy(policy.to_string()));
        }
        if self.tracks.contains_key(alarm_id) {
            return Ok(Vec::new());
        }
        self.tracks.insert(
            alarm_id.to_string(),
            Track {
                policy: policy.to_string(),
                event_id,
                start: now,
                next_step: 0,
                last: now,
            },
        );
        let mut out = Vec::new();
        if let (Some(t), Some(p)) = (self.tracks.get_mut(alarm_id), self.policies.get(policy)) {
            due_for(alarm_id, t, p, now, &mut out);
        }
        Ok(out)
    }

    /// Rebuild a track after a restart from the journal: the alarm was raised at
    /// `raised_at`, `levels_sent` levels were already notified, the last notification (level
    /// or repeat) at `last_sent`. Nothing already sent is sent again; what fell due while
    /// the daemon was down comes out of the next [`Escalator::on_tick`].
    pub fn resume(
        &mut self,
        alarm_id: &str,
        event_id: u64,
        policy: &str,
        raised_at: Timestamp,
        levels_sent: usize,
        last_sent: Timestamp,
    ) -> Result<(), EscalationError> {
        let p = self
            .policies
            .get(policy)
            .ok_or_else(|| EscalationError::UnknownPolicy(policy.to_string()))?;
        self.tracks.insert(
            alarm_id.to_string(),
            Track {
                policy: policy.to_string(),
                event_id,
                start: raised_at,
                next_step: levels_sent.min(p.steps.len()),
                last: last_sent.max(raised_at),
            },
        );
        Ok(())
    }

    /// The alarm was acknowledged: stop its escalation. Returns whether one was running.
    pub fn on_ack(&mut self, alarm_id: &str) -> bool {
        self.tracks.remove(alarm_id).is_some()
    }

    /// Everything due at `now`, in alarm order.
    pub fn on_tick(&mut self, now: Timestamp) -> Vec<Due> {
        let mut out = Vec::new();
        for (id, t) in &mut self.tracks {
            if let Some(p) = self.policies.get(&t.policy) {
                due_for(id, t, p, now, &mut out);
            }
        }
        out
    }

    /// Alarms currently escalating.
    pub fn active(&self) -> impl Iterator<Item = &str> {
        self.tracks.keys().map(String::as_str)
    }

    /// The earliest time something becomes due (tick then), if anything is escalating.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.tracks
            .values()
            .filter_map(|t| {
                let p = self.policies.get(&t.policy)?;
                let next_level = p.steps.get(t.next_step).map(|s| t.start + s.after);
                let next_repeat = p.repeat.filter(|_| t.next_step > 0).map(|r| t.last + r);
                match (next_level, next_repeat) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }
}

/// Append what is due for one track at `now`.
fn due_for(alarm_id: &str, t: &mut Track, p: &Policy, now: Timestamp, out: &mut Vec<Due>) {
    while let Some(s) = p.steps.get(t.next_step) {
        let at = t.start + s.after;
        if at > now {
            break;
        }
        out.push(Due {
            alarm_id: alarm_id.to_string(),
            event_id: t.event_id,
            step: t.next_step,
            channels: s.channels.clone(),
            repeat: false,
            scheduled: at,
        });
        t.next_step += 1;
        t.last = at;
    }
    if let (Some(r), Some(cur)) = (p.repeat, t.next_step.checked_sub(1)) {
        let due = t.last + r;
        let before_next = p
            .steps
            .get(t.next_step)
            .is_none_or(|s| due < t.start + s.after);
        if due <= now && before_next && !r.is_zero() {
            // keep the cadence: the latest repeat slot not after `now`
            let slots = now.since(t.last).as_nanos() / r.as_nanos();
            let slot = t.last + r * u32::try_from(slots).unwrap_or(u32::MAX);
            out.push(Due {
                alarm_id: alarm_id.to_string(),
                event_id: t.event_id,
                step: cur,
                channels: p.steps[cur].channels.clone(),
                repeat: true,
                scheduled: slot,
            });
            t.last = slot;
        }
    }
}
