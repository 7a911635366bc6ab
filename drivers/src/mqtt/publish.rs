//! The publisher: JSON messages with QoS 1, optional retain; [`MqttPublisher::publish`]
//! resolves only when the broker's PUBACK arrived. Used by the notification outbox, which
//! keeps a message until `publish` returns `Ok` and retries otherwise (at least once).

use super::MqttError;
use super::client::mqtt_options;
use super::config::MqttBroker;
use crate::backoff::Backoff;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
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

/// A QoS 1 JSON publisher on its own connection (client id `<client_id>-pub`).
#[derive(Clone)]
pub struct MqttPublisher {
    client: AsyncClient,
    pending: Arc<std::sync::Mutex<Pending>>,
    timeout: Duration,
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
        let mut opts = mqtt_options(broker, &format!("{}-pub", broker.client_id))?;
        // The outbox is the durable queue; the connection keeps no session of its own.
        opts.set_clean_session(true);
        opts.set_inflight(100);
        let (client, mut el) = AsyncClient::new(opts, 256);
        let pending: Arc<std::sync::Mutex<Pending>> = Arc::default();
        let p = pending.clone();
        let mut backoff = Backoff::new(broker.reconnect_initial, broker.reconnect_max, 7);
        let span = tracing::info_span!("mqtt_publisher", broker = %broker.id);
        tokio::spawn(
            async move {
                loop {
                    let ev = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        ev = el.poll() => ev,
                    };
                    let retry = {
                    let mut pend = p.lock().unwrap_or_else(|e| e.into_inner());
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            backoff.reset();
                            info!("mqtt publisher connected");
                            None
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            // A retransmission after reconnect keeps its packet id and
                            // waiter; a new publish takes the oldest queued waiter.
                            if !pend.sent.contains_key(&pkid)
                                && let Some(w) = pend.queued.pop_front()
                            {
                                pend.sent.insert(pkid, w);
                            }
                            None
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            if let Some(w) = pend.sent.remove(&ack.pkid) {
                                let _ = w.send(Ok(()));
                            }
                            None
                        }
                        Ok(_) => None,
                        Err(e) => {
                            // Clean session: what was queued or in flight is dropped here,
                            // under the lock publishers queue under, and its waiters fail so
                            // that the outbox retries them.
                            el.clean();
                            el.pending.clear();
                            for w in pend.queued.drain(..) {
                                let _ = w.send(Err(MqttError::NotDelivered(e.to_string())));
                            }
                            for (_, w) in pend.sent.drain() {
                                let _ = w.send(Err(MqttError::NotDelivered(e.to_string())));
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
            .instrument(span),
        );
        Ok(MqttPublisher {
            client,
            pending,
            timeout,
        })
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
                    match self
                        .client
                        .try_publish(topic, QoS::AtLeastOnce, retain, payload.clone())
                    {
                        Ok(()) => {
                            if let Some(w) = waiter.take() {
                                pend.queued.push_back(w);
                            }
                            break;
                        }
                        Err(rumqttc::ClientError::TryRequest(_)) => {}
                        Err(e) => return Err(MqttError::NotDelivered(e.to_string())),
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
