//! The writer against an in-process fake InfluxDB that records every raw request and
//! answers from a script: exact line protocol, headers and gzip; 429 with Retry-After;
//! 503; 401 (loud, keeps spooling, nothing lost); 413 (smaller batches); 400 partial write
//! (split, good lines written, rejected lines dead-lettered with the server's reason).

mod storage_common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parkguard_drivers::influx::encode::{self, PointMeta};
use parkguard_rules::PointTable;
use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage_common::*;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
struct Req {
    uri: String,
    headers: HeaderMap,
    body: String,
    at: Instant,
    status: u16,
}

/// What to answer: (status, Retry-After, body).
type Script = dyn Fn(usize, &str) -> (u16, Option<&'static str>, String) + Send + Sync;

struct Fake {
    base: String,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().expect("lock").clone()
    }
    /// Lines of every request answered 2xx, in order.
    fn accepted_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.status / 100 == 2)
            .flat_map(|r| r.body.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }
}

#[derive(Clone)]
struct St {
    reqs: Arc<Mutex<Vec<Req>>>,
    script: Arc<Script>,
}

async fn write(State(st): State<St>, uri: Uri, headers: HeaderMap, raw: Bytes) -> Response {
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .expect("valid gzip body");
        s
    } else {
        String::from_utf8(raw.to_vec()).expect("utf8 body")
    };
    let n = st.reqs.lock().expect("lock").len();
    let (status, retry_after, reply) = (st.script)(n, &body);
    st.reqs.lock().expect("lock").push(Req {
        uri: uri.to_string(),
        headers,
        body,
        at: Instant::now(),
        status,
    });
    let mut resp = (
        StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        reply,
    )
        .into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut()
            .insert("retry-after", ra.parse().expect("header value"));
    }
    resp
}

