//! # parkguard (the daemon)
//!
//! Config load and validation, topology (sources → engine → sinks), the engine task, the
//! durable store, the HTTP API and console, drills and replay, telemetry, signals.
//! `main.rs` is a thin CLI over this library so that tests can drive the same code.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod drill;
pub mod engine_task;
pub mod linkage;
pub mod mem;
pub mod run;
pub mod store;
pub mod topology;
