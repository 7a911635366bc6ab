//! The reading spool: an append-only, segmented log of readings on disk, with a durable
//! cursor for the InfluxDB writer. It is also the local archive: segments stay until the
//! retention (`max_age`, 30 days by default) or the size bound (`max_bytes`) removes them,
//! whether or not InfluxDB is configured, and [`ArchiveReader`] reads them back for replay
//! and backtests.
//!
//! ## Files (in `<data_dir>/spool/`)
//! - `seg-<id:016x>.pgs`: segments. Header: magic `PGSPOOL1`, creation time (i64 ns LE).
//!   Then frames: `len: u32 LE | crc32(payload): u32 LE | payload`. Payload type 1 = point
//!   dictionary (`count: u32`, then per point `id: u32, tag, enterprise: u16-prefixed,
//!   kind: u8-prefixed` UTF-8), type 2 = readings (`count: u32`, then per reading
//!   31 bytes: `point: u32, value: f64 bits, unit: u8, quality: u16, source_time: i64 ns,
//!   receive_time: i64 ns`). A segment names every point before its first reading, so it
//!   is self-describing: a config change (points renumbered, removed) never misattributes
//!   an archived reading, and replay needs no config from back then.
//! - `cursor`: the writer's durable position (`segment, frame offset, index in frame`,
//!   CRC), replaced atomically (write temp, fsync, rename, fsync dir).
//!
//! ## Durability and write amplification
//! One [`Spool::append`] call writes one readings frame (plus a dictionary frame when the
//! segment has not yet seen a point) with a single `write`, then applies the fsync policy:
//! `always` (default) fsyncs before `append` returns, so readings are on disk before they
//! are acknowledged upstream (MQTT QoS 1); `interval` fsyncs at most every
//! `fsync_interval_ms` (a crash loses at most that much); `never` leaves it to the OS.
//! Bytes written per reading: 31 payload + 9 frame bytes per `append` + ~40 per point per
//! segment, i.e. ≈ 31–32 B/reading for batches of ≥ 100 (the line protocol sent to
//! InfluxDB is ≈ 110–150 B/reading). The cursor adds 28 B + one fsync per delivered
//! batch (5,000 readings by default). Each byte is written once (no compaction, no
//! rewrite); amplification is ≈ 1.0 plus the filesystem's journal.
//!
//! ## Bounds and policy when full
//! - `max_bytes` (default 10 GiB): when the spool grows past it, the **oldest segment is
//!   dropped** (newest data is kept). Readings in it that the writer had not yet delivered
//!   are counted in [`SpoolStats::readings_dropped_unsent`], dropped segments in
//!   [`SpoolStats::segments_dropped_full`], and the system alarm flag
//!   [`SpoolStats::overflow_alarm`] is raised (the archive no longer holds its full
//!   retention, or the database lost data). A write that fails with "disk full" applies
//!   the same policy once and retries.
//! - `max_age` (default 30 days, DOMAIN.md §3): a sealed segment whose last write is older
//!   is deleted ([`SpoolStats::segments_expired`]); if it still held undelivered readings
//!   they are counted as dropped and the alarm flag is raised as well.
//! - The active segment is never dropped; `segment_bytes` must be ≤ `max_bytes / 4`.
//!
//! ## Crash recovery
//! On open, the last segment is scanned and cut after its last complete frame with a good
//! CRC (a torn write from a crash); appending continues in a new segment. Sealed segments
//! were fsynced when sealed; a CRC error there is counted and the rest of that segment
//! skipped.

use parkguard_drivers::influx::encode::{self, LineBatch, PointMeta};
use parkguard_drivers::influx::sink::{LineSource, SourceError};
use parkguard_rules::{FieldError, PointId, PointTable, Quality, Reading, Timestamp, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;
use tracing::{error, info, warn};

const MAGIC: &[u8; 8] = b"PGSPOOL1";
const SEG_HEADER: u64 = 16;
const FRAME_HEADER: u64 = 8;
const REC: usize = 31;
const T_DICT: u8 = 1;
const T_READINGS: u8 = 2;
/// Largest frame payload accepted when reading (guards against a corrupt length).
const MAX_FRAME: u32 = 256 << 20;

fn d_max_bytes() -> u64 {
    10 << 30
}
fn d_max_age_hours() -> u64 {
    30 * 24
}
fn d_segment_bytes() -> u64 {
    64 << 20
}
fn d_segment_max_age_s() -> u64 {
    3600
}
fn d_fsync_interval_ms() -> u64 {
    1000
}
fn d_group_commit_ms() -> u64 {
    20
}

/// When the spool calls fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before every `append` returns (default): nothing acknowledged is ever lost.
    #[default]
    Always,
    /// At most every `fsync_interval_ms`: a crash loses up to that much.
    Interval,
    /// Never (the OS writes back): a power cut loses up to ~30 s.
    Never,
}

/// `[spool]`: the on-disk reading spool and local archive (in `<data_dir>/spool`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Size bound in bytes; past it the oldest segment is dropped, counted and a system
    /// alarm raised. Default 10737418240 (10 GiB).
    #[serde(default = "d_max_bytes")]
    pub max_bytes: u64,
    /// Retention in hours: older segments are deleted. Default 720 (30 days, the legal
    /// minimum for major-hazard data).
    #[serde(default = "d_max_age_hours")]
    pub max_age_hours: u64,
    /// Segment size in bytes before a new segment starts. Default 67108864 (64 MiB);
    /// at most `max_bytes / 4`.
    #[serde(default = "d_segment_bytes")]
    pub segment_bytes: u64,
    /// Longest a segment stays open, in seconds (the granularity of retention).
    /// Default 3600.
    #[serde(default = "d_segment_max_age_s")]
    pub segment_max_age_s: u64,
    /// fsync policy: `always` (default), `interval` or `never`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Interval for `fsync = "interval"`, in milliseconds. Default 1000.
    #[serde(default = "d_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Group commit, in milliseconds: the longest an append waits for more readings after
    /// the first, so that they share one write and one fsync. MQTT QoS 1 messages are
    /// acknowledged after their append, so this delays their acknowledgement, never an
    /// alarm (the engine has the readings already); the wait ends early once 10 QoS 1
    /// messages are held. 0: append what is waiting at once. Default 20, at most 1000.
    #[serde(default = "d_group_commit_ms")]
    pub group_commit_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: d_max_bytes(),
            max_age_hours: d_max_age_hours(),
            segment_bytes: d_segment_bytes(),
            segment_max_age_s: d_segment_max_age_s(),
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: d_fsync_interval_ms(),
            group_commit_ms: d_group_commit_ms(),
        }
    }
}

