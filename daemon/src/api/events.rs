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
//!
//! Point *values* (the throttled updates) are kept apart, in a ring of their own of
//! `value_ring` events (2,000 by default), because on a large park they are almost all of
//! the stream: 10,000 points send 10,000 a second, so a shared ring of 10,000 covered about
//! one second whatever its size, evicted every alarm event within that second, and held
//! ~7 MB of text for it (issue #11: the daemon's RSS with a console on 10,000 Modbus
//! points). Alarm, warning and point-state events keep the whole `ring` to themselves. A
//! resuming client is replayed both rings merged in id order, and reset when either has
//! let go of an event it has not seen. On the demo park (tens of points) the value ring
//! still covers minutes.

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
    pub kind: &'static str,
    /// The event as sent on the wire (`id:`, `event:`, `data:` lines), formatted once at
    /// publication and shared by every client.
    pub wire: axum::body::Bytes,
    /// Where the JSON data lies in `wire`.
    data_at: std::ops::Range<usize>,
}

impl Event {
    /// Build the event and its wire form (`data` is JSON: it never holds a raw newline,
    /// so one `data:` line carries it).
    fn new(id: u64, kind: &'static str, data: &str) -> Self {
        use std::fmt::Write as _;
        // The exact length, so that the buffer is not grown (doubled) on the last push
        // and `Bytes` takes it over without a copy: `id: ` + digits + `\nevent: ` + kind
        // + `\ndata: ` + data + `\n\n`.
        let digits = id.checked_ilog10().unwrap_or(0) as usize + 1;
        let len = 4 + digits + 8 + kind.len() + 7 + data.len() + 2;
        let mut wire = String::with_capacity(len);
        // Writing into a String cannot fail.
        let _ = write!(wire, "id: {id}\nevent: {kind}\ndata: ");
        let start = wire.len();
        wire.push_str(data);
        let end = wire.len();
        wire.push_str("\n\n");
        debug_assert_eq!(wire.len(), len);
        Self {
            id,
            kind,
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
    /// Alarm, warning, state and other events kept for resumption. Default 10,000.
    pub ring: usize,
    /// Point value updates kept for resumption (a ring of their own, see the module
    /// docs). Default 2,000.
    pub value_ring: usize,
    /// Events a client may fall behind before it is reset (the broadcast capacity, one
    /// buffer shared by all clients). Default 4,096; [`HubSettings::for_points`] sizes it.
    pub capacity: usize,
    /// Minimum interval between two updates of one point. Default 1 s.
    pub point_interval: Duration,
}

impl HubSettings {
    /// The defaults, with the broadcast sized for a park of `points` points: once a second
    /// the pump publishes up to one update per point at once, and a client whose queue
    /// cannot hold that burst lags and is reset every second (10,000 points against the
    /// old fixed 4,096: a reset a second; issue #11).
    pub fn for_points(points: usize) -> Self {
        let d = Self::default();
        Self {
            capacity: d.capacity.max(points.saturating_add(d.capacity)),
            ..d
        }
    }
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            ring: 10_000,
            value_ring: 2_000,
            capacity: 4_096,
            point_interval: Duration::from_secs(1),
        }
    }
}

/// What the hub holds for one point (one map lookup per update instead of three).
#[derive(Default)]
struct Slot {
    /// When its last update went out.
    last: Option<Instant>,
    /// When its state was last published ([`EventHub::publish_point_state`]).
    state_at: Option<Instant>,
    /// The newest update kept back by the throttle.
    pending: Option<String>,
}

struct Inner {
    next_id: u64,
    ring: VecDeque<Arc<Event>>,
    /// Point value updates (see the module docs).
    values: VecDeque<Arc<Event>>,
    /// The newest id either ring has let go of (0: none): a client that has not seen it
    /// must reload.
    evicted: u64,
    points: HashMap<Box<str>, Slot, foldhash::fast::RandomState>,
    /// Slots with a `pending` update.
    pending: usize,
    /// Point updates were dropped while no client listened, when the next event would have
    /// had this id: a client resuming from before it gets `reset` (see
    /// [`EventHub::wants_points`]).
    gap: u64,
}

