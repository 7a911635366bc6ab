//! Scripted drill scenarios: a TOML timeline of events turned into readings for every point
//! of the park, deterministic for a given seed.
//!
//! ```toml
//! [scenario]
//! name = "液氯储罐区氯气泄漏 / chlorine release at the tank farm"
//! seed = 7
//! duration = "20m"
//! step = "1s"
//!
//! [[event]]
//! at = "2m"
//! action = "release"
//! source = { lat = 40.6080, lon = 122.1376 }
//! gas = "cl2"
//! rate_kg_s = 0.5
//! duration = "10m"
//! wind_speed = 3.0
//! wind_from_deg = 0
//! stability = "D"
//!
//! [[event]]
//! at = "1m"
//! action = "ramp"
//! tag = "DEMO01-PT-201"
//! to = 1.45
//! over = "2m"
//! ```
//!
//! Actions: `ramp` (linear to `to` over `over`, then hold), `set` (step to `value`), `drop`
//! (back to baseline), `comm_lost` / `comm_restore` (quality comm-lost for `tags`), `freeze`
//! (the points stop reporting: a frozen controller, detected as stale), `noise` (uniform
//! noise of `amplitude` on `tags`, or every point), `release` (Gaussian plume, see
//! [`super::plume`]). Baselines: gas 0 (oxygen 20.9 %vol), process points midway between
//! their low and high limits.

use super::plume::{Release, Stability};
use crate::config::duration::ConfigDuration;
use parkguard_rules::{
    Gas, GeoPoint, Point, PointKind, PointTable, Quality, Reading, Timestamp, Unit,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A scenario file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Header.
    pub scenario: ScenarioHeader,
    /// Timeline.
    #[serde(default)]
    pub event: Vec<ScenarioEvent>,
}

/// `[scenario]`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioHeader {
    /// Name shown in the drill banner and report.
    pub name: String,
    /// What the drill practises.
    #[serde(default)]
    pub description: String,
    /// Seed of the noise generator. Default 1.
    #[serde(default = "one")]
    pub seed: u64,
    /// Length of the scenario.
    pub duration: ConfigDuration,
    /// Time between readings of every point. Default `1s`.
    #[serde(default = "one_second")]
    pub step: ConfigDuration,
    /// Background noise on every point, percent of span. Default 0.2.
    #[serde(default = "background_noise")]
    pub noise_percent: f64,
}

fn one() -> u64 {
    1
}
fn one_second() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn background_noise() -> f64 {
    0.2
}

/// One `[[event]]` on the timeline.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScenarioEvent {
    /// Ramp a point linearly to `to` over `over`, then hold.
    Ramp {
        /// When, from the scenario start.
        at: ConfigDuration,
        /// Point tag.
        tag: String,
        /// Target value in the point's unit.
        to: f64,
        /// Ramp duration.
        over: ConfigDuration,
    },
    /// Step a point to `value`.
    Set {
        /// When.
        at: ConfigDuration,
        /// Point tag.
        tag: String,
        /// Value in the point's unit.
        value: f64,
    },
    /// Back to the baseline.
    Drop {
        /// When.
        at: ConfigDuration,
        /// Point tag.
        tag: String,
    },
    /// Points report comm-lost.
    CommLost {
        /// When.
        at: ConfigDuration,
        /// Point tags.
        tags: Vec<String>,
    },
    /// Points report good again.
    CommRestore {
        /// When.
        at: ConfigDuration,
        /// Point tags.
        tags: Vec<String>,
    },
    /// Points stop reporting (frozen controller / stuck heartbeat).
    Freeze {
        /// When.
        at: ConfigDuration,
        /// Point tags.
        tags: Vec<String>,
    },
    /// Noise on points (all when `tags` is empty).
    Noise {
        /// When.
        at: ConfigDuration,
        /// Point tags; empty = every point.
        #[serde(default)]
        tags: Vec<String>,
        /// Uniform noise amplitude in each point's unit.
        amplitude: f64,
    },
    /// A continuous gas release (Gaussian plume).
    Release {
        /// When.
        at: ConfigDuration,
        /// Release point.
        source: GeoPoint,
        /// Released gas; detectors of this gas see it.
        gas: Gas,
        /// Release rate, kg/s.
        rate_kg_s: f64,
        /// Release height, m. Default 1.
        #[serde(default = "one_metre")]
        height_m: f64,
        /// How long it lasts.
        duration: ConfigDuration,
        /// Wind speed, m/s.
        wind_speed: f64,
        /// Direction the wind blows from, degrees clockwise from north.
        wind_from_deg: f64,
        /// Pasquill stability class A–F.
        stability: Stability,
    },
}

fn one_metre() -> f64 {
    1.0
}

