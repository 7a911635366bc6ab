//! Giving the heap the daemon freed back to the system.
//!
//! glibc keeps freed memory in its arenas and returns only the free top of a heap, so a
//! peak stays resident long after it was freed: parsing a 10,000-point config (~40 MB
//! of parse tree for a moment), or catching up an InfluxDB outage's backlog, left the
//! daemon 20–30 MiB above what it uses (issue #11, README "Memory of the daemon").
//! `malloc_trim(0)` gives the free pages in the middle of the heaps back (`madvise`).
//! The daemon calls it once the config is loaded and then every [`TRIM_PERIOD`] from a
//! blocking thread (it locks each arena for the walk, well under a millisecond at this
//! heap size).
//!
//! This is the only `unsafe` of the workspace (`unsafe_code = "deny"` in Cargo.toml,
//! allowed here alone): a call into glibc that takes no pointers.

/// How often the running daemon gives freed heap back.
pub const TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

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

/// Every [`TRIM_PERIOD`], until `stop`: [`release_free_heap`] on a blocking thread.
pub async fn trim_periodically(stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(TRIM_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                let _ = tokio::task::spawn_blocking(release_free_heap).await;
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
        fn rss_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        }
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
}
