//! Per-device Modbus metrics: lock-free counters the pollers update and the daemon reads
//! (later exported on `/metrics`).

use super::plan::ModbusPlan;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (µs) of the poll-start lateness histogram buckets; a last bucket holds
/// everything above.
pub const LATENESS_BUCKETS_US: [u64; 19] = [
    100, 250, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000,
    50_000, 100_000, 200_000, 500_000, 1_000_000, 5_000_000,
];

/// Counters of one device.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// Device id.
    pub id: String,
    /// Scheduled polls started.
    pub polls: AtomicU64,
    /// Scheduled polls skipped because the line was still busy past their slot.
    pub polls_skipped: AtomicU64,
    /// Polls that started late because another device's poll still held the shared line
    /// at their due time (line saturation or a slow/dead neighbour).
    pub polls_delayed_by_line: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests answered with data.
    pub responses: AtomicU64,
    /// Requests answered with a Modbus exception.
    pub exceptions: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Socket / serial I/O errors.
    pub io_errors: AtomicU64,
    /// Malformed or mismatching replies.
    pub protocol_errors: AtomicU64,
    /// Successful connects (of the device's line, counted on the device that triggered it).
    pub connects: AtomicU64,
    /// Failed connects.
    pub connect_failures: AtomicU64,
    /// Readings handed to the engine.
    pub readings_sent: AtomicU64,
    /// Readings dropped because the engine's channel was full.
    pub readings_dropped: AtomicU64,
    /// Sum of request latencies (answered requests), µs.
    pub latency_us_sum: AtomicU64,
    /// Largest request latency, µs.
    pub latency_us_max: AtomicU64,
    /// Latency of the last answered request, µs.
    pub latency_us_last: AtomicU64,
    /// Wall time of the last poll the device answered (data or exceptions), ms since the
    /// Unix epoch (0 = never).
    pub last_success_ms: AtomicU64,
    /// Whether the device is currently reachable (last poll got answers).
    pub online: AtomicBool,
    /// Poll-start lateness histogram (see [`LATENESS_BUCKETS_US`]).
    pub lateness: [AtomicU64; LATENESS_BUCKETS_US.len() + 1],
    /// Largest poll-start lateness, µs.
    pub lateness_us_max: AtomicU64,
    /// Sum of poll-start lateness, µs (the histogram's `_sum` on `/metrics`).
    pub lateness_us_sum: AtomicU64,
}

impl DeviceMetrics {
    /// New zeroed counters for `id`.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            ..Self::default()
        }
    }
    pub(crate) fn record_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency_us_sum.fetch_add(us, Relaxed);
        self.latency_us_max.fetch_max(us, Relaxed);
        self.latency_us_last.store(us, Relaxed);
    }
    /// Count a scheduled poll that started `d` after its due time.
    pub fn record_lateness(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENESS_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENESS_BUCKETS_US.len());
        self.lateness[i].fetch_add(1, Relaxed);
        self.lateness_us_max.fetch_max(us, Relaxed);
        self.lateness_us_sum.fetch_add(us, Relaxed);
    }
    /// A plain copy of the counters.
    pub fn snapshot(&self) -> DeviceSnapshot {
        let answered = self.responses.load(Relaxed) + self.exceptions.load(Relaxed);
        DeviceSnapshot {
            id: self.id.clone(),
            polls: self.polls.load(Relaxed),
            polls_skipped: self.polls_skipped.load(Relaxed),
            polls_delayed_by_line: self.polls_delayed_by_line.load(Relaxed),
            requests: self.requests.load(Relaxed),
            responses: self.responses.load(Relaxed),
            exceptions: self.exceptions.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            io_errors: self.io_errors.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            connects: self.connects.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            readings_sent: self.readings_sent.load(Relaxed),
            readings_dropped: self.readings_dropped.load(Relaxed),
            latency_us_mean: self.latency_us_sum.load(Relaxed) / answered.max(1),
            latency_us_max: self.latency_us_max.load(Relaxed),
            latency_us_last: self.latency_us_last.load(Relaxed),
            last_success_ms: self.last_success_ms.load(Relaxed),
            online: self.online.load(Relaxed),
            lateness: self.lateness.iter().map(|a| a.load(Relaxed)).collect(),
            lateness_us_max: self.lateness_us_max.load(Relaxed),
            lateness_us_sum: self.lateness_us_sum.load(Relaxed),
        }
    }
}

/// A copy of one device's counters (see [`DeviceMetrics`] for the meaning of each).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct DeviceSnapshot {
    pub id: String,
    pub polls: u64,
    pub polls_skipped: u64,
    pub polls_delayed_by_line: u64,
    pub requests: u64,
    pub responses: u64,
    pub exceptions: u64,
    pub timeouts: u64,
    pub io_errors: u64,
    pub protocol_errors: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub readings_sent: u64,
    pub readings_dropped: u64,
    pub latency_us_mean: u64,
    pub latency_us_max: u64,
    pub latency_us_last: u64,
    pub last_success_ms: u64,
    pub online: bool,
    pub lateness: Vec<u64>,
    pub lateness_us_max: u64,
    pub lateness_us_sum: u64,
}

impl DeviceSnapshot {
    /// Upper bound (µs) of the bucket holding the `q`-quantile of poll-start lateness
    /// (`u64::MAX` if it lies in the overflow bucket, 0 with no polls).
    pub fn lateness_quantile_us(&self, q: f64) -> u64 {
        quantile(&self.lateness, q)
    }
}

/// Upper bound of the bucket that holds quantile `q` of a lateness histogram.
pub fn quantile(hist: &[u64], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, n) in hist.iter().enumerate() {
        acc += n;
        if acc >= rank {
            return LATENESS_BUCKETS_US.get(i).copied().unwrap_or(u64::MAX);
        }
    }
    u64::MAX
}

/// Metrics of every device of a plan, shared by the pollers and the daemon.
#[derive(Debug, Default)]
pub struct ModbusMetrics {
    devices: Vec<Arc<DeviceMetrics>>,
}

impl ModbusMetrics {
    /// Zeroed metrics for every device of `plan`.
    pub fn new(plan: &ModbusPlan) -> Self {
        Self {
            devices: plan
                .devices()
                .map(|d| Arc::new(DeviceMetrics::new(&d.device.id)))
                .collect(),
        }
    }
    /// The device's metrics.
    pub fn device(&self, id: &str) -> Option<&Arc<DeviceMetrics>> {
        self.devices.iter().find(|d| d.id == id)
    }
    /// All devices, in plan order.
    pub fn devices(&self) -> &[Arc<DeviceMetrics>] {
        &self.devices
    }
    /// Copies of all counters.
    pub fn snapshot(&self) -> Vec<DeviceSnapshot> {
        self.devices.iter().map(|d| d.snapshot()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_quantiles() {
        let m = DeviceMetrics::new("d");
        for _ in 0..98 {
            m.record_lateness(Duration::from_micros(80));
        }
        m.record_lateness(Duration::from_millis(3));
        m.record_lateness(Duration::from_millis(30));
        let s = m.snapshot();
        assert_eq!(s.lateness_quantile_us(0.5), 100);
        assert_eq!(s.lateness_quantile_us(0.99), 3_000);
        assert_eq!(s.lateness_quantile_us(1.0), 30_000);
        assert_eq!(s.lateness_us_max, 30_000);
    }
}
