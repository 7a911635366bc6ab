//! Park warnings (预警): blue / yellow / orange / red per enterprise and for the park.
//!
//! Provincial practice grades park warnings in four colours (DOMAIN.md §4). The exact
//! triggers are the park's to set, so every threshold here is configuration
//! ([`WarningRules`], the `[alarm.warning]` table) with defaults that follow the issue's
//! example: one level-1 gas alarm → blue; a level-2, or two level-1 in one process unit →
//! yellow; a level-2 vote or a toxic level-2 → orange; alarms spreading to several units
//! of an enterprise, or several enterprises at orange → red.
//!
//! Only gas points count (combustible, toxic, oxygen), with their condition present
//! (acknowledged or not, shelved or not: a warning reflects the hazard, not the operator's
//! screen); alarms out of service do not count. The engine keeps the counts incrementally
//! and calls [`WarningRules::enterprise_grade`] and [`WarningRules::park_grade`], which are
//! pure.

use crate::config_error::FieldError;
use crate::time::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Warning grade, ordered by severity.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    /// No warning.
    #[default]
    None,
    /// Blue (低).
    Blue,
    /// Yellow (一般).
    Yellow,
    /// Orange (较大).
    Orange,
    /// Red (重大).
    Red,
}

impl Grade {
    /// Chinese label.
    pub fn label_zh(self) -> &'static str {
        match self {
            Grade::None => "无预警",
            Grade::Blue => "蓝色预警",
            Grade::Yellow => "黄色预警",
            Grade::Orange => "橙色预警",
            Grade::Red => "红色预警",
        }
    }
}

/// Thresholds of the warning grades (`[alarm.warning]`). A threshold of 0 disables its rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WarningRules {
    /// Level-1 (or worse) gas alarms in one enterprise that give **blue**. Default 1.
    pub blue_level1: u32,
    /// Level-2 gas alarms in one enterprise that give **yellow**. Default 1.
    pub yellow_level2: u32,
    /// Level-1 (or worse) gas alarms in one area (process unit) that give **yellow**; an
    /// area with that many, or with any level-2, counts as an *alarming area*. Default 2.
    pub yellow_level1_in_area: u32,
    /// Level-2 gas alarms in one area that give **orange**. Default 2.
    pub orange_level2_in_area: u32,
    /// Whether a level-2 vote-group alarm gives **orange**. Default true.
    pub orange_vote_level2: bool,
    /// Whether a level-2 alarm of a toxic gas point gives **orange**. Default true.
    pub orange_toxic_level2: bool,
    /// Alarming areas in one enterprise that give **red** (spreading). Default 2.
    pub red_areas: u32,
    /// Enterprises at `park_red_min_grade` or worse that make the **park red**. Default 2.
    pub park_red_enterprises: u32,
    /// Grade an enterprise must reach to count for `park_red_enterprises`. Default "orange".
    pub park_red_min_grade: Grade,
}

impl Default for WarningRules {
    fn default() -> Self {
        Self {
            blue_level1: 1,
            yellow_level2: 1,
            yellow_level1_in_area: 2,
            orange_level2_in_area: 2,
            orange_vote_level2: true,
            orange_toxic_level2: true,
            red_areas: 2,
            park_red_enterprises: 2,
            park_red_min_grade: Grade::Orange,
        }
    }
}

/// Alarm counts of one area, as the engine keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AreaCounts {
    /// Gas points of the area in level-1 or level-2.
    pub level1: u32,
    /// Gas points of the area in level-2.
    pub level2: u32,
}

/// Alarm counts of one enterprise (without its areas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnterpriseCounts {
    /// Gas points in level-1 or level-2.
    pub level1: u32,
    /// Gas points in level-2.
    pub level2: u32,
    /// Toxic gas points in level-2.
    pub toxic_level2: u32,
    /// Vote groups in level-2.
    pub vote_level2: u32,
}