/// Validated `[spool]`.
#[derive(Clone, Debug)]
pub struct SpoolSettings {
    /// Size bound.
    pub max_bytes: u64,
    /// Retention.
    pub max_age: Duration,
    /// Segment size.
    pub segment_bytes: u64,
    /// Segment lifetime.
    pub segment_max_age: Duration,
    /// fsync policy.
    pub fsync: FsyncPolicy,
    /// fsync interval (policy `interval`).
    pub fsync_interval: Duration,
    /// Group commit window (see [`SpoolConfig::group_commit_ms`]).
    pub group_commit: Duration,
}

impl SpoolConfig {
    /// Check and convert.
    pub fn validate(&self) -> Result<SpoolSettings, Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.segment_bytes < 4096 {
            errs.push(FieldError::new("segment_bytes", "must be ≥ 4096"));
        }
        if self.max_bytes / 4 < self.segment_bytes {
            errs.push(FieldError::new(
                "max_bytes",
                "must be at least 4 × `segment_bytes`",
            ));
        }
        if self.max_age_hours == 0 {
            errs.push(FieldError::new("max_age_hours", "must be > 0"));
        }
        if self.segment_max_age_s == 0 {
            errs.push(FieldError::new("segment_max_age_s", "must be > 0"));
        }
        if self.fsync == FsyncPolicy::Interval && self.fsync_interval_ms == 0 {
            errs.push(FieldError::new("fsync_interval_ms", "must be > 0"));
        }
        if self.group_commit_ms > 1000 {
            errs.push(FieldError::new("group_commit_ms", "must be ≤ 1000"));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(SpoolSettings {
            max_bytes: self.max_bytes,
            max_age: Duration::from_secs(self.max_age_hours.saturating_mul(3600)),
            segment_bytes: self.segment_bytes,
            segment_max_age: Duration::from_secs(self.segment_max_age_s),
            fsync: self.fsync,
            fsync_interval: Duration::from_millis(self.fsync_interval_ms),
            group_commit: Duration::from_millis(self.group_commit_ms),
        })
    }
}

/// Spool errors.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// File system error.
    #[error("spool {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Another process holds the spool.
    #[error("spool directory {0} is in use by another process")]
    Locked(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counters and the system alarm flag, shared with the daemon (`/metrics`, system alarms).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Readings appended.
    pub readings_appended: AtomicU64,
    /// Bytes appended (frames, including headers).
    pub bytes_appended: AtomicU64,
    /// fsync calls on segments.
    pub fsyncs: AtomicU64,
    /// Readings handed to the writer and committed (delivered).
    pub readings_delivered: AtomicU64,
    /// Segments dropped because the spool reached `max_bytes` (or the disk was full).
    pub segments_dropped_full: AtomicU64,
    /// Segments deleted by retention.
    pub segments_expired: AtomicU64,
    /// Readings dropped before the writer delivered them (bound or retention).
    pub readings_dropped_unsent: AtomicU64,
    /// Readings skipped because their point id is not in the table given to `append`.
    pub readings_unknown_point: AtomicU64,
    /// Frames found corrupt (CRC) in sealed segments, and torn tails cut at open.
    pub corrupt_frames: AtomicU64,
    /// Current size of all segments, bytes (gauge).
    pub bytes_on_disk: AtomicU64,
    /// Current number of segments (gauge).
    pub segments: AtomicU64,
    /// Raised when the size bound dropped data (or undelivered data expired). The daemon
    /// turns it into a system alarm; cleared only by [`SpoolStats::clear_overflow_alarm`].
    pub overflow_alarm: AtomicBool,
    /// [`Spool::append`] calls that failed (disk full with nothing left to drop, I/O
    /// error, fsync error).
    pub append_failures: AtomicU64,
    /// Readings of failed appends: not archived, not sent to InfluxDB. MQTT QoS 1 readings
    /// among them stay unacknowledged and are redelivered by the broker; Modbus readings
    /// are lost for storage (the engine still evaluated them).
    pub readings_not_spooled: AtomicU64,
    /// Raised while appends fail (the last append failed); cleared by the next successful
    /// append. The daemon turns it into a system alarm.
    pub append_failing: AtomicBool,
    /// Hand-overs that found the spool writer's queue full and waited (the disk was behind
    /// the input): the source waited with them, and so did any alarm in its next messages.
    pub queue_full_waits: AtomicU64,
    /// Time those hand-overs waited, µs.
    pub queue_full_wait_us: AtomicU64,
}

impl SpoolStats {
    /// Whether the system alarm is raised.
    pub fn overflow_alarm(&self) -> bool {
        self.overflow_alarm.load(Relaxed)
    }
    /// Clear the flag (after the system alarm was acknowledged and the cause fixed).
    pub fn clear_overflow_alarm(&self) {
        self.overflow_alarm.store(false, Relaxed);
    }
}

/// A position in the spool: segment, frame offset in it, readings consumed in that frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Segment id.
    pub seg: u64,
    /// Offset of the frame.
    pub off: u64,
    /// Readings of that frame already consumed.
    pub idx: u32,
}

#[derive(Debug)]
struct SegInfo {
    id: u64,
    bytes: u64,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<SegInfo>,
    /// Durable end of the active segment (everything before it is complete frames).
    head: Pos,
    /// The writer's committed cursor, if a writer is attached.
    committed: Option<Pos>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    notify: tokio::sync::Notify,
    stats: Arc<SpoolStats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:016x}.pgs"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut ids = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".pgs"))
            && let Ok(id) = u64::from_str_radix(hex, 16)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Stable one-byte codes for units. Append only: stored segments use them.
fn unit_code(u: Unit) -> u8 {
    match u {
        Unit::PercentLel => 0,
        Unit::LelMetre => 1,
        Unit::PercentVol => 2,
        Unit::Ppm => 3,
        Unit::MgPerM3 => 4,
        Unit::Pa => 5,
        Unit::KPa => 6,
        Unit::MPa => 7,
        Unit::Bar => 8,
        Unit::Celsius => 9,
        Unit::Metre => 10,
        Unit::Millimetre => 11,
        Unit::Percent => 12,
        Unit::CubicMetrePerHour => 13,
        Unit::TonnePerHour => 14,
        Unit::MilliAmp => 15,
        Unit::None => 16,
    }
}

