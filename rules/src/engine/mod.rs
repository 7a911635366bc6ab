//! The alarm engine: readings in, [`Event`]s out.
//!
//! # Why it looks like this
//! - **Pure.** No I/O, no clock. A reading carries its receive time, which is the engine's
//!   time for delays; [`Engine::on_tick`] and [`Engine::command`] take `now`. The same
//!   readings, ticks and commands always give the same events (replay, drills, backtests,
//!   property tests).
//! - **One writer.** The daemon's engine task owns the one `Engine` of the real path; a
//!   drill owns another with [`EngineConfig::drill`] set.
//! - **Hot path without allocation.** State lives in flat vectors indexed by
//!   [`PointId`]; the per-reading work when nothing changes is a handful of comparisons on
//!   one ~200-byte record. Strings are built only when an event is emitted.
//! - **Condition apart from state.** Each point has 13 alarm slots
//!   ([`crate::alarm::Condition::POINT`]); the *phase* of a slot (inactive, on-delay
//!   pending, active, off-delay clearing) is the signal processing, the *state* is the
//!   ISA-18.2 lifecycle ([`crate::alarm`]).
//!
//! # Evaluation rules
//! - Limits trip at `value ≥ h/hh` and `value ≤ l/ll`; the value must stay past the limit
//!   for `on_delay` (checked on every reading and tick) and an active limit clears only when
//!   the value is past `limit ∓ deadband` for `off_delay`.
//! - Only good values are compared with limits. On bad quality the limit alarms keep their
//!   state (a gas alarm never clears because the detector died) and pending on-delays
//!   restart. One exception: an out-of-range reading at or above the top of the range is
//!   evaluated against the high limits (a detector over range may be in a large leak).
//! - Each bad quality raises its own alarm at once (comm-lost, device exception, out of
//!   range, fault, maintenance, inhibited). Stale is raised by `on_tick` when no reading came
//!   for `stale_multiple × expected_interval`, and clears on the next reading.
//! - A device whose points report comm-lost, or whose points are all stale, raises one
//!   root-cause alarm `device/<id>:COMM_LOST`; while it is active its points' comm-lost and
//!   stale alarms are *suppressed by design*: still evaluated and recorded, never annunciated.
//!   Likewise a point's own comm-lost suppresses its stale alarm.
//! - Vote groups raise `group/<id>:VOTE_L1` / `VOTE_L2` when `k` members are in level-1 /
//!   level-2 (after their delays); bad-quality or stale members vote as configured.

mod command;
mod config;
mod snapshot;

pub use command::{Command, CommandError};
pub use config::{
    BadQualityVote, EngineConfig, PriorityMap, VoteGroup, VoteGroupConfig, validate_vote_groups,
};
pub use snapshot::{AlarmView, EngineStats, PointView, RestoreReport, Snapshot, WarningsView};

use crate::alarm::{
    AlarmEvent, AlarmState, Condition, DEVICE_PREFIX, EventKind, GROUP_PREFIX, POINT_CONDITIONS,
    SYSTEM_PREFIX, SourceKind, SystemAlarm,
};
use crate::model::{AlarmLimits, Point, PointId, PointKind, Quality, Reading};
use crate::table::PointTable;
use crate::time::Timestamp;
use crate::units::Unit;
use crate::warning::{AreaCounts, EnterpriseCounts, Grade, WarningEvent, WarningScope};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What the engine emits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An alarm changed state (or its condition changed while shelved/suppressed/out of service).
    Alarm(AlarmEvent),
    /// A warning grade changed.
    Warning(WarningEvent),
}

impl Event {
    /// The event id.
    pub fn id(&self) -> u64 {
        match self {
            Event::Alarm(a) => a.id,
            Event::Warning(w) => w.id,
        }
    }
}

const NC: usize = POINT_CONDITIONS;
const HH: usize = Condition::Hh as usize;
const H: usize = Condition::H as usize;
const L: usize = Condition::L as usize;
const LL: usize = Condition::Ll as usize;
const ROC: usize = Condition::RateOfChange as usize;
const FLAT: usize = Condition::Flatline as usize;
const STALE: usize = Condition::Stale as usize;
const COMM: usize = Condition::CommLost as usize;
const QUALITY_FIRST: usize = Condition::CommLost as usize;
const QUALITY_LAST: usize = Condition::Inhibited as usize;
const NONE: u32 = u32::MAX;
const NEVER: i64 = i64::MIN;
const ROC_BUCKETS: usize = 9;

/// Signal-processing phase of a point slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Inactive,
    /// Limit violated, waiting for the on-delay.
    Pending,
    Active,
    /// Back inside the deadband, waiting for the off-delay.
    Clearing,
}

impl Phase {
    #[inline]
    fn on(self) -> bool {
        matches!(self, Phase::Active | Phase::Clearing)
    }
}

/// Hot per-point state. `repr(C, align(64))` with the fields in this order: the path of a
/// reading that changes nothing reads the first cache line and writes the second.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct PointRt {
    // --- cache line 1: read by every reading
    phase: [Phase; NC],
    quality: Quality,
    seen: bool,
    unit: Unit,
    roc: u32,
    flat: u32,
    /// hh, h, l, ll; NaN = not configured.
    lim: [f64; 4],
    // --- cache line 2: written by every reading
    last_value: f64,
    last_time: i64,
    last_source: i64,
    /// Bit per limit slot in pending/clearing.
    ptimers: u16,
    /// Bit per slot shelved or waiting for re-alarm.
    stimers: u16,
    /// Level last propagated to vote groups and warnings: 0, 1, 2.
    lvl: u8,
    /// Bad quality last propagated to vote groups.
    bad: bool,
    /// Level last counted for warnings (gas points only).
    warn: u8,
    gas: bool,
    toxic: bool,
    device: u32,
    ent: u32,
    area: u32,
    groups_start: u32,
    groups_len: u32,
    // --- colder: used when something changes
    deadband: f64,
    on_delay: i64,
    off_delay: i64,
    /// ns without a reading before stale; `i64::MAX` = never.
    stale_after: i64,
    range_hi: f64,
    /// Pending/clearing start of the four limit slots.
    since: [i64; 4],
}

#[derive(Clone, Debug)]
struct RocRt {
    rise_per_min: f64,
    window_min: f64,
    bucket_ns: i64,
    buckets: [(i64, f64); ROC_BUCKETS],
    head: usize,
}

