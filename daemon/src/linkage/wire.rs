//! Wiring the linkage into the real path: engine events → notifications → routes → the
//! outbox rows, inserted in the same SQLite transaction that journals the events (so an
//! event is never notified without being journalled, and never journalled without its
//! notifications queued), then one delivery worker per channel.
//!
//! What is notified: every alarm event that is *annunciated* (it entered
//! `unacknowledged`: a new alarm, a worse level, a re-alarm) and every warning-grade change
//! to a grade (not back to none). Returns to normal and operator actions are journalled but
//! not pushed. Drill events carry their drill id and the router gives them only to channels
//! marked `drill = true`. Escalation timers (T1, T2, …) are validated in the config but not
//! yet ticked by the daemon: that is still to do.

use super::outbox::{self, WorkerConfig};
use super::route::Router;
use parkguard_drivers::notify::{self, Channel, Notification, WarningGrade};
use parkguard_rules::alarm::{AlarmEvent, EventKind, Priority};
use parkguard_rules::engine::Event;
use parkguard_rules::warning::{Grade, WarningEvent, WarningScope};
use parkguard_rules::{PointKind, PointTable, Timestamp};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// Everything the journal thread needs to queue notifications.
pub struct Linkage {
    /// The router (drill gate included).
    pub router: Router,
    /// Worker wake-ups by channel name.
    pub wake: HashMap<String, Arc<Notify>>,
    /// The points, for names and kinds.
    pub table: Arc<PointTable>,
    /// Enterprise names by code.
    pub enterprise_names: HashMap<String, String>,
}

