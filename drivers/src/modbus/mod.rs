//! # Modbus ingestion: TCP, RTU on serial lines, RTU over TCP
//!
//! Same shape as every driver (STYLE.md §3):
//! - [`config`]: `[[modbus_device]]` and the `modbus = { ... }` table of a `[[point]]`, and
//!   their pure validation;
//! - [`plan`]: the request plan, computed once (lines, merged reads, slots);
//! - [`decode`]: the pure codec (types × byte orders, scaling, sentinels, 4–20 mA, status);

pub mod config;
pub mod decode;
pub mod metrics;
pub mod plan;
pub mod sim;
pub mod source;

pub use config::{ModbusDeviceConfig, ModbusPointConfig};
pub use metrics::ModbusMetrics;
pub use plan::{ModbusPlan, PlanError, PlanTarget, plan};
pub use source::spawn;