impl RocRt {
    fn new(r: &crate::model::RateOfChange) -> Self {
        let window_ns = dur_ns(r.window).max(ROC_BUCKETS as i64 - 1);
        Self {
            rise_per_min: r.rise_per_min,
            window_min: r.window.as_secs_f64() / 60.0,
            bucket_ns: (window_ns / (ROC_BUCKETS as i64 - 1)).max(1),
            buckets: [(NEVER, f64::NAN); ROC_BUCKETS],
            head: 0,
        }
    }
    /// Record `v` at `t`; return the rise over the window.
    fn update(&mut self, v: f64, t: i64) -> f64 {
        let id = t.div_euclid(self.bucket_ns);
        let h = &mut self.buckets[self.head];
        if h.0 == id {
            h.1 = h.1.min(v);
        } else if h.0 < id {
            self.head = (self.head + 1) % ROC_BUCKETS;
            self.buckets[self.head] = (id, v);
        }
        let oldest = id - (ROC_BUCKETS as i64 - 1);
        let mut min = v;
        for (bid, m) in self.buckets {
            if bid != NEVER && bid >= oldest && m < min {
                min = m;
            }
        }
        v - min
    }
    fn reset(&mut self) {
        self.buckets = [(NEVER, f64::NAN); ROC_BUCKETS];
    }
}

#[derive(Clone, Debug)]
struct FlatRt {
    after: i64,
    tolerance: f64,
    reference: f64,
    since: i64,
}

/// Cold per-alarm state (the ISA-18.2 part).
#[derive(Clone, Copy, Debug)]
struct Slot {
    state: AlarmState,
    active: bool,
    silenced: bool,
    active_since: i64,
    ack_at: i64,
    shelved_until: i64,
}

impl Slot {
    const NEW: Slot = Slot {
        state: AlarmState::Normal,
        active: false,
        silenced: false,
        active_since: NEVER,
        ack_at: NEVER,
        shelved_until: NEVER,
    };
}

#[derive(Clone, Debug)]
struct GroupRt {
    cfg: VoteGroup,
    ent: u32,
    /// Counted as a level-2 vote for warnings.
    warn_l2: bool,
}

#[derive(Clone, Debug)]
struct DeviceRt {
    id: String,
    enterprise: String,
    area: Option<String>,
    points: Vec<u32>,
    comm_lost: u32,
    stale: u32,
}

#[derive(Clone, Debug, Default)]
struct WarnRt {
    codes: Vec<String>,
    counts: Vec<EnterpriseCounts>,
    ent_areas: Vec<Vec<u32>>,
    areas: Vec<AreaCounts>,
    grades: Vec<Grade>,
    park: Grade,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
}

impl WarnRt {
    fn mark(&mut self, e: u32) {
        if !self.is_dirty[e as usize] {
            self.is_dirty[e as usize] = true;
            self.dirty.push(e);
        }
    }
}

/// Context of an event: when, and what value/limit it saw.
#[derive(Clone, Copy, Debug, Default)]
struct Ctx<'a> {
    time: i64,
    source_time: Option<i64>,
    value: Option<f64>,
    limit: Option<f64>,
    user: Option<&'a str>,
    comment: Option<&'a str>,
}

impl<'a> Ctx<'a> {
    fn at(time: i64) -> Self {
        Ctx {
            time,
            ..Default::default()
        }
    }
}

fn dur_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn quality_condition(q: Quality) -> Option<usize> {
    Some(match q {
        Quality::Good => return None,
        Quality::CommLost => Condition::CommLost,
        Quality::DeviceException { .. } => Condition::DeviceException,
        Quality::OutOfRange => Condition::OutOfRange,
        Quality::Fault => Condition::Fault,
        Quality::Maintenance => Condition::Maintenance,
        Quality::Inhibited => Condition::Inhibited,
        Quality::Stale => Condition::Stale,
    } as usize)
}

/// One step of the limit signal processing (pure). `high`: trips at `v ≥ lim`.
#[inline]
#[allow(clippy::too_many_arguments)]
fn limit_step(
    ph: Phase,
    since: i64,
    v: f64,
    lim: f64,
    db: f64,
    high: bool,
    t: i64,
    on: i64,
    off: i64,
) -> (Phase, i64) {
    if lim.is_nan() {
        return (Phase::Inactive, since);
    }
    let violated = if high { v >= lim } else { v <= lim };
    let clear = if high { v < lim - db } else { v > lim + db };
    match ph {
        Phase::Inactive if violated => {
            if on <= 0 {
                (Phase::Active, t)
            } else {
                (Phase::Pending, t)
            }
        }
        Phase::Inactive => (Phase::Inactive, since),
        Phase::Pending if violated => {
            if t.saturating_sub(since) >= on {
                (Phase::Active, t)
            } else {
                (Phase::Pending, since)
            }
        }
        Phase::Pending => (Phase::Inactive, since),
        Phase::Active if clear => {
            if off <= 0 {
                (Phase::Inactive, t)
            } else {
                (Phase::Clearing, t)
            }
        }
        Phase::Active => (Phase::Active, since),
        Phase::Clearing if clear => {
            if t.saturating_sub(since) >= off {
                (Phase::Inactive, t)
            } else {
                (Phase::Clearing, since)
            }
        }
        Phase::Clearing => (Phase::Active, since),
    }
}

/// Where a slot index points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotOwner {
    Point(usize, usize),
    Group(usize, usize),
    Device(usize),
    /// parkguard's own alarm ([`SystemAlarm::ALL`] index).
    System(usize),
}

/// The alarm engine. See the module docs.
#[derive(Clone, Debug)]
pub struct Engine {
    table: Arc<PointTable>,
    cfg: EngineConfig,
    re_alarm: i64,
    pts: Vec<PointRt>,
    slots: Vec<Slot>,
    roc: Vec<RocRt>,
    flat: Vec<FlatRt>,
    groups: Vec<GroupRt>,
    member_of: Vec<u32>,
    devices: Vec<DeviceRt>,
    group_ix: HashMap<String, u32>,
    device_ix: HashMap<String, u32>,
    gbase: usize,
    dbase: usize,
    /// First system alarm slot ([`SystemAlarm::ALL`] follow the devices').
    sbase: usize,
    warn: WarnRt,
    next_id: u64,
    start: Option<i64>,
    last_time: i64,
    scratch: Vec<u32>,
    stats: EngineStats,
}

