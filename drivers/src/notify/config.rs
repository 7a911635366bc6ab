//! Channel configs as written in the park file: one `[[channel]]` table per channel,
//! `type` picks the kind (closed enum [`ChannelConfig`]). Plain serde, every field
//! documented with unit and default; [`ChannelConfig::validate`] is pure (no environment or
//! file reads); secrets are resolved only when the channel is built
//! ([`super::Channel::build`]).
//!
//! Secrets are never written inline: each secret has a `*_env` (name of an environment
//! variable) and a `*_file` (path of a file whose trimmed content is the secret) form, and
//! exactly one of them must be given.
//!
//! ```toml
//! [[channel]]
//! type = "webhook"
//! name = "bureau-duty-desk"
//! drill = false
//! url = "https://duty.example.gov.cn/parkguard"
//! secret_env = "PARKGUARD_DUTY_WEBHOOK_SECRET"
//! ```

use parkguard_rules::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One `[[channel]]` table.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelConfig {
    /// Generic HTTP webhook: POST of the JSON envelope, HMAC-SHA256 signed.
    Webhook(WebhookConfig),
    /// WeCom (企业微信) group robot, markdown messages.
    Wecom(WeComConfig),
    /// DingTalk (钉钉) group robot, markdown messages, signed URL.
    Dingtalk(DingTalkConfig),
    /// Upstream government platform: appId/appSecret, SM4-CBC encrypted body.
    Upstream(UpstreamConfig),
    /// MQTT: one JSON message per event, QoS 1, warnings retained (current state).
    Mqtt(MqttChannelConfig),
}

impl ChannelConfig {
    /// The channel's unique name (routes and the outbox refer to it).
    pub fn name(&self) -> &str {
        match self {
            ChannelConfig::Webhook(c) => &c.name,
            ChannelConfig::Wecom(c) => &c.name,
            ChannelConfig::Dingtalk(c) => &c.name,
            ChannelConfig::Upstream(c) => &c.name,
            ChannelConfig::Mqtt(c) => &c.name,
        }
    }
    /// Whether the channel is a drill channel (receives drill events, and only then).
    pub fn drill(&self) -> bool {
        match self {
            ChannelConfig::Webhook(c) => c.drill,
            ChannelConfig::Wecom(c) => c.drill,
            ChannelConfig::Dingtalk(c) => c.drill,
            ChannelConfig::Upstream(c) => c.drill,
            ChannelConfig::Mqtt(c) => c.drill,
        }
    }
    /// `"webhook"`, `"wecom"`, `"dingtalk"`, `"upstream"`, `"mqtt"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Webhook(_) => "webhook",
            ChannelConfig::Wecom(_) => "wecom",
            ChannelConfig::Dingtalk(_) => "dingtalk",
            ChannelConfig::Upstream(_) => "upstream",
            ChannelConfig::Mqtt(_) => "mqtt",
        }
    }
    /// Pure validation: every error, with the field path inside the table.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let (name, timeout_ms) = match self {
            ChannelConfig::Webhook(c) => {
                check_url(&c.url, "url", &mut errs);
                one_of(&c.secret_env, &c.secret_file, "secret", &mut errs);
                if c.signature_header.trim().is_empty() {
                    errs.push(FieldError::new("signature_header", "must not be empty"));
                }
                (&c.name, c.timeout_ms)
            }
            ChannelConfig::Wecom(c) => {
                check_url(&c.url, "url", &mut errs);
                one_of(&c.key_env, &c.key_file, "key", &mut errs);
                (&c.name, c.timeout_ms)
            }
            ChannelConfig::Dingtalk(c) => {
                check_url(&c.url, "url", &mut errs);
                one_of(
                    &c.access_token_env,
                    &c.access_token_file,
                    "access_token",
                    &mut errs,
                );
                one_of(&c.secret_env, &c.secret_file, "secret", &mut errs);
                for (i, m) in c.at_mobiles.iter().enumerate() {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit() || b == b'+') {
                        errs.push(FieldError::new(
                            format!("at_mobiles[{i}]"),
                            format!("`{m}` is not a phone number (digits only)"),
                        ));
                    }
                }
                (&c.name, c.timeout_ms)
            }
            ChannelConfig::Upstream(c) => {
                check_url(&c.url, "url", &mut errs);
                if c.app_id.trim().is_empty() {
                    errs.push(FieldError::new("app_id", "must not be empty"));
                }
                one_of(
                    &c.app_secret_env,
                    &c.app_secret_file,
                    "app_secret",
                    &mut errs,
                );
                one_of(&c.sm4_key_env, &c.sm4_key_file, "sm4_key", &mut errs);
                if c.success_codes.is_empty() {
                    errs.push(FieldError::new(
                        "success_codes",
                        "list at least one platform code that means success, e.g. [0, 200]",
                    ));
                }
                (&c.name, c.timeout_ms)
            }
            ChannelConfig::Mqtt(c) => {
                if c.broker.trim().is_empty() {
                    errs.push(FieldError::new(
                        "broker",
                        "name the [[mqtt_broker]] `id` to publish to",
                    ));
                }
                if let Some(t) = &c.alarm_topic {
                    check_topic(t, "alarm_topic", &["park", "enterprise", "tag"], &mut errs);
                }
                if let Some(t) = &c.warning_topic {
                    check_topic(t, "warning_topic", &["park", "enterprise"], &mut errs);
                }
                (&c.name, c.timeout_ms)
            }
        };
        if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
            errs.push(FieldError::new(
                "name",
                "channel name must be non-empty and contain no spaces",
            ));
        }
        if !(100..=120_000).contains(&timeout_ms) {
            errs.push(FieldError::new(
                "timeout_ms",
                format!("{timeout_ms} ms is out of range: use 100 to 120000"),
            ));
        }
        errs
    }
}