const UNITS: [Unit; 17] = [
    Unit::PercentLel,
    Unit::LelMetre,
    Unit::PercentVol,
    Unit::Ppm,
    Unit::MgPerM3,
    Unit::Pa,
    Unit::KPa,
    Unit::MPa,
    Unit::Bar,
    Unit::Celsius,
    Unit::Metre,
    Unit::Millimetre,
    Unit::Percent,
    Unit::CubicMetrePerHour,
    Unit::TonnePerHour,
    Unit::MilliAmp,
    Unit::None,
];

/// One reading as stored (point id as written in that segment).
#[derive(Clone, Copy, Debug)]
struct RawReading {
    point: u32,
    value: f64,
    unit: u8,
    quality: u16,
    source: i64,
    receive: i64,
}

fn put_reading(out: &mut Vec<u8>, r: &Reading) {
    out.extend_from_slice(&r.point.0.to_le_bytes());
    out.extend_from_slice(&r.value.to_bits().to_le_bytes());
    out.push(unit_code(r.unit));
    out.extend_from_slice(&r.quality.code().to_le_bytes());
    out.extend_from_slice(&r.source_time.nanos().to_le_bytes());
    out.extend_from_slice(&r.receive_time.nanos().to_le_bytes());
}

fn get_reading(b: &[u8]) -> RawReading {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    RawReading {
        point: u32_at(0),
        value: f64::from_bits(u64_at(4)),
        unit: b[12],
        quality: u16::from_le_bytes([b[13], b[14]]),
        source: u64_at(15) as i64,
        receive: u64_at(23) as i64,
    }
}

/// A point as named in a segment's dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedPoint {
    /// Tag (位号).
    pub tag: String,
    /// Enterprise code.
    pub enterprise: String,
    /// Kind name.
    pub kind: String,
}

fn put_str(out: &mut Vec<u8>, s: &str, wide: bool) {
    let b = s.as_bytes();
    if wide {
        let n = b.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&b[..n]);
    } else {
        let n = b.len().min(u8::MAX as usize);
        out.push(n as u8);
        out.extend_from_slice(&b[..n]);
    }
}

fn parse_dict(p: &[u8]) -> Option<Vec<(u32, ArchivedPoint)>> {
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> Option<&[u8]> {
        let s = p.get(*i..*i + n)?;
        *i += n;
        Some(s)
    };
    let count = u32::from_le_bytes(take(&mut i, 4)?.try_into().ok()?);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = u32::from_le_bytes(take(&mut i, 4)?.try_into().ok()?);
        let mut strs = Vec::with_capacity(3);
        for wide in [true, true, false] {
            let n = if wide {
                u16::from_le_bytes(take(&mut i, 2)?.try_into().ok()?) as usize
            } else {
                take(&mut i, 1)?[0] as usize
            };
            strs.push(String::from_utf8_lossy(take(&mut i, n)?).into_owned());
        }
        let kind = strs.pop()?;
        let enterprise = strs.pop()?;
        let tag = strs.pop()?;
        out.push((
            id,
            ArchivedPoint {
                tag,
                enterprise,
                kind,
            },
        ));
    }
    Some(out)
}

/// Reads frames of one segment sequentially.
struct SegReader {
    id: u64,
    file: BufReader<File>,
    off: u64,
    buf: Vec<u8>,
}

enum FrameRead {
    /// A good frame; its payload is in `buf`, it started at the returned offset.
    Frame(u64),
    /// No complete frame before `limit` (or end of file).
    End,
    /// CRC or length mismatch.
    Corrupt,
}

impl SegReader {
    fn open(dir: &Path, id: u64) -> io::Result<Self> {
        let mut f = File::open(seg_path(dir, id))?;
        let mut h = [0u8; SEG_HEADER as usize];
        f.read_exact(&mut h)?;
        if &h[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a spool segment",
            ));
        }
        Ok(Self {
            id,
            file: BufReader::with_capacity(256 << 10, f),
            off: SEG_HEADER,
            buf: Vec::new(),
        })
    }

    fn seek(&mut self, off: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(off))?;
        self.off = off;
        Ok(())
    }

    /// Read the next frame if it ends at or before `limit`.
    fn next(&mut self, limit: u64) -> io::Result<FrameRead> {
        if self.off + FRAME_HEADER > limit {
            return Ok(FrameRead::End);
        }
        let mut h = [0u8; FRAME_HEADER as usize];
        match self.file.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.seek(self.off)?;
                return Ok(FrameRead::End);
            }
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 || len > MAX_FRAME {
            return Ok(FrameRead::Corrupt);
        }
        if self.off + FRAME_HEADER + u64::from(len) > limit {
            self.seek(self.off)?;
            return Ok(FrameRead::End);
        }
        self.buf.resize(len as usize, 0);
        match self.file.read_exact(&mut self.buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.seek(self.off)?;
                return Ok(FrameRead::End);
            }
            Err(e) => return Err(e),
        }
        if crc32fast::hash(&self.buf) != crc {
            return Ok(FrameRead::Corrupt);
        }
        let start = self.off;
        self.off += FRAME_HEADER + u64::from(len);
        Ok(FrameRead::Frame(start))
    }
}

/// The writing side of the spool. One per data dir (the engine task, or a dedicated
/// spool task, owns it).
pub struct Spool {
    shared: Arc<Shared>,
    settings: SpoolSettings,
    active: File,
    active_id: u64,
    active_len: u64,
    active_opened: Instant,
    seen: Vec<bool>,
    frame: Vec<u8>,
    last_sync: Instant,
    dirty: bool,
    _lock: File,
}