impl Engine {
    /// Build the engine for every point of `table`, with validated `groups`
    /// ([`validate_vote_groups`]). `cfg` should have passed [`EngineConfig::validate`];
    /// out-of-range numbers are clamped here rather than refused.
    pub fn new(table: Arc<PointTable>, cfg: EngineConfig, groups: Vec<VoteGroup>) -> Engine {
        let n = table.len();
        let mut warn = WarnRt::default();
        let mut ent_ix: HashMap<String, u32> = HashMap::new();
        let mut area_ix: HashMap<(u32, Option<String>), u32> = HashMap::new();
        let mut ent_of = |code: &str, warn: &mut WarnRt| -> u32 {
            *ent_ix.entry(code.to_owned()).or_insert_with(|| {
                warn.codes.push(code.to_owned());
                warn.counts.push(EnterpriseCounts::default());
                warn.ent_areas.push(Vec::new());
                warn.grades.push(Grade::None);
                warn.is_dirty.push(false);
                (warn.codes.len() - 1) as u32
            })
        };
        let mut devices: Vec<DeviceRt> = Vec::new();
        let mut device_ix: HashMap<String, u32> = HashMap::new();
        let mut pts = Vec::with_capacity(n);
        let mut roc = Vec::new();
        let mut flat = Vec::new();
        let stale_multiple = if cfg.stale_multiple.is_finite() {
            cfg.stale_multiple.max(1.0)
        } else {
            3.0
        };
        for p in table.points() {
            let ent = ent_of(&p.enterprise, &mut warn);
            let area = *area_ix.entry((ent, p.area.clone())).or_insert_with(|| {
                warn.areas.push(AreaCounts::default());
                let a = (warn.areas.len() - 1) as u32;
                warn.ent_areas[ent as usize].push(a);
                a
            });
            let device = match &p.device {
                None => NONE,
                Some(d) => {
                    let ix = *device_ix.entry(d.clone()).or_insert_with(|| {
                        devices.push(DeviceRt {
                            id: d.clone(),
                            enterprise: p.enterprise.clone(),
                            area: p.area.clone(),
                            points: Vec::new(),
                            comm_lost: 0,
                            stale: 0,
                        });
                        (devices.len() - 1) as u32
                    });
                    devices[ix as usize].points.push(p.id.0);
                    ix
                }
            };
            let stale_after = if p.expected_interval.is_zero() {
                i64::MAX
            } else {
                let ns = p.expected_interval.as_nanos() as f64 * stale_multiple;
                if ns >= i64::MAX as f64 {
                    i64::MAX
                } else {
                    ns as i64
                }
            };
            let mut rt = PointRt {
                lim: [f64::NAN; 4],
                deadband: 0.0,
                on_delay: 0,
                off_delay: 0,
                stale_after,
                range_hi: p.range_hi,
                last_value: f64::NAN,
                last_time: NEVER,
                last_source: NEVER,
                since: [NEVER; 4],
                quality: Quality::Good,
                unit: p.unit,
                seen: false,
                phase: [Phase::Inactive; NC],
                ptimers: 0,
                stimers: 0,
                lvl: 0,
                bad: false,
                warn: 0,
                gas: p.kind.is_gas(),
                toxic: p.kind == PointKind::Toxic,
                device,
                ent,
                area,
                roc: NONE,
                flat: NONE,
                groups_start: 0,
                groups_len: 0,
            };
            apply_limits(&mut rt, &p.limits, &mut roc, &mut flat);
            pts.push(rt);
        }
        // Group membership, flattened per point.
        let mut per_point: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut grts = Vec::with_capacity(groups.len());
        let mut group_ix = HashMap::new();
        for (g, grp) in groups.into_iter().enumerate() {
            for m in &grp.members {
                if let Some(v) = per_point.get_mut(m.index()) {
                    v.push(g as u32);
                }
            }
            group_ix.insert(grp.id.clone(), g as u32);
            let ent = ent_of(&grp.enterprise, &mut warn);
            grts.push(GroupRt {
                cfg: grp,
                ent,
                warn_l2: false,
            });
        }
        let mut member_of = Vec::new();
        for (pi, v) in per_point.into_iter().enumerate() {
            pts[pi].groups_start = member_of.len() as u32;
            pts[pi].groups_len = v.len() as u32;
            member_of.extend(v);
        }
        let gbase = n * NC;
        let dbase = gbase + 2 * grts.len();
        let sbase = dbase + devices.len();
        let nslots = sbase + SystemAlarm::ALL.len();
        Engine {
            re_alarm: (cfg.re_alarm_s as i64).saturating_mul(1_000_000_000),
            cfg,
            table,
            pts,
            slots: vec![Slot::NEW; nslots],
            roc,
            flat,
            groups: grts,
            member_of,
            devices,
            group_ix,
            device_ix,
            gbase,
            dbase,
            sbase,
            warn,
            next_id: 1,
            start: None,
            last_time: NEVER,
            scratch: Vec::with_capacity(n),
            stats: EngineStats::default(),
        }
    }

