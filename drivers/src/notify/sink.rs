//! The runtime channels: one HTTP POST per batch (or, for MQTT, one QoS 1 publish per
//! event), the outcome classified. A channel holds no queue and never retries (the outbox
//! does both), so it has no back-pressure of its own: a call blocks its caller for at most
//! the configured timeout.

use super::Notification;
use super::config::{ChannelConfig, UpstreamFormatKind, resolve_secret};
use super::crypto;
use super::message;
use super::upstream::{Sm4JsonV1, UpstreamCreds, UpstreamFormat};
use crate::mqtt::{MqttBroker, MqttPublisher};
use parkguard_rules::FieldError;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The receiver confirmed the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// HTTP status of the confirming reply.
    pub status: u16,
    /// Short receipt for the record (the reply body, cut to 200 bytes).
    pub receipt: String,
}

/// Why a delivery failed. [`DeliveryError::is_retryable`] tells the outbox whether to try
/// again with back-off or to give up and raise it to the operators.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No reply within the timeout (retryable).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Could not connect or the connection broke (retryable).
    #[error("connection failed: {0}")]
    Connect(String),
    /// Non-2xx reply: 5xx, 408 and 429 are retryable, other 4xx permanent.
    #[error("receiver answered HTTP {status}: {body}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Reply body, cut to 200 bytes.
        body: String,
    },
    /// A robot or platform answered 2xx but refused the message (`errcode` / `code`).
    #[error("receiver refused the message with code {code}: {msg}")]
    Rejected {
        /// The receiver's code.
        code: i64,
        /// Its message.
        msg: String,
        /// Rate limits and unreadable replies are retryable; the rest is not.
        retryable: bool,
    },
    /// A drill notification offered to a production channel (permanent: a bug upstream).
    #[error(
        "drill notification (drill `{drill}`) refused by production channel `{channel}`: drill events go only to channels with `drill = true`"
    )]
    DrillRefused {
        /// The channel.
        channel: String,
        /// The drill id.
        drill: String,
    },
    /// The channel cannot work as configured (permanent).
    #[error("bad channel config: {0}")]
    Config(String),
}

impl DeliveryError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Timeout(_) | DeliveryError::Connect(_) => true,
            DeliveryError::Http { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            DeliveryError::Rejected { retryable, .. } => *retryable,
            DeliveryError::DrillRefused { .. } | DeliveryError::Config(_) => false,
        }
    }
}

/// Anything the outbox can deliver batches to (implemented by [`Channel`]; tests may wrap
/// it to inject faults).
pub trait Deliver: Send + Sync + 'static {
    /// Channel name.
    fn name(&self) -> &str;
    /// Whether drill events may be delivered here.
    fn is_drill(&self) -> bool;
    /// Deliver one batch (all of one drill or all real), confirmed by the receiver.
    fn deliver_batch(
        &self,
        batch: &[Notification],
    ) -> impl std::future::Future<Output = Result<Delivered, DeliveryError>> + Send;
}

enum Kind {
    Webhook {
        url: String,
        secret: String,
        header: String,
    },
    WeCom {
        url: String,
    },
    DingTalk {
        url: String,
        token: String,
        secret: String,
        at_mobiles: Vec<String>,
        at_all: bool,
    },
    Upstream {
        url: String,
        creds: UpstreamCreds,
        format: Arc<dyn UpstreamFormat>,
        success_codes: Vec<i64>,
    },
    Mqtt {
        publisher: MqttPublisher,
        park: String,
        alarm_topic: String,
        warning_topic: String,
    },
}

/// What building a channel may need beyond its own table: the park id (MQTT topics), the
/// validated `[[mqtt_broker]]` tables (MQTT channels publish to one of them) and the
/// shutdown token (MQTT channels run a connection task until it fires). Building an MQTT
/// channel must happen inside a tokio runtime.
#[derive(Clone, Debug, Default)]
pub struct ChannelEnv {
    /// Park id (`[park] id`).
    pub park: String,
    /// Validated MQTT brokers.
    pub mqtt_brokers: Vec<MqttBroker>,
    /// Stops the MQTT connection tasks.
    pub shutdown: CancellationToken,
}