impl Spool {
    /// Open (or create) the spool in `dir`: recover the last segment, start a new one.
    /// Returns the spool and a handle to create readers from.
    pub fn open(dir: &Path, settings: SpoolSettings) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let stats = Arc::new(SpoolStats::default());
        let ids = list_segments(dir)?;
        let mut segments = VecDeque::new();
        for (n, &id) in ids.iter().enumerate() {
            let path = seg_path(dir, id);
            let mut len = fs::metadata(&path).map_err(io_err(&path))?.len();
            if n + 1 == ids.len() {
                len = recover_tail(dir, id, len, &stats)?;
            }
            segments.push_back(SegInfo { id, bytes: len });
        }
        let active_id = ids.last().map_or(1, |l| l + 1);
        let (active, active_len) = create_segment(dir, active_id)?;
        segments.push_back(SegInfo {
            id: active_id,
            bytes: active_len,
        });
        let total: u64 = segments.iter().map(|s| s.bytes).sum();
        stats.bytes_on_disk.store(total, Relaxed);
        stats.segments.store(segments.len() as u64, Relaxed);
        info!(dir = %dir.display(), segments = segments.len(), bytes = total, "spool opened");
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                segments,
                head: Pos {
                    seg: active_id,
                    off: active_len,
                    idx: 0,
                },
                committed: None,
            }),
            notify: tokio::sync::Notify::new(),
            stats,
        });
        Ok(Spool {
            shared,
            settings,
            active,
            active_id,
            active_len,
            active_opened: Instant::now(),
            seen: Vec::new(),
            frame: Vec::with_capacity(64 << 10),
            last_sync: Instant::now(),
            dirty: false,
            _lock: lock,
        })
    }

    /// The counters and the overflow alarm flag.
    pub fn stats(&self) -> Arc<SpoolStats> {
        self.shared.stats.clone()
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// A reader for the InfluxDB writer, resuming at the durable cursor (`cursor` file;
    /// the oldest segment when there is none). `park` is the park id written as a tag.
    /// Only one writer reader should exist per spool.
    pub fn writer_reader(&self, park: &str) -> Result<SpoolReader, SpoolError> {
        SpoolReader::new(self.shared.clone(), park)
    }

    /// Append readings (one frame, one write) and apply the fsync policy. Readings whose
    /// point is not in `table` are skipped and counted. When this returns `Ok` under
    /// `fsync = "always"`, the readings are on disk.
    ///
    /// On an error nothing of this call is in the spool (a partial frame is cut) and the
    /// failure is counted ([`SpoolStats::append_failures`],
    /// [`SpoolStats::readings_not_spooled`], [`SpoolStats::append_failing`]); the spool
    /// stays usable and the next append tries again.
    pub fn append(&mut self, readings: &[Reading], table: &PointTable) -> Result<(), SpoolError> {
        let result = self.append_inner(readings, table);
        let stats = &self.shared.stats;
        match result {
            Ok(()) => {
                if stats.append_failing.swap(false, Relaxed) {
                    info!("spool: appends succeed again");
                }
                Ok(())
            }
            Err(e) => {
                stats.append_failures.fetch_add(1, Relaxed);
                stats
                    .readings_not_spooled
                    .fetch_add(readings.len() as u64, Relaxed);
                stats.append_failing.store(true, Relaxed);
                Err(e)
            }
        }
    }

    fn append_inner(&mut self, readings: &[Reading], table: &PointTable) -> Result<(), SpoolError> {
        if readings.is_empty() {
            return Ok(());
        }
        if self.active_len >= self.settings.segment_bytes
            || self.active_opened.elapsed() >= self.settings.segment_max_age
        {
            self.rotate()?;
        }
        self.frame.clear();
        // Dictionary frame for points new to this segment.
        let mut dict = Vec::new();
        let mut newly = Vec::new();
        let mut new = 0u32;
        let mut skipped = 0u64;
        for r in readings {
            let i = r.point.index();
            let Some(p) = table.get(r.point) else {
                skipped += 1;
                continue;
            };
            if self.seen.len() <= i {
                self.seen.resize(i + 1, false);
            }
            if !self.seen[i] {
                self.seen[i] = true;
                newly.push(i);
                new += 1;
                dict.extend_from_slice(&r.point.0.to_le_bytes());
                put_str(&mut dict, &p.tag, true);
                put_str(&mut dict, &p.enterprise, true);
                put_str(&mut dict, p.kind.as_str(), false);
            }
        }
        if new > 0 {
            let mut payload = Vec::with_capacity(5 + dict.len());
            payload.push(T_DICT);
            payload.extend_from_slice(&new.to_le_bytes());
            payload.extend_from_slice(&dict);
            push_frame(&mut self.frame, &payload);
        }
        let count = readings.len() as u64 - skipped;
        if count > 0 {
            let mut payload = Vec::with_capacity(5 + REC * count as usize);
            payload.push(T_READINGS);
            payload.extend_from_slice(&(count as u32).to_le_bytes());
            for r in readings {
                if table.get(r.point).is_some() {
                    put_reading(&mut payload, r);
                }
            }
            push_frame(&mut self.frame, &payload);
        }
        if skipped > 0 {
            self.shared
                .stats
                .readings_unknown_point
                .fetch_add(skipped, Relaxed);
            warn!(skipped, "spool: readings of unknown points skipped");
        }
        if self.frame.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_frame() {
            // The dictionary entries of the cut frame were not written: name those points
            // again in the next frame.
            for i in newly {
                self.seen[i] = false;
            }
            return Err(e);
        }
        let stats = self.shared.stats.clone();
        stats.readings_appended.fetch_add(count, Relaxed);
        stats
            .bytes_appended
            .fetch_add(self.frame.len() as u64, Relaxed);
        let sync = match self.settings.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval => self.last_sync.elapsed() >= self.settings.fsync_interval,
            FsyncPolicy::Never => false,
        };
        self.dirty = true;
        if sync {
            self.sync()?;
        }
        {
            let mut st = self.shared.lock();
            st.head = Pos {
                seg: self.active_id,
                off: self.active_len,
                idx: 0,
            };
            if let Some(s) = st.segments.back_mut() {
                s.bytes = self.active_len;
            }
            let total: u64 = st.segments.iter().map(|s| s.bytes).sum();
            stats.bytes_on_disk.store(total, Relaxed);
        }
        self.shared.notify.notify_one();
        if stats.bytes_on_disk.load(Relaxed) > self.settings.max_bytes {
            self.enforce_size();
        }
        Ok(())
    }

    /// Write the prepared frame bytes; on "disk full", drop the oldest segment once and
    /// retry (the stated policy), cutting any partial write first.
    fn write_frame(&mut self) -> Result<(), SpoolError> {
        let path = seg_path(&self.shared.dir, self.active_id);
        for attempt in 0..2 {
            match self.active.write_all(&self.frame) {
                Ok(()) => {
                    self.active_len += self.frame.len() as u64;
                    return Ok(());
                }
                Err(e) => {
                    // Cut a partial frame so the segment stays a sequence of whole frames.
                    let _ = self.active.set_len(self.active_len);
                    let _ = self.active.seek(SeekFrom::Start(self.active_len));
                    if attempt == 0 && e.kind() == io::ErrorKind::StorageFull {
                        error!(dir = %self.shared.dir.display(), "spool: disk full, dropping the oldest segment");
                        if self.drop_oldest(true) {
                            continue;
                        }
                    }
                    return Err(io_err(&path)(e));
                }
            }
        }
        Err(io_err(&path)(io::Error::from(io::ErrorKind::StorageFull)))
    }

    /// fsync the active segment if anything was written since the last fsync.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty {
            self.active
                .sync_data()
                .map_err(io_err(&seg_path(&self.shared.dir, self.active_id)))?;
            self.shared.stats.fsyncs.fetch_add(1, Relaxed);
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seal the active segment (fsync) and start a new one.
    pub fn rotate(&mut self) -> Result<(), SpoolError> {
        self.dirty = true;
        self.sync()?;
        let id = self.active_id + 1;
        let (f, len) = create_segment(&self.shared.dir, id)?;
        self.active = f;
        self.active_id = id;
        self.active_len = len;
        self.active_opened = Instant::now();
        self.seen.clear();
        {
            let mut st = self.shared.lock();
            st.segments.push_back(SegInfo { id, bytes: len });
            st.head = Pos {
                seg: id,
                off: len,
                idx: 0,
            };
            self.shared
                .stats
                .segments
                .store(st.segments.len() as u64, Relaxed);
        }
        self.shared.notify.notify_one();
        self.enforce_size();
        Ok(())
    }

    /// Delete sealed segments whose last write is older than the retention at `now`.
    /// Call periodically (e.g. every minute). Returns how many were deleted.
    pub fn expire(&mut self, now: SystemTime) -> usize {
        let mut n = 0;
        loop {
            let (id, unsent) = {
                let st = self.shared.lock();
                let Some(first) = st.segments.front() else {
                    break;
                };
                if first.id == self.active_id {
                    break;
                }
                let path = seg_path(&self.shared.dir, first.id);
                let mtime = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if now.duration_since(mtime).unwrap_or(Duration::ZERO) < self.settings.max_age {
                    break;
                }
                (first.id, st.committed.is_some_and(|c| c.seg <= first.id))
            };
            let lost = self.remove_front(id);
            let stats = &self.shared.stats;
            stats.segments_expired.fetch_add(1, Relaxed);
            if unsent && lost > 0 {
                stats.readings_dropped_unsent.fetch_add(lost, Relaxed);
                stats.overflow_alarm.store(true, Relaxed);
                error!(
                    segment = id,
                    readings = lost,
                    "spool: undelivered readings expired (retention reached before InfluxDB took them)"
                );
            } else {
                info!(segment = id, "spool: segment expired (retention)");
            }
            n += 1;
        }
        n
    }

    fn enforce_size(&mut self) {
        while self.shared.stats.bytes_on_disk.load(Relaxed) > self.settings.max_bytes {
            if !self.drop_oldest(false) {
                break;
            }
        }
    }

    /// Drop the oldest sealed segment for lack of space. False if there is none.
    fn drop_oldest(&mut self, disk_full: bool) -> bool {
        let id = {
            let st = self.shared.lock();
            match st.segments.front() {
                Some(f) if f.id != self.active_id => f.id,
                _ => return false,
            }
        };
        let lost = self.remove_front(id);
        let stats = &self.shared.stats;
        stats.segments_dropped_full.fetch_add(1, Relaxed);
        stats.readings_dropped_unsent.fetch_add(lost, Relaxed);
        stats.overflow_alarm.store(true, Relaxed);
        error!(
            segment = id,
            undelivered_readings = lost,
            disk_full,
            max_bytes = self.settings.max_bytes,
            "spool full: oldest segment dropped (policy: keep newest); system alarm raised"
        );
        true
    }

    /// Remove the front segment; return how many of its readings the writer had not yet
    /// delivered (0 when no writer is attached).
    fn remove_front(&mut self, id: u64) -> u64 {
        let committed = self.shared.lock().committed;
        let lost = match committed {
            Some(c) if c.seg <= id => count_after(&self.shared.dir, id, c),
            _ => 0,
        };
        let path = seg_path(&self.shared.dir, id);
        if let Err(e) = fs::remove_file(&path) {
            error!(file = %path.display(), error = %e, "spool: cannot delete segment");
        }
        let mut st = self.shared.lock();
        st.segments.retain(|s| s.id != id);
        let total: u64 = st.segments.iter().map(|s| s.bytes).sum();
        self.shared.stats.bytes_on_disk.store(total, Relaxed);
        self.shared
            .stats
            .segments
            .store(st.segments.len() as u64, Relaxed);
        lost
    }
}

