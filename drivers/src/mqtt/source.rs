//! The subscriber: one task per broker that keeps a persistent MQTT session, maps every
//! message onto points and hands the readings to the engine.
//!
//! Delivery guarantees:
//! - **Acknowledge when durable.** QoS 1 messages are acknowledged (manual acks) only
//!   once their readings are safe, as the [`Handover`] says: with a plain
//!   `mpsc::Sender<Vec<Reading>>` that is when the channel accepted them; with a
//!   `mpsc::Sender<DurableBatch>` (what the daemon uses) it is when the receiver
//!   signalled the batch's `done` — after the spool append and its fsync. A crash before
//!   that leaves the messages unacknowledged and the broker delivers them again. The
//!   subscriber does not wait for the signal: it keeps reading, and PUBACKs go out in
//!   the order the PUBLISH packets came (MQTT 3.1.1 §4.6) as their batches become
//!   durable. If a batch cannot be made durable (`done` dropped: disk full, spool error),
//!   nothing of it or after it is acknowledged; the subscriber counts it
//!   ([`MqttStats::not_durable`]), drops the connection and reconnects after the back-off,
//!   so the broker redelivers every unacknowledged message (persistent session).
//!   The broker's limit of unacknowledged messages in flight per client (mosquitto
//!   `max_inflight_messages`, default 20) bounds throughput to that many messages per
//!   spool fsync: raise it on the park's broker.
//!   Messages that give no reading (rejected, unknown tag) are acknowledged in turn, with
//!   no wait: they are counted and listed in [`MqttStats`], and retrying them cannot help.
//! - **Persistent session.** With `clean_session = false` the broker keeps the
//!   subscriptions and queues QoS 1 messages while parkguard is away. parkguard subscribes
//!   on its first connect and again whenever the broker answers `session_present = false`.
//! - **Reconnect** with the shared [`Backoff`] (rumqttc has none); a source never returns
//!   on a transport fault, only on shutdown or when the engine channel is closed.
//! - **MQTT 3.1.1 and 5** behave the same: the logic here runs over a `Connection`
//!   (`super::conn`), rumqttc's v4 or v5 event loop as the broker's `protocol` says. With
//!   MQTT 5 a persistent session is `clean_start = false` plus a session expiry interval.
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
use super::client::{mqtt_options, mqtt_options_v5};
use super::config::{MqttBroker, MqttProtocol, Subscription, topic_matches};
use super::conn::{Connection, Incoming, V4, V5};
use super::decode::{Decoded, decode_into, resolve};
use super::sparkplug::SparkplugState;
use super::stats::MqttStats;
use crate::backoff::Backoff;
use parkguard_rules::{PointTable, Quality, Reading, Timestamp};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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
const LINGER: Duration = Duration::from_millis(1);
/// A dense stream: this many messages read within one linger. The subscriber then stops
/// reading the socket until the linger ends and takes what arrived meanwhile in one read,
/// instead of waking for nearly every packet (the broker writes one TCP segment per
/// message). From about 16,000 messages/s; an even 5,000/s (5 per linger) is not paced,
/// nor is a stream with QoS 1 messages (acknowledgements are never held back by it).
/// A message arriving during the pause is read up to LINGER later and handed over at the
/// next read that finds the socket empty (or when its own linger ends): at most two lingers
/// in all (`tests::a_dense_stream_is_read_in_chunks_not_per_message`). mqtt_bench, QoS 0
/// at ~100,000 messages/s: 9.99 → 3.59 ms of CPU per 1,000 messages.
const PACE_MIN: usize = 16;

/// Await `f`, noting in `waited` whether it had to wait (returned `Pending` at least once):
/// a socket read that waited has used up everything the kernel held.
async fn noting_wait<F: std::future::Future>(f: F, waited: &mut bool) -> F::Output {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        let r = f.as_mut().poll(cx);
        if r.is_pending() {
            *waited = true;
        }
        r
    })
    .await
}

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

