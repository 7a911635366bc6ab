//! The domain model: enterprises, points, readings, quality and alarm limits.
//!
//! These are the *validated* runtime types. The daemon's config module parses TOML into
//! plain serde structs and validates them into these (STYLE.md §2).

use crate::time::Timestamp;
use crate::units::{Gas, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Dense index of a point in the park, assigned at validation in config order. The engine
/// keeps its state in vectors indexed by it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct PointId(pub u32);

impl PointId {
    /// The index as `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// WGS-84 position (degrees).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoPoint {
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
}

/// A resident enterprise of the park.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enterprise {
    /// Enterprise code (unique in the park), e.g. the unified social credit code or the
    /// park's own short code.
    pub code: String,
    /// Name (Chinese).
    pub name: String,
    /// Representative location (gate or centroid).
    pub location: Option<GeoPoint>,
    /// Boundary polygon of the site, for the park map.
    pub boundary: Vec<GeoPoint>,
}

/// What a point measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PointKind {
    /// Combustible gas (%LEL, %vol, LEL·m).
    Combustible,
    /// Toxic gas (ppm, mg/m³).
    Toxic,
    /// Oxygen (%vol).
    Oxygen,
    /// Pressure.
    Pressure,
    /// Temperature.
    Temperature,
    /// Level.
    Level,
    /// Flow.
    Flow,
    /// Anything else (valve position, status).
    Other,
}

impl PointKind {
    /// Gas kinds need a `gas`.
    pub fn is_gas(self) -> bool {
        matches!(
            self,
            PointKind::Combustible | PointKind::Toxic | PointKind::Oxygen
        )
    }
    /// Lowercase name as in config and line protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::Combustible => "combustible",
            PointKind::Toxic => "toxic",
            PointKind::Oxygen => "oxygen",
            PointKind::Pressure => "pressure",
            PointKind::Temperature => "temperature",
            PointKind::Level => "level",
            PointKind::Flow => "flow",
            PointKind::Other => "other",
        }
    }
}

/// Quality of a reading. Only `Good` values are ever shown or stored as good; every other
/// quality is visible to the operator and in storage (as the `quality` field code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "q")]
pub enum Quality {
    /// Measured and trusted.
    Good,
    /// The transport to the device failed (socket, timeout, broker).
    CommLost,
    /// The device answered with a Modbus exception.
    DeviceException {
        /// Modbus exception code.
        code: u8,
    },
    /// The decoded value lies outside the point's measuring range.
    OutOfRange,
    /// The device reports a fault (status bit, sentinel value, loop current < 3.8 mA).
    Fault,
    /// Maintenance or calibration in progress (device status bit or engineer's command).
    Maintenance,
    /// Inhibited at the device.
    Inhibited,
    /// No fresh value within the expected interval (set by the engine, not the driver).
    Stale,
}

impl Quality {
    /// Stable numeric code for storage (`quality` field in InfluxDB): 0 = good.
    pub fn code(self) -> u16 {
        match self {
            Quality::Good => 0,
            Quality::CommLost => 1,
            Quality::DeviceException { code } => 0x100 | code as u16,
            Quality::OutOfRange => 3,
            Quality::Fault => 4,
            Quality::Maintenance => 5,
            Quality::Inhibited => 6,
            Quality::Stale => 7,
        }
    }
    /// Inverse of [`Quality::code`].
    pub fn from_code(code: u16) -> Option<Quality> {
        Some(match code {
            0 => Quality::Good,
            1 => Quality::CommLost,
            3 => Quality::OutOfRange,
            4 => Quality::Fault,
            5 => Quality::Maintenance,
            6 => Quality::Inhibited,
            7 => Quality::Stale,
            c if c & 0xff00 == 0x100 => Quality::DeviceException { code: c as u8 },
            _ => return None,
        })
    }
    /// Whether the value may be used as a measurement.
    pub fn is_good(self) -> bool {
        self == Quality::Good
    }
    /// Short English label.
    pub fn label_en(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::CommLost => "comm lost",
            Quality::DeviceException { .. } => "device exception",
            Quality::OutOfRange => "out of range",
            Quality::Fault => "fault",
            Quality::Maintenance => "maintenance",
            Quality::Inhibited => "inhibited",
            Quality::Stale => "stale",
        }
    }
    /// Short Chinese label.
    pub fn label_zh(self) -> &'static str {
        match self {
            Quality::Good => "正常",
            Quality::CommLost => "通讯中断",
            Quality::DeviceException { .. } => "设备异常应答",
            Quality::OutOfRange => "超量程",
            Quality::Fault => "故障",
            Quality::Maintenance => "维护/标定",
            Quality::Inhibited => "屏蔽",
            Quality::Stale => "数据陈旧",
        }
    }
}

