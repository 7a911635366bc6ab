//! Request planning: computed once from the validated config, before anything touches the
//! network. Devices are grouped into lines (one connection, one request at a time); each
//! device's points (and status registers) are merged into the fewest reads that respect
//! the device's `max_gap`, `max_registers` (≤ 125) and `max_bits` (≤ 2000).
//!
//! Every problem is reported as a [`PlanError`] attributable to a device or a point, so the
//! config loader can show it at the right table.

use super::config::{DataType, Function, ModbusDevice, ModbusMapping, StatusMap, Transport};
use super::decode::PointCodec;
use parkguard_rules::{FieldError, Point, PointId};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What a [`PlanError`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanTarget {
    /// The `[[modbus_device]]` with this id.
    Device(String),
    /// The `modbus` table of this point; `field` is relative to that table.
    Point(PointId),
}

/// A planning error: which table, and the field error inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// The table.
    pub target: PlanTarget,
    /// The error (field relative to the table).
    pub error: FieldError,
}

impl PlanError {
    fn device(id: &str, field: &str, msg: impl Into<String>) -> Self {
        Self {
            target: PlanTarget::Device(id.to_owned()),
            error: FieldError::new(field, msg),
        }
    }
    fn point(id: PointId, field: &str, msg: impl Into<String>) -> Self {
        Self {
            target: PlanTarget::Point(id),
            error: FieldError::new(field, msg),
        }
    }
}

/// One read request: function, protocol (0-based) address, count of registers or bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// Function.
    pub function: Function,
    /// First protocol address.
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
}

/// Where a point's data sits in a device's reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Index into [`DevicePlan::reads`].
    pub read: usize,
    /// Offset (registers or bits) from the read's start.
    pub offset: u16,
}

/// A point as the poller decodes it.
#[derive(Clone, Debug, PartialEq)]
pub struct PointPlan {
    /// The point.
    pub id: PointId,
    /// Its tag, for logs.
    pub tag: String,
    /// Where its value is.
    pub value: Slot,
    /// How to decode it.
    pub codec: PointCodec,
    /// Where its status register is, with the bit map.
    pub status: Option<(Slot, StatusMap)>,
}

/// One device: its reads and its points.
#[derive(Clone, Debug, PartialEq)]
pub struct DevicePlan {
    /// The device.
    pub device: ModbusDevice,
    /// Reads per poll, in order.
    pub reads: Vec<ReadRequest>,
    /// Points decoded from them.
    pub points: Vec<PointPlan>,
}

/// One line: a connection shared by its devices, one request at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlan {
    /// Line key.
    pub key: String,
    /// Its transport (identical for all its devices).
    pub transport: Transport,
    /// Devices on it.
    pub devices: Vec<DevicePlan>,
}

/// The whole Modbus side of the park.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ModbusPlan {
    /// Lines, in config order of their first device.
    pub lines: Vec<LinePlan>,
}

impl ModbusPlan {
    /// All devices.
    pub fn devices(&self) -> impl Iterator<Item = &DevicePlan> {
        self.lines.iter().flat_map(|l| l.devices.iter())
    }
    /// Total reads per poll round.
    pub fn read_count(&self) -> usize {
        self.devices().map(|d| d.reads.len()).sum()
    }
}

/// Bus time of one read on a serial line: request (8 bytes) + response + two 3.5-character
/// silent intervals, plus the device's pause.
pub fn read_line_time(read: &ReadRequest, char_time: Duration, pause: Duration) -> Duration {
    let resp = if read.function.is_bits() {
        5 + u32::from(read.count).div_ceil(8)
    } else {
        5 + 2 * u32::from(read.count)
    };
    char_time.mul_f64(f64::from(8 + resp) + 7.0) + pause
}

