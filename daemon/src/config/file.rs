//! The park config file as written: plain serde structs with `deny_unknown_fields`, each
//! field documented with its unit and default. [`super::validate`] turns them into the
//! runtime types; `parkguard config-schema` prints the JSON Schema derived from them.

use super::duration::ConfigDuration;
use parkguard_rules::{Gas, GeoPoint, PointKind, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A whole park config file. Sections:
/// `[park]`, `[data]`, `[api]`, `[alarm]`, `[influx]`, `[spool]`, `[[enterprise]]`, `[[modbus_device]]`,
/// `[[mqtt_broker]]`, `[[mqtt_subscription]]`, `[[point]]`, `[[vote_group]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkFile {
    /// The park itself (required).
    pub park: Option<ParkSection>,
    /// Where parkguard keeps its state (spool, journal).
    #[serde(default)]
    pub data: DataSection,
    /// The HTTP API and console listener.
    #[serde(default)]
    pub api: ApiSection,
    /// Alarm engine settings (priorities, shelving, staleness, warning rules).
    pub alarm: Option<parkguard_rules::engine::EngineConfig>,
    /// InfluxDB 2 sink; absent = the local spool is the archive.
    pub influx: Option<parkguard_drivers::influx::InfluxConfig>,
    /// The reading spool and local archive.
    pub spool: Option<crate::store::spool::SpoolConfig>,
    /// Resident enterprises.
    #[serde(default)]
    pub enterprise: Vec<EnterpriseEntry>,
    /// Modbus devices (TCP, RTU on a serial line, RTU over TCP).
    #[serde(default)]
    pub modbus_device: Vec<parkguard_drivers::modbus::ModbusDeviceConfig>,
    /// MQTT brokers parkguard connects to.
    #[serde(default)]
    pub mqtt_broker: Vec<parkguard_drivers::mqtt::MqttBrokerConfig>,
    /// MQTT subscriptions mapping payloads onto points.
    #[serde(default)]
    pub mqtt_subscription: Vec<parkguard_drivers::mqtt::MqttSubscriptionConfig>,
    /// Monitored points (位号).
    #[serde(default)]
    pub point: Vec<PointEntry>,
    /// Notification channels (webhook, WeCom, DingTalk, upstream platform).
    #[serde(default)]
    pub channel: Vec<parkguard_drivers::notify::ChannelConfig>,
    /// Routes: which notifications go to which channels.
    #[serde(default)]
    pub route: Vec<crate::linkage::route::RouteConfig>,
    /// Escalation policies for unacknowledged alarms.
    #[serde(default)]
    pub escalation: Vec<crate::linkage::escalate::EscalationConfig>,
    /// Notification outbox (grouping window, retries).
    pub outbox: Option<crate::linkage::outbox::OutboxConfig>,
    /// Coincidence voting groups (k of n detectors agree).
    #[serde(default)]
    pub vote_group: Vec<parkguard_rules::engine::VoteGroupConfig>,
}

/// `[park]`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkSection {
    /// Short id used in topics and as the `park` tag in InfluxDB (ASCII, no spaces).
    pub id: String,
    /// Display name (Chinese).
    pub name: String,
    /// IANA time zone for display; only `Asia/Shanghai` (UTC+8) is supported. Default
    /// `Asia/Shanghai`.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Boundary polygon of the park for the map (illustrative where exact geometry is not
    /// at hand).
    #[serde(default)]
    pub boundary: Vec<GeoPoint>,
    /// `true` for production configs: then `check-config` rejects demo-only settings
    /// (default passwords). Default `false`.
    #[serde(default)]
    pub production: bool,
}

fn default_tz() -> String {
    "Asia/Shanghai".into()
}

/// `[data]`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Directory for the spool, journal and audit log. Default `./parkguard-data`.
    #[serde(default = "default_data_dir")]
    pub dir: PathBuf,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            dir: default_data_dir(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("parkguard-data")
}

/// `[api]`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Listen address of the HTTP API and console. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Users file (usernames, roles, argon2 password hashes, token hashes); relative paths
    /// are relative to the working directory. Default `<data.dir>/users.toml`.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// TLS certificate chain (PEM). With `tls_key`, the API and console are served over
    /// HTTPS and cookies are marked `Secure`. Default: none (plain HTTP; terminate TLS in
    /// front).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8 or RSA). Set together with `tls_cert`. Default: none.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            users_file: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ApiSection {
    /// The users file: `users_file`, or `<data_dir>/users.toml`.
    pub fn users_file(&self, data_dir: &std::path::Path) -> PathBuf {
        self.users_file
            .clone()
            .unwrap_or_else(|| data_dir.join("users.toml"))
    }

    /// Certificate and key when both are set.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.tls_cert.clone()?, self.tls_key.clone()?))
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// `[[enterprise]]`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnterpriseEntry {
    /// Enterprise code, unique in the park (used by points and as a tag).
    pub code: String,
    /// Name (Chinese).
    pub name: String,
    /// Representative location (gate or centroid).
    pub location: Option<GeoPoint>,
    /// Site boundary polygon, for the map.
    #[serde(default)]
    pub boundary: Vec<GeoPoint>,
}

