//! InfluxDB 2 output: line protocol and `POST /api/v2/write`.
//!
//! - [`config`]: the `[influx]` table (url, org, bucket, token from env or file, batching,
//!   gzip, timeouts) and its validation.
//! - [`schema`]: every measurement, tag and field name.
//! - [`encode`]: pure line-protocol encoding with exact escaping.
//! - [`sink`]: the writer: batches lines from a [`sink::LineSource`] (the daemon's durable
//!   spool), posts them, classifies every reply, and lets the source advance its durable
//!   cursor only after the server confirmed (or the line was dead-lettered).

pub mod config;
pub mod encode;
pub mod schema;
pub mod sink;

pub use config::{InfluxConfig, InfluxSettings, TokenSource};
pub use encode::{EventPoint, FieldValue, LineBatch, PointMeta};
pub use sink::{InfluxStats, InfluxWriter, LineSource};