/// One reading of one point, in the point's unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Which point.
    pub point: PointId,
    /// Value in `unit`. Meaningful only when `quality` is good; kept otherwise for the
    /// record (e.g. the raw sentinel a device sent).
    pub value: f64,
    /// The unit of `value` (drivers convert to the point's unit before handing over).
    pub unit: Unit,
    /// Quality.
    pub quality: Quality,
    /// Time at the source (device timestamp, payload time), or the poll time.
    pub source_time: Timestamp,
    /// Time parkguard received it.
    pub receive_time: Timestamp,
}

/// Which way a limit trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitDirection {
    /// Alarm when the value rises to or above the limit.
    High,
    /// Alarm when the value falls to or below the limit.
    Low,
}

/// Alarm limits of one point, in the point's unit.
///
/// Gas points use level-1 = `h` and level-2 = `hh` (oxygen: `l` for deficiency at 19.5 %vol,
/// `h` for enrichment at 23.5 %vol). Process points use H/HH/L/LL as usual.
///
/// `Default` has no limits, no deadband and no delays: start from it with `..` and set what
/// the point needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlarmLimits {
    /// High-high / level-2.
    pub hh: Option<f64>,
    /// High / level-1.
    pub h: Option<f64>,
    /// Low.
    pub l: Option<f64>,
    /// Low-low.
    pub ll: Option<f64>,
    /// Deadband in the point's unit: an alarm clears only past limit ∓ deadband.
    pub deadband: f64,
    /// Time a limit must stay violated before the alarm is raised.
    pub on_delay: Duration,
    /// Time the value must stay back inside before the alarm returns to normal.
    pub off_delay: Duration,
    /// Optional rate-of-change alarm (rise faster than a rate over a window). Default none.
    #[serde(default)]
    pub rate_of_change: Option<RateOfChange>,
    /// Optional flatline alarm (value stuck where it should move). Default none.
    #[serde(default)]
    pub flatline: Option<Flatline>,
}

impl AlarmLimits {
    /// Whether `v` is at or beyond any of the level limits (`h`/`hh` from above, `l`/`ll`
    /// from below), without deadband or delays: a quick hint for stages ahead of the
    /// engine (the MQTT subscriber hands such a reading over at once instead of letting it
    /// linger). The engine alone decides alarms.
    pub fn beyond(&self, v: f64) -> bool {
        self.h.is_some_and(|h| v >= h)
            || self.hh.is_some_and(|h| v >= h)
            || self.l.is_some_and(|l| v <= l)
            || self.ll.is_some_and(|l| v <= l)
    }

