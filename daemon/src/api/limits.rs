//! Validation of limits changed through the API: the same rules a config file must pass
//! (order of limits, inside the measuring range, deadband and delays in bounds), reported
//! as field errors (`limits.h`, …).

use super::backend::LimitsDto;
use parkguard_rules::{AlarmLimits, FieldError, Point};
use std::time::Duration;

/// Longest on/off-delay accepted, seconds (1 h).
pub const MAX_DELAY_S: f64 = 3600.0;
/// Longest on-delay for gas points, seconds: detectors must answer within 30 s
/// (GB/T 50493), parkguard must not add minutes on top.
pub const MAX_GAS_ON_DELAY_S: f64 = 30.0;

/// Validate `dto` for `point` into runtime limits.
pub fn validate_limits(point: &Point, dto: &LimitsDto) -> Result<AlarmLimits, Vec<FieldError>> {
    let mut errs = Vec::new();
    let (lo, hi) = (point.range_lo, point.range_hi);
    let named = [("hh", dto.hh), ("h", dto.h), ("l", dto.l), ("ll", dto.ll)];
    for (name, v) in named {
        if let Some(v) = v {
            if !v.is_finite() {
                errs.push(FieldError::new(
                    format!("limits.{name}"),
                    "must be a finite number",
                ));
            } else if v < lo || v > hi {
                errs.push(FieldError::new(
                    format!("limits.{name}"),
                    format!(
                        "{v} lies outside the measuring range [{lo}, {hi}] {}",
                        point.unit.symbol()
                    ),
                ));
            }
        }
    }
    let order = [("hh", dto.hh), ("h", dto.h), ("l", dto.l), ("ll", dto.ll)];
    let present: Vec<(&str, f64)> = order
        .iter()
        .filter_map(|(n, v)| v.map(|v| (*n, v)))
        .collect();
    for w in present.windows(2) {
        let ((a, av), (b, bv)) = (w[0], w[1]);
        if av < bv {
            errs.push(FieldError::new(
                format!("limits.{b}"),
                format!("{b} = {bv} must not exceed {a} = {av}"),
            ));
        }
    }
    if let (Some(h), Some(l)) = (dto.h.or(dto.hh), dto.l.or(dto.ll))
        && h <= l
    {
        errs.push(FieldError::new(
            "limits.l",
            "low limits must lie below high limits",
        ));
    }
    if point.kind.is_gas() && dto.h.is_none() && dto.l.is_none() {
        errs.push(FieldError::new(
            "limits.h",
            "a gas point needs its level-1 alarm (`h`, or `l` for oxygen deficiency)",
        ));
    }
    let span = point.span();
    if !dto.deadband.is_finite() || dto.deadband < 0.0 || dto.deadband > span / 2.0 {
        errs.push(FieldError::new(
            "limits.deadband",
            format!("must be between 0 and half the span ({})", span / 2.0),
        ));
    }
    let max_on = if point.kind.is_gas() {
        MAX_GAS_ON_DELAY_S
    } else {
        MAX_DELAY_S
    };
    for (name, v, max) in [
        ("on_delay_s", dto.on_delay_s, max_on),
        ("off_delay_s", dto.off_delay_s, MAX_DELAY_S),
    ] {
        if !v.is_finite() || !(0.0..=max).contains(&v) {
            errs.push(FieldError::new(
                format!("limits.{name}"),
                format!("must be between 0 and {max} s"),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(AlarmLimits {
        hh: dto.hh,
        h: dto.h,
        l: dto.l,
        ll: dto.ll,
        deadband: dto.deadband,
        on_delay: Duration::from_secs_f64(dto.on_delay_s),
        off_delay: Duration::from_secs_f64(dto.off_delay_s),
        // The API edits thresholds, deadband and delays; rate-of-change and flatline
        // settings come from the config file and are kept as they are.
        rate_of_change: point.limits.rate_of_change.clone(),
        flatline: point.limits.flatline.clone(),
    })
}
