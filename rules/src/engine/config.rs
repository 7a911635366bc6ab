//! Engine configuration: `[alarm]` ([`EngineConfig`]) and `[[vote_group]]`
//! ([`VoteGroupConfig`]) of the park config. Plain serde, validated by pure functions.

use crate::alarm::{Condition, Priority};
use crate::config_error::FieldError;
use crate::model::PointId;
use crate::table::PointTable;
use crate::warning::WarningRules;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// The `[alarm]` table: how the engine raises, re-raises and grades alarms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// A point is stale when no reading arrived for `stale_multiple × expected_interval`
    /// (its poll interval or publish period). Default 3.0; at least 1.5.
    pub stale_multiple: f64,
    /// Longest time an operator may shelve an alarm, seconds. Default 28800 (8 h, one shift).
    pub shelve_max_s: u64,
    /// An acknowledged alarm whose condition is still present is annunciated again after
    /// this many seconds; 0 disables re-alarm. Default 1800 (30 min).
    pub re_alarm_s: u64,
    /// Priority of each condition (`[alarm.priority]`).
    pub priority: PriorityMap,
    /// Park warning rules (`[alarm.warning]`).
    pub warning: WarningRules,
    /// Drill id stamped on every event. Never from the park config: a drill runner sets it
    /// on its own engine instance.
    #[serde(skip)]
    pub drill: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            stale_multiple: 3.0,
            shelve_max_s: 8 * 3600,
            re_alarm_s: 1800,
            priority: PriorityMap::default(),
            warning: WarningRules::default(),
            drill: None,
        }
    }
}

impl EngineConfig {
    /// Validate (pure). Field paths are relative to `[alarm]`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if !(self.stale_multiple.is_finite() && self.stale_multiple >= 1.5) {
            e.push(FieldError::new(
                "stale_multiple",
                "must be a number ≥ 1.5 (a reading may be a little late without being stale)",
            ));
        }
        if self.shelve_max_s == 0 {
            e.push(FieldError::new(
                "shelve_max_s",
                "must be > 0 seconds (shelving must be time-limited)",
            ));
        }
        if self.shelve_max_s > 7 * 24 * 3600 {
            e.push(FieldError::new(
                "shelve_max_s",
                "must be at most 604800 (7 days): take the alarm out of service instead",
            ));
        }
        for mut fe in self.warning.validate() {
            fe.field = format!("warning.{}", fe.field);
            e.push(fe);
        }
        e
    }

    /// `shelve_max_s` as a duration.
    pub fn shelve_max(&self) -> Duration {
        Duration::from_secs(self.shelve_max_s)
    }
}

/// `[alarm.priority]`: the priority of each kind of alarm. ISA-18.2 aims at ≈ 5 % high,
/// 15 % medium, 80 % low among annunciated alarms; review the KPI report and tune.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityMap {
    /// HH / LL (gas level-2). Default "high".
    pub level2: Priority,
    /// H / L (gas level-1, oxygen enrichment/deficiency). Default "medium".
    pub level1: Priority,
    /// Rate of change. Default "medium".
    pub rate_of_change: Priority,
    /// Vote group in level-2. Default "high".
    pub vote_level2: Priority,
    /// Vote group in level-1. Default "high".
    pub vote_level1: Priority,
    /// Device link down (root cause of its points' comm-lost/stale). Default "medium".
    pub device_comm_lost: Priority,
    /// Point comm-lost (a point without a device, or suppressed under its device). Default "low".
    pub comm_lost: Priority,
    /// Stale data. Default "low".
    pub stale: Priority,
    /// Device fault. Default "low".
    pub fault: Priority,
    /// Device exception reply. Default "low".
    pub device_exception: Priority,
    /// Out of range. Default "medium" (a gas detector over range may mean a large leak).
    pub out_of_range: Priority,
    /// Flatline. Default "low".
    pub flatline: Priority,
    /// Maintenance / calibration. Default "low".
    pub maintenance: Priority,
    /// Inhibited at the device. Default "low".
    pub inhibited: Priority,
    /// parkguard's own system alarms (spool cannot write or overflowed, InfluxDB writes
    /// failing): data may be lost. Default "high".
    pub system: Priority,
}

