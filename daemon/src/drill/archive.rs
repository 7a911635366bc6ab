//! Replay source: parkguard's own local archive (the spool segments in `<data.dir>/spool`),
//! read with [`crate::store::spool::ArchiveReader`] — read only, independent of the
//! InfluxDB writer's cursor, safe while the daemon appends.
//!
//! Archived readings name their point by tag (each segment is self-describing), so a
//! reading is mapped onto today's table by tag; tags the park no longer has are counted,
//! not guessed. Readings keep their recorded order, which is the order the live engine
//! evaluated them in — that is what lets a replay reproduce the live alarms exactly.

use super::replay::ReplayStats;
use crate::store::spool::ArchiveReader;
use parkguard_rules::{PointTable, Reading, Timestamp};
use std::path::Path;

/// Which archived readings to replay.
#[derive(Clone, Debug, Default)]
pub struct ArchiveFilter {
    /// Readings with `source_time >= from` (none: from the oldest segment).
    pub from: Option<Timestamp>,
    /// Readings with `source_time < to` (none: up to the newest written reading).
    pub to: Option<Timestamp>,
    /// Only these tags (empty: every point).
    pub points: Vec<String>,
    /// Only points of these enterprises (empty: every enterprise).
    pub enterprises: Vec<String>,
}

impl ArchiveFilter {
    /// Whether a reading of `tag` (of `enterprise`) passes the point and enterprise filters.
    pub fn keeps(&self, tag: &str, enterprise: &str) -> bool {
        (self.points.is_empty() || self.points.iter().any(|p| p == tag))
            && (self.enterprises.is_empty() || self.enterprises.iter().any(|e| e == enterprise))
    }
}

/// Read the archive in `spool_dir` into readings of `table`, in recording order.
/// Blocking file reads: call from a blocking thread.
pub fn read_archive(
    spool_dir: &Path,
    table: &PointTable,
    filter: &ArchiveFilter,
    stats: &mut ReplayStats,
) -> Result<Vec<Reading>, String> {
    let reader = ArchiveReader::open(spool_dir)
        .map_err(|e| format!("cannot open the archive {}: {e}", spool_dir.display()))?
        .between(
            filter.from.unwrap_or(Timestamp(i64::MIN)),
            filter.to.unwrap_or(Timestamp(i64::MAX)),
        );
    let mut out = Vec::new();
    for item in reader {
        let a = item.map_err(|e| format!("archive read failed: {e}"))?;
        stats.records += 1;
        if !filter.keeps(&a.point.tag, &a.point.enterprise) {
            continue;
        }
        match table.by_tag(&a.point.tag) {
            Some(p) => out.push(Reading {
                point: p.id,
                ..a.reading
            }),
            None => *stats.unknown_tags.entry(a.point.tag.clone()).or_default() += 1,
        }
    }
    Ok(out)
}
