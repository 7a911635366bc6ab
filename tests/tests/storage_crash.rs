//! Real crashes: a process appending to the journal (or the spool) is killed with SIGKILL
//! mid-write, several times. After each kill the store reopens consistent: every append
//! the child reported committed is there, ids (readings) have no gap and no duplicate,
//! batches are all-or-nothing, and the next run continues where the last commit ended.
//!
//! The child is this same test binary, re-executed with `PARKGUARD_CRASH_ROLE` set.

mod storage_common;

use parkguard::store::journal::{EventFilter, Journal, JournalRecord, RecordKind};
use parkguard::store::spool::{ArchiveReader, Spool};
use parkguard_rules::Timestamp;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use storage_common::*;

const BATCH: u64 = 10;

/// Run this test binary's `test_name` as a child with `role` and `path`; read its stdout
/// until it reported `commits` commits (lines `committed N`), then SIGKILL it. Returns
/// the last N it reported.
fn run_and_kill(test_name: &str, role: &str, path: &Path, commits: usize) -> u64 {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env("PARKGUARD_CRASH_ROLE", role)
        .env("PARKGUARD_CRASH_PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let out = child.stdout.take().expect("stdout");
    let mut last = 0u64;
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(out).lines() {
        let line = line.expect("read child");
        if let Some(n) = line.strip_prefix("committed ") {
            last = n.trim().parse().expect("number");
            seen += 1;
            if seen >= commits {
                break;
            }
        }
        assert!(Instant::now() < deadline, "child too slow");
    }
    // SIGKILL while it is in the middle of its next write.
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert!(seen >= commits, "child stopped early after {seen} commits");
    last
}

fn journal_child(path: &Path) {
    let mut j = Journal::open(path).expect("child: open journal");
    let mut next = j.max_id().expect("max id") + 1;
    let mut out = std::io::stdout();
    loop {
        let recs: Vec<_> = (next..next + BATCH)
            .map(|id| JournalRecord {
                id,
                time: Timestamp::from_millis(T0_MS + id as i64),
                kind: if id % 3 == 0 {
                    RecordKind::Operator
                } else {
                    RecordKind::Alarm
                },
                alarm_id: Some(format!("GT-{}:HH", id % 17)),
                point: Some(format!("GT-{}", id % 17)),
                enterprise: Some(enterprise((id % 17) as u32)),
                drill: None,
                payload: serde_json::json!({ "id": id, "state": if id % 3 == 0 { "acked" } else { "unack" }, "text": "可燃气体二级报警" }),
            })
            .collect();
        j.append(&recs).expect("child: append");
        next += BATCH;
        writeln!(out, "committed {}", next - 1).expect("stdout");
        out.flush().expect("flush");
    }
}

#[test]
fn journal_survives_kill_9() {
    if std::env::var("PARKGUARD_CRASH_ROLE").as_deref() == Ok("journal") {
        journal_child(Path::new(
            &std::env::var_os("PARKGUARD_CRASH_PATH").expect("path"),
        ));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.sqlite");
    let mut reported = 0;
    for round in 1..=4 {
        let last = run_and_kill("journal_survives_kill_9", "journal", &path, 50 * round);
        assert!(last > reported, "round {round} continued the ids");
        reported = last;
        let j = Journal::open(&path).expect("reopen after kill -9");
        assert_eq!(j.integrity_check().expect("check"), "ok");
        let max = j.max_id().expect("max id");
        assert!(
            max >= last,
            "round {round}: committed {last} but max id {max}"
        );
        assert_eq!(
            max % BATCH,
            0,
            "round {round}: half a batch stored (max {max})"
        );
        assert_eq!(
            j.count().expect("count"),
            max,
            "round {round}: gap or duplicate"
        );
        let all = j
            .query(&EventFilter {
                limit: Some(usize::MAX),
                ..EventFilter::default()
            })
            .expect("query");
        assert!(
            all.iter().enumerate().all(|(i, r)| r.id == i as u64 + 1),
            "ids 1..=max in order"
        );
        let latest = j.latest_per_alarm().expect("latest");
        assert_eq!(latest.len(), 17);
        for r in &latest {
            let hist = j
                .alarm_history(r.alarm_id.as_deref().expect("alarm id"))
                .expect("history");
            assert_eq!(hist.last().map(|h| h.id), Some(r.id));
        }
        println!("round {round}: child reported {last}, journal holds 1..={max}");
    }
}

fn spool_child(dir: &Path) {
    let n = 50u32;
    let table = table(n);
    // Resume the sequence after what the archive holds.
    let mut k = ArchiveReader::open(dir)
        .map(|a| a.count() as u64)
        .unwrap_or(0);
    let mut spool = Spool::open(dir, spool_settings(64 << 10, 1 << 30)).expect("child: spool");
    let mut out = std::io::stdout();
    loop {
        let batch: Vec<_> = (k..k + 100).map(|k| reading(&table, n, k)).collect();
        spool.append(&batch, &table).expect("child: append");
        k += 100;
        writeln!(out, "committed {k}").expect("stdout");
        out.flush().expect("flush");
    }
}

#[test]
fn spool_survives_kill_9() {
    if std::env::var("PARKGUARD_CRASH_ROLE").as_deref() == Ok("spool") {
        spool_child(Path::new(
            &std::env::var_os("PARKGUARD_CRASH_PATH").expect("path"),
        ));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reported = 0;
    for round in 1..=4 {
        let last = run_and_kill("spool_survives_kill_9", "spool", dir.path(), 100 * round);
        assert!(last > reported);
        reported = last;
        // Reopening cuts a torn tail; then the archive must be exactly 0..M, M ≥ acked.
        let spool = Spool::open(dir.path(), spool_settings(64 << 10, 1 << 30)).expect("reopen");
        let ks: Vec<u64> = ArchiveReader::open(dir.path())
            .expect("archive")
            .map(|r| (r.expect("read").reading.source_time.millis() - T0_MS) as u64)
            .collect();
        let m = ks.len() as u64;
        assert!(
            m >= last,
            "round {round}: acked {last} but only {m} on disk"
        );
        assert_eq!(m % 100, 0, "round {round}: a torn append survived");
        assert!(
            ks.iter().enumerate().all(|(i, k)| *k == i as u64),
            "round {round}: gap or duplicate"
        );
        println!(
            "round {round}: child acked {last}, spool holds 0..{m}, torn tails cut so far: {}",
            spool
                .stats()
                .corrupt_frames
                .load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
