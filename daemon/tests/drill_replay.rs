//! A replay of a recorded hour from parkguard's own archive, at 60×, gives exactly the
//! alarm events of the live run: same order, same alarms, same kinds, same times, same
//! values — the engine is deterministic and the replay runs it on the recorded clock.
//!
//! The live run is the REAL topology (recorder → spool archive and engine task → journal),
//! fed through its readings channel with an hour of 1 Hz readings of four points whose
//! values cross their limits many times (with on-delays, deadbands, a comm-lost spell and
//! a dead point going stale). The engine task's clock is the test's: it is set to each
//! second once that second's readings are in, as the real clock would be. Then a drill
//! replays the archive through the same journal and its events are compared with the
//! live ones.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use parkguard::drill::live::{DrillParts, DrillState, Drills, ReplaySpec, StartRequest};
use parkguard::engine_task::EngineTaskConfig;
use parkguard::store::journal::Journal;
use parkguard_rules::{Quality, Reading, Timestamp};
use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The recorded hour starts here (2025-11-25T00:00:00Z).
const T0: i64 = 1_764_028_800;
const SECONDS: i64 = 3600;

static CLOCK: AtomicI64 = AtomicI64::new(0);

fn test_clock() -> Timestamp {
    Timestamp(CLOCK.load(Ordering::SeqCst))
}

const PARK: &str = r#"
[park]
id = "replay-test"
name = "回放测试园区"
timezone = "Asia/Shanghai"

[data]
dir = "unused"

[alarm]
stale_multiple = 3.0

[[enterprise]]
code = "E1"
name = "一号企业"

[[point]]
tag = "E1-GT-1"
name = "氯气 1"
enterprise = "E1"
kind = "toxic"
gas = "cl2"
unit = "ppm"
range = [0, 10]
interval = "1s"

[[point]]
tag = "E1-GT-2"
name = "可燃气 2"
enterprise = "E1"
kind = "combustible"
gas = "ch4"
unit = "%LEL"
range = [0, 100]
interval = "1s"

[[point]]
tag = "E1-PT-3"
name = "压力 3"
enterprise = "E1"
kind = "pressure"
unit = "MPa"
range = [0, 2]
interval = "1s"
limits = { h = 1.2, hh = 1.4, l = 0.1 }

[[point]]
tag = "E1-GT-4"
name = "氯气 4"
enterprise = "E1"
kind = "toxic"
gas = "cl2"
unit = "ppm"
range = [0, 10]
interval = "1s"
"#;

