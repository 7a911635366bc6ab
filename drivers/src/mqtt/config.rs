//! `[[mqtt_broker]]` and `[[mqtt_subscription]]` tables: plain serde, validated into the
//! runtime types [`MqttBroker`] and [`Subscription`] by pure `validate()` functions.

use parkguard_rules::{FieldError, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// One MQTT broker parkguard connects to (`[[mqtt_broker]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttBrokerConfig {
    /// Id other tables refer to (`broker = "..."`). Required, unique.
    pub id: String,
    /// Host name or IP address of the broker. Required.
    pub host: String,
    /// TCP port. Default 1883, or 8883 when `tls` is set.
    #[serde(default)]
    pub port: Option<u16>,
    /// TLS settings; absent = plain TCP. Default: absent.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// User name for the broker. Default: none (anonymous).
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the password (never put it in the file).
    /// Default: none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File whose content (trailing newline removed) is the password. Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// MQTT client id; must be stable across restarts for the persistent session to
    /// survive. Default `parkguard-<id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Keep-alive interval, seconds (5..=65535). Default 30.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Start a clean session on every connect. Default `false`: the broker keeps the
    /// session and queues QoS 1 messages while parkguard is away, so nothing is lost.
    #[serde(default)]
    pub clean_session: bool,
    /// Largest MQTT packet parkguard accepts from this broker, bytes. A larger packet
    /// breaks the connection (MQTT 3.1.1 cannot refuse a single message): set the broker's
    /// own limit (mosquitto `message_size_limit`) at or below this. Default 1048576 (1 MiB).
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
    /// Largest payload that is decoded, bytes; larger payloads are counted as `oversize`,
    /// acknowledged and dropped. Default 65536.
    #[serde(default = "default_max_payload_size")]
    pub max_payload_size: usize,
    /// MQTT protocol version: `"3.1.1"` or `"5"`. With `"5"` the broker reports a refused
    /// publish (ACL, quota) in its PUBACK instead of dropping it silently, and discards a
    /// message over `max_packet_size` for parkguard instead of breaking the connection.
    /// Default `"3.1.1"`.
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// MQTT 5 only: how long the broker keeps parkguard's session (subscriptions and queued
    /// QoS 1 messages) after the connection drops, seconds (1..=4294967295; 4294967295 =
    /// never expires). MQTT 5 ends a session when the connection closes unless this is
    /// above 0, so a persistent session needs it. Default 86400 (one day): a parkguard
    /// outage up to a day loses nothing, while the queue of a decommissioned client id does
    /// not grow on the broker for ever. Not allowed with `"3.1.1"` (there the broker's own
    /// setting decides, mosquitto `persistent_client_expiration`).
    #[serde(default)]
    pub session_expiry_s: Option<u32>,
    /// First reconnect delay after a failure, milliseconds; doubles per failure with ±20 %
    /// jitter. Default 500.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay, seconds. Default 30.
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: u64,
}

fn default_keep_alive_s() -> u64 {
    30
}
fn default_max_packet_size() -> usize {
    1 << 20
}
fn default_max_payload_size() -> usize {
    65_536
}
fn default_reconnect_initial_ms() -> u64 {
    500
}
fn default_reconnect_max_s() -> u64 {
    30
}
/// MQTT 5 session expiry when `session_expiry_s` is not set: one day.
pub const DEFAULT_SESSION_EXPIRY_S: u32 = 86_400;

/// TLS to the broker (`[mqtt_broker.tls]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    /// Default: the system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain (mutual TLS). Default: none. Needs
    /// `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file with the client's private key (PKCS#8, PKCS#1 or SEC1). Default: none.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// MQTT protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MqttProtocol {
    /// MQTT 3.1.1 (spoken by every broker in use).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: reason codes in acknowledgements, session expiry.
    #[serde(rename = "5")]
    V5,
}

/// Where the password comes from (resolved when connecting, never stored in config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password.
    None,
    /// From this environment variable.
    Env(String),
    /// From this file.
    File(PathBuf),
}