    /// Consistency of the limits, as messages naming the field (empty = fine): finite
    /// numbers, `ll ≤ l < h ≤ hh`, non-negative deadband, positive rate-of-change settings.
    pub fn problems(&self) -> Vec<crate::FieldError> {
        use crate::FieldError;
        let mut errs = Vec::new();
        for (name, v) in [
            ("hh", self.hh),
            ("h", self.h),
            ("l", self.l),
            ("ll", self.ll),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                errs.push(FieldError::new(name, "limit must be a finite number"));
            }
        }
        let pairs = [
            ("h", self.h, "hh", self.hh),
            ("l", self.l, "h", self.h),
            ("ll", self.ll, "l", self.l),
            ("l", self.l, "hh", self.hh),
            ("ll", self.ll, "h", self.h),
        ];
        for (a, va, b, vb) in pairs {
            if let (Some(x), Some(y)) = (va, vb)
                && x > y
            {
                errs.push(FieldError::new(
                    a,
                    format!("`{a}` ({x}) must not exceed `{b}` ({y})"),
                ));
            }
        }
        if !(self.deadband.is_finite() && self.deadband >= 0.0) {
            errs.push(FieldError::new(
                "deadband",
                "deadband must be a finite number ≥ 0",
            ));
        }
        if let Some(r) = &self.rate_of_change {
            if !(r.rise_per_min.is_finite() && r.rise_per_min > 0.0) {
                errs.push(FieldError::new(
                    "rate_of_change.rise_per_min",
                    "rise per minute must be a finite number > 0",
                ));
            }
            if r.window.is_zero() {
                errs.push(FieldError::new(
                    "rate_of_change.window",
                    "window must be > 0",
                ));
            }
        }
        if let Some(f) = &self.flatline {
            if f.after.is_zero() {
                errs.push(FieldError::new(
                    "flatline.after",
                    "flatline time must be > 0",
                ));
            }
            if !(f.tolerance.is_finite() && f.tolerance >= 0.0) {
                errs.push(FieldError::new(
                    "flatline.tolerance",
                    "tolerance must be a finite number ≥ 0",
                ));
            }
        }
        errs
    }
}

/// Rate-of-change alarm: the value rose by at least `rise_per_min × window` (in minutes)
/// within the last `window`. Clears when the rise over the window falls below that amount
/// minus the point's deadband. The window is tracked in 8 buckets, so the effective window
/// is between 7/8 and 9/8 of `window`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RateOfChange {
    /// Rise that alarms, in the point's unit per minute.
    pub rise_per_min: f64,
    /// The window the rise is measured over.
    pub window: Duration,
}

/// Flatline alarm: good readings that stay within `tolerance` of each other for `after`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Flatline {
    /// How long the value must not move before the alarm.
    pub after: Duration,
    /// Movement (point's unit) that still counts as "not moving". 0 = exactly equal.
    pub tolerance: f64,
}

/// One monitored point (位号).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Dense id.
    pub id: PointId,
    /// Tag (位号), unique in the park.
    pub tag: String,
    /// Human name.
    pub name: String,
    /// Code of the owning enterprise.
    pub enterprise: String,
    /// Id of the device it is read from, if any.
    pub device: Option<String>,
    /// Major-hazard installation id (重大危险源编码), if any.
    pub hazard_installation: Option<String>,
    /// Process unit / area inside the enterprise (for voting and warnings).
    pub area: Option<String>,
    /// What it measures.
    pub kind: PointKind,
    /// The gas, for gas kinds.
    pub gas: Option<Gas>,
    /// Unit of its values.
    pub unit: Unit,
    /// Measuring range, low end.
    pub range_lo: f64,
    /// Measuring range, high end.
    pub range_hi: f64,
    /// Alarm limits in `unit`.
    pub limits: AlarmLimits,
    /// Expected interval between readings (poll interval or publish period).
    pub expected_interval: Duration,
    /// Where it is.
    pub location: Option<GeoPoint>,
}

impl Point {
    /// The measuring span.
    pub fn span(&self) -> f64 {
        self.range_hi - self.range_lo
    }
}

#[cfg(test)]
mod tests {
    use super::AlarmLimits;

    #[test]
    fn beyond_is_at_or_past_any_level_limit() {
        let l = AlarmLimits {
            hh: Some(50.0),
            h: Some(25.0),
            l: Some(19.5),
            ll: Some(18.0),
            ..AlarmLimits::default()
        };
        for (v, want) in [
            (20.9, false),
            (24.99, false),
            (25.0, true),
            (60.0, true),
            (19.5, true),
            (10.0, true),
            (19.6, false),
        ] {
            assert_eq!(l.beyond(v), want, "{v}");
        }
        // Only the limits that are set count; none set → never beyond.
        let h_only = AlarmLimits {
            h: Some(25.0),
            ..AlarmLimits::default()
        };
        assert!(!h_only.beyond(-1e9));
        assert!(!AlarmLimits::default().beyond(1e9));
    }
}