/// Why a scenario cannot run on this park.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// TOML or schema error.
    #[error("scenario file: {0}")]
    Parse(String),
    /// An event names a tag that is not in the park.
    #[error("event {index}: unknown tag `{tag}`")]
    UnknownTag {
        /// Event index (0-based).
        index: usize,
        /// The tag.
        tag: String,
    },
    /// Bad numbers.
    #[error("event {index}: {message}")]
    Invalid {
        /// Event index.
        index: usize,
        /// What.
        message: String,
    },
}

#[derive(Clone, Copy, Debug)]
enum Track {
    Base,
    Ramp {
        t0: f64,
        from: f64,
        to: f64,
        over: f64,
    },
}

/// A running scenario: call [`Scenario::readings_at`] for each step.
pub struct Scenario {
    file: ScenarioFile,
    table: Arc<PointTable>,
    baseline: Vec<f64>,
    /// Events sorted by time, with resolved point ids.
    events: Vec<(f64, usize)>,
    next_event: usize,
    track: Vec<Track>,
    last_value: Vec<f64>,
    comm_lost: Vec<bool>,
    frozen: Vec<bool>,
    noise: Vec<f64>,
    releases: Vec<(f64, f64, Release, Gas)>,
}

impl Scenario {
    /// Parse a scenario file's text.
    pub fn parse(text: &str) -> Result<ScenarioFile, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))
    }

    /// Check the file against the park and prepare to run.
    pub fn new(file: ScenarioFile, table: Arc<PointTable>) -> Result<Self, ScenarioError> {
        let n = table.len();
        let lookup = |index: usize, tag: &str| {
            table
                .id(tag)
                .map(|id| id.index())
                .ok_or(ScenarioError::UnknownTag {
                    index,
                    tag: tag.to_string(),
                })
        };
        for (i, ev) in file.event.iter().enumerate() {
            match ev {
                ScenarioEvent::Ramp { tag, .. }
                | ScenarioEvent::Set { tag, .. }
                | ScenarioEvent::Drop { tag, .. } => {
                    lookup(i, tag)?;
                }
                ScenarioEvent::CommLost { tags, .. }
                | ScenarioEvent::CommRestore { tags, .. }
                | ScenarioEvent::Freeze { tags, .. }
                | ScenarioEvent::Noise { tags, .. } => {
                    for t in tags {
                        lookup(i, t)?;
                    }
                }
                ScenarioEvent::Release {
                    rate_kg_s,
                    wind_speed,
                    ..
                } => {
                    if !(*rate_kg_s > 0.0 && *wind_speed > 0.0) {
                        return Err(ScenarioError::Invalid {
                            index: i,
                            message: "rate_kg_s and wind_speed must be > 0".into(),
                        });
                    }
                }
            }
        }
        let baseline: Vec<f64> = table.points().iter().map(baseline_of).collect();
        let mut events: Vec<(f64, usize)> = file
            .event
            .iter()
            .enumerate()
            .map(|(i, e)| (at_of(e).as_secs_f64(), i))
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Ok(Self {
            last_value: baseline.clone(),
            baseline,
            events,
            next_event: 0,
            track: vec![Track::Base; n],
            comm_lost: vec![false; n],
            frozen: vec![false; n],
            noise: vec![0.0; n],
            releases: Vec::new(),
            file,
            table,
        })
    }

    /// The parsed file.
    pub fn file(&self) -> &ScenarioFile {
        &self.file
    }

    /// Step between readings.
    pub fn step(&self) -> Duration {
        self.file.scenario.step.0
    }

    /// Scenario length.
    pub fn duration(&self) -> Duration {
        self.file.scenario.duration.0
    }

    /// Readings of every reporting point at `elapsed` since the start; `t0` is the
    /// scenario's start time on the engine's clock. Call with non-decreasing `elapsed`.
    pub fn readings_at(&mut self, t0: Timestamp, elapsed: Duration, out: &mut Vec<Reading>) {
        let now_s = elapsed.as_secs_f64();
        while let Some(&(at, idx)) = self.events.get(self.next_event) {
            if at > now_s {
                break;
            }
            self.apply(idx, at);
            self.next_event += 1;
        }
        let t = t0 + elapsed;
        let step_no = (now_s / self.step().as_secs_f64().max(1e-3)).round() as u64;
        let table = Arc::clone(&self.table);
        for p in table.points() {
            let i = p.id.index();
            if self.frozen[i] {
                continue;
            }
            let mut v = match self.track[i] {
                Track::Base => self.baseline[i],
                Track::Ramp { t0, from, to, over } => {
                    let f = if over <= 0.0 {
                        1.0
                    } else {
                        ((now_s - t0) / over).clamp(0.0, 1.0)
                    };
                    from + (to - from) * f
                }
            };
            v += self.plume_at(p, now_s);
            let amp = self.noise[i] + self.file.scenario.noise_percent / 100.0 * p.span();
            if amp > 0.0 {
                v += amp * (2.0 * unit_noise(self.file.scenario.seed, i as u64, step_no) - 1.0);
            }
            if p.kind.is_gas() || p.kind == PointKind::Level || p.kind == PointKind::Flow {
                v = v.max(p.range_lo.max(0.0));
            }
            self.last_value[i] = v;
            let (value, quality) = if self.comm_lost[i] {
                (v, Quality::CommLost)
            } else if v > p.range_hi || v < p.range_lo {
                (v.clamp(p.range_lo, p.range_hi), Quality::OutOfRange)
            } else {
                (v, Quality::Good)
            };
            out.push(Reading {
                point: p.id,
                value,
                unit: p.unit,
                quality,
                source_time: t,
                receive_time: t,
            });
        }
    }

    fn apply(&mut self, idx: usize, at: f64) {
        let ev = self.file.event[idx].clone();
        let id = |tag: &str| self.table.id(tag).map(|i| i.index());
        match ev {
            ScenarioEvent::Ramp { tag, to, over, .. } => {
                if let Some(i) = id(&tag) {
                    self.track[i] = Track::Ramp {
                        t0: at,
                        from: self.current(i),
                        to,
                        over: over.0.as_secs_f64(),
                    };
                }
            }
            ScenarioEvent::Set { tag, value, .. } => {
                if let Some(i) = id(&tag) {
                    self.track[i] = Track::Ramp {
                        t0: at,
                        from: value,
                        to: value,
                        over: 0.0,
                    };
                }
            }
            ScenarioEvent::Drop { tag, .. } => {
                if let Some(i) = id(&tag) {
                    self.track[i] = Track::Base;
                }
            }
            ScenarioEvent::CommLost { tags, .. } => {
                for t in tags {
                    if let Some(i) = id(&t) {
                        self.comm_lost[i] = true;
                    }
                }
            }
            ScenarioEvent::CommRestore { tags, .. } => {
                for t in tags {
                    if let Some(i) = id(&t) {
                        self.comm_lost[i] = false;
                        self.frozen[i] = false;
                    }
                }
            }
            ScenarioEvent::Freeze { tags, .. } => {
                for t in tags {
                    if let Some(i) = id(&t) {
                        self.frozen[i] = true;
                    }
                }
            }
            ScenarioEvent::Noise {
                tags, amplitude, ..
            } => {
                if tags.is_empty() {
                    self.noise.iter_mut().for_each(|n| *n = amplitude);
                } else {
                    for t in tags {
                        if let Some(i) = id(&t) {
                            self.noise[i] = amplitude;
                        }
                    }
                }
            }
            ScenarioEvent::Release {
                source,
                gas,
                rate_kg_s,
                height_m,
                duration,
                wind_speed,
                wind_from_deg,
                stability,
                ..
            } => self.releases.push((
                at,
                duration.0.as_secs_f64(),
                Release {
                    source,
                    rate_kg_s,
                    height_m,
                    wind_speed,
                    wind_from_deg,
                    stability,
                },
                gas,
            )),
        }
    }

    fn current(&self, i: usize) -> f64 {
        self.last_value[i]
    }

    /// Plume contribution at point `p` in the point's unit.
    fn plume_at(&self, p: &Point, now_s: f64) -> f64 {
        let Some(loc) = p.location else { return 0.0 };
        let mut sum = 0.0;
        for (start, dur, rel, gas) in &self.releases {
            if p.gas != Some(*gas) {
                continue;
            }
            let arrival = rel.arrival_s(loc);
            let since = now_s - start;
            // The front arrives after x/u and the tail passes x/u after the release stops.
            if since < arrival || since > dur + arrival {
                continue;
            }
            let mg = rel.concentration_mg_m3(loc);
            if let Ok(v) = Unit::MgPerM3.convert(mg, p.unit, Some(*gas)) {
                sum += v;
            }
        }
        sum
    }
}

