//! What the engine shows (snapshots for the API and console) and how it comes back after a
//! restart (restore from the journal's events).

use super::{Engine, Event, NC, NEVER, Phase, STALE, SlotOwner};
use crate::alarm::{AlarmState, Colour, Condition, Priority, SourceKind, gb16808_colour};
use crate::model::{PointId, Quality};
use crate::time::Timestamp;
use crate::warning::{Grade, WarningScope};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Engine counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Readings evaluated.
    pub readings: u64,
    /// Readings for point ids the engine does not know (dropped).
    pub unknown_points: u64,
    /// Readings whose unit could not be converted to the point's unit (limits not evaluated).
    pub unit_mismatch: u64,
    /// Events emitted.
    pub events: u64,
}

/// One alarm as the console shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmView {
    /// Alarm id.
    pub alarm: String,
    /// Tag, group id or device id.
    pub source: String,
    /// What `source` names.
    pub source_kind: SourceKind,
    /// Enterprise code.
    pub enterprise: String,
    /// Condition.
    pub condition: Condition,
    /// Level 1/2.
    pub level: Option<u8>,
    /// Priority.
    pub priority: Priority,
    /// ISA-18.2 state.
    pub state: AlarmState,
    /// Whether the condition is present.
    pub active: bool,
    /// Horn silenced (still unacknowledged).
    pub silenced: bool,
    /// When the condition last became present.
    pub active_since: Option<Timestamp>,
    /// End of the shelve.
    pub shelved_until: Option<Timestamp>,
    /// GB 16808 colour.
    pub colour: Colour,
    /// Root-cause alarm if suppressed by design.
    pub suppressed_by: Option<String>,
}

/// The live value of one point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointView {
    /// Point id.
    pub id: PointId,
    /// Tag.
    pub tag: String,
    /// Value, only when good and fresh: bad or stale data is never shown as good.
    pub value: Option<f64>,
    /// Last value received whatever its quality (for the record, never for display as good).
    pub raw_value: Option<f64>,
    /// Quality (stale when the engine declared it stale); none before the first reading.
    pub quality: Option<Quality>,
    /// Source time of the last reading.
    pub source_time: Option<Timestamp>,
    /// Receive time of the last reading.
    pub receive_time: Option<Timestamp>,
}

/// Current warning grades.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WarningsView {
    /// Park grade.
    pub park: Grade,
    /// Grade per enterprise code (every enterprise with points).
    pub enterprises: Vec<(String, Grade)>,
}

/// Everything the API shows, published by the engine task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Latest engine time seen (reading or tick).
    pub time: Option<Timestamp>,
    /// Drill id of this engine.
    pub drill: Option<String>,
    /// Every point, in id order.
    pub points: Vec<PointView>,
    /// Every alarm not in `normal`.
    pub alarms: Vec<AlarmView>,
    /// Warning grades.
    pub warnings: WarningsView,
    /// Counters.
    pub stats: EngineStats,
}

/// What [`Engine::restore`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Alarm events applied.
    pub applied: usize,
    /// Alarm ids in the journal the engine no longer has (point or group removed).
    pub unknown: Vec<String>,
    /// The id the next event gets.
    pub next_event_id: u64,
}

fn ts(t: i64) -> Option<Timestamp> {
    (t != NEVER).then_some(Timestamp(t))
}

impl Engine {
    fn view(&self, s: usize) -> AlarmView {
        let (alarm, source, source_kind, enterprise, _area, condition, _unit) = self.describe(s);
        let slot = &self.slots[s];
        AlarmView {
            alarm,
            source,
            source_kind,
            enterprise,
            condition,
            level: condition.level(),
            priority: self.cfg.priority.of(condition),
            state: slot.state,
            active: slot.active,
            silenced: slot.silenced,
            active_since: if slot.active {
                ts(slot.active_since)
            } else {
                None
            },
            shelved_until: if slot.state == AlarmState::Shelved {
                ts(slot.shelved_until)
            } else {
                None
            },
            colour: gb16808_colour(condition, slot.state),
            suppressed_by: if slot.state == AlarmState::SuppressedByDesign {
                self.suppressor(s).map(|r| self.describe(r).0)
            } else {
                None
            },
        }
    }