async fn start_fake(
    script: impl Fn(usize, &str) -> (u16, Option<&'static str>, String) + Send + Sync + 'static,
) -> Fake {
    let reqs = Arc::new(Mutex::new(Vec::new()));
    let st = St {
        reqs: reqs.clone(),
        script: Arc::new(script),
    };
    let app = axum::Router::new()
        .route("/api/v2/write", axum::routing::post(write))
        .with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Fake {
        base: format!("http://{addr}"),
        reqs,
    }
}

fn ok() -> (u16, Option<&'static str>, String) {
    (204, None, String::new())
}

/// The lines the writer must deliver for readings `ks` (encoded with the crate's encoder;
/// its exact text is checked by hand in `raw_request_is_exact_line_protocol`).
fn expected_lines(table: &PointTable, n: u32, ks: impl Iterator<Item = u64>) -> Vec<String> {
    ks.map(|k| {
        let r = reading(table, n, k);
        let p = table.get(r.point).expect("point");
        let prefix = encode::reading_prefix(PARK, PointMeta::from(p));
        let mut out = Vec::new();
        encode::reading_line(&mut out, &prefix, &r);
        String::from_utf8(out).expect("utf8").trim_end().to_owned()
    })
    .collect()
}

struct Rig {
    _dir: tempfile::TempDir,
    dead: std::path::PathBuf,
    spool: parkguard::store::spool::Spool,
    table: PointTable,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open_spool(&dir.path().join("spool"), spool_settings(1 << 20, 1 << 30));
    Rig {
        dead: dir.path().join("dead-letter.lp"),
        _dir: dir,
        spool,
        table: table(5),
    }
}

fn append(rig: &mut Rig, ks: std::ops::Range<u64>) {
    let batch: Vec<_> = ks.map(|k| reading(&rig.table, 5, k)).collect();
    rig.spool.append(&batch, &rig.table).expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_request_is_exact_line_protocol() {
    let fake = start_fake(|_, _| ok()).await;
    let mut rig = rig();
    let token = rig._dir.path().join("token");
    std::fs::write(&token, "s3cr3t-токен\n").expect("token file");
    let mut cfg = influx_config(&fake.base);
    cfg.token_file = Some(token);
    let w = start_writer(&rig.spool, cfg, &rig.dead);
    append(&mut rig, 0..3);
    let stats = rig.spool.stats();
    wait_for("delivery", Duration::from_secs(20), || {
        stats.readings_delivered.load(Relaxed) == 3
    })
    .await;
    w.stop().await;
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        r.uri,
        "/api/v2/write?org=park-org&bucket=readings&precision=ns"
    );
    assert_eq!(r.headers["authorization"], "Token s3cr3t-токен".as_bytes());
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    // Hand-written: park `化工园区 A,1="x"\`, tags `GT-0 可燃气体`, `PT,1=a "b"`, `TT\2\`,
    // enterprises `企业 N,有限=公司`.
    let want = concat!(
        r#"reading,enterprise=企业\ 0\,有限\=公司,kind=combustible,park=化工园区\ A\,1\="x"\\,tag=GT-0\ 可燃气体,unit=%LEL quality=1i,value=-50 1704067200000000000"#,
        "\n",
        r#"reading,enterprise=企业\ 1\,有限\=公司,kind=toxic,park=化工园区\ A\,1\="x"\\,tag=PT\,1\=a\ "b",unit=ppm quality=0i,value=-49.999 1704067200001000000"#,
        "\n",
        r#"reading,enterprise=企业\ 2\,有限\=公司,kind=pressure,park=化工园区\ A\,1\="x"\\,tag=TT\2\\,unit=MPa quality=0i,value=-49.998 1704067200002000000"#,
        "\n",
    );
    assert_eq!(r.body, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_429_honours_retry_after_and_503_backs_off() {
    let fake = start_fake(|i, _| match i {
        0 => (
            429,
            Some("1"),
            r#"{"code":"too many requests","message":"slow down"}"#.into(),
        ),
        1 => (503, None, "unavailable".into()),
        _ => ok(),
    })
    .await;
    let mut rig = rig();
    let mut cfg = influx_config(&fake.base);
    cfg.retry_max_ms = 5000; // caps Retry-After; the back-off still starts at 20 ms
    let w = start_writer(&rig.spool, cfg, &rig.dead);
    append(&mut rig, 0..10);
    let stats = rig.spool.stats();
    wait_for("delivery", Duration::from_secs(20), || {
        stats.readings_delivered.load(Relaxed) == 10
    })
    .await;
    let ws = w.stats.clone();
    w.stop().await;
    let reqs = fake.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 503, 204]
    );
    // The retry after the 429 waited the server's Retry-After (1 s), not the 20 ms
    // back-off.
    assert!(
        reqs[1].at - reqs[0].at >= Duration::from_secs(1),
        "retried after {:?}",
        reqs[1].at - reqs[0].at
    );
    assert!(
        reqs.iter().all(|r| r.body == reqs[0].body),
        "same batch resent"
    );
    assert_eq!(ws.throttled.load(Relaxed), 2);
    assert_eq!(fake.accepted_lines(), expected_lines(&rig.table, 5, 0..10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_401_is_loud_and_keeps_spooling() {
    let fake = start_fake(|i, _| {
        if i < 4 {
            (
                401,
                None,
                r#"{"code":"unauthorized","message":"unauthorized access"}"#.into(),
            )
        } else {
            ok()
        }
    })
    .await;
    let mut rig = rig();
    let w = start_writer(&rig.spool, influx_config(&fake.base), &rig.dead);
    append(&mut rig, 0..10);
    let stats = rig.spool.stats();
    let ws = w.stats.clone();
    wait_for("three refusals", Duration::from_secs(20), || {
        ws.auth_or_missing.load(Relaxed) >= 3
    })
    .await;
    // Refused: nothing delivered, the cursor has not moved, readings keep spooling.
    assert_eq!(stats.readings_delivered.load(Relaxed), 0);
    assert!(
        ws.last_error
            .lock()
            .expect("lock")
            .as_deref()
            .is_some_and(|e| e.contains("401") && e.contains("unauthorized access"))
    );
    append(&mut rig, 10..20);
    wait_for("delivery", Duration::from_secs(20), || {
        stats.readings_delivered.load(Relaxed) == 20
    })
    .await;
    w.stop().await;
    assert_eq!(ws.auth_or_missing.load(Relaxed), 4);
    assert_eq!(
        fake.accepted_lines(),
        expected_lines(&rig.table, 5, 0..20),
        "every reading once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_413_sends_smaller_batches() {
    let fake = start_fake(|_, body| {
        if body.lines().count() > 40 {
            (413, None, r#"{"code":"request too large"}"#.into())
        } else {
            ok()
        }
    })
    .await;
    let mut rig = rig();
    let w = start_writer(&rig.spool, influx_config(&fake.base), &rig.dead);
    append(&mut rig, 0..200);
    let stats = rig.spool.stats();
    wait_for("delivery", Duration::from_secs(20), || {
        stats.readings_delivered.load(Relaxed) == 200
    })
    .await;
    let ws = w.stats.clone();
    w.stop().await;
    assert!(ws.too_large.load(Relaxed) >= 1);
    assert_eq!(ws.lines_dead_lettered.load(Relaxed), 0);
    let reqs = fake.requests();
    assert_eq!(reqs[0].status, 413);
    assert!(
        reqs.iter()
            .filter(|r| r.status == 204)
            .all(|r| r.body.lines().count() <= 40)
    );
    assert_eq!(
        fake.accepted_lines(),
        expected_lines(&rig.table, 5, 0..200),
        "every reading once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_400_splits_and_dead_letters_rejected_lines() {
    // The "server" rejects comm-lost readings (quality=1i: every 13th) with InfluxDB's
    // partial-write message.
    let fake = start_fake(|_, body| match body.lines().find(|l| l.contains("quality=1i")) {
        Some(l) => (
            400,
            None,
            format!(
                r#"{{"code":"invalid","message":"partial write: unable to parse '{}': invalid field"}}"#,
                l.replace('\\', "\\\\").replace('"', "\\\"")
            ),
        ),
        None => ok(),
    })
    .await;
    let mut rig = rig();
    let w = start_writer(&rig.spool, influx_config(&fake.base), &rig.dead);
    append(&mut rig, 0..200);
    let stats = rig.spool.stats();
    wait_for("delivery", Duration::from_secs(30), || {
        stats.readings_delivered.load(Relaxed) == 200
    })
    .await;
    let ws = w.stats.clone();
    w.stop().await;
    let poison: Vec<u64> = (0..200).filter(|k| k % 13 == 0).collect();
    let good: Vec<u64> = (0..200).filter(|k| k % 13 != 0).collect();
    assert_eq!(ws.lines_dead_lettered.load(Relaxed), poison.len() as u64);
    assert_eq!(
        fake.accepted_lines(),
        expected_lines(&rig.table, 5, good.into_iter()),
        "every good reading once, in order"
    );
    let dead = std::fs::read_to_string(&rig.dead).expect("dead-letter file");
    let lines: Vec<&str> = dead.lines().collect();
    let want = expected_lines(&rig.table, 5, poison.iter().copied());
    assert_eq!(lines.len(), 2 * want.len(), "{dead}");
    for (pair, w) in lines.chunks(2).zip(&want) {
        assert!(
            pair[0].starts_with("# ") && pair[0].contains(" 400 partial write: unable to parse"),
            "reason line: {}",
            pair[0]
        );
        assert!(pair[0].contains("invalid field"));
        assert_eq!(pair[1], w);
    }
}
