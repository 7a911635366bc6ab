//! The live event stream behind `GET /api/v1/events` (Server-Sent Events).
//!
//! The engine (and the API itself, for writes) publishes into the [`EventHub`]. Every event
//! gets a monotonically increasing id and goes into a ring buffer and a broadcast channel.
//! A client that reconnects with `Last-Event-ID: N` is first replayed every event after
//! `N` still in the ring, then follows the broadcast; subscription and replay happen under
//! one lock, so nothing is lost or duplicated between them. When the client is further
//! behind than the ring reaches (or lags behind the broadcast), it gets a `reset` event and
//! reloads its snapshot through the REST endpoints.
//!
//! Point updates are throttled per point: at most one per `point_interval`; the latest
//! value in between is kept and sent when the interval has passed, so the console always
//! converges on the current value. Alarm and warning events are never throttled.
//!
//! Back-pressure: publishing never waits. The broadcast channel holds `capacity` events;
//! a client that falls further behind loses its place (counted in
//! `parkguard_sse_lagged_total`) and gets `reset`. The ring holds `ring` events.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// One event.
///
/// Only the wire form is stored; the JSON data is a slice of it. The ring keeps `ring`
/// events (10,000 by default, one per point of a large park every second or so), and a
/// separate `data` string next to `wire` doubled what each one cost: with the spare
/// capacity of two growing strings, ~1.3 kB per point event and 13 MB for the ring
/// (issue #11). Now the wire text is built at its exact length, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Id (SSE `id:`).
    pub id: u64,
    /// Kind (SSE `event:`): `alarm`, `warning`, `point`, `limits`, `audit`, `drill`.
    pub kind: Box<str>,
    /// The event as sent on the wire (`id:`, `event:`, `data:` lines), formatted once at
    /// publication and shared by every client.
    pub wire: axum::body::Bytes,
    /// Where the JSON data lies in `wire`.
    data_at: std::ops::Range<usize>,
}

impl Event {
    /// Build the event and its wire form (`data` is JSON: it never holds a raw newline,
    /// so one `data:` line carries it).
    fn new(id: u64, kind: &str, data: &str) -> Self {
        use std::fmt::Write as _;
        let mut wire = String::with_capacity(32 + kind.len() + data.len());
        // Writing into a String cannot fail.
        let _ = write!(wire, "id: {id}\nevent: {kind}\ndata: ");
        let start = wire.len();
        wire.push_str(data);
        let end = wire.len();
        wire.push_str("\n\n");
        Self {
            id,
            kind: kind.into(),
            wire: wire.into_bytes().into(),
            data_at: start..end,
        }
    }

    /// The JSON data (SSE `data:`).
    pub fn data(&self) -> &str {
        // `wire` was built from a String and `data_at` bounds the `data` str pushed into
        // it, so the slice is valid UTF-8.
        self.wire
            .get(self.data_at.clone())
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

/// Point updates flushed per hold of the hub's lock.
const FLUSH_SLICE: usize = 256;

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// Events kept for resumption. Default 10,000.
    pub ring: usize,
    /// Broadcast capacity per client. Default 4,096.
    pub capacity: usize,
    /// Minimum interval between two updates of one point. Default 1 s.
    pub point_interval: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            ring: 10_000,
            capacity: 4_096,
            point_interval: Duration::from_secs(1),
        }
    }
}

struct Inner {
    next_id: u64,
    ring: VecDeque<Arc<Event>>,
    last_point: HashMap<String, Instant>,
    pending: HashMap<String, String>,
    /// When each point's state was last published ([`EventHub::publish_point_state`]).
    state_at: HashMap<String, Instant>,
}

/// What a new subscriber gets.
pub struct Subscription {
    /// Events to replay first.
    pub replay: Vec<Arc<Event>>,
    /// Then these.
    pub rx: broadcast::Receiver<Arc<Event>>,
    /// The client's `Last-Event-ID` is older than the ring: it must reload.
    pub reset: bool,
}

/// The event hub. Cheap to share behind an `Arc`.
pub struct EventHub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Event>>,
    settings: HubSettings,
}

impl EventHub {
    /// A hub whose first event gets id `first_id`. Start it at the Unix time in
    /// milliseconds (×1000 if needed) so ids keep increasing across restarts: a client
    /// resuming with an id from the previous process then gets `reset` and reloads.
    pub fn new(settings: HubSettings, first_id: u64) -> Self {
        let (tx, _) = broadcast::channel(settings.capacity.max(16));
        Self {
            inner: Mutex::new(Inner {
                next_id: first_id.max(1),
                ring: VecDeque::with_capacity(settings.ring.min(65_536)),
                last_point: HashMap::new(),
                pending: HashMap::new(),
                state_at: HashMap::new(),
            }),
            tx,
            settings,
        }
    }

