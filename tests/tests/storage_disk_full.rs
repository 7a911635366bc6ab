//! Disk full, for real: the spool on a small tmpfs (the tests run as root; `mount -t
//! tmpfs -o size=…`), filled until the kernel answers ENOSPC.
//!
//! - With sealed segments to give up, the stated policy happens: the oldest segment is
//!   dropped (counted, system alarm flag raised) and the append succeeds.
//! - With nothing left to drop (only the active segment), the append fails: no panic,
//!   the failure and its readings are counted, the `append_failing` flag is raised; the
//!   spool holds exactly the appends that succeeded (no torn frame), and once space is
//!   freed the next append succeeds, clears the flag, and its readings — including points
//!   first seen in the failed append — read back with their names.

mod storage_common;

use parkguard_drivers::influx::{LineBatch, LineSource};
use parkguard_rules::Reading;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use storage_common::*;

/// A tmpfs of `size` mounted on a fresh temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount -t tmpfs failed (these tests need root): {st:?}"
        );
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Readings `from..to` of the test sequence, all on points `points`.
fn batch(
    table: &parkguard_rules::PointTable,
    points: std::ops::Range<u32>,
    k0: u64,
    n: u64,
) -> Vec<Reading> {
    let width = u64::from(points.end - points.start);
    (0..n)
        .map(|i| {
            let mut r = reading(table, 1, k0 + i);
            r.point = parkguard_rules::PointId(points.start + ((k0 + i) % width) as u32);
            r
        })
        .collect()
}

fn filler(dir: &Path, bytes: usize) -> PathBuf {
    let p = dir.join("filler");
    std::fs::write(&p, vec![0u8; bytes]).expect("write filler");
    p
}

#[test]
fn disk_full_with_nothing_to_drop_fails_the_append_counts_it_and_recovers() {
    let fs = Tmpfs::mount("256k");
    let spool_dir = fs.path().join("spool");
    let table = table(20);
    // One segment can take the whole disk: there is never a sealed segment to drop.
    let mut spool = open_spool(&spool_dir, spool_settings(64 << 20, 256 << 20));
    let stats = spool.stats();
    let free_later = filler(fs.path(), 64 << 10);

    // Points 0..10 until the disk is full.
    let mut ok_readings = 0u64;
    let mut k = 0u64;
    let err = loop {
        let b = batch(&table, 0..10, k, 100);
        match spool.append(&b, &table) {
            Ok(()) => {
                ok_readings += 100;
                k += 100;
            }
            Err(e) => break e,
        }
        assert!(k < 1_000_000, "the tmpfs never filled up");
    };
    println!("append failed after {ok_readings} readings: {err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    // Points 10..20 appear for the first time in a failing append.
    let b = batch(&table, 10..20, k, 100);
    assert!(spool.append(&b, &table).is_err());
    assert_eq!(stats.append_failures.load(Relaxed), 2);
    assert_eq!(stats.readings_not_spooled.load(Relaxed), 200);
    assert!(stats.append_failing.load(Relaxed));
    assert_eq!(stats.readings_appended.load(Relaxed), ok_readings);
    assert_eq!(stats.segments_dropped_full.load(Relaxed), 0);

    // Space comes back (the operator cleaned up): the next append works.
    std::fs::remove_file(free_later).expect("free space");
    let b = batch(&table, 10..20, k, 100);
    spool
        .append(&b, &table)
        .expect("append after space was freed");
    assert!(!stats.append_failing.load(Relaxed), "flag cleared");
    assert_eq!(stats.readings_appended.load(Relaxed), ok_readings + 100);

    // The writer's view: exactly the successful appends, each with its point's name.
    let mut reader = spool.writer_reader(PARK).expect("reader");
    let mut lines = LineBatch::new();
    while reader.fill(&mut lines, 1_000_000).expect("read the spool") > 0 {}
    assert_eq!(
        lines.len() as u64,
        ok_readings + 100,
        "no torn frame, nothing lost"
    );
    let text = String::from_utf8_lossy(lines.range(0, lines.len())).into_owned();
    for p in 10..20 {
        let probe = parkguard_drivers::influx::encode::reading_prefix(
            PARK,
            parkguard_drivers::influx::PointMeta {
                tag: &tag(p),
                enterprise: &enterprise(p),
                kind: table
                    .get(parkguard_rules::PointId(p))
                    .expect("point")
                    .kind
                    .as_str(),
            },
        );
        let probe = String::from_utf8_lossy(&probe).into_owned();
        assert_eq!(
            text.matches(&probe).count(),
            10,
            "point {p}, first named after the failure, reads back"
        );
    }
    drop(reader);
    drop(spool);
}

#[test]
fn disk_full_with_sealed_segments_drops_the_oldest_and_raises_the_alarm() {
    let fs = Tmpfs::mount("256k");
    let spool_dir = fs.path().join("spool");
    let table = table(20);
    // Small segments, a bound far above the disk: the disk fills before the bound.
    let mut spool = open_spool(&spool_dir, spool_settings(16 << 10, 64 << 20));
    let stats = spool.stats();
    drop(
        spool
            .writer_reader(PARK)
            .expect("reader attached, nothing delivered"),
    );
    let mut k = 0u64;
    while stats.segments_dropped_full.load(Relaxed) == 0 {
        let b = batch(&table, 0..20, k, 100);
        spool.append(&b, &table).expect(
            "disk full with sealed segments: the oldest is dropped and the append succeeds",
        );
        k += 100;
        assert!(k < 1_000_000, "the tmpfs never filled up");
    }
    println!(
        "after {k} readings: {} segment(s) dropped, {} undelivered readings counted",
        stats.segments_dropped_full.load(Relaxed),
        stats.readings_dropped_unsent.load(Relaxed)
    );
    assert!(stats.overflow_alarm(), "system alarm flag raised");
    assert!(stats.readings_dropped_unsent.load(Relaxed) > 0);
    assert_eq!(stats.append_failures.load(Relaxed), 0);
    assert!(!stats.append_failing.load(Relaxed));
}
