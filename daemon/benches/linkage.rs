//! Linkage figures: routing, escalation ticks, outbox enqueue (in a journal transaction,
//! WAL + synchronous=FULL) and end-to-end outbox delivery to a local webhook receiver.
//!
//! `cargo bench -p parkguard --bench linkage`

#![allow(clippy::unwrap_used)] // benchmark setup: a panic is a failed run

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parkguard::linkage::escalate::{EscalationConfig, Escalator};
use parkguard::linkage::group::Grouping;
use parkguard::linkage::outbox::{self, WorkerConfig};
use parkguard::linkage::route::{RouteConfig, Router};
use parkguard_drivers::notify::{Channel, ChannelConfig, Notification, Priority};
use parkguard_rules::{PointKind, Timestamp};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn note(id: u64) -> Notification {
    let ent = format!("E{:03}", id % 20);
    Notification {
        event_id: id,
        alarm_id: format!("{ent}/GT-{}/H", id % 97),
        drill: None,
        enterprise: ent,
        enterprise_name: None,
        area: Some(format!("area-{}", id % 5)),
        kind: PointKind::Combustible,
        tag: format!("GT-{}", id % 97),
        point_name: "可燃气体".into(),
        condition: "level-1".into(),
        priority: Priority::High,
        state: "unack".into(),
        value: Some(30.0),
        unit: "%LEL".into(),
        limit: Some(25.0),
        time: Timestamp::from_secs(1_795_688_531),
        grade: None,
        message_zh: "可燃气体一级报警".into(),
        message_en: "combustible level-1".into(),
    }
}

fn channels() -> BTreeMap<String, bool> {
    (0..10).map(|i| (format!("ch{i}"), i == 9)).collect()
}

fn router() -> Router {
    let ch = channels();
    let routes = (0..50)
        .map(|i| {
            let r: RouteConfig = serde_json::from_value(serde_json::json!({
                "enterprises": [format!("E{:03}", i % 20)],
                "kinds": ["combustible", "toxic"],
                "min_priority": "medium",
                "channels": [format!("ch{}", i % 9)]
            }))
            .unwrap();
            r.validate(i, &ch, &[]).unwrap()
        })
        .collect();
    Router::new(routes, ch)
}

fn bench(c: &mut Criterion) {
    let r = router();
    let n = note(7);
    c.bench_function("route 50 routes", |b| b.iter(|| r.route(&n)));

    let policy: EscalationConfig = serde_json::from_value(serde_json::json!({
        "name": "p", "repeat": "10m",
        "step": [{"after": "0s", "channels": ["ch0"]}, {"after": "2m", "channels": ["ch1"]},
                 {"after": "5m", "channels": ["ch2"]}]
    }))
    .unwrap();
    let policy = policy.validate(&channels()).unwrap();
    let mut g = c.benchmark_group("escalation");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("on_tick 10k active alarms, nothing due", |b| {
        let mut e = Escalator::new([policy.clone()]);
        let t0 = Timestamp::from_secs(1000);
        for i in 0..10_000 {
            e.on_event(&format!("a{i}"), i, "p", t0).unwrap();
        }
        b.iter(|| e.on_tick(t0 + Duration::from_secs(60)))
    });
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let mut conn = outbox::open(&db).unwrap();
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(1000));
    let mut next = 0u64;
    g.bench_function("enqueue 1000 events in one transaction", |b| {
        b.iter(|| {
            let tx = conn.transaction().unwrap();
            for _ in 0..1000 {
                next += 1;
                let n = note(next);
                for a in r.route(&n).channels {
                    outbox::enqueue(&tx, &a, &n, n.time).unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    g.finish();

    // end to end: 2000 queued events, 20 enterprises, batches of ≤ 20, to a local receiver
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(async {
        let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}/hook")
    });
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let cfg: ChannelConfig = serde_json::from_value(serde_json::json!({
        "type": "webhook", "name": "ch0", "url": url, "secret_file": secret
    }))
    .unwrap();
    let ch = Arc::new(Channel::build(&cfg).unwrap());
    let mut g = c.benchmark_group("outbox delivery");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2000));
    let mut run = 0u64;
    g.bench_function("2000 events to a local webhook", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run += 1;
                let db = dir.path().join(format!("e2e-{run}.db"));
                let mut conn = outbox::open(&db).unwrap();
                let tx = conn.transaction().unwrap();
                let only = Router::new(
                    vec![
                        serde_json::from_value::<RouteConfig>(
                            serde_json::json!({"channels": ["ch0"]}),
                        )
                        .unwrap()
                        .validate(0, &channels(), &[])
                        .unwrap(),
                    ],
                    channels(),
                );
                for id in 1..=2000 {
                    let n = note(id);
                    for a in only.route(&n).channels {
                        outbox::enqueue(&tx, &a, &n, n.time).unwrap();
                    }
                }
                tx.commit().unwrap();
                let cancel = tokio_util::sync::CancellationToken::new();
                let wcfg = WorkerConfig {
                    grouping: Grouping {
                        window: Duration::ZERO,
                        max_batch: 20,
                    },
                    poll: Duration::from_millis(5),
                    ..WorkerConfig::default()
                };
                let start = Instant::now();
                rt.spawn(outbox::run_worker(
                    db.clone(),
                    ch.clone(),
                    wcfg,
                    Arc::new(tokio::sync::Notify::new()),
                    cancel.clone(),
                ));
                loop {
                    let s = outbox::channel_summaries(&conn).unwrap();
                    if s[0].pending == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                total += start.elapsed();
                cancel.cancel();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
