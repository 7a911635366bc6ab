//! The publisher: JSON messages with QoS 1, optional retain; [`MqttPublisher::publish`]
//! resolves only when the broker's PUBACK arrived. Used by the notification outbox, which
//! keeps a message until `publish` returns `Ok` and retries otherwise (at least once).
//!
//! MQTT 3.1.1 or 5, as the broker's `protocol` says. Only MQTT 5 lets a broker refuse a
//! message it accepted on the wire: a PUBACK with a failure reason code (≥ 0x80: not
//! authorized, quota exceeded, payload format invalid …) is a failed delivery, returned as
//! an error (the outbox retries) and counted in [`MqttPublisher::rejected`]. (Over 3.1.1
//! mosquitto acknowledges a publish its ACL denies and drops it: nobody can tell.)
//! "No matching subscribers" (0x10) is a success: the broker took the message.

use super::MqttError;
use super::client::{mqtt_options, mqtt_options_v5};
use super::config::{MqttBroker, MqttProtocol};
use crate::backoff::Backoff;
use rumqttc::Outgoing;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

type Waiter = oneshot::Sender<Result<(), MqttError>>;

#[derive(Default)]
struct Pending {
    /// Waiters in request order, before rumqttc assigned a packet id.
    queued: VecDeque<Waiter>,
    /// Waiters by packet id, sent and waiting for PUBACK.
    sent: HashMap<u16, Waiter>,
}

/// What the publisher's task acts on, from either event loop.
enum PubEvent {
    Connected,
    /// A PUBLISH with this packet id went out.
    Sent(u16),
    /// Its PUBACK came: `Err` holds the MQTT 5 failure reason.
    Acked(u16, Result<(), String>),
    Other,
}

/// rumqttc's v4 or v5 event loop, seen by the publisher's task.
trait PubLoop: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<PubEvent, String>> + Send;
    /// Events rumqttc decoded but did not return because the connection broke in the same
    /// read (mosquitto closes the connection right after a refusing PUBACK).
    fn take_buffered(&mut self) -> Vec<PubEvent>;
    /// Drop the connection and everything queued or in flight (clean session: the outbox
    /// is the durable queue).
    fn discard(&mut self);
}

fn v4_event(ev: rumqttc::Event) -> PubEvent {
    use rumqttc::{Event, Packet};
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => PubEvent::Connected,
        Event::Outgoing(Outgoing::Publish(pkid)) => PubEvent::Sent(pkid),
        Event::Incoming(Packet::PubAck(ack)) => PubEvent::Acked(ack.pkid, Ok(())),
        _ => PubEvent::Other,
    }
}

fn v5_event(ev: rumqttc::v5::Event) -> PubEvent {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => PubEvent::Connected,
        Event::Outgoing(Outgoing::Publish(pkid)) => PubEvent::Sent(pkid),
        Event::Incoming(Packet::PubAck(ack)) => PubEvent::Acked(
            ack.pkid,
            match ack.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                reason => Err(match ack.properties.and_then(|p| p.reason_string) {
                    Some(text) => format!("broker refused the message: {reason:?} ({text})"),
                    None => format!("broker refused the message: {reason:?}"),
                }),
            },
        ),
        _ => PubEvent::Other,
    }
}

impl PubLoop for rumqttc::EventLoop {
    async fn next(&mut self) -> Result<PubEvent, String> {
        self.poll().await.map(v4_event).map_err(|e| e.to_string())
    }
    fn take_buffered(&mut self) -> Vec<PubEvent> {
        self.state.events.drain(..).map(v4_event).collect()
    }
    fn discard(&mut self) {
        self.clean();
        self.pending.clear();
    }
}

impl PubLoop for rumqttc::v5::EventLoop {
    async fn next(&mut self) -> Result<PubEvent, String> {
        self.poll().await.map(v5_event).map_err(|e| e.to_string())
    }
    fn take_buffered(&mut self) -> Vec<PubEvent> {
        self.state.events.drain(..).map(v5_event).collect()
    }
    fn discard(&mut self) {
        self.clean();
        self.pending.clear();
    }
}

