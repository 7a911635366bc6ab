//! The durable store, everything parkguard keeps on disk in `data_dir`.
//!
//! - [`spool`]: readings, append-only and segmented, with a durable cursor for the InfluxDB
//!   writer; also the local archive (retention 30 days by default) that replay reads.
//! - [`journal`]: the alarm journal in SQLite — every alarm event, warning-grade change,
//!   operator action and configuration change, committed before anyone is told.

pub mod journal;
pub mod spool;
