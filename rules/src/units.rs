//! Engineering units and gases.
//!
//! GB/T 50493-2019 states toxic setpoints in mg/m³ while most detectors report ppm, and
//! combustible setpoints in %LEL while some detectors report %vol. Every point stores its
//! own unit; conversions are explicit and need the gas where the dimension changes
//! (ppm = mg/m³ × 24.04 / M at 20 °C and 101.3 kPa; %LEL = %vol / LEL × 100).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Molar volume of an ideal gas at 20 °C and 101.3 kPa, in L/mol (DOMAIN.md §2).
pub const MOLAR_VOLUME_20C: f64 = 24.04;

/// An engineering unit. The TOML/JSON spelling is given for each variant; where a
/// Unicode spelling exists (`mg/m³`, `°C`, `m³/h`) it is accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Unit {
    /// Percent of the lower explosive limit: `%LEL`.
    #[serde(rename = "%LEL")]
    PercentLel,
    /// Open-path detectors: LEL × metre: `LEL.m` (also `LEL·m`).
    #[serde(rename = "LEL.m", alias = "LEL·m")]
    LelMetre,
    /// Percent by volume: `%vol`.
    #[serde(rename = "%vol")]
    PercentVol,
    /// Parts per million by volume: `ppm`.
    #[serde(rename = "ppm")]
    Ppm,
    /// Milligrams per cubic metre: `mg/m3` (also `mg/m³`).
    #[serde(rename = "mg/m3", alias = "mg/m³")]
    MgPerM3,
    /// Pascal: `Pa`.
    #[serde(rename = "Pa")]
    Pa,
    /// Kilopascal: `kPa`.
    #[serde(rename = "kPa")]
    KPa,
    /// Megapascal: `MPa`.
    #[serde(rename = "MPa")]
    MPa,
    /// Bar: `bar`.
    #[serde(rename = "bar")]
    Bar,
    /// Degree Celsius: `degC` (also `°C`).
    #[serde(rename = "degC", alias = "°C")]
    Celsius,
    /// Metre: `m`.
    #[serde(rename = "m")]
    Metre,
    /// Millimetre: `mm`.
    #[serde(rename = "mm")]
    Millimetre,
    /// Percent of a range (levels, valve positions): `%`.
    #[serde(rename = "%")]
    Percent,
    /// Cubic metres per hour: `m3/h` (also `m³/h`).
    #[serde(rename = "m3/h", alias = "m³/h")]
    CubicMetrePerHour,
    /// Tonnes per hour: `t/h`.
    #[serde(rename = "t/h")]
    TonnePerHour,
    /// Milliampere (raw 4–20 mA loops): `mA`.
    #[serde(rename = "mA")]
    MilliAmp,
    /// No unit (counts, states): `1`.
    #[serde(rename = "1")]
    None,
}

