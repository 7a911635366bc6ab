//! Alarm events and warning grades → InfluxDB: the journal is the durable queue.
//!
//! Every alarm event, operator action and warning-grade change is committed to the
//! SQLite journal before anyone hears of it; [`JournalExport`] reads the journal after a
//! durable cursor (`<data_dir>/influx-events.cursor`: the last exported event id, with a
//! CRC, replaced atomically) and hands each record to the InfluxDB writer as one line of
//! [`schema::ALARM_EVENT`] (alarm, operator, config and system records) or
//! [`schema::WARNING`] (warning-grade changes). The cursor advances only when the writer
//! settled a batch (2xx or dead-lettered), so a database outage or a crash loses nothing:
//! after a restart the export resumes at the cursor, and a batch resent after a lost
//! reply overwrites itself (same series, same timestamp).
//!
//! Drill events are not exported: drills never touch the real path (DESIGN.md), and their
//! ids are numbered far above the real sequence, which an id cursor must not skip over.
//!
//! Two events of the same alarm, record kind and engine time (to the nanosecond) share a
//! series key and timestamp in InfluxDB, so the later one would overwrite the earlier one
//! there; the journal keeps both and `event_id` links back to it.

use super::journal::{Journal, JournalError, JournalRecord, RecordKind};
use parkguard_drivers::influx::encode::{self, EventPoint};
use parkguard_drivers::influx::sink::{LineSource, SourceError};
use parkguard_drivers::influx::{LineBatch, schema};
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The cursor file name in the data dir.
pub const CURSOR_FILE: &str = "influx-events.cursor";

/// Longest wait for a journal notification before looking again (covers a notification
/// that went to nobody, e.g. a journal written by another process).
const POLL: Duration = Duration::from_secs(1);

/// The journal as a [`LineSource`] for a second [`parkguard_drivers::influx::InfluxWriter`].
pub struct JournalExport {
    journal: Journal,
    journal_path: PathBuf,
    park: String,
    cursor_path: PathBuf,
    /// Last id handed out.
    handed: u64,
    /// Last id made durable.
    committed: u64,
    notify: Arc<Notify>,
}

impl JournalExport {
    /// Open a read-only connection to the journal at `journal_path` and the cursor in
    /// `data_dir`. `notify` is signalled by the journal writer after each commit. With no
    /// cursor yet, the export starts at the first event.
    pub fn open(
        journal_path: &Path,
        data_dir: &Path,
        park: &str,
        notify: Arc<Notify>,
    ) -> Result<Self, JournalError> {
        let journal = Journal::open_readonly(journal_path)?;
        let cursor_path = data_dir.join(CURSOR_FILE);
        let committed = read_cursor(&cursor_path).unwrap_or(0);
        Ok(Self {
            journal,
            journal_path: journal_path.to_path_buf(),
            park: park.to_owned(),
            cursor_path,
            handed: committed,
            committed,
            notify,
        })
    }

    /// The last event id confirmed by the database.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Encode the records after the last one handed out, at most `max`, into `batch`, one
    /// row at a time: a backlog (the events of a long database outage) is never held as
    /// records and their parsed payloads at once, only as the lines they become (the
    /// catch-up after a 5-minute outage held ~10 MiB of them). Returns the number encoded
    /// and the last id encoded, with the error that stopped it, if any.
    fn encode_next(
        &self,
        batch: &mut LineBatch,
        max: usize,
    ) -> (usize, u64, Result<(), JournalError>) {
        let from = i64::try_from(self.handed).unwrap_or(i64::MAX);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let sql_err = |e| JournalError::Sqlite {
            path: self.journal_path.clone(),
            source: e,
        };
        let (mut n, mut last) = (0, self.handed);
        let conn = self.journal.connection();
        let result = (|| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, time_ns, kind, alarm_id, point, enterprise, drill, payload
                     FROM events WHERE id > ?1 AND drill IS NULL ORDER BY id LIMIT ?2",
                )
                .map_err(sql_err)?;
            let mut rows = stmt
                .query(rusqlite::params![from, limit])
                .map_err(sql_err)?;
            while let Some(r) = rows.next().map_err(sql_err)? {
                let rec = (|| {
                    let kind: String = r.get(2)?;
                    let payload: String = r.get(7)?;
                    Ok(JournalRecord {
                        id: r.get::<_, i64>(0)?.max(0) as u64,
                        time: parkguard_rules::Timestamp::from_nanos(r.get(1)?),
                        kind: RecordKind::parse(&kind).unwrap_or(RecordKind::System),
                        alarm_id: r.get(3)?,
                        point: r.get(4)?,
                        enterprise: r.get(5)?,
                        drill: r.get(6)?,
                        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    })
                })()
                .map_err(sql_err)?;
                batch.push_with(|out| event_line(out, &self.park, &rec));
                last = rec.id;
                n += 1;
            }
            Ok(())
        })();
        (n, last, result)
    }
}