/// `[[point]]`: one monitored point (位号).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointEntry {
    /// Tag (位号), unique in the park.
    pub tag: String,
    /// Human name.
    pub name: String,
    /// Code of the owning `[[enterprise]]`.
    pub enterprise: String,
    /// What it measures: combustible, toxic, oxygen, pressure, temperature, level, flow,
    /// other.
    pub kind: PointKind,
    /// The gas (required for combustible — except open-path LEL.m — toxic and oxygen).
    pub gas: Option<Gas>,
    /// Unit of the values: `%LEL`, `LEL.m`, `%vol`, `ppm`, `mg/m3`, `Pa`, `kPa`, `MPa`,
    /// `bar`, `degC`, `m`, `mm`, `%`, `m3/h`, `t/h`, `mA`, `1`.
    pub unit: Unit,
    /// Measuring range `[low, high]` in `unit`. Values outside are marked out-of-range.
    pub range: [f64; 2],
    /// Expected interval between readings; staleness is judged against it. Default: the
    /// device's poll interval for Modbus points, else `10s`.
    pub interval: Option<ConfigDuration>,
    /// Process unit / area inside the enterprise (for voting and warnings).
    pub area: Option<String>,
    /// Major-hazard installation id (重大危险源编码).
    pub hazard_installation: Option<String>,
    /// Where the detector is.
    pub location: Option<GeoPoint>,
    /// Alarm limits; gas points default to GB/T 50493-2019 setpoints.
    #[serde(default)]
    pub limits: LimitsEntry,
    /// How the point is read from a Modbus device.
    pub modbus: Option<parkguard_drivers::modbus::ModbusPointConfig>,
}

/// `limits = { ... }` of a point. Gas points: `level1`/`level2` (or `h`/`hh`); oxygen `l`
/// (deficiency) and `h` (enrichment); process points H/HH/L/LL. Missing gas setpoints take
/// the GB/T 50493 defaults; process points have none by default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsEntry {
    /// Unit the limits are written in; converted to the point's unit at validation (e.g.
    /// mg/m³ setpoints for a ppm detector). Default: the point's unit.
    pub unit: Option<Unit>,
    /// Level-1 alarm (gas). Same as `h`.
    pub level1: Option<f64>,
    /// Level-2 alarm (gas). Same as `hh`.
    pub level2: Option<f64>,
    /// High-high.
    pub hh: Option<f64>,
    /// High.
    pub h: Option<f64>,
    /// Low.
    pub l: Option<f64>,
    /// Low-low.
    pub ll: Option<f64>,
    /// Absolute deadband in the limits' unit. Default: a share of the span by kind
    /// (pressure 2 %, temperature 1 %, level/flow 5 %, gas 2 %).
    pub deadband: Option<f64>,
    /// Deadband as percent of span (instead of `deadband`).
    pub deadband_percent: Option<f64>,
    /// On-delay. Default: gas 2 s, pressure/flow 15 s, level/temperature 60 s.
    pub on_delay: Option<ConfigDuration>,
    /// Off-delay. Default: gas 0 s, process 5 s.
    pub off_delay: Option<ConfigDuration>,
    /// Rate-of-change alarm: `{ rise_per_min, window }` (rise in the limits' unit per minute
    /// over `window`). Default none.
    pub rate_of_change: Option<RateOfChangeEntry>,
    /// Flatline alarm: `{ after, tolerance }` (value moved less than `tolerance` for
    /// `after`). Default none.
    pub flatline: Option<FlatlineEntry>,
}

/// `rate_of_change = { ... }`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateOfChangeEntry {
    /// Rise that alarms, per minute, in the limits' unit.
    pub rise_per_min: f64,
    /// Window the rise is measured over. Default `1m`.
    #[serde(default = "one_minute")]
    pub window: ConfigDuration,
}

fn one_minute() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(60))
}

/// `flatline = { ... }`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlatlineEntry {
    /// How long the value must not move before the alarm.
    pub after: ConfigDuration,
    /// Movement (limits' unit) that still counts as not moving. Default 0.
    #[serde(default)]
    pub tolerance: f64,
}