impl WarningRules {
    /// Validate (pure); field paths are relative to `[alarm.warning]`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.red_areas == 1 {
            e.push(FieldError::new(
                "red_areas",
                "red means spreading: use 2 or more areas (0 disables)",
            ));
        }
        if self.park_red_min_grade == Grade::None {
            e.push(FieldError::new(
                "park_red_min_grade",
                "use blue, yellow, orange or red",
            ));
        }
        e
    }

    fn area_alarming(&self, a: AreaCounts) -> bool {
        a.level2 >= 1 || (self.yellow_level1_in_area > 0 && a.level1 >= self.yellow_level1_in_area)
    }

    /// Grade of one enterprise and the rule that gave it.
    pub fn enterprise_grade(
        &self,
        c: EnterpriseCounts,
        areas: impl Iterator<Item = AreaCounts> + Clone,
    ) -> (Grade, &'static str) {
        let at_least = |n: u32, t: u32| t > 0 && n >= t;
        if self.red_areas > 0 {
            let alarming = areas.clone().filter(|a| self.area_alarming(*a)).count() as u32;
            if alarming >= self.red_areas {
                return (Grade::Red, "gas alarms spreading over several areas");
            }
        }
        if self.orange_vote_level2 && c.vote_level2 > 0 {
            return (Grade::Orange, "level-2 confirmed by voting detectors");
        }
        if self.orange_toxic_level2 && c.toxic_level2 > 0 {
            return (Grade::Orange, "toxic gas level-2");
        }
        if self.orange_level2_in_area > 0
            && areas
                .clone()
                .any(|a| a.level2 >= self.orange_level2_in_area)
        {
            return (Grade::Orange, "several level-2 alarms in one area");
        }
        if at_least(c.level2, self.yellow_level2) {
            return (Grade::Yellow, "gas level-2 alarm");
        }
        if self.yellow_level1_in_area > 0
            && areas
                .clone()
                .any(|a| a.level1 >= self.yellow_level1_in_area)
        {
            return (Grade::Yellow, "several level-1 alarms in one area");
        }
        if at_least(c.level1, self.blue_level1) {
            return (Grade::Blue, "gas level-1 alarm");
        }
        (Grade::None, "no gas alarm")
    }

    /// Grade of the park from the grades of its enterprises.
    pub fn park_grade(&self, grades: impl Iterator<Item = Grade>) -> (Grade, &'static str) {
        let mut max = Grade::None;
        let mut serious = 0u32;
        for g in grades {
            max = max.max(g);
            if g >= self.park_red_min_grade && g > Grade::None {
                serious += 1;
            }
        }
        if self.park_red_enterprises > 0 && serious >= self.park_red_enterprises {
            return (Grade::Red, "several enterprises affected");
        }
        (max, "highest enterprise grade")
    }
}

/// What a warning grade belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum WarningScope {
    /// The whole park.
    Park,
    /// One enterprise.
    Enterprise {
        /// Enterprise code.
        code: String,
    },
}

/// A change of a warning grade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WarningEvent {
    /// Unique id, from the same sequence as alarm events.
    pub id: u64,
    /// Park or enterprise.
    pub scope: WarningScope,
    /// Grade before.
    pub from: Grade,
    /// Grade after.
    pub to: Grade,
    /// Engine time of the change.
    pub time: Timestamp,
    /// The rule that gave `to` (English, for the record).
    pub reason: String,
    /// Drill id, as on alarm events.
    pub drill: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grade(c: EnterpriseCounts, areas: &[AreaCounts]) -> Grade {
        WarningRules::default()
            .enterprise_grade(c, areas.iter().copied())
            .0
    }

    #[test]
    fn default_rules_table() {
        let a = |l1, l2| AreaCounts {
            level1: l1,
            level2: l2,
        };
        let c = |l1, l2, t, v| EnterpriseCounts {
            level1: l1,
            level2: l2,
            toxic_level2: t,
            vote_level2: v,
        };
        // (counts, areas, grade)
        let table: &[(EnterpriseCounts, Vec<AreaCounts>, Grade)] = &[
            (c(0, 0, 0, 0), vec![a(0, 0)], Grade::None),
            (c(1, 0, 0, 0), vec![a(1, 0)], Grade::Blue),
            (c(2, 0, 0, 0), vec![a(1, 0), a(1, 0)], Grade::Blue),
            (c(2, 0, 0, 0), vec![a(2, 0)], Grade::Yellow),
            (c(1, 1, 0, 0), vec![a(1, 1)], Grade::Yellow),
            (c(1, 1, 1, 0), vec![a(1, 1)], Grade::Orange),
            (c(2, 2, 0, 1), vec![a(2, 2)], Grade::Orange),
            (c(2, 2, 0, 0), vec![a(2, 2)], Grade::Orange),
            (c(2, 2, 0, 0), vec![a(1, 1), a(1, 1)], Grade::Red),
            (c(4, 0, 0, 0), vec![a(2, 0), a(2, 0)], Grade::Red),
        ];
        for (counts, areas, want) in table {
            assert_eq!(grade(*counts, areas), *want, "{counts:?} {areas:?}");
        }
    }

    #[test]
    fn park_red_when_spreading_over_enterprises() {
        let r = WarningRules::default();
        assert_eq!(
            r.park_grade([Grade::Orange, Grade::Blue].into_iter()).0,
            Grade::Orange
        );
        assert_eq!(
            r.park_grade([Grade::Orange, Grade::Orange].into_iter()).0,
            Grade::Red
        );
        assert_eq!(r.park_grade(std::iter::empty()).0, Grade::None);
    }

    #[test]
    fn zero_disables_and_validate() {
        let r = WarningRules {
            blue_level1: 0,
            ..Default::default()
        };
        let g = r
            .enterprise_grade(
                EnterpriseCounts {
                    level1: 1,
                    ..Default::default()
                },
                [AreaCounts {
                    level1: 1,
                    level2: 0,
                }]
                .into_iter(),
            )
            .0;
        assert_eq!(g, Grade::None);
        let bad = WarningRules {
            red_areas: 1,
            park_red_min_grade: Grade::None,
            ..Default::default()
        };
        let fields: Vec<_> = bad.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["red_areas", "park_red_min_grade"]);
        assert!(WarningRules::default().validate().is_empty());
    }
}
