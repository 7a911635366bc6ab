//! # Modbus ingestion: TCP, RTU on serial lines, RTU over TCP
//!
//! Same shape as every driver (STYLE.md §3):
//! - [`config`]: `[[modbus_device]]` tables and the `modbus = { ... }` table of a
//!   `[[point]]` (plain serde, `deny_unknown_fields`, JSON schema), with pure `validate()`
//!   into [`config::ModbusDevice`] / [`config::ModbusMapping`];
//! - [`mod@plan`]: the request plan, computed once from the validated config: lines
//!   (connections shared by devices), merged reads (≤ 125 registers / 2000 bits, `max_gap`),
//!   the slot of every point, and the cross checks (unknown device, address range, unit
//!   conversion, shared-line conflicts, serial bus time) as [`PlanError`]s that name a
//!   device or a point;
//! - [`decode`]: the pure codec (u16/i16/u32/i32/f32/f64/bit × ABCD/CDAB/BADC/DCBA, scale
//!   or decimals, unit conversion, sentinels, 4–20 mA, status bits, range);
//! - [`source`]: the poller, one task per line (see its docs for fault classification,
//!   isolation, scheduling and back-pressure);
//! - [`metrics`]: per-device counters the daemon reads;
//! - [`sim`]: an in-process tokio-modbus TCP simulator (Midas-, Oldham- and 4-in-1-like
//!   devices) for the demo, `simulate`, benchmarks and fault injection.
//!
//! ## Wiring (daemon)
//! ```text
//! // config: Vec<ModbusDeviceConfig> from [[modbus_device]], Option<ModbusPointConfig> per [[point]]
//! let devices: Vec<ModbusDevice> = /* each cfg.validate(), errors: field inside that table */;
//! let mappings: Vec<(PointId, ModbusMapping)> = /* each point's modbus.validate() */;
//! let plan = modbus::plan(&devices, mappings.iter().map(|(id, m)| (*id, m, table.get(*id).unwrap())))
//!     .map_err(/* PlanError { target: Device(id) | Point(point id), error: FieldError } */)?;
//! let metrics = Arc::new(ModbusMetrics::new(&plan));
//! let handles = modbus::spawn(&plan, readings_tx, Arc::clone(&metrics), shutdown.clone());
//! ```
//! Readings arrive as one `Vec<Reading>` per device poll: value in the point's unit (NaN
//! when comm-lost or undecodable), quality, `source_time` = poll start (wall clock),
//! `receive_time` = when the answer was decoded.
//!
//! Not done here on purpose: writes (reading never writes), and the engine's staleness
//! check (a device that answers with frozen values is caught by its heartbeat bit here, by
//! staleness of values in the engine).

pub mod config;
pub mod decode;
pub mod metrics;
pub mod plan;
pub mod sim;
pub mod source;

pub use config::{ModbusDevice, ModbusDeviceConfig, ModbusMapping, ModbusPointConfig};
pub use metrics::{DeviceMetrics, DeviceSnapshot, ModbusMetrics};
pub use plan::{ModbusPlan, PlanError, PlanTarget, plan};
pub use source::spawn;
