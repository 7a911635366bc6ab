//! Routing: which channels a notification goes to. Pure.
//!
//! `[[route]]` tables match on enterprise, area, kind, priority and warning grade (every
//! criterion left empty matches anything); the channels of every matching route receive
//! the notification, each once. Drill events go only to channels marked `drill = true`:
//! the router drops production channels from a drill event's routes, and [`Router::admit`]
//! — the only way to obtain an [`Admitted`], which the outbox requires — refuses a drill
//! event for a production channel with [`RouteError::DrillToProduction`].

use parkguard_drivers::notify::{Notification, Priority, WarningGrade};
use parkguard_rules::{FieldError, PointKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[[route]]`: a rule sending matching notifications to channels.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name for logs and the console. Default: `route-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Enterprise codes this route applies to. Default: empty = every enterprise.
    #[serde(default)]
    pub enterprises: Vec<String>,
    /// Areas / hazard installations. Default: empty = every area (also points without one).
    #[serde(default)]
    pub areas: Vec<String>,
    /// Point kinds (`combustible`, `toxic`, `oxygen`, `pressure`, …). Default: empty = all.
    #[serde(default)]
    pub kinds: Vec<PointKind>,
    /// Lowest alarm priority routed (`low` < `medium` < `high` < `critical`). Default: all.
    #[serde(default)]
    pub min_priority: Option<Priority>,
    /// Lowest warning grade routed (`blue` < `yellow` < `orange` < `red`); when set,
    /// alarm notifications (no grade) do not match, the end of a warning does. Default:
    /// not checked.
    #[serde(default)]
    pub min_grade: Option<WarningGrade>,
    /// Channel names (`[[channel]]` `name`) to deliver to. Required, non-empty.
    pub channels: Vec<String>,
    /// Escalation policy (`[[escalation]]` `name`) started for unacknowledged alarms
    /// matching this route. Default: none.
    #[serde(default)]
    pub escalation: Option<String>,
}

/// A validated route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Name.
    pub name: String,
    enterprises: Vec<String>,
    areas: Vec<String>,
    kinds: Vec<PointKind>,
    min_priority: Option<Priority>,
    min_grade: Option<WarningGrade>,
    /// Channels.
    pub channels: Vec<String>,
    /// Escalation policy name.
    pub escalation: Option<String>,
}

impl RouteConfig {
    /// Validate against the known channels (name → drill flag) and escalation policy names.
    /// `index` names the route in defaults.
    pub fn validate(
        &self,
        index: usize,
        channels: &BTreeMap<String, bool>,
        escalations: &[String],
    ) -> Result<Route, Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.channels.is_empty() {
            errs.push(FieldError::new("channels", "list at least one channel"));
        }
        for (i, c) in self.channels.iter().enumerate() {
            if !channels.contains_key(c) {
                errs.push(FieldError::new(
                    format!("channels[{i}]"),
                    format!("unknown channel `{c}`: define it in a [[channel]] table"),
                ));
            }
        }
        if let Some(e) = &self.escalation
            && !escalations.contains(e)
        {
            errs.push(FieldError::new(
                "escalation",
                format!("unknown escalation policy `{e}`: define it in an [[escalation]] table"),
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Route {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("route-{index}")),
            enterprises: self.enterprises.clone(),
            areas: self.areas.clone(),
            kinds: self.kinds.clone(),
            min_priority: self.min_priority,
            min_grade: self.min_grade,
            channels: self.channels.clone(),
            escalation: self.escalation.clone(),
        })
    }
}

impl Route {
    /// Whether the route applies to `n`.
    pub fn matches(&self, n: &Notification) -> bool {
        (self.enterprises.is_empty() || self.enterprises.contains(&n.enterprise))
            && (self.areas.is_empty() || n.area.as_ref().is_some_and(|a| self.areas.contains(a)))
            && (self.kinds.is_empty() || self.kinds.contains(&n.kind))
            && self.min_priority.is_none_or(|p| n.priority >= p)
            && self.min_grade.is_none_or(|g| {
                // The end of a warning (no grade) reaches every route that takes warnings.
                n.grade.map_or(n.condition == "WARNING", |have| have >= g)
            })
    }
}

/// Why a notification may not go to a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A drill event offered to a production channel.
    #[error(
        "drill event {event_id} (drill `{drill}`) refused by production channel `{channel}`: drill events go only to channels with `drill = true`"
    )]
    DrillToProduction {
        /// Event.
        event_id: u64,
        /// Drill id.
        drill: String,
        /// Channel.
        channel: String,
    },
    /// A real (non-drill) event offered to a drill channel: drill channels carry drill
    /// traffic only, so that drill organisers never mistake a real alarm for part of the
    /// exercise (real alarms go to the production channels).
    #[error(
        "real event {event_id} not sent to drill channel `{channel}`: drill channels receive drill events only"
    )]
    RealToDrill {
        /// Event.
        event_id: u64,
        /// Channel.
        channel: String,
    },
    /// No such channel.
    #[error("unknown channel `{0}`")]
    UnknownChannel(String),
}

/// Permission to queue one event for one channel; only [`Router::admit`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    event_id: u64,
    channel: String,
}

impl Admitted {
    /// The event.
    pub fn event_id(&self) -> u64 {
        self.event_id
    }
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

/// The routing table.
#[derive(Clone, Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// channel name → drill flag
    channels: BTreeMap<String, bool>,
}

impl Router {
    /// A router over validated routes and the channel table (name → `drill`).
    pub fn new(routes: Vec<Route>, channels: BTreeMap<String, bool>) -> Self {
        Self { routes, channels }
    }

    /// The single gate to the outbox: refuses drill events for production channels.
    pub fn admit(&self, n: &Notification, channel: &str) -> Result<Admitted, RouteError> {
        let drill_channel = *self
            .channels
            .get(channel)
            .ok_or_else(|| RouteError::UnknownChannel(channel.to_string()))?;
        if let Some(d) = &n.drill
            && !drill_channel
        {
            return Err(RouteError::DrillToProduction {
                event_id: n.event_id,
                drill: d.clone(),
                channel: channel.to_string(),
            });
        }
        if n.drill.is_none() && drill_channel {
            return Err(RouteError::RealToDrill {
                event_id: n.event_id,
                channel: channel.to_string(),
            });
        }
        Ok(Admitted {
            event_id: n.event_id,
            channel: channel.to_string(),
        })
    }

    /// Every channel `n` goes to (each once, in route order) and the escalation policies of
    /// the matching routes. For a drill event, production channels are left out (and
    /// logged): drills never reach the real path.
    pub fn route(&self, n: &Notification) -> Routed {
        let mut out = Routed::default();
        for r in self.routes.iter().filter(|r| r.matches(n)) {
            for c in &r.channels {
                if out.channels.iter().any(|a| a.channel == *c) {
                    continue;
                }
                match self.admit(n, c) {
                    Ok(a) => out.channels.push(a),
                    Err(e) => {
                        tracing::debug!(route = %r.name, channel = %c, error = %e, "channel skipped");
                        out.refused.push(e);
                    }
                }
            }
            if let Some(e) = &r.escalation
                && !out.escalations.contains(e)
            {
                out.escalations.push(e.clone());
            }
        }
        out
    }
}

/// Result of [`Router::route`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Routed {
    /// Channels to queue the event for.
    pub channels: Vec<Admitted>,
    /// Escalation policies to start (if the event raises an unacknowledged alarm).
    pub escalations: Vec<String>,
    /// Channels of matching routes that refused the event (drill on production).
    pub refused: Vec<RouteError>,
}
