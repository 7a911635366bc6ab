//! The pure Modbus codec: registers ↔ numbers for every type × byte order, and a point's
//! registers → value and quality (scaling, unit conversion, sentinels, 4–20 mA, status
//! bits, range). No I/O, no clock: the runtime passes what it read.

use super::config::{ByteOrder, DataType, Transform};
use parkguard_rules::{Gas, Quality, Unit};

/// Bytes of the registers in big-endian order of the value (A first), undoing `order`.
fn to_be_bytes(regs: &[u16], order: ByteOrder) -> [u8; 8] {
    let mut out = [0u8; 8];
    let n = regs.len().min(4);
    for i in 0..n {
        let w = if order.word_swap() {
            regs[n - 1 - i]
        } else {
            regs[i]
        };
        let w = if order.byte_swap() { w.swap_bytes() } else { w };
        out[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Decode the raw number of `ty` (not `Bit`) from `regs` (exactly `ty.registers()` long) in
/// `order`. Returns `None` if `regs` is too short.
pub fn decode_raw(regs: &[u16], ty: DataType, order: ByteOrder) -> Option<f64> {
    let n = usize::from(ty.registers());
    if regs.len() < n {
        return None;
    }
    let b = to_be_bytes(&regs[..n], order);
    Some(match ty {
        DataType::U16 => f64::from(u16::from_be_bytes([b[0], b[1]])),
        DataType::I16 => f64::from(i16::from_be_bytes([b[0], b[1]])),
        DataType::U32 => f64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::I32 => f64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::F32 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::F64 => f64::from_be_bytes(b),
        DataType::Bit => return None,
    })
}

/// Encode `value` as `ty` in `order` (the inverse of [`decode_raw`]; saturating casts for
/// integers). Used by the simulator and the tests.
pub fn encode_raw(value: f64, ty: DataType, order: ByteOrder) -> Vec<u16> {
    let be: Vec<u8> = match ty {
        DataType::U16 => (value as u16).to_be_bytes().to_vec(),
        DataType::I16 => (value as i16).to_be_bytes().to_vec(),
        DataType::U32 => (value as u32).to_be_bytes().to_vec(),
        DataType::I32 => (value as i32).to_be_bytes().to_vec(),
        DataType::F32 => (value as f32).to_be_bytes().to_vec(),
        DataType::F64 => value.to_be_bytes().to_vec(),
        DataType::Bit => vec![0, u8::from(value != 0.0)],
    };
    let mut words: Vec<u16> = be
        .chunks(2)
        .map(|c| {
            let w = u16::from_be_bytes([c[0], c[1]]);
            if order.byte_swap() { w.swap_bytes() } else { w }
        })
        .collect();
    if order.word_swap() {
        words.reverse();
    }
    words
}

/// Bit `bit` of a register.
pub fn bit_of(reg: u16, bit: u8) -> bool {
    bit < 16 && reg & (1 << bit) != 0
}

/// What a status register says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusFlags {
    /// Device alarm level (0 none, 1, 2), informational.
    pub alarm_level: u8,
    /// Fault bit set.
    pub fault: bool,
    /// Maintenance/calibration bit set.
    pub maintenance: bool,
    /// Inhibit bit set.
    pub inhibit: bool,
    /// Heartbeat bit value, if mapped.
    pub heartbeat: Option<bool>,
}

/// Decode a status register with the bit map.
pub fn decode_status(reg: u16, map: &super::config::StatusMap) -> StatusFlags {
    let on = |b: Option<u8>| b.is_some_and(|b| bit_of(reg, b));
    StatusFlags {
        alarm_level: if on(map.alarm2_bit) {
            2
        } else if on(map.alarm1_bit) {
            1
        } else {
            0
        },
        fault: on(map.fault_bit),
        maintenance: on(map.maintenance_bit),
        inhibit: on(map.inhibit_bit),
        heartbeat: map.heartbeat_bit.map(|b| bit_of(reg, b)),
    }
}

/// Everything needed to turn a point's raw number into a reading, resolved at planning.
#[derive(Clone, Debug, PartialEq)]
pub struct PointCodec {
    /// Raw type.
    pub data_type: DataType,
    /// Bit within the register for `Bit` on registers.
    pub bit: Option<u8>,
    /// Byte/word order.
    pub order: ByteOrder,
    /// Raw → device value.
    pub transform: Transform,
    /// Sentinel: raw below → fault.
    pub fault_below: Option<f64>,
    /// Sentinel: raw above → fault.
    pub fault_above: Option<f64>,
    /// Device unit (converted to `unit`), if different.
    pub from_unit: Option<Unit>,
    /// The point's unit.
    pub unit: Unit,
    /// The point's gas (for concentration conversions).
    pub gas: Option<Gas>,
    /// Range low end, point unit.
    pub range_lo: f64,
    /// Range high end, point unit.
    pub range_hi: f64,
    /// Tolerance around the range, fraction of span.
    pub range_margin: f64,
}

impl PointCodec {
    /// Raw number → (value in the point's unit, quality), before status bits. A fault
    /// keeps the raw number as value for the record.
    pub fn value(&self, raw: f64) -> (f64, Quality) {
        if !raw.is_finite() {
            return (raw, Quality::Fault);
        }
        if self.fault_below.is_some_and(|l| raw < l) || self.fault_above.is_some_and(|h| raw > h) {
            return (raw, Quality::Fault);
        }
        let value = match self.transform {
            Transform::Linear { scale, offset } => raw * scale + offset,
            Transform::Decimals { divisor, offset } => raw / divisor + offset,
            Transform::LoopCurrent {
                raw_at_4ma,
                raw_at_20ma,
                fault_below_ma,
                fault_above_ma,
            } => {
                let ma = 4.0 + 16.0 * (raw - raw_at_4ma) / (raw_at_20ma - raw_at_4ma);
                // < 3.8 mA is a broken loop or calibration, never "zero gas".
                if ma < fault_below_ma || ma > fault_above_ma {
                    return (ma, Quality::Fault);
                }
                // The loop spans the point's range, already in the point's unit.
                let v = self.range_lo + (ma - 4.0) / 16.0 * (self.range_hi - self.range_lo);
                return (v, self.range_quality(v));
            }
        };
        let value = match self.from_unit {
            Some(from) => match from.convert(value, self.unit, self.gas) {
                Ok(v) => v,
                // Checked at planning; unreachable for a valid plan.
                Err(_) => return (value, Quality::Fault),
            },
            None => value,
        };
        (value, self.range_quality(value))
    }

    fn range_quality(&self, v: f64) -> Quality {
        let margin = (self.range_hi - self.range_lo).abs() * self.range_margin;
        if v < self.range_lo - margin || v > self.range_hi + margin {
            Quality::OutOfRange
        } else {
            Quality::Good
        }
    }

    /// Decode from registers (`regs` starts at the point's address) or a coil/input bit.
    pub fn decode_registers(&self, regs: &[u16]) -> (f64, Quality) {
        if self.data_type == DataType::Bit {
            let b = regs
                .first()
                .is_some_and(|r| bit_of(*r, self.bit.unwrap_or(0)));
            return (f64::from(u8::from(b)), Quality::Good);
        }
        match decode_raw(regs, self.data_type, self.order) {
            Some(raw) => self.value(raw),
            None => (f64::NAN, Quality::Fault),
        }
    }

    /// Decode a coil / discrete input.
    pub fn decode_bit(&self, bit: bool) -> (f64, Quality) {
        (f64::from(u8::from(bit)), Quality::Good)
    }
}

/// Combine the value's quality with the status register: fault > maintenance > inhibited >
/// the value's own quality.
pub fn apply_status(q: Quality, s: &StatusFlags) -> Quality {
    if s.fault {
        Quality::Fault
    } else if s.maintenance {
        Quality::Maintenance
    } else if s.inhibit {
        Quality::Inhibited
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::StatusMap;
    use proptest::prelude::*;
    use std::time::Duration;

    fn codec(ty: DataType, transform: Transform) -> PointCodec {
        PointCodec {
            data_type: ty,
            bit: None,
            order: ByteOrder::ABCD,
            transform,
            fault_below: None,
            fault_above: None,
            from_unit: None,
            unit: Unit::PercentLel,
            gas: Some(Gas::Ch4),
            range_lo: 0.0,
            range_hi: 100.0,
            range_margin: 0.0,
        }
    }
    const ONE: Transform = Transform::Linear {
        scale: 1.0,
        offset: 0.0,
    };

    /// Honeywell Midas: concentration f32 in 40003–40004, word order CDAB. 25.0 is
    /// 0x41C80000, so register 40003 holds the low word 0x0000 and 40004 the high 0x41C8.
    #[test]
    fn midas_float_cdab() {
        assert_eq!(
            decode_raw(&[0x0000, 0x41C8], DataType::F32, ByteOrder::CDAB),
            Some(25.0)
        );
        // 12.5 %LEL = 0x41480000
        assert_eq!(
            decode_raw(&[0x0000, 0x4148], DataType::F32, ByteOrder::CDAB),
            Some(12.5)
        );
        // The same registers read as ABCD are garbage (a tiny denormal): the order matters.
        let wrong =
            decode_raw(&[0x0000, 0x41C8], DataType::F32, ByteOrder::ABCD).expect("two registers");
        assert!(wrong.abs() < 1e-30);
    }

    /// Midas status register 40001: AL1 bit 6, AL2 bit 7, heartbeat bit 11.
    #[test]
    fn midas_status_bits() {
        let map = StatusMap {
            function: crate::modbus::config::Function::Holding,
            address: 1,
            alarm1_bit: Some(6),
            alarm2_bit: Some(7),
            fault_bit: Some(1),
            maintenance_bit: Some(2),
            inhibit_bit: None,
            heartbeat_bit: Some(11),
            heartbeat_timeout: Duration::from_secs(10),
        };
        let s = decode_status(0b0000_1000_1100_0000, &map);
        assert_eq!(s.alarm_level, 2);
        assert!(!s.fault);
        assert_eq!(s.heartbeat, Some(true));
        let s = decode_status(0b0000_0000_0100_0010, &map);
        assert_eq!(s.alarm_level, 1);
        assert!(s.fault);
        assert_eq!(s.heartbeat, Some(false));
        assert_eq!(apply_status(Quality::Good, &s), Quality::Fault);
        let s = decode_status(0b100, &map);
        assert_eq!(apply_status(Quality::Good, &s), Quality::Maintenance);
    }

    /// Oldham iTrans 2: int16 ×10 at 40102. 0x00FA = 250 → 25.0 %LEL; a negative drift
    /// 0xFFF6 = −10 → −1.0, out of a 0–100 range.
    #[test]
    fn oldham_i16_times_ten() {
        let c = codec(
            DataType::I16,
            Transform::Linear {
                scale: 0.1,
                offset: 0.0,
            },
        );
        let (v, q) = c.decode_registers(&[0x00FA]);
        assert!((v - 25.0).abs() < 1e-9);
        assert_eq!(q, Quality::Good);
        let (v, q) = c.decode_registers(&[0xFFF6]);
        assert!((v + 1.0).abs() < 1e-9);
        assert_eq!(q, Quality::OutOfRange);
        let mut tolerant = c.clone();
        tolerant.range_margin = 0.02;
        assert_eq!(tolerant.decode_registers(&[0xFFF6]).1, Quality::Good);
    }

    /// Chinese 4-in-1 RTU detector: integer ÷ 10^decimals; H2S 2 decimals: 1234 → 12.34 ppm.
    #[test]
    fn chinese_decimals() {
        let mut c = codec(
            DataType::U16,
            Transform::Decimals {
                divisor: 100.0,
                offset: 0.0,
            },
        );
        c.unit = Unit::Ppm;
        c.gas = Some(Gas::H2s);
        assert_eq!(c.decode_registers(&[1234]), (12.34, Quality::Good));
    }

    /// Danfoss: values below −16385 are error codes, not measurements.
    #[test]
    fn danfoss_sentinel() {
        let mut c = codec(DataType::I16, ONE);
        c.range_lo = -50.0;
        c.fault_below = Some(-16385.0);
        // −16386 = 0xBFFE
        assert_eq!(c.decode_registers(&[0xBFFE]).1, Quality::Fault);
        assert_eq!(c.decode_registers(&[0xFFF6]), (-10.0, Quality::Good));
    }

    /// 4–20 mA raw in µA (4000–20000): 12 mA is mid-range; 3.5 mA and 0 mA are faults,
    /// never "0 %LEL".
    #[test]
    fn loop_current() {
        let c = codec(
            DataType::U16,
            Transform::LoopCurrent {
                raw_at_4ma: 4000.0,
                raw_at_20ma: 20000.0,
                fault_below_ma: 3.8,
                fault_above_ma: 21.0,
            },
        );
        assert_eq!(c.decode_registers(&[12000]), (50.0, Quality::Good));
        assert_eq!(c.decode_registers(&[4000]), (0.0, Quality::Good));
        assert_eq!(c.decode_registers(&[3500]).1, Quality::Fault);
        assert_eq!(c.decode_registers(&[0]).1, Quality::Fault);
        assert_eq!(c.decode_registers(&[3850]).1, Quality::OutOfRange);
        assert_eq!(c.decode_registers(&[22000]).1, Quality::Fault);
    }

    /// A detector reporting mg/m³ for a ppm point: H2S 10 mg/m³ ≈ 7.05 ppm.
    #[test]
    fn unit_conversion() {
        let mut c = codec(DataType::U16, ONE);
        c.unit = Unit::Ppm;
        c.gas = Some(Gas::H2s);
        c.from_unit = Some(Unit::MgPerM3);
        let (v, q) = c.decode_registers(&[10]);
        assert!((v - 10.0 * 24.04 / 34.08).abs() < 0.01, "{v}");
        assert_eq!(q, Quality::Good);
    }

    #[test]
    fn register_bits() {
        let mut c = codec(DataType::Bit, ONE);
        c.bit = Some(11);
        assert_eq!(c.decode_registers(&[0x0800]), (1.0, Quality::Good));
        assert_eq!(c.decode_registers(&[0xF7FF]), (0.0, Quality::Good));
    }

    #[test]
    fn known_vectors_every_order() {
        // 0x11223344 as u32 in the four orders.
        let v = 0x1122_3344u32 as f64;
        assert_eq!(
            encode_raw(v, DataType::U32, ByteOrder::ABCD),
            [0x1122, 0x3344]
        );
        assert_eq!(
            encode_raw(v, DataType::U32, ByteOrder::CDAB),
            [0x3344, 0x1122]
        );
        assert_eq!(
            encode_raw(v, DataType::U32, ByteOrder::BADC),
            [0x2211, 0x4433]
        );
        assert_eq!(
            encode_raw(v, DataType::U32, ByteOrder::DCBA),
            [0x4433, 0x2211]
        );
        // f64 1.0 = 0x3FF0_0000_0000_0000
        assert_eq!(
            decode_raw(&[0, 0, 0, 0x3FF0], DataType::F64, ByteOrder::CDAB),
            Some(1.0)
        );
        assert_eq!(
            decode_raw(&[0xF03F, 0, 0, 0], DataType::F64, ByteOrder::BADC),
            Some(1.0)
        );
        assert_eq!(
            decode_raw(&[0, 0, 0, 0xF03F], DataType::F64, ByteOrder::DCBA),
            Some(1.0)
        );
        assert_eq!(
            decode_raw(&[0x0102], DataType::U16, ByteOrder::BADC),
            Some(513.0)
        );
    }

    fn order() -> impl Strategy<Value = ByteOrder> {
        prop::sample::select(ByteOrder::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn roundtrip_u16(v in any::<u16>(), o in order()) {
            prop_assert_eq!(decode_raw(&encode_raw(f64::from(v), DataType::U16, o), DataType::U16, o), Some(f64::from(v)));
        }
        #[test]
        fn roundtrip_i16(v in any::<i16>(), o in order()) {
            prop_assert_eq!(decode_raw(&encode_raw(f64::from(v), DataType::I16, o), DataType::I16, o), Some(f64::from(v)));
        }
        #[test]
        fn roundtrip_u32(v in any::<u32>(), o in order()) {
            prop_assert_eq!(decode_raw(&encode_raw(f64::from(v), DataType::U32, o), DataType::U32, o), Some(f64::from(v)));
        }
        #[test]
        fn roundtrip_i32(v in any::<i32>(), o in order()) {
            prop_assert_eq!(decode_raw(&encode_raw(f64::from(v), DataType::I32, o), DataType::I32, o), Some(f64::from(v)));
        }
        #[test]
        fn roundtrip_f32(v in any::<f32>().prop_filter("finite", |v| v.is_finite()), o in order()) {
            prop_assert_eq!(decode_raw(&encode_raw(f64::from(v), DataType::F32, o), DataType::F32, o), Some(f64::from(v)));
        }
        #[test]
        fn roundtrip_f64(v in any::<f64>().prop_filter("finite", |v| v.is_finite()), o in order()) {
            prop_assert_eq!(decode_raw(&encode_raw(v, DataType::F64, o), DataType::F64, o), Some(v));
        }
        /// Registers → value → registers is the identity too (every bit pattern, not just
        /// the values we thought of), except NaN payloads of floats.
        #[test]
        fn registers_roundtrip(regs in prop::array::uniform4(any::<u16>()), o in order()) {
            for ty in [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::F32, DataType::F64] {
                let n = usize::from(ty.registers());
                let v = decode_raw(&regs[..n], ty, o).expect("long enough");
                if v.is_finite() {
                    prop_assert_eq!(encode_raw(v, ty, o), regs[..n].to_vec());
                }
            }
        }
    }
}
