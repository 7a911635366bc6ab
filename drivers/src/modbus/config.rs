//! Modbus configuration: the `[[modbus_device]]` tables and the `modbus = { ... }` inline
//! table of a `[[point]]`, as plain serde structs, and their pure validation into the
//! runtime types [`ModbusDevice`] and [`ModbusMapping`].
//!
//! ```toml
//! [[modbus_device]]
//! id = "midas-1"
//! transport = { kind = "tcp", host = "10.20.1.15", port = 502 }
//! unit = 1
//! poll_interval_ms = 1000
//! address_base = 1            # addresses below are 1-based register numbers (40003 → 3)
//!
//! # Two slaves on one RS-485 line: same `path` → one line, one request at a time.
//! [[modbus_device]]
//! id = "gds-a"
//! transport = { kind = "rtu", path = "/dev/ttyUSB0", baud = 19200, parity = "even" }
//! unit = 1
//! [[modbus_device]]
//! id = "gds-b"
//! transport = { kind = "rtu", path = "/dev/ttyUSB0", baud = 19200, parity = "even" }
//! unit = 2
//!
//! [[point]]
//! tag = "GT-101"
//! modbus = { device = "midas-1", function = "holding", address = 3, type = "f32", order = "CDAB",
//!            status = { address = 1, fault_bit = 1, alarm1_bit = 6, alarm2_bit = 7, heartbeat_bit = 11 } }
//! ```
//!
//! # Lines: how devices share a connection
//! Every device belongs to exactly one *line*: one connection (TCP socket or serial port)
//! on which requests go strictly one at a time. By default:
//! - `rtu` devices with the same `path` share a line (an RS-485 bus);
//! - `rtu_over_tcp` devices with the same `host:port` share a line (a serial server);
//! - each `tcp` device gets a connection of its own, so a dead unit id behind a Modbus TCP
//!   gateway never delays its neighbours.
//!
//! Set `line = "name"` on devices to put them on one connection explicitly (e.g. a TCP
//! gateway that accepts a single client); devices on one line must have identical
//! `transport` tables and distinct `unit` ids.

