//! Default alarm limits per point kind and gas.
//!
//! Gas setpoints follow GB/T 50493-2019 (DOMAIN.md §2): combustible level-1 25 %LEL and
//! level-2 50 %LEL; toxic level-1 100 % OEL and level-2 200 % OEL, or 5 % / 10 % IDLH where
//! the detector's range cannot reach those; oxygen low 19.5 %vol and high 23.5 %vol; open
//! path 1 and 2 LEL·m. Deadbands and delays are common practice marked (cfg) in
//! DOMAIN.md §5: defaults the chief engineer can change per point, never law.
//!
//! Process points (pressure, temperature, level, flow) have no default setpoints: they
//! belong to the process and must be configured; only deadband and delays default.

use crate::model::PointKind;
use crate::units::{Gas, Unit, UnitError};
use std::time::Duration;
use thiserror::Error;

/// Default gas setpoints in the point's unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GasSetpoints {
    /// Level-1 (H) — or, for oxygen, the enrichment alarm.
    pub level1: f64,
    /// Level-2 (HH). None for oxygen.
    pub level2: Option<f64>,
    /// Low alarm (oxygen deficiency only).
    pub low: Option<f64>,
    /// Where the setpoints come from, for messages and the API.
    pub basis: &'static str,
}

/// Why no default setpoint could be given.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DefaultError {
    /// Gas kinds need a gas.
    #[error("a {0} point needs `gas` to take default setpoints")]
    MissingGas(&'static str),
    /// A toxic kind with a non-toxic gas, or similar.
    #[error("gas {gas:?} does not fit kind {kind}")]
    GasKindMismatch {
        /// The gas.
        gas: Gas,
        /// The kind.
        kind: &'static str,
    },
    /// The point's unit cannot express the setpoint.
    #[error("default setpoints cannot be expressed in {unit}: {source}")]
    Unit {
        /// The point's unit.
        unit: Unit,
        /// Why.
        source: UnitError,
    },
    /// Process kinds have no default setpoints.
    #[error("{0} points have no default setpoints: configure h/hh/l/ll")]
    NoDefault(&'static str),
}

/// GB/T 50493-2019 default setpoints for a gas point, in `unit`, for a detector whose range
/// ends at `range_hi` (in `unit`).
pub fn gas_setpoints(
    kind: PointKind,
    gas: Option<Gas>,
    unit: Unit,
    range_hi: f64,
) -> Result<GasSetpoints, DefaultError> {
    let conv = |v: f64, from: Unit, g: Option<Gas>| {
        from.convert(v, unit, g)
            .map_err(|source| DefaultError::Unit { unit, source })
    };
    match kind {
        PointKind::Combustible => {
            if unit == Unit::LelMetre {
                return Ok(GasSetpoints {
                    level1: 1.0,
                    level2: Some(2.0),
                    low: None,
                    basis: "GB/T 50493-2019 open-path 1/2 LEL·m",
                });
            }
            let g = gas.ok_or(DefaultError::MissingGas("combustible"))?;
            if g.lel_percent_vol().is_none() {
                return Err(DefaultError::GasKindMismatch {
                    gas: g,
                    kind: "combustible",
                });
            }
            Ok(GasSetpoints {
                level1: conv(25.0, Unit::PercentLel, Some(g))?,
                level2: Some(conv(50.0, Unit::PercentLel, Some(g))?),
                low: None,
                basis: "GB/T 50493-2019 25/50 %LEL",
            })
        }
        PointKind::Toxic => {
            let g = gas.ok_or(DefaultError::MissingGas("toxic"))?;
            let t = g.toxic().ok_or(DefaultError::GasKindMismatch {
                gas: g,
                kind: "toxic",
            })?;
            let l1 = conv(t.level1_mg_m3, Unit::MgPerM3, Some(g))?;
            let l2 = conv(t.level2_mg_m3, Unit::MgPerM3, Some(g))?;
            if l2 <= range_hi {
                Ok(GasSetpoints {
                    level1: l1,
                    level2: Some(l2),
                    low: None,
                    basis: "GB/T 50493-2019 100/200 % OEL",
                })
            } else {
                Ok(GasSetpoints {
                    level1: conv(0.05 * t.idlh_ppm, Unit::Ppm, Some(g))?,
                    level2: Some(conv(0.10 * t.idlh_ppm, Unit::Ppm, Some(g))?),
                    low: None,
                    basis: "GB/T 50493-2019 5/10 % IDLH (range below 200 % OEL)",
                })
            }
        }
        PointKind::Oxygen => Ok(GasSetpoints {
            level1: conv(23.5, Unit::PercentVol, Some(Gas::O2))?,
            level2: None,
            low: Some(conv(19.5, Unit::PercentVol, Some(Gas::O2))?),
            basis: "GB/T 50493-2019 O₂ 19.5/23.5 %vol",
        }),
        other => Err(DefaultError::NoDefault(other.as_str())),
    }
}

/// Default deadband as a fraction of span (cfg, DOMAIN.md §5): pressure 2 %, temperature
/// 1 %, level/flow 5 %, gas 2 %, other 1 %.
pub fn deadband_fraction(kind: PointKind) -> f64 {
    match kind {
        PointKind::Pressure => 0.02,
        PointKind::Temperature => 0.01,
        PointKind::Level | PointKind::Flow => 0.05,
        PointKind::Combustible | PointKind::Toxic | PointKind::Oxygen => 0.02,
        PointKind::Other => 0.01,
    }
}

/// Default on-delay (cfg, DOMAIN.md §5): gas 2 s (the standard allows 0–5 s; never
/// minutes), pressure/flow 15 s, level/temperature 60 s, other 15 s.
pub fn on_delay(kind: PointKind) -> Duration {
    match kind {
        PointKind::Combustible | PointKind::Toxic | PointKind::Oxygen => Duration::from_secs(2),
        PointKind::Pressure | PointKind::Flow | PointKind::Other => Duration::from_secs(15),
        PointKind::Level | PointKind::Temperature => Duration::from_secs(60),
    }
}

/// Default off-delay: 0 for gas (clear as soon as past the deadband: the deadband already
/// prevents chatter), 5 s for process values.
pub fn off_delay(kind: PointKind) -> Duration {
    if kind.is_gas() {
        Duration::ZERO
    } else {
        Duration::from_secs(5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combustible_in_lel_and_vol() {
        let s = gas_setpoints(
            PointKind::Combustible,
            Some(Gas::Ch4),
            Unit::PercentLel,
            100.0,
        )
        .unwrap();
        assert_eq!((s.level1, s.level2), (25.0, Some(50.0)));
        let s =
            gas_setpoints(PointKind::Combustible, Some(Gas::H2), Unit::PercentVol, 4.0).unwrap();
        assert!((s.level1 - 1.0).abs() < 1e-12);
        assert!((s.level2.unwrap() - 2.0).abs() < 1e-12);
        let s = gas_setpoints(PointKind::Combustible, None, Unit::LelMetre, 5.0).unwrap();
        assert_eq!((s.level1, s.level2), (1.0, Some(2.0)));
    }

    #[test]
    fn toxic_in_ppm_and_mg() {
        let s = gas_setpoints(PointKind::Toxic, Some(Gas::H2s), Unit::MgPerM3, 100.0).unwrap();
        assert_eq!((s.level1, s.level2), (10.0, Some(20.0)));
        let s = gas_setpoints(PointKind::Toxic, Some(Gas::H2s), Unit::Ppm, 100.0).unwrap();
        assert!((s.level1 - 7.05).abs() < 0.01, "{}", s.level1);
        assert!((s.level2.unwrap() - 14.1).abs() < 0.02);
    }

    #[test]
    fn toxic_range_too_small_falls_back_to_idlh() {
        // Phosgene detector with a 0–0.2 ppm range cannot show 0.24 ppm (200 % OEL).
        let s = gas_setpoints(PointKind::Toxic, Some(Gas::Cocl2), Unit::Ppm, 0.2).unwrap();
        assert!((s.level1 - 0.1).abs() < 1e-12);
        assert!((s.level2.unwrap() - 0.2).abs() < 1e-12);
        assert!(s.basis.contains("IDLH"));
    }

    #[test]
    fn oxygen_and_errors() {
        let s = gas_setpoints(PointKind::Oxygen, Some(Gas::O2), Unit::PercentVol, 30.0).unwrap();
        assert_eq!((s.low, s.level1, s.level2), (Some(19.5), 23.5, None));
        assert_eq!(
            gas_setpoints(PointKind::Toxic, None, Unit::Ppm, 100.0),
            Err(DefaultError::MissingGas("toxic"))
        );
        assert!(matches!(
            gas_setpoints(PointKind::Toxic, Some(Gas::Ch4), Unit::Ppm, 100.0),
            Err(DefaultError::GasKindMismatch { .. })
        ));
        // 25 %LEL of methane = 1.25 %vol = 12,500 ppm.
        let s = gas_setpoints(PointKind::Combustible, Some(Gas::Ch4), Unit::Ppm, 50_000.0).unwrap();
        assert!((s.level1 - 12_500.0).abs() < 1e-6);
        assert!(matches!(
            gas_setpoints(PointKind::Combustible, Some(Gas::Ch4), Unit::KPa, 100.0),
            Err(DefaultError::Unit { .. })
        ));
        assert_eq!(
            gas_setpoints(PointKind::Pressure, None, Unit::MPa, 2.5),
            Err(DefaultError::NoDefault("pressure"))
        );
    }

    #[test]
    fn delays_are_never_minutes_for_gas() {
        for k in [PointKind::Combustible, PointKind::Toxic, PointKind::Oxygen] {
            assert!(on_delay(k) <= Duration::from_secs(5));
        }
    }
}