    /// One alarm by id (`TAG:HH`, `group/ID:VOTE_L2`, `device/ID:COMM_LOST`).
    pub fn alarm(&self, alarm: &str) -> Option<AlarmView> {
        self.slot_of(alarm).map(|s| self.view(s))
    }

    /// Every alarm not in `normal`, points first, then groups, then devices.
    pub fn alarms(&self) -> Vec<AlarmView> {
        (0..self.slots.len())
            .filter(|&s| self.slots[s].state != AlarmState::Normal)
            .map(|s| self.view(s))
            .collect()
    }

    /// The live value and quality of one point.
    pub fn point(&self, id: PointId) -> Option<PointView> {
        let tag = self.table.get(id)?.tag.clone();
        let mut view = PointView {
            id,
            tag,
            value: None,
            raw_value: None,
            quality: None,
            source_time: None,
            receive_time: None,
        };
        self.refresh_point(&mut view).then_some(view)
    }

    /// Set everything of `view` but its id and tag to the point's state now; false when
    /// the engine has no such point.
    fn refresh_point(&self, view: &mut PointView) -> bool {
        let Some(p) = self.pts.get(view.id.index()) else {
            return false;
        };
        let stale = p.phase[STALE].on();
        let quality = p
            .seen
            .then_some(if stale { Quality::Stale } else { p.quality });
        view.value = (quality == Some(Quality::Good))
            .then_some(p.last_value)
            .filter(|v| v.is_finite());
        view.raw_value = p.seen.then_some(p.last_value).filter(|v| v.is_finite());
        view.quality = quality;
        view.source_time = ts(p.last_source);
        view.receive_time = ts(p.last_time);
        true
    }

    /// Current warning grades.
    pub fn warnings(&self) -> WarningsView {
        WarningsView {
            park: self.warn.park,
            enterprises: self
                .warn
                .codes
                .iter()
                .cloned()
                .zip(self.warn.grades.iter().copied())
                .collect(),
        }
    }