use parkguard_rules::{FieldError, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One `[[modbus_device]]` table: a Modbus slave (unit id) reached over some transport.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceConfig {
    /// Device id, unique in the park; points name it in `modbus.device`. Required.
    pub id: String,
    /// How the device is reached. Required.
    pub transport: TransportConfig,
    /// Name of the line (connection) the device shares with others; default: derived from
    /// the transport (serial path, or serial-server host:port; own connection for `tcp`).
    #[serde(default)]
    pub line: Option<String>,
    /// Modbus unit id (slave address): 1–247 on RTU lines; 0–255 on Modbus TCP (direct TCP
    /// devices often want 255 or 0). Default 1.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Poll interval, milliseconds. Default 1000.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Timeout of one request (send to complete answer), milliseconds. Default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Pause between two requests to this device, milliseconds, for slow devices. Default 0
    /// (on RTU lines the 3.5-character silent interval is always kept on top).
    #[serde(default)]
    pub pause_ms: u64,
    /// Largest number of unused registers (or bits) read to merge two neighbouring reads
    /// into one. Default 10; set 0 for devices that reject reads over unmapped addresses.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Largest number of registers per read (FC03/FC04), 1–125. Default 125.
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// Largest number of bits per read (FC01/FC02), 1–2000. Default 2000.
    #[serde(default = "default_max_bits")]
    pub max_bits: u16,
    /// Address convention of this device's points: 0 = protocol (PDU) addresses, 1 =
    /// 1-based register numbers as in most manuals (Modicon 40003 is `address = 3` with
    /// base 1). Default 0.
    #[serde(default)]
    pub address_base: u8,
    /// First reconnect delay after a transport fault, milliseconds (doubles up to
    /// `reconnect_max_ms`, with jitter). Default 500.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay, milliseconds. Default 30000.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_unit() -> u8 {
    1
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_max_gap() -> u16 {
    10
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_port() -> u16 {
    502
}
fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// How a device is reached: `transport = { kind = "tcp" | "rtu" | "rtu_over_tcp", ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransportConfig {
    /// Modbus TCP (MBAP framing).
    Tcp {
        /// Host name or IP address. Required.
        host: String,
        /// TCP port. Default 502.
        #[serde(default = "default_port")]
        port: u16,
    },
    /// Modbus RTU on a local serial port (RS-485 adapter).
    Rtu {
        /// Serial device path, e.g. `/dev/ttyUSB0`. Required.
        path: String,
        /// Baud rate, bit/s. Default 9600.
        #[serde(default = "default_baud")]
        baud: u32,
        /// Parity: `none`, `even` or `odd`. Default `none`.
        #[serde(default)]
        parity: Parity,
        /// Data bits, 7 or 8. Default 8.
        #[serde(default = "default_data_bits")]
        data_bits: u8,
        /// Stop bits, 1 or 2. Default 1.
        #[serde(default = "default_stop_bits")]
        stop_bits: u8,
    },
    /// Modbus RTU frames over a TCP socket (serial-to-Ethernet server in transparent mode).
    RtuOverTcp {
        /// Host name or IP address of the serial server. Required.
        host: String,
        /// TCP port of the serial server. Required.
        port: u16,
    },
}

/// Serial parity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity (8N1).
    #[default]
    None,
    /// Even parity (8E1).
    Even,
    /// Odd parity (8O1).
    Odd,
}

/// The validated transport.
pub type Transport = TransportConfig;

impl TransportConfig {
    /// The default line key: devices with equal keys share one connection.
    fn default_line(&self, device_id: &str) -> String {
        match self {
            TransportConfig::Tcp { .. } => format!("tcp device {device_id}"),
            TransportConfig::Rtu { path, .. } => format!("rtu {path}"),
            TransportConfig::RtuOverTcp { host, port } => format!("rtu_over_tcp {host}:{port}"),
        }
    }
    /// Time one character takes on the wire (start + data + parity + stop bits), for serial
    /// lines; `None` when the line speed is unknown (TCP, serial servers).
    pub fn char_time(&self) -> Option<Duration> {
        match self {
            TransportConfig::Rtu {
                baud,
                parity,
                data_bits,
                stop_bits,
                ..
            } => {
                let bits = 1
                    + u32::from(*data_bits)
                    + u32::from(*parity != Parity::None)
                    + u32::from(*stop_bits);
                Some(Duration::from_secs_f64(
                    f64::from(bits) / f64::from((*baud).max(1)),
                ))
            }
            _ => None,
        }
    }
}

/// A validated Modbus device.
#[derive(Clone, Debug, PartialEq)]
pub struct ModbusDevice {
    /// Device id.
    pub id: String,
    /// Transport.
    pub transport: Transport,
    /// Line key (explicit `line` or derived from the transport).
    pub line: String,
    /// Unit id.
    pub unit: u8,
    /// Poll interval.
    pub poll_interval: Duration,
    /// Request timeout.
    pub timeout: Duration,
    /// Pause between requests.
    pub pause: Duration,
    /// Max merge gap (registers or bits).
    pub max_gap: u16,
    /// Max registers per read.
    pub max_registers: u16,
    /// Max bits per read.
    pub max_bits: u16,
    /// 0 or 1.
    pub address_base: u8,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
}

impl ModbusDeviceConfig {
    /// Validate one device table (pure). Cross-device checks (unique ids, shared lines) are
    /// done by [`crate::modbus::plan::plan`].
    pub fn validate(&self) -> Result<ModbusDevice, Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.id.trim().is_empty() {
            errs.push(FieldError::new("id", "device id must not be empty"));
        }
        let rtu = !matches!(self.transport, TransportConfig::Tcp { .. });
        if rtu && !(1..=247).contains(&self.unit) {
            errs.push(FieldError::new(
                "unit",
                format!(
                    "unit id {} is not an RTU slave address (1–247; 0 is broadcast and never answers)",
                    self.unit
                ),
            ));
        }
        if self.poll_interval_ms == 0 {
            errs.push(FieldError::new(
                "poll_interval_ms",
                "poll interval must be at least 1 ms",
            ));
        }
        if self.timeout_ms == 0 {
            errs.push(FieldError::new(
                "timeout_ms",
                "timeout must be at least 1 ms",
            ));
        }
        if !(1..=125).contains(&self.max_registers) {
            errs.push(FieldError::new(
                "max_registers",
                format!(
                    "{} registers per read is outside 1–125 (the Modbus limit)",
                    self.max_registers
                ),
            ));
        }
        if !(1..=2000).contains(&self.max_bits) {
            errs.push(FieldError::new(
                "max_bits",
                format!(
                    "{} bits per read is outside 1–2000 (the Modbus limit)",
                    self.max_bits
                ),
            ));
        }
        if self.address_base > 1 {
            errs.push(FieldError::new(
                "address_base",
                "address_base must be 0 (protocol addresses) or 1 (1-based register numbers)",
            ));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            errs.push(FieldError::new(
                "reconnect_max_ms",
                "reconnect delays need 0 < reconnect_min_ms ≤ reconnect_max_ms",
            ));
        }
        match &self.transport {
            TransportConfig::Tcp { host, .. } | TransportConfig::RtuOverTcp { host, .. } => {
                if host.trim().is_empty() {
                    errs.push(FieldError::new("transport.host", "host must not be empty"));
                }
            }
            TransportConfig::Rtu {
                path,
                baud,
                data_bits,
                stop_bits,
                ..
            } => {
                if path.trim().is_empty() {
                    errs.push(FieldError::new(
                        "transport.path",
                        "serial path must not be empty",
                    ));
                }
                if *baud < 300 {
                    errs.push(FieldError::new("transport.baud", "baud rate below 300"));
                }
                if !matches!(data_bits, 7 | 8) {
                    errs.push(FieldError::new(
                        "transport.data_bits",
                        "data bits must be 7 or 8",
                    ));
                }
                if !matches!(stop_bits, 1 | 2) {
                    errs.push(FieldError::new(
                        "transport.stop_bits",
                        "stop bits must be 1 or 2",
                    ));
                }
            }
        }
        if let Some(line) = &self.line
            && line.trim().is_empty()
        {
            errs.push(FieldError::new("line", "line name must not be empty"));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(ModbusDevice {
            id: self.id.clone(),
            line: self
                .line
                .clone()
                .map(|l| format!("line {l}"))
                .unwrap_or_else(|| self.transport.default_line(&self.id)),
            transport: self.transport.clone(),
            unit: self.unit,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            pause: Duration::from_millis(self.pause_ms),
            max_gap: self.max_gap,
            max_registers: self.max_registers,
            max_bits: self.max_bits,
            address_base: self.address_base,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        })
    }
}

/// Modbus function (data table) a point is read from.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Coils, FC01 (0xxxx).
    Coil,
    /// Discrete inputs, FC02 (1xxxx).
    Discrete,
    /// Holding registers, FC03 (4xxxx).
    #[default]
    Holding,
    /// Input registers, FC04 (3xxxx).
    Input,
}

