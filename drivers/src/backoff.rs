//! Reconnect back-off shared by every driver: exponential with a cap and deterministic
//! jitter. Neither rumqttc nor tokio-modbus reconnects for us (STYLE.md §5), so every
//! source loop sleeps `next()` after a transport fault and calls `reset()` after a success.

use std::time::Duration;

/// Exponential back-off: `initial`, ×2 each failure, capped at `max`, with ±`jitter`
/// (a fraction) spread from a seed so that many devices do not reconnect in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// A back-off from `initial` to `max`. `seed` (e.g. a hash of the device id) spreads the
    /// jitter of different devices.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Self {
            initial,
            max,
            jitter: 0.2,
            attempt: 0,
            seed,
        }
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << self.attempt.min(20));
        let base = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // splitmix64 of seed+attempt → [-1, 1)
        let mut z = self
            .seed
            .wrapping_add(u64::from(self.attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        base.mul_f64((1.0 + self.jitter * unit).max(0.0))
            .min(self.max)
    }

    /// Number of consecutive failures so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Call after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
        let d: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(80) && d[0] <= Duration::from_millis(120));
        assert!(d[3] >= Duration::from_millis(640) && d[3] <= Duration::from_millis(960));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(5)));
        assert!(d[9] >= Duration::from_secs(4));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn seeds_spread() {
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 1);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2);
        assert_ne!(a.next_delay(), b.next_delay());
    }
}
