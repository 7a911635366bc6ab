//! The subscriber: one task per broker that keeps a persistent MQTT session, maps every
//! message onto points and hands the readings to the engine.
//!
//! Delivery guarantees:
//! - **Acknowledge after hand-over.** QoS 1 messages are acknowledged (manual acks) only
//!   after their readings were accepted by the engine channel, so a crash between receipt
//!   and hand-over leaves the message unacknowledged and the broker delivers it again.
//!   Messages that give no reading (rejected, unknown tag) are acknowledged at once: they
//!   are counted and listed in [`MqttStats`], and retrying them cannot help.
//! - **Persistent session.** With `clean_session = false` the broker keeps the
//!   subscriptions and queues QoS 1 messages while parkguard is away. parkguard subscribes
//!   on its first connect and again whenever the broker answers `session_present = false`.
//! - **Reconnect** with the shared [`Backoff`] (rumqttc has none); a source never returns
//!   on a transport fault, only on shutdown or when the engine channel is closed.
//!
//! Routing: a message goes to the first subscription (in config order) whose filter
//! matches its topic; overlapping filters are allowed, the earlier one wins.
//!
//! Ordering and duplicates: every reading is forwarded (storage wants late data too), and
//! readings older than the newest one of their point are counted in
//! [`MqttStats::out_of_order`]. **The engine must not move a point's live value backwards:
//! it ignores, for the live state, any reading whose `source_time` is older than the newest
//! it has for that point.** QoS 1 redeliveries are then harmless: a duplicate has the same
//! `source_time` and value as the reading it repeats.
//!
//! Back-pressure: the engine channel is bounded. When it is full the subscriber waits; it
//! reads nothing more from the socket meanwhile, so TCP flow control and the broker's
//! queue hold the backlog (QoS 1 messages stay unacknowledged, none is lost). A wait longer
//! than 1.5 × keep-alive makes the broker drop the connection; the subscriber reconnects
//! and the session resumes.

use super::MqttError;
use super::client::mqtt_options;
use super::config::{MqttBroker, Subscription, topic_matches};
use super::decode::{decode, resolve};
use super::sparkplug::SparkplugState;
use super::stats::MqttStats;
use crate::backoff::Backoff;
use parkguard_rules::{PointTable, Reading, Timestamp};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, PubAck, QoS, Request, SubscribeFilter};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

/// Readings per hand-over at most (a batch is handed over earlier whenever the messages
/// already read from the socket are used up).
const MAX_BATCH: usize = 4096;
/// Initial capacity of a batch: a socket read yields about 10 packets (rumqttc reads at
/// most 10 per poll), so a small vector that grows rarely beats a large one per hand-over.
const BATCH_CAPACITY: usize = 32;
/// A batch of at least this many messages is handed over as soon as the socket has no
/// more decoded packets; smaller ones linger.
const FLUSH_MIN: usize = 256;
/// Longest wait of a small batch for more messages before hand-over (latency added to a
/// lone reading; an alarm path budget is seconds).
const LINGER: Duration = Duration::from_millis(2);

/// Shortest interval between two rebirth requests to the same Sparkplug edge node.
const REBIRTH_INTERVAL: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    u64::try_from(now().millis()).unwrap_or(0)
}

