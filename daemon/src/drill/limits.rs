//! The limits a drill judges against: the ones in force, not the configuration file's.
//!
//! Limits changed through the API are versioned in `<data.dir>/limits.sqlite`
//! ([`crate::api::limits::LimitsStore`]) and applied to the running engine. A drill builds
//! its own engine from the configured point table, so it must apply the same versions on
//! top, or a drill run after an engineer lowered a limit would practise the old one.
//!
//! Source: **the store, read when the drill starts** (not the running engine's snapshot,
//! which does not carry limits). A change counts once it is stored: the API applies it to
//! the engine and then stores it, rolling the engine back if storing fails, so a drill
//! never runs a change that is later undone. Which stored version is in force is decided
//! by [`plan_restore`], the same rule the daemon applies at start: the latest stored
//! version, unless the configuration file's limits changed since (then the file's). In a
//! running daemon this is exactly what its engine runs; for the offline `parkguard drill`
//! it is what a daemon started now would run.

use crate::api::limits::{LimitsStore, LimitsStoreError, StoredVersion, plan_restore};
use parkguard_rules::{AlarmLimits, PointId, PointTable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// One point whose drill ran limits other than the configured version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitsUsed {
    /// Point tag.
    pub tag: String,
    /// The limits version the drill ran (as `GET /api/v1/limits/{tag}/versions` numbers it).
    pub version: u32,
    /// Who made that version (`config` when the file's limits won over stored ones).
    pub changed_by: String,
    /// When it was made, ms since the epoch.
    pub changed_ms: i64,
    /// Why.
    pub reason: String,
}

/// The limits a drill applies on top of the configured table, and what its report records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitsInForce {
    /// (point, limits) to apply to the drill's engine before its first reading.
    pub apply: Vec<(PointId, AlarmLimits)>,
    /// Every point with a version other than 1, by tag; every other point runs its
    /// configured limits.
    pub used: Vec<LimitsUsed>,
}

/// What the stored versions mean for a drill on `table` (pure).
pub fn in_force(
    table: &PointTable,
    stored: &HashMap<String, Vec<StoredVersion>>,
    now_ms: i64,
) -> LimitsInForce {
    let plan = plan_restore(table, stored, now_ms);
    let mut used: Vec<LimitsUsed> = plan
        .versions
        .values()
        .filter_map(|v| v.last())
        .filter(|v| v.version > 1)
        .map(|v| LimitsUsed {
            tag: v.tag.clone(),
            version: v.version,
            changed_by: v.changed_by.clone(),
            changed_ms: v.changed_ms,
            reason: v.reason.clone(),
        })
        .collect();
    used.sort_by(|a, b| a.tag.cmp(&b.tag));
    LimitsInForce {
        apply: plan.apply,
        used,
    }
}

/// Read the store and decide ([`in_force`]). Blocking (SQLite).
pub fn from_store(
    store: &LimitsStore,
    table: &PointTable,
    now_ms: i64,
) -> Result<LimitsInForce, LimitsStoreError> {
    Ok(in_force(table, &store.all()?, now_ms))
}

/// [`from_store`] on `<data_dir>/limits.sqlite` if it exists (offline drills); the
/// configured limits otherwise. Blocking (SQLite).
pub fn from_data_dir(
    data_dir: &Path,
    table: &PointTable,
    now_ms: i64,
) -> Result<LimitsInForce, LimitsStoreError> {
    let path = data_dir.join("limits.sqlite");
    if !path.exists() {
        return Ok(LimitsInForce::default());
    }
    from_store(&LimitsStore::open(&path)?, table, now_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::api::backend::{LimitsDto, LimitsVersion};
    use crate::api::limits::Origin;

    fn row(tag: &str, version: u32, limits: LimitsDto, origin: Origin) -> StoredVersion {
        StoredVersion {
            version: LimitsVersion {
                tag: tag.into(),
                version,
                limits,
                changed_by: if origin == Origin::Config {
                    "config".into()
                } else {
                    "engineer".into()
                },
                changed_ms: 1_000 * i64::from(version),
                reason: format!("v{version}"),
            },
            origin,
        }
    }

    #[test]
    fn latest_stored_version_applies_and_is_named() {
        let park = crate::api::testing::sample_park().expect("sample park");
        let t = &park.table;
        let p = t.by_tag("E01-GT-102").expect("point");
        let configured = LimitsDto::from(&p.limits);
        let lowered = LimitsDto {
            h: Some(configured.h.expect("gas level-1") / 2.0),
            ..configured.clone()
        };
        let mut stored = HashMap::new();
        stored.insert(
            p.tag.clone(),
            vec![
                row(&p.tag, 1, configured.clone(), Origin::Config),
                row(&p.tag, 2, lowered.clone(), Origin::Api),
            ],
        );
        let f = in_force(t, &stored, 9_000);
        assert_eq!(f.apply.len(), 1);
        assert_eq!(f.apply[0].0, p.id);
        assert_eq!(f.apply[0].1.h, lowered.h);
        assert_eq!(f.used.len(), 1);
        assert_eq!(
            (f.used[0].tag.as_str(), f.used[0].version),
            (p.tag.as_str(), 2)
        );
        assert_eq!(f.used[0].changed_by, "engineer");

        // Restored to the configured limits as version 3: nothing to apply, version named.
        stored
            .get_mut(&p.tag)
            .expect("tag")
            .push(row(&p.tag, 3, configured.clone(), Origin::Api));
        let f = in_force(t, &stored, 9_000);
        assert!(f.apply.is_empty(), "{f:?}");
        assert_eq!(f.used[0].version, 3);

        // Nothing stored: the configured limits, nothing recorded.
        assert_eq!(
            in_force(t, &HashMap::new(), 9_000),
            LimitsInForce::default()
        );
    }
}