impl Inner {
    fn slot(&mut self, tag: &str) -> &mut Slot {
        // Allocate the key once per point, not once per update.
        if !self.points.contains_key(tag) {
            self.points.insert(tag.into(), Slot::default());
        }
        self.points.get_mut(tag).expect("inserted above")
    }

    /// No client listens: drop the kept updates and remember where the gap starts.
    fn note_gap(&mut self) {
        self.gap = self.next_id;
        if self.pending > 0 {
            for s in self.points.values_mut() {
                s.pending = None;
            }
            self.pending = 0;
        }
    }
}

/// Which ring an event is kept in.
#[derive(Clone, Copy)]
enum Ring {
    /// Alarm, warning, point-state and other events.
    Events,
    /// Throttled point value updates.
    Values,
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
                values: VecDeque::with_capacity(settings.value_ring.min(65_536)),
                // Ids below the first are another process's: gone.
                evicted: first_id.max(1) - 1,
                points: HashMap::default(),
                pending: 0,
                gap: 0,
            }),
            tx,
            settings,
        }
    }

    fn push(&self, g: &mut Inner, kind: &'static str, data: String) -> u64 {
        self.push_to(g, kind, data, Ring::Events)
    }

    fn push_to(&self, g: &mut Inner, kind: &'static str, data: String, ring: Ring) -> u64 {
        let id = g.next_id;
        g.next_id += 1;
        let ev = Arc::new(Event::new(id, kind, &data));
        let (kept, cap) = match ring {
            Ring::Events => (&mut g.ring, self.settings.ring),
            Ring::Values => (&mut g.values, self.settings.value_ring),
        };
        let gone = if kept.len() >= cap.max(1) {
            kept.pop_front().map(|e| e.id)
        } else {
            None
        };
        kept.push_back(ev.clone());
        if let Some(gone) = gone {
            g.evicted = g.evicted.max(gone);
        }
        // No receivers is fine: the ring keeps it for the next client.
        let _ = self.tx.send(ev);
        id
    }

    /// Publish an event now; returns its id.
    pub fn publish(&self, kind: &'static str, data: &impl Serialize) -> u64 {
        let text = serde_json::to_string(data)
            .unwrap_or_else(|e| format!("{{\"error\":\"unserialisable event: {e}\"}}"));
        match self.inner.lock() {
            Ok(mut g) => self.push(&mut g, kind, text),
            Err(p) => self.push(&mut p.into_inner(), kind, text),
        }
    }

    /// Publish a point update, throttled per `tag` (see the module doc). Returns the id
    /// when sent now, `None` when kept for later or when no client listens.
    ///
    /// With no client connected, value updates are not kept at all (at 10,000 points they
    /// were ~a quarter of the daemon's CPU in the Modbus benchmark, for nobody; issue #11):
    /// a client that connects afresh loads the snapshot through the REST endpoints, and one
    /// that resumes from before the gap gets `reset` and reloads. Alarm, warning and state
    /// events are kept in the ring whether or not anybody listens.
    pub fn publish_point(&self, tag: &str, data: &impl Serialize, now: Instant) -> Option<u64> {
        let mut g = self.lock();
        if self.tx.receiver_count() == 0 {
            g.note_gap();
            return None;
        }
        let interval = self.settings.point_interval;
        let slot = g.slot(tag);
        // Alarm events and point values are published by two tasks (the alarm one must
        // not wait for 10,000 point updates): a value taken from a snapshot older than the
        // point's last published state would overwrite that state in the console. Dropped.
        if slot.state_at.is_some_and(|t| t > now) {
            return None;
        }
        // Serialised under the lock (a small struct, well under a microsecond), so that
        // the check for listeners above and the update cannot be split by a subscriber.
        let text = serde_json::to_string(data).ok()?;
        let due = slot.last.is_none_or(|t| now.duration_since(t) >= interval);
        if due {
            slot.last = Some(now);
            let had = slot.pending.take().is_some();
            g.pending -= usize::from(had);
            Some(self.push_to(&mut g, "point", text, Ring::Values))
        } else {
            // Kept until due: at most one per point, so give back the spare capacity
            // serde_json grew the string with (up to half of it; 10,000 points wait here).
            let mut text = text;
            text.shrink_to_fit();
            let had = slot.pending.replace(text).is_some();
            g.pending += usize::from(!had);
            None
        }
    }

    /// Whether point value updates are wanted now: `false` when no client listens, which
    /// also records the gap (see [`EventHub::publish_point`]). The pump asks once per
    /// snapshot instead of building 10,000 updates that would be dropped.
    pub fn wants_points(&self) -> bool {
        let mut g = self.lock();
        if self.tx.receiver_count() == 0 {
            g.note_gap();
            false
        } else {
            true
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Publish a point's *state* change (alarm, quality, service) now, unthrottled. Any
    /// throttled update of the same point still waiting is dropped: it is older than this
    /// one and would otherwise overwrite the new state in the console.
    pub fn publish_point_state(&self, tag: &str, data: &impl Serialize, now: Instant) -> u64 {
        let text = serde_json::to_string(data)
            .unwrap_or_else(|e| format!("{{\"error\":\"unserialisable event: {e}\"}}"));
        let mut g = self.lock();
        let slot = g.slot(tag);
        slot.last = Some(now);
        slot.state_at = Some(now);
        let had = slot.pending.take().is_some();
        g.pending -= usize::from(had);
        self.push(&mut g, "point", text)
    }

    /// Send the kept point updates whose interval has passed. [`EventHub::run_flusher`]
    /// calls it periodically.
    pub fn flush_points(&self, now: Instant) -> usize {
        let interval = self.settings.point_interval;
        let due: Vec<Box<str>> = {
            let mut g = self.lock();
            if g.pending == 0 {
                return 0;
            }
            if self.tx.receiver_count() == 0 {
                g.note_gap();
                return 0;
            }
            g.points
                .iter()
                .filter(|(_, s)| {
                    s.pending.is_some() && s.last.is_none_or(|t| now.duration_since(t) >= interval)
                })
                .map(|(tag, _)| tag.clone())
                .collect()
        };
        // In slices, letting go of the lock in between: up to 10,000 points may be due at
        // once, and an alarm event published meanwhile must not wait for all of them.
        let mut sent = 0;
        for chunk in due.chunks(FLUSH_SLICE) {
            let mut g = self.lock();
            for tag in chunk {
                let Some(slot) = g.points.get_mut(tag) else {
                    continue;
                };
                if let Some(text) = slot.pending.take() {
                    slot.last = Some(now);
                    g.pending -= 1;
                    self.push_to(&mut g, "point", text, Ring::Values);
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
        // The client saw `last`; it needs `last + 1` onwards. Gone from a ring, or an id
        // from the future (a previous process): reload.
        // Or point updates were dropped after `last` while nobody listened.
        let reset = last < g.evicted || last >= g.next_id || last < g.gap;
        let replay = if reset {
            Vec::new()
        } else {
            let mut r: Vec<Arc<Event>> = g
                .ring
                .iter()
                .chain(g.values.iter())
                .filter(|e| e.id > last)
                .cloned()
                .collect();
            r.sort_unstable_by_key(|e| e.id);
            r
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

    /// Point values have a ring of their own: a flood of them does not push alarm
    /// events out, a resuming client gets both merged in id order, and one that missed a
    /// value the value ring let go of reloads.
    #[test]
    fn point_values_do_not_push_alarm_events_out_of_the_ring() {
        let hub = EventHub::new(
            HubSettings {
                ring: 3,
                value_ring: 2,
                ..HubSettings::default()
            },
            1,
        );
        let _listener = hub.subscribe(None);
        let t0 = Instant::now();
        let value = |tag: &str| hub.publish_point(tag, &1.0, t0).unwrap();
        assert_eq!(hub.publish("alarm", &"a1"), 1);
        assert_eq!(value("P1"), 2);
        assert_eq!(value("P2"), 3);
        assert_eq!(hub.publish("alarm", &"a2"), 4);
        assert_eq!(value("P3"), 5);
        // Values kept: 3, 5 (2 let go of); events kept: 1, 4 — the value flood did not
        // push alarm 1 out.
        let s = hub.subscribe(Some(2));
        assert!(!s.reset);
        assert_eq!(
            s.replay.iter().map(|e| e.id).collect::<Vec<_>>(),
            [3, 4, 5],
            "both rings, in id order"
        );
        assert!(hub.subscribe(Some(1)).reset, "value 2 is gone: reload");
        // A flood of values: resumption now reaches back only as far as the value ring.
        for i in 0..10 {
            value(&format!("Q{i}"));
        }
        let s = hub.subscribe(Some(14));
        assert!(!s.reset);
        assert_eq!(s.replay.iter().map(|e| e.id).collect::<Vec<_>>(), [15]);
        assert!(hub.subscribe(Some(12)).reset);
    }

    /// Ids below the hub's first belong to a previous process: a client resuming from
    /// one is told to reload, even before any event of this process was kept.
    #[test]
    fn an_id_of_a_previous_process_reloads() {
        let hub = EventHub::new(HubSettings::default(), 1_000);
        assert!(hub.subscribe(Some(500)).reset);
        assert!(
            !hub.subscribe(Some(999)).reset,
            "saw everything before 1000"
        );
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

    /// With no client connected, value updates are neither built nor kept; state events
    /// still are. A client that resumes from before that gap is told to reload; one that
    /// connects afresh (after loading the snapshot) gets the updates from then on.
    #[test]
    fn with_nobody_listening_values_are_dropped_and_a_resuming_client_reloads() {
        let hub = EventHub::new(HubSettings::default(), 1);
        let t0 = Instant::now();
        let sub = hub.subscribe(None);
        assert_eq!(hub.publish_point("GT-1", &1.0, t0), Some(1));
        // The console's connection drops (after event 1); a value arrives and one waits.
        drop(sub);
        assert!(!hub.wants_points());
        assert_eq!(hub.publish_point("GT-2", &2.0, t0), None);
        assert_eq!(hub.publish_point_state("GT-3", &"alarm", t0), 2);
        assert_eq!(hub.flush_points(t0 + Duration::from_secs(5)), 0);
        // Reconnecting with Last-Event-ID 1 would replay only the state event (2) and
        // miss GT-2's value: reload instead.
        let resumed = hub.subscribe(Some(1));
        assert!(
            resumed.reset,
            "a client that missed dropped values must reload"
        );
        assert!(hub.wants_points());
        // A fresh client, connected: values flow (throttled as before).
        let mut fresh = hub.subscribe(None);
        assert!(!fresh.reset);
        assert_eq!(hub.publish_point("GT-2", &3.0, t0), Some(3));
        assert_eq!(
            fresh.rx.try_recv().map(|e| e.data().to_string()).ok(),
            Some("3.0".into())
        );
        // And one resuming after the gap is replayed, not reset.
        let later = hub.subscribe(Some(3));
        assert!(!later.reset);
    }

    /// Once a second a 10,000-point park publishes up to 10,000 updates at once: a console
    /// must receive them all without lagging (and so without a reset and reload).
    #[test]
    fn a_whole_park_pass_fits_in_a_clients_queue() {
        let pass = |settings: HubSettings| {
            let hub = EventHub::new(settings, 1);
            let t0 = Instant::now();
            let mut sub = hub.subscribe(None);
            for i in 0..10_000 {
                hub.publish_point(&format!("GT-{i}"), &i, t0);
            }
            let mut got = 0;
            loop {
                match sub.rx.try_recv() {
                    Ok(_) => got += 1,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => return Err(got),
                    Err(_) => return Ok(got),
                }
            }
        };
        assert_eq!(pass(HubSettings::for_points(10_000)), Ok(10_000));
        assert!(
            pass(HubSettings::default()).is_err(),
            "the fixed default lags at this size"
        );
    }

    /// The wire text is sized exactly (a debug assertion checks it in `Event::new`), for
    /// ids of every length.
    #[test]
    fn wire_text_of_every_id_length() {
        for id in [0, 1, 9, 10, 99, 1_764_236_400_000, u64::MAX] {
            let e = Event::new(id, "point", r#"{"v":1}"#);
            assert_eq!(
                std::str::from_utf8(&e.wire).expect("utf-8"),
                format!("id: {id}\nevent: point\ndata: {{\"v\":1}}\n\n")
            );
            assert_eq!(e.data(), r#"{"v":1}"#);
        }
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