/// Validated TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttTls {
    /// CA file, or the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key files (mutual TLS).
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// A validated broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttBroker {
    /// Config id.
    pub id: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS, if any.
    pub tls: Option<MqttTls>,
    /// User name.
    pub username: Option<String>,
    /// Password source.
    pub password: PasswordSource,
    /// Client id.
    pub client_id: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Clean session.
    pub clean_session: bool,
    /// Transport packet limit, bytes.
    pub max_packet_size: usize,
    /// Decoded payload limit, bytes.
    pub max_payload_size: usize,
    /// Protocol version.
    pub protocol: MqttProtocol,
    /// MQTT 5 session expiry interval, seconds (0 with `clean_session`; unused for 3.1.1).
    pub session_expiry_s: u32,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl MqttBroker {
    /// A plain-TCP broker with defaults, for tests, the demo and the simulator.
    pub fn plain(id: &str, host: &str, port: u16) -> Self {
        Self {
            id: id.to_string(),
            host: host.to_string(),
            port,
            tls: None,
            username: None,
            password: PasswordSource::None,
            client_id: format!("parkguard-{id}"),
            keep_alive: Duration::from_secs(default_keep_alive_s()),
            clean_session: false,
            max_packet_size: default_max_packet_size(),
            max_payload_size: default_max_payload_size(),
            protocol: MqttProtocol::V311,
            session_expiry_s: DEFAULT_SESSION_EXPIRY_S,
            reconnect_initial: Duration::from_millis(default_reconnect_initial_ms()),
            reconnect_max: Duration::from_secs(default_reconnect_max_s()),
        }
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl MqttBrokerConfig {
    /// Validate into an [`MqttBroker`]. Pure: reads no file and no environment variable.
    pub fn validate(&self) -> Result<MqttBroker, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !valid_id(&self.id) {
            errs.push(FieldError::new(
                "id",
                "must be 1-64 characters of letters, digits, `-`, `_` or `.`",
            ));
        }
        if self.host.trim().is_empty() {
            errs.push(FieldError::new("host", "must not be empty"));
        }
        if self.port == Some(0) {
            errs.push(FieldError::new("port", "must be 1-65535"));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            errs.push(FieldError::new(
                "password_file",
                "set either `password_env` or `password_file`, not both",
            ));
        }
        if let Some(v) = &self.password_env
            && (v.is_empty() || v.contains('='))
        {
            errs.push(FieldError::new(
                "password_env",
                "must be the name of an environment variable",
            ));
        }
        if (self.password_env.is_some() || self.password_file.is_some()) && self.username.is_none()
        {
            errs.push(FieldError::new(
                "username",
                "a password is configured but no `username`",
            ));
        }
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("parkguard-{}", self.id));
        if client_id.is_empty() || client_id.len() > 256 {
            errs.push(FieldError::new("client_id", "must be 1-256 characters"));
        }
        if !(5..=65_535).contains(&self.keep_alive_s) {
            errs.push(FieldError::new(
                "keep_alive_s",
                "must be 5-65535 seconds (below 5 s rumqttc refuses it)",
            ));
        }
        if self.max_packet_size < 1024 || self.max_packet_size > 256 << 20 {
            errs.push(FieldError::new(
                "max_packet_size",
                "must be 1024 bytes to 256 MiB",
            ));
        }
        if self.max_payload_size == 0 || self.max_payload_size > self.max_packet_size {
            errs.push(FieldError::new(
                "max_payload_size",
                "must be 1 byte up to `max_packet_size`",
            ));
        }
        match (self.protocol, self.session_expiry_s) {
            (MqttProtocol::V311, Some(_)) => errs.push(FieldError::new(
                "session_expiry_s",
                "only applies to `protocol = \"5\"` (with 3.1.1 the broker decides how long a session lives)",
            )),
            (MqttProtocol::V5, Some(0)) if !self.clean_session => errs.push(FieldError::new(
                "session_expiry_s",
                "0 ends the session when the connection drops, so nothing is queued while parkguard is away: use at least 1 (default 86400)",
            )),
            _ => {}
        }
        if self.reconnect_initial_ms == 0 || self.reconnect_initial_ms > 60_000 {
            errs.push(FieldError::new(
                "reconnect_initial_ms",
                "must be 1-60000 milliseconds",
            ));
        }
        if self.reconnect_max_s == 0
            || self.reconnect_max_s > 3600
            || self.reconnect_max_s * 1000 < self.reconnect_initial_ms
        {
            errs.push(FieldError::new(
                "reconnect_max_s",
                "must be 1-3600 seconds and not below `reconnect_initial_ms`",
            ));
        }
        let tls = self.tls.as_ref().map(|t| {
            let client_auth = match (&t.client_cert_file, &t.client_key_file) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                (Some(_), None) => {
                    errs.push(FieldError::new(
                        "tls.client_key_file",
                        "`client_cert_file` needs `client_key_file`",
                    ));
                    None
                }
                (None, Some(_)) => {
                    errs.push(FieldError::new(
                        "tls.client_cert_file",
                        "`client_key_file` needs `client_cert_file`",
                    ));
                    None
                }
            };
            // The broker's certificate is verified against `host`.
            if rustls::pki_types::ServerName::try_from(self.host.clone()).is_err() {
                errs.push(FieldError::new(
                    "host",
                    "is not a valid dns name or ip address for tls",
                ));
            }
            MqttTls {
                ca_file: t.ca_file.clone(),
                client_auth,
            }
        });
        if !errs.is_empty() {
            return Err(errs);
        }
        let password = match (&self.password_env, &self.password_file) {
            (Some(v), _) => PasswordSource::Env(v.clone()),
            (None, Some(f)) => PasswordSource::File(f.clone()),
            (None, None) => PasswordSource::None,
        };
        Ok(MqttBroker {
            id: self.id.clone(),
            host: self.host.clone(),
            port: self.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
            tls,
            username: self.username.clone(),
            password,
            client_id,
            keep_alive: Duration::from_secs(self.keep_alive_s),
            clean_session: self.clean_session,
            max_packet_size: self.max_packet_size,
            max_payload_size: self.max_payload_size,
            protocol: self.protocol,
            session_expiry_s: if self.clean_session {
                0
            } else {
                self.session_expiry_s.unwrap_or(DEFAULT_SESSION_EXPIRY_S)
            },
            reconnect_initial: Duration::from_millis(self.reconnect_initial_ms),
            reconnect_max: Duration::from_secs(self.reconnect_max_s),
        })
    }
}

