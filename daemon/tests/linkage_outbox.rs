//! The notification outbox against a real HTTP receiver (axum, in its own runtime on a
//! fixed free port so it can go down and come back): at-least-once delivery with back-off,
//! exactly one record per event on the receiver (it dedups on `Idempotency-Key`), order
//! per alarm, restart resume, permanent failures, and enqueue inside the journal's
//! transaction.
//!
//! The issue asks for a receiver down for 5 minutes; these tests keep it down for 4
//! seconds with back-off scaled down to 100 ms … 1 s, which exercises the same path
//! (many failed attempts, then recovery) without a 5-minute test.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use parkguard::linkage::group::Grouping;
use parkguard::linkage::outbox::{self, Status, WorkerConfig};
use parkguard::linkage::route::{RouteConfig, Router};
use parkguard_drivers::notify::{Channel, ChannelConfig, Notification, Priority};
use parkguard_rules::{PointKind, Timestamp};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "outbox-test-shared-secret";

#[derive(Clone, Copy, Debug)]
enum Mode {
    Ok,
    Fail503,
    Reject400,
    /// Store the events, then answer only after the sender has timed out (reply lost).
    StoreThenStall,
}

#[derive(Default)]
struct RxState {
    /// (event id, alarm id) in the order first received
    records: Mutex<Vec<(u64, String)>>,
    keys: Mutex<HashSet<String>>,
    requests: AtomicUsize,
    bad_signatures: AtomicUsize,
    script: Mutex<VecDeque<Mode>>,
    default: Mutex<Option<Mode>>,
    /// keys in request order, with the status answered
    log: Mutex<Vec<(String, u16)>>,
}

impl RxState {
    fn set_default(&self, m: Mode) {
        *self.default.lock().unwrap() = Some(m);
    }
    fn records(&self) -> Vec<(u64, String)> {
        self.records.lock().unwrap().clone()
    }
    fn log(&self) -> Vec<(String, u16)> {
        self.log.lock().unwrap().clone()
    }
}

async fn hook(
    State(st): State<Arc<RxState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let key = h("idempotency-key");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.", h("x-parkguard-timestamp")).as_bytes());
    mac.update(&body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if h("x-parkguard-signature") != format!("sha256={want}") {
        st.bad_signatures.fetch_add(1, Ordering::SeqCst);
        st.log.lock().unwrap().push((key, 401));
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let mode = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or(*st.default.lock().unwrap())
        .unwrap_or(Mode::Ok);
    let status = match mode {
        Mode::Fail503 => 503,
        Mode::Reject400 => 400,
        Mode::Ok | Mode::StoreThenStall => 200,
    };
    st.log.lock().unwrap().push((key.clone(), status));
    if status != 200 {
        return (StatusCode::from_u16(status).unwrap(), "no".into());
    }
    let fresh = st.keys.lock().unwrap().insert(key.clone());
    if fresh {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["key"].as_str().unwrap(), key, "body key = header key");
        let mut rec = st.records.lock().unwrap();
        for e in v["events"].as_array().unwrap() {
            rec.push((
                e["event_id"].as_u64().unwrap(),
                e["alarm_id"].as_str().unwrap().to_string(),
            ));
        }
    }
    if matches!(mode, Mode::StoreThenStall) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    (
        StatusCode::OK,
        if fresh { "stored" } else { "duplicate" }.into(),
    )
}

/// The receiver: its own runtime, so `stop` really closes the listener and every
/// connection (like a crashed server), and `start` brings it back on the same port.
struct Receiver {
    port: u16,
    state: Arc<RxState>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Receiver {
            port,
            state: Arc::default(),
            rt: None,
        }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
    fn start(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port))) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.port);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind receiver port {}: {e}", self.port),
            }
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.state.clone());
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        self.rt = Some(rt);
    }
    fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn note(id: u64, enterprise: &str, alarm: &str) -> Notification {
    Notification {
        event_id: id,
        alarm_id: alarm.into(),
        drill: None,
        enterprise: enterprise.into(),
        enterprise_name: None,
        area: None,
        kind: PointKind::Combustible,
        tag: alarm.rsplit('/').next().unwrap().into(),
        point_name: "可燃气体".into(),
        condition: "level-1".into(),
        priority: Priority::High,
        state: "unack".into(),
        value: Some(30.0),
        unit: "%LEL".into(),
        limit: Some(25.0),
        time: Timestamp::from_secs(1_795_688_531 + id as i64),
        grade: None,
        message_zh: format!("事件 {id}"),
        message_en: format!("event {id}"),
    }
}

