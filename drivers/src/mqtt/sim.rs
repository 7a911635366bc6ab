//! A simulator that publishes plausible readings for given points to any broker: used by
//! `parkguard demo` (against the embedded broker) and `parkguard simulate`.
//!
//! Message shape (what [`sim_subscription`] subscribes to): topic `<prefix>/<tag>`,
//! payload `{"tag":"AT-101","value":3.2,"unit":"ppm","ts":1764144000123,"quality":"good"}`.

use super::MqttError;
use super::client::mqtt_options;
use super::config::{MqttBroker, MqttSubscriptionConfig, PayloadFormat, TimeFormat};
use crate::backoff::Backoff;
use parkguard_rules::{Point, PointKind, Unit};
use rumqttc::QoS;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

/// A leak: from `start_after`, the value rises by `rise_per_s` up to `max`.
#[derive(Clone, Debug, PartialEq)]
pub struct Leak {
    /// When the leak starts, after the simulator started.
    pub start_after: Duration,
    /// Rise, in the point's unit per second.
    pub rise_per_s: f64,
    /// Highest value reached.
    pub max: f64,
}

/// One simulated point.
#[derive(Clone, Debug, PartialEq)]
pub struct SimPoint {
    /// Tag.
    pub tag: String,
    /// Unit published.
    pub unit: Unit,
    /// Normal value.
    pub base: f64,
    /// Slow sine swing around `base` (period 10 min) plus ±`amplitude`/5 noise.
    pub amplitude: f64,
    /// Lowest value ever published (a detector never reads below its range).
    pub floor: f64,
    /// Optional leak.
    pub leak: Option<Leak>,
}

impl SimPoint {
    /// Plausible normal readings for a configured point: gas near zero (oxygen 20.9 %vol),
    /// process values near the middle of the range.
    pub fn for_point(p: &Point) -> SimPoint {
        let span = p.span().abs().max(1e-9);
        let (base, amplitude) = match p.kind {
            PointKind::Oxygen => (20.9, 0.05),
            PointKind::Combustible | PointKind::Toxic => (p.range_lo + span * 0.01, span * 0.005),
            _ => (p.range_lo + span * 0.5, span * 0.02),
        };
        SimPoint {
            tag: p.tag.clone(),
            unit: p.unit,
            base,
            amplitude,
            floor: p.range_lo,
            leak: None,
        }
    }

    /// Value at `t` since start; `noise` in [-1, 1).
    pub fn value_at(&self, t: Duration, noise: f64) -> f64 {
        let phase = t.as_secs_f64() / 600.0 * std::f64::consts::TAU;
        let mut v = self.base + self.amplitude * (phase.sin() + 0.2 * noise);
        if let Some(l) = &self.leak
            && t > l.start_after
        {
            v = (v + (t - l.start_after).as_secs_f64() * l.rise_per_s).min(l.max.max(v));
        }
        v.max(self.floor)
    }
}

/// Simulator settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOptions {
    /// Topic prefix; messages go to `<prefix>/<tag>`.
    pub topic_prefix: String,
    /// Publish period per point.
    pub period: Duration,
    /// QoS 0 or 1.
    pub qos: u8,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            topic_prefix: "parkguard/sim".into(),
            period: Duration::from_secs(1),
            qos: 1,
        }
    }
}

/// The JSON payload of one reading (shared with the benchmark).
pub fn json_payload(tag: &str, value: f64, unit: Unit, ts_ms: i64) -> Vec<u8> {
    let mut s = String::with_capacity(96);
    s.push_str("{\"tag\":");
    s.push_str(&serde_json::Value::String(tag.to_string()).to_string());
    s.push_str(&format!(
        ",\"value\":{value:.4},\"unit\":\"{}\",\"ts\":{ts_ms},\"quality\":\"good\"}}",
        unit.symbol()
    ));
    s.into_bytes()
}

/// The `[[mqtt_subscription]]` that reads what the simulator publishes.
pub fn sim_subscription(broker_id: &str, opts: &SimOptions) -> MqttSubscriptionConfig {
    MqttSubscriptionConfig {
        broker: broker_id.to_string(),
        topic: format!("{}/+", opts.topic_prefix),
        qos: opts.qos,
        format: PayloadFormat::Json,
        tag_segment: None,
        tag_field: Some("tag".into()),
        tag: None,
        tag_prefix: None,
        value_field: None,
        unit_field: Some("unit".into()),
        time_field: Some("ts".into()),
        quality_field: Some("quality".into()),
        readings_field: None,
        time_format: TimeFormat::EpochMs,
        unit: None,
    }
}

/// Publish readings of `points` every `opts.period` until `shutdown`. Reconnects on its own
/// (rumqttc's event loop is polled in a task with the shared back-off).
pub async fn run_simulator(
    broker: &MqttBroker,
    points: Vec<SimPoint>,
    opts: SimOptions,
    shutdown: CancellationToken,
) -> Result<(), MqttError> {
    let mut mo = mqtt_options(broker, &format!("{}-sim", broker.client_id))?;
    mo.set_clean_session(true);
    // Back-pressure: 1024 queued publishes; `publish().await` waits when full, which slows
    // the simulator to what the broker takes.
    let (client, mut el) = super::client::event_loop(mo, 1024);
    let stop = shutdown.clone();
    let (initial, max) = (broker.reconnect_initial, broker.reconnect_max);
    tokio::spawn(
        async move {
            let mut backoff = Backoff::new(initial, max, 11);
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = el.poll() => ev,
                };
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        backoff.reset();
                        info!("simulator connected");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let d = backoff.next_delay();
                        warn!(error = %e, retry_in_ms = d.as_millis() as u64, "simulator connection failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("mqtt_simulator")),
    );
    let qos = if opts.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(opts.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = start.elapsed();
        let ts = super::source::now().millis();
        for p in &points {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let noise = (rng >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let v = p.value_at(t, noise);
            let topic = format!("{}/{}", opts.topic_prefix, p.tag);
            let payload = json_payload(&p.tag, v, p.unit, ts);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = client.publish(topic, qos, false, payload) => {
                    if r.is_err() { return Ok(()); }
                }
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(())
}
