//! Validation of limits changed through the API: the same rules a config file must pass
//! (order of limits, inside the measuring range, deadband and delays in bounds), reported
//! as field errors (`limits.h`, …); class changes (every point of an enterprise, a kind, a
//! gas, an area) validated all-or-nothing; and the store that keeps every version in
//! `<data.dir>/limits.sqlite` so that changes survive a restart.
//!
//! At start ([`LimitsAtStart::load`], called by the topology before the engine task is
//! spawned) the latest stored version of each point is applied to the engine, so the very
//! first reading after a restart is judged against the limits the engineer stored, never
//! against the file's for a moment. The configuration file wins where it changed since
//! (recorded as a new version).

use super::backend::{LimitsDto, LimitsVersion};
use parkguard_rules::{AlarmLimits, FieldError, Gas, Point, PointId, PointKind, PointTable};
use rusqlite::Connection;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
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

/// Build runtime limits from wire limits already validated once (a stored version): the
/// same as [`validate_limits`], falling back to the configured limits if they no longer
/// pass (the caller validated them before storing, so this only guards a changed config).
pub fn runtime_limits(point: &Point, dto: &LimitsDto) -> AlarmLimits {
    validate_limits(point, dto).unwrap_or_else(|_| point.limits.clone())
}

// ------------------------------------------------------------------ class changes

/// Which points a class change covers. Every criterion given must match; at least one is
/// required, so that a forgotten field never rewrites the whole park.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSelector {
    /// Enterprise code, e.g. `E01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise: Option<String>,
    /// Point kind, e.g. `combustible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PointKind>,
    /// Gas, e.g. `ch4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gas: Option<Gas>,
    /// Area (as configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<String>,
}

impl ClassSelector {
    /// Whether `p` belongs to the class.
    pub fn matches(&self, p: &Point) -> bool {
        self.enterprise.as_ref().is_none_or(|e| *e == p.enterprise)
            && self.kind.is_none_or(|k| k == p.kind)
            && self.gas.is_none_or(|g| Some(g) == p.gas)
            && self
                .area
                .as_ref()
                .is_none_or(|a| Some(a) == p.area.as_ref())
    }

    fn is_empty(&self) -> bool {
        self.enterprise.is_none()
            && self.kind.is_none()
            && self.gas.is_none()
            && self.area.is_none()
    }
}

/// `Some(v)` for a key that is present (`null` → `Some(None)`), `None` when absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// What a class change sets; absent keys keep each point's current value, `null` removes a
/// threshold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// High-high / level-2 (`null` removes it).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub hh: Option<Option<f64>>,
    /// High / level-1 (`null` removes it).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub h: Option<Option<f64>>,
    /// Low (`null` removes it).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub l: Option<Option<f64>>,
    /// Low-low (`null` removes it).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ll: Option<Option<f64>>,
    /// Deadband, in the points' unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
    /// On-delay, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delay_s: Option<f64>,
    /// Off-delay, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_delay_s: Option<f64>,
}

impl LimitsPatch {
    fn sets_threshold(&self) -> bool {
        self.hh.is_some() || self.h.is_some() || self.l.is_some() || self.ll.is_some()
    }

    fn is_empty(&self) -> bool {
        !self.sets_threshold()
            && self.deadband.is_none()
            && self.on_delay_s.is_none()
            && self.off_delay_s.is_none()
    }

    /// `current` with this patch applied.
    pub fn apply(&self, current: &LimitsDto) -> LimitsDto {
        LimitsDto {
            hh: self.hh.unwrap_or(current.hh),
            h: self.h.unwrap_or(current.h),
            l: self.l.unwrap_or(current.l),
            ll: self.ll.unwrap_or(current.ll),
            deadband: self.deadband.unwrap_or(current.deadband),
            on_delay_s: self.on_delay_s.unwrap_or(current.on_delay_s),
            off_delay_s: self.off_delay_s.unwrap_or(current.off_delay_s),
        }
    }
}

