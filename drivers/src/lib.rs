//! # parkguard-drivers
//!
//! Every conversation parkguard has with the outside world, one module per protocol, each
//! with the same shape (STYLE.md §3): `config.rs` (plain serde), a pure codec with its unit
//! tests beside it, and the runtime loop (`source.rs` / `sink.rs`).
//!
//! Shared pieces: [`backoff`] (reconnect back-off used by every driver).
//!
//! Protocols: [`modbus`] (TCP, RTU, RTU over TCP, simulator), [`mqtt`] (subscribe, publish,
//! embedded broker, simulator), [`influx`] (line protocol and the InfluxDB 2 writer).

pub mod backoff;
pub mod influx;
pub mod modbus;
pub mod mqtt;
pub mod notify;