/// Payload format of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON object (or an array of them) with value, unit, time, quality fields.
    Json,
    /// The payload is a plain number (`12.5`), or `true`/`false`.
    Number,
    /// Eclipse Sparkplug B protobuf (NBIRTH/DBIRTH/NDATA/DDATA/NDEATH/DDEATH); the tag is
    /// the metric name.
    SparkplugB,
}

/// How a time field is to be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Seconds since the Unix epoch (fractions allowed).
    EpochS,
    /// Milliseconds since the Unix epoch.
    #[default]
    EpochMs,
    /// Nanoseconds since the Unix epoch.
    EpochNs,
    /// RFC 3339 text, e.g. `2026-11-26T08:00:00.5+08:00`.
    Rfc3339,
}

impl TimeFormat {
    /// Decimal digits from the epoch unit to nanoseconds (`None` for RFC 3339 text).
    pub fn scale(self) -> Option<u32> {
        match self {
            TimeFormat::EpochS => Some(9),
            TimeFormat::EpochMs => Some(6),
            TimeFormat::EpochNs => Some(0),
            TimeFormat::Rfc3339 => None,
        }
    }
}

/// One subscription (`[[mqtt_subscription]]`): a topic filter on a broker and how its
/// payloads map onto points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscriptionConfig {
    /// Id of the `[[mqtt_broker]]`. Required.
    pub broker: String,
    /// Topic filter, MQTT wildcards `+` and `#` allowed, e.g. `park/+/gds/+`. Required.
    pub topic: String,
    /// QoS of the subscription: 0 or 1. Default 1 (with a persistent session nothing is
    /// lost while parkguard is away).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Payload format. Required.
    pub format: PayloadFormat,
    /// Take the tag from this topic level (0-based: in `park/ent1/gds/AT-101`, 3 is
    /// `AT-101`). Default: none.
    #[serde(default)]
    pub tag_segment: Option<usize>,
    /// Take the tag from this JSON field path (dotted, numeric parts index arrays; inside
    /// `readings_field` items it is relative to the item). Default: none.
    #[serde(default)]
    pub tag_field: Option<String>,
    /// Every message of this subscription is for this one tag. Default: none.
    /// Exactly one of `tag_segment`, `tag_field`, `tag` is needed for `json` and
    /// `number` (`number` cannot use `tag_field`); `sparkplug_b` uses none.
    #[serde(default)]
    pub tag: Option<String>,
    /// Text put before the tag found (e.g. an enterprise code and `.`). Default: none.
    #[serde(default)]
    pub tag_prefix: Option<String>,
    /// JSON: path of the value field. Default `"value"`.
    #[serde(default)]
    pub value_field: Option<String>,
    /// JSON: path of the unit field (text such as `ppm`, `%LEL`, `mg/m3`). Default: none.
    #[serde(default)]
    pub unit_field: Option<String>,
    /// JSON: path of the source time field. Default: none (receive time is used).
    #[serde(default)]
    pub time_field: Option<String>,
    /// JSON: path of a quality field: numbers are parkguard quality codes (0 good) or OPC
    /// quality (192 good), text is `good`/`bad`/`fault`/`maintenance`/..., `true` good.
    /// Default: none (good).
    #[serde(default)]
    pub quality_field: Option<String>,
    /// JSON: path of an array of reading objects in one message; `"."` when the payload
    /// itself is an array. A top-level array is read as readings even without it.
    /// Default: none.
    #[serde(default)]
    pub readings_field: Option<String>,
    /// How `time_field` is read. Default `epoch_ms`; text values that are not numbers are
    /// always read as RFC 3339.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Unit of the values when the payload does not say. Default: the point's own unit.
    #[serde(default)]
    pub unit: Option<Unit>,
}