/// A batch of readings whose QoS 1 messages are acknowledged only when `done` is sent.
/// Dropping `done` unsent means "not stored": the messages stay unacknowledged.
#[derive(Debug)]
pub struct DurableBatch {
    /// The readings, converted into each point's unit.
    pub readings: Vec<Reading>,
    /// Send `()` once the readings are durable (spool append + fsync policy).
    pub done: oneshot::Sender<()>,
}

/// The hand-over was refused: the receiver is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoverClosed;

/// Where the subscriber hands its readings, and when their messages may be acknowledged.
pub trait Handover: Send + 'static {
    /// Hand `batch` over; `acks` QoS 1 messages wait for its acknowledgement (so a
    /// receiver that groups batches into one fsync knows how many messages it holds back
    /// from the broker's in-flight window). `Ok(None)`: acknowledge now; `Ok(Some(rx))`:
    /// acknowledge when `rx` resolves with `Ok`, never if it fails.
    fn hand_over(
        &self,
        batch: Vec<Reading>,
        acks: usize,
    ) -> impl Future<Output = Result<Option<oneshot::Receiver<()>>, HandoverClosed>> + Send;
}

impl Handover for mpsc::Sender<Vec<Reading>> {
    async fn hand_over(
        &self,
        batch: Vec<Reading>,
        _acks: usize,
    ) -> Result<Option<oneshot::Receiver<()>>, HandoverClosed> {
        self.send(batch).await.map_err(|_| HandoverClosed)?;
        Ok(None)
    }
}

impl Handover for mpsc::Sender<DurableBatch> {
    async fn hand_over(
        &self,
        readings: Vec<Reading>,
        _acks: usize,
    ) -> Result<Option<oneshot::Receiver<()>>, HandoverClosed> {
        let (done, rx) = oneshot::channel();
        self.send(DurableBatch { readings, done })
            .await
            .map_err(|_| HandoverClosed)?;
        Ok(Some(rx))
    }
}

/// Acknowledgements waiting for their batch to become durable, in PUBLISH order.
struct PendingAck {
    /// `None`: nothing to wait for (a batch without readings), ack in turn.
    done: Option<oneshot::Receiver<()>>,
    pkids: Vec<u16>,
}

/// Wait until the oldest pending batch is settled: true = durable (or nothing to wait
/// for), false = it will never be.
async fn front_settled(pending: &mut std::collections::VecDeque<PendingAck>) -> bool {
    match pending.front_mut().and_then(|p| p.done.as_mut()) {
        Some(rx) => rx.await.is_ok(),
        None => true,
    }
}

/// Start the subscriber of `broker` for `subscriptions` (those whose `broker` is its id).
///
/// Readings go to `tx` in batches, converted into each point's unit; QoS 1 messages are
/// acknowledged once `tx` accepted them. Fails at once only when the options cannot
/// be built (password variable or file missing, TLS files unreadable); every later fault
/// is retried. The daemon uses [`spawn_subscriber_with`] and a [`DurableBatch`] channel.
pub fn spawn_subscriber(
    broker: MqttBroker,
    subscriptions: Vec<Subscription>,
    table: Arc<PointTable>,
    tx: mpsc::Sender<Vec<Reading>>,
    stats: Arc<MqttStats>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, MqttError> {
    spawn_subscriber_with(broker, subscriptions, table, tx, stats, shutdown)
}

/// [`spawn_subscriber`] with any [`Handover`]: with `mpsc::Sender<DurableBatch>`, QoS 1
/// messages are acknowledged only once the receiver sent the batch's `done`.
pub fn spawn_subscriber_with<H: Handover>(
    broker: MqttBroker,
    subscriptions: Vec<Subscription>,
    table: Arc<PointTable>,
    tx: H,
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
        decoded: Decoded::default(),
        pending: std::collections::VecDeque::new(),
        unflushed: 0,
        last_handover: tokio::time::Instant::now(),
        rebirths: Default::default(),
        clock: ReceiveClock::default(),
        urgent: false,
    };
    Ok(match sub.broker.protocol {
        MqttProtocol::V311 => {
            let mut opts = mqtt_options(&sub.broker, &sub.broker.client_id)?;
            opts.set_manual_acks(true);
            // Requests are only subscribes, Sparkplug rebirth requests and the final
            // disconnect: acks bypass the channel. Full → a rebirth request is skipped and
            // logged (retried on the next unknown alias after REBIRTH_INTERVAL).
            let (client, el) = super::client::event_loop(opts, 16);
            let conn = V4 { client, el };
            tokio::spawn(async move { sub.run(conn, shutdown).await }.instrument(span))
        }
        MqttProtocol::V5 => {
            let mut opts = mqtt_options_v5(&sub.broker, &sub.broker.client_id)?;
            opts.set_manual_acks(true);
            // rumqttc sizes a slot table by this limit (u16::MAX slots by default, megabytes);
            // the subscriber publishes only QoS 0 rebirth requests, which take no slot.
            opts.set_outgoing_inflight_upper_limit(16);
            // Acks go through this channel too (rumqttc's v5 socket is private). Full →
            // acks wait in `V5`'s own queue (bounded by the broker's in-flight window), a
            // rebirth request is skipped and logged as above.
            let (client, el) = rumqttc::v5::AsyncClient::new(opts, 1024);
            let conn = V5::new(client, el);
            tokio::spawn(async move { sub.run(conn, shutdown).await }.instrument(span))
        }
    })
}