impl Unit {
    /// The canonical spelling used in config, line protocol and the API.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::PercentLel => "%LEL",
            Unit::LelMetre => "LEL.m",
            Unit::PercentVol => "%vol",
            Unit::Ppm => "ppm",
            Unit::MgPerM3 => "mg/m3",
            Unit::Pa => "Pa",
            Unit::KPa => "kPa",
            Unit::MPa => "MPa",
            Unit::Bar => "bar",
            Unit::Celsius => "degC",
            Unit::Metre => "m",
            Unit::Millimetre => "mm",
            Unit::Percent => "%",
            Unit::CubicMetrePerHour => "m3/h",
            Unit::TonnePerHour => "t/h",
            Unit::MilliAmp => "mA",
            Unit::None => "1",
        }
    }

    /// The spelling shown to people (`mg/m³`, `°C`, `m³/h`).
    pub fn display(self) -> &'static str {
        match self {
            Unit::MgPerM3 => "mg/m³",
            Unit::Celsius => "°C",
            Unit::CubicMetrePerHour => "m³/h",
            Unit::LelMetre => "LEL·m",
            other => other.symbol(),
        }
    }

    /// Parse any accepted spelling.
    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s.trim() {
            "%LEL" | "%lel" | "LEL%" => Unit::PercentLel,
            "LEL.m" | "LEL·m" | "LELm" => Unit::LelMetre,
            "%vol" | "%VOL" | "vol%" | "%v/v" => Unit::PercentVol,
            "ppm" | "PPM" => Unit::Ppm,
            "mg/m3" | "mg/m³" => Unit::MgPerM3,
            "Pa" => Unit::Pa,
            "kPa" | "kpa" => Unit::KPa,
            "MPa" | "mpa" => Unit::MPa,
            "bar" => Unit::Bar,
            "degC" | "°C" | "℃" | "C" => Unit::Celsius,
            "m" => Unit::Metre,
            "mm" => Unit::Millimetre,
            "%" => Unit::Percent,
            "m3/h" | "m³/h" => Unit::CubicMetrePerHour,
            "t/h" => Unit::TonnePerHour,
            "mA" => Unit::MilliAmp,
            "1" | "" => Unit::None,
            _ => return None,
        })
    }

    /// Convert `value` from `self` to `to`. `gas` is needed between ppm, mg/m³, %vol and
    /// %LEL; everything else converts only within its dimension.
    pub fn convert(self, value: f64, to: Unit, gas: Option<Gas>) -> Result<f64, UnitError> {
        if self == to {
            return Ok(value);
        }
        // Pressure and length: linear factors to a base unit.
        if let (Some(a), Some(b)) = (self.pressure_pa(), to.pressure_pa()) {
            return Ok(value * a / b);
        }
        if let (Some(a), Some(b)) = (self.length_m(), to.length_m()) {
            return Ok(value * a / b);
        }
        // Concentrations: go through ppm (by volume).
        if self.is_concentration() && to.is_concentration() {
            let ppm = self.to_ppm(value, gas)?;
            return to.from_ppm(ppm, gas);
        }
        Err(UnitError::Incompatible { from: self, to })
    }

    fn pressure_pa(self) -> Option<f64> {
        match self {
            Unit::Pa => Some(1.0),
            Unit::KPa => Some(1e3),
            Unit::MPa => Some(1e6),
            Unit::Bar => Some(1e5),
            _ => None,
        }
    }

    fn length_m(self) -> Option<f64> {
        match self {
            Unit::Metre => Some(1.0),
            Unit::Millimetre => Some(1e-3),
            _ => None,
        }
    }

    fn is_concentration(self) -> bool {
        matches!(
            self,
            Unit::Ppm | Unit::MgPerM3 | Unit::PercentVol | Unit::PercentLel
        )
    }

    fn to_ppm(self, v: f64, gas: Option<Gas>) -> Result<f64, UnitError> {
        match self {
            Unit::Ppm => Ok(v),
            Unit::PercentVol => Ok(v * 10_000.0),
            Unit::MgPerM3 => Ok(v * MOLAR_VOLUME_20C / need(gas, self)?.molar_mass()),
            Unit::PercentLel => {
                let g = need(gas, self)?;
                let lel = g.lel_percent_vol().ok_or(UnitError::NoLel(g))?;
                Ok(v / 100.0 * lel * 10_000.0)
            }
            _ => Err(UnitError::Incompatible {
                from: self,
                to: Unit::Ppm,
            }),
        }
    }

    #[allow(clippy::wrong_self_convention)]
    fn from_ppm(self, ppm: f64, gas: Option<Gas>) -> Result<f64, UnitError> {
        match self {
            Unit::Ppm => Ok(ppm),
            Unit::PercentVol => Ok(ppm / 10_000.0),
            Unit::MgPerM3 => Ok(ppm * need(gas, self)?.molar_mass() / MOLAR_VOLUME_20C),
            Unit::PercentLel => {
                let g = need(gas, self)?;
                let lel = g.lel_percent_vol().ok_or(UnitError::NoLel(g))?;
                Ok(ppm / 10_000.0 / lel * 100.0)
            }
            _ => Err(UnitError::Incompatible {
                from: Unit::Ppm,
                to: self,
            }),
        }
    }
}