    fn push(&self, g: &mut Inner, kind: &str, data: String) -> u64 {
        let id = g.next_id;
        g.next_id += 1;
        let ev = Arc::new(Event::new(id, kind, &data));
        if g.ring.len() >= self.settings.ring.max(1) {
            g.ring.pop_front();
        }
        g.ring.push_back(ev.clone());
        // No receivers is fine: the ring keeps it for the next client.
        let _ = self.tx.send(ev);
        id
    }

    /// Publish an event now; returns its id.
    pub fn publish(&self, kind: &str, data: &impl Serialize) -> u64 {
        let text = serde_json::to_string(data)
            .unwrap_or_else(|e| format!("{{\"error\":\"unserialisable event: {e}\"}}"));
        match self.inner.lock() {
            Ok(mut g) => self.push(&mut g, kind, text),
            Err(p) => self.push(&mut p.into_inner(), kind, text),
        }
    }

    /// Publish a point update, throttled per `tag` (see the module doc). Returns the id
    /// when sent now, `None` when kept for later.
    pub fn publish_point(&self, tag: &str, data: &impl Serialize, now: Instant) -> Option<u64> {
        let text = serde_json::to_string(data).ok()?;
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Alarm events and point values are published by two tasks (the alarm one must
        // not wait for 10,000 point updates): a value taken from a snapshot older than the
        // point's last published state would overwrite that state in the console. Dropped.
        if g.state_at.get(tag).is_some_and(|t| *t > now) {
            return None;
        }
        let due = g
            .last_point
            .get(tag)
            .is_none_or(|t| now.duration_since(*t) >= self.settings.point_interval);
        if due {
            g.pending.remove(tag);
            g.last_point.insert(tag.to_string(), now);
            Some(self.push(&mut g, "point", text))
        } else {
            // Kept until due: at most one per point, so give back the spare capacity
            // serde_json grew the string with (up to half of it; 10,000 points wait here).
            let mut text = text;
            text.shrink_to_fit();
            g.pending.insert(tag.to_string(), text);
            None
        }
    }

    /// Publish a point's *state* change (alarm, quality, service) now, unthrottled. Any
    /// throttled update of the same point still waiting is dropped: it is older than this
    /// one and would otherwise overwrite the new state in the console.
    pub fn publish_point_state(&self, tag: &str, data: &impl Serialize, now: Instant) -> u64 {
        let text = serde_json::to_string(data)
            .unwrap_or_else(|e| format!("{{\"error\":\"unserialisable event: {e}\"}}"));
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.pending.remove(tag);
        g.last_point.insert(tag.to_string(), now);
        g.state_at.insert(tag.to_string(), now);
        self.push(&mut g, "point", text)
    }

    /// Send the kept point updates whose interval has passed. [`EventHub::run_flusher`]
    /// calls it periodically.
    pub fn flush_points(&self, now: Instant) -> usize {
        let lock = || match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let interval = self.settings.point_interval;
        let due: Vec<String> = {
            let g = lock();
            g.pending
                .keys()
                .filter(|tag| {
                    g.last_point
                        .get(*tag)
                        .is_none_or(|t| now.duration_since(*t) >= interval)
                })
                .cloned()
                .collect()
        };
        // In slices, letting go of the lock in between: up to 10,000 points may be due at
        // once, and an alarm event published meanwhile must not wait for all of them.
        let mut sent = 0;
        for chunk in due.chunks(FLUSH_SLICE) {
            let mut g = lock();
            for tag in chunk {
                if let Some(text) = g.pending.remove(tag) {
                    g.last_point.insert(tag.clone(), now);
                    self.push(&mut g, "point", text);
                    sent += 1;
                }
            }
        }
        sent
    }

    /// Flush throttled point updates until `cancel` fires.
    pub async fn run_flusher(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(
            (self.settings.point_interval / 4).max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => { self.flush_points(Instant::now()); }
            }
        }
    }

