//! The subscriber's view of one MQTT connection, whatever the protocol version.
//!
//! rumqttc has two separate event loops, `rumqttc` (MQTT 3.1.1) and `rumqttc::v5`, with
//! their own packet types. [`Connection`] reduces both to the few events the subscriber
//! acts on, so that its logic — mapping, batching, acknowledging only after durability,
//! re-subscribing, back-off — exists once, in [`super::source`]. [`V4`] and [`V5`] are the
//! two adapters; neither holds any policy.
//!
//! Acknowledgements differ: on 3.1.1 the PUBACKs of a settled batch are written straight
//! into the socket's write buffer and flushed in one write; rumqttc's v5 event loop keeps
//! its socket private, so there they go through its request channel (bounded; what does
//! not fit waits in [`V5`]'s own queue and is moved on at each poll), still in order.

use super::config::Subscription;
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;

/// An event of the connection, reduced to what the subscriber acts on.
#[derive(Debug)]
pub enum Incoming {
    /// Connected. `session_present`: the broker resumed the session (subscriptions kept).
    ConnAck {
        /// The broker still had the session.
        session_present: bool,
    },
    /// SUBACK: the broker refused these filters (index in subscribe order, reason).
    SubAck(Vec<(usize, String)>),
    /// An application message. `pkid` is set when it must be acknowledged (QoS ≥ 1).
    Publish {
        /// Topic name.
        topic: String,
        /// Payload.
        payload: Bytes,
        /// Packet id to acknowledge.
        pkid: Option<u16>,
    },
    /// Anything else (outgoing packets, pings, acks of our own requests).
    Other,
}

/// One MQTT client connection: an event loop plus its request handle.
pub trait Connection: Send + 'static {
    /// The next event. An error means the connection is gone; the next call reconnects.
    /// Cancel-safe as far as rumqttc's `poll` is (see the linger note in `source`).
    fn poll(&mut self) -> impl Future<Output = Result<Incoming, String>> + Send;
    /// Packets already read and decoded wait in the event loop (the next poll reads no
    /// socket).
    fn has_buffered(&self) -> bool;
    /// Queue one SUBSCRIBE for all `subs` (QoS 0 or 1 each); sent by the next polls.
    fn subscribe(&self, subs: &[Subscription]) -> Result<(), String>;
    /// Queue a QoS 0 publish (a Sparkplug rebirth request); fails when the queue is full.
    fn publish_qos0(&self, topic: String, payload: Vec<u8>) -> Result<(), String>;
    /// Acknowledge these QoS 1 packet ids, in this order; returns how many were written
    /// (v4) or queued for writing (v5), 0 when there is no connection. `Err`: the
    /// connection broke and was dropped (the broker redelivers what was not acknowledged).
    fn ack(&mut self, pkids: Vec<u16>) -> impl Future<Output = Result<usize, String>> + Send;
    /// Drop the connection now (the next poll reconnects); acks not yet written are lost,
    /// so the broker delivers those messages again.
    fn drop_connection(&mut self);
    /// At shutdown: write the acknowledgements still queued, send DISCONNECT and wait
    /// (at most `within`) until the broker closed the connection. The broker reads a
    /// connection in order, so it has then taken every acknowledgement: closing the socket
    /// alone is not enough (mosquitto may not have read the last PUBACKs when a restarted
    /// parkguard takes the session over, and delivers those messages again). Messages
    /// arriving meanwhile are neither handed over nor acknowledged: they come again.
    fn finish(&mut self, within: std::time::Duration) -> impl Future<Output = ()> + Send;
}

/// Poll `conn` until the broker closes the connection, or `within` passed.
async fn drain_until_closed<C: Connection>(conn: &mut C, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, conn.poll()).await {}
}

/// MQTT 3.1.1 (`rumqttc`'s v4 event loop).
pub struct V4 {
    /// Request handle.
    pub client: rumqttc::AsyncClient,
    /// Event loop.
    pub el: rumqttc::EventLoop,
}

