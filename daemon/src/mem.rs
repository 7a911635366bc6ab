//! Giving the heap the daemon freed back to the system.
//!
//! glibc keeps freed memory in its arenas and returns only the free top of a heap, so a
//! peak stays resident long after it was freed: parsing a 10,000-point config (~40 MB
//! of parse tree for a moment), or catching up an InfluxDB outage's backlog, left the
//! daemon 20–30 MiB above what it uses (issue #11, README "Memory of the daemon").
//! `malloc_trim(0)` gives the free pages in the middle of the heaps back (`madvise`).
//! The daemon calls it once the config is loaded and then from a blocking thread (it locks
//! each arena for the walk, well under a millisecond at this heap size) whenever the
//! resident set grew by [`TRIM_GROWTH_KIB`] since the last trim, looked at every
//! [`CHECK_PERIOD`], and at least every [`TRIM_PERIOD`] ([`TrimPolicy`]).
//!
//! Why on growth and not only on a clock: with a console connected to 10,000 Modbus
//! points the SSE stream's churn (9,000 point events a second) left 3–4 MiB freed but
//! resident between two 30 s trims, and the daemon's RSS swung between 57 and 61.4 MiB
//! (issue #11's budget is 60). A trim as soon as 2 MiB came back costs a few page faults
//! when the memory is used again; a burst's real growth (queues filling) is trimmed once
//! and then becomes the new floor, so it does not trim every second.
//!
//! This is the only `unsafe` of the workspace (`unsafe_code = "deny"` in Cargo.toml,
//! allowed here alone): a call into glibc that takes no pointers.

/// The longest the running daemon goes without giving freed heap back.
pub const TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the running daemon looks at its resident set.
pub const CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// Growth of the resident set since the last trim (KiB) that makes the daemon trim now.
pub const TRIM_GROWTH_KIB: u64 = 2048;

/// When to trim: the resident set after the last trim (the floor) against now.
#[derive(Debug, Clone)]
pub struct TrimPolicy {
    floor_kib: u64,
    since: std::time::Duration,
}

impl TrimPolicy {
    /// A policy whose floor is `rss_kib` (the resident set just after a trim).
    pub fn new(rss_kib: u64) -> Self {
        Self {
            floor_kib: rss_kib,
            since: std::time::Duration::ZERO,
        }
    }

    /// One look, [`CHECK_PERIOD`] after the last: whether to trim now at `rss_kib`. A
    /// resident set below the floor lowers it (memory given back without a trim).
    pub fn check(&mut self, rss_kib: u64, elapsed: std::time::Duration) -> bool {
        self.since += elapsed;
        self.floor_kib = self.floor_kib.min(rss_kib);
        rss_kib >= self.floor_kib + TRIM_GROWTH_KIB || self.since >= TRIM_PERIOD
    }

    /// A trim was done; the resident set after it is `rss_kib`.
    pub fn trimmed(&mut self, rss_kib: u64) {
        self.floor_kib = rss_kib;
        self.since = std::time::Duration::ZERO;
    }
}

/// The process's resident set in KiB (`VmRSS`), 0 when it cannot be read.
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Give the free pages of every malloc arena back to the system. Returns whether any
/// were. Does nothing (false) off glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_heap() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: `malloc_trim` takes no pointers and glibc serialises it with every other
    // allocator call; it only returns pages no live allocation uses.
    unsafe { malloc_trim(0) == 1 }
}

/// Give the free pages of every malloc arena back to the system (not glibc: nothing).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_heap() -> bool {
    false
}

/// Until `stop`: [`release_free_heap`] on a blocking thread when [`TrimPolicy`] says so.
pub async fn trim_periodically(stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(CHECK_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    let mut policy = TrimPolicy::new(resident_kib());
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                let now = tokio::time::Instant::now();
                let elapsed = now - last;
                last = now;
                if policy.check(resident_kib(), elapsed) {
                    let after = tokio::task::spawn_blocking(|| {
                        release_free_heap();
                        resident_kib()
                    })
                    .await
                    .unwrap_or(0);
                    policy.trimmed(after);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Memory freed below a live allocation comes back: the process's RSS drops after
    /// the trim (glibc; the allocation pattern of a config parse).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_heap_below_live_data_is_given_back() {
        use super::resident_kib as rss_kib;
        // 64 MiB in 4 kB pieces (below the mmap threshold: on the heap), touched; then a
        // small live allocation after them keeps the heap top in use.
        let mut pieces: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let live = vec![2u8; 4096];
        let before = rss_kib();
        pieces.clear();
        pieces.shrink_to_fit();
        let freed = rss_kib();
        super::release_free_heap();
        let after = rss_kib();
        assert_eq!(live[0], 2);
        assert!(
            after + 32 * 1024 < freed,
            "RSS {before} kB with the pieces, {freed} kB freed, {after} kB after the trim"
        );
    }

    use super::{CHECK_PERIOD, TRIM_GROWTH_KIB, TRIM_PERIOD, TrimPolicy};

    /// Growth of the resident set by the threshold trims at once; growth below it waits
    /// for the period; after a trim the new resident set is the floor, so a burst's real
    /// growth is trimmed once, not every second.
    #[test]
    fn the_heap_is_trimmed_when_the_resident_set_grew_or_the_period_ran_out() {
        let mut p = TrimPolicy::new(50_000);
        assert!(!p.check(50_000 + TRIM_GROWTH_KIB - 1, CHECK_PERIOD));
        assert!(p.check(50_000 + TRIM_GROWTH_KIB, CHECK_PERIOD));
        // The trim gave back only part of it: the rest is live, the new floor.
        p.trimmed(51_500);
        assert!(!p.check(51_500 + TRIM_GROWTH_KIB - 1, CHECK_PERIOD));
        // Memory given back on its own lowers the floor: growth is counted from there.
        assert!(!p.check(49_000, CHECK_PERIOD));
        assert!(p.check(49_000 + TRIM_GROWTH_KIB, CHECK_PERIOD));
        p.trimmed(49_000);
        // No growth: the period still trims.
        let mut waited = std::time::Duration::ZERO;
        while !p.check(49_000, CHECK_PERIOD) {
            waited += CHECK_PERIOD;
            assert!(waited < TRIM_PERIOD, "never trimmed without growth");
        }
        assert_eq!(waited + CHECK_PERIOD, TRIM_PERIOD);
    }
}