/// Readings in segment `id` after position `c` (whole segment when `c` is earlier).
fn count_after(dir: &Path, id: u64, c: Pos) -> u64 {
    let Ok(mut r) = SegReader::open(dir, id) else {
        return 0;
    };
    let mut n = 0u64;
    while let Ok(FrameRead::Frame(start)) = r.next(u64::MAX) {
        if r.buf[0] != T_READINGS || r.buf.len() < 5 {
            continue;
        }
        let count = u64::from(u32::from_le_bytes([r.buf[1], r.buf[2], r.buf[3], r.buf[4]]));
        let pos = Pos {
            seg: id,
            off: start,
            idx: 0,
        };
        if c.seg < id || pos.off > c.off {
            n += count;
        } else if pos.off == c.off {
            n += count.saturating_sub(u64::from(c.idx));
        }
    }
    n
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn create_segment(dir: &Path, id: u64) -> Result<(File, u64), SpoolError> {
    let path = seg_path(dir, id);
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let mut h = Vec::with_capacity(SEG_HEADER as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&now.to_le_bytes());
    f.write_all(&h).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok((f, SEG_HEADER))
}

/// Cut a torn tail: keep whole frames with a good CRC. Returns the new length.
fn recover_tail(dir: &Path, id: u64, len: u64, stats: &SpoolStats) -> Result<u64, SpoolError> {
    let path = seg_path(dir, id);
    let mut r = match SegReader::open(dir, id) {
        Ok(r) => r,
        Err(e) => {
            // Too short for a header (crash right at creation) or not ours: start over.
            warn!(file = %path.display(), error = %e, "spool: unreadable last segment, emptied");
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(0).map_err(io_err(&path))?;
            let mut h = Vec::new();
            h.extend_from_slice(MAGIC);
            h.extend_from_slice(&0i64.to_le_bytes());
            (&f).write_all(&h).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
            return Ok(SEG_HEADER);
        }
    };
    while let FrameRead::Frame(_) = r.next(len).map_err(io_err(&path))? {}
    if r.off < len {
        warn!(file = %path.display(), kept = r.off, cut = len - r.off, "spool: torn tail cut after crash");
        stats.corrupt_frames.fetch_add(1, Relaxed);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.set_len(r.off).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
    }
    Ok(r.off)
}

const CURSOR_FILE: &str = "cursor";

fn read_cursor(dir: &Path) -> Option<Pos> {
    let b = fs::read(dir.join(CURSOR_FILE)).ok()?;
    if b.len() != 24 {
        return None;
    }
    let crc = u32::from_le_bytes(b[20..24].try_into().ok()?);
    if crc32fast::hash(&b[..20]) != crc {
        return None;
    }
    Some(Pos {
        seg: u64::from_le_bytes(b[0..8].try_into().ok()?),
        off: u64::from_le_bytes(b[8..16].try_into().ok()?),
        idx: u32::from_le_bytes(b[16..20].try_into().ok()?),
    })
}

fn write_cursor(dir: &Path, p: Pos) -> Result<(), SpoolError> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&p.seg.to_le_bytes());
    b.extend_from_slice(&p.off.to_le_bytes());
    b.extend_from_slice(&p.idx.to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    let tmp = dir.join("cursor.tmp");
    let path = dir.join(CURSOR_FILE);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&b).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