struct Subscriber<H> {
    broker: MqttBroker,
    subscriptions: Vec<Subscription>,
    spb: Vec<SparkplugState>,
    table: Arc<PointTable>,
    tx: H,
    stats: Arc<MqttStats>,
    newest: Vec<i64>,
    batch: Vec<Reading>,
    to_ack: Vec<u16>,
    /// The decoder's output buffer, reused message after message.
    decoded: Decoded,
    /// Handed-over batches whose acknowledgements wait for durability. Bounded by the
    /// broker's in-flight limit (it sends no more unacknowledged QoS 1 messages).
    pending: std::collections::VecDeque<PendingAck>,
    /// Messages received since the last hand-over.
    unflushed: usize,
    /// When the last batch was handed over (a lone message after a quiet spell does not
    /// linger).
    last_handover: tokio::time::Instant,
    /// When each Sparkplug edge node was last asked to rebirth.
    rebirths: std::collections::HashMap<String, std::time::Instant>,
    /// Receive time of the messages being mapped.
    clock: ReceiveClock,
    /// The batch holds a reading that may raise an alarm (at or beyond one of its point's
    /// level limits, or not of good quality): it is handed over at once, not lingering.
    /// The limits are the configured ones; a limit changed at run time only moves this
    /// hint (a reading then lingers at most LINGER), never the engine's decision.
    urgent: bool,
}

/// The receive time stamped on messages, read once per socket read rather than once per
/// message: the messages rumqttc decoded from one read arrived together. It is read again
/// after every read that waited for data and at least every [`ReceiveClock::REUSE`]
/// messages (a backlog read without waiting: at most ~0.1 ms old at 250,000 msg/s).
/// Reading the clock per message was ~4 % of the subscriber's CPU in mqtt_bench.
#[derive(Default)]
struct ReceiveClock {
    time: Option<Timestamp>,
    uses: u32,
}

impl ReceiveClock {
    const REUSE: u32 = 32;
    /// New data came from the socket: the next message reads the clock.
    fn invalidate(&mut self) {
        self.time = None;
    }
    fn get(&mut self) -> Timestamp {
        match self.time {
            Some(t) if self.uses < Self::REUSE => {
                self.uses += 1;
                t
            }
            _ => {
                let t = now();
                self.time = Some(t);
                self.uses = 1;
                t
            }
        }
    }
}

enum Flow {
    Continue,
    Stop,
}

