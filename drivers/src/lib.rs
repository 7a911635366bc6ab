//! # parkguard-drivers
//!
//! Every conversation parkguard has with the outside world, one module per protocol, each
//! with the same shape (STYLE.md §3): `config.rs` (plain serde), a pure codec with its unit
//! tests beside it, and the runtime loop (`source.rs` / `sink.rs`).
//!
//! Shared pieces: [`backoff`] (reconnect back-off used by every driver).

pub mod backoff;
pub mod notify;