/// Wall-clock now as a [`Timestamp`].
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn seed(s: &str) -> u64 {
    // FNV-1a: spreads the back-off jitter of different brokers.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Start the subscriber of `broker` for `subscriptions` (those whose `broker` is its id).
///
/// Readings go to `tx` in batches, converted into each point's unit. Fails at once only
/// when the options cannot be built (password variable or file missing, TLS files
/// unreadable); every later fault is retried.
pub fn spawn_subscriber(
    broker: MqttBroker,
    subscriptions: Vec<Subscription>,
    table: Arc<PointTable>,
    tx: mpsc::Sender<Vec<Reading>>,
    stats: Arc<MqttStats>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, MqttError> {
    let subscriptions: Vec<Subscription> = subscriptions
        .into_iter()
        .filter(|s| s.broker == broker.id)
        .collect();
    if subscriptions.is_empty() {
        return Err(MqttError::NoSubscriptions(broker.id.clone()));
    }
    let mut opts = mqtt_options(&broker, &broker.client_id)?;
    opts.set_manual_acks(true);
    // Requests are only subscribes, Sparkplug rebirth requests and the final disconnect:
    // acks bypass the channel. Full → a rebirth request is skipped and logged (retried on
    // the next unknown alias after REBIRTH_INTERVAL).
    let (client, eventloop) = AsyncClient::new(opts, 16);
    let span = tracing::info_span!("mqtt_subscriber", broker = %broker.id);
    let mut sub = Subscriber {
        spb: subscriptions
            .iter()
            .map(|_| SparkplugState::default())
            .collect(),
        newest: vec![i64::MIN; table.len()],
        broker,
        subscriptions,
        table,
        tx,
        stats,
        batch: Vec::with_capacity(BATCH_CAPACITY),
        to_ack: Vec::new(),
        unflushed: 0,
        rebirths: Default::default(),
    };
    Ok(tokio::spawn(
        async move { sub.run(client, eventloop, shutdown).await }.instrument(span),
    ))
}

struct Subscriber {
    broker: MqttBroker,
    subscriptions: Vec<Subscription>,
    spb: Vec<SparkplugState>,
    table: Arc<PointTable>,
    tx: mpsc::Sender<Vec<Reading>>,
    stats: Arc<MqttStats>,
    newest: Vec<i64>,
    batch: Vec<Reading>,
    to_ack: Vec<u16>,
    /// Messages received since the last hand-over.
    unflushed: usize,
    /// When each Sparkplug edge node was last asked to rebirth.
    rebirths: std::collections::HashMap<String, std::time::Instant>,
}

enum Flow {
    Continue,
    Stop,
}

impl Subscriber {
    async fn run(&mut self, client: AsyncClient, mut el: EventLoop, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(
            self.broker.reconnect_initial,
            self.broker.reconnect_max,
            seed(&self.broker.client_id),
        );
        let mut subscribed_once = false;
        // Linger: a small batch waits up to LINGER for more messages before hand-over.
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut lingering = false;
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = &mut linger, if lingering => {
                    // Dropping the pending `poll()` here is safe in rumqttc 0.25: it only
                    // awaits the socket read (a buffered codec) or a flush of already
                    // encoded bytes; events already decoded stay in `state.events`.
                    lingering = false;
                    if let Flow::Stop = self.flush(&mut el, &shutdown).await {
                        break;
                    }
                    continue;
                }
                ev = el.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.stats.connected.store(true, Relaxed);
                    self.stats.connects.fetch_add(1, Relaxed);
                    backoff.reset();
                    info!(
                        host = %self.broker.host,
                        port = self.broker.port,
                        session_present = ack.session_present,
                        "mqtt connected"
                    );
                    if !ack.session_present || !subscribed_once {
                        if subscribed_once && !self.broker.clean_session {
                            self.stats.sessions_lost.fetch_add(1, Relaxed);
                            warn!("broker lost the session; subscribing again");
                        }
                        let filters = self.subscriptions.iter().map(|s| {
                            let qos = if s.qos == 0 {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            };
                            SubscribeFilter::new(s.filter.clone(), qos)
                        });
                        if let Err(e) = client.try_subscribe_many(filters) {
                            warn!(error = %e, "cannot queue mqtt subscribe");
                        }
                        subscribed_once = true;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    for (i, code) in ack.return_codes.iter().enumerate() {
                        if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                            let filter = self.subscriptions.get(i).map(|s| s.filter.as_str());
                            tracing::error!(
                                filter,
                                "broker refused the subscription (check its ACL)"
                            );
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.on_publish(&p);
                    self.request_rebirths(&client);
                }
                Ok(_) => {}
                Err(e) => {
                    self.stats.connected.store(false, Relaxed);
                    self.stats.connection_errors.fetch_add(1, Relaxed);
                    // Readings already decoded are good: hand them over. Their acks would go
                    // to a dead connection; the broker redelivers those messages.
                    self.to_ack.clear();
                    lingering = false;
                    if let Flow::Stop = self.flush(&mut el, &shutdown).await {
                        break;
                    }
                    let delay = backoff.next_delay();
                    warn!(
                        error = %e,
                        attempt = backoff.attempts(),
                        retry_in_ms = delay.as_millis() as u64,
                        "mqtt connection failed"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            if self.unflushed == 0 {
                continue;
            }
            // Hand over when the batch is full, or when the packets already read are used
            // up and the batch is big enough; a small batch lingers (at most LINGER) so that
            // one hand-over and one acknowledgement write serve many messages.
            let drained = el.state.events.is_empty();
            if self.batch.len() >= MAX_BATCH || (drained && self.unflushed >= FLUSH_MIN) {
                lingering = false;
                if let Flow::Stop = self.flush(&mut el, &shutdown).await {
                    break;
                }
            } else if !lingering {
                linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                lingering = true;
            }
        }
        self.stats.connected.store(false, Relaxed);
        let _ = client.try_disconnect();
        info!("mqtt subscriber stopped");
    }

    fn on_publish(&mut self, p: &rumqttc::Publish) {
        self.stats.messages.fetch_add(1, Relaxed);
        self.unflushed += 1;
        if p.qos != QoS::AtMostOnce {
            self.to_ack.push(p.pkid);
        }
        let topic = p.topic.as_str();
        if p.payload.len() > self.broker.max_payload_size {
            self.stats.problem(
                &self.broker.id,
                topic,
                "oversize",
                &format!(
                    "payload of {} bytes is over max_payload_size ({})",
                    p.payload.len(),
                    self.broker.max_payload_size
                ),
                None,
            );
            return;
        }
        let Some(i) = self
            .subscriptions
            .iter()
            .position(|s| topic_matches(&s.filter, topic))
        else {
            self.stats.problem(
                &self.broker.id,
                topic,
                "no_subscription",
                "no configured subscription matches this topic",
                None,
            );
            return;
        };
        let receive_time = now();
        let decoded = decode(
            &self.subscriptions[i],
            &mut self.spb[i],
            topic,
            &p.payload,
            receive_time,
        );
        for e in &decoded.errors {
            self.stats
                .problem(&self.broker.id, topic, e.reason(), &e.to_string(), None);
        }
        for raw in &decoded.readings {
            match resolve(&self.table, raw, receive_time) {
                Ok(r) => {
                    let newest = &mut self.newest[r.point.index()];
                    if r.source_time.0 < *newest {
                        self.stats.out_of_order.fetch_add(1, Relaxed);
                    } else {
                        *newest = r.source_time.0;
                    }
                    self.batch.push(r);
                }
                Err(rej) => {
                    let tag = match &rej {
                        super::decode::Reject::UnknownTag(t) => Some(t.as_str()),
                        _ => None,
                    };
                    self.stats
                        .problem(&self.broker.id, topic, rej.reason(), &rej.to_string(), tag);
                }
            }
        }
    }

    /// Ask Sparkplug edge nodes whose aliases are unknown (parkguard started after their
    /// birth) to publish their births again; at most once per node per REBIRTH_INTERVAL.
    fn request_rebirths(&mut self, client: &AsyncClient) {
        let now = std::time::Instant::now();
        for st in &mut self.spb {
            for node in st.take_rebirth_requests() {
                if self
                    .rebirths
                    .get(&node)
                    .is_some_and(|t| now.duration_since(*t) < REBIRTH_INTERVAL)
                {
                    continue;
                }
                let Some((group, edge)) = node.split_once('/') else {
                    continue;
                };
                let topic = format!("spBv1.0/{group}/NCMD/{edge}");
                let payload = super::sparkplug::rebirth_request(now_ms());
                match client.try_publish(topic, QoS::AtMostOnce, false, payload) {
                    Ok(()) => info!(node = %node, "sparkplug rebirth requested"),
                    Err(e) => warn!(node = %node, error = %e, "cannot request sparkplug rebirth"),
                }
                if self.rebirths.len() > 10_000 {
                    self.rebirths.clear();
                }
                self.rebirths.insert(node, now);
            }
        }
    }

    /// Hand the batch to the engine, then acknowledge the messages it came from.
    async fn flush(&mut self, el: &mut EventLoop, shutdown: &CancellationToken) -> Flow {
        self.unflushed = 0;
        if !self.batch.is_empty() {
            let n = self.batch.len() as u64;
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_CAPACITY));
            let sent = tokio::select! {
                biased;
                r = self.tx.send(batch) => r.is_ok(),
                // Shutting down: the unacknowledged messages will be delivered again.
                _ = shutdown.cancelled() => return Flow::Stop,
            };
            if !sent {
                warn!("engine channel closed; mqtt subscriber stops");
                return Flow::Stop;
            }
            self.stats.readings.fetch_add(n, Relaxed);
        }
        if self.to_ack.is_empty() {
            return Flow::Continue;
        }
        let Some(net) = el.network.as_mut() else {
            self.to_ack.clear();
            return Flow::Continue;
        };
        let n = self.to_ack.len() as u64;
        let mut result = Ok(());
        for pkid in self.to_ack.drain(..) {
            match el
                .state
                .handle_outgoing_packet(Request::PubAck(PubAck::new(pkid)))
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
        match result {
            Ok(()) => {
                self.stats.acked.fetch_add(n, Relaxed);
            }
            Err(e) => {
                // The connection broke: drop it; the next poll reconnects and the broker
                // redelivers what was not acknowledged.
                self.to_ack.clear();
                warn!(error = %e, "mqtt acknowledgement failed; reconnecting");
                self.stats.connected.store(false, Relaxed);
                self.stats.connection_errors.fetch_add(1, Relaxed);
                el.clean();
            }
        }
        Flow::Continue
    }
}
