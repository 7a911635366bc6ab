//! Grouping: alarms of one enterprise within a short window go out as one notification,
//! so a flood does not become a message storm. Pure: the outbox worker asks [`plan`] what
//! to send next, given the head of each group's queue.
//!
//! Leading edge: the first alarm of a quiet enterprise goes out at once (a safety alarm is
//! never held back to wait for company); alarms arriving within `window` after a send wait
//! for the window to end and then go out together, up to `max_batch` per message. Each
//! alarm keeps its own outbox row and status; a batch is fixed when first attempted, so a
//! retry resends exactly the same events under the same idempotency key. A retried batch
//! ignores the window (its back-off already spaces it).

use parkguard_rules::Timestamp;
use std::collections::HashMap;
use std::time::Duration;

/// Grouping settings of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grouping {
    /// Quiet time after a send during which further alarms of the same group are held
    /// and then sent together. Zero disables grouping of fresh alarms (a backlog is still
    /// batched).
    pub window: Duration,
    /// Most alarms in one message (≥ 1).
    pub max_batch: usize,
}

impl Default for Grouping {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            max_batch: 20,
        }
    }
}

/// The oldest pending row of one group (enterprise) on a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupHead {
    /// Group key (enterprise code; drill events are grouped apart).
    pub key: String,
    /// Queue position of the head row (smaller = older).
    pub head_seq: i64,
    /// When the head row may be attempted (back-off after a failure).
    pub next_attempt: Timestamp,
    /// Whether the head row already belongs to a batch (a retry).
    pub in_batch: bool,
}

/// What the worker should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Send the next batch of this group now.
    Send(String),
    /// Nothing is ready; the earliest group becomes ready then.
    WaitUntil(Timestamp),
    /// Nothing is pending.
    Idle,
}

/// When `head` may go, given when its group last sent.
pub fn ready_at(head: &GroupHead, last_sent: Option<Timestamp>, g: &Grouping) -> Timestamp {
    match last_sent {
        Some(t) if !head.in_batch => head.next_attempt.max(t + g.window),
        _ => head.next_attempt,
    }
}

/// Pick the group to serve: among groups ready at `now`, the one with the oldest head.
pub fn plan(
    heads: &[GroupHead],
    last_sent: &HashMap<String, Timestamp>,
    g: &Grouping,
    now: Timestamp,
) -> Plan {
    let mut best: Option<&GroupHead> = None;
    let mut earliest: Option<Timestamp> = None;
    for h in heads {
        let at = ready_at(h, last_sent.get(&h.key).copied(), g);
        if at <= now {
            if best.is_none_or(|b| h.head_seq < b.head_seq) {
                best = Some(h);
            }
        } else {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    match (best, earliest) {
        (Some(b), _) => Plan::Send(b.key.clone()),
        (None, Some(t)) => Plan::WaitUntil(t),
        (None, None) => Plan::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(key: &str, seq: i64, next: i64, in_batch: bool) -> GroupHead {
        GroupHead {
            key: key.into(),
            head_seq: seq,
            next_attempt: Timestamp::from_secs(next),
            in_batch,
        }
    }

    #[test]
    fn leading_edge_then_window() {
        let g = Grouping {
            window: Duration::from_secs(30),
            max_batch: 20,
        };
        let mut last = HashMap::new();
        // quiet enterprise: goes at once
        assert_eq!(
            plan(
                &[head("E1", 1, 100, false)],
                &last,
                &g,
                Timestamp::from_secs(100)
            ),
            Plan::Send("E1".into())
        );
        last.insert("E1".to_string(), Timestamp::from_secs(100));
        // next alarm 5 s later waits for the window
        assert_eq!(
            plan(
                &[head("E1", 2, 105, false)],
                &last,
                &g,
                Timestamp::from_secs(105)
            ),
            Plan::WaitUntil(Timestamp::from_secs(130))
        );
        // another enterprise is not held by E1's window
        assert_eq!(
            plan(
                &[head("E1", 2, 105, false), head("E2", 3, 106, false)],
                &last,
                &g,
                Timestamp::from_secs(106)
            ),
            Plan::Send("E2".into())
        );
        // a retry ignores the window but respects its back-off
        assert_eq!(
            plan(
                &[head("E1", 2, 110, true)],
                &last,
                &g,
                Timestamp::from_secs(109)
            ),
            Plan::WaitUntil(Timestamp::from_secs(110))
        );
        assert_eq!(
            plan(
                &[head("E1", 2, 110, true)],
                &last,
                &g,
                Timestamp::from_secs(110)
            ),
            Plan::Send("E1".into())
        );
        assert_eq!(plan(&[], &last, &g, Timestamp::from_secs(1)), Plan::Idle);
    }

    #[test]
    fn oldest_ready_head_first() {
        let g = Grouping::default();
        let last = HashMap::new();
        let heads = [
            head("B", 7, 0, false),
            head("A", 3, 0, false),
            head("C", 1, 50, false),
        ];
        assert_eq!(
            plan(&heads, &last, &g, Timestamp::from_secs(10)),
            Plan::Send("A".into())
        );
    }
}