/// Merge `(start, len)` spans into reads of at most `limit` with gaps of at most `max_gap`.
fn merge(mut spans: Vec<(u32, u32)>, max_gap: u32, limit: u32) -> Vec<(u32, u32)> {
    spans.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (s, len) in spans {
        let e = s + len;
        if let Some((rs, re)) = out.last_mut()
            && s <= *re + max_gap
            && e.max(*re) - *rs <= limit
        {
            *re = (*re).max(e);
            continue;
        }
        out.push((s, e));
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// Build the request plan from validated devices and the points mapped to them (point id,
/// mapping, and the point itself for unit, gas and range). Collects every error.
pub fn plan<'a>(
    devices: &[ModbusDevice],
    points: impl IntoIterator<Item = (PointId, &'a ModbusMapping, &'a Point)>,
) -> Result<ModbusPlan, Vec<PlanError>> {
    let mut errs = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        if by_id.insert(d.id.as_str(), i).is_some() {
            errs.push(PlanError::device(
                &d.id,
                "id",
                format!("device id `{}` is used twice", d.id),
            ));
        }
    }
    // Lines: same key → same transport, distinct units.
    let mut lines: Vec<LinePlan> = Vec::new();
    let mut line_of: Vec<usize> = Vec::with_capacity(devices.len());
    for d in devices {
        let li = match lines.iter().position(|l| l.key == d.line) {
            Some(li) => {
                let line = &lines[li];
                if line.transport != d.transport {
                    errs.push(PlanError::device(
                        &d.id,
                        "transport",
                        format!(
                            "device shares line `{}` with `{}` but its transport differs; devices on one line need identical transport tables",
                            d.line, line.devices[0].device.id
                        ),
                    ));
                }
                if let Some(other) = line.devices.iter().find(|o| o.device.unit == d.unit) {
                    errs.push(PlanError::device(
                        &d.id,
                        "unit",
                        format!(
                            "unit id {} is already used by `{}` on the same line",
                            d.unit, other.device.id
                        ),
                    ));
                }
                li
            }
            None => {
                lines.push(LinePlan {
                    key: d.line.clone(),
                    transport: d.transport.clone(),
                    devices: Vec::new(),
                });
                lines.len() - 1
            }
        };
        lines[li].devices.push(DevicePlan {
            device: d.clone(),
            reads: Vec::new(),
            points: Vec::new(),
        });
        line_of.push(li);
    }
    let slot_of = |i: usize| -> (usize, usize) {
        let li = line_of[i];
        let di = lines_pos(&line_of, i);
        (li, di)
    };

    // Collect spans per device and function.
    struct Pending<'a> {
        id: PointId,
        point: &'a Point,
        mapping: &'a ModbusMapping,
        value: (Function, u32, u32),
        status: Option<(u32, StatusMap)>,
    }
    let mut pending: Vec<Vec<Pending<'a>>> = devices.iter().map(|_| Vec::new()).collect();
    for (id, mapping, point) in points {
        let Some(&di) = by_id.get(mapping.device.as_str()) else {
            errs.push(PlanError::point(
                id,
                "device",
                format!(
                    "no [[modbus_device]] has id `{}`{}",
                    mapping.device,
                    suggestion(&mapping.device, devices)
                ),
            ));
            continue;
        };
        let dev = &devices[di];
        let base = u32::from(dev.address_base);
        let pdu = |addr: u32, field: &str, len: u32, errs: &mut Vec<PlanError>| -> Option<u32> {
            if addr < base {
                errs.push(PlanError::point(
                    id,
                    field,
                    format!(
                        "address {addr} does not exist with address_base = 1 of device `{}` (numbers start at 1)",
                        dev.id
                    ),
                ));
                return None;
            }
            let a = addr - base;
            if a + len > 65_536 {
                errs.push(PlanError::point(
                    id,
                    field,
                    format!("address {addr} + {len} runs past the end of the Modbus address space"),
                ));
                return None;
            }
            Some(a)
        };
        let len = if mapping.function.is_bits() {
            1
        } else {
            u32::from(mapping.data_type.registers())
        };
        let limit = if mapping.function.is_bits() {
            dev.max_bits
        } else {
            dev.max_registers
        };
        if len > u32::from(limit) {
            errs.push(PlanError::point(
                id,
                "type",
                format!(
                    "{len} registers do not fit in one read of device `{}` (max_registers = {limit})",
                    dev.id
                ),
            ));
            continue;
        }
        let Some(addr) = pdu(mapping.address, "address", len, &mut errs) else {
            continue;
        };
        let status = match &mapping.status {
            Some(s) => match pdu(s.address, "status.address", 1, &mut errs) {
                Some(a) => Some((a, s.clone())),
                None => continue,
            },
            None => None,
        };
        if let Some(from) = mapping.unit
            && let Err(e) = from.convert(1.0, point.unit, point.gas)
        {
            errs.push(PlanError::point(id, "unit", e.to_string()));
            continue;
        }
        if mapping.data_type == DataType::Bit
            && !mapping.function.is_bits()
            && mapping.bit.is_none()
        {
            errs.push(PlanError::point(id, "bit", "type = \"bit\" needs `bit`"));
            continue;
        }
        pending[di].push(Pending {
            id,
            point,
            mapping,
            value: (mapping.function, addr, len),
            status,
        });
    }

    for (di, dev) in devices.iter().enumerate() {
        let mut spans: BTreeMap<Function, Vec<(u32, u32)>> = BTreeMap::new();
        for p in &pending[di] {
            spans
                .entry(p.value.0)
                .or_default()
                .push((p.value.1, p.value.2));
            if let Some((a, s)) = &p.status {
                spans.entry(s.function).or_default().push((*a, 1));
            }
        }
        let mut reads = Vec::new();
        for (f, s) in spans {
            let limit = if f.is_bits() {
                dev.max_bits
            } else {
                dev.max_registers
            };
            for (start, count) in merge(s, u32::from(dev.max_gap), u32::from(limit)) {
                reads.push(ReadRequest {
                    function: f,
                    // Bounded by the 65_536 check above and `limit` ≤ 2000.
                    address: u16::try_from(start).unwrap_or(u16::MAX),
                    count: u16::try_from(count).unwrap_or(u16::MAX),
                });
            }
        }
        let find = |f: Function, a: u32| -> Slot {
            let read = reads
                .iter()
                .position(|r| {
                    r.function == f
                        && u32::from(r.address) <= a
                        && a < u32::from(r.address) + u32::from(r.count)
                })
                .expect("every span was merged into some read");
            Slot {
                read,
                offset: u16::try_from(a - u32::from(reads[read].address)).unwrap_or(0),
            }
        };
        let mut pts = Vec::new();
        for p in &pending[di] {
            let (from_unit, transform) = (p.mapping.unit, p.mapping.transform);
            pts.push(PointPlan {
                id: p.id,
                tag: p.point.tag.clone(),
                value: find(p.value.0, p.value.1),
                codec: PointCodec {
                    data_type: p.mapping.data_type,
                    bit: p.mapping.bit,
                    order: p.mapping.order,
                    transform,
                    fault_below: p.mapping.fault_below,
                    fault_above: p.mapping.fault_above,
                    from_unit: from_unit.filter(|u| *u != p.point.unit),
                    unit: p.point.unit,
                    gas: p.point.gas,
                    range_lo: p.point.range_lo,
                    range_hi: p.point.range_hi,
                    range_margin: p.mapping.range_margin,
                },
                status: p
                    .status
                    .as_ref()
                    .map(|(a, s)| (find(s.function, *a), s.clone())),
            });
        }
        let (li, dpos) = slot_of(di);
        let dp = &mut lines[li].devices[dpos];
        dp.reads = reads;
        dp.points = pts;
    }

    // Serial lines: the bus carries one frame at a time at its baud rate.
    for line in &lines {
        let Some(ct) = line.transport.char_time() else {
            continue;
        };
        let load: f64 = line
            .devices
            .iter()
            .map(|d| {
                let t: Duration = d
                    .reads
                    .iter()
                    .map(|r| read_line_time(r, ct, d.device.pause))
                    .sum();
                t.as_secs_f64() / d.device.poll_interval.as_secs_f64()
            })
            .sum();
        if load > 1.0 {
            for d in &line.devices {
                errs.push(PlanError::device(
                    &d.device.id,
                    "poll_interval_ms",
                    format!(
                        "{} is over-subscribed: its polls need {:.0} % of the bus time; raise poll intervals or split the devices over more lines",
                        line.key,
                        load * 100.0
                    ),
                ));
            }
        }
    }

    if errs.is_empty() {
        Ok(ModbusPlan { lines })
    } else {
        Err(errs)
    }
}