impl LineSource for JournalExport {
    fn fill(&mut self, batch: &mut LineBatch, max_lines: usize) -> Result<usize, SourceError> {
        let (n, last, result) = self.encode_next(batch, max_lines);
        // Lines already in the batch are handed out even when a later row failed: the
        // next fill goes on after them instead of encoding them twice.
        self.handed = last;
        result?;
        Ok(n)
    }

    fn commit(&mut self) -> Result<(), SourceError> {
        if self.handed != self.committed {
            write_cursor(&self.cursor_path, self.handed)?;
            self.committed = self.handed;
        }
        Ok(())
    }

    async fn wait(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout.min(POLL), self.notify.notified()).await;
    }
}

/// The measurement a record goes to.
pub fn measurement_of(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Warning => schema::WARNING,
        _ => schema::ALARM_EVENT,
    }
}

fn priority_number(s: &str) -> Option<i64> {
    Some(match s {
        "low" => 1,
        "medium" => 2,
        "high" => 3,
        _ => return None,
    })
}

fn grade_number(s: &str) -> Option<i64> {
    Some(match s {
        "none" => 0,
        "blue" => 1,
        "yellow" => 2,
        "orange" => 3,
        "red" => 4,
        _ => return None,
    })
}

/// Append the line of one journal record (the engine event in `payload`):
/// - `alarm_event`: `state` = the alarm state after the event, `grade` = priority
///   (1 low, 2 medium, 3 high), `trigger_value` = the value at that moment, `message` =
///   what happened (`activate`, `acknowledge`, ...) and the operator's comment, if any;
/// - `warning`: `state` = the grade after (`none` … `red`), `grade` = 0 … 4, `message` =
///   the rule that gave it.
pub fn event_line(out: &mut Vec<u8>, park: &str, r: &JournalRecord) {
    let p = &r.payload;
    let text = |k: &str| p.get(k).and_then(|v| v.as_str());
    let to = text("to").unwrap_or("");
    let warning = r.kind == RecordKind::Warning;
    let message = if warning {
        text("reason").map(str::to_owned)
    } else {
        match (text("kind"), text("comment")) {
            (Some(k), Some(c)) => Some(format!("{k}: {c}")),
            (Some(k), None) => Some(k.to_owned()),
            (None, c) => c.map(str::to_owned),
        }
    };
    let point = EventPoint {
        id: r.id,
        time_ns: r.time.nanos(),
        kind: r.kind.as_str(),
        alarm_id: r.alarm_id.as_deref(),
        tag: r.point.as_deref(),
        enterprise: r.enterprise.as_deref(),
        drill: r.drill.as_deref(),
        state: to,
        grade: if warning {
            grade_number(to)
        } else {
            text("priority").and_then(priority_number)
        },
        trigger_value: p
            .get("value")
            .and_then(|v| v.as_f64())
            .filter(|v| v.is_finite()),
        message: message.as_deref(),
    };
    encode::event_line(out, park, measurement_of(r.kind), &point);
}

fn read_cursor(path: &Path) -> Option<u64> {
    let b = fs::read(path).ok()?;
    if b.len() != 12 {
        return None;
    }
    let crc = u32::from_le_bytes(b[8..12].try_into().ok()?);
    if crc32fast::hash(&b[..8]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(b[..8].try_into().ok()?))
}