#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Queue a QoS 1 publish; `Ok(false)`: the request queue is full.
    fn try_publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<bool, String> {
        let r = match self {
            Client::V4(c) => c.try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload),
            Client::V5(c) => {
                return match c.try_publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                ) {
                    Ok(()) => Ok(true),
                    Err(rumqttc::v5::ClientError::TryRequest(_)) => Ok(false),
                    Err(e) => Err(e.to_string()),
                };
            }
        };
        match r {
            Ok(()) => Ok(true),
            Err(rumqttc::ClientError::TryRequest(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A QoS 1 JSON publisher on its own connection (client id `<client_id>-pub`).
#[derive(Clone)]
pub struct MqttPublisher {
    client: Client,
    pending: Arc<std::sync::Mutex<Pending>>,
    timeout: Duration,
    rejected: Arc<AtomicU64>,
}

impl MqttPublisher {
    /// Connect to `broker` (in the background, with the shared back-off). `timeout` bounds
    /// each `publish` (e.g. 10 s); past it the caller retries.
    ///
    /// Back-pressure: at most 256 publishes are queued for the connection; further
    /// `publish` calls wait for room (bounded by `timeout`, then they fail and the caller
    /// retries).
    pub fn spawn(
        broker: &MqttBroker,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<MqttPublisher, MqttError> {
        let client_id = format!("{}-pub", broker.client_id);
        let pending: Arc<std::sync::Mutex<Pending>> = Arc::default();
        let rejected: Arc<AtomicU64> = Arc::default();
        let backoff = Backoff::new(broker.reconnect_initial, broker.reconnect_max, 7);
        let span = tracing::info_span!("mqtt_publisher", broker = %broker.id);
        // The outbox is the durable queue; the connection keeps no session of its own.
        let client = match broker.protocol {
            MqttProtocol::V311 => {
                let mut opts = mqtt_options(broker, &client_id)?;
                opts.set_clean_session(true);
                opts.set_inflight(100);
                let (client, el) = super::client::event_loop(opts, 256);
                let task = run(el, pending.clone(), rejected.clone(), backoff, shutdown);
                tokio::spawn(task.instrument(span));
                Client::V4(client)
            }
            MqttProtocol::V5 => {
                let mut opts = mqtt_options_v5(broker, &client_id)?;
                opts.set_clean_start(true);
                opts.set_session_expiry_interval(None);
                opts.set_outgoing_inflight_upper_limit(100);
                let (client, el) = rumqttc::v5::AsyncClient::new(opts, 256);
                let task = run(el, pending.clone(), rejected.clone(), backoff, shutdown);
                tokio::spawn(task.instrument(span));
                Client::V5(client)
            }
        };
        Ok(MqttPublisher {
            client,
            pending,
            timeout,
            rejected,
        })
    }

    /// Messages the broker refused with an MQTT 5 failure reason code in its PUBACK.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }

    /// Publish `body` as JSON with QoS 1; `Ok` once the broker acknowledged it.
    pub async fn publish<T: serde::Serialize>(
        &self,
        topic: &str,
        body: &T,
        retain: bool,
    ) -> Result<(), MqttError> {
        let payload = serde_json::to_vec(body).map_err(|e| MqttError::Encode(e.to_string()))?;
        self.publish_bytes(topic, payload, retain).await
    }

    /// Publish raw bytes with QoS 1; `Ok` once the broker acknowledged it.
    pub async fn publish_bytes(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), MqttError> {
        let (tx, rx) = oneshot::channel();
        let mut waiter = Some(tx);
        let work = async {
            loop {
                {
                    // Waiter order must equal request order: rumqttc reports packet ids in
                    // the order it takes requests, and the event task takes this lock
                    // before it looks at a packet id.
                    let mut pend = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    match self.client.try_publish(topic, retain, payload.clone()) {
                        Ok(true) => {
                            if let Some(w) = waiter.take() {
                                pend.queued.push_back(w);
                            }
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => return Err(MqttError::NotDelivered(e)),
                    }
                }
                // The request queue is full: wait for room (bounded by the timeout).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            rx.await
                .unwrap_or_else(|_| Err(MqttError::NotDelivered("publisher stopped".into())))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(MqttError::NotDelivered(format!(
                    "no PUBACK within {:?}",
                    self.timeout
                )))
            })
    }
}

/// The publisher's task: match packet ids to waiters, resolve them on PUBACK, fail them
/// when the connection breaks, reconnect after the back-off.
async fn run<L: PubLoop>(
    mut el: L,
    p: Arc<std::sync::Mutex<Pending>>,
    rejected: Arc<AtomicU64>,
    mut backoff: Backoff,
    shutdown: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            ev = el.next() => ev,
        };
        let retry = {
            let mut pend = p.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                Ok(PubEvent::Connected) => {
                    backoff.reset();
                    info!("mqtt publisher connected");
                    None
                }
                Ok(ev) => {
                    apply(&mut pend, &rejected, ev);
                    None
                }
                Err(e) => {
                    // Acknowledgements read just before the connection broke still count.
                    for ev in el.take_buffered() {
                        apply(&mut pend, &rejected, ev);
                    }
                    // Clean session: what was queued or in flight is dropped here, under
                    // the lock publishers queue under, and its waiters fail so that the
                    // outbox retries them.
                    el.discard();
                    for w in pend.queued.drain(..) {
                        let _ = w.send(Err(MqttError::NotDelivered(e.clone())));
                    }
                    for (_, w) in pend.sent.drain() {
                        let _ = w.send(Err(MqttError::NotDelivered(e.clone())));
                    }
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt publisher connection failed");
                    Some(delay)
                }
            }
        };
        if let Some(delay) = retry {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
    let mut pend = p.lock().unwrap_or_else(|e| e.into_inner());
    for w in pend.queued.drain(..) {
        let _ = w.send(Err(MqttError::NotDelivered("shut down".into())));
    }
    for (_, w) in pend.sent.drain() {
        let _ = w.send(Err(MqttError::NotDelivered("shut down".into())));
    }
}

/// Match a sent packet id to its waiter, or resolve the waiter of a PUBACK.
fn apply(pend: &mut Pending, rejected: &AtomicU64, ev: PubEvent) {
    match ev {
        PubEvent::Sent(pkid) => {
            // A retransmission after reconnect keeps its packet id and waiter; a new
            // publish takes the oldest queued waiter.
            if !pend.sent.contains_key(&pkid)
                && let Some(w) = pend.queued.pop_front()
            {
                pend.sent.insert(pkid, w);
            }
        }
        PubEvent::Acked(pkid, result) => {
            if let Err(reason) = &result {
                rejected.fetch_add(1, Relaxed);
                warn!(pkid, reason = %reason, "mqtt publish refused by the broker");
            }
            if let Some(w) = pend.sent.remove(&pkid) {
                let _ = w.send(result.map_err(MqttError::NotDelivered));
            }
        }
        PubEvent::Connected | PubEvent::Other => {}
    }
}