/// The InfluxDB writer's view of the spool: hands out readings as line protocol after
/// the durable cursor, and makes the cursor durable on [`LineSource::commit`].
pub struct SpoolReader {
    shared: Arc<Shared>,
    park: String,
    /// Handed out up to here.
    pos: Pos,
    /// Readings handed out since the last commit.
    uncommitted: u64,
    seg: Option<SegReader>,
    /// Series prefix per point id of the current segment.
    prefixes: Prefixes,
    /// Decoded readings frame being consumed (starts at `pos.off`).
    pending: Vec<u8>,
    pending_count: u32,
}

/// Series prefixes by point id. Ids are the point table's indices, so a vector indexed by
/// id (ids up to [`Prefixes::DENSE`]; any larger one, which only a damaged or foreign
/// dictionary could hold, in a map). A `HashMap<u32, _>` with SipHash was ~15 % of the
/// Influx writer's time at 100,000 readings/s (issue #11).
#[derive(Default)]
struct Prefixes {
    dense: Vec<Option<Box<[u8]>>>,
    sparse: HashMap<u32, Box<[u8]>, foldhash::fast::RandomState>,
}

impl Prefixes {
    const DENSE: u32 = 1 << 20;

    fn insert(&mut self, id: u32, prefix: Vec<u8>) {
        if id < Self::DENSE {
            let i = id as usize;
            if self.dense.len() <= i {
                self.dense.resize(i + 1, None);
            }
            self.dense[i] = Some(prefix.into_boxed_slice());
        } else {
            self.sparse.insert(id, prefix.into_boxed_slice());
        }
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        if id < Self::DENSE {
            self.dense.get(id as usize)?.as_deref()
        } else {
            self.sparse.get(&id).map(|p| &**p)
        }
    }

    fn clear(&mut self) {
        self.dense.clear();
        self.sparse.clear();
    }
}

impl SpoolReader {
    fn new(shared: Arc<Shared>, park: &str) -> Result<Self, SpoolError> {
        let saved = read_cursor(&shared.dir);
        let first = shared.lock().segments.front().map_or(0, |s| s.id);
        let pos = match saved {
            Some(p) if p.seg >= first => p,
            _ => Pos {
                seg: first,
                off: SEG_HEADER,
                idx: 0,
            },
        };
        if let Some(p) = saved
            && p.seg < first
        {
            warn!(
                cursor_segment = p.seg,
                oldest = first,
                "spool: cursor points at a dropped segment; resuming at the oldest"
            );
        }
        shared.lock().committed = Some(pos);
        Ok(Self {
            shared,
            park: park.to_owned(),
            pos,
            uncommitted: 0,
            seg: None,
            prefixes: Prefixes::default(),
            pending: Vec::new(),
            pending_count: 0,
        })
    }

    /// The committed (durable) position.
    pub fn committed(&self) -> Option<Pos> {
        self.shared.lock().committed
    }

    /// Readings not yet delivered, approximately (whole frames after the cursor are
    /// counted by size). For the health page and the drain benchmark.
    pub fn backlog_bytes(&self) -> u64 {
        let st = self.shared.lock();
        st.segments
            .iter()
            .filter(|s| s.id >= self.pos.seg)
            .map(|s| {
                if s.id == self.pos.seg {
                    s.bytes.saturating_sub(self.pos.off)
                } else {
                    s.bytes
                }
            })
            .sum()
    }

    fn apply_dict(&mut self, payload: &[u8]) {
        if let Some(entries) = parse_dict(&payload[1..]) {
            for (id, p) in entries {
                let prefix = encode::reading_prefix(
                    &self.park,
                    PointMeta {
                        tag: &p.tag,
                        enterprise: &p.enterprise,
                        kind: &p.kind,
                    },
                );
                self.prefixes.insert(id, prefix);
            }
        }
    }

    /// Open segment `pos.seg` and position at `pos.off`, loading the dictionary frames
    /// before it.
    fn open_at(&mut self) -> io::Result<()> {
        self.prefixes.clear();
        let mut r = SegReader::open(&self.shared.dir, self.pos.seg)?;
        while r.off < self.pos.off {
            match r.next(self.pos.off)? {
                FrameRead::Frame(_) => {
                    if r.buf[0] == T_DICT {
                        let buf = std::mem::take(&mut r.buf);
                        self.apply_dict(&buf);
                        r.buf = buf;
                    }
                }
                FrameRead::End | FrameRead::Corrupt => break,
            }
        }
        if r.off != self.pos.off {
            r.seek(self.pos.off)?;
        }
        self.seg = Some(r);
        Ok(())
    }

    /// Move to the next segment if the current one is sealed and done. Returns false when
    /// there is nothing further.
    fn advance_segment(&mut self) -> bool {
        let st = self.shared.lock();
        let next = st
            .segments
            .iter()
            .find(|s| s.id > self.pos.seg)
            .map(|s| s.id);
        drop(st);
        match next {
            Some(id) => {
                self.pos = Pos {
                    seg: id,
                    off: SEG_HEADER,
                    idx: 0,
                };
                self.seg = None;
                self.pending_count = 0;
                true
            }
            None => false,
        }
    }