fn write_cursor(path: &Path, id: u64) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkguard_rules::Timestamp;

    fn rec(kind: RecordKind, payload: serde_json::Value) -> JournalRecord {
        JournalRecord {
            id: 7,
            time: Timestamp::from_millis(1_704_067_200_000),
            kind,
            alarm_id: Some("GT 1:H".into()),
            point: Some("GT 1".into()),
            enterprise: Some("E,1".into()),
            drill: None,
            payload,
        }
    }

    #[test]
    fn alarm_and_warning_lines() {
        let mut out = Vec::new();
        event_line(
            &mut out,
            "park",
            &rec(
                RecordKind::Alarm,
                serde_json::json!({"kind": "activate", "to": "unacknowledged", "priority": "high", "value": 30.5}),
            ),
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "alarm_event,alarm=GT\\ 1:H,enterprise=E\\,1,event=alarm,park=park,tag=GT\\ 1 \
             event_id=7i,state=\"unacknowledged\",grade=3i,trigger_value=30.5,message=\"activate\" \
             1704067200000000000\n"
        );
        let mut out = Vec::new();
        let mut w = rec(
            RecordKind::Warning,
            serde_json::json!({"to": "orange", "reason": "two level-2 alarms"}),
        );
        w.alarm_id = None;
        w.point = None;
        event_line(&mut out, "park", &w);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "warning,enterprise=E\\,1,event=warning,park=park \
             event_id=7i,state=\"orange\",grade=3i,message=\"two level-2 alarms\" \
             1704067200000000000\n"
        );
    }

    /// A backlog (the events of a database outage) goes out in pages of at most
    /// `max_lines`, in id order, each record once, drill records never; a reopened export
    /// resumes after the committed cursor, not after what was only handed out.
    #[test]
    fn a_backlog_is_exported_in_pages_each_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sqlite");
        let mut journal = Journal::open(&path).expect("journal");
        let records: Vec<JournalRecord> = (1..=2_500u64)
            .map(|id| {
                let mut r = rec(
                    RecordKind::Alarm,
                    serde_json::json!({"kind": "activate", "to": "unacknowledged", "value": id}),
                );
                r.id = id;
                if id % 10 == 0 {
                    r.drill = Some("d1".into());
                }
                r
            })
            .collect();
        journal.append(&records).expect("append");
        let ids = |b: &LineBatch| -> Vec<u64> {
            (0..b.len())
                .map(|i| {
                    let l = String::from_utf8_lossy(b.line(i));
                    let at = l.find("event_id=").expect("event_id") + 9;
                    l[at..]
                        .split('i')
                        .next()
                        .expect("id")
                        .parse()
                        .expect("number")
                })
                .collect()
        };
        let notify = Arc::new(Notify::new());
        let mut export =
            JournalExport::open(&path, dir.path(), "park", Arc::clone(&notify)).expect("open");
        let mut pages = Vec::new();
        let mut all = Vec::new();
        loop {
            let mut batch = LineBatch::new();
            let n = export.fill(&mut batch, 1_000).expect("fill");
            if n == 0 {
                break;
            }
            assert_eq!(batch.len(), n);
            pages.push(n);
            assert!(
                pages.len() <= 3,
                "pages {pages:?}: the export does not advance"
            );
            all.extend(ids(&batch));
            if pages.len() == 1 {
                export.commit().expect("commit");
            }
        }
        assert_eq!(pages, [1_000, 1_000, 250]);
        let expected: Vec<u64> = (1..=2_500).filter(|id| id % 10 != 0).collect();
        assert_eq!(all, expected);
        // Only the first page was committed: a restart sends the rest again.
        let mut again = JournalExport::open(&path, dir.path(), "park", notify).expect("reopen");
        let mut batch = LineBatch::new();
        again.fill(&mut batch, 100_000).expect("fill");
        assert_eq!(ids(&batch), expected[1_000..]);
    }

    #[test]
    fn cursor_round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(CURSOR_FILE);
        assert_eq!(read_cursor(&p), None);
        write_cursor(&p, 42).expect("write");
        assert_eq!(read_cursor(&p), Some(42));
        let mut b = fs::read(&p).expect("read");
        b[0] ^= 1;
        fs::write(&p, b).expect("write");
        assert_eq!(read_cursor(&p), None);
    }
}