/// One point of a validated class change.
#[derive(Clone, Debug)]
pub struct ClassChange {
    /// The point's tag.
    pub tag: String,
    /// Its limits now (wire form).
    pub before: LimitsDto,
    /// Its limits after the change (wire form).
    pub after: LimitsDto,
    /// The same, for the engine.
    pub limits: AlarmLimits,
}

/// Validate a class change against the point table and each point's current limits, the
/// same way a single point's change is validated. All or nothing: any point failing fails
/// the whole change, each error named `points.TAG.limits.KEY`. Points whose limits would
/// not change are left out unless `include_unchanged` (for previews); an empty result
/// means the class has these limits already.
pub fn validate_class(
    table: &PointTable,
    current: impl Fn(&Point) -> LimitsDto,
    selector: &ClassSelector,
    patch: &LimitsPatch,
    include_unchanged: bool,
) -> Result<Vec<ClassChange>, Vec<FieldError>> {
    let mut errs = Vec::new();
    if selector.is_empty() {
        errs.push(FieldError::new(
            "selector",
            "name at least one of enterprise, kind, gas, area (a class change never covers the whole park implicitly)",
        ));
    }
    if patch.is_empty() {
        errs.push(FieldError::new("set", "sets nothing"));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let points: Vec<&Point> = table
        .points()
        .iter()
        .filter(|p| selector.matches(p))
        .collect();
    if points.is_empty() {
        return Err(vec![FieldError::new("selector", "matches no point")]);
    }
    if patch.sets_threshold() {
        let mut units: Vec<&str> = points.iter().map(|p| p.unit.symbol()).collect();
        units.sort_unstable();
        units.dedup();
        if units.len() > 1 {
            return Err(vec![FieldError::new(
                "set",
                format!(
                    "the class mixes units ({}): one threshold cannot fit them all; narrow the selector (e.g. by gas)",
                    units.join(", ")
                ),
            )]);
        }
    }
    let mut out = Vec::new();
    for p in points {
        let before = current(p);
        let after = patch.apply(&before);
        match validate_limits(p, &after) {
            Ok(limits) => {
                if include_unchanged || after != before {
                    out.push(ClassChange {
                        tag: p.tag.clone(),
                        before,
                        after,
                        limits,
                    });
                }
            }
            Err(e) => errs.extend(
                e.into_iter()
                    .map(|f| FieldError::new(format!("points.{}.{}", p.tag, f.field), f.message)),
            ),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(out)
}

// ------------------------------------------------------------------ persistence

/// Errors of the limits store.
#[derive(Debug, thiserror::Error)]
pub enum LimitsStoreError {
    /// SQLite failed.
    #[error("limits store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The error.
        source: rusqlite::Error,
    },
    /// A stored row does not parse.
    #[error("limits store {path}: bad row {tag} v{version}: {message}")]
    BadRow {
        /// The database file.
        path: String,
        /// Tag.
        tag: String,
        /// Version.
        version: u32,
        /// What is wrong.
        message: String,
    },
}

/// Who made a stored version: the configuration file, or a person through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file (version 1, or the file changed between runs).
    Config,
    /// A change through the API (point or class).
    Api,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// Every version of every point's limits, in `<data.dir>/limits.sqlite`, so that changes
/// survive restarts and any earlier version can be restored. Append-only: a restore is a
/// new version. Each write is one transaction (a class change is all rows or none).
pub struct LimitsStore {
    path: String,
    conn: std::sync::Mutex<Connection>,
}

/// A stored version with where it came from.
#[derive(Clone, Debug)]
pub struct StoredVersion {
    /// The version.
    pub version: LimitsVersion,
    /// Who made it.
    pub origin: Origin,
}

impl LimitsStore {
    /// Open (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, LimitsStoreError> {
        let p = path.display().to_string();
        let err = |source| LimitsStoreError::Sqlite {
            path: p.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS limit_versions (
                 tag        TEXT    NOT NULL,
                 version    INTEGER NOT NULL,
                 limits     TEXT    NOT NULL,
                 changed_by TEXT    NOT NULL,
                 changed_ms INTEGER NOT NULL,
                 reason     TEXT    NOT NULL,
                 origin     TEXT    NOT NULL,
                 change_id  INTEGER,
                 PRIMARY KEY (tag, version)
             );",
        )
        .map_err(err)?;
        Ok(Self {
            path: p,
            conn: std::sync::Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every stored version, per tag, oldest first.
    pub fn all(&self) -> Result<HashMap<String, Vec<StoredVersion>>, LimitsStoreError> {
        let err = |source| LimitsStoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT tag, version, limits, changed_by, changed_ms, reason, origin
                 FROM limit_versions ORDER BY tag, version",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(err)?;
        let mut out: HashMap<String, Vec<StoredVersion>> = HashMap::new();
        for row in rows {
            let (tag, version, limits, changed_by, changed_ms, reason, origin) =
                row.map_err(err)?;
            let limits: LimitsDto =
                serde_json::from_str(&limits).map_err(|e| LimitsStoreError::BadRow {
                    path: self.path.clone(),
                    tag: tag.clone(),
                    version,
                    message: e.to_string(),
                })?;
            let origin = if origin == "config" {
                Origin::Config
            } else {
                Origin::Api
            };
            out.entry(tag.clone()).or_default().push(StoredVersion {
                version: LimitsVersion {
                    tag,
                    version,
                    limits,
                    changed_by,
                    changed_ms,
                    reason,
                },
                origin,
            });
        }
        Ok(out)
    }

    /// Append versions in one transaction; a row whose (tag, version) is stored already is
    /// kept as it is (appending the configured version 1 again is harmless). `change_id`
    /// ties the rows of one class change together.
    pub fn append(
        &self,
        rows: &[StoredVersion],
        change_id: Option<i64>,
    ) -> Result<(), LimitsStoreError> {
        let err = |source| LimitsStoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err)?;
        for r in rows {
            let v = &r.version;
            let limits = serde_json::to_string(&v.limits).unwrap_or_default();
            tx.execute(
                "INSERT OR IGNORE INTO limit_versions
                 (tag, version, limits, changed_by, changed_ms, reason, origin, change_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                rusqlite::params![
                    v.tag,
                    v.version,
                    limits,
                    v.changed_by,
                    v.changed_ms,
                    v.reason,
                    r.origin.as_str(),
                    change_id
                ],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

// ------------------------------------------------------------------ start-up

/// What the stored versions mean for the configured points at start (pure: no I/O).
#[derive(Debug, Default)]
pub struct RestorePlan {
    /// Version history per tag, oldest first, including `new_rows`; a tag that is absent
    /// has only its configured version 1.
    pub versions: HashMap<String, Vec<LimitsVersion>>,
    /// Versions to append to the store: the configuration file winning over stored
    /// limits (`changed_by = config`).
    pub new_rows: Vec<StoredVersion>,
    /// Limits the engine must run instead of the configured ones (stored API versions).
    pub apply: Vec<(PointId, AlarmLimits)>,
}

/// Decide, for each configured point with stored versions, which limits apply at start:
/// the latest stored version, if the configuration file still has the limits it had when
/// they were stored (the latest `config` version) and the stored limits still validate
/// against the point (its range may have changed); otherwise the file's limits, recorded as
/// a new version with the reason. Stored tags that are no longer configured are ignored.
pub fn plan_restore(
    table: &PointTable,
    stored: &HashMap<String, Vec<StoredVersion>>,
    now_ms: i64,
) -> RestorePlan {
    let mut plan = RestorePlan::default();
    for p in table.points() {
        let Some(latest) = stored.get(&p.tag).and_then(|s| s.last()) else {
            continue;
        };
        let stored = &stored[&p.tag];
        let configured = LimitsDto::from(&p.limits);
        let baseline = stored.iter().rev().find(|v| v.origin == Origin::Config);
        let mut versions: Vec<LimitsVersion> = stored.iter().map(|v| v.version.clone()).collect();
        let mut config_wins = |why: String| {
            let v = LimitsVersion {
                tag: p.tag.clone(),
                version: versions.last().map_or(1, |v| v.version + 1),
                limits: configured.clone(),
                changed_by: "config".into(),
                changed_ms: now_ms,
                reason: why,
            };
            versions.push(v.clone());
            plan.new_rows.push(StoredVersion {
                version: v,
                origin: Origin::Config,
            });
        };
        if baseline.is_none_or(|b| b.version.limits != configured) {
            if latest.version.limits != configured {
                tracing::warn!(tag = %p.tag, stored_version = latest.version.version, "the configuration file changed this point's limits since they were last changed through the API: the file's limits apply");
                config_wins("the configuration file changed; its limits apply".into());
            }
        } else if latest.version.limits != configured {
            // The API's rules, and the engine's own (the batch must not fail at start).
            let checked = validate_limits(p, &latest.version.limits).and_then(|l| {
                let problems = l.problems();
                if problems.is_empty() {
                    Ok(l)
                } else {
                    Err(problems)
                }
            });
            match checked {
                Ok(limits) => {
                    tracing::info!(tag = %p.tag, version = latest.version.version, by = %latest.version.changed_by, "stored limits apply");
                    plan.apply.push((p.id, limits));
                }
                Err(errs) => {
                    let why = errs
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(tag = %p.tag, version = latest.version.version, error = %why, "stored limits no longer valid for the configured point: the file's limits apply");
                    config_wins(format!(
                        "stored version {} no longer valid ({why}); the file's limits apply",
                        latest.version.version
                    ));
                }
            }
        }
        plan.versions.insert(p.tag.clone(), versions);
    }
    plan
}

/// The limits store as the daemon started with it: the store (for later changes) and
/// every point's version history. Made once, before the engine task starts; the engine
/// then runs the last version of each point (see [`Self::load`]).
pub struct LimitsAtStart {
    /// The store, `<data.dir>/limits.sqlite`.
    pub store: Arc<LimitsStore>,
    /// Version history per tag, oldest first (absent: only the configured version 1).
    pub versions: HashMap<String, Vec<LimitsVersion>>,
}

impl std::fmt::Debug for LimitsAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsAtStart")
            .field("store", &self.store.path)
            .field("points_with_versions", &self.versions.len())
            .finish()
    }
}

impl LimitsAtStart {
    /// Open the store at `path`, plan the start ([`plan_restore`]), record the versions
    /// where the configuration file wins, and return the limits the engine must run
    /// instead of the configured ones — to be applied BEFORE the engine evaluates its
    /// first reading (the topology does, on the engine it has not spawned yet). Blocking
    /// (SQLite).
    pub fn load(
        path: &Path,
        table: &PointTable,
        now_ms: i64,
    ) -> Result<(Self, Vec<(PointId, AlarmLimits)>), LimitsStoreError> {
        let store = LimitsStore::open(path)?;
        let plan = plan_restore(table, &store.all()?, now_ms);
        if !plan.new_rows.is_empty() {
            store.append(&plan.new_rows, None)?;
        }
        Ok((
            Self {
                store: Arc::new(store),
                versions: plan.versions,
            },
            plan.apply,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::sample_park;

    fn current(p: &Point) -> LimitsDto {
        LimitsDto::from(&p.limits)
    }

    #[test]
    fn patch_keeps_absent_keys_and_null_removes() {
        let p: LimitsPatch = serde_json::from_str(r#"{"h": 30, "hh": null}"#).expect("parses");
        assert_eq!(p.h, Some(Some(30.0)));
        assert_eq!(p.hh, Some(None));
        assert_eq!(p.l, None);
        let cur = LimitsDto {
            hh: Some(50.0),
            h: Some(25.0),
            l: None,
            ll: None,
            deadband: 2.0,
            on_delay_s: 2.0,
            off_delay_s: 0.0,
        };
        let after = p.apply(&cur);
        assert_eq!((after.hh, after.h, after.deadband), (None, Some(30.0), 2.0));
        assert!(serde_json::from_str::<LimitsPatch>(r#"{"hi": 3}"#).is_err());
    }

    #[test]
    fn class_change_is_all_or_nothing_and_named_per_point() {
        let park = sample_park().expect("sample park");
        let t = &park.table;
        let combustible = ClassSelector {
            kind: Some(PointKind::Combustible),
            ..Default::default()
        };
        // Both combustible points (E01-GT-102, E02-GT-301) get level-1 at 20 %LEL.
        let set = LimitsPatch {
            h: Some(Some(20.0)),
            ..Default::default()
        };
        let ok = validate_class(t, current, &combustible, &set, false).expect("valid");
        let tags: Vec<&str> = ok.iter().map(|c| c.tag.as_str()).collect();
        assert_eq!(tags, ["E01-GT-102", "E02-GT-301"]);
        assert!(ok.iter().all(|c| c.limits.h == Some(20.0)));
        // One enterprise only.
        let e2 = ClassSelector {
            enterprise: Some("E02".into()),
            ..combustible.clone()
        };
        let ok = validate_class(t, current, &e2, &set, false).expect("valid");
        assert_eq!(ok.len(), 1);
        // Above hh on every point: each named, nothing returned.
        let bad = LimitsPatch {
            h: Some(Some(99.0)),
            ..Default::default()
        };
        let errs = validate_class(t, current, &combustible, &bad, false).expect_err("invalid");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"points.E01-GT-102.limits.h"), "{fields:?}");
        assert!(fields.contains(&"points.E02-GT-301.limits.h"), "{fields:?}");
        // Mixed units with thresholds are refused; delays alone are fine.
        let e01 = ClassSelector {
            enterprise: Some("E01".into()),
            ..Default::default()
        };
        let errs = validate_class(t, current, &e01, &set, false).expect_err("mixed units");
        assert_eq!(errs[0].field, "set");
        let delay = LimitsPatch {
            on_delay_s: Some(5.0),
            ..Default::default()
        };
        assert!(validate_class(t, current, &e01, &delay, false).is_ok());
        // Gas on-delay bound applies per point.
        let slow = LimitsPatch {
            on_delay_s: Some(60.0),
            ..Default::default()
        };
        let errs = validate_class(t, current, &e01, &slow, false).expect_err("gas delay");
        assert!(
            errs.iter()
                .any(|e| e.field == "points.E01-GT-102.limits.on_delay_s"),
            "{errs:?}"
        );
        // An empty selector or patch never covers the park implicitly.
        let errs =
            validate_class(t, current, &ClassSelector::default(), &set, false).expect_err("empty");
        assert_eq!(errs[0].field, "selector");
        let errs = validate_class(t, current, &combustible, &LimitsPatch::default(), false)
            .expect_err("nothing set");
        assert_eq!(errs[0].field, "set");
        // Nothing to change: empty (PUT is idempotent), unless previewing.
        let same = LimitsPatch {
            on_delay_s: Some(
                t.by_tag("E02-GT-301")
                    .expect("point")
                    .limits
                    .on_delay
                    .as_secs_f64(),
            ),
            ..Default::default()
        };
        assert!(
            validate_class(t, current, &e2, &same, false)
                .expect("valid")
                .is_empty()
        );
        assert_eq!(
            validate_class(t, current, &e2, &same, true)
                .expect("valid")
                .len(),
            1
        );
    }

    #[test]
    fn store_round_trips_and_ignores_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("limits.sqlite");
        let v = |version: u32, h: f64, origin| StoredVersion {
            version: LimitsVersion {
                tag: "GT-1".into(),
                version,
                limits: LimitsDto {
                    hh: Some(50.0),
                    h: Some(h),
                    l: None,
                    ll: None,
                    deadband: 2.0,
                    on_delay_s: 2.0,
                    off_delay_s: 0.0,
                },
                changed_by: "zhang.gong".into(),
                changed_ms: 1_764_000_000_000,
                reason: "复核".into(),
            },
            origin,
        };
        {
            let s = LimitsStore::open(&path).expect("open");
            s.append(
                &[v(1, 25.0, Origin::Config), v(2, 30.0, Origin::Api)],
                Some(7),
            )
            .expect("append");
            // Version 1 again (as every first change sends it): kept as stored.
            s.append(&[v(1, 99.0, Origin::Config), v(3, 28.0, Origin::Api)], None)
                .expect("append");
        }
        let s = LimitsStore::open(&path).expect("reopen");
        let all = s.all().expect("all");
        let gt1 = &all["GT-1"];
        let hs: Vec<Option<f64>> = gt1.iter().map(|v| v.version.limits.h).collect();
        assert_eq!(hs, [Some(25.0), Some(30.0), Some(28.0)]);
        assert_eq!(gt1[0].origin, Origin::Config);
        assert_eq!(gt1[2].origin, Origin::Api);
        assert_eq!(gt1[1].version.reason, "复核");
    }

    #[test]
    fn start_plan_applies_stored_versions_unless_the_file_changed() {
        let park = sample_park().expect("sample park");
        let t = &park.table;
        let p = t.by_tag("E02-GT-301").expect("point");
        let configured = LimitsDto::from(&p.limits);
        let version = |v: u32, limits: LimitsDto, origin| StoredVersion {
            version: LimitsVersion {
                tag: p.tag.clone(),
                version: v,
                limits,
                changed_by: if origin == Origin::Config {
                    "config"
                } else {
                    "zhang.gong"
                }
                .into(),
                changed_ms: 1,
                reason: "r".into(),
            },
            origin,
        };
        let mut raised = configured.clone();
        raised.h = raised.h.map(|h| h + 5.0);
        let stored = |rows: Vec<StoredVersion>| HashMap::from([(p.tag.clone(), rows)]);

        // Nothing stored: the file's limits, no history, nothing to record.
        let plan = plan_restore(t, &HashMap::new(), 9);
        assert!(plan.apply.is_empty() && plan.new_rows.is_empty() && plan.versions.is_empty());

        // The file is as it was when version 2 was stored: version 2 applies.
        let rows = vec![
            version(1, configured.clone(), Origin::Config),
            version(2, raised.clone(), Origin::Api),
        ];
        let plan = plan_restore(t, &stored(rows.clone()), 9);
        assert_eq!(plan.apply.len(), 1);
        assert_eq!(plan.apply[0].0, p.id);
        assert_eq!(plan.apply[0].1.h, raised.h);
        assert_eq!(plan.apply[0].1.rate_of_change, p.limits.rate_of_change);
        assert!(plan.new_rows.is_empty());
        assert_eq!(plan.versions[&p.tag].len(), 2);

        // The file changed since: it wins, recorded as version 3; nothing applied.
        let mut older = configured.clone();
        older.deadband += 0.5;
        let rows = vec![
            version(1, older, Origin::Config),
            version(2, raised.clone(), Origin::Api),
        ];
        let plan = plan_restore(t, &stored(rows), 9);
        assert!(plan.apply.is_empty());
        assert_eq!(plan.new_rows.len(), 1);
        let v3 = &plan.new_rows[0];
        assert_eq!((v3.version.version, v3.origin), (3, Origin::Config));
        assert_eq!(v3.version.limits, configured);
        assert_eq!(v3.version.changed_ms, 9);
        assert_eq!(plan.versions[&p.tag].len(), 3);

        // The stored version no longer fits the point (outside its range): the file wins.
        let mut out_of_range = configured.clone();
        out_of_range.h = Some(p.range_hi + 1.0);
        out_of_range.hh = Some(p.range_hi + 2.0);
        let rows = vec![
            version(1, configured.clone(), Origin::Config),
            version(2, out_of_range, Origin::Api),
        ];
        let plan = plan_restore(t, &stored(rows), 9);
        assert!(plan.apply.is_empty());
        assert!(
            plan.new_rows[0].version.reason.contains("no longer valid"),
            "{plan:?}"
        );

        // Back at the configured limits through the API: nothing to apply or record.
        let rows = vec![
            version(1, configured.clone(), Origin::Config),
            version(2, raised, Origin::Api),
            version(3, configured, Origin::Api),
        ];
        let plan = plan_restore(t, &stored(rows), 9);
        assert!(plan.apply.is_empty() && plan.new_rows.is_empty());
    }
}