fn need(gas: Option<Gas>, unit: Unit) -> Result<Gas, UnitError> {
    gas.ok_or(UnitError::NeedsGas(unit))
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display())
    }
}

/// Why a conversion is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum UnitError {
    /// Different dimensions.
    #[error("cannot convert {from} to {to}: different quantities")]
    Incompatible {
        /// Source unit.
        from: Unit,
        /// Target unit.
        to: Unit,
    },
    /// ppm ↔ mg/m³ ↔ %LEL conversions need the gas.
    #[error("converting {0} needs the point's gas (set `gas`)")]
    NeedsGas(Unit),
    /// %LEL of a gas that is not combustible.
    #[error("{0} has no lower explosive limit: %LEL does not apply")]
    NoLel(Gas),
}

/// A gas parkguard knows the data of (DOMAIN.md §2). Spelled in lowercase in config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Gas {
    /// Hydrogen sulfide H₂S.
    H2s,
    /// Carbon monoxide CO.
    Co,
    /// Chlorine Cl₂.
    Cl2,
    /// Ammonia NH₃ (toxic; also combustible but monitored as toxic).
    Nh3,
    /// Sulfur dioxide SO₂.
    So2,
    /// Hydrogen chloride HCl.
    Hcl,
    /// Hydrogen cyanide HCN.
    Hcn,
    /// Nitrogen dioxide NO₂.
    No2,
    /// Phosgene COCl₂.
    Cocl2,
    /// Oxygen O₂.
    O2,
    /// Hydrogen H₂.
    H2,
    /// Methane CH₄.
    Ch4,
    /// Propane C₃H₈.
    Propane,
    /// Isobutane i-C₄H₁₀.
    Isobutane,
    /// Ethylene C₂H₄.
    Ethylene,
    /// Toluene C₇H₈.
    Toluene,
    /// Methanol CH₃OH.
    Methanol,
    /// Ethanol C₂H₅OH.
    Ethanol,
}

/// Toxic setpoints of GB/T 50493-2019 (mg/m³) and the old NIOSH IDLH (ppm).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ToxicData {
    /// Level-1 alarm, 100 % OEL, mg/m³.
    pub level1_mg_m3: f64,
    /// Level-2 alarm, 200 % OEL, mg/m³.
    pub level2_mg_m3: f64,
    /// Immediately dangerous to life or health, ppm.
    pub idlh_ppm: f64,
}

impl Gas {
    /// Every gas, for tables and tests.
    pub const ALL: [Gas; 18] = [
        Gas::H2s,
        Gas::Co,
        Gas::Cl2,
        Gas::Nh3,
        Gas::So2,
        Gas::Hcl,
        Gas::Hcn,
        Gas::No2,
        Gas::Cocl2,
        Gas::O2,
        Gas::H2,
        Gas::Ch4,
        Gas::Propane,
        Gas::Isobutane,
        Gas::Ethylene,
        Gas::Toluene,
        Gas::Methanol,
        Gas::Ethanol,
    ];

    /// Molar mass, g/mol.
    pub fn molar_mass(self) -> f64 {
        match self {
            Gas::H2s => 34.08,
            Gas::Co => 28.01,
            Gas::Cl2 => 70.90,
            Gas::Nh3 => 17.03,
            Gas::So2 => 64.07,
            Gas::Hcl => 36.46,
            Gas::Hcn => 27.03,
            Gas::No2 => 46.01,
            Gas::Cocl2 => 98.92,
            Gas::O2 => 32.00,
            Gas::H2 => 2.016,
            Gas::Ch4 => 16.04,
            Gas::Propane => 44.10,
            Gas::Isobutane => 58.12,
            Gas::Ethylene => 28.05,
            Gas::Toluene => 92.14,
            Gas::Methanol => 32.04,
            Gas::Ethanol => 46.07,
        }
    }