/// Position of device `i` within its line.
fn lines_pos(line_of: &[usize], i: usize) -> usize {
    line_of[..i].iter().filter(|&&l| l == line_of[i]).count()
}

fn suggestion(name: &str, devices: &[ModbusDevice]) -> String {
    let near = devices.iter().find(|d| {
        d.id.eq_ignore_ascii_case(name)
            || d.id.replace(['-', '_'], "") == name.replace(['-', '_'], "")
    });
    match near {
        Some(d) => format!(" (did you mean `{}`?)", d.id),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::{ModbusDeviceConfig, ModbusPointConfig};
    use parkguard_rules::{AlarmLimits, PointKind, Unit};

    fn device(extra: &str) -> ModbusDevice {
        toml::from_str::<ModbusDeviceConfig>(&format!(
            "id = \"d1\"\ntransport = {{ kind = \"tcp\", host = \"127.0.0.1\" }}\n{extra}"
        ))
        .expect("parses")
        .validate()
        .expect("valid")
    }

    fn mapping(s: &str) -> ModbusMapping {
        toml::from_str::<ModbusPointConfig>(s)
            .expect("parses")
            .validate()
            .expect("valid")
    }

    fn point(i: u32) -> Point {
        Point {
            id: PointId(i),
            tag: format!("P{i}"),
            name: String::new(),
            enterprise: "E".into(),
            device: None,
            hazard_installation: None,
            area: None,
            kind: PointKind::Other,
            gas: None,
            unit: Unit::Percent,
            range_lo: 0.0,
            range_hi: 100.0,
            limits: AlarmLimits::default(),
            expected_interval: Duration::from_secs(1),
            location: None,
        }
    }

    fn run(devices: &[ModbusDevice], maps: &[&str]) -> Result<ModbusPlan, Vec<PlanError>> {
        let maps: Vec<ModbusMapping> = maps.iter().map(|m| mapping(m)).collect();
        let pts: Vec<Point> = (0..maps.len() as u32).map(point).collect();
        plan(devices, maps.iter().zip(&pts).map(|(m, p)| (p.id, m, p)))
    }

    fn reads(p: &ModbusPlan) -> Vec<(u8, u16, u16)> {
        p.lines[0].devices[0]
            .reads
            .iter()
            .map(|r| (r.function.code(), r.address, r.count))
            .collect()
    }

    #[test]
    fn merges_contiguous_and_near_points() {
        let p = run(
            &[device("")],
            &[
                r#"device = "d1"
                   address = 0"#,
                r#"device = "d1"
                   address = 1
                   type = "f32""#,
                r#"device = "d1"
                   address = 13"#, // gap of 10 after 3 → merged
                r#"device = "d1"
                   address = 30"#, // gap of 16 → new read
                r#"device = "d1"
                   function = "input"
                   address = 30"#,
                r#"device = "d1"
                   function = "coil"
                   address = 7"#,
            ],
        )
        .expect("plans");
        assert_eq!(reads(&p), [(1, 7, 1), (3, 0, 14), (3, 30, 1), (4, 30, 1)]);
        let d = &p.lines[0].devices[0];
        assert_eq!(d.points[1].value, Slot { read: 1, offset: 1 });
        assert_eq!(
            d.points[2].value,
            Slot {
                read: 1,
                offset: 13
            }
        );
        assert_eq!(d.points[3].value, Slot { read: 2, offset: 0 });
    }

    #[test]
    fn never_exceeds_limits() {
        // 200 consecutive u16 → 125 + 75
        let maps: Vec<String> = (0..200)
            .map(|a| format!("device = \"d1\"\naddress = {a}"))
            .collect();
        let refs: Vec<&str> = maps.iter().map(String::as_str).collect();
        let p = run(&[device("")], &refs).expect("plans");
        assert_eq!(reads(&p), [(3, 0, 125), (3, 125, 75)]);
        // A device that wants small reads and no gaps.
        let p = run(&[device("max_registers = 16\nmax_gap = 0")], &refs[..40]).expect("plans");
        assert_eq!(reads(&p), [(3, 0, 16), (3, 16, 16), (3, 32, 8)]);
        // An f32 never straddles two reads.
        let p = run(
            &[device("max_registers = 3")],
            &[
                "device = \"d1\"\naddress = 0",
                "device = \"d1\"\naddress = 1\ntype = \"f32\"",
            ],
        )
        .expect("plans");
        assert_eq!(reads(&p), [(3, 0, 3)]);
        let p = run(
            &[device("max_registers = 2")],
            &[
                "device = \"d1\"\naddress = 0",
                "device = \"d1\"\naddress = 1\ntype = \"f32\"",
            ],
        )
        .expect("plans");
        assert_eq!(reads(&p), [(3, 0, 1), (3, 1, 2)]);
    }

    #[test]
    fn status_register_is_planned_with_its_point() {
        let p = run(
            &[device("address_base = 1")],
            &[r#"device = "d1"
                 address = 3
                 type = "f32"
                 order = "CDAB"
                 status = { address = 1, fault_bit = 1, heartbeat_bit = 11 }"#],
        )
        .expect("plans");
        assert_eq!(reads(&p), [(3, 0, 4)]);
        let d = &p.lines[0].devices[0];
        assert_eq!(d.points[0].value, Slot { read: 0, offset: 2 });
        assert_eq!(
            d.points[0].status.as_ref().map(|s| s.0),
            Some(Slot { read: 0, offset: 0 })
        );
    }

    #[test]
    fn errors_name_the_point_or_device() {
        let errs = run(
            &[device("address_base = 1\nmax_registers = 2")],
            &[
                "device = \"d2\"\naddress = 1",
                "device = \"d1\"\naddress = 0",
                "device = \"d1\"\naddress = 5\ntype = \"f64\"",
                "device = \"d1\"\naddress = 65536\ntype = \"u32\"",
                "device = \"d1\"\naddress = 1\nunit = \"degC\"",
            ],
        )
        .expect_err("invalid");
        let got: Vec<(PlanTarget, &str)> = errs
            .iter()
            .map(|e| (e.target.clone(), e.error.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (PlanTarget::Point(PointId(0)), "device"),
                (PlanTarget::Point(PointId(1)), "address"),
                (PlanTarget::Point(PointId(2)), "type"),
                (PlanTarget::Point(PointId(3)), "address"),
                (PlanTarget::Point(PointId(4)), "unit"),
            ]
        );
        assert!(errs[0].error.message.contains("d2"));
    }

    fn rtu(id: &str, unit: u8, baud: u32, extra: &str) -> ModbusDevice {
        toml::from_str::<ModbusDeviceConfig>(&format!(
            "id = \"{id}\"\nunit = {unit}\ntransport = {{ kind = \"rtu\", path = \"/dev/ttyS1\", baud = {baud} }}\n{extra}"
        ))
        .expect("parses")
        .validate()
        .expect("valid")
    }

    #[test]
    fn lines_group_serial_devices_and_check_them() {
        let devs = [rtu("a", 1, 9600, ""), rtu("b", 2, 9600, "")];
        let p = run(
            &devs,
            &["device = \"a\"\naddress = 0", "device = \"b\"\naddress = 0"],
        )
        .expect("plans");
        assert_eq!(p.lines.len(), 1);
        assert_eq!(p.lines[0].devices.len(), 2);

        let errs =
            run(&[rtu("a", 1, 9600, ""), rtu("b", 1, 19200, "")], &[]).expect_err("conflicts");
        let fields: Vec<_> = errs.iter().map(|e| e.error.field.as_str()).collect();
        assert_eq!(fields, ["transport", "unit"]);

        // 125 registers at 9600 baud 8N1: (8 + 255 + 7) chars × 1.04 ms ≈ 281 ms per read.
        // Four such reads every second on one line cannot fit.
        let maps: Vec<String> = (0..4)
            .map(|i| {
                format!(
                    "device = \"a\"\naddress = {}\ntype = \"u16\"",
                    i * 125 + 124
                )
            })
            .chain((0..4).map(|i| format!("device = \"a\"\naddress = {}", i * 125)))
            .collect();
        let refs: Vec<&str> = maps.iter().map(String::as_str).collect();
        let errs = run(&[rtu("a", 1, 9600, "max_gap = 200")], &refs).expect_err("overloaded");
        assert_eq!(errs[0].error.field, "poll_interval_ms");
        assert!(
            errs[0].error.message.contains("over-subscribed"),
            "{}",
            errs[0].error
        );
        // The same at 5 s intervals fits.
        run(
            &[rtu("a", 1, 9600, "max_gap = 200\npoll_interval_ms = 5000")],
            &refs,
        )
        .expect("fits");
    }

    #[test]
    fn tcp_devices_get_their_own_connection_unless_told() {
        let mut a = device("unit = 1");
        let mut b = device("unit = 2");
        b.id = "d2".into();
        b.line = "tcp device d2".into();
        let p = run(&[a.clone(), b.clone()], &[]).expect("plans");
        assert_eq!(p.lines.len(), 2);
        a.line = "line gw".into();
        b.line = "line gw".into();
        let p = run(&[a, b], &[]).expect("plans");
        assert_eq!(p.lines.len(), 1);
    }
}