fn router() -> Router {
    let ch: BTreeMap<String, bool> = [("bureau".to_string(), false)].into_iter().collect();
    let r: RouteConfig =
        serde_json::from_value(serde_json::json!({"channels": ["bureau"]})).unwrap();
    Router::new(vec![r.validate(0, &ch, &[]).unwrap()], ch)
}

/// Journal the events and queue them in the same transaction, as the daemon does.
fn journal_and_enqueue(db: &Path, events: &[Notification]) {
    let mut conn = outbox::open(db).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS journal (event_id INTEGER PRIMARY KEY, body TEXT)",
    )
    .unwrap();
    let r = router();
    let tx = conn.transaction().unwrap();
    for n in events {
        tx.execute(
            "INSERT INTO journal VALUES (?1, ?2)",
            rusqlite::params![n.event_id as i64, serde_json::to_string(n).unwrap()],
        )
        .unwrap();
        for a in r.route(n).channels {
            assert!(outbox::enqueue(&tx, &a, n, n.time).unwrap());
        }
    }
    tx.commit().unwrap();
}

fn channel(url: &str, dir: &Path) -> Arc<Channel> {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg: ChannelConfig = serde_json::from_value(serde_json::json!({
        "type": "webhook", "name": "bureau", "url": url,
        "secret_file": secret, "timeout_ms": 500
    }))
    .unwrap();
    Arc::new(Channel::build(&cfg).unwrap())
}

struct Worker {
    rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    wake: Arc<Notify>,
}

fn start_worker(db: &Path, ch: Arc<Channel>) -> Worker {
    start_worker_with(db, ch, Duration::from_millis(300))
}

fn start_worker_with(db: &Path, ch: Arc<Channel>, window: Duration) -> Worker {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let cfg = WorkerConfig {
        grouping: Grouping {
            window,
            max_batch: 5,
        },
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        poll: Duration::from_millis(100),
    };
    let fut = outbox::run_worker(db.to_path_buf(), ch, cfg, wake.clone(), cancel.clone());
    rt.spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("outbox worker ended with an error (not restarted here): {e:?}");
        }
    });
    Worker { rt, cancel, wake }
}