fn at_of(e: &ScenarioEvent) -> Duration {
    match e {
        ScenarioEvent::Ramp { at, .. }
        | ScenarioEvent::Set { at, .. }
        | ScenarioEvent::Drop { at, .. }
        | ScenarioEvent::CommLost { at, .. }
        | ScenarioEvent::CommRestore { at, .. }
        | ScenarioEvent::Freeze { at, .. }
        | ScenarioEvent::Noise { at, .. }
        | ScenarioEvent::Release { at, .. } => at.0,
    }
}

/// Normal operating value of a point.
pub fn baseline_of(p: &Point) -> f64 {
    match p.kind {
        PointKind::Oxygen => 20.9_f64.clamp(p.range_lo, p.range_hi),
        PointKind::Combustible | PointKind::Toxic => p.range_lo.max(0.0),
        _ => {
            let lo = p.limits.l.unwrap_or(p.range_lo);
            let hi = p.limits.h.unwrap_or(p.range_hi);
            (lo + hi) / 2.0
        }
    }
}

/// Deterministic uniform [0, 1) from (seed, point, step): splitmix64.
fn unit_noise(seed: u64, point: u64, step: u64) -> f64 {
    let mut z =
        seed ^ point.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Arc<PointTable> {
        crate::config::load_str("demo.toml", crate::demo::DEMO_CONFIG)
            .expect("demo config is valid")
            .table
    }

    fn scenario(name: &str) -> Scenario {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/scenarios/");
        let text = std::fs::read_to_string(format!("{path}{name}")).unwrap();
        Scenario::new(Scenario::parse(&text).unwrap(), demo()).unwrap()
    }

    /// Run the scenario and return, per tag, the first elapsed second at which the value
    /// reached `threshold` in good or out-of-range quality.
    fn first_crossing(mut s: Scenario, threshold: f64) -> std::collections::HashMap<String, u64> {
        let table = demo();
        let mut first = std::collections::HashMap::new();
        let mut out = Vec::new();
        for sec in 0..s.duration().as_secs() {
            out.clear();
            s.readings_at(Timestamp::from_secs(0), Duration::from_secs(sec), &mut out);
            for r in &out {
                let tag = &table.get(r.point).unwrap().tag;
                if r.value >= threshold && !first.contains_key(tag) {
                    first.insert(tag.clone(), sec);
                }
            }
        }
        first
    }

    #[test]
    fn chlorine_release_reaches_downwind_detectors_in_order_of_distance_and_never_upwind() {
        let hits = first_crossing(scenario("chlorine-release.toml"), 0.68);
        let order = [
            "DEMO01-GT-102",
            "DEMO01-GT-104",
            "PARK00-AT-S1",
            "PARK00-AT-S2",
        ];
        let times: Vec<u64> = order
            .iter()
            .map(|t| {
                *hits
                    .get(*t)
                    .unwrap_or_else(|| panic!("{t} never reached level-2: {hits:?}"))
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        assert!(
            times[0] >= 120,
            "nothing before the release at 2 min: {times:?}"
        );
        for upwind in ["DEMO01-GT-101", "PARK00-AT-N1", "PARK00-AT-E1"] {
            assert!(
                !hits.contains_key(upwind),
                "{upwind} is upwind or crosswind: {hits:?}"
            );
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let run = |name| {
            let mut s = scenario(name);
            let mut out = Vec::new();
            for sec in 0..300 {
                s.readings_at(
                    Timestamp::from_secs(1_700_000_000),
                    Duration::from_secs(sec),
                    &mut out,
                );
            }
            out.iter()
                .map(|r| (r.point, r.value.to_bits(), r.quality))
                .collect::<Vec<_>>()
        };
        assert_eq!(run("hydrocarbon-leak.toml"), run("hydrocarbon-leak.toml"));
        assert_eq!(run("chlorine-release.toml"), run("chlorine-release.toml"));
    }

    #[test]
    fn ramps_and_comm_loss() {
        let mut s = scenario("hydrocarbon-leak.toml");
        let table = demo();
        let gt302 = table.id("DEMO02-GT-302").unwrap();
        let at = |s: &mut Scenario, sec| {
            let mut out = Vec::new();
            s.readings_at(Timestamp::from_secs(0), Duration::from_secs(sec), &mut out);
            *out.iter().find(|r| r.point == gt302).unwrap()
        };
        let r = at(&mut s, 60);
        assert!(r.value < 2.0 && r.quality == Quality::Good, "{r:?}");
        let r = at(&mut s, 300);
        assert!((r.value - 62.0).abs() < 1.0, "{r:?}");
        let r = at(&mut s, 400);
        assert_eq!(r.quality, Quality::CommLost);
        let r = at(&mut s, 560);
        assert_eq!(r.quality, Quality::Good);
    }

    #[test]
    fn unknown_tags_are_rejected() {
        let f = Scenario::parse(
            "[scenario]\nname = \"x\"\nduration = \"1m\"\n[[event]]\nat = \"0s\"\naction = \"drop\"\ntag = \"NOPE\"\n",
        )
        .unwrap();
        assert!(matches!(
            Scenario::new(f, demo()),
            Err(ScenarioError::UnknownTag { .. })
        ));
    }
}