impl Function {
    /// Whether it reads bits rather than registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Function::Coil | Function::Discrete)
    }
    /// The Modbus function code.
    pub fn code(self) -> u8 {
        match self {
            Function::Coil => 1,
            Function::Discrete => 2,
            Function::Holding => 3,
            Function::Input => 4,
        }
    }
}

/// Data type of a point's raw value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Unsigned 16-bit, one register.
    U16,
    /// Signed 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// IEEE-754 single, two registers.
    F32,
    /// IEEE-754 double, four registers.
    F64,
    /// One bit: a coil / discrete input, or bit `bit` of a register.
    Bit,
}

impl DataType {
    /// Registers the type occupies (a bit of a register occupies one register).
    pub fn registers(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bit => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::F64 => 4,
        }
    }
    /// All types, for tests.
    pub const ALL: [DataType; 7] = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::F64,
        DataType::Bit,
    ];
}

/// Byte and word order. The letters name the bytes of the big-endian value (A = most
/// significant) in the order they arrive, registers in ascending address order. For
/// 64-bit values the same rule holds word-wise: `CDAB` reverses the words, `BADC` swaps
/// the bytes in each word, `DCBA` does both. 16-bit values only care about byte swap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ByteOrder {
    /// Big-endian, Modbus standard.
    #[default]
    ABCD,
    /// Word-swapped ("little-endian word order"), e.g. Honeywell Midas floats.
    CDAB,
    /// Byte-swapped within each word.
    BADC,
    /// Fully little-endian.
    DCBA,
}