fn check_url(url: &str, field: &str, errs: &mut Vec<FieldError>) {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "https://".len()
        && !url.chars().any(char::is_whitespace);
    if !ok {
        errs.push(FieldError::new(
            field,
            format!("`{url}` is not an http:// or https:// URL"),
        ));
    }
}

/// A topic template: non-empty, no wildcards (`+`, `#`), no NUL, no `$` at the start,
/// placeholders only from `allowed`.
fn check_topic(t: &str, field: &str, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if t.is_empty() || t.contains(['+', '#', '\0']) || t.starts_with('$') {
        errs.push(FieldError::new(
            field,
            format!(
                "`{t}` is not a publish topic: no wildcards (+, #), not empty, not starting with $"
            ),
        ));
        return;
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            errs.push(FieldError::new(field, format!("unclosed `{{` in `{t}`")));
            return;
        };
        let key = &rest[open + 1..open + close];
        if !allowed.contains(&key) {
            errs.push(FieldError::new(
                field,
                format!(
                    "unknown placeholder `{{{key}}}` in `{t}`: use {}",
                    allowed
                        .iter()
                        .map(|a| format!("{{{a}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        rest = &rest[open + close + 1..];
    }
}

fn one_of(env: &Option<String>, file: &Option<PathBuf>, base: &str, errs: &mut Vec<FieldError>) {
    match (env, file) {
        (Some(_), Some(_)) => errs.push(FieldError::new(
            format!("{base}_file"),
            format!("give either `{base}_env` or `{base}_file`, not both"),
        )),
        (None, None) => errs.push(FieldError::new(
            format!("{base}_env"),
            format!(
                "missing secret: set `{base}_env` (environment variable name) or `{base}_file` (path); secrets are never written inline"
            ),
        )),
        (Some(e), None) if e.trim().is_empty() => errs.push(FieldError::new(
            format!("{base}_env"),
            "environment variable name must not be empty",
        )),
        _ => {}
    }
}

/// Read a secret from `env` or `file` (exactly one is set; see [`ChannelConfig::validate`]).
/// The file content is trimmed of surrounding whitespace. Touches the environment / disk:
/// call only when building.
pub fn resolve_secret(
    env: &Option<String>,
    file: &Option<PathBuf>,
    base: &str,
) -> Result<String, FieldError> {
    let value = match (env, file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            FieldError::new(
                format!("{base}_env"),
                format!("environment variable `{var}` is not set (or not UTF-8)"),
            )
        })?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                FieldError::new(
                    format!("{base}_file"),
                    format!("cannot read secret file `{}`: {e}", path.display()),
                )
            })?
            .trim()
            .to_string(),
        _ => {
            return Err(FieldError::new(
                format!("{base}_env"),
                format!("set exactly one of `{base}_env` and `{base}_file`"),
            ));
        }
    };
    if value.is_empty() {
        return Err(FieldError::new(
            format!("{base}_env"),
            format!("the `{base}` secret is empty"),
        ));
    }
    Ok(value)
}

/// `type = "mqtt"`: every event as one JSON message (`schema = "parkguard.event.v1"`,
/// the notification's fields, `time_local`, `text_zh`, `text_en`) with QoS 1, on the
/// broker of an `[[mqtt_broker]]` table (its host, port, TLS and credentials; client id
/// `<client_id>-<channel name>-pub`, clean session: the outbox is the durable queue).
/// Alarm events are not retained; warning-grade events are **retained**, so a late
/// subscriber gets each enterprise's current warning grade at once (a warning that ends
/// is published with `grade = null`, `state = "none"`). Delivered = the broker's PUBACK
/// for every message of the batch.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttChannelConfig {
    /// Unique channel name (no spaces). Required.
    pub name: String,
    /// `true`: a drill channel, receives drill events and only those. Default `false`.
    #[serde(default)]
    pub drill: bool,
    /// `id` of the `[[mqtt_broker]]` to publish to. Required.
    pub broker: String,
    /// Topic of alarm events; placeholders `{park}`, `{enterprise}`, `{tag}` (values with
    /// `/`, `+`, `#` are written with `_`). Default `parkguard/{park}/alarms/{enterprise}/{tag}`
    /// (`parkguard/{park}/drill/alarms/{enterprise}/{tag}` on a drill channel).
    #[serde(default)]
    pub alarm_topic: Option<String>,
    /// Topic of warning grades (retained); placeholders `{park}`, `{enterprise}` (`PARK` for
    /// the park-wide grade). Default `parkguard/{park}/warnings/{enterprise}`
    /// (`parkguard/{park}/drill/warnings/{enterprise}` on a drill channel).
    #[serde(default)]
    pub warning_topic: Option<String>,
    /// Longest wait for the broker's PUBACK of one batch, milliseconds (100–120000).
    /// Default 10000.
    #[serde(default = "default_mqtt_timeout_ms")]
    pub timeout_ms: u64,
}