    fn fill_inner(&mut self, batch: &mut LineBatch, max: usize) -> io::Result<usize> {
        let mut n = 0usize;
        while n < max {
            // Consume a pending readings frame first.
            if self.pending_count > 0 && self.pos.idx < self.pending_count {
                let take = (self.pending_count - self.pos.idx).min((max - n) as u32);
                let base = 5 + self.pos.idx as usize * REC;
                for k in 0..take as usize {
                    let raw = get_reading(&self.pending[base + k * REC..base + (k + 1) * REC]);
                    let Some(prefix) = self.prefixes.get(raw.point) else {
                        continue;
                    };
                    let r = Reading {
                        point: PointId(raw.point),
                        value: raw.value,
                        unit: UNITS.get(raw.unit as usize).copied().unwrap_or(Unit::None),
                        quality: Quality::from_code(raw.quality).unwrap_or(Quality::Fault),
                        source_time: Timestamp::from_nanos(raw.source),
                        receive_time: Timestamp::from_nanos(raw.receive),
                    };
                    batch.push_with(|out| encode::reading_line(out, prefix, &r));
                }
                self.pos.idx += take;
                n += take as usize;
                self.uncommitted += u64::from(take);
                if self.pos.idx >= self.pending_count {
                    // Frame done: position after it.
                    let len = self.pending.len() as u64;
                    self.pos.off += FRAME_HEADER + len;
                    self.pos.idx = 0;
                    self.pending_count = 0;
                }
                continue;
            }
            let (head, first) = {
                let st = self.shared.lock();
                (st.head, st.segments.front().map_or(0, |s| s.id))
            };
            if self.pos.seg < first {
                // Our segment was dropped under us (size bound): it was counted there.
                self.pos = Pos {
                    seg: first,
                    off: SEG_HEADER,
                    idx: 0,
                };
                self.seg = None;
                self.pending_count = 0;
            }
            if self.seg.as_ref().is_none_or(|s| s.id != self.pos.seg) {
                match self.open_at() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if self.advance_segment() {
                            continue;
                        }
                        return Ok(n);
                    }
                    Err(e) => return Err(e),
                }
            }
            let limit = if self.pos.seg == head.seg {
                head.off
            } else {
                u64::MAX
            };
            let r = self.seg.as_mut().expect("opened above");
            match r.next(limit)? {
                FrameRead::Frame(start) => {
                    debug_assert_eq!(start, self.pos.off);
                    match r.buf[0] {
                        T_DICT => {
                            let buf = std::mem::take(&mut r.buf);
                            self.apply_dict(&buf);
                            self.pos.off += FRAME_HEADER + buf.len() as u64;
                            if let Some(r) = self.seg.as_mut() {
                                r.buf = buf;
                            }
                        }
                        T_READINGS if r.buf.len() >= 5 => {
                            let count =
                                u32::from_le_bytes([r.buf[1], r.buf[2], r.buf[3], r.buf[4]]);
                            if r.buf.len() != 5 + count as usize * REC {
                                self.shared.stats.corrupt_frames.fetch_add(1, Relaxed);
                                self.pos.off += FRAME_HEADER + r.buf.len() as u64;
                                continue;
                            }
                            std::mem::swap(&mut self.pending, &mut r.buf);
                            self.pending_count = count;
                            // pos.idx may be > 0 when resuming from a cursor mid-frame.
                        }
                        _ => {
                            self.shared.stats.corrupt_frames.fetch_add(1, Relaxed);
                            self.pos.off += FRAME_HEADER + r.buf.len() as u64;
                        }
                    }
                }
                FrameRead::End => {
                    if self.pos.seg == head.seg || !self.advance_segment() {
                        return Ok(n);
                    }
                }
                FrameRead::Corrupt => {
                    self.shared.stats.corrupt_frames.fetch_add(1, Relaxed);
                    if self.pos.seg == head.seg {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "corrupt frame in active segment {} at {}",
                                self.pos.seg, self.pos.off
                            ),
                        ));
                    }
                    error!(
                        segment = self.pos.seg,
                        offset = self.pos.off,
                        "spool: corrupt frame, skipping the rest of the segment"
                    );
                    if !self.advance_segment() {
                        return Ok(n);
                    }
                }
            }
        }
        Ok(n)
    }
}

impl LineSource for SpoolReader {
    fn fill(&mut self, batch: &mut LineBatch, max_lines: usize) -> Result<usize, SourceError> {
        Ok(self.fill_inner(batch, max_lines)?)
    }

    fn commit(&mut self) -> Result<(), SourceError> {
        write_cursor(&self.shared.dir, self.pos)?;
        self.shared.lock().committed = Some(self.pos);
        self.shared
            .stats
            .readings_delivered
            .fetch_add(self.uncommitted, Relaxed);
        self.uncommitted = 0;
        Ok(())
    }

    async fn wait(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.shared.notify.notified()).await;
    }
}

/// One archived reading, with its point as named when it was recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedReading {
    /// The point (tag, enterprise, kind) as it was then.
    pub point: Arc<ArchivedPoint>,
    /// The reading; `reading.point` is the id the point had then (use `point.tag` to map
    /// it to today's table).
    pub reading: Reading,
}

/// Reads the archive (every segment, oldest first) for replay and backtests,
/// independently of the writer and its cursor. Readings come in recording order;
/// filter by `source_time` with [`ArchiveReader::between`].
pub struct ArchiveReader {
    dir: PathBuf,
    ids: VecDeque<u64>,
    seg: Option<SegReader>,
    dict: HashMap<u32, Arc<ArchivedPoint>>,
    pending: VecDeque<ArchivedReading>,
    from: Timestamp,
    to: Timestamp,
}

impl ArchiveReader {
    /// Read every segment in `dir` (the spool directory), including the active one up to
    /// what was written when each segment is reached.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            ids: list_segments(dir)?.into(),
            seg: None,
            dict: HashMap::new(),
            pending: VecDeque::new(),
            from: Timestamp(i64::MIN),
            to: Timestamp(i64::MAX),
        })
    }

    /// Only readings with `from <= source_time < to`.
    pub fn between(mut self, from: Timestamp, to: Timestamp) -> Self {
        self.from = from;
        self.to = to;
        self
    }
}