impl ByteOrder {
    /// All orders, for tests.
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::ABCD,
        ByteOrder::CDAB,
        ByteOrder::BADC,
        ByteOrder::DCBA,
    ];
    /// Whether words come least significant first.
    pub fn word_swap(self) -> bool {
        matches!(self, ByteOrder::CDAB | ByteOrder::DCBA)
    }
    /// Whether bytes within each word are swapped.
    pub fn byte_swap(self) -> bool {
        matches!(self, ByteOrder::BADC | ByteOrder::DCBA)
    }
}

/// The inline `modbus = { ... }` table of a `[[point]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusPointConfig {
    /// Id of the `[[modbus_device]]` to read from. Required.
    pub device: String,
    /// Data table: `coil`, `discrete`, `holding` or `input`. Default `holding`.
    #[serde(default)]
    pub function: Function,
    /// Address in the device's `address_base` convention (0-based protocol address by
    /// default). Required.
    pub address: u32,
    /// Raw data type. Default `bit` for coils/discrete inputs, `u16` for registers.
    #[serde(default, rename = "type")]
    pub data_type: Option<DataType>,
    /// Bit number 0–15 (0 = least significant) when `type = "bit"` on a register.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Byte/word order of multi-byte values. Default `ABCD`.
    #[serde(default)]
    pub order: ByteOrder,
    /// Multiplier applied to the raw value: value = raw × scale + offset. Default 1.
    /// Not together with `decimals` or `loop_current`.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after scaling, in `unit`. Default 0.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Implied decimals: value = raw ÷ 10^decimals (Chinese detectors, Oldham ×10 → 1).
    /// Default none.
    #[serde(default)]
    pub decimals: Option<u8>,
    /// Unit of the value the device reports, when it differs from the point's unit
    /// (converted, e.g. mg/m³ → ppm with the point's gas). Default: the point's unit.
    #[serde(default)]
    pub unit: Option<Unit>,
    /// Raw values below this are device error codes → quality `fault` (Danfoss: −16385).
    /// Default none.
    #[serde(default)]
    pub fault_below: Option<f64>,
    /// Raw values above this are device error codes → quality `fault`. Default none.
    #[serde(default)]
    pub fault_above: Option<f64>,
    /// Treat the raw value as a 4–20 mA loop reading scaled to the point's range. Default none.
    #[serde(default)]
    pub loop_current: Option<LoopCurrentConfig>,
    /// Status register of the detector with its bit map. Default none.
    #[serde(default)]
    pub status: Option<StatusConfig>,
    /// Tolerance around the point's measuring range before a value is `out_of_range`,
    /// percent of span. Default 0.
    #[serde(default)]
    pub range_margin_percent: f64,
}