impl MqttChannelConfig {
    /// The alarm topic template in force (the default depends on `drill`).
    pub fn alarm_topic(&self) -> String {
        self.alarm_topic.clone().unwrap_or_else(|| {
            if self.drill {
                "parkguard/{park}/drill/alarms/{enterprise}/{tag}".into()
            } else {
                "parkguard/{park}/alarms/{enterprise}/{tag}".into()
            }
        })
    }
    /// The warning topic template in force (the default depends on `drill`).
    pub fn warning_topic(&self) -> String {
        self.warning_topic.clone().unwrap_or_else(|| {
            if self.drill {
                "parkguard/{park}/drill/warnings/{enterprise}".into()
            } else {
                "parkguard/{park}/warnings/{enterprise}".into()
            }
        })
    }
}

/// `type = "webhook"`: POST of the JSON envelope (`schema`, `key`, `drill`, `count`,
/// `events[]`) with headers `Idempotency-Key` (the batch's first event id),
/// `X-Parkguard-Timestamp` (ms since epoch) and the signature header
/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`. Success = any 2xx.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique channel name (no spaces). Required.
    pub name: String,
    /// `true`: a drill channel, receives drill events and only those. Default `false`
    /// (a production channel, never receives drill events).
    #[serde(default)]
    pub drill: bool,
    /// Receiver URL (`https://…`; `http://` only inside a trusted network). Required.
    pub url: String,
    /// Environment variable holding the shared HMAC secret. One of `secret_env` /
    /// `secret_file` is required.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the shared HMAC secret (trimmed).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Name of the signature header. Default `X-Parkguard-Signature`.
    #[serde(default = "default_sig_header")]
    pub signature_header: String,
    /// Request timeout in milliseconds (connect + response), 100–120000. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// `type = "wecom"`: WeCom group robot (`msgtype = markdown`). Success = HTTP 200 and
/// `errcode == 0`; errcode 45009 (rate limit: 20 messages/minute per robot) is retried.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeComConfig {
    /// Unique channel name (no spaces). Required.
    pub name: String,
    /// `true`: a drill channel (drill events only). Default `false`.
    #[serde(default)]
    pub drill: bool,
    /// Robot send URL without the key. Default
    /// `https://qyapi.weixin.qq.com/cgi-bin/webhook/send`.
    #[serde(default = "default_wecom_url")]
    pub url: String,
    /// Environment variable holding the robot `key`. One of `key_env` / `key_file` is
    /// required.
    #[serde(default)]
    pub key_env: Option<String>,
    /// File holding the robot `key`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Request timeout in milliseconds, 100–120000. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// `type = "dingtalk"`: DingTalk group robot (`msgtype = markdown`) with the "加签"
/// security setting: the URL carries `timestamp` and `sign`. Success = HTTP 200 and
/// `errcode == 0`; errcode 130101 (sending too fast) is retried.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DingTalkConfig {
    /// Unique channel name (no spaces). Required.
    pub name: String,
    /// `true`: a drill channel (drill events only). Default `false`.
    #[serde(default)]
    pub drill: bool,
    /// Robot send URL without query. Default `https://oapi.dingtalk.com/robot/send`.
    #[serde(default = "default_dingtalk_url")]
    pub url: String,
    /// Environment variable holding the robot `access_token`. One of
    /// `access_token_env` / `access_token_file` is required.
    #[serde(default)]
    pub access_token_env: Option<String>,
    /// File holding the robot `access_token`.
    #[serde(default)]
    pub access_token_file: Option<PathBuf>,
    /// Environment variable holding the signing secret (`SEC…`). One of `secret_env` /
    /// `secret_file` is required.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the signing secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Mobile numbers to @-mention in every message. Default none.
    #[serde(default)]
    pub at_mobiles: Vec<String>,
    /// @-mention everyone in the group. Default `false`.
    #[serde(default)]
    pub at_all: bool,
    /// Request timeout in milliseconds, 100–120000. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Wire formats of upstream platforms (closed; add a variant and an
