//! # Notifications: MQTT, webhook, WeCom and DingTalk group robots, upstream government platform
//!
//! The seam between parkguard's alarm path and the people of the park's linkage mechanism
//! (联动机制, DOMAIN.md §4). Everything here is independent of the alarm engine: the daemon
//! turns an engine event into a [`Notification`] (one alarm record, an idempotency key and
//! ready-made Chinese + English text), the outbox (`parkguard::linkage::outbox`) decides
//! *when* to send, and a [`Channel`] decides *how*:
//!
//! - [`config`]: one plain serde struct per channel type, closed enum [`ChannelConfig`]
//!   tagged by `type`; secrets only by reference (`*_env` / `*_file`), never inline.
//! - [`message`]: the pure codec: JSON envelope, Chinese/English text, robot markdown,
//!   times in Asia/Shanghai.
//! - [`crypto`]: HMAC-SHA256 signatures (webhook header, DingTalk signed URL) and SM4-CBC.
//! - [`upstream`]: the pluggable upstream wire format ([`upstream::UpstreamFormat`]).
//! - [`sink`]: the runtime channels; `deliver` POSTs one batch and classifies the outcome
//!   as delivered, retryable (timeout, connection, 5xx, 429, robot rate limits) or
//!   permanent (other 4xx, rejected signature, bad config, drill refused).
//!
//! A channel never retries by itself: the outbox owns retries and back-off, so a restart
//! resumes exactly where delivery stood. Drill notifications (`drill = Some(id)`) are
//! refused by every channel not configured with `drill = true` — the router refuses them
//! first; this is the second lock on the same door.

pub mod config;
pub mod crypto;
pub mod message;
pub mod sink;
pub mod upstream;

pub use config::{
    ChannelConfig, DingTalkConfig, MqttChannelConfig, UpstreamConfig, WeComConfig, WebhookConfig,
};
pub use sink::{Channel, ChannelEnv, Deliver, Delivered, DeliveryError};

use parkguard_rules::{PointKind, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// ISA-18.2 alarm priority as carried on a notification (ordered: `Low < … < Critical`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Low (about 80 % of annunciated alarms in a healthy system).
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical (life safety).
    Critical,
}

impl Priority {
    /// Chinese label.
    pub fn label_zh(self) -> &'static str {
        match self {
            Priority::Low => "低",
            Priority::Medium => "中",
            Priority::High => "高",
            Priority::Critical => "紧急",
        }
    }
    /// English label.
    pub fn label_en(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// Provincial four-colour warning grade (ordered: `Blue < Yellow < Orange < Red`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WarningGrade {
    /// 蓝色 (低).
    Blue,
    /// 黄色 (一般).
    Yellow,
    /// 橙色 (较大).
    Orange,
    /// 红色 (重大).
    Red,
}

impl WarningGrade {
    /// Chinese label, e.g. `红色预警(重大)`.
    pub fn label_zh(self) -> &'static str {
        match self {
            WarningGrade::Blue => "蓝色预警(低)",
            WarningGrade::Yellow => "黄色预警(一般)",
            WarningGrade::Orange => "橙色预警(较大)",
            WarningGrade::Red => "红色预警(重大)",
        }
    }
    /// English label, e.g. `red (major)`.
    pub fn label_en(self) -> &'static str {
        match self {
            WarningGrade::Blue => "blue (low)",
            WarningGrade::Yellow => "yellow (general)",
            WarningGrade::Orange => "orange (serious)",
            WarningGrade::Red => "red (major)",
        }
    }
}

/// One alarm or warning record to notify, independent of the engine's own types.
///
/// `event_id` is the journal's id of the event and the idempotency key receivers dedup on:
/// a notification may be delivered more than once (at least once), never with another id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Journal id of the event; idempotency key.
    pub event_id: u64,
    /// Id of the alarm (stable across its events: raise, ack, return, close).
    pub alarm_id: String,
    /// Drill id when the event comes from a drill; `None` for the real path.
    pub drill: Option<String>,
    /// Enterprise code.
    pub enterprise: String,
    /// Enterprise display name (Chinese), when known.
    #[serde(default)]
    pub enterprise_name: Option<String>,
    /// Area / hazard installation, when known (routing key).
    #[serde(default)]
    pub area: Option<String>,
    /// What the point measures (routing key).
    pub kind: PointKind,
    /// Tag (位号).
    pub tag: String,
    /// Point name (Chinese).
    pub point_name: String,
    /// Alarm condition, e.g. `HH`, `H`, `L`, `LL`, `level-1`, `level-2`, `stale`, `fault`.
    pub condition: String,
    /// Alarm priority.
    pub priority: Priority,
    /// Alarm state after this event, e.g. `unack`, `ack`, `rtn_unack`, `normal`, `closed`.
    pub state: String,
    /// Measured value at the event, if any.
    pub value: Option<f64>,
    /// Unit symbol of `value` and `limit`, e.g. `%LEL`, `ppm`, `MPa`.
    pub unit: String,
    /// The limit that was crossed, if any.
    pub limit: Option<f64>,
    /// Event time (UTC; rendered in Asia/Shanghai).
    pub time: Timestamp,
    /// Park warning grade, when the event carries one.
    pub grade: Option<WarningGrade>,
    /// Message text, Simplified Chinese.
    pub message_zh: String,
    /// Message text, English.
    pub message_en: String,
}
