//! # MQTT: subscribe to the park's broker, publish alarms, embedded broker for the demo
//!
//! Same shape as every driver (STYLE.md §3):
//! - [`config`]: `[[mqtt_broker]]` and `[[mqtt_subscription]]`, validated purely into
//!   [`config::MqttBroker`] and [`config::Subscription`].
//! - [`decode`] and [`sparkplug`]: pure payload mappers (JSON, plain number, Sparkplug B)
//!   and the tag → point / unit conversion step, with table-driven tests.
//! - [`source`]: the subscriber task (persistent session, manual acks after hand-over,
//!   reconnect with back-off, re-subscribe when the broker lost the session), over a
//!   `conn::Connection`: rumqttc's MQTT 3.1.1 or MQTT 5 event loop (`protocol`).
//! - [`stats`]: counters and the per-topic problem list for the API.
//! - [`publish`]: QoS 1 JSON publisher that reports delivery on PUBACK (3.1.1 or 5; an
//!   MQTT 5 PUBACK with a failure reason code is a failed delivery).
//! - `broker` (feature `embedded-broker`): rumqttd in-process for `parkguard demo`.
//! - [`sim`]: publishes plausible readings for the demo and `parkguard simulate`.
//!
//! TLS uses rustls with the *ring* provider ([`client`]); nothing here builds aws-lc.

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod client;
pub mod config;
pub(crate) mod conn;
pub mod decode;
pub mod publish;
pub mod sim;
pub mod source;
pub mod sparkplug;
pub mod stats;

pub use config::{MqttBroker, MqttBrokerConfig, MqttSubscriptionConfig, Subscription};
pub use publish::MqttPublisher;
pub use source::{DurableBatch, Handover, spawn_subscriber, spawn_subscriber_with};
pub use stats::{MqttStats, MqttStatsSnapshot};

/// Errors of the MQTT driver (start-up and publishing; the subscriber retries the rest).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MqttError {
    /// Password could not be read.
    #[error("mqtt credentials: {0}")]
    Credentials(String),
    /// TLS files or settings unusable.
    #[error("mqtt tls: {0}")]
    Tls(String),
    /// No subscription names this broker.
    #[error("no [[mqtt_subscription]] uses broker `{0}`")]
    NoSubscriptions(String),
    /// A publish was not acknowledged by the broker (retry it).
    #[error("mqtt publish not delivered: {0}")]
    NotDelivered(String),
    /// A body could not be encoded as JSON.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The embedded broker could not start.
    #[error("embedded mqtt broker: {0}")]
    Broker(String),
}