/// 4–20 mA raw input: `loop_current = { raw_at_4ma = 4000, raw_at_20ma = 20000 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopCurrentConfig {
    /// Raw value that corresponds to 4 mA (range low end). Required.
    pub raw_at_4ma: f64,
    /// Raw value that corresponds to 20 mA (range high end). Required.
    pub raw_at_20ma: f64,
    /// Loop current below which the reading is a fault (open loop, sensor fault,
    /// calibration), mA. Default 3.8 (NAMUR NE43).
    #[serde(default = "default_fault_below_ma")]
    pub fault_below_ma: f64,
    /// Loop current above which the reading is a fault (short circuit), mA. Default 21.
    #[serde(default = "default_fault_above_ma")]
    pub fault_above_ma: f64,
}

fn default_fault_below_ma() -> f64 {
    3.8
}
fn default_fault_above_ma() -> f64 {
    21.0
}

/// A detector's status register: `status = { address = 1, fault_bit = 1, ... }`. Bits are
/// numbered 0–15 from the least significant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Register address, in the device's `address_base` convention. Required.
    pub address: u32,
    /// Table: `holding` or `input`. Default `holding`.
    #[serde(default)]
    pub function: Function,
    /// Level-1 alarm bit (informational: parkguard alarms on the value). Default none.
    #[serde(default)]
    pub alarm1_bit: Option<u8>,
    /// Level-2 alarm bit (informational). Default none.
    #[serde(default)]
    pub alarm2_bit: Option<u8>,
    /// Fault bit → quality `fault`. Default none.
    #[serde(default)]
    pub fault_bit: Option<u8>,
    /// Maintenance / calibration bit → quality `maintenance`. Default none.
    #[serde(default)]
    pub maintenance_bit: Option<u8>,
    /// Inhibit bit → quality `inhibited`. Default none.
    #[serde(default)]
    pub inhibit_bit: Option<u8>,
    /// Heartbeat bit the controller toggles (Midas: bit 11 every 2 s); if it does not
    /// change for `heartbeat_timeout_ms` the controller is frozen → quality `fault`.
    /// Default none.
    #[serde(default)]
    pub heartbeat_bit: Option<u8>,
    /// How long the heartbeat may stand still, milliseconds. Default 10000.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
}

fn default_heartbeat_timeout_ms() -> u64 {
    10_000
}

/// Validated status bit map.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusMap {
    /// Function (holding or input).
    pub function: Function,
    /// Address as configured (device base applies).
    pub address: u32,
    /// Level-1 alarm bit.
    pub alarm1_bit: Option<u8>,
    /// Level-2 alarm bit.
    pub alarm2_bit: Option<u8>,
    /// Fault bit.
    pub fault_bit: Option<u8>,
    /// Maintenance bit.
    pub maintenance_bit: Option<u8>,
    /// Inhibit bit.
    pub inhibit_bit: Option<u8>,
    /// Heartbeat bit.
    pub heartbeat_bit: Option<u8>,
    /// Heartbeat timeout.
    pub heartbeat_timeout: Duration,
}

/// How a raw number becomes an engineering value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// value = raw × scale + offset.
    Linear {
        /// Multiplier.
        scale: f64,
        /// Offset.
        offset: f64,
    },
    /// value = raw ÷ divisor + offset (implied decimals; dividing by 10 keeps 209 → 20.9
    /// exact where × 0.1 would give 20.900000000000002).
    Decimals {
        /// 10^decimals.
        divisor: f64,
        /// Offset.
        offset: f64,
    },
    /// 4–20 mA loop: raw → mA → point range.
    LoopCurrent {
        /// Raw at 4 mA.
        raw_at_4ma: f64,
        /// Raw at 20 mA.
        raw_at_20ma: f64,
        /// Fault below, mA.
        fault_below_ma: f64,
        /// Fault above, mA.
        fault_above_ma: f64,
    },
}