/// Build the channels (reading their secrets), start one outbox worker per channel on the
/// journal database, and return what the journal thread needs.
pub fn start(
    cfg: &crate::config::ParkConfig,
    journal_path: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<(Linkage, Vec<JoinHandle<()>>)> {
    // The outbox tables live in the journal database.
    let conn = outbox::open(&journal_path).map_err(|e| {
        anyhow::anyhow!("cannot open the outbox in {}: {e}", journal_path.display())
    })?;
    drop(conn);
    let mut flags = std::collections::BTreeMap::new();
    let mut wake = HashMap::new();
    let mut tasks = Vec::new();
    for c in &cfg.channels {
        let channel = Channel::build(c).map_err(|es| {
            anyhow::anyhow!(
                "channel `{}`: {}",
                c.name(),
                es.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        flags.insert(c.name().to_string(), c.drill());
        let notify = Arc::new(Notify::new());
        wake.insert(c.name().to_string(), Arc::clone(&notify));
        let (path, worker_cfg, cancel): (PathBuf, WorkerConfig, _) =
            (journal_path.clone(), cfg.outbox.clone(), shutdown.clone());
        let channel = Arc::new(channel);
        tasks.push(tokio::spawn(async move {
            // A database error ends a worker; restart it after a pause (rows stay pending).
            loop {
                let r = outbox::run_worker(
                    path.clone(),
                    Arc::clone(&channel),
                    worker_cfg.clone(),
                    Arc::clone(&notify),
                    cancel.clone(),
                )
                .await;
                if cancel.is_cancelled() {
                    break;
                }
                if let Err(e) = r {
                    error!(channel = %channel.name(), error = %e, "outbox worker failed; restarting");
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }));
    }
    let enterprise_names = cfg
        .enterprises
        .iter()
        .map(|e| (e.code.clone(), e.name.clone()))
        .collect();
    Ok((
        Linkage {
            router: Router::new(cfg.routes.clone(), flags),
            wake,
            table: Arc::clone(&cfg.table),
            enterprise_names,
        },
        tasks,
    ))
}

impl Linkage {
    /// Queue the notifications of `events` inside the journal's transaction. Returns the
    /// channels to wake after the commit.
    pub fn enqueue(
        &self,
        tx: &rusqlite::Transaction<'_>,
        events: &[Event],
        now: Timestamp,
    ) -> rusqlite::Result<Vec<String>> {
        let mut woken = Vec::new();
        for ev in events {
            let Some(n) = self.notification_of(ev) else {
                continue;
            };
            let routed = self.router.route(&n);
            for refused in &routed.refused {
                warn!(event = n.event_id, refused = ?refused, "notification refused by the router");
            }
            for a in routed.channels {
                match outbox::enqueue(tx, &a, &n, now) {
                    Ok(_) => woken.push(a.channel().to_string()),
                    Err(e) => {
                        return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
                            std::io::Error::other(e.to_string()),
                        )));
                    }
                }
            }
        }
        woken.sort();
        woken.dedup();
        Ok(woken)
    }

    /// Wake the workers of these channels (after the commit).
    pub fn wake(&self, channels: &[String]) {
        for c in channels {
            if let Some(n) = self.wake.get(c) {
                n.notify_one();
            }
        }
    }

    /// The notification of an engine event, if it is one that is pushed.
    pub fn notification_of(&self, ev: &Event) -> Option<Notification> {
        match ev {
            Event::Alarm(a) if a.annunciate => Some(self.alarm_notification(a)),
            Event::Alarm(_) => None,
            Event::Warning(w) if w.to != Grade::None => Some(self.warning_notification(w)),
            Event::Warning(_) => None,
        }
    }

    fn alarm_notification(&self, a: &AlarmEvent) -> Notification {
        let point = self.table.by_tag(&a.source);
        let name = point
            .map(|p| p.name.clone())
            .unwrap_or_else(|| a.source.clone());
        let unit = a.unit.map(|u| u.display().to_string()).unwrap_or_default();
        let value = a
            .value
            .map(|v| format!("{v:.2} {unit}"))
            .unwrap_or_default();
        let limit = a
            .limit
            .map(|v| format!("{v:.2} {unit}"))
            .unwrap_or_default();
        let ent = self
            .enterprise_names
            .get(&a.enterprise)
            .cloned()
            .unwrap_or_else(|| a.enterprise.clone());
        let drill_zh = if a.drill.is_some() {
            "【演练】"
        } else {
            ""
        };
        let drill_en = if a.drill.is_some() { "[DRILL] " } else { "" };
        let realarm = a.kind == EventKind::Realarm;
        Notification {
            event_id: a.id,
            alarm_id: a.alarm.clone(),
            drill: a.drill.clone(),
            enterprise: a.enterprise.clone(),
            enterprise_name: Some(ent.clone()),
            area: a.area.clone(),
            kind: point.map(|p| p.kind).unwrap_or(PointKind::Other),
            tag: a.source.clone(),
            point_name: name.clone(),
            condition: a.condition.suffix().to_string(),
            priority: match a.priority {
                Priority::High => notify::Priority::High,
                Priority::Medium => notify::Priority::Medium,
                Priority::Low => notify::Priority::Low,
            },
            state: format!("{:?}", a.to).to_lowercase(),
            value: a.value,
            unit,
            limit: a.limit,
            time: a.time,
            grade: None,
            message_zh: format!(
                "{drill_zh}{ent} {name}（{}）{}{}：当前值 {value}，限值 {limit}",
                a.source,
                a.condition.label_zh(),
                if realarm { "（重复报警）" } else { "" }
            ),
            message_en: format!(
                "{drill_en}{} {} ({}) {}{}: value {value}, limit {limit}",
                a.enterprise,
                a.source,
                name,
                a.condition.suffix(),
                if realarm { " (re-alarm)" } else { "" }
            ),
        }
    }

    fn warning_notification(&self, w: &WarningEvent) -> Notification {
        let (code, name) = match &w.scope {
            WarningScope::Park => ("PARK".to_string(), "园区 / park".to_string()),
            WarningScope::Enterprise { code } => (
                code.clone(),
                self.enterprise_names
                    .get(code)
                    .cloned()
                    .unwrap_or_else(|| code.clone()),
            ),
        };
        let grade = match w.to {
            Grade::Blue => WarningGrade::Blue,
            Grade::Yellow => WarningGrade::Yellow,
            Grade::Orange => WarningGrade::Orange,
            Grade::Red | Grade::None => WarningGrade::Red,
        };
        let drill_zh = if w.drill.is_some() {
            "【演练】"
        } else {
            ""
        };
        let drill_en = if w.drill.is_some() { "[DRILL] " } else { "" };
        Notification {
            event_id: w.id,
            alarm_id: format!("warning/{code}"),
            drill: w.drill.clone(),
            enterprise: code.clone(),
            enterprise_name: Some(name.clone()),
            area: None,
            kind: PointKind::Other,
            tag: format!("warning/{code}"),
            point_name: name.clone(),
            condition: "WARNING".into(),
            priority: if grade >= WarningGrade::Orange {
                notify::Priority::Critical
            } else {
                notify::Priority::High
            },
            state: format!("{:?}", w.to).to_lowercase(),
            value: None,
            unit: String::new(),
            limit: None,
            time: w.time,
            grade: Some(grade),
            message_zh: format!("{drill_zh}{name} {}：{}", grade.label_zh(), w.reason),
            message_en: format!(
                "{drill_en}{code} warning {}: {}",
                grade.label_en(),
                w.reason
            ),
        }
    }
}