    /// Lower explosive limit in %vol for the combustibles of DOMAIN.md §2.
    pub fn lel_percent_vol(self) -> Option<f64> {
        match self {
            Gas::H2 => Some(4.0),
            Gas::Ch4 => Some(5.0),
            Gas::Propane => Some(2.1),
            Gas::Isobutane => Some(1.8),
            Gas::Ethylene => Some(2.7),
            Gas::Toluene => Some(1.2),
            Gas::Methanol => Some(5.5),
            Gas::Ethanol => Some(3.5),
            _ => None,
        }
    }

    /// GB/T 50493 toxic setpoints, for the toxic gases.
    pub fn toxic(self) -> Option<ToxicData> {
        let (l1, l2, idlh) = match self {
            Gas::H2s => (10.0, 20.0, 300.0),
            Gas::Co => (20.0, 40.0, 1500.0),
            Gas::Cl2 => (1.0, 2.0, 30.0),
            Gas::Nh3 => (20.0, 40.0, 500.0),
            Gas::So2 => (5.0, 10.0, 100.0),
            Gas::Hcl => (7.5, 15.0, 100.0),
            Gas::Hcn => (1.0, 2.0, 50.0),
            Gas::No2 => (5.0, 10.0, 50.0),
            Gas::Cocl2 => (0.5, 1.0, 2.0),
            _ => return None,
        };
        Some(ToxicData {
            level1_mg_m3: l1,
            level2_mg_m3: l2,
            idlh_ppm: idlh,
        })
    }

    /// Chemical formula for display.
    pub fn formula(self) -> &'static str {
        match self {
            Gas::H2s => "H₂S",
            Gas::Co => "CO",
            Gas::Cl2 => "Cl₂",
            Gas::Nh3 => "NH₃",
            Gas::So2 => "SO₂",
            Gas::Hcl => "HCl",
            Gas::Hcn => "HCN",
            Gas::No2 => "NO₂",
            Gas::Cocl2 => "COCl₂",
            Gas::O2 => "O₂",
            Gas::H2 => "H₂",
            Gas::Ch4 => "CH₄",
            Gas::Propane => "C₃H₈",
            Gas::Isobutane => "i-C₄H₁₀",
            Gas::Ethylene => "C₂H₄",
            Gas::Toluene => "C₇H₈",
            Gas::Methanol => "CH₃OH",
            Gas::Ethanol => "C₂H₅OH",
        }
    }

    /// Chinese name.
    pub fn name_zh(self) -> &'static str {
        match self {
            Gas::H2s => "硫化氢",
            Gas::Co => "一氧化碳",
            Gas::Cl2 => "氯气",
            Gas::Nh3 => "氨气",
            Gas::So2 => "二氧化硫",
            Gas::Hcl => "氯化氢",
            Gas::Hcn => "氰化氢",
            Gas::No2 => "二氧化氮",
            Gas::Cocl2 => "光气",
            Gas::O2 => "氧气",
            Gas::H2 => "氢气",
            Gas::Ch4 => "甲烷",
            Gas::Propane => "丙烷",
            Gas::Isobutane => "异丁烷",
            Gas::Ethylene => "乙烯",
            Gas::Toluene => "甲苯",
            Gas::Methanol => "甲醇",
            Gas::Ethanol => "乙醇",
        }
    }
}