    /// Subscribe, replaying every event after `last_id`.
    pub fn subscribe(&self, last_id: Option<u64>) -> Subscription {
        let g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let rx = self.tx.subscribe();
        let Some(last) = last_id else {
            return Subscription {
                replay: Vec::new(),
                rx,
                reset: false,
            };
        };
        let oldest = g.ring.front().map(|e| e.id).unwrap_or(g.next_id);
        // The client saw `last`; it needs `last + 1` onwards. Gone from the ring, or an id
        // from the future (a previous process): reload.
        let reset = last.saturating_add(1) < oldest || last >= g.next_id;
        let replay = if reset {
            Vec::new()
        } else {
            g.ring.iter().filter(|e| e.id > last).cloned().collect()
        };
        Subscription { replay, rx, reset }
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> u64 {
        self.inner.lock().map(|g| g.next_id).unwrap_or(0)
    }

    /// Connected subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_after_last_id() {
        let hub = EventHub::new(
            HubSettings {
                ring: 3,
                ..HubSettings::default()
            },
            1,
        );
        for i in 0..5 {
            hub.publish("alarm", &i);
        }
        // ring holds 3, 4, 5
        let s = hub.subscribe(Some(3));
        assert!(!s.reset);
        assert_eq!(
            s.replay.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert!(
            !hub.subscribe(Some(2)).reset,
            "2 → needs 3, which is still there"
        );
        assert!(hub.subscribe(Some(1)).reset, "1 → needs 2, which is gone");
        assert!(hub.subscribe(Some(99)).reset, "an id from the future");
    }

    #[test]
    fn point_updates_are_throttled_and_converge() {
        let hub = EventHub::new(HubSettings::default(), 1);
        let t0 = Instant::now();
        let mut sub = hub.subscribe(None);
        assert!(hub.publish_point("GT-1", &1.0, t0).is_some());
        assert!(
            hub.publish_point("GT-1", &2.0, t0 + Duration::from_millis(100))
                .is_none()
        );
        assert!(
            hub.publish_point("GT-1", &3.0, t0 + Duration::from_millis(200))
                .is_none()
        );
        assert!(
            hub.publish_point("GT-2", &9.0, t0 + Duration::from_millis(200))
                .is_some()
        );
        assert_eq!(hub.flush_points(t0 + Duration::from_millis(500)), 0);
        assert_eq!(hub.flush_points(t0 + Duration::from_millis(1000)), 1);
        let got: Vec<String> = std::iter::from_fn(|| sub.rx.try_recv().ok())
            .map(|e| e.data().to_string())
            .collect();
        assert_eq!(
            got,
            vec!["1.0", "9.0", "3.0"],
            "latest value of GT-1 is delivered"
        );
    }

    #[test]
    fn a_state_change_supersedes_a_waiting_value() {
        let hub = EventHub::new(HubSettings::default(), 1);
        let t0 = Instant::now();
        let mut sub = hub.subscribe(None);
        hub.publish_point("GT-1", &"v1 normal", t0);
        assert!(
            hub.publish_point("GT-1", &"v2 normal", t0 + Duration::from_millis(100))
                .is_none()
        );
        hub.publish_point_state("GT-1", &"v3 alarm", t0 + Duration::from_millis(200));
        assert_eq!(
            hub.flush_points(t0 + Duration::from_secs(5)),
            0,
            "v2 was dropped"
        );
        let got: Vec<String> = std::iter::from_fn(|| sub.rx.try_recv().ok())
            .map(|e| e.data().to_string())
            .collect();
        assert_eq!(got, vec!["\"v1 normal\"", "\"v3 alarm\""]);
    }

    #[test]
    fn a_value_older_than_the_published_state_is_dropped() {
        let hub = EventHub::new(HubSettings::default(), 1);
        let t0 = Instant::now();
        let mut sub = hub.subscribe(None);
        // The alarm task published the new state at t0 + 200 ms; the point task is still
        // going through a snapshot it took at t0 + 100 ms.
        hub.publish_point_state("GT-1", &"v2 alarm", t0 + Duration::from_millis(200));
        assert!(
            hub.publish_point("GT-1", &"v1 normal", t0 + Duration::from_millis(100))
                .is_none()
        );
        assert_eq!(hub.flush_points(t0 + Duration::from_secs(5)), 0);
        // A later value goes out (throttled as usual).
        hub.publish_point("GT-1", &"v3 alarm", t0 + Duration::from_millis(300));
        assert_eq!(hub.flush_points(t0 + Duration::from_secs(5)), 1);
        let got: Vec<String> = std::iter::from_fn(|| sub.rx.try_recv().ok())
            .map(|e| e.data().to_string())
            .collect();
        assert_eq!(got, vec!["\"v2 alarm\"", "\"v3 alarm\""]);
    }
}