fn wait_until_settled(db: &Path, what: &str) {
    let conn = outbox::open(db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = outbox::channel_summaries(&conn).unwrap();
        if s.iter().all(|c| c.pending == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still pending after 60 s: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Per alarm, event ids in the order the receiver first stored them.
fn per_alarm(records: &[(u64, String)]) -> HashMap<String, Vec<u64>> {
    let mut m: HashMap<String, Vec<u64>> = HashMap::new();
    for (id, alarm) in records {
        m.entry(alarm.clone()).or_default().push(*id);
    }
    m
}

fn interleaved(from: u64, n: u64) -> Vec<Notification> {
    (from..from + n)
        .map(|id| match id % 3 {
            0 => note(id, "E001", "E001/GT-101/H"),
            1 => note(id, "E001", "E001/GT-102/H"),
            _ => note(id, "E002", "E002/PT-201/HH"),
        })
        .collect()
}

fn assert_exactly_once_in_order(rx: &RxState, events: &[Notification]) {
    let records = rx.records();
    let ids: Vec<u64> = records.iter().map(|r| r.0).collect();
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "an event was recorded twice: {ids:?}"
    );
    let want: HashSet<u64> = events.iter().map(|n| n.event_id).collect();
    assert_eq!(unique, want, "every event recorded");
    for (alarm, got) in per_alarm(&records) {
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(got, sorted, "events of {alarm} out of order");
    }
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
}

#[test]
fn receiver_down_then_back_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut rx = Receiver::new(); // not started: the receiver is down
    let first = interleaved(1, 20);
    journal_and_enqueue(&db, &first);
    let w = start_worker(&db, channel(&rx.url(), dir.path()));

    std::thread::sleep(Duration::from_secs(2));
    let late = interleaved(21, 10);
    journal_and_enqueue(&db, &late);
    w.wake.notify_one();
    std::thread::sleep(Duration::from_secs(2));

    // while down: retried, nothing delivered, the error is visible per event and channel
    let conn = outbox::open(&db).unwrap();
    let head = &outbox::status(&conn, 1).unwrap()[0];
    assert_eq!(head.status, Status::Pending);
    assert!(head.attempts >= 2, "retried with back-off: {head:?}");
    assert!(
        head.last_error
            .as_deref()
            .unwrap_or("")
            .contains("connection failed"),
        "{head:?}"
    );
    assert_eq!(outbox::channel_summaries(&conn).unwrap()[0].delivered, 0);

    rx.start();
    wait_until_settled(&db, "after the receiver came back");
    let all: Vec<Notification> = first.iter().chain(&late).cloned().collect();
    assert_exactly_once_in_order(&rx.state, &all);
    let rows = outbox::channel_rows(&conn, "bureau").unwrap();
    assert!(
        rows.iter()
            .all(|r| r.status == Status::Delivered && r.delivered_at_ms.is_some())
    );
    // a backlog goes out grouped per enterprise (≤ 5 per message), not one message each
    let messages = rx.state.log().iter().filter(|(_, s)| *s == 200).count();
    assert!(
        messages < all.len(),
        "{messages} messages for {} events",
        all.len()
    );
    w.cancel.cancel();
}

#[test]
fn lost_replies_and_5xx_are_retried_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut rx = Receiver::new();
    rx.state.script.lock().unwrap().extend([
        Mode::StoreThenStall,
        Mode::StoreThenStall,
        Mode::Fail503,
        Mode::StoreThenStall,
        Mode::Fail503,
    ]);
    rx.start();
    let w = start_worker(&db, channel(&rx.url(), dir.path()));
    let events: Vec<Notification> = (1..=12)
        .map(|id| note(id, "E003", "E003/AT-301/H"))
        .collect();
    for chunk in events.chunks(3) {
        journal_and_enqueue(&db, chunk);
        w.wake.notify_one();
        std::thread::sleep(Duration::from_millis(150));
    }
    wait_until_settled(&db, "after lost replies");
    assert_exactly_once_in_order(&rx.state, &events);
    let log = rx.state.log();
    let keys: HashSet<&String> = log.iter().map(|(k, _)| k).collect();
    assert!(
        log.len() > keys.len(),
        "some messages were delivered more than once (at least once), deduplicated by key: {log:?}"
    );
    let conn = outbox::open(&db).unwrap();
    let first = &outbox::status(&conn, 1).unwrap()[0];
    assert!(
        first.attempts >= 2,
        "the first message's reply was lost: {first:?}"
    );
    w.cancel.cancel();
}

