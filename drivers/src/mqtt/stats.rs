//! Counters of the MQTT subscriber, readable by the API (`snapshot()`), and the per-topic
//! problem list an operator reads to fix gateway mappings: unknown tags, unparseable
//! payloads, wrong types, oversize payloads, unit mismatches. Logs about the same topic are
//! rate-limited here too.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// At most this many distinct topics are listed; problems on further topics are counted
/// under [`OVERFLOW_TOPIC`] (a misbehaving gateway must not grow memory without bound).
pub const MAX_TOPICS: usize = 10_000;
/// Topic key used once [`MAX_TOPICS`] is reached.
pub const OVERFLOW_TOPIC: &str = "(other topics)";
/// Unknown tags remembered per topic.
pub const MAX_UNKNOWN_TAGS: usize = 32;
/// One log line per topic per this interval; the rest are counted as suppressed.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Live counters of one subscriber (one broker connection). Shared as `Arc<MqttStats>`.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Connected right now.
    pub connected: AtomicBool,
    /// Successful connects (CONNACK accepted).
    pub connects: AtomicU64,
    /// Connection failures and losses.
    pub connection_errors: AtomicU64,
    /// Times the broker had lost the session and parkguard re-subscribed.
    pub sessions_lost: AtomicU64,
    /// PUBLISH packets received.
    pub messages: AtomicU64,
    /// Readings handed to the engine channel.
    pub readings: AtomicU64,
    /// QoS 1 messages acknowledged (always after their readings were handed over).
    pub acked: AtomicU64,
    /// Times a handed-over batch could not be made durable (spool append failed): its
    /// messages were left unacknowledged and the subscriber reconnected for redelivery.
    pub not_durable: AtomicU64,
    /// Readings older than the newest of their point (forwarded for storage; the engine
    /// must not move the live value back, see the module docs of `source`).
    pub out_of_order: AtomicU64,
    /// Readings or payloads rejected, all reasons.
    pub rejected: AtomicU64,
    topics: Mutex<HashMap<String, TopicProblems>>,
}

#[derive(Debug)]
struct TopicProblems {
    counts: BTreeMap<&'static str, u64>,
    last_error: String,
    unknown_tags: BTreeSet<String>,
    last_log: Option<Instant>,
    suppressed: u64,
}

/// Problems seen on one topic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopicProblem {
    /// Topic.
    pub topic: String,
    /// Count per reason (`unknown_tag`, `unparseable`, `wrong_type`, `missing_field`,
    /// `bad_time`, `unknown_unit`, `unit_rejected`, `oversize`, `unknown_alias`,
    /// `no_subscription`).
    pub counts: BTreeMap<String, u64>,
    /// The latest problem, as text.
    pub last_error: String,
    /// Unknown tags seen (up to [`MAX_UNKNOWN_TAGS`]).
    pub unknown_tags: Vec<String>,
}

/// A copy of every counter, for the API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MqttStatsSnapshot {
    /// Connected.
    pub connected: bool,
    /// Connects.
    pub connects: u64,
    /// Connection errors.
    pub connection_errors: u64,
    /// Sessions lost.
    pub sessions_lost: u64,
    /// Messages.
    pub messages: u64,
    /// Readings handed over.
    pub readings: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Out of order.
    pub out_of_order: u64,
    /// Rejected.
    pub rejected: u64,
    /// Problems by topic, sorted by topic.
    pub problems: Vec<TopicProblem>,
}

impl MqttStats {
    /// New, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count a problem on `topic`, remember `unknown_tag`, and log at most once per topic
    /// per [`LOG_INTERVAL`].
    pub fn problem(
        &self,
        broker: &str,
        topic: &str,
        reason: &'static str,
        message: &str,
        unknown_tag: Option<&str>,
    ) {
        self.rejected.fetch_add(1, Relaxed);
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let key = if topics.contains_key(topic) || topics.len() < MAX_TOPICS {
            topic
        } else {
            OVERFLOW_TOPIC
        };
        let t = topics
            .entry(key.to_string())
            .or_insert_with(|| TopicProblems {
                counts: BTreeMap::new(),
                last_error: String::new(),
                unknown_tags: BTreeSet::new(),
                last_log: None,
                suppressed: 0,
            });
        *t.counts.entry(reason).or_insert(0) += 1;
        t.last_error.clear();
        t.last_error.push_str(message);
        if let Some(tag) = unknown_tag
            && t.unknown_tags.len() < MAX_UNKNOWN_TAGS
        {
            t.unknown_tags.insert(tag.to_string());
        }
        let now = Instant::now();
        if t.last_log
            .is_none_or(|l| now.duration_since(l) >= LOG_INTERVAL)
        {
            tracing::warn!(
                broker,
                topic,
                reason,
                error = message,
                suppressed = t.suppressed,
                "mqtt message not used"
            );
            t.last_log = Some(now);
            t.suppressed = 0;
        } else {
            t.suppressed += 1;
        }
    }

    /// A copy of the counters and the problem list.
    pub fn snapshot(&self) -> MqttStatsSnapshot {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let mut problems: Vec<TopicProblem> = topics
            .iter()
            .map(|(topic, t)| TopicProblem {
                topic: topic.clone(),
                counts: t.counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                last_error: t.last_error.clone(),
                unknown_tags: t.unknown_tags.iter().cloned().collect(),
            })
            .collect();
        problems.sort_by(|a, b| a.topic.cmp(&b.topic));
        MqttStatsSnapshot {
            connected: self.connected.load(Relaxed),
            connects: self.connects.load(Relaxed),
            connection_errors: self.connection_errors.load(Relaxed),
            sessions_lost: self.sessions_lost.load(Relaxed),
            messages: self.messages.load(Relaxed),
            readings: self.readings.load(Relaxed),
            acked: self.acked.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            problems,
        }
    }
}
