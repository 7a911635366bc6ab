//! Time as data. The engine never reads a clock: callers pass `now`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Nanoseconds since the Unix epoch (UTC). Covers 1677–2262.
///
/// Display and the console convert to the park's zone (Asia/Shanghai, UTC+8, no DST);
/// storage and the wire keep UTC.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// From whole seconds since the epoch.
    pub const fn from_secs(s: i64) -> Self {
        Self(s.saturating_mul(1_000_000_000))
    }
    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms.saturating_mul(1_000_000))
    }
    /// From nanoseconds since the epoch.
    pub const fn from_nanos(ns: i64) -> Self {
        Self(ns)
    }
    /// Nanoseconds since the epoch.
    pub const fn nanos(self) -> i64 {
        self.0
    }
    /// Milliseconds since the epoch (floor).
    pub const fn millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }
    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        let d = self.0.saturating_sub(earlier.0);
        if d <= 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(d as u64)
        }
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    /// `self + d`, saturating.
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        )
    }
}

impl std::ops::Sub<Duration> for Timestamp {
    type Output = Timestamp;
    /// `self - d`, saturating.
    fn sub(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let t = Timestamp::from_secs(1_700_000_000);
        assert_eq!(
            (t + Duration::from_millis(1500)).millis(),
            1_700_000_001_500
        );
        assert_eq!(
            (t + Duration::from_secs(5)).since(t),
            Duration::from_secs(5)
        );
        assert_eq!(t.since(t + Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(Timestamp::from_millis(-1).millis(), -1);
    }
}