/// A validated point mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct ModbusMapping {
    /// Device id.
    pub device: String,
    /// Function.
    pub function: Function,
    /// Address as configured (device base applies at planning).
    pub address: u32,
    /// Data type.
    pub data_type: DataType,
    /// Bit within a register for `Bit` on registers.
    pub bit: Option<u8>,
    /// Byte/word order.
    pub order: ByteOrder,
    /// Raw → value.
    pub transform: Transform,
    /// Unit the device reports in, if not the point's.
    pub unit: Option<Unit>,
    /// Raw sentinel: below → fault.
    pub fault_below: Option<f64>,
    /// Raw sentinel: above → fault.
    pub fault_above: Option<f64>,
    /// Status register.
    pub status: Option<StatusMap>,
    /// Range tolerance, fraction of span.
    pub range_margin: f64,
}

fn check_bit(errs: &mut Vec<FieldError>, field: &str, bit: Option<u8>) {
    if let Some(b) = bit
        && b > 15
    {
        errs.push(FieldError::new(
            field,
            format!("bit {b} does not exist in a 16-bit register (0–15)"),
        ));
    }
}

impl ModbusPointConfig {
    /// Validate the mapping (pure). Checks that need the device (address base, unknown
    /// device) or the point (unit conversion, range) are done by
    /// [`crate::modbus::plan::plan`].
    pub fn validate(&self) -> Result<ModbusMapping, Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.device.trim().is_empty() {
            errs.push(FieldError::new("device", "device id must not be empty"));
        }
        let data_type = self.data_type.unwrap_or(if self.function.is_bits() {
            DataType::Bit
        } else {
            DataType::U16
        });
        if self.function.is_bits() {
            if data_type != DataType::Bit {
                errs.push(FieldError::new(
                    "type",
                    "coils and discrete inputs are single bits: use type = \"bit\" or leave it out",
                ));
            }
            if self.bit.is_some() {
                errs.push(FieldError::new(
                    "bit",
                    "`bit` selects a bit of a register; coils and discrete inputs are addressed directly",
                ));
            }
        } else if data_type == DataType::Bit {
            match self.bit {
                None => errs.push(FieldError::new(
                    "bit",
                    "type = \"bit\" on a register needs `bit` (0–15)",
                )),
                Some(_) => check_bit(&mut errs, "bit", self.bit),
            }
        } else if self.bit.is_some() {
            errs.push(FieldError::new(
                "bit",
                "`bit` is only meaningful with type = \"bit\"",
            ));
        }
        if self.address > 65_536 {
            errs.push(FieldError::new(
                "address",
                format!(
                    "address {} is beyond the Modbus address space",
                    self.address
                ),
            ));
        }
        let transform = if let Some(lc) = &self.loop_current {
            if self.scale.is_some() || self.offset.is_some() || self.decimals.is_some() {
                errs.push(FieldError::new(
                    "loop_current",
                    "loop_current scales to the point's range: remove scale, offset and decimals",
                ));
            }
            if !(lc.raw_at_4ma.is_finite() && lc.raw_at_20ma.is_finite())
                || lc.raw_at_4ma == lc.raw_at_20ma
            {
                errs.push(FieldError::new(
                    "loop_current.raw_at_20ma",
                    "raw_at_4ma and raw_at_20ma must be finite and different",
                ));
            }
            if !(0.0..20.0).contains(&lc.fault_below_ma) || lc.fault_above_ma <= 20.0 {
                errs.push(FieldError::new(
                    "loop_current.fault_below_ma",
                    "need 0 ≤ fault_below_ma < 20 and fault_above_ma > 20",
                ));
            }
            if data_type == DataType::Bit {
                errs.push(FieldError::new("type", "a 4–20 mA input is not a bit"));
            }
            Transform::LoopCurrent {
                raw_at_4ma: lc.raw_at_4ma,
                raw_at_20ma: lc.raw_at_20ma,
                fault_below_ma: lc.fault_below_ma,
                fault_above_ma: lc.fault_above_ma,
            }
        } else if let Some(d) = self.decimals {
            if self.scale.is_some() {
                errs.push(FieldError::new(
                    "decimals",
                    "give either `decimals` or `scale`, not both",
                ));
            }
            if d > 9 {
                errs.push(FieldError::new("decimals", "at most 9 decimals"));
            }
            Transform::Decimals {
                divisor: 10f64.powi(i32::from(d.min(9))),
                offset: self.offset.unwrap_or(0.0),
            }
        } else {
            let scale = self.scale.unwrap_or(1.0);
            if !scale.is_finite() || scale == 0.0 {
                errs.push(FieldError::new("scale", "scale must be finite and not 0"));
            }
            Transform::Linear {
                scale,
                offset: self.offset.unwrap_or(0.0),
            }
        };
        if let Transform::Linear { offset, .. } | Transform::Decimals { offset, .. } = transform
            && !offset.is_finite()
        {
            errs.push(FieldError::new("offset", "offset must be finite"));
        }
        if data_type == DataType::Bit && (self.fault_below.is_some() || self.fault_above.is_some())
        {
            errs.push(FieldError::new(
                "fault_below",
                "sentinel values do not apply to bits",
            ));
        }
        if !(0.0..=100.0).contains(&self.range_margin_percent) {
            errs.push(FieldError::new(
                "range_margin_percent",
                "range margin must be within 0–100 % of span",
            ));
        }
        let status = self.status.as_ref().map(|s| {
            if s.function.is_bits() {
                errs.push(FieldError::new(
                    "status.function",
                    "a status register is a `holding` or `input` register",
                ));
            }
            if s.address > 65_536 {
                errs.push(FieldError::new(
                    "status.address",
                    "address is beyond the Modbus address space",
                ));
            }
            for (f, b) in [
                ("status.alarm1_bit", s.alarm1_bit),
                ("status.alarm2_bit", s.alarm2_bit),
                ("status.fault_bit", s.fault_bit),
                ("status.maintenance_bit", s.maintenance_bit),
                ("status.inhibit_bit", s.inhibit_bit),
                ("status.heartbeat_bit", s.heartbeat_bit),
            ] {
                check_bit(&mut errs, f, b);
            }
            if s.heartbeat_bit.is_some() && s.heartbeat_timeout_ms == 0 {
                errs.push(FieldError::new(
                    "status.heartbeat_timeout_ms",
                    "heartbeat timeout must be at least 1 ms",
                ));
            }
            StatusMap {
                function: s.function,
                address: s.address,
                alarm1_bit: s.alarm1_bit,
                alarm2_bit: s.alarm2_bit,
                fault_bit: s.fault_bit,
                maintenance_bit: s.maintenance_bit,
                inhibit_bit: s.inhibit_bit,
                heartbeat_bit: s.heartbeat_bit,
                heartbeat_timeout: Duration::from_millis(s.heartbeat_timeout_ms),
            }
        });
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(ModbusMapping {
            device: self.device.clone(),
            function: self.function,
            address: self.address,
            data_type,
            bit: self.bit,
            order: self.order,
            transform,
            unit: self.unit,
            fault_below: self.fault_below,
            fault_above: self.fault_above,
            status,
            range_margin: self.range_margin_percent / 100.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> Result<ModbusDeviceConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn device_defaults_and_transports() {
        let d = dev(r#"
            id = "midas-1"
            transport = { kind = "tcp", host = "10.0.0.5" }
        "#)
        .expect("parses")
        .validate()
        .expect("valid");
        assert_eq!(d.unit, 1);
        assert_eq!(d.poll_interval, Duration::from_secs(1));
        assert_eq!(d.max_registers, 125);
        assert_eq!(
            d.transport,
            TransportConfig::Tcp {
                host: "10.0.0.5".into(),
                port: 502
            }
        );
        assert_eq!(d.line, "tcp device midas-1");
        let direct = dev(r#"
            id = "plc"
            unit = 255
            transport = { kind = "tcp", host = "10.0.0.6" }
        "#)
        .expect("parses")
        .validate()
        .expect("unit 255 is fine on Modbus TCP");
        assert_eq!(direct.unit, 255);

        let r = dev(r#"
            id = "gds-a"
            unit = 7
            transport = { kind = "rtu", path = "/dev/ttyUSB0", baud = 19200, parity = "even" }
        "#)
        .expect("parses")
        .validate()
        .expect("valid");
        assert_eq!(r.line, "rtu /dev/ttyUSB0");
        // 1 start + 8 data + 1 parity + 1 stop = 11 bits at 19200 baud
        let ct = r.transport.char_time().expect("serial");
        assert!((ct.as_secs_f64() - 11.0 / 19200.0).abs() < 1e-9);
    }

    #[test]
    fn device_rejects_unknown_keys_and_bad_values() {
        assert!(
            dev(r#"
            id = "x"
            transport = { kind = "tcp", host = "h", prot = 502 }
        "#)
            .is_err()
        );
        assert!(
            dev(r#"
            id = "x"
            transport = { kind = "tcp", host = "h" }
            polling = 5
        "#)
            .is_err()
        );
        let errs = dev(r#"
            id = "x"
            unit = 0
            transport = { kind = "rtu", path = "", data_bits = 9 }
            max_registers = 200
            address_base = 2
        "#)
        .expect("parses")
        .validate()
        .expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "unit",
                "max_registers",
                "address_base",
                "transport.path",
                "transport.data_bits"
            ]
        );
    }

    fn pt(s: &str) -> Result<ModbusPointConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn point_mapping_validation() {
        let m = pt(r#"
            device = "midas-1"
            address = 3
            type = "f32"
            order = "CDAB"
            status = { address = 1, fault_bit = 1, alarm1_bit = 6, alarm2_bit = 7, heartbeat_bit = 11 }
        "#)
        .expect("parses")
        .validate()
        .expect("valid");
        assert_eq!(m.data_type, DataType::F32);
        assert_eq!(m.order, ByteOrder::CDAB);
        assert_eq!(
            m.status.as_ref().map(|s| s.heartbeat_timeout),
            Some(Duration::from_secs(10))
        );

        let c = pt(r#"
            device = "d"
            function = "coil"
            address = 5
        "#)
        .expect("parses")
        .validate()
        .expect("valid");
        assert_eq!(c.data_type, DataType::Bit);

        let d = pt(r#"
            device = "d"
            address = 101
            type = "i16"
            decimals = 1
        "#)
        .expect("parses")
        .validate()
        .expect("valid");
        assert_eq!(
            d.transform,
            Transform::Decimals {
                divisor: 10.0,
                offset: 0.0
            }
        );

        let errs = pt(r#"
            device = "d"
            address = 1
            type = "bit"
            decimals = 1
            scale = 2.0
            status = { address = 1, fault_bit = 16 }
        "#)
        .expect("parses")
        .validate()
        .expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["bit", "decimals", "status.fault_bit"]);

        assert!(pt("device = \"d\"\naddress = 1\nwhatever = 2").is_err());
    }

    #[test]
    fn json_schema_documents_every_field() {
        let dev = serde_json::to_value(schemars::schema_for!(ModbusDeviceConfig))
            .expect("schema serialises");
        let pt = serde_json::to_value(schemars::schema_for!(ModbusPointConfig))
            .expect("schema serialises");
        for (schema, fields) in [
            (
                &dev,
                &["id", "transport", "unit", "poll_interval_ms", "max_gap"][..],
            ),
            (
                &pt,
                &[
                    "device",
                    "address",
                    "type",
                    "order",
                    "loop_current",
                    "status",
                ][..],
            ),
        ] {
            for f in fields {
                let d = &schema["properties"][f]["description"];
                assert!(d.is_string(), "`{f}` has no description in {schema}");
            }
        }
    }
}