impl std::fmt::Display for Gas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.formula())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// DOMAIN.md §2: level-1 and level-2 mg/m³ with the ≈ppm the table gives.
    #[test]
    fn toxic_table_mg_to_ppm() {
        let table = [
            (Gas::H2s, 7.1, 14.1),
            (Gas::Co, 17.2, 34.3),
            (Gas::Cl2, 0.34, 0.68),
            (Gas::Nh3, 28.2, 56.5),
            (Gas::So2, 1.9, 3.8),
            (Gas::Hcl, 5.0, 9.9),
            (Gas::Hcn, 0.9, 1.8),
            (Gas::No2, 2.6, 5.2),
            (Gas::Cocl2, 0.12, 0.24),
        ];
        for (gas, l1_ppm, l2_ppm) in table {
            let t = gas.toxic().unwrap();
            let got1 = Unit::MgPerM3
                .convert(t.level1_mg_m3, Unit::Ppm, Some(gas))
                .unwrap();
            let got2 = Unit::MgPerM3
                .convert(t.level2_mg_m3, Unit::Ppm, Some(gas))
                .unwrap();
            // The table rounds to two significant digits: 2 % relative tolerance.
            let tol = |x: f64| x * 0.02;
            assert!(
                close(got1, l1_ppm, tol(l1_ppm)),
                "{gas:?} l1 {got1} vs {l1_ppm}"
            );
            assert!(
                close(got2, l2_ppm, tol(l2_ppm)),
                "{gas:?} l2 {got2} vs {l2_ppm}"
            );
        }
    }

    #[test]
    fn ppm_mg_round_trip_for_every_gas() {
        for gas in Gas::ALL {
            let back = Unit::Ppm
                .convert(
                    Unit::MgPerM3.convert(5.0, Unit::Ppm, Some(gas)).unwrap(),
                    Unit::MgPerM3,
                    Some(gas),
                )
                .unwrap();
            assert!(close(back, 5.0, 1e-12), "{gas:?}");
        }
    }

    #[test]
    fn lel_conversions() {
        // 25 %LEL of H₂ is 1.0 %vol (DOMAIN.md §2).
        let v = Unit::PercentLel
            .convert(25.0, Unit::PercentVol, Some(Gas::H2))
            .unwrap();
        assert!(close(v, 1.0, 1e-12));
        let v = Unit::PercentVol
            .convert(2.5, Unit::PercentLel, Some(Gas::Ch4))
            .unwrap();
        assert!(close(v, 50.0, 1e-12));
        assert_eq!(
            Unit::PercentLel.convert(10.0, Unit::Ppm, Some(Gas::H2s)),
            Err(UnitError::NoLel(Gas::H2s))
        );
        assert_eq!(
            Unit::Ppm.convert(10.0, Unit::MgPerM3, None),
            Err(UnitError::NeedsGas(Unit::MgPerM3))
        );
    }

    #[test]
    fn pressure_and_length() {
        assert!(close(
            Unit::MPa.convert(1.6, Unit::KPa, None).unwrap(),
            1600.0,
            1e-9
        ));
        assert!(close(
            Unit::Bar.convert(1.0, Unit::KPa, None).unwrap(),
            100.0,
            1e-9
        ));
        assert!(close(
            Unit::Millimetre.convert(2500.0, Unit::Metre, None).unwrap(),
            2.5,
            1e-12
        ));
        assert!(matches!(
            Unit::Celsius.convert(1.0, Unit::KPa, None),
            Err(UnitError::Incompatible { .. })
        ));
        assert!(matches!(
            Unit::CubicMetrePerHour.convert(1.0, Unit::TonnePerHour, None),
            Err(UnitError::Incompatible { .. })
        ));
    }

    #[test]
    fn unit_spellings_parse() {
        for u in [
            Unit::PercentLel,
            Unit::LelMetre,
            Unit::PercentVol,
            Unit::Ppm,
            Unit::MgPerM3,
            Unit::Pa,
            Unit::KPa,
            Unit::MPa,
            Unit::Bar,
            Unit::Celsius,
            Unit::Metre,
            Unit::Millimetre,
            Unit::Percent,
            Unit::CubicMetrePerHour,
            Unit::TonnePerHour,
            Unit::MilliAmp,
            Unit::None,
        ] {
            assert_eq!(Unit::parse(u.symbol()), Some(u));
            assert_eq!(Unit::parse(u.display()), Some(u));
        }
        assert_eq!(Unit::parse("furlongs"), None);
    }
}