    /// The point table the engine was built for.
    pub fn table(&self) -> &Arc<PointTable> {
        &self.table
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Id the next event will get.
    pub fn next_event_id(&self) -> u64 {
        self.next_id
    }

    /// Continue the event id sequence at `next` (e.g. from the journal's last id + 1). Ids
    /// never go backwards: a smaller `next` is ignored.
    pub fn set_next_event_id(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Bytes of engine state (capacity-based, excluding the shared point table and the
    /// strings of groups/devices), and the bytes per point.
    pub fn memory_bytes(&self) -> (usize, f64) {
        use std::mem::size_of;
        let total = self.pts.capacity() * size_of::<PointRt>()
            + self.slots.capacity() * size_of::<Slot>()
            + self.roc.capacity() * size_of::<RocRt>()
            + self.flat.capacity() * size_of::<FlatRt>()
            + self.member_of.capacity() * size_of::<u32>()
            + self.scratch.capacity() * size_of::<u32>()
            + self.groups.capacity() * size_of::<GroupRt>()
            + self.devices.capacity() * size_of::<DeviceRt>()
            + self
                .devices
                .iter()
                .map(|d| d.points.capacity() * 4)
                .sum::<usize>()
            + self.warn.areas.capacity() * size_of::<AreaCounts>()
            + self.warn.counts.capacity() * size_of::<EnterpriseCounts>();
        let per = if self.pts.is_empty() {
            0.0
        } else {
            total as f64 / self.pts.len() as f64
        };
        (total, per)
    }

    // ---------------------------------------------------------------- readings

    /// Evaluate one reading; push any events to `out`. Allocates nothing unless an event is
    /// emitted. Readings for unknown points are counted and ignored.
    pub fn on_reading(&mut self, r: &Reading, out: &mut Vec<Event>) {
        let pi = r.point.index();
        let Some(p) = self.pts.get(pi) else {
            self.stats.unknown_points += 1;
            return;
        };
        let t = r.receive_time.0;
        if self.start.is_none() {
            self.start = Some(t);
        }
        if t > self.last_time {
            self.last_time = t;
        }
        self.stats.readings += 1;
        // Stale clears first: a device whose points come back one by one must not see its
        // last point's stale alarm released from suppression a moment before it clears.
        if p.phase[STALE].on() && r.quality != Quality::Stale {
            let ctx = Ctx {
                time: t,
                source_time: Some(r.source_time.0),
                ..Default::default()
            };
            self.set_stale(pi, false, &ctx, out);
        }
        let p = &self.pts[pi];
        if !p.seen || p.quality != r.quality {
            self.quality_change(pi, r, out);
        }
        let mut v = r.value;
        let p = &self.pts[pi];
        if r.unit != p.unit {
            let gas = self.table.points()[pi].gas;
            match r.unit.convert(v, p.unit, gas) {
                Ok(x) => v = x,
                Err(_) => {
                    self.stats.unit_mismatch += 1;
                    v = f64::NAN;
                }
            }
        }
        let p = &mut self.pts[pi];
        p.last_value = v;
        p.last_time = t;
        p.last_source = r.source_time.0;
        if !v.is_finite() {
            // Nothing to compare (a driver bug or an unconvertible unit): limits keep state.
        } else if r.quality.is_good() {
            self.eval_limits(pi, v, r, 4, out);
            let p = &self.pts[pi];
            if p.roc != NONE || p.phase[ROC].on() {
                self.eval_roc(pi, v, r, out);
            }
            let p = &self.pts[pi];
            if p.flat != NONE || p.phase[FLAT].on() {
                self.eval_flat(pi, v, r, out);
            }
        } else if r.quality == Quality::OutOfRange && v >= self.pts[pi].range_hi {
            self.eval_limits(pi, v, r, 2, out);
        }
        if !self.warn.dirty.is_empty() {
            self.flush_warnings(t, out);
        }
    }

    /// Evaluate a batch of readings in order.
    pub fn on_readings(&mut self, rs: &[Reading], out: &mut Vec<Event>) {
        for r in rs {
            self.on_reading(r, out);
        }
    }

    /// Limit slots `0..upto` (4 = all, 2 = high only).
    #[inline]
    fn eval_limits(&mut self, pi: usize, v: f64, r: &Reading, upto: usize, out: &mut Vec<Event>) {
        for c in 0..upto {
            let p = &self.pts[pi];
            let lim = p.lim[c];
            let ph = p.phase[c];
            let high = c < 2;
            if ph == Phase::Inactive && !(if high { v >= lim } else { v <= lim }) {
                // Fast path: nothing pending and not violated (NaN limits compare false).
                continue;
            }
            let t = r.receive_time.0;
            let (nph, nsince) = limit_step(
                ph,
                p.since[c],
                v,
                lim,
                p.deadband,
                high,
                t,
                p.on_delay,
                p.off_delay,
            );
            if nph == ph && nsince == p.since[c] {
                continue;
            }
            let p = &mut self.pts[pi];
            p.phase[c] = nph;
            p.since[c] = nsince;
            if matches!(nph, Phase::Pending | Phase::Clearing) {
                p.ptimers |= 1 << c;
            } else {
                p.ptimers &= !(1 << c);
            }
            if ph.on() != nph.on() {
                let ctx = Ctx {
                    time: t,
                    source_time: Some(r.source_time.0),
                    value: finite(v),
                    limit: finite(lim),
                    ..Default::default()
                };
                self.condition(pi * NC + c, nph.on(), &ctx, out);
                self.update_derived(pi, t, out);
            }
        }
    }

    fn eval_roc(&mut self, pi: usize, v: f64, r: &Reading, out: &mut Vec<Event>) {
        let p = &self.pts[pi];
        let db = p.deadband;
        let on = p.phase[ROC].on();
        if p.roc == NONE {
            // The rate-of-change setting was removed while active.
            let ctx = Ctx {
                time: r.receive_time.0,
                source_time: Some(r.source_time.0),
                ..Default::default()
            };
            self.set_point_cond(pi, ROC, false, &ctx, out);
            return;
        }
        let rr = &mut self.roc[p.roc as usize];
        let rise = rr.update(v, r.receive_time.0);
        let threshold = rr.rise_per_min * rr.window_min;
        let want = if on {
            rise >= threshold - db
        } else {
            rise >= threshold
        };
        if want != on {
            let rate = if rr.window_min > 0.0 {
                rise / rr.window_min
            } else {
                rise
            };
            let ctx = Ctx {
                time: r.receive_time.0,
                source_time: Some(r.source_time.0),
                value: finite(rate),
                limit: finite(rr.rise_per_min),
                ..Default::default()
            };
            self.set_point_cond(pi, ROC, want, &ctx, out);
        }
    }

    fn eval_flat(&mut self, pi: usize, v: f64, r: &Reading, out: &mut Vec<Event>) {
        let t = r.receive_time.0;
        let on = self.pts[pi].phase[FLAT].on();
        if self.pts[pi].flat == NONE {
            let ctx = Ctx {
                time: t,
                source_time: Some(r.source_time.0),
                ..Default::default()
            };
            self.set_point_cond(pi, FLAT, false, &ctx, out);
            return;
        }
        let f = &mut self.flat[self.pts[pi].flat as usize];
        let want = if f.since == NEVER || (v - f.reference).abs() > f.tolerance {
            f.reference = v;
            f.since = t;
            false
        } else {
            t.saturating_sub(f.since) >= f.after
        };
        if want != on {
            let secs = t.saturating_sub(f.since) as f64 / 1e9;
            let ctx = Ctx {
                time: t,
                source_time: Some(r.source_time.0),
                value: Some(secs),
                limit: Some(f.after as f64 / 1e9),
                ..Default::default()
            };
            self.set_point_cond(pi, FLAT, want, &ctx, out);
        }
    }

    /// The quality of a point changed (or it is the point's first reading).
    fn quality_change(&mut self, pi: usize, r: &Reading, out: &mut Vec<Event>) {
        let t = r.receive_time.0;
        let p = &self.pts[pi];
        let old = p.seen.then_some(p.quality);
        let new = r.quality;
        let dev = p.device;
        if dev != NONE {
            let d = &mut self.devices[dev as usize];
            if old == Some(Quality::CommLost) {
                d.comm_lost = d.comm_lost.saturating_sub(1);
            }
            if new == Quality::CommLost {
                d.comm_lost += 1;
            }
        }
        let ctx = Ctx {
            time: t,
            source_time: Some(r.source_time.0),
            value: finite(r.value),
            ..Default::default()
        };
        let p = &mut self.pts[pi];
        p.quality = new;
        p.seen = true;
        if !new.is_good() {
            // Pending on-delays restart; clearing off-delays fall back to active; the flatline
            // and rate references restart after bad data.
            for c in 0..4 {
                match p.phase[c] {
                    Phase::Pending => p.phase[c] = Phase::Inactive,
                    Phase::Clearing => p.phase[c] = Phase::Active,
                    _ => {}
                }
            }
            p.ptimers = 0;
            if p.flat != NONE {
                self.flat[p.flat as usize].since = NEVER;
            }
            if p.roc != NONE {
                self.roc[p.roc as usize].reset();
            }
        }
        // The root cause first, so that the point's own comm-lost is born suppressed.
        if dev != NONE && new == Quality::CommLost {
            self.update_device(dev as usize, &ctx, out);
        }
        let want = quality_condition(new);
        for c in QUALITY_FIRST..=QUALITY_LAST {
            let on = self.pts[pi].phase[c].on();
            let w = want == Some(c);
            if on != w {
                self.set_point_cond(pi, c, w, &ctx, out);
            }
        }
        if want == Some(STALE) && !self.pts[pi].phase[STALE].on() {
            self.set_stale(pi, true, &ctx, out);
        }
        // Nothing may stay suppressed without a root cause (also after a restore).
        self.release(pi * NC + STALE, t, out);
        self.release(pi * NC + COMM, t, out);
        if dev != NONE {
            self.update_device(dev as usize, &ctx, out);
        }
        self.update_derived(pi, t, out);
    }

    fn set_point_cond(
        &mut self,
        pi: usize,
        c: usize,
        active: bool,
        ctx: &Ctx<'_>,
        out: &mut Vec<Event>,
    ) {
        self.pts[pi].phase[c] = if active {
            Phase::Active
        } else {
            Phase::Inactive
        };
        self.condition(pi * NC + c, active, ctx, out);
    }

    /// Stale on or off, keeping the device's stale count. Callers in `on_tick` count the
    /// device themselves (`counted = true`) to raise the root cause first.
    fn set_stale(&mut self, pi: usize, active: bool, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
        let dev = self.pts[pi].device;
        if dev != NONE {
            let d = &mut self.devices[dev as usize];
            if active {
                d.stale += 1;
            } else {
                d.stale = d.stale.saturating_sub(1);
            }
            if active {
                self.update_device(dev as usize, ctx, out);
            }
        }
        self.set_point_cond(pi, STALE, active, ctx, out);
        if dev != NONE && !active {
            self.update_device(dev as usize, ctx, out);
        }
        self.update_derived(pi, ctx.time, out);
    }

    // ---------------------------------------------------------------- ticks

    /// Advance time to `now`: raise stale alarms, let on/off-delays expire, end shelves,
    /// re-alarm standing acknowledged alarms. Call about once a second (the daemon does;
    /// a replay calls it on the readings' clock).
    pub fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Event>) {
        let now = now.0;
        let start = *self.start.get_or_insert(now);
        if now > self.last_time {
            self.last_time = now;
        }
        // Stale: collect due points, count them on their devices, raise the devices' root
        // causes, then the points' own stale alarms (suppressed where a root cause is up).
        let mut due = std::mem::take(&mut self.scratch);
        due.clear();
        for (pi, p) in self.pts.iter().enumerate() {
            if p.stale_after == i64::MAX || p.phase[STALE].on() {
                continue;
            }
            let last = if p.seen { p.last_time } else { start };
            if now.saturating_sub(last) > p.stale_after {
                due.push(pi as u32);
            }
        }
        for &pi in &due {
            let dev = self.pts[pi as usize].device;
            if dev != NONE {
                self.devices[dev as usize].stale += 1;
            }
        }
        for &pi in &due {
            let dev = self.pts[pi as usize].device;
            if dev != NONE {
                self.update_device(dev as usize, &Ctx::at(now), out);
            }
        }
        for &pi in &due {
            let pi = pi as usize;
            let p = &self.pts[pi];
            let last = if p.seen { p.last_time } else { start };
            let ctx = Ctx {
                time: now,
                value: Some(now.saturating_sub(last) as f64 / 1e9),
                limit: Some(p.stale_after as f64 / 1e9),
                ..Default::default()
            };
            self.set_point_cond(pi, STALE, true, &ctx, out);
            self.update_derived(pi, now, out);
        }
        self.scratch = due;
        // Timers of point slots.
        for pi in 0..self.pts.len() {
            let p = &self.pts[pi];
            if p.ptimers | p.stimers == 0 {
                continue;
            }
            self.point_timers(pi, now, out);
        }
        // Group and device slots are few: look at each.
        for s in self.gbase..self.slots.len() {
            self.slot_timer(s, now, out);
        }
        if !self.warn.dirty.is_empty() {
            self.flush_warnings(now, out);
        }
    }

    fn point_timers(&mut self, pi: usize, now: i64, out: &mut Vec<Event>) {
        let bits = self.pts[pi].ptimers;
        for c in 0..4 {
            if bits & (1 << c) == 0 {
                continue;
            }
            let p = &self.pts[pi];
            let since = p.since[c];
            let next = match p.phase[c] {
                Phase::Pending if now.saturating_sub(since) >= p.on_delay => Phase::Active,
                Phase::Clearing if now.saturating_sub(since) >= p.off_delay => Phase::Inactive,
                _ => continue,
            };
            let ctx = Ctx {
                time: now,
                value: finite(p.last_value),
                limit: finite(p.lim[c]),
                ..Default::default()
            };
            let p = &mut self.pts[pi];
            p.phase[c] = next;
            p.since[c] = now;
            p.ptimers &= !(1 << c);
            self.condition(pi * NC + c, next.on(), &ctx, out);
            self.update_derived(pi, now, out);
        }
        let sbits = self.pts[pi].stimers;
        if sbits != 0 {
            for c in 0..NC {
                if sbits & (1 << c) != 0 {
                    self.slot_timer(pi * NC + c, now, out);
                }
            }
        }
    }

    /// Shelve expiry and re-alarm of one slot.
    fn slot_timer(&mut self, s: usize, now: i64, out: &mut Vec<Event>) {
        let slot = self.slots[s];
        if slot.state == AlarmState::Shelved && now >= slot.shelved_until {
            let ctx = Ctx {
                time: now,
                comment: Some("shelve time expired"),
                ..Default::default()
            };
            let to = self.resolve(s);
            self.transition(s, EventKind::Unshelve, to, &ctx, out);
            self.after_state_change(s, now, out);
        } else if slot.state == AlarmState::Acknowledged
            && slot.active
            && self.re_alarm > 0
            && now.saturating_sub(slot.ack_at) >= self.re_alarm
        {
            let ctx = Ctx {
                time: now,
                comment: Some("standing alarm re-annunciated"),
                ..Default::default()
            };
            self.transition(s, EventKind::Realarm, AlarmState::Unacknowledged, &ctx, out);
        }
    }

    // ---------------------------------------------------------------- state machine

    fn owner(&self, s: usize) -> SlotOwner {
        if s < self.gbase {
            SlotOwner::Point(s / NC, s % NC)
        } else if s < self.dbase {
            let g = s - self.gbase;
            SlotOwner::Group(g / 2, g % 2)
        } else if s < self.sbase {
            SlotOwner::Device(s - self.dbase)
        } else {
            SlotOwner::System(s - self.sbase)
        }
    }

    /// The root-cause alarm suppressing slot `s`, if any: the device's comm-lost for a
    /// point's comm-lost and stale; the point's own comm-lost for its stale.
    fn suppressor(&self, s: usize) -> Option<usize> {
        if let SlotOwner::Point(pi, c) = self.owner(s)
            && (c == STALE || c == COMM)
        {
            let d = self.pts[pi].device;
            if d != NONE && self.slots[self.dbase + d as usize].active {
                return Some(self.dbase + d as usize);
            }
            if c == STALE && self.slots[pi * NC + COMM].active {
                return Some(pi * NC + COMM);
            }
        }
        None
    }

    /// Release slot `s` from suppression if nothing suppresses it any more.
    fn release(&mut self, s: usize, t: i64, out: &mut Vec<Event>) {
        if self.slots[s].state == AlarmState::SuppressedByDesign && self.suppressor(s).is_none() {
            let to = if self.slots[s].active {
                AlarmState::Unacknowledged
            } else {
                AlarmState::Normal
            };
            let ctx = Ctx {
                time: t,
                comment: Some("root cause cleared"),
                ..Default::default()
            };
            self.transition(s, EventKind::Unsuppress, to, &ctx, out);
        }
    }

    /// Where an alarm goes when it leaves shelved / suppressed / out of service.
    fn resolve(&self, s: usize) -> AlarmState {
        if !self.slots[s].active {
            AlarmState::Normal
        } else if self.suppressor(s).is_some() {
            AlarmState::SuppressedByDesign
        } else {
            AlarmState::Unacknowledged
        }
    }

    /// The condition of slot `s` became present or absent.
    fn condition(&mut self, s: usize, active: bool, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
        if self.slots[s].active == active {
            return;
        }
        // Safety net: a suppression whose root cause is gone never swallows a condition.
        self.release(s, ctx.time, out);
        let from = self.slots[s].state;
        let to = match (from, active) {
            (AlarmState::Normal, true) => {
                if self.suppressor(s).is_some() {
                    AlarmState::SuppressedByDesign
                } else {
                    AlarmState::Unacknowledged
                }
            }
            (AlarmState::ReturnedUnacknowledged, true) => AlarmState::Unacknowledged,
            (AlarmState::Unacknowledged, false) => AlarmState::ReturnedUnacknowledged,
            (AlarmState::Acknowledged, false) => AlarmState::Normal,
            (st, _) => st,
        };
        let slot = &mut self.slots[s];
        slot.active = active;
        if active {
            slot.active_since = ctx.time;
            slot.silenced = false;
        }
        let kind = if active {
            EventKind::Activate
        } else {
            EventKind::Return
        };
        self.transition(s, kind, to, ctx, out);
        if let SlotOwner::Device(d) = self.owner(s) {
            self.device_suppression(d, ctx.time, out);
        }
        if let SlotOwner::Group(g, _) = self.owner(s) {
            self.group_warn(g);
        }
    }

    /// Move slot `s` to `to` and record it.
    fn transition(
        &mut self,
        s: usize,
        kind: EventKind,
        to: AlarmState,
        ctx: &Ctx<'_>,
        out: &mut Vec<Event>,
    ) {
        let from = self.slots[s].state;
        debug_assert!(
            crate::alarm::is_legal(kind, from, to),
            "illegal {kind:?} {from:?} → {to:?}"
        );
        {
            let slot = &mut self.slots[s];
            slot.state = to;
            match kind {
                EventKind::Acknowledge => {
                    slot.silenced = false;
                    slot.ack_at = ctx.time;
                }
                EventKind::Silence => slot.silenced = true,
                EventKind::Realarm => slot.silenced = false,
                _ => {}
            }
            if to != AlarmState::Shelved {
                slot.shelved_until = NEVER;
            }
        }
        self.refresh_stimer(s);
        self.emit(s, kind, from, to, ctx, out);
    }

    fn refresh_stimer(&mut self, s: usize) {
        if let SlotOwner::Point(pi, c) = self.owner(s) {
            let slot = &self.slots[s];
            let needs = slot.state == AlarmState::Shelved
                || (self.re_alarm > 0 && slot.state == AlarmState::Acknowledged && slot.active);
            let p = &mut self.pts[pi];
            if needs {
                p.stimers |= 1 << c;
            } else {
                p.stimers &= !(1 << c);
            }
        }
    }

    /// After an operator or timer changed a state: out-of-service changes what counts for
    /// votes and warnings.
    fn after_state_change(&mut self, s: usize, t: i64, out: &mut Vec<Event>) {
        match self.owner(s) {
            SlotOwner::Point(pi, c) if c < 4 => self.update_derived(pi, t, out),
            SlotOwner::Group(g, _) => self.group_warn(g),
            _ => {}
        }
    }

    fn emit(
        &mut self,
        s: usize,
        kind: EventKind,
        from: AlarmState,
        to: AlarmState,
        ctx: &Ctx<'_>,
        out: &mut Vec<Event>,
    ) {
        let (alarm, source, source_kind, enterprise, area, condition, unit) = self.describe(s);
        let slot = &self.slots[s];
        let suppressed_by =
            if to == AlarmState::SuppressedByDesign || from == AlarmState::SuppressedByDesign {
                self.suppressor(s).map(|d| self.describe(d).0)
            } else {
                None
            };
        let ev = AlarmEvent {
            id: self.next_id,
            alarm,
            source,
            source_kind,
            enterprise,
            area,
            condition,
            level: condition.level(),
            priority: self.cfg.priority.of(condition),
            kind,
            from,
            to,
            active: slot.active,
            annunciate: to == AlarmState::Unacknowledged && from != AlarmState::Unacknowledged,
            value: ctx.value.and_then(finite),
            limit: ctx.limit.and_then(finite),
            unit: if condition.level().is_some() || condition == Condition::RateOfChange {
                unit
            } else {
                None
            },
            time: Timestamp(ctx.time),
            source_time: ctx.source_time.map(Timestamp),
            user: ctx.user.map(str::to_owned),
            comment: ctx.comment.map(str::to_owned),
            shelved_until: (to == AlarmState::Shelved).then_some(Timestamp(slot.shelved_until)),
            suppressed_by,
            drill: self.cfg.drill.clone(),
        };
        self.next_id += 1;
        self.stats.events += 1;
        out.push(Event::Alarm(ev));
    }

    /// Names of slot `s`: (alarm id, source, kind, enterprise, area, condition, unit).
    #[allow(clippy::type_complexity)]
    fn describe(
        &self,
        s: usize,
    ) -> (
        String,
        String,
        SourceKind,
        String,
        Option<String>,
        Condition,
        Option<Unit>,
    ) {
        match self.owner(s) {
            SlotOwner::Point(pi, c) => {
                let p: &Point = &self.table.points()[pi];
                let cond = Condition::POINT[c];
                (
                    format!("{}:{}", p.tag, cond.suffix()),
                    p.tag.clone(),
                    SourceKind::Point,
                    p.enterprise.clone(),
                    p.area.clone(),
                    cond,
                    Some(p.unit),
                )
            }
            SlotOwner::Group(g, lvl) => {
                let grp = &self.groups[g].cfg;
                let cond = if lvl == 0 {
                    Condition::VoteLevel1
                } else {
                    Condition::VoteLevel2
                };
                (
                    format!("{GROUP_PREFIX}{}:{}", grp.id, cond.suffix()),
                    grp.id.clone(),
                    SourceKind::Group,
                    grp.enterprise.clone(),
                    grp.area.clone(),
                    cond,
                    None,
                )
            }
            SlotOwner::Device(d) => {
                let dev = &self.devices[d];
                (
                    format!(
                        "{DEVICE_PREFIX}{}:{}",
                        dev.id,
                        Condition::DeviceCommLost.suffix()
                    ),
                    dev.id.clone(),
                    SourceKind::Device,
                    dev.enterprise.clone(),
                    dev.area.clone(),
                    Condition::DeviceCommLost,
                    None,
                )
            }
            SlotOwner::System(i) => {
                let a = SystemAlarm::ALL[i];
                (
                    a.alarm_id(),
                    a.source().to_string(),
                    SourceKind::System,
                    String::new(),
                    None,
                    a.condition(),
                    None,
                )
            }
        }
    }

    /// Raise (`active`) or return one of parkguard's own alarms at `now`, with `value`
    /// (e.g. failures counted) and a remark on the event. Returns the events emitted.
    pub(super) fn system_alarm(
        &mut self,
        alarm: SystemAlarm,
        active: bool,
        value: Option<f64>,
        detail: Option<&str>,
        now: i64,
        out: &mut Vec<Event>,
    ) -> usize {
        let before = out.len();
        let ctx = Ctx {
            time: now,
            value,
            comment: detail,
            ..Default::default()
        };
        self.condition(self.sbase + alarm.index(), active, &ctx, out);
        out.len() - before
    }

    // ---------------------------------------------------------------- devices, votes, warnings

    fn update_device(&mut self, d: usize, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
        let dev = &self.devices[d];
        let n = dev.points.len() as u32;
        let want = dev.comm_lost > 0 || (n > 0 && dev.stale >= n);
        let s = self.dbase + d;
        if self.slots[s].active != want {
            let ctx = Ctx {
                value: Some(f64::from(dev.comm_lost.max(dev.stale))),
                limit: None,
                ..*ctx
            };
            self.condition(s, want, &ctx, out);
        }
    }

    /// Suppress or release the comm-lost and stale alarms of device `d`'s points after its
    /// root-cause alarm changed. Alarms in normal are suppressed lazily (when their
    /// condition arrives), so a device going down records one event, not fifty.
    fn device_suppression(&mut self, d: usize, t: i64, out: &mut Vec<Event>) {
        let down = self.slots[self.dbase + d].active;
        for i in 0..self.devices[d].points.len() {
            let pi = self.devices[d].points[i] as usize;
            for c in [COMM, STALE] {
                let s = pi * NC + c;
                let st = self.slots[s].state;
                let ctx = Ctx {
                    time: t,
                    comment: Some(if down {
                        "root cause: device comm lost"
                    } else {
                        "root cause cleared"
                    }),
                    ..Default::default()
                };
                if down
                    && matches!(
                        st,
                        AlarmState::Unacknowledged
                            | AlarmState::Acknowledged
                            | AlarmState::ReturnedUnacknowledged
                    )
                {
                    self.transition(
                        s,
                        EventKind::Suppress,
                        AlarmState::SuppressedByDesign,
                        &ctx,
                        out,
                    );
                } else if !down {
                    self.release(s, t, out);
                }
            }
        }
    }

    /// Recompute what point `pi` contributes to vote groups and warnings.
    fn update_derived(&mut self, pi: usize, t: i64, out: &mut Vec<Event>) {
        let p = &self.pts[pi];
        // An alarm out of service (maintenance) neither votes nor counts for warnings.
        let on =
            |c: usize| p.phase[c].on() && self.slots[pi * NC + c].state != AlarmState::OutOfService;
        let lvl = if on(HH) || on(LL) {
            2
        } else if on(H) || on(L) {
            1
        } else {
            0
        };
        let bad = p.seen && (!p.quality.is_good() || p.phase[STALE].on());
        if (lvl != p.lvl || bad != p.bad) && p.groups_len > 0 {
            let (a, b) = (
                p.groups_start as usize,
                (p.groups_start + p.groups_len) as usize,
            );
            let p = &mut self.pts[pi];
            p.lvl = lvl;
            p.bad = bad;
            for i in a..b {
                let g = self.member_of[i] as usize;
                self.update_group(g, t, out);
            }
        } else {
            let p = &mut self.pts[pi];
            p.lvl = lvl;
            p.bad = bad;
        }
        let p = &self.pts[pi];
        if p.gas {
            let w = lvl;
            if w != p.warn {
                let (old, toxic, ent, area) = (p.warn, p.toxic, p.ent as usize, p.area as usize);
                self.pts[pi].warn = w;
                let a = &mut self.warn.areas[area];
                let e = &mut self.warn.counts[ent];
                let delta = |x: &mut u32, before: bool, after: bool| {
                    if before && !after {
                        *x -= 1;
                    } else if after && !before {
                        *x += 1;
                    }
                };
                delta(&mut a.level1, old >= 1, w >= 1);
                delta(&mut a.level2, old >= 2, w >= 2);
                delta(&mut e.level1, old >= 1, w >= 1);
                delta(&mut e.level2, old >= 2, w >= 2);
                if toxic {
                    delta(&mut e.toxic_level2, old >= 2, w >= 2);
                }
                self.warn.mark(ent as u32);
            }
        }
    }

    fn update_group(&mut self, g: usize, t: i64, out: &mut Vec<Event>) {
        let grp = &self.groups[g].cfg;
        let (mut c1, mut c2) = (0u32, 0u32);
        for m in &grp.members {
            let p = &self.pts[m.index()];
            let v = if p.bad {
                match grp.bad_quality {
                    BadQualityVote::Trip => 2,
                    BadQualityVote::Ignore => 0,
                }
            } else {
                p.lvl
            };
            c1 += u32::from(v >= 1);
            c2 += u32::from(v >= 2);
        }
        let k = grp.k;
        for (lvl, count) in [(0usize, c1), (1, c2)] {
            let s = self.gbase + 2 * g + lvl;
            let want = count >= k;
            if self.slots[s].active != want {
                let ctx = Ctx {
                    time: t,
                    value: Some(f64::from(count)),
                    limit: Some(f64::from(k)),
                    ..Default::default()
                };
                self.condition(s, want, &ctx, out);
            }
        }
    }

    fn group_warn(&mut self, g: usize) {
        let s = self.gbase + 2 * g + 1;
        let slot = &self.slots[s];
        let now = slot.active && slot.state != AlarmState::OutOfService;
        let gr = &mut self.groups[g];
        if now != gr.warn_l2 {
            gr.warn_l2 = now;
            let e = gr.ent as usize;
            if now {
                self.warn.counts[e].vote_level2 += 1;
            } else {
                self.warn.counts[e].vote_level2 -= 1;
            }
            self.warn.mark(e as u32);
        }
    }

    fn flush_warnings(&mut self, t: i64, out: &mut Vec<Event>) {
        let mut changed = false;
        let dirty = std::mem::take(&mut self.warn.dirty);
        for &e in &dirty {
            let e = e as usize;
            self.warn.is_dirty[e] = false;
            let areas = &self.warn.areas;
            let (grade, why) = self.cfg.warning.enterprise_grade(
                self.warn.counts[e],
                self.warn.ent_areas[e].iter().map(|&a| areas[a as usize]),
            );
            let from = self.warn.grades[e];
            if grade != from {
                self.warn.grades[e] = grade;
                changed = true;
                let ev = WarningEvent {
                    id: self.next_id,
                    scope: WarningScope::Enterprise {
                        code: self.warn.codes[e].clone(),
                    },
                    from,
                    to: grade,
                    time: Timestamp(t),
                    reason: why.to_owned(),
                    drill: self.cfg.drill.clone(),
                };
                self.next_id += 1;
                self.stats.events += 1;
                out.push(Event::Warning(ev));
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        self.warn.dirty = dirty;
        if changed {
            let (grade, why) = self
                .cfg
                .warning
                .park_grade(self.warn.grades.iter().copied());
            if grade != self.warn.park {
                let ev = WarningEvent {
                    id: self.next_id,
                    scope: WarningScope::Park,
                    from: self.warn.park,
                    to: grade,
                    time: Timestamp(t),
                    reason: why.to_owned(),
                    drill: self.cfg.drill.clone(),
                };
                self.warn.park = grade;
                self.next_id += 1;
                self.stats.events += 1;
                out.push(Event::Warning(ev));
            }
        }
    }

    // ---------------------------------------------------------------- limits

    /// Replace the limits of one point atomically (between two readings). Alarm states are
    /// kept; the next reading is compared with the new limits, and an active alarm whose
    /// limit was removed returns on that reading. Pending delays restart.
    pub fn replace_limits(
        &mut self,
        point: PointId,
        limits: AlarmLimits,
    ) -> Result<(), Vec<crate::FieldError>> {
        self.check_limits(point, &limits)?;
        self.apply_point_limits(point, &limits);
        Ok(())
    }

    /// Whether [`Self::replace_limits`] would take `limits` for `point`, without changing
    /// anything: the point exists and the limits are consistent
    /// ([`AlarmLimits::problems`]).
    pub fn check_limits(
        &self,
        point: PointId,
        limits: &AlarmLimits,
    ) -> Result<(), Vec<crate::FieldError>> {
        if self.pts.get(point.index()).is_none() {
            return Err(vec![crate::FieldError::new(
                "",
                format!("no point with id {}", point.0),
            )]);
        }
        let errs = limits.problems();
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// Replace the limits of several points in one step: every entry is checked first
    /// ([`Self::check_limits`]), and either all are applied or — when any entry fails, or
    /// a point is listed twice — none. Called between two readings, no reading is ever
    /// judged with some points of the batch changed and others not (a class change is
    /// atomic). Errors name the point: `points.TAG.FIELD`. Per point, the effect is that
    /// of [`Self::replace_limits`].
    pub fn replace_limits_batch(
        &mut self,
        changes: &[(PointId, AlarmLimits)],
    ) -> Result<(), Vec<crate::FieldError>> {
        let mut errs = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(changes.len());
        for (point, limits) in changes {
            let name = self
                .table
                .get(*point)
                .map_or_else(|| format!("#{}", point.0), |p| p.tag.clone());
            if !seen.insert(*point) {
                errs.push(crate::FieldError::new(
                    format!("points.{name}"),
                    "listed twice in one change",
                ));
                continue;
            }
            if let Err(e) = self.check_limits(*point, limits) {
                errs.extend(e.into_iter().map(|f| {
                    let field = if f.field.is_empty() {
                        format!("points.{name}")
                    } else {
                        format!("points.{name}.{}", f.field)
                    };
                    crate::FieldError::new(field, f.message)
                }));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        for (point, limits) in changes {
            self.apply_point_limits(*point, limits);
        }
        Ok(())
    }

    /// Apply checked limits to one point (see [`Self::replace_limits`]).
    fn apply_point_limits(&mut self, point: PointId, limits: &AlarmLimits) {
        let Some(rt) = self.pts.get_mut(point.index()) else {
            return;
        };
        for c in 0..4 {
            match rt.phase[c] {
                Phase::Pending => rt.phase[c] = Phase::Inactive,
                Phase::Clearing => rt.phase[c] = Phase::Active,
                _ => {}
            }
        }
        rt.ptimers = 0;
        apply_limits(rt, limits, &mut self.roc, &mut self.flat);
    }

    /// Resolve an alarm id (`TAG:HH`, `group/ID:VOTE_L1`, `device/ID:COMM_LOST`) to its slot.
    fn slot_of(&self, alarm: &str) -> Option<usize> {
        let (src, suffix) = alarm.rsplit_once(':')?;
        if let Some(g) = src.strip_prefix(GROUP_PREFIX) {
            let g = *self.group_ix.get(g)? as usize;
            let lvl = match suffix {
                "VOTE_L1" => 0,
                "VOTE_L2" => 1,
                _ => return None,
            };
            return Some(self.gbase + 2 * g + lvl);
        }
        if let Some(d) = src.strip_prefix(DEVICE_PREFIX)
            && let Some(&d) = self.device_ix.get(d)
        {
            return (suffix == Condition::DeviceCommLost.suffix())
                .then_some(self.dbase + d as usize);
        }
        if src.starts_with(SYSTEM_PREFIX) {
            return SystemAlarm::ALL
                .iter()
                .find(|a| a.alarm_id() == alarm)
                .map(|a| self.sbase + a.index());
        }
        let pid = self.table.id(src)?;
        let c = Condition::point_from_suffix(suffix)?;
        Some(pid.index() * NC + c as usize)
    }
}

/// Copy limits into the hot record (and the side tables for rate of change / flatline).
fn apply_limits(rt: &mut PointRt, l: &AlarmLimits, roc: &mut Vec<RocRt>, flat: &mut Vec<FlatRt>) {
    let f = |x: Option<f64>| x.filter(|v| v.is_finite()).unwrap_or(f64::NAN);
    rt.lim = [f(l.hh), f(l.h), f(l.l), f(l.ll)];
    rt.deadband = if l.deadband.is_finite() {
        l.deadband.max(0.0)
    } else {
        0.0
    };
    rt.on_delay = dur_ns(l.on_delay);
    rt.off_delay = dur_ns(l.off_delay);
    match &l.rate_of_change {
        Some(r) => {
            let new = RocRt::new(r);
            if rt.roc == NONE {
                rt.roc = roc.len() as u32;
                roc.push(new);
            } else {
                roc[rt.roc as usize] = new;
            }
        }
        None => rt.roc = NONE,
    }
    match &l.flatline {
        Some(fl) => {
            let new = FlatRt {
                after: dur_ns(fl.after),
                tolerance: fl.tolerance.max(0.0),
                reference: f64::NAN,
                since: NEVER,
            };
            if rt.flat == NONE {
                rt.flat = flat.len() as u32;
                flat.push(new);
            } else {
                flat[rt.flat as usize] = new;
            }
        }
        None => rt.flat = NONE,
    }
}

#[cfg(test)]
mod tests;