/// A built channel (secrets resolved, HTTP client ready). Its `Debug` shows no secrets.
pub struct Channel {
    name: String,
    drill: bool,
    timeout: Duration,
    client: reqwest::Client,
    kind: Kind,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Webhook { .. } => "webhook",
            Kind::WeCom { .. } => "wecom",
            Kind::DingTalk { .. } => "dingtalk",
            Kind::Upstream { .. } => "upstream",
            Kind::Mqtt { .. } => "mqtt",
        };
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &kind)
            .field("drill", &self.drill)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Channel {
    /// Validate, resolve secrets (environment / files) and build the HTTP client. Every
    /// error carries the field path inside the `[[channel]]` table. An MQTT channel needs
    /// [`Channel::build_with`].
    pub fn build(cfg: &ChannelConfig) -> Result<Channel, Vec<FieldError>> {
        Self::build_with(cfg, &ChannelEnv::default())
    }

    /// [`Channel::build`] with the park's context (MQTT channels: park id, brokers,
    /// shutdown). Must run inside a tokio runtime for an MQTT channel.
    pub fn build_with(cfg: &ChannelConfig, env: &ChannelEnv) -> Result<Channel, Vec<FieldError>> {
        let errs = cfg.validate();
        if !errs.is_empty() {
            return Err(errs);
        }
        let mut errs = Vec::new();
        let mut secret = |env: &Option<String>, file: &Option<std::path::PathBuf>, base: &str| {
            resolve_secret(env, file, base).unwrap_or_else(|e| {
                errs.push(e);
                String::new()
            })
        };
        let (timeout_ms, kind) = match cfg {
            ChannelConfig::Webhook(c) => (
                c.timeout_ms,
                Kind::Webhook {
                    url: c.url.clone(),
                    secret: secret(&c.secret_env, &c.secret_file, "secret"),
                    header: c.signature_header.clone(),
                },
            ),
            ChannelConfig::Wecom(c) => {
                let key = secret(&c.key_env, &c.key_file, "key");
                let key =
                    percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC);
                (
                    c.timeout_ms,
                    Kind::WeCom {
                        url: format!("{}?key={key}", c.url),
                    },
                )
            }
            ChannelConfig::Dingtalk(c) => (
                c.timeout_ms,
                Kind::DingTalk {
                    url: c.url.clone(),
                    token: secret(&c.access_token_env, &c.access_token_file, "access_token"),
                    secret: secret(&c.secret_env, &c.secret_file, "secret"),
                    at_mobiles: c.at_mobiles.clone(),
                    at_all: c.at_all,
                },
            ),
            ChannelConfig::Upstream(c) => {
                let app_secret = secret(&c.app_secret_env, &c.app_secret_file, "app_secret");
                let key_hex = secret(&c.sm4_key_env, &c.sm4_key_file, "sm4_key");
                let mut sm4_key = [0u8; 16];
                if !key_hex.is_empty() {
                    match crypto::from_hex(&key_hex) {
                        Ok(k) if k.len() == 16 => sm4_key.copy_from_slice(&k),
                        _ => errs.push(FieldError::new(
                            if c.sm4_key_env.is_some() {
                                "sm4_key_env"
                            } else {
                                "sm4_key_file"
                            },
                            "the SM4 key must be 32 hex digits (16 bytes)",
                        )),
                    }
                }
                let format: Arc<dyn UpstreamFormat> = match c.format {
                    UpstreamFormatKind::Sm4JsonV1 => Arc::new(Sm4JsonV1),
                };
                (
                    c.timeout_ms,
                    Kind::Upstream {
                        url: c.url.clone(),
                        creds: UpstreamCreds {
                            app_id: c.app_id.clone(),
                            app_secret,
                            sm4_key,
                        },
                        format,
                        success_codes: c.success_codes.clone(),
                    },
                )
            }
            ChannelConfig::Mqtt(c) => {
                let Some(broker) = env.mqtt_brokers.iter().find(|b| b.id == c.broker) else {
                    return Err(vec![FieldError::new(
                        "broker",
                        format!(
                            "unknown broker `{}`: define it in an [[mqtt_broker]] table",
                            c.broker
                        ),
                    )]);
                };
                let mut broker = broker.clone();
                // One connection per channel, its own client id (the publisher adds `-pub`).
                broker.client_id = format!("{}-{}", broker.client_id, c.name);
                let publisher = MqttPublisher::spawn(
                    &broker,
                    Duration::from_millis(c.timeout_ms),
                    env.shutdown.child_token(),
                )
                .map_err(|e| vec![FieldError::new("broker", e.to_string())])?;
                (
                    c.timeout_ms,
                    Kind::Mqtt {
                        publisher,
                        park: env.park.clone(),
                        alarm_topic: c.alarm_topic(),
                        warning_topic: c.warning_topic(),
                    },
                )
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let timeout = Duration::from_millis(timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("parkguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                vec![FieldError::new(
                    "",
                    format!("cannot build HTTP client: {e}"),
                )]
            })?;
        Ok(Channel {
            name: cfg.name().to_string(),
            drill: cfg.drill(),
            timeout,
            client,
            kind,
        })
    }

    /// Replace the upstream wire format (a platform with its own field names). No effect on
    /// other channel types.
    pub fn with_upstream_format(mut self, f: Arc<dyn UpstreamFormat>) -> Self {
        if let Kind::Upstream { format, .. } = &mut self.kind {
            *format = f;
        }
        self
    }

    /// Channel name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a drill channel.
    pub fn drill(&self) -> bool {
        self.drill
    }

    /// For an MQTT channel: publishes the broker refused so far (MQTT 5 failure reason
    /// codes, [`MqttPublisher::rejected`]); `None` for every other kind.
    pub fn mqtt_rejected(&self) -> Option<u64> {
        match &self.kind {
            Kind::Mqtt { publisher, .. } => Some(publisher.rejected()),
            _ => None,
        }
    }

    /// Deliver one notification.
    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, DeliveryError> {
        self.deliver_batch(std::slice::from_ref(n)).await
    }

    /// Deliver a batch as one message (one POST). The batch is refused whole when any
    /// notification in it is a drill and this is a production channel.
    pub async fn deliver_batch(&self, batch: &[Notification]) -> Result<Delivered, DeliveryError> {
        if !self.drill
            && let Some(d) = batch.iter().find_map(|n| n.drill.as_ref())
        {
            return Err(DeliveryError::DrillRefused {
                channel: self.name.clone(),
                drill: d.clone(),
            });
        }
        if batch.is_empty() {
            return Err(DeliveryError::Config("empty batch".into()));
        }
        let key = message::batch_key(batch);
        let ts = now_ms();
        match &self.kind {
            Kind::Webhook {
                url,
                secret,
                header,
            } => {
                let body = message::envelope_json(batch);
                let sig = crypto::webhook_signature(secret.as_bytes(), ts, &body);
                let req = self
                    .client
                    .post(url)
                    .header("Content-Type", "application/json")
                    .header("Idempotency-Key", &key)
                    .header("X-Parkguard-Timestamp", ts.to_string())
                    .header(header.as_str(), sig)
                    .body(body);
                let (status, text) = self.send(req).await?;
                Ok(Delivered {
                    status,
                    receipt: cut(&text),
                })
            }
            Kind::WeCom { url } => {
                let req = self.client.post(url).json(&message::wecom_body(batch));
                let (status, text) = self.send(req).await?;
                // 45009: api freq out of limit (20 messages per minute per robot).
                robot_errcode(status, &text, &[45009, -1])
            }
            Kind::DingTalk {
                url,
                token,
                secret,
                at_mobiles,
                at_all,
            } => {
                let sign = crypto::dingtalk_sign(secret, ts);
                let token = percent_encoding::utf8_percent_encode(
                    token,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                let full = format!("{url}?access_token={token}&timestamp={ts}&sign={sign}");
                let req = self
                    .client
                    .post(full)
                    .json(&message::dingtalk_body(batch, at_mobiles, *at_all));
                let (status, text) = self.send(req).await?;
                // 130101: sending too fast; -1: system busy.
                robot_errcode(status, &text, &[130101, -1])
            }
            Kind::Upstream {
                url,
                creds,
                format,
                success_codes,
            } => {
                let enc = format
                    .encode(batch, creds, ts)
                    .map_err(|e| DeliveryError::Config(e.to_string()))?;
                let mut req = self
                    .client
                    .post(url)
                    .header("Content-Type", "application/json")
                    .body(enc.body);
                for (k, v) in &enc.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let (status, text) = self.send(req).await?;
                let receipt = format.confirm(text.as_bytes(), success_codes)?;
                Ok(Delivered {
                    status,
                    receipt: cut(&receipt),
                })
            }
            Kind::Mqtt {
                publisher,
                park,
                alarm_topic,
                warning_topic,
            } => {
                // One message per event, in batch order, each awaited: the order per alarm
                // holds, and a retried batch republishes in the same order (the last
                // retained warning is the newest).
                for n in batch {
                    let warning = message::is_warning(n);
                    let template = if warning { warning_topic } else { alarm_topic };
                    let topic = message::render_topic(template, park, n);
                    publisher
                        .publish_bytes(&topic, message::event_json(n), warning)
                        .await
                        .map_err(|e| DeliveryError::Connect(e.to_string()))?;
                }
                Ok(Delivered {
                    status: 0,
                    receipt: format!("PUBACK x{}", batch.len()),
                })
            }
        }
    }

    /// Send and read the reply; `Ok` only for 2xx.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, String), DeliveryError> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| self.transport(e))?;
        if (200..300).contains(&status) {
            Ok((status, text))
        } else {
            Err(DeliveryError::Http {
                status,
                body: cut(&text),
            })
        }
    }

    fn transport(&self, e: reqwest::Error) -> DeliveryError {
        if e.is_timeout() {
            DeliveryError::Timeout(self.timeout)
        } else if e.is_builder() {
            DeliveryError::Config(e.to_string())
        } else {
            // connect errors, resets, truncated bodies: all worth another try
            DeliveryError::Connect(format!("{e}: {}", source_chain(&e)))
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Classify a robot reply `{"errcode":0,"errmsg":"ok"}`.
fn robot_errcode(status: u16, text: &str, retry_codes: &[i64]) -> Result<Delivered, DeliveryError> {
    #[derive(serde::Deserialize)]
    struct R {
        errcode: i64,
        #[serde(default)]
        errmsg: String,
    }
    match serde_json::from_str::<R>(text) {
        Ok(r) if r.errcode == 0 => Ok(Delivered {
            status,
            receipt: cut(text),
        }),
        Ok(r) => Err(DeliveryError::Rejected {
            code: r.errcode,
            retryable: retry_codes.contains(&r.errcode),
            msg: r.errmsg,
        }),
        Err(e) => Err(DeliveryError::Rejected {
            code: -1,
            msg: format!("unreadable robot reply ({e}): {}", cut(text)),
            retryable: true,
        }),
    }
}

impl Deliver for Channel {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_drill(&self) -> bool {
        self.drill
    }
    fn deliver_batch(
        &self,
        batch: &[Notification],
    ) -> impl std::future::Future<Output = Result<Delivered, DeliveryError>> + Send {
        Channel::deliver_batch(self, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let p = std::env::temp_dir().join(format!("pg-dbg-{}", std::process::id()));
        std::fs::write(&p, "TOPSECRET").unwrap();
        let cfg: ChannelConfig = serde_json::from_value(serde_json::json!({
            "type": "wecom", "name": "w", "key_file": p
        }))
        .unwrap();
        let ch = Channel::build(&cfg).unwrap();
        let d = format!("{ch:?}");
        assert!(d.contains("wecom") && !d.contains("TOPSECRET"), "{d}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn classification() {
        let h = |status| DeliveryError::Http {
            status,
            body: String::new(),
        };
        assert!(h(500).is_retryable());
        assert!(h(503).is_retryable());
        assert!(h(429).is_retryable());
        assert!(!h(400).is_retryable());
        assert!(!h(401).is_retryable());
        assert!(!h(404).is_retryable());
        assert!(DeliveryError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(
            !DeliveryError::DrillRefused {
                channel: "c".into(),
                drill: "d".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn robot_replies() {
        assert!(robot_errcode(200, r#"{"errcode":0,"errmsg":"ok"}"#, &[45009]).is_ok());
        let e = robot_errcode(
            200,
            r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
            &[45009],
        )
        .unwrap_err();
        assert!(e.is_retryable());
        let e = robot_errcode(
            200,
            r#"{"errcode":310000,"errmsg":"sign not match"}"#,
            &[130101],
        )
        .unwrap_err();
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("sign not match"));
    }
}
