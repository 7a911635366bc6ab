//! The InfluxDB writer: forwards lines from a durable source (the daemon's spool) to
//! `POST /api/v2/write`, batched by size and time, gzip-compressed, and lets the source
//! advance its durable cursor only once every line of a batch is settled — written (2xx)
//! or put in the dead-letter file with the server's reason.
//!
//! Why reqwest and not the `influxdb2` crate: `influxdb2` 0.5's `write_line_protocol`
//! turns every non-2xx reply into a `RequestError` string without the `Retry-After`
//! header, and it cannot post an already-compressed body, so it cannot implement the
//! reply policy below. It is built on reqwest 0.11; this module uses that same reqwest
//! directly (one HTTP stack, no new dependency tree).
//!
//! Reply policy (per request):
//! | reply | action |
//! |---|---|
//! | 2xx | settled; cursor may advance |
//! | 429, 503 | wait `Retry-After` (seconds; capped at `retry_max`) or the back-off, resend |
//! | other 5xx, timeout, connect error | back-off, resend (forever: nothing is dropped) |
//! | 400 | the batch holds a line the server rejects: split it in halves and resend each; a single rejected line goes to the dead-letter file with the server's reason and is counted (a poison line is never retried forever, a batch never dropped silently) |
//! | 413 | split in halves and lower the batch size for the following batches |
//! | 401, 403, 404 | loud `error!` (token, org or bucket wrong), counted, back-off, resend: the source keeps spooling meanwhile |
//!
//! Concurrency: a gathered round of up to `concurrency × batch_size` lines is cut into
//! requests of `batch_size` that are in flight together (each retried and split on its
//! own, as above); the source is committed once every request of the round is settled,
//! so the durable cursor never passes an unsettled line. A crash mid-round resends the
//! whole round (harmless, see below).
//!
//! Resends are safe: InfluxDB keys a point by series and timestamp, so a line written
//! twice (reply lost after the server wrote it) overwrites itself.

use super::config::InfluxSettings;
use super::encode::LineBatch;
use crate::backoff::Backoff;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// While a batch is under way (lines waiting for `batch_interval` or for the batch to
/// fill), how often the writer looks for more lines: a batch that fills meanwhile goes at
/// the next look, at most this much later, and a caught-up writer wakes 20 times a second
/// instead of once per spool append (hundreds of times a second at a steady rate).
const FILL_EVERY: Duration = Duration::from_millis(50);

/// Error of a [`LineSource`].
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where the writer takes its lines from: a durable, ordered log with a cursor.
pub trait LineSource: Send {
    /// Append up to `max_lines` lines after the last one handed out, each ending in `\n`;
    /// return how many were appended (0 = nothing new now). Called from the async task:
    /// must not block for long (reading a local file is fine).
    fn fill(&mut self, batch: &mut LineBatch, max_lines: usize) -> Result<usize, SourceError>;
    /// Every line handed out so far is settled: make that durable (advance the cursor).
    fn commit(&mut self) -> Result<(), SourceError>;
    /// Resolve when new lines may be available, or after `timeout`.
    fn wait(&mut self, timeout: Duration) -> impl Future<Output = ()> + Send;
}

/// Counters of the writer, read by the daemon (`/metrics`, health). All monotonic except
/// the `last_*` and `batch_limit` gauges.
#[derive(Debug, Default)]
pub struct InfluxStats {
    /// Requests answered 2xx.
    pub requests_ok: AtomicU64,
    /// Lines confirmed written.
    pub lines_written: AtomicU64,
    /// Bytes sent in confirmed requests (after gzip).
    pub bytes_sent: AtomicU64,
    /// Lines put in the dead-letter file (rejected by the server one by one).
    pub lines_dead_lettered: AtomicU64,
    /// Replies 429/503 (throttled / unavailable).
    pub throttled: AtomicU64,
    /// Replies 413 (batch too large).
    pub too_large: AtomicU64,
    /// Replies 400 (a batch with a rejected line).
    pub bad_request: AtomicU64,
    /// Replies 401/403/404 (token, org, bucket).
    pub auth_or_missing: AtomicU64,
    /// Other 5xx replies and transport errors (connect, timeout, reset).
    pub transient_errors: AtomicU64,
    /// Source errors (spool read or cursor commit failed).
    pub source_errors: AtomicU64,
    /// Current batch size limit (lowered by 413).
    pub batch_limit: AtomicU64,
    /// HTTP status of the last reply (0 = transport error / none yet).
    pub last_status: AtomicU64,
    /// Last error message, for the health page.
    pub last_error: Mutex<Option<String>>,
}