    /// Everything at once (allocates; the engine task publishes it about once a second).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            time: ts(self.last_time),
            drill: self.cfg.drill.clone(),
            points: (0..self.pts.len())
                .filter_map(|i| self.point(PointId(i as u32)))
                .collect(),
            alarms: self.alarms(),
            warnings: self.warnings(),
            stats: self.stats,
        }
    }

    /// Make `s` what [`Engine::snapshot`] returns now, reusing its allocations: when `s`
    /// lists this engine's points in order (a snapshot it made earlier: the table does not
    /// change), their tags stay and only the values are written, so the engine task's
    /// once-a-second snapshot of a 10,000-point park allocates nothing per point (the
    /// allocations and frees of a fresh one were ~0.6 % of a core). Otherwise the points
    /// are built anew.
    pub fn snapshot_into(&self, s: &mut Snapshot) {
        let same_points = s.points.len() == self.pts.len()
            && s.points.iter().enumerate().all(|(i, v)| {
                v.id.index() == i && self.table.get(v.id).is_some_and(|p| p.tag == v.tag)
            });
        if same_points {
            for v in &mut s.points {
                self.refresh_point(v);
            }
        } else {
            s.points = (0..self.pts.len())
                .filter_map(|i| self.point(PointId(i as u32)))
                .collect();
        }
        s.time = ts(self.last_time);
        s.drill.clone_from(&self.cfg.drill);
        s.alarms = self.alarms();
        s.warnings = self.warnings();
        s.stats = self.stats;
    }

    /// Bring alarm states back after a restart from the journal's events (oldest first).
    /// Call before the first reading. Each alarm takes the state of its last event: an
    /// unacknowledged alarm stays unacknowledged (not forgotten), an acknowledged one stays
    /// acknowledged (not announced again), a shelve keeps its end time. Warning grades take
    /// their last value. Event ids continue after the largest one seen. Conditions are
    /// re-evaluated from the next readings: what cleared while parkguard was down returns
    /// then, with an event.
    pub fn restore(&mut self, events: &[Event]) -> RestoreReport {
        let mut report = RestoreReport::default();
        let mut max_id = 0;
        let mut ent_ix: HashMap<&str, usize> = HashMap::new();
        for (i, c) in self.warn.codes.iter().enumerate() {
            ent_ix.insert(c.as_str(), i);
        }
        let mut grades: Vec<(Option<usize>, Grade)> = Vec::new();
        for ev in events {
            max_id = max_id.max(ev.id());
            match ev {
                Event::Warning(w) => match &w.scope {
                    WarningScope::Park => grades.push((None, w.to)),
                    WarningScope::Enterprise { code } => {
                        if let Some(&e) = ent_ix.get(code.as_str()) {
                            grades.push((Some(e), w.to));
                        }
                    }
                },
                Event::Alarm(a) => {
                    let Some(s) = self.slot_of(&a.alarm) else {
                        if !report.unknown.contains(&a.alarm) {
                            report.unknown.push(a.alarm.clone());
                        }
                        continue;
                    };
                    report.applied += 1;
                    let slot = &mut self.slots[s];
                    slot.state = a.to;
                    slot.active = a.active;
                    slot.silenced = false;
                    slot.shelved_until = a.shelved_until.map_or(NEVER, |t| t.0);
                    match a.kind {
                        crate::alarm::EventKind::Activate => slot.active_since = a.time.0,
                        crate::alarm::EventKind::Acknowledge => slot.ack_at = a.time.0,
                        _ => {}
                    }
                    if let SlotOwner::Point(pi, c) = self.owner(s) {
                        let p = &mut self.pts[pi];
                        p.phase[c] = if a.active {
                            Phase::Active
                        } else {
                            Phase::Inactive
                        };
                        if c < 4 {
                            p.since[c] = a.time.0;
                        }
                    }
                }
            }
        }
        drop(ent_ix);
        for (e, g) in grades {
            match e {
                None => self.warn.park = g,
                Some(e) => self.warn.grades[e] = g,
            }
        }
        // Rebuild everything derived from the restored phases, silently.
        for d in &mut self.devices {
            d.comm_lost = 0;
            d.stale = 0;
        }
        for a in &mut self.warn.areas {
            *a = Default::default();
        }
        for c in &mut self.warn.counts {
            *c = Default::default();
        }
        for pi in 0..self.pts.len() {
            let p = &mut self.pts[pi];
            p.ptimers = 0;
            p.warn = 0;
            p.lvl = 0;
            p.bad = false;
            if p.phase[STALE].on() && p.device != super::NONE {
                self.devices[p.device as usize].stale += 1;
            }
        }
        for s in 0..self.pts.len() * NC {
            self.refresh_stimer(s);
        }
        let mut sink = Vec::new();
        for pi in 0..self.pts.len() {
            // With its groups hidden, this only sets the point's vote level and recounts
            // warnings; it cannot emit. Groups re-evaluate on their members' next change.
            let (gs, gl) = (self.pts[pi].groups_start, self.pts[pi].groups_len);
            self.pts[pi].groups_len = 0;
            self.update_derived(pi, 0, &mut sink);
            self.pts[pi].groups_len = gl;
            self.pts[pi].groups_start = gs;
        }
        debug_assert!(sink.is_empty());
        for g in 0..self.groups.len() {
            self.groups[g].warn_l2 = false;
            self.group_warn(g);
        }
        for e in 0..self.warn.codes.len() {
            self.warn.mark(e as u32);
        }
        self.next_id = self.next_id.max(max_id + 1);
        report.next_event_id = self.next_id;
        report
    }
}