fn default_qos() -> u8 {
    1
}

/// Where the tag of a message comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagSource {
    /// Topic level (0-based).
    Segment(usize),
    /// JSON field path.
    Field(FieldPath),
    /// Fixed.
    Fixed(String),
    /// Sparkplug metric name.
    MetricName,
}

/// A parsed dotted field path: object keys and array indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath(pub Vec<PathPart>);

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPart {
    /// Object key.
    Key(String),
    /// Array index (or object key that looks like a number, tried as key first).
    Index(usize),
}

impl FieldPath {
    /// Parse `a.b.0.c`; `"."` is the empty path (the value itself). `None` when a part is
    /// empty.
    pub fn parse(s: &str) -> Option<FieldPath> {
        if s == "." {
            return Some(FieldPath(Vec::new()));
        }
        let mut parts = Vec::new();
        for p in s.split('.') {
            if p.is_empty() {
                return None;
            }
            parts.push(match p.parse::<usize>() {
                Ok(i) => PathPart::Index(i),
                Err(_) => PathPart::Key(p.to_string()),
            });
        }
        Some(FieldPath(parts))
    }
    /// Follow the path in `v`.
    pub fn get<'a>(&self, mut v: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        for part in &self.0 {
            v = match (part, v) {
                (PathPart::Key(k), serde_json::Value::Object(m)) => m.get(k)?,
                (PathPart::Index(i), serde_json::Value::Array(a)) => a.get(*i)?,
                (PathPart::Index(i), serde_json::Value::Object(m)) => m.get(&i.to_string())?,
                _ => return None,
            };
        }
        Some(v)
    }
}

/// JSON field mapping of a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonMapping {
    /// Value path.
    pub value: FieldPath,
    /// Unit path.
    pub unit: Option<FieldPath>,
    /// Time path.
    pub time: Option<FieldPath>,
    /// Quality path.
    pub quality: Option<FieldPath>,
    /// Path of an array of readings.
    pub readings: Option<FieldPath>,
}

/// A validated subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    /// Broker id.
    pub broker: String,
    /// Topic filter.
    pub filter: String,
    /// QoS 0 or 1.
    pub qos: u8,
    /// Format.
    pub format: PayloadFormat,
    /// Where the tag comes from.
    pub tag: TagSource,
    /// Prefix for the tag found.
    pub tag_prefix: String,
    /// JSON fields (format json).
    pub json: JsonMapping,
    /// Time format.
    pub time_format: TimeFormat,
    /// Unit of values when the payload does not say.
    pub unit: Option<Unit>,
}

/// Whether `filter` is a valid MQTT topic filter.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65_535 || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return false;
        }
        if l.contains('+') && *l != "+" {
            return false;
        }
    }
    true
}

