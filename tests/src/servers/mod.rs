//! Starters for the real servers the tests talk to. Each returns a [`crate::Server`]
//! whose PID was seen listening on its port.

pub mod chromium;
pub mod mosquitto;
pub mod pymodbus;
pub mod socat;
pub mod victoria;
