//! Gaussian plume model for drill scenarios: ground-level concentration downwind of a
//! continuous point release, with Pasquill–Gifford dispersion coefficients (Briggs' open
//! country fits, valid ~100 m – 10 km).
//!
//! C(x, y, 0) = Q / (π · u · σy · σz) · exp(−y² / 2σy²) · exp(−H² / 2σz²)
//!
//! (ground reflection included; x downwind, y crosswind, H release height). This is a
//! training model for drills, not an emergency-response dispersion tool: it ignores
//! buildings, terrain, dense-gas slumping (chlorine is heavier than air) and calm winds.

use parkguard_rules::GeoPoint;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pasquill atmospheric stability class: A (very unstable) … F (moderately stable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Stability {
    /// Very unstable (strong sun, light wind).
    A,
    /// Unstable.
    B,
    /// Slightly unstable.
    C,
    /// Neutral (overcast, or strong wind).
    D,
    /// Slightly stable (night, light wind).
    E,
    /// Moderately stable (clear night, light wind): the worst case for ground-level
    /// concentrations.
    F,
}

impl Stability {
    /// σy and σz in metres at `x` metres downwind (Briggs 1973, open country).
    pub fn sigmas(self, x: f64) -> (f64, f64) {
        let x = x.max(1.0);
        let ry = (1.0 + 0.0001 * x).powf(-0.5);
        match self {
            Stability::A => (0.22 * x * ry, 0.20 * x),
            Stability::B => (0.16 * x * ry, 0.12 * x),
            Stability::C => (0.11 * x * ry, 0.08 * x * (1.0 + 0.0002 * x).powf(-0.5)),
            Stability::D => (0.08 * x * ry, 0.06 * x * (1.0 + 0.0015 * x).powf(-0.5)),
            Stability::E => (0.06 * x * ry, 0.03 * x / (1.0 + 0.0003 * x)),
            Stability::F => (0.04 * x * ry, 0.016 * x / (1.0 + 0.0003 * x)),
        }
    }
}

/// A continuous release.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Release {
    /// Where.
    pub source: GeoPoint,
    /// Release rate, kg/s.
    pub rate_kg_s: f64,
    /// Release height above ground, m.
    pub height_m: f64,
    /// Wind speed at release height, m/s (clamped to ≥ 0.5 m/s: the model fails in calm).
    pub wind_speed: f64,
    /// Direction the wind blows FROM, degrees clockwise from north (meteorological).
    pub wind_from_deg: f64,
    /// Stability class.
    pub stability: Stability,
}

/// Metres east and north of `origin` (equirectangular; fine over a few km).
pub fn local_xy(origin: GeoPoint, p: GeoPoint) -> (f64, f64) {
    const R: f64 = 6_371_000.0;
    let east = (p.lon - origin.lon).to_radians() * R * origin.lat.to_radians().cos();
    let north = (p.lat - origin.lat).to_radians() * R;
    (east, north)
}

impl Release {
    /// Downwind and crosswind distance (m) of `p` from the source.
    pub fn plume_coords(&self, p: GeoPoint) -> (f64, f64) {
        let (e, n) = local_xy(self.source, p);
        // The wind blows TOWARDS from + 180°.
        let to = (self.wind_from_deg + 180.0).to_radians();
        let (de, dn) = (to.sin(), to.cos());
        let x = e * de + n * dn;
        let y = -e * dn + n * de;
        (x, y)
    }

    /// Steady-state ground-level concentration at `p` in mg/m³ (0 upwind).
    pub fn concentration_mg_m3(&self, p: GeoPoint) -> f64 {
        let (x, y) = self.plume_coords(p);
        if x <= 1.0 {
            return 0.0;
        }
        let u = self.wind_speed.max(0.5);
        let (sy, sz) = self.stability.sigmas(x);
        let q_mg_s = self.rate_kg_s * 1e6;
        q_mg_s / (std::f64::consts::PI * u * sy * sz)
            * (-y * y / (2.0 * sy * sy)).exp()
            * (-self.height_m * self.height_m / (2.0 * sz * sz)).exp()
    }

    /// Seconds after the release starts until the plume front reaches `p` (∞ upwind).
    pub fn arrival_s(&self, p: GeoPoint) -> f64 {
        let (x, _) = self.plume_coords(p);
        if x <= 0.0 {
            f64::INFINITY
        } else {
            x / self.wind_speed.max(0.5)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: GeoPoint = GeoPoint {
        lat: 40.60,
        lon: 122.15,
    };

    fn north_wind() -> Release {
        Release {
            source: SRC,
            rate_kg_s: 1.0,
            height_m: 2.0,
            wind_speed: 3.0,
            wind_from_deg: 0.0,
            stability: Stability::D,
        }
    }

    fn south_of(m: f64) -> GeoPoint {
        GeoPoint {
            lat: SRC.lat - m / 111_195.0,
            lon: SRC.lon,
        }
    }

    #[test]
    fn downwind_decreases_with_distance_and_upwind_is_zero() {
        let r = north_wind();
        let c: Vec<f64> = [100.0, 300.0, 1000.0, 3000.0]
            .iter()
            .map(|&d| r.concentration_mg_m3(south_of(d)))
            .collect();
        assert!(c.windows(2).all(|w| w[0] > w[1]), "{c:?}");
        assert_eq!(r.concentration_mg_m3(south_of(-500.0)), 0.0);
        assert!(r.arrival_s(south_of(-500.0)).is_infinite());
        assert!((r.arrival_s(south_of(300.0)) - 100.0).abs() < 1.0);
    }

    #[test]
    fn textbook_magnitude() {
        // Ground release 1 kg/s, D stability, u = 3 m/s, x = 1 km on the axis:
        // σy ≈ 76 m, σz ≈ 32 m → C ≈ 1e6 / (π·3·76·32) ≈ 43 mg/m³ (H = 0).
        let mut r = north_wind();
        r.height_m = 0.0;
        let c = r.concentration_mg_m3(south_of(1000.0));
        assert!((35.0..55.0).contains(&c), "{c}");
    }

    #[test]
    fn crosswind_falls_off_and_stable_air_is_worse() {
        let r = north_wind();
        let axis = r.concentration_mg_m3(south_of(500.0));
        let off = GeoPoint {
            lat: south_of(500.0).lat,
            lon: SRC.lon + 100.0 / (111_195.0 * SRC.lat.to_radians().cos()),
        };
        assert!(r.concentration_mg_m3(off) < axis * 0.5);
        let mut f = north_wind();
        f.stability = Stability::F;
        assert!(f.concentration_mg_m3(south_of(500.0)) > axis);
    }
}
