//! SSE fan-out under load, over real sockets: many clients on `/api/v1/events` while the
//! "engine" publishes point updates (throttled per point) and alarm events into the hub.
//!
//! Asserted: every client receives every alarm event exactly once, in id order — unless it
//! fell behind and was told to `reset` (counted and reported). Reported, not asserted:
//! delivery latency p50/p99 and the CPU the server threads used.
//!
//! Scale with `PG_SSE_CLIENTS` (default 20), `PG_SSE_READINGS` per second (default 2000),
//! `PG_SSE_SECONDS` (default 2). The figures in the report use 200 clients, 5000/s,
//! `--release`.

use parkguard::api::testing::TestApp;
use parkguard::auth::Role;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// CPU seconds (user + system) of this process's threads whose name starts with `prefix`.
fn cpu_of_threads(prefix: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        if let Some(rest) = stat.rsplit(')').next() {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 13 {
                let ut: f64 = f[11].parse().unwrap_or(0.0);
                let st: f64 = f[12].parse().unwrap_or(0.0);
                total += (ut + st) / tick;
            }
        }
    }
    total
}

struct ClientResult {
    alarm_ids: Vec<u64>,
    latencies_ns: Vec<i64>,
    resets: usize,
    points: usize,
}

async fn client(addr: String, token: String) -> std::io::Result<ClientResult> {
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    let (r, mut w) = stream.into_split();
    w.write_all(
        format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut lines = BufReader::new(r).lines();
    let mut res = ClientResult {
        alarm_ids: Vec::new(),
        latencies_ns: Vec::new(),
        resets: 0,
        points: 0,
    };
    let (mut id, mut kind) = (None::<u64>, String::new());
    loop {
        let Some(line) = lines.next_line().await? else {
            break;
        };
        // Chunked transfer encoding: size lines are hex only; skip them.
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.trim().to_string();
            match kind.as_str() {
                "reset" => res.resets += 1,
                "end" => break,
                _ => {}
            }
        } else if let Some(v) = line.strip_prefix("data: ") {
            match kind.as_str() {
                "alarm" => {
                    let d: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
                    res.latencies_ns
                        .push(now_ns() - d["sent_ns"].as_i64().unwrap_or(0));
                    if let Some(i) = id {
                        res.alarm_ids.push(i);
                    }
                }
                "point" => res.points += 1,
                _ => {}
            }
        }
    }
    Ok(res)
}

#[test]
fn many_sse_clients_get_every_alarm_in_order() {
    let clients = env("PG_SSE_CLIENTS", 20) as usize;
    let rate = env("PG_SSE_READINGS", 2000);
    let seconds = env("PG_SSE_SECONDS", 2);
    let app = TestApp::new(&[("scada", Role::Viewer, "viewer-pass-123")]).expect("app");
    let users = app.dir.path().join("users.toml");
    let token = parkguard::auth::add_token(&users, "scada", "load").expect("token");
    let mut state = app.state.clone();
    state.auth = Arc::new(
        parkguard::auth::AuthService::from_file(&users, Default::default()).expect("auth"),
    );
    let hub = state.hub.clone();
    let router = parkguard::api::router(state);

    // The server: its own runtime on threads named pg-api*.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pg-api")
        .enable_all()
        .build()
        .expect("runtime");
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cancel = tokio_util::sync::CancellationToken::new();
    server_rt.spawn(parkguard::api::serve(listener, router, cancel.clone()));
    server_rt.spawn(hub.clone().run_flusher(cancel.clone()));

    // The clients: another runtime.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pg-client")
        .enable_all()
        .build()
        .expect("runtime");
    let handles: Vec<_> = (0..clients)
        .map(|_| client_rt.spawn(client(addr.clone(), token.clone())))
        .collect();
    // Wait until every client is subscribed.
    let t0 = Instant::now();
    while hub.subscribers() < clients && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(hub.subscribers(), clients, "clients subscribed");

    // The "engine": readings for 1,533 points at `rate`/s, one alarm event every 50 ms.
    let cpu0 = cpu_of_threads("pg-api") + cpu_of_threads("pg-engine");
    let wall0 = Instant::now();
    let engine_hub = hub.clone();
    let engine = std::thread::Builder::new()
        .name("pg-engine".into())
        .spawn(move || {
            let tags: Vec<String> = (0..1533).map(|i| format!("P{i:04}")).collect();
            let start = Instant::now();
            let mut sent = 0u64;
            let mut alarms = Vec::new();
            let mut next_alarm = Duration::ZERO;
            while start.elapsed() < Duration::from_secs(seconds) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while sent < due {
                    let tag = &tags[(sent % tags.len() as u64) as usize];
                    engine_hub.publish_point(
                        tag,
                        &json!({"tag": tag, "value": sent as f64 * 0.01, "quality": "good", "sent_ns": now_ns()}),
                        Instant::now(),
                    );
                    sent += 1;
                }
                if start.elapsed() >= next_alarm {
                    alarms.push(engine_hub.publish("alarm", &json!({"id": alarms.len(), "sent_ns": now_ns()})));
                    next_alarm += Duration::from_millis(50);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (sent, alarms)
        })
        .expect("engine thread");
    let (sent, alarm_ids) = engine.join().expect("engine");
    // The end marker: each client stops when it has read everything before it.
    hub.publish("end", &json!({}));
    let results: Vec<ClientResult> = handles
        .into_iter()
        .map(|h| {
            client_rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(300), h).await })
                .expect("client finished within 300 s")
                .expect("join")
                .expect("client io")
        })
        .collect();
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_of_threads("pg-api") + cpu_of_threads("pg-engine") - cpu0;
    cancel.cancel();

    let mut lat: Vec<i64> = results
        .iter()
        .flat_map(|r| r.latencies_ns.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1e6
    };
    let resets: usize = results.iter().map(|r| r.resets).sum();
    let points: usize = results.iter().map(|r| r.points).sum();
    eprintln!(
        "SSE load: {clients} clients, {sent} readings in {seconds} s ({rate}/s), {} alarm events; \
         alarm delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {points} point events delivered; \
         {resets} resets; server+engine CPU {:.2} s over {wall:.2} s = {:.2} cores",
        alarm_ids.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        cpu,
        cpu / wall
    );
    for (i, r) in results.iter().enumerate() {
        if r.resets > 0 {
            // A client that fell behind was told to reload; what it got must still be in order.
            assert!(
                r.alarm_ids.windows(2).all(|w| w[0] < w[1]),
                "client {i} out of order"
            );
            continue;
        }
        assert_eq!(
            r.alarm_ids, alarm_ids,
            "client {i} missed, duplicated or reordered alarms"
        );
    }
    assert!(
        resets < clients,
        "every client fell behind: {resets} resets"
    );
}