impl Connection for V4 {
    async fn poll(&mut self) -> Result<Incoming, String> {
        use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
        match self.el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => Ok(Incoming::Publish {
                pkid: (p.qos != QoS::AtMostOnce).then_some(p.pkid),
                topic: p.topic,
                payload: p.payload,
            }),
            Ok(Event::Incoming(Packet::ConnAck(a))) => Ok(Incoming::ConnAck {
                session_present: a.session_present,
            }),
            Ok(Event::Incoming(Packet::SubAck(a))) => Ok(Incoming::SubAck(
                a.return_codes
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                    .map(|(i, _)| (i, "failure".to_string()))
                    .collect(),
            )),
            Ok(_) => Ok(Incoming::Other),
            Err(e) => Err(e.to_string()),
        }
    }

    fn has_buffered(&self) -> bool {
        !self.el.state.events.is_empty()
    }

    fn subscribe(&self, subs: &[Subscription]) -> Result<(), String> {
        let filters = subs.iter().map(|s| {
            let qos = if s.qos == 0 {
                rumqttc::QoS::AtMostOnce
            } else {
                rumqttc::QoS::AtLeastOnce
            };
            rumqttc::SubscribeFilter::new(s.filter.clone(), qos)
        });
        self.client
            .try_subscribe_many(filters)
            .map_err(|e| e.to_string())
    }

    fn publish_qos0(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .try_publish(topic, rumqttc::QoS::AtMostOnce, false, payload)
            .map_err(|e| e.to_string())
    }

    /// PUBACKs go straight into the socket's write buffer, flushed once for all of them.
    async fn ack(&mut self, pkids: Vec<u16>) -> Result<usize, String> {
        let el = &mut self.el;
        let Some(net) = el.network.as_mut() else {
            return Ok(0);
        };
        let n = pkids.len();
        let mut result = Ok(());
        for pkid in pkids {
            match el
                .state
                .handle_outgoing_packet(rumqttc::Request::PubAck(rumqttc::PubAck::new(pkid)))
            {
                Ok(Some(packet)) => {
                    if let Err(e) = net.write(packet).await {
                        result = Err(e);
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = net.flush().await;
        }
        result.map(|()| n).map_err(|e| {
            el.clean();
            e.to_string()
        })
    }

    fn drop_connection(&mut self) {
        self.el.clean();
    }

    async fn finish(&mut self, within: std::time::Duration) {
        // Acks are written when issued; only a live connection is closed.
        if self.el.network.is_some() && self.client.try_disconnect().is_ok() {
            drain_until_closed(self, within).await;
        }
    }
}

/// MQTT 5 (`rumqttc::v5`).
pub struct V5 {
    /// Request handle.
    pub client: rumqttc::v5::AsyncClient,
    /// Event loop.
    pub el: rumqttc::v5::EventLoop,
    /// PUBACKs that did not fit into the request channel yet, in order. Bounded by the
    /// broker's in-flight window (it sends no more unacknowledged QoS 1 messages).
    unsent: VecDeque<u16>,
    /// Connected (CONNACK seen, no error since).
    connected: bool,
}

impl V5 {
    /// Wrap a v5 client and its event loop (built with manual acks).
    pub fn new(client: rumqttc::v5::AsyncClient, el: rumqttc::v5::EventLoop) -> Self {
        Self {
            client,
            el,
            unsent: VecDeque::new(),
            connected: false,
        }
    }

    /// Move waiting PUBACKs into the request channel while it has room.
    fn queue_acks(&mut self) {
        use rumqttc::v5::mqttbytes::{QoS, v5::Publish};
        while let Some(&pkid) = self.unsent.front() {
            // `try_ack` takes the PUBLISH it answers; only its QoS and packet id matter.
            let p = Publish {
                qos: QoS::AtLeastOnce,
                pkid,
                ..Publish::default()
            };
            if self.client.try_ack(&p).is_err() {
                break;
            }
            self.unsent.pop_front();
        }
    }
}

impl Connection for V5 {
    async fn poll(&mut self) -> Result<Incoming, String> {
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        self.queue_acks();
        match self.el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => Ok(Incoming::Publish {
                pkid: (p.qos != QoS::AtMostOnce).then_some(p.pkid),
                // MQTT requires UTF-8 topics; a broker that breaks that gets its topic
                // shown with replacement characters (and matched by no filter: counted).
                topic: match String::from_utf8(p.topic.to_vec()) {
                    Ok(t) => t,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                },
                payload: p.payload,
            }),
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                self.connected = true;
                Ok(Incoming::ConnAck {
                    session_present: a.session_present,
                })
            }
            Ok(Event::Incoming(Packet::SubAck(a))) => Ok(Incoming::SubAck(
                a.return_codes
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !matches!(c, SubscribeReasonCode::Success(_)))
                    .map(|(i, c)| (i, format!("{c:?}")))
                    .collect(),
            )),
            Ok(_) => Ok(Incoming::Other),
            Err(e) => {
                // rumqttc dropped the PUBACKs still in its channel; these go too.
                self.unsent.clear();
                self.connected = false;
                Err(e.to_string())
            }
        }
    }

    fn has_buffered(&self) -> bool {
        !self.el.state.events.is_empty()
    }

    fn subscribe(&self, subs: &[Subscription]) -> Result<(), String> {
        use rumqttc::v5::mqttbytes::{QoS, v5::Filter};
        let filters = subs.iter().map(|s| {
            let qos = if s.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            Filter::new(s.filter.clone(), qos)
        });
        self.client
            .try_subscribe_many(filters)
            .map_err(|e| e.to_string())
    }

    fn publish_qos0(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .try_publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                false,
                payload,
            )
            .map_err(|e| e.to_string())
    }

    /// Queued in order; the event loop writes them as it polls.
    async fn ack(&mut self, pkids: Vec<u16>) -> Result<usize, String> {
        let n = pkids.len();
        self.unsent.extend(pkids);
        self.queue_acks();
        Ok(n)
    }

    fn drop_connection(&mut self) {
        self.unsent.clear();
        self.connected = false;
        self.el.clean();
    }

    async fn finish(&mut self, within: std::time::Duration) {
        // The DISCONNECT queues behind the PUBACKs in rumqttc's request channel (those
        // still in `unsent` are moved on at each poll, before it).
        self.queue_acks();
        if !self.connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + within;
        // Each poll moves waiting PUBACKs on; the DISCONNECT goes in once they all are
        // and the channel has room.
        while !self.unsent.is_empty() || self.client.try_disconnect().is_err() {
            match tokio::time::timeout_at(deadline, self.poll()).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
        drain_until_closed(self, within).await;
    }
}