impl<H: Handover> Subscriber<H> {
    async fn run<C: Connection>(&mut self, mut el: C, shutdown: CancellationToken) {
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
        // One cancellation future for the whole loop (a fresh one per message registered
        // and removed a waiter under a lock every time).
        let stop = shutdown.cancelled();
        tokio::pin!(stop);
        // Whether the last socket read had to wait for data (buffered bytes are used up).
        let mut read_waited = false;
        // A paced linger ended: what was read since goes out at the next read that waits
        // (everything that arrived during the pause is in), not after another linger.
        let mut after_pause = false;
        loop {
            // QoS 0 streams only: a message to acknowledge is never held back by pacing.
            let paced = lingering
                && self.unflushed >= PACE_MIN
                && read_waited
                && self.to_ack.is_empty()
                && self.pending.is_empty()
                && !el.has_buffered();
            let mut waited = false;
            let ev = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = &mut linger, if lingering => {
                    // Dropping the pending `poll()` here is safe in rumqttc 0.25 (v4 and v5
                    // alike): it only awaits the socket read (a buffered codec) or a flush
                    // of already encoded bytes; events already decoded stay in
                    // `state.events`. (A v5 PUBACK taken from the request channel but not
                    // yet encoded when a full write buffer makes `feed` wait could be lost:
                    // the message then stays in flight until the next reconnect, when the
                    // session redelivers it — a duplicate, never a loss.)
                    lingering = false;
                    after_pause = paced;
                    if let Flow::Stop = self.flush(&mut el, &shutdown).await {
                        break;
                    }
                    continue;
                }
                durable = front_settled(&mut self.pending), if !self.pending.is_empty() => {
                    if durable {
                        self.ack_settled(&mut el).await;
                    } else {
                        // Not stored: acknowledge nothing more on this connection; the
                        // broker redelivers after the reconnect.
                        let waiting: usize = self.pending.iter().map(|p| p.pkids.len()).sum();
                        self.pending.clear();
                        self.to_ack.clear();
                        self.stats.not_durable.fetch_add(1, Relaxed);
                        self.stats.connected.store(false, Relaxed);
                        el.drop_connection();
                        let delay = backoff.next_delay();
                        warn!(
                            unacknowledged = waiting,
                            retry_in_ms = delay.as_millis() as u64,
                            "readings could not be stored; messages left unacknowledged, reconnecting for redelivery"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    continue;
                }
                // Paced: a dense stream waits for the linger before the next socket read.
                ev = noting_wait(el.poll(), &mut waited), if !paced => ev,
            };
            read_waited = waited;
            if waited {
                self.clock.invalidate();
            }
            match ev {
                Ok(Incoming::ConnAck { session_present }) => {
                    self.stats.connected.store(true, Relaxed);
                    self.stats.connects.fetch_add(1, Relaxed);
                    backoff.reset();
                    info!(
                        host = %self.broker.host,
                        port = self.broker.port,
                        session_present,
                        "mqtt connected"
                    );
                    if !session_present || !subscribed_once {
                        if subscribed_once && !self.broker.clean_session {
                            self.stats.sessions_lost.fetch_add(1, Relaxed);
                            warn!("broker lost the session; subscribing again");
                        }
                        if let Err(e) = el.subscribe(&self.subscriptions) {
                            warn!(error = %e, "cannot queue mqtt subscribe");
                        }
                        subscribed_once = true;
                    }
                }
                Ok(Incoming::SubAck(refused)) => {
                    for (i, reason) in refused {
                        let filter = self.subscriptions.get(i).map(|s| s.filter.as_str());
                        tracing::error!(
                            filter,
                            reason,
                            "broker refused the subscription (check its ACL)"
                        );
                    }
                }
                Ok(Incoming::Publish {
                    topic,
                    payload,
                    pkid,
                }) => {
                    self.on_publish(&topic, &payload, pkid);
                    self.request_rebirths(&el);
                }
                Ok(_) => {}
                Err(e) => {
                    self.stats.connected.store(false, Relaxed);
                    self.stats.connection_errors.fetch_add(1, Relaxed);
                    // Readings already decoded are good: hand them over. Their acks would go
                    // to a dead connection; the broker redelivers those messages.
                    self.to_ack.clear();
                    self.pending.clear();
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
            // up and the batch is big enough, or after a quiet spell (no hand-over for
            // LINGER: a lone reading — a probe crossing its limit — is not delayed; the
            // timer's 1 ms granularity made it wait 1–2 ms). Under a stream, a small batch
            // lingers (at most LINGER) so that one hand-over and one acknowledgement write
            // serve many messages.
            let drained = !el.has_buffered();
            // (`quiet` reads the clock: only asked when it decides.)
            let quiet = || self.last_handover.elapsed() >= LINGER;
            if self.batch.len() >= MAX_BATCH
                || self.urgent
                || (drained && (self.unflushed >= FLUSH_MIN || (!lingering && quiet())))
                || (after_pause && read_waited)
            {
                lingering = false;
                after_pause = false;
                if let Flow::Stop = self.flush(&mut el, &shutdown).await {
                    break;
                }
            } else if !lingering && drained {
                // Only once the packets already read are used up. A burst that came in one
                // socket read after a quiet spell (a gateway's scan every 10 ms) is then
                // handed over as one batch the moment it is read; before, its first message
                // started a linger, so every burst waited 1–2 ms and a timer wake-up for
                // company that never came (test
                // `a_burst_read_at_once_after_a_quiet_spell_is_handed_over_at_once`).
                linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                lingering = true;
            }
        }
        // Acknowledgements already issued reach the broker before the connection closes;
        // what is not durable yet stays unacknowledged and comes again.
        self.pending.clear();
        el.finish(Duration::from_secs(1)).await;
        self.stats.connected.store(false, Relaxed);
        info!("mqtt subscriber stopped");
    }

    /// Map one message (`pkid`: to acknowledge, QoS 1) into the batch; protocol-independent.
    fn on_publish(&mut self, topic: &str, payload: &[u8], pkid: Option<u16>) {
        self.stats.messages.fetch_add(1, Relaxed);
        self.unflushed += 1;
        if let Some(pkid) = pkid {
            self.to_ack.push(pkid);
        }
        if payload.len() > self.broker.max_payload_size {
            self.stats.problem(
                &self.broker.id,
                topic,
                "oversize",
                &format!(
                    "payload of {} bytes is over max_payload_size ({})",
                    payload.len(),
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
        let receive_time = self.clock.get();
        // One `Decoded` reused for every message (its vectors keep their capacity).
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.readings.clear();
        decoded.errors.clear();
        decode_into(
            &self.subscriptions[i],
            &mut self.spb[i],
            topic,
            payload,
            receive_time,
            &mut decoded,
        );
        for e in &decoded.errors {
            self.stats
                .problem(&self.broker.id, topic, e.reason(), &e.to_string(), None);
        }
        for raw in &decoded.readings {
            match resolve(&self.table, raw, receive_time) {
                Ok(r) => {
                    if !self.urgent
                        && (r.quality != Quality::Good
                            || self
                                .table
                                .get(r.point)
                                .is_some_and(|p| p.limits.beyond(r.value)))
                    {
                        self.urgent = true;
                    }
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
        self.decoded = decoded;
    }

    /// Ask Sparkplug edge nodes whose aliases are unknown (parkguard started after their
    /// birth) to publish their births again; at most once per node per REBIRTH_INTERVAL.
    fn request_rebirths<C: Connection>(&mut self, client: &C) {
        for st in &mut self.spb {
            for node in st.take_rebirth_requests() {
                let now = std::time::Instant::now();
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
                match client.publish_qos0(topic, payload) {
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

    /// Hand the batch over, then acknowledge the messages it came from — now, or once the
    /// batch is durable (queued in `pending`, in order behind earlier batches).
    async fn flush<C: Connection>(&mut self, el: &mut C, shutdown: &CancellationToken) -> Flow {
        self.unflushed = 0;
        self.urgent = false;
        self.last_handover = tokio::time::Instant::now();
        let mut done = None;
        if !self.batch.is_empty() {
            let n = self.batch.len() as u64;
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_CAPACITY));
            let sent = tokio::select! {
                biased;
                r = self.tx.hand_over(batch, self.to_ack.len()) => r,
                // Shutting down: the unacknowledged messages will be delivered again.
                _ = shutdown.cancelled() => return Flow::Stop,
            };
            match sent {
                Ok(d) => done = d,
                Err(HandoverClosed) => {
                    warn!("engine channel closed; mqtt subscriber stops");
                    return Flow::Stop;
                }
            }
            self.stats.readings.fetch_add(n, Relaxed);
        }
        if self.to_ack.is_empty() {
            return Flow::Continue;
        }
        if done.is_none() && self.pending.is_empty() {
            let pkids = std::mem::take(&mut self.to_ack);
            self.write_acks(el, pkids).await;
        } else {
            self.pending.push_back(PendingAck {
                done,
                pkids: std::mem::take(&mut self.to_ack),
            });
        }
        Flow::Continue
    }

    /// The oldest pending batch is durable: acknowledge it and every following one that
    /// is settled too, in one write.
    async fn ack_settled<C: Connection>(&mut self, el: &mut C) {
        let mut pkids = Vec::new();
        if let Some(p) = self.pending.pop_front() {
            pkids = p.pkids;
        }
        while let Some(front) = self.pending.front_mut() {
            let ready = match front.done.as_mut() {
                None => true,
                Some(rx) => match rx.try_recv() {
                    Ok(()) => true,
                    // Failed or not yet: the select loop handles it.
                    Err(_) => false,
                },
            };
            if !ready {
                break;
            }
            if let Some(p) = self.pending.pop_front() {
                pkids.extend(p.pkids);
            }
        }
        self.write_acks(el, pkids).await;
    }

    /// Write PUBACKs for `pkids` and flush them.
    async fn write_acks<C: Connection>(&mut self, el: &mut C, pkids: Vec<u16>) {
        if pkids.is_empty() {
            return;
        }
        match el.ack(pkids).await {
            Ok(n) => {
                self.stats.acked.fetch_add(n as u64, Relaxed);
            }
            Err(e) => {
                // The connection broke: drop it; the next poll reconnects and the broker
                // redelivers what was not acknowledged.
                self.to_ack.clear();
                self.pending.clear();
                warn!(error = %e, "mqtt acknowledgement failed; reconnecting");
                self.stats.connected.store(false, Relaxed);
                self.stats.connection_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::config::{MqttBrokerConfig, MqttSubscriptionConfig};
    use parkguard_rules::{AlarmLimits, Point, PointId, PointKind, Unit};
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;
    use tokio::time::Instant;

    /// A connection whose messages arrive at scripted (virtual) times, like a broker writing
    /// one segment per message: a poll before the next arrival waits for it (and gets that
    /// one message), a poll after it finds everything that arrived meanwhile.
    struct Scripted {
        arrivals: VecDeque<Instant>,
        sent: usize,
        connected: bool,
        /// Polls that had to wait for their message (a socket read that blocked).
        waits: Arc<AtomicUsize>,
    }

    impl Connection for Scripted {
        async fn poll(&mut self) -> Result<Incoming, String> {
            if !self.connected {
                self.connected = true;
                return Ok(Incoming::ConnAck {
                    session_present: false,
                });
            }
            // Cancel-safe like rumqttc's poll: the message is taken only once it arrived.
            let Some(&at) = self.arrivals.front() else {
                return std::future::pending().await;
            };
            let now = Instant::now();
            if at > now {
                // Virtual time moves exactly to the arrival (a timer would round it up to
                // the next millisecond and bunch the messages).
                self.waits.fetch_add(1, Relaxed);
                // Let the reader of the hand-overs run first, so it notes its hand-over
                // time before the clock jumps (the socket read waits, the reader runs).
                tokio::task::yield_now().await;
                tokio::time::advance(at - now).await;
            }
            self.arrivals.pop_front();
            self.sent += 1;
            Ok(Incoming::Publish {
                topic: "p/T1".into(),
                payload: format!(r#"{{"value":{}}}"#, self.sent).into_bytes().into(),
                pkid: None,
            })
        }
        fn has_buffered(&self) -> bool {
            // What already arrived is in the read buffer, like the rest of a TCP segment.
            self.arrivals
                .front()
                .is_some_and(|&at| at <= Instant::now())
        }
        fn subscribe(&self, _: &[Subscription]) -> Result<(), String> {
            Ok(())
        }
        fn publish_qos0(&self, _: String, _: Vec<u8>) -> Result<(), String> {
            Ok(())
        }
        async fn ack(&mut self, pkids: Vec<u16>) -> Result<usize, String> {
            Ok(pkids.len())
        }
        fn drop_connection(&mut self) {}
        async fn finish(&mut self, _: Duration) {}
    }

    /// Runs a subscriber over messages arriving every `gap` (virtual time); returns the
    /// polls that waited and, per message, its delay from arrival to hand-over.
    async fn run_stream(n: usize, gap: Duration) -> (usize, Vec<Duration>) {
        run_stream_with(n, gap, AlarmLimits::default()).await
    }

    /// [`run_stream`] with these limits on the point (message `i` has the value `i`).
    async fn run_stream_with(
        n: usize,
        gap: Duration,
        limits: AlarmLimits,
    ) -> (usize, Vec<Duration>) {
        let t0 = Instant::now() + Duration::from_millis(1);
        let arrivals: Vec<Instant> = (0..n).map(|i| t0 + gap * i as u32).collect();
        let (waits, delays, _) = run_arrivals(arrivals, limits).await;
        (waits, delays)
    }

    /// Runs a subscriber over messages arriving at `arrivals` (virtual time; equal times
    /// come in one socket read); returns the polls that waited, each message's delay from
    /// arrival to hand-over, and the number of hand-overs.
    async fn run_arrivals(
        arrivals: Vec<Instant>,
        limits: AlarmLimits,
    ) -> (usize, Vec<Duration>, usize) {
        let n = arrivals.len();
        let broker: MqttBrokerConfig =
            serde_json::from_str(r#"{"id":"b","host":"127.0.0.1"}"#).expect("broker");
        let sub: MqttSubscriptionConfig =
            serde_json::from_str(r#"{"broker":"b","topic":"p/+","format":"json","tag_segment":1}"#)
                .expect("subscription");
        let table = Arc::new(
            PointTable::new(vec![Point {
                id: PointId(0),
                tag: "T1".into(),
                name: "T1".into(),
                enterprise: "E1".into(),
                device: None,
                hazard_installation: None,
                area: None,
                kind: PointKind::Toxic,
                gas: None,
                unit: Unit::Ppm,
                range_lo: 0.0,
                range_hi: 1e9,
                limits,
                expected_interval: Duration::from_secs(1),
                location: None,
            }])
            .expect("table"),
        );
        let (tx, mut rx) = mpsc::channel::<Vec<Reading>>(1 << 16);
        let mut s = Subscriber {
            broker: broker.validate().expect("valid broker"),
            subscriptions: vec![sub.validate(&["b"]).expect("valid subscription")],
            spb: vec![SparkplugState::default()],
            newest: vec![i64::MIN; table.len()],
            table,
            tx,
            stats: Arc::new(MqttStats::default()),
            batch: Vec::new(),
            to_ack: Vec::new(),
            decoded: Decoded::default(),
            pending: VecDeque::new(),
            unflushed: 0,
            last_handover: tokio::time::Instant::now(),
            rebirths: Default::default(),
            clock: ReceiveClock::default(),
            urgent: false,
        };
        let waits = Arc::new(AtomicUsize::new(0));
        let conn = Scripted {
            arrivals: arrivals.iter().copied().collect(),
            sent: 0,
            connected: false,
            waits: waits.clone(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { s.run(conn, stop).await }
        });
        let mut delays = Vec::new();
        let mut handovers = 0;
        while delays.len() < n {
            let batch = rx.recv().await.expect("subscriber alive");
            handovers += 1;
            let now = Instant::now();
            for r in batch {
                // Values are the message numbers 1..=n, handed over in order.
                assert_eq!(r.value, (delays.len() + 1) as f64, "order");
                delays.push(now - arrivals[delays.len()]);
            }
        }
        stop.cancel();
        task.await.expect("subscriber task");
        (waits.load(Relaxed), delays, handovers)
    }

    /// A gateway publishing a scan every 10 ms in a few messages that come in one socket
    /// read: each burst is handed over at once and in one batch — no linger (it would add
    /// 1–2 ms and a timer wake-up per burst, and gather nothing).
    #[tokio::test(start_paused = true)]
    async fn a_burst_read_at_once_after_a_quiet_spell_is_handed_over_at_once() {
        let t0 = Instant::now() + Duration::from_millis(1);
        let bursts = 50;
        let arrivals: Vec<Instant> = (0..bursts * 5)
            .map(|i| t0 + Duration::from_millis(10) * (i / 5) as u32)
            .collect();
        let (_, delays, handovers) = run_arrivals(arrivals, AlarmLimits::default()).await;
        let late: Vec<_> = delays.iter().filter(|d| !d.is_zero()).collect();
        assert!(late.is_empty(), "{} messages waited: {late:?}", late.len());
        assert_eq!(handovers, bursts as usize, "one hand-over per burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dense_stream_is_read_in_chunks_not_per_message() {
        // 100,000 messages/s: most reads find the next messages already there.
        let n = 5_000;
        let (waits, delays) = run_stream(n, Duration::from_micros(10)).await;
        assert!(
            waits * 4 < n,
            "{waits} of {n} reads waited for a single message"
        );
        // At most two lingers, each rounded up to the timer's next millisecond: the one
        // the message was read in, and the pause or linger of what was read after it.
        let worst = delays.iter().max().copied().unwrap_or_default();
        assert!(
            worst <= 2 * (LINGER + Duration::from_millis(1)),
            "{worst:?}"
        );
    }

    /// The receive time is read again after a read that waited and at least every
    /// `REUSE` messages: a message is never stamped with the time of an earlier read.
    #[test]
    fn the_receive_clock_is_reread_after_a_wait_and_every_32_messages() {
        let mut c = ReceiveClock::default();
        let first = c.get();
        std::thread::sleep(Duration::from_millis(2));
        for _ in 1..ReceiveClock::REUSE {
            assert_eq!(c.get(), first, "messages of one read share its time");
        }
        let reread = c.get();
        assert!(reread.0 > first.0, "read again after REUSE messages");
        std::thread::sleep(Duration::from_millis(2));
        c.invalidate();
        assert!(c.get().0 > reread.0, "read again after a read that waited");
    }

    /// In a stream that lingers, a reading at or beyond its point's limit is handed over
    /// the moment it is read; the others may wait for company (up to LINGER).
    #[tokio::test(start_paused = true)]
    async fn a_reading_beyond_its_limit_does_not_linger() {
        let limits = AlarmLimits {
            h: Some(250.0),
            ..AlarmLimits::default()
        };
        let n = 500;
        let (_, delays) = run_stream_with(n, Duration::from_micros(200), limits).await;
        let (below, beyond) = delays.split_at(249); // values 1..=249, then 250..=500
        let lingered = below.iter().filter(|d| !d.is_zero()).count();
        assert!(
            lingered * 2 > below.len(),
            "only {lingered} of {} readings below the limit lingered: the test shows nothing",
            below.len()
        );
        let late: Vec<_> = beyond.iter().filter(|d| !d.is_zero()).collect();
        assert!(
            late.is_empty(),
            "{} of {} readings beyond the limit waited: {late:?}",
            late.len(),
            beyond.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_even_5000_per_second_is_not_paced() {
        // 5 messages per linger: under PACE_MIN, every message is read when it arrives.
        let n = 500;
        let (waits, delays) = run_stream(n, Duration::from_micros(200)).await;
        assert!(
            waits * 10 >= n * 9,
            "only {waits} of {n} reads waited: the subscriber paused"
        );
        let worst = delays.iter().max().copied().unwrap_or_default();
        assert!(worst <= LINGER + Duration::from_millis(1), "{worst:?}");
    }
}