/// Whether `topic` matches `filter` (MQTT 3.1.1 §4.7; `$`-topics never match a leading
/// wildcard).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl MqttSubscriptionConfig {
    /// Validate into a [`Subscription`]. `broker_ids` are the configured broker ids.
    pub fn validate(&self, broker_ids: &[&str]) -> Result<Subscription, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !broker_ids.contains(&self.broker.as_str()) {
            errs.push(FieldError::new(
                "broker",
                format!(
                    "no `[[mqtt_broker]]` with id `{}` (known: {})",
                    self.broker,
                    broker_ids.join(", ")
                ),
            ));
        }
        if !valid_filter(&self.topic) {
            errs.push(FieldError::new(
                "topic",
                "not a valid mqtt topic filter (`+` and `#` must fill a whole level, `#` only last)",
            ));
        }
        if self.qos > 1 {
            errs.push(FieldError::new(
                "qos",
                "must be 0 or 1 (qos 2 adds a round trip and nothing parkguard needs)",
            ));
        }
        let path = |field: &str, v: &Option<String>, errs: &mut Vec<FieldError>| {
            v.as_ref().and_then(|s| {
                let p = FieldPath::parse(s);
                if p.is_none() {
                    errs.push(FieldError::new(
                        field,
                        "not a field path (dotted keys such as `data.value`, or `.`)",
                    ));
                }
                p
            })
        };
        let value = path("value_field", &self.value_field, &mut errs)
            .unwrap_or_else(|| FieldPath(vec![PathPart::Key("value".into())]));
        let json = JsonMapping {
            value,
            unit: path("unit_field", &self.unit_field, &mut errs),
            time: path("time_field", &self.time_field, &mut errs),
            quality: path("quality_field", &self.quality_field, &mut errs),
            readings: path("readings_field", &self.readings_field, &mut errs),
        };
        let tag_field = path("tag_field", &self.tag_field, &mut errs);
        let set = [
            self.tag_segment.is_some(),
            self.tag_field.is_some(),
            self.tag.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let tag = match self.format {
            PayloadFormat::SparkplugB => {
                if set > 0 {
                    errs.push(FieldError::new(
                        "tag",
                        "sparkplug_b takes the tag from the metric name; remove `tag`, `tag_segment` and `tag_field`",
                    ));
                }
                let json_fields = [
                    ("value_field", &self.value_field),
                    ("unit_field", &self.unit_field),
                    ("time_field", &self.time_field),
                    ("quality_field", &self.quality_field),
                    ("readings_field", &self.readings_field),
                ];
                for (name, v) in json_fields {
                    if v.is_some() {
                        errs.push(FieldError::new(name, "only applies to `format = \"json\"`"));
                    }
                }
                TagSource::MetricName
            }
            PayloadFormat::Number | PayloadFormat::Json => {
                if self.format == PayloadFormat::Number {
                    let json_fields = [
                        ("tag_field", &self.tag_field),
                        ("value_field", &self.value_field),
                        ("unit_field", &self.unit_field),
                        ("time_field", &self.time_field),
                        ("quality_field", &self.quality_field),
                        ("readings_field", &self.readings_field),
                    ];
                    for (name, v) in json_fields {
                        if v.is_some() {
                            errs.push(FieldError::new(name, "only applies to `format = \"json\"`"));
                        }
                    }
                }
                if set != 1 {
                    errs.push(FieldError::new(
                        "tag",
                        "set exactly one of `tag_segment`, `tag_field` or `tag`",
                    ));
                }
                if let Some(seg) = self.tag_segment {
                    let levels: Vec<&str> = self.topic.split('/').collect();
                    let reaches = levels.get(seg).is_some_and(|l| *l != "#")
                        || levels.last() == Some(&"#") && seg + 1 >= levels.len();
                    if !reaches {
                        errs.push(FieldError::new(
                            "tag_segment",
                            format!(
                                "topic `{}` has no level {seg} (levels count from 0)",
                                self.topic
                            ),
                        ));
                    }
                }
                if let Some(t) = &self.tag
                    && t.trim().is_empty()
                {
                    errs.push(FieldError::new("tag", "must not be empty"));
                }
                match (&self.tag_segment, &tag_field, &self.tag) {
                    (Some(s), _, _) => TagSource::Segment(*s),
                    (None, Some(f), _) => TagSource::Field(f.clone()),
                    (None, None, Some(t)) => TagSource::Fixed(t.clone()),
                    _ => TagSource::Fixed(String::new()),
                }
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Subscription {
            broker: self.broker.clone(),
            filter: self.topic.clone(),
            qos: self.qos,
            format: self.format,
            tag,
            tag_prefix: self.tag_prefix.clone().unwrap_or_default(),
            json,
            time_format: self.time_format,
            unit: self.unit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(toml_text: &str) -> Result<MqttBroker, Vec<FieldError>> {
        let c: MqttBrokerConfig = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(toml_text).expect("json"),
        )
        .expect("parse");
        c.validate()
    }

    #[test]
    fn broker_defaults_and_errors() {
        let b = broker(r#"{"id":"park","host":"10.0.0.5"}"#).expect("valid");
        assert_eq!(b.port, 1883);
        assert_eq!(b.client_id, "parkguard-park");
        assert!(!b.clean_session);
        let b = broker(r#"{"id":"park","host":"mq.park.cn","tls":{}}"#).expect("valid");
        assert_eq!(b.port, 8883);
        assert!(b.tls.expect("tls").client_auth.is_none());
        let e = broker(
            r#"{"id":"p k","host":"","password_env":"X","keep_alive_s":1,"session_expiry_s":5,
                "tls":{"client_cert_file":"c.pem"}}"#,
        )
        .expect_err("invalid");
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "host",
                "username",
                "keep_alive_s",
                "session_expiry_s",
                "tls.client_key_file",
                "host"
            ]
        );
    }

    #[test]
    fn mqtt5_session_expiry() {
        let b = broker(r#"{"id":"park","host":"h","protocol":"5"}"#).expect("valid");
        assert_eq!(b.protocol, MqttProtocol::V5);
        assert_eq!(b.session_expiry_s, DEFAULT_SESSION_EXPIRY_S);
        let b = broker(r#"{"id":"park","host":"h","protocol":"5","session_expiry_s":600}"#)
            .expect("valid");
        assert_eq!(b.session_expiry_s, 600);
        let b = broker(r#"{"id":"park","host":"h","protocol":"5","clean_session":true}"#)
            .expect("valid");
        assert_eq!(
            b.session_expiry_s, 0,
            "a clean session ends with its connection"
        );
        let e = broker(r#"{"id":"park","host":"h","protocol":"5","session_expiry_s":0}"#)
            .expect_err("a persistent v5 session needs an expiry");
        assert_eq!(e[0].field, "session_expiry_s");
        let b = broker(r#"{"id":"park","host":"h"}"#).expect("valid");
        assert_eq!(b.protocol, MqttProtocol::V311);
    }

    #[test]
    fn unknown_fields_rejected() {
        let r: Result<MqttBrokerConfig, _> =
            serde_json::from_str(r#"{"id":"a","host":"h","password":"secret"}"#);
        assert!(r.is_err());
    }

    fn sub(json: &str) -> Result<Subscription, Vec<FieldError>> {
        let c: MqttSubscriptionConfig = serde_json::from_str(json).expect("parse");
        c.validate(&["park"])
    }

    #[test]
    fn subscription_validation() {
        let s = sub(r#"{"broker":"park","topic":"park/+/gds/+","format":"json","tag_segment":3}"#)
            .expect("valid");
        assert_eq!(s.qos, 1);
        assert_eq!(s.tag, TagSource::Segment(3));
        let s = sub(r#"{"broker":"park","topic":"park/#","format":"number","tag_segment":5}"#)
            .expect("segment under # is fine");
        assert_eq!(s.tag, TagSource::Segment(5));
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"broker":"x","topic":"a/#/b","format":"json","tag":"t","qos":2}"#,
                &["broker", "topic", "qos"],
            ),
            (
                r#"{"broker":"park","topic":"a/b","format":"json"}"#,
                &["tag"],
            ),
            (
                r#"{"broker":"park","topic":"a/b","format":"json","tag":"t","tag_field":"x"}"#,
                &["tag"],
            ),
            (
                r#"{"broker":"park","topic":"a/b","format":"number","tag_segment":2}"#,
                &["tag_segment"],
            ),
            (
                r#"{"broker":"park","topic":"a/b","format":"number","tag":"t","value_field":"v"}"#,
                &["value_field"],
            ),
            (
                r#"{"broker":"park","topic":"spBv1.0/#","format":"sparkplug_b","tag":"t"}"#,
                &["tag"],
            ),
            (
                r#"{"broker":"park","topic":"a","format":"json","tag":"t","time_field":"a..b"}"#,
                &["time_field"],
            ),
        ];
        for (json, want) in cases {
            let e = sub(json).expect_err(json);
            let got: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(&got, want, "{json}");
        }
    }

    #[test]
    fn topic_matching() {
        let cases = [
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/b", true),
            ("a/+/+", "a//x", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(topic_matches(f, t), want, "{f} {t}");
        }
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter("a/#/c"));
    }
}