impl InfluxStats {
    fn set_error(&self, msg: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(msg);
        }
    }
}

/// Classified reply of one request.
#[derive(Debug)]
enum Reply {
    Ok,
    Retry(Option<Duration>),
    TooLarge,
    BadRequest(String),
    Fatal(u16, String),
    Transient(String),
}

/// The writer. Build with [`InfluxWriter::new`], run with [`InfluxWriter::run`].
pub struct InfluxWriter {
    client: reqwest::Client,
    settings: InfluxSettings,
    auth: Option<String>,
    dead_letter: PathBuf,
    stats: Arc<InfluxStats>,
    limit: usize,
}

impl InfluxWriter {
    /// Build the HTTP client and read the token. `dead_letter` is the file rejected lines
    /// are appended to (`# <time> <status> <reason>` then the line).
    pub fn new(settings: InfluxSettings, dead_letter: PathBuf) -> Result<Self, String> {
        let token = settings.token.resolve()?;
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("parkguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let stats = Arc::new(InfluxStats::default());
        stats.batch_limit.store(settings.batch_size as u64, Relaxed);
        Ok(Self {
            client,
            auth: token.map(|t| format!("Token {t}")),
            dead_letter,
            limit: settings.batch_size,
            settings,
            stats,
        })
    }

    /// The counters (shared).
    pub fn stats(&self) -> Arc<InfluxStats> {
        self.stats.clone()
    }

    /// Forward `source` until `cancel`. Batches are sent when `batch_size` lines are
    /// ready or `batch_interval` after the first line of the batch, whichever comes first.
    /// The source is committed after each settled batch. On cancel, an unsent or
    /// unsettled batch stays uncommitted and is sent again after restart.
    pub async fn run<S: LineSource>(mut self, mut source: S, cancel: CancellationToken) {
        let mut batch = LineBatch::new();
        let mut src_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10), 7);
        loop {
            // The buffers follow the rounds: a catch-up's size is not kept for good.
            batch.clear_and_trim(batch.bytes(), batch.len());
            let mut first_at: Option<Instant> = None;
            // Gather.
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                let target = self.limit * self.settings.concurrency;
                let room = target.saturating_sub(batch.len());
                if room > 0 {
                    match source.fill(&mut batch, room) {
                        Ok(_) => src_backoff.reset(),
                        Err(e) => {
                            self.stats.source_errors.fetch_add(1, Relaxed);
                            error!(error = %e, "influx writer: reading the spool failed");
                            self.stats.set_error(format!("spool: {e}"));
                            tokio::select! {
                                _ = tokio::time::sleep(src_backoff.next_delay()) => {}
                                _ = cancel.cancelled() => return,
                            }
                            continue;
                        }
                    }
                }
                if batch.len() >= target {
                    break;
                }
                if !batch.is_empty() && first_at.is_none() {
                    first_at = Some(Instant::now());
                }
                let wait = match first_at {
                    None => Duration::from_secs(3600),
                    Some(t) => {
                        let left = self.settings.batch_interval.saturating_sub(t.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        left
                    }
                };
                if first_at.is_some() {
                    // A batch is under way: look for more lines every FILL_EVERY, not on
                    // every append.
                    tokio::select! {
                        _ = tokio::time::sleep(wait.min(FILL_EVERY)) => {}
                        _ = cancel.cancelled() => return,
                    }
                } else {
                    tokio::select! {
                        _ = source.wait(wait) => {}
                        _ = cancel.cancelled() => return,
                    }
                }
            }
            // Deliver, then commit.
            if !self.deliver(&batch, &cancel).await {
                return;
            }
            while let Err(e) = source.commit() {
                self.stats.source_errors.fetch_add(1, Relaxed);
                error!(error = %e, "influx writer: committing the spool cursor failed");
                tokio::select! {
                    _ = tokio::time::sleep(src_backoff.next_delay()) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }

    /// Settle every line of `batch`: written or dead-lettered. Returns false if cancelled
    /// first. The batch is cut into requests of at most the current batch size, up to
    /// `concurrency` of them in flight at once, each settled on its own (retries,
    /// splitting); the call returns when all are settled.
    pub async fn deliver(&mut self, batch: &LineBatch, cancel: &CancellationToken) -> bool {
        let limit = self.limit;
        let chunks: Vec<(usize, usize)> = (0..batch.len())
            .step_by(limit.max(1))
            .map(|a| (a, (a + limit).min(batch.len())))
            .collect();
        let mut ok = true;
        let mut new_limit = limit;
        for round in chunks.chunks(self.settings.concurrency.max(1)) {
            let this = &*self;
            let results = futures_util::future::join_all(
                round
                    .iter()
                    .enumerate()
                    .map(|(n, &(a, b))| this.deliver_range(batch, a, b, limit, n as u64, cancel)),
            )
            .await;
            for (settled, l) in results {
                ok &= settled;
                new_limit = new_limit.min(l);
            }
            if !ok {
                return false;
            }
        }
        self.limit = new_limit;
        // Slowly return to the configured size after a 413.
        if self.limit < self.settings.batch_size {
            self.limit = (self.limit + self.limit / 8 + 1).min(self.settings.batch_size);
        }
        self.stats.batch_limit.store(self.limit as u64, Relaxed);
        true
    }

    /// Settle lines `a..b` (one request unless the server asks for smaller ones). Returns
    /// whether it finished before `cancel` and the batch size limit it ended with (lowered
    /// by a 413).
    async fn deliver_range(
        &self,
        batch: &LineBatch,
        a: usize,
        b: usize,
        mut limit: usize,
        seed: u64,
        cancel: &CancellationToken,
    ) -> (bool, usize) {
        let mut backoff = Backoff::new(
            self.settings.retry_initial,
            self.settings.retry_max,
            0x1f1u64 + seed,
        );
        // Ranges still to settle; popped from the end, pushed second-half first so lines
        // go out in order.
        let mut todo = vec![(a, b)];
        while let Some((a, b)) = todo.pop() {
            if a >= b {
                continue;
            }
            if b - a > limit {
                let mid = a + limit;
                todo.push((mid, b));
                todo.push((a, mid));
                continue;
            }
            loop {
                if cancel.is_cancelled() {
                    return (false, limit);
                }
                let reply = self.post(batch.range(a, b)).await;
                let delay = match reply {
                    Reply::Ok => {
                        self.stats.requests_ok.fetch_add(1, Relaxed);
                        self.stats.lines_written.fetch_add((b - a) as u64, Relaxed);
                        break;
                    }
                    Reply::TooLarge => {
                        self.stats.too_large.fetch_add(1, Relaxed);
                        if b - a == 1 {
                            self.dead_letter(batch.line(a), 413, "line too large for the server");
                            break;
                        }
                        let half = (b - a).div_ceil(2);
                        limit = half.min(limit).max(1);
                        self.stats.batch_limit.store(limit as u64, Relaxed);
                        warn!(limit, "influx: 413 request too large, lowering batch size");
                        todo.push((a + half, b));
                        todo.push((a, a + half));
                        break;
                    }
                    Reply::BadRequest(reason) => {
                        self.stats.bad_request.fetch_add(1, Relaxed);
                        if b - a == 1 {
                            self.dead_letter(batch.line(a), 400, &reason);
                            break;
                        }
                        debug!(lines = b - a, %reason, "influx: 400, splitting the batch");
                        let half = (b - a).div_ceil(2);
                        todo.push((a + half, b));
                        todo.push((a, a + half));
                        break;
                    }
                    Reply::Retry(after) => {
                        self.stats.throttled.fetch_add(1, Relaxed);
                        let d = backoff.next_delay();
                        after.map_or(d, |a| a.min(self.settings.retry_max))
                    }
                    Reply::Fatal(status, msg) => {
                        self.stats.auth_or_missing.fetch_add(1, Relaxed);
                        error!(
                            status,
                            url = %self.settings.write_url,
                            reply = %msg,
                            "influx: write refused — check the token, org and bucket; readings keep spooling"
                        );
                        self.stats.set_error(format!("HTTP {status}: {msg}"));
                        backoff.next_delay()
                    }
                    Reply::Transient(msg) => {
                        self.stats.transient_errors.fetch_add(1, Relaxed);
                        warn!(error = %msg, "influx: write failed, retrying");
                        self.stats.set_error(msg);
                        backoff.next_delay()
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return (false, limit),
                }
            }
        }
        (true, limit)
    }

    async fn post(&self, body: &[u8]) -> Reply {
        let mut req = self
            .client
            .post(self.settings.write_url.clone())
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Accept", "application/json");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let sent_len;
        req = if self.settings.gzip {
            let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
            if let Err(e) = enc.write_all(body) {
                return Reply::Transient(format!("gzip: {e}"));
            }
            match enc.finish() {
                Ok(z) => {
                    sent_len = z.len();
                    req.header("Content-Encoding", "gzip").body(z)
                }
                Err(e) => return Reply::Transient(format!("gzip: {e}")),
            }
        } else {
            sent_len = body.len();
            req.body(body.to_vec())
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.stats.last_status.store(0, Relaxed);
                return Reply::Transient(format!("request failed: {e}"));
            }
        };
        let status = resp.status().as_u16();
        self.stats.last_status.store(u64::from(status), Relaxed);
        if resp.status().is_success() {
            self.stats.bytes_sent.fetch_add(sent_len as u64, Relaxed);
            return Reply::Ok;
        }
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let reason = server_message(&text);
        match status {
            429 | 503 => Reply::Retry(retry_after),
            413 => Reply::TooLarge,
            400 | 422 => Reply::BadRequest(reason),
            401 | 403 | 404 => Reply::Fatal(status, reason),
            _ => Reply::Transient(format!("HTTP {status}: {reason}")),
        }
    }

    fn dead_letter(&self, line: &[u8], status: u16, reason: &str) {
        self.stats.lines_dead_lettered.fetch_add(1, Relaxed);
        let reason = reason.replace(['\n', '\r'], " ");
        error!(status, %reason, line = %String::from_utf8_lossy(line), "influx: line rejected, moved to the dead-letter file");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dead_letter)
            .and_then(|mut f| {
                let mut rec = format!("# {now} {status} {reason}\n").into_bytes();
                rec.extend_from_slice(line);
                rec.push(b'\n');
                f.write_all(&rec)?;
                f.sync_data()
            });
        if let Err(e) = res {
            error!(file = %self.dead_letter.display(), error = %e, "influx: cannot write the dead-letter file");
            self.stats.set_error(format!("dead-letter file: {e}"));
        }
    }
}

/// The `message` of an InfluxDB JSON error body, else the body itself (trimmed, bounded).
fn server_message(text: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned());
    msg.chars().take(2000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_message_prefers_json_message() {
        assert_eq!(
            server_message(r#"{"code":"invalid","message":"unable to parse 'x': bad"}"#),
            "unable to parse 'x': bad"
        );
        assert_eq!(server_message(" plain \n"), "plain");
    }
}
