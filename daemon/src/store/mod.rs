//! The durable store, everything parkguard keeps on disk in `data_dir`.
//!
//! - [`spool`]: readings, append-only and segmented, with a durable cursor for the InfluxDB
//!   writer; also the local archive (retention 30 days by default) that replay reads.
//! - [`export`]: the journal as the durable queue of alarm events and warning grades
//!   for InfluxDB (`alarm_event`, `warning`), with its own cursor.
//! - [`journal`]: the alarm journal in SQLite — every alarm event, warning-grade change,
//!   operator action and configuration change, committed before anyone is told.
//!
//! ## Wiring (topology)
//! ```text
//! let spool = Spool::open(&data_dir.join("spool"), spool_config.validate()?)?;   // [spool]
//! if let Some(influx) = influx_config {                                           // [influx]
//!     let writer = InfluxWriter::new(influx.validate()?, data_dir.join("influx-dead-letter.lp"))?;
//!     let reader = spool.writer_reader(&park_id)?;
//!     // The reader does small blocking file reads: give the writer a current-thread
//!     // runtime on a thread of its own (what the benchmark does) or accept short stalls.
//!     spawn(writer.run(reader, cancel.child_token()));
//! }
//! // Spool task: owns `spool`; receives `Vec<Reading>` batches from the engine task over a
//! // bounded channel; `spool.append(&batch, &table)` then acknowledges upstream (MQTT QoS 1);
//! // every minute `spool.expire(SystemTime::now())`; raises the system alarm when
//! // `spool.stats().overflow_alarm()`.
//! let mut journal = Journal::open(&data_dir.join("journal.sqlite"))?;
//! let next_id = journal.max_id()? + 1;            // continue the event ids
//! let states = journal.latest_per_alarm()?;      // rebuild alarm states
//! journal.append(&records)?;                     // then publish / notify
//! ```

pub mod export;
pub mod journal;
pub mod spool;