#[test]
fn outbox_resumes_after_a_crash_with_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut rx = Receiver::new();
    rx.state.set_default(Mode::Fail503);
    rx.start();
    let events = interleaved(100, 15);
    journal_and_enqueue(&db, &events);
    let w = start_worker(&db, channel(&rx.url(), dir.path()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.state.log().len() < 3 {
        assert!(Instant::now() < deadline, "no attempts");
        std::thread::sleep(Duration::from_millis(20));
    }
    // crash: the worker's runtime is torn down mid-retry, nothing is shut down cleanly
    w.rt.shutdown_background();
    let failed_keys: Vec<String> = rx.state.log().into_iter().map(|(k, _)| k).collect();

    {
        let conn = outbox::open(&db).unwrap();
        let rows = outbox::channel_rows(&conn, "bureau").unwrap();
        assert_eq!(rows.len(), 15);
        assert!(rows.iter().all(|r| r.status == Status::Pending));
        assert!(rows.iter().any(|r| r.attempts > 0 && r.batch.is_some()));
    }

    rx.state.set_default(Mode::Ok);
    let w2 = start_worker(&db, channel(&rx.url(), dir.path()));
    wait_until_settled(&db, "after restart");
    assert_exactly_once_in_order(&rx.state, &events);
    // the batches formed before the crash went out under their original keys
    let delivered: Vec<String> = rx
        .state
        .log()
        .into_iter()
        .filter(|(_, s)| *s == 200)
        .map(|(k, _)| k)
        .collect();
    for k in &failed_keys {
        assert!(
            delivered.contains(k),
            "batch {k} resent under its key: {delivered:?}"
        );
    }
    w2.cancel.cancel();
}

#[test]
fn permanent_rejection_is_recorded_and_does_not_block_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut rx = Receiver::new();
    rx.state.script.lock().unwrap().push_back(Mode::Reject400);
    rx.start();
    let events: Vec<Notification> = (1..=4).map(|id| note(id, "E004", "E004/LT-1/H")).collect();
    journal_and_enqueue(&db, &events[..1]);
    let w = start_worker(&db, channel(&rx.url(), dir.path()));
    wait_until_settled(&db, "rejected");
    journal_and_enqueue(&db, &events[1..]);
    w.wake.notify_one();
    wait_until_settled(&db, "after rejection");
    let conn = outbox::open(&db).unwrap();
    let s = &outbox::status(&conn, 1).unwrap()[0];
    assert_eq!(s.status, Status::Failed);
    assert!(
        s.last_error.as_deref().unwrap().contains("HTTP 400"),
        "{s:?}"
    );
    assert_eq!(s.attempts, 1, "a permanent error is not retried");
    let ids: Vec<u64> = rx.state.records().iter().map(|r| r.0).collect();
    assert_eq!(ids, [2, 3, 4]);
    let sum = &outbox::channel_summaries(&conn).unwrap()[0];
    assert_eq!((sum.delivered, sum.failed, sum.pending), (3, 1, 0));
    w.cancel.cancel();
}

#[test]
fn enqueue_lives_and_dies_with_the_journal_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db: PathBuf = dir.path().join("state.db");
    let mut conn = outbox::open(&db).unwrap();
    let r = router();
    let n = note(42, "E001", "E001/GT-101/H");
    {
        let tx = conn.transaction().unwrap();
        let a = &r.route(&n).channels[0];
        assert!(outbox::enqueue(&tx, a, &n, n.time).unwrap());
        // rolled back (dropped without commit): the event was never journaled
    }
    assert!(outbox::status(&conn, 42).unwrap().is_empty());
    let tx = conn.transaction().unwrap();
    let a = &r.route(&n).channels[0];
    assert!(outbox::enqueue(&tx, a, &n, n.time).unwrap());
    assert!(
        !outbox::enqueue(&tx, a, &n, n.time).unwrap(),
        "queued once per channel"
    );
    // an admission for another event is refused
    let other = note(43, "E001", "E001/GT-101/H");
    assert!(outbox::enqueue(&tx, a, &other, other.time).is_err());
    tx.commit().unwrap();
    let s = outbox::status(&conn, 42).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].channel.as_str(), s[0].status),
        ("bureau", Status::Pending)
    );
}

#[test]
fn a_flood_of_one_enterprise_goes_out_grouped_first_alarm_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut rx = Receiver::new();
    rx.start();
    // a 2 s window, so that the flood below surely falls inside it
    let w = start_worker_with(&db, channel(&rx.url(), dir.path()), Duration::from_secs(2));
    let events: Vec<Notification> = (1..=8)
        .map(|id| note(id, "E005", &format!("E005/GT-{}/H", 500 + id)))
        .collect();
    journal_and_enqueue(&db, &events[..1]);
    w.wake.notify_one();
    wait_until_settled(&db, "first alarm");
    // the first alarm of a quiet enterprise was not held back for company
    assert_eq!(rx.state.log(), [("1".to_string(), 200)]);
    journal_and_enqueue(&db, &events[1..]);
    w.wake.notify_one();
    wait_until_settled(&db, "flood");
    // the flood within the window: one message of 5 (max_batch), then the remaining 2
    let keys: Vec<String> = rx.state.log().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["1", "2", "7"]);
    assert_exactly_once_in_order(&rx.state, &events);
    // each alarm keeps its own record, with the message it went out in
    let conn = outbox::open(&db).unwrap();
    let batches: Vec<Option<u64>> = outbox::channel_rows(&conn, "bureau")
        .unwrap()
        .iter()
        .map(|r| r.batch)
        .collect();
    assert_eq!(batches, [1, 2, 2, 2, 2, 2, 7, 7].map(Some).to_vec());
    w.cancel.cancel();
}