impl Iterator for ArchiveReader {
    type Item = Result<ArchivedReading, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(Ok(r));
            }
            if self.seg.is_none() {
                let id = self.ids.pop_front()?;
                self.dict.clear();
                match SegReader::open(&self.dir, id) {
                    Ok(r) => self.seg = Some(r),
                    // Deleted by retention meanwhile, or empty after a crash at creation.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Some(Err(io_err(&seg_path(&self.dir, id))(e))),
                }
            }
            let r = self.seg.as_mut().expect("set above");
            match r.next(u64::MAX) {
                Ok(FrameRead::Frame(_)) => match r.buf[0] {
                    T_DICT => {
                        for (id, p) in parse_dict(&r.buf[1..]).unwrap_or_default() {
                            self.dict.insert(id, Arc::new(p));
                        }
                    }
                    T_READINGS if r.buf.len() >= 5 => {
                        for chunk in r.buf[5..].chunks_exact(REC) {
                            let raw = get_reading(chunk);
                            if raw.source < self.from.0 || raw.source >= self.to.0 {
                                continue;
                            }
                            let Some(p) = self.dict.get(&raw.point) else {
                                continue;
                            };
                            self.pending.push_back(ArchivedReading {
                                point: p.clone(),
                                reading: Reading {
                                    point: PointId(raw.point),
                                    value: raw.value,
                                    unit: UNITS
                                        .get(raw.unit as usize)
                                        .copied()
                                        .unwrap_or(Unit::None),
                                    quality: Quality::from_code(raw.quality)
                                        .unwrap_or(Quality::Fault),
                                    source_time: Timestamp::from_nanos(raw.source),
                                    receive_time: Timestamp::from_nanos(raw.receive),
                                },
                            });
                        }
                    }
                    _ => {}
                },
                Ok(FrameRead::End) | Ok(FrameRead::Corrupt) => self.seg = None,
                Err(e) => {
                    let id = r.id;
                    self.seg = None;
                    return Some(Err(io_err(&seg_path(&self.dir, id))(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkguard_rules::{AlarmLimits, Point, PointKind};

    #[test]
    fn prefixes_by_id_dense_and_beyond() {
        let mut p = Prefixes::default();
        p.insert(3, b"three".to_vec());
        p.insert(0, b"zero".to_vec());
        p.insert(u32::MAX, b"far".to_vec());
        p.insert(3, b"three again".to_vec());
        assert_eq!(p.get(0), Some(&b"zero"[..]));
        assert_eq!(p.get(3), Some(&b"three again"[..]));
        assert_eq!(p.get(u32::MAX), Some(&b"far"[..]));
        assert_eq!(p.get(1), None, "a hole");
        assert_eq!(p.get(4), None, "past the end");
        assert_eq!(p.get(Prefixes::DENSE), None);
        assert!(p.dense.len() <= 4, "a far id does not grow the vector");
        p.clear();
        assert_eq!(p.get(0), None);
        assert_eq!(p.get(u32::MAX), None);
    }

    pub(crate) fn table(n: u32) -> PointTable {
        let pts = (0..n)
            .map(|i| Point {
                id: PointId(i),
                tag: format!("GT-{i} 甲烷,=\"\\"),
                name: format!("p{i}"),
                enterprise: format!("E{}", i % 3),
                device: None,
                hazard_installation: None,
                area: None,
                kind: PointKind::Combustible,
                gas: None,
                unit: Unit::PercentLel,
                range_lo: 0.0,
                range_hi: 100.0,
                limits: AlarmLimits::default(),
                expected_interval: Duration::from_secs(1),
                location: None,
            })
            .collect();
        PointTable::new(pts).expect("valid table")
    }

    fn reading(p: u32, k: i64) -> Reading {
        Reading {
            point: PointId(p),
            value: k as f64 * 0.25,
            unit: Unit::PercentLel,
            quality: if k % 7 == 0 {
                Quality::CommLost
            } else {
                Quality::Good
            },
            source_time: Timestamp::from_nanos(1_700_000_000_000_000_000 + k * 1_000_000),
            receive_time: Timestamp::from_nanos(1_700_000_000_000_000_000 + k * 1_000_000 + 5),
        }
    }

    fn settings() -> SpoolSettings {
        SpoolConfig {
            segment_bytes: 4096,
            max_bytes: 1 << 30,
            ..SpoolConfig::default()
        }
        .validate()
        .expect("valid")
    }

    #[test]
    fn unit_codes_round_trip() {
        for (i, u) in UNITS.iter().enumerate() {
            assert_eq!(unit_code(*u) as usize, i);
        }
    }

    #[test]
    fn record_round_trip() {
        let r = reading(7, 3);
        let mut b = Vec::new();
        put_reading(&mut b, &r);
        assert_eq!(b.len(), REC);
        let raw = get_reading(&b);
        assert_eq!(raw.point, 7);
        assert_eq!(raw.value, r.value);
        assert_eq!(raw.source, r.source_time.0);
        assert_eq!(raw.receive, r.receive_time.0);
        assert_eq!(raw.quality, r.quality.code());
    }

    #[test]
    fn archive_and_reader_across_segments_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = table(10);
        let mut expect = Vec::new();
        {
            let mut s = Spool::open(dir.path(), settings()).expect("open");
            for k in 0..500i64 {
                let batch: Vec<_> = (0..3)
                    .map(|j| reading(((k + j) % 10) as u32, k * 3 + j))
                    .collect();
                s.append(&batch, &t).expect("append");
                expect.extend(batch);
            }
            assert!(s.stats().segments.load(Relaxed) > 3, "rotated");
            // Writer reads 700, commits, reads 100 more without commit.
            let mut r = s.writer_reader("P").expect("reader");
            let mut b = LineBatch::new();
            assert_eq!(r.fill_inner(&mut b, 700).expect("fill"), 700);
            LineSource::commit(&mut r).expect("commit");
            let mut b2 = LineBatch::new();
            assert_eq!(r.fill_inner(&mut b2, 100).expect("fill"), 100);
        }
        let s = Spool::open(dir.path(), settings()).expect("reopen");
        let mut r = s.writer_reader("P").expect("reader");
        let mut b = LineBatch::new();
        let n = r.fill_inner(&mut b, 10_000).expect("fill");
        assert_eq!(n, 1500 - 700, "resumes exactly at the cursor");
        let first = String::from_utf8_lossy(b.line(0)).into_owned();
        let want = reading(expect[700].point.0, 700);
        assert!(
            first.ends_with(&format!(" {}", want.source_time.0)),
            "{first}"
        );
        let all: Vec<_> = ArchiveReader::open(dir.path())
            .expect("archive")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(all.len(), 1500);
        for (a, e) in all.iter().zip(&expect) {
            assert_eq!(a.reading, *e);
            assert_eq!(a.point.tag, format!("GT-{} 甲烷,=\"\\", e.point.0));
        }
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = table(2);
        {
            let mut s = Spool::open(dir.path(), settings()).expect("open");
            s.append(&[reading(0, 1), reading(1, 2)], &t)
                .expect("append");
        }
        let ids = list_segments(dir.path()).expect("list");
        let last = seg_path(dir.path(), ids[ids.len() - 1]);
        let mut f = OpenOptions::new().append(true).open(&last).expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("torn write");
        drop(f);
        let s = Spool::open(dir.path(), settings()).expect("reopen");
        assert_eq!(s.stats().corrupt_frames.load(Relaxed), 1);
        let all: Vec<_> = ArchiveReader::open(dir.path())
            .expect("archive")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn lock_excludes_second_opener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = Spool::open(dir.path(), settings()).expect("open");
        assert!(matches!(
            Spool::open(dir.path(), settings()),
            Err(SpoolError::Locked(_))
        ));
    }
}