/// Deterministic pseudo-random in [0, 1).
fn noise(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// The readings of second `s`: slow waves crossing the limits, noise, a comm-lost spell
/// on point 1 and point 4 silent for two minutes.
fn second(s: i64, ids: &[(parkguard_rules::PointId, parkguard_rules::Unit)]) -> Vec<Reading> {
    let t = Timestamp::from_secs(T0 + s);
    let x = s as f64;
    let mut out = Vec::new();
    for (i, &(id, unit)) in ids.iter().enumerate() {
        let n = noise((s as u64) * 8 + i as u64) - 0.5;
        let (value, quality) = match i {
            0 => (
                (1.2 + 1.3 * (x / 300.0).sin() + 0.4 * n).max(0.0),
                if (1800..1860).contains(&s) {
                    Quality::CommLost
                } else {
                    Quality::Good
                },
            ),
            1 => (
                (15.0 + 20.0 * (x / 450.0).sin() + 6.0 * n).max(0.0),
                Quality::Good,
            ),
            2 => (0.8 + 0.7 * (x / 200.0).sin() + 0.1 * n, Quality::Good),
            _ => {
                if (2400..2520).contains(&s) {
                    continue;
                }
                (
                    (0.5 + 2.5 * (x / 700.0).cos() + 0.3 * n).max(0.0),
                    Quality::Good,
                )
            }
        };
        out.push(Reading {
            point: id,
            value,
            unit,
            quality,
            source_time: t,
            receive_time: t,
        });
    }
    out
}

/// Alarm and warning events of the journal (`drill` = None: the real path), made
/// comparable: drill id removed, event ids relative to the first.
fn events(journal: &std::path::Path, drill: Option<&str>) -> Vec<Value> {
    let j = Journal::open_readonly(journal).unwrap();
    let mut stmt = j
        .connection()
        .prepare("SELECT payload, drill FROM events ORDER BY id")
        .unwrap();
    let rows: Vec<(String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut out: Vec<Value> = rows
        .into_iter()
        .filter(|(_, d)| d.as_deref() == drill)
        .map(|(p, _)| serde_json::from_str::<Value>(&p).unwrap())
        .collect();
    let first = out.first().map(id_of).expect("the run raised events");
    for v in &mut out {
        let id = v["id"].as_u64().unwrap();
        v["id"] = Value::from(id - first);
        v.as_object_mut().unwrap().remove("drill");
    }
    out
}

fn id_of(v: &Value) -> u64 {
    v["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_recorded_hour_at_60x_gives_the_live_alarm_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = parkguard::config::load_str("park.toml", PARK).unwrap();
    cfg.data.dir = dir.path().join("data");
    let ids: Vec<_> = cfg.table.points().iter().map(|p| (p.id, p.unit)).collect();

    // The live run on the test's clock, ticking every millisecond.
    CLOCK.store(Timestamp::from_secs(T0 - 1).0, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let task = EngineTaskConfig {
        tick: Duration::from_millis(1),
        clock: test_clock,
        ..Default::default()
    };
    let running = parkguard::topology::start_with(&cfg, shutdown.clone(), task)
        .await
        .unwrap();
    let mut snap = running.engine.snapshot.clone();
    let mut fed = 0u64;
    for s in 0..SECONDS {
        let batch = second(s, &ids);
        fed += batch.len() as u64;
        running.readings.send(batch).await.unwrap();
        // The engine has evaluated this second's readings (a tick published it) …
        loop {
            snap.changed().await.unwrap();
            if snap.borrow_and_update().stats.readings == fed {
                break;
            }
        }
        // … then the clock reaches the second, and the engine ticks at it.
        CLOCK.store(Timestamp::from_secs(T0 + s).0, Ordering::SeqCst);
        snap.changed().await.unwrap();
        snap.borrow_and_update();
        snap.changed().await.unwrap();
        snap.borrow_and_update();
    }
    // Every live event is journalled before the next tick's snapshot; wait until the
    // journal has the count of events the engine emitted.
    let emitted = snap.borrow().stats.events;
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = Journal::open_readonly(&running.journal_path)
            .unwrap()
            .count()
            .unwrap();
        if n == emitted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "journal has {n} of {emitted}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The archive is what the replay reads: wait until the spool writer has appended every
    // reading (it group-commits for up to `[spool].group_commit_ms` after the engine has
    // them, so the journal can be complete before the last second is in the spool; the
    // replay then found 3,598 s instead of 3,599).
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = running
            .spool
            .readings_appended
            .load(std::sync::atomic::Ordering::SeqCst);
        if n >= fed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "spool has {n} of {fed} readings"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Replay the archive (the spool the recorder wrote) at 60× as a drill, through the
    // same journal.
    let drills = Drills::new(DrillParts {
        table: cfg.table.clone(),
        engine: cfg.engine.clone(),
        vote_groups: cfg.vote_groups.clone(),
        journal: Some(running.journal.clone()),
        data_dir: cfg.data.dir.clone(),
        spool_dir: running.spool_dir.clone(),
        shutdown: shutdown.clone(),
    });
    let started = drills
        .start(
            StartRequest {
                id: Some("replay-1".into()),
                scenario: None,
                replay: Some(ReplaySpec {
                    from: Some("2025-11-25T00:00:00Z".into()),
                    to: Some("2025-11-25T01:00:00Z".into()),
                    points: Vec::new(),
                    enterprises: Vec::new(),
                    file: None,
                }),
                speed: Some("60x".into()),
            },
            "engineer",
        )
        .await
        .unwrap();
    assert_eq!(started.speed, "60x");
    assert_eq!(started.duration_s, (SECONDS - 1) as f64);
    let end = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let st = drills.get("replay-1").unwrap();
        if st.state == DrillState::Finished {
            assert_eq!(st.readings, fed, "every archived reading replayed");
            break;
        }
        assert!(tokio::time::Instant::now() < end, "replay still at {st:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = drills.stop("replay-1").await.unwrap();

    let live = events(&running.journal_path, None);
    let replay = events(&running.journal_path, Some("replay-1"));
    assert!(live.len() >= 20, "a busy hour: {} events", live.len());
    let raised = live
        .iter()
        .filter(|v| v["type"] == "alarm" && v["annunciate"] == true)
        .count();
    assert!(raised >= 10, "{raised} annunciated alarms");
    eprintln!(
        "live: {} events ({raised} annunciated alarms) from {fed} readings; replay at 60x: {} events",
        live.len(),
        replay.len()
    );
    assert!(
        live.iter().any(|v| v["alarm"]
            .as_str()
            .is_some_and(|a| a.starts_with("E1-GT-4:") && a.to_uppercase().contains("STALE"))),
        "the silent point went stale"
    );
    for (i, (l, r)) in live.iter().zip(&replay).enumerate() {
        assert_eq!(l, r, "event {i} differs");
    }
    assert_eq!(live.len(), replay.len(), "same number of events");
    assert_eq!(report.readings, fed);

    shutdown.cancel();
    running.stop().await;
}