impl Default for PriorityMap {
    fn default() -> Self {
        Self {
            level2: Priority::High,
            level1: Priority::Medium,
            rate_of_change: Priority::Medium,
            vote_level2: Priority::High,
            vote_level1: Priority::High,
            device_comm_lost: Priority::Medium,
            comm_lost: Priority::Low,
            stale: Priority::Low,
            fault: Priority::Low,
            device_exception: Priority::Low,
            out_of_range: Priority::Medium,
            flatline: Priority::Low,
            maintenance: Priority::Low,
            inhibited: Priority::Low,
            system: Priority::High,
        }
    }
}

impl PriorityMap {
    /// The priority of a condition.
    pub fn of(&self, c: Condition) -> Priority {
        match c {
            Condition::Hh | Condition::Ll => self.level2,
            Condition::H | Condition::L => self.level1,
            Condition::RateOfChange => self.rate_of_change,
            Condition::VoteLevel2 => self.vote_level2,
            Condition::VoteLevel1 => self.vote_level1,
            Condition::DeviceCommLost => self.device_comm_lost,
            Condition::CommLost => self.comm_lost,
            Condition::Stale => self.stale,
            Condition::Fault => self.fault,
            Condition::DeviceException => self.device_exception,
            Condition::OutOfRange => self.out_of_range,
            Condition::Flatline => self.flatline,
            Condition::Maintenance => self.maintenance,
            Condition::Inhibited => self.inhibited,
            Condition::SpoolAppendFailing
            | Condition::SpoolOverflow
            | Condition::InfluxWriteFailing => self.system,
        }
    }
}

/// How a voting member with bad quality (anything but good, or stale) votes. There is no
/// default: the config must say, so that a dead detector never silently changes the vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BadQualityVote {
    /// Counts as voting for the alarm at both levels (fail-safe: 2-of-3 becomes 1-of-2).
    Trip,
    /// Counts as not voting (2-of-3 becomes 2-of-2; an alarm may need every healthy member).
    Ignore,
}

/// One `[[vote_group]]`: detectors of one process unit that raise a group alarm when `k`
/// of them agree (GB 16808-2025 coincidence, "two detectors agree").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteGroupConfig {
    /// Group id, unique in the park; alarms are `group/<id>:VOTE_L1` and `group/<id>:VOTE_L2`.
    pub id: String,
    /// Human name. Default: the id.
    #[serde(default)]
    pub name: Option<String>,
    /// Member tags (at least 2, one enterprise).
    pub members: Vec<String>,
    /// Members that must agree (1 ≤ k ≤ number of members). GB 16808-2025: 2.
    pub k: u32,
    /// How a member with bad quality votes: "trip" or "ignore" (required).
    pub bad_quality: BadQualityVote,
}

/// A validated vote group.
#[derive(Clone, Debug, PartialEq)]
pub struct VoteGroup {
    /// Group id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Members.
    pub members: Vec<PointId>,
    /// Votes needed.
    pub k: u32,
    /// Bad-quality policy.
    pub bad_quality: BadQualityVote,
    /// Enterprise of the members.
    pub enterprise: String,
    /// Area of the first member.
    pub area: Option<String>,
}

impl VoteGroupConfig {
    /// Validate against the point table (pure). Field paths are relative to the
    /// `[[vote_group]]` entry.
    pub fn validate(&self, table: &PointTable) -> Result<VoteGroup, Vec<FieldError>> {
        let mut e = Vec::new();
        if self.id.is_empty() || self.id.contains([':', '/']) || self.id.trim() != self.id {
            e.push(FieldError::new(
                "id",
                "must be non-empty, without ':' or '/' and without surrounding spaces",
            ));
        }
        let n = self.members.len() as u32;
        if n < 2 {
            e.push(FieldError::new(
                "members",
                "a vote group needs at least 2 members",
            ));
        }
        if self.k == 0 || self.k > n {
            e.push(FieldError::new(
                "k",
                format!("must be between 1 and the number of members ({n})"),
            ));
        }
        let mut ids = Vec::with_capacity(self.members.len());
        let mut seen = HashSet::new();
        let mut enterprise: Option<&str> = None;
        for (i, tag) in self.members.iter().enumerate() {
            let field = format!("members.{i}");
            if !seen.insert(tag.as_str()) {
                e.push(FieldError::new(field, format!("`{tag}` is listed twice")));
                continue;
            }
            match table.by_tag(tag) {
                None => e.push(FieldError::new(field, format!("no point with tag `{tag}`"))),
                Some(p) => {
                    match enterprise {
                        None => enterprise = Some(&p.enterprise),
                        Some(en) if en != p.enterprise => e.push(FieldError::new(
                            field,
                            format!(
                                "`{tag}` belongs to enterprise `{}`, the group to `{en}`: a group votes within one unit",
                                p.enterprise
                            ),
                        )),
                        Some(_) => {}
                    }
                    ids.push(p.id);
                }
            }
        }
        if !e.is_empty() {
            return Err(e);
        }
        let first = table
            .get(ids[0])
            .expect("members were just resolved from this table");
        Ok(VoteGroup {
            id: self.id.clone(),
            name: self.name.clone().unwrap_or_else(|| self.id.clone()),
            members: ids,
            k: self.k,
            bad_quality: self.bad_quality,
            enterprise: first.enterprise.clone(),
            area: first.area.clone(),
        })
    }
}