/// [`super::upstream::UpstreamFormat`] impl for a new platform).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFormatKind {
    /// `{appId, timestamp, nonce, iv, data, sign}`, `data` = base64(SM4-CBC/PKCS#7(JSON
    /// envelope)); see [`super::upstream::Sm4JsonV1`].
    #[default]
    Sm4JsonV1,
}

/// `type = "upstream"`: the provincial / national hazardous-chemicals platform. HTTP POST
/// of JSON with `appId` and a signature under `appSecret`, the body SM4-CBC encrypted.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique channel name (no spaces). Required.
    pub name: String,
    /// `true`: a drill channel (drill events only). Default `false`.
    #[serde(default)]
    pub drill: bool,
    /// Platform endpoint URL. Required.
    pub url: String,
    /// `appId` issued by the platform (not secret). Required.
    pub app_id: String,
    /// Environment variable holding `appSecret`. One of `app_secret_env` /
    /// `app_secret_file` is required.
    #[serde(default)]
    pub app_secret_env: Option<String>,
    /// File holding `appSecret`.
    #[serde(default)]
    pub app_secret_file: Option<PathBuf>,
    /// Environment variable holding the SM4 key as 32 hex digits. One of `sm4_key_env` /
    /// `sm4_key_file` is required.
    #[serde(default)]
    pub sm4_key_env: Option<String>,
    /// File holding the SM4 key as 32 hex digits.
    #[serde(default)]
    pub sm4_key_file: Option<PathBuf>,
    /// Wire format. Default `sm4_json_v1`.
    #[serde(default)]
    pub format: UpstreamFormatKind,
    /// Platform `code` values (in the JSON reply) that mean success. Default `[0, 200]`.
    #[serde(default = "default_success_codes")]
    pub success_codes: Vec<i64>,
    /// Request timeout in milliseconds, 100–120000. Default 10000.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_sig_header() -> String {
    "X-Parkguard-Signature".into()
}
fn default_mqtt_timeout_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_upstream_timeout_ms() -> u64 {
    10_000
}
fn default_wecom_url() -> String {
    "https://qyapi.weixin.qq.com/cgi-bin/webhook/send".into()
}
fn default_dingtalk_url() -> String {
    "https://oapi.dingtalk.com/robot/send".into()
}
fn default_success_codes() -> Vec<i64> {
    vec![0, 200]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<ChannelConfig, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn tagged_tables_parse_and_validate() {
        let c = parse(serde_json::json!({
            "type": "webhook", "name": "duty", "url": "https://x.example/h", "secret_env": "S"
        }))
        .unwrap();
        assert_eq!(c.kind(), "webhook");
        assert!(!c.drill());
        assert!(c.validate().is_empty(), "{:?}", c.validate());

        let c = parse(serde_json::json!({
            "type": "dingtalk", "name": "drill-room", "drill": true,
            "access_token_file": "/run/secrets/dt", "secret_env": "DT_SEC",
            "at_mobiles": ["13800000000"]
        }))
        .unwrap();
        assert!(c.drill());
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn unknown_fields_and_inline_secrets_are_rejected() {
        let e = parse(serde_json::json!({
            "type": "webhook", "name": "duty", "url": "https://x.example/h", "secret": "inline"
        }))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `secret`"), "{e}");
        assert!(
            parse(serde_json::json!({"type": "pager", "name": "x"}))
                .unwrap_err()
                .to_string()
                .contains("unknown variant")
        );
    }

    #[test]
    fn validate_collects_every_error() {
        let c = parse(serde_json::json!({
            "type": "upstream", "name": "bad name", "url": "ftp://x", "app_id": " ",
            "app_secret_env": "A", "app_secret_file": "/f", "success_codes": [],
            "timeout_ms": 5
        }))
        .unwrap();
        let fields: Vec<String> = c.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "url",
                "app_id",
                "app_secret_file",
                "sm4_key_env",
                "success_codes",
                "name",
                "timeout_ms"
            ]
        );
    }

    #[test]
    fn secrets_resolve_from_file_trimmed() {
        let dir = std::env::temp_dir().join(format!("pg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "  s3cret\n").unwrap();
        assert_eq!(
            resolve_secret(&None, &Some(f.clone()), "secret").unwrap(),
            "s3cret"
        );
        let e = resolve_secret(&Some("PARKGUARD_SURELY_UNSET_VAR".into()), &None, "secret")
            .unwrap_err();
        assert_eq!(e.field, "secret_env");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
