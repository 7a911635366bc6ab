//! # parkguard-rules
//!
//! The domain model of a chemical-park monitoring system and (in later modules) its alarm
//! engine. This crate is **pure**: it does no I/O, spawns nothing and never reads the clock
//! (`clippy.toml` forbids `SystemTime::now` and `Instant::now`). Every function that needs
//! time takes `now` as an argument, so live monitoring, replay, drills and backtests give
//! exactly the same alarms for the same inputs.
//!
//! - [`units`]: engineering units, gases and their GB/T 50493 data, ppm ↔ mg/m³ conversion.
//! - [`model`]: enterprises, points, readings, quality, limits.
//! - [`defaults`]: default alarm limits per point kind and gas (GB/T 50493-2019, DOMAIN.md §2).
//! - [`time`]: the timestamp type every reading carries.
//! - [`table`]: every point of the park, by id and by tag.
//! - [`alarm`]: the ISA-18.2 alarm lifecycle, alarm events, priorities, GB 16808 colours.
//! - [`engine`]: the alarm engine (readings → events), its config and commands.
//! - [`warning`]: park warning grades (blue/yellow/orange/red).
//! - [`kpi`]: alarm-management KPIs from an event stream.

pub mod alarm;
pub mod config_error;
pub mod defaults;
pub mod engine;
pub mod kpi;
pub mod model;
pub mod table;
pub mod time;
pub mod units;
pub mod warning;

pub use alarm::{AlarmEvent, AlarmState, Condition, EventKind, Priority};
pub use config_error::FieldError;
pub use engine::{Command, CommandError, Engine, EngineConfig, Event, VoteGroupConfig};
pub use model::{
    AlarmLimits, Enterprise, Flatline, GeoPoint, LimitDirection, Point, PointId, PointKind,
    Quality, RateOfChange, Reading,
};
pub use table::PointTable;
pub use time::Timestamp;
pub use units::{Gas, Unit};
pub use warning::{Grade, WarningEvent};