/// Validate every `[[vote_group]]`; errors come with the index of their entry. Also rejects
/// duplicate ids.
pub fn validate_vote_groups(
    groups: &[VoteGroupConfig],
    table: &PointTable,
) -> Result<Vec<VoteGroup>, Vec<(usize, FieldError)>> {
    let mut out = Vec::with_capacity(groups.len());
    let mut errs = Vec::new();
    let mut ids = HashSet::new();
    for (i, g) in groups.iter().enumerate() {
        if !ids.insert(g.id.as_str()) {
            errs.push((
                i,
                FieldError::new("id", format!("duplicate group id `{}`", g.id)),
            ));
        }
        match g.validate(table) {
            Ok(v) => out.push(v),
            Err(es) => errs.extend(es.into_iter().map(|fe| (i, fe))),
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_parse_from_an_empty_table() {
        let d = EngineConfig::default();
        assert!(d.validate().is_empty());
        let parsed: EngineConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, d);
        assert_eq!(
            (d.stale_multiple, d.shelve_max_s, d.re_alarm_s),
            (3.0, 28_800, 1800)
        );
        assert_eq!(d.priority.of(Condition::Hh), Priority::High);
        assert_eq!(d.priority.of(Condition::CommLost), Priority::Low);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = serde_json::from_str::<EngineConfig>(r#"{"stale_multipel": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e =
            serde_json::from_str::<EngineConfig>(r#"{"priority": {"hh": "high"}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        // The drill id cannot come from the park config.
        assert!(serde_json::from_str::<EngineConfig>(r#"{"drill": "x"}"#).is_err());
        let bad = EngineConfig {
            stale_multiple: 1.0,
            shelve_max_s: 0,
            warning: WarningRules {
                red_areas: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let fields: Vec<_> = bad.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["stale_multiple", "shelve_max_s", "warning.red_areas"]
        );
        let cfg: EngineConfig =
            serde_json::from_str(r#"{"priority": {"comm_lost": "medium"}, "re_alarm_s": 0}"#)
                .unwrap();
        assert_eq!(cfg.priority.of(Condition::CommLost), Priority::Medium);
        assert_eq!(
            cfg.priority.level2,
            Priority::High,
            "other fields keep defaults"
        );
    }

    #[test]
    fn vote_group_needs_an_explicit_bad_quality_policy() {
        let e = serde_json::from_str::<VoteGroupConfig>(
            r#"{"id": "g", "members": ["a", "b"], "k": 2}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bad_quality"), "{e}");
        let g: VoteGroupConfig = serde_json::from_str(
            r#"{"id": "g", "members": ["a", "b"], "k": 2, "bad_quality": "trip"}"#,
        )
        .unwrap();
        assert_eq!(g.bad_quality, BadQualityVote::Trip);
    }

    #[test]
    fn json_schema_is_generated() {
        let s = serde_json::to_string(&schemars::schema_for!(EngineConfig)).unwrap();
        assert!(s.contains("stale_multiple") && s.contains("park_red_enterprises"));
        assert!(!s.contains("\"drill\""));
        let s = serde_json::to_string(&schemars::schema_for!(VoteGroupConfig)).unwrap();
        assert!(s.contains("bad_quality"));
    }
}
