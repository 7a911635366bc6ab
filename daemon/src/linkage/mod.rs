//! # Linkage (联动): who is told about an alarm, when, and how the loop is closed
//!
//! The pure decisions live here; the delivery itself is `parkguard_drivers::notify`.
//!
//! - [`route`]: `[[route]]` tables → channels per notification; drill events reach only
//!   drill channels ([`route::Router::admit`] is the one gate to the outbox).
//! - [`escalate`]: `[[escalation]]` policies; a clock-free state machine
//!   (`on_event` / `on_ack` / `on_tick(now)`) returning the levels due.
//! - [`group`]: one enterprise's alarms within a window go out as one message.
//! - [`close`]: 消警 records (cause, action, reviewer, data snapshot), validated.
//! - [`outbox`]: SQLite rows per (event, channel), queued in the journal's transaction,
//!   delivered at least once by one worker per channel.
//!
//! Wiring (the daemon's topology): for each journaled event, in the journal transaction,
//! `router.route(&n)` → `outbox::enqueue(&tx, &admitted, &n, now)` for each channel; after
//! the commit, wake the channels' workers. An unacknowledged raise also starts
//! `escalator.on_event(alarm, event, policy, now)`; each [`escalate::Due`] is journaled as
//! an escalation event of its own (new event id, so its idempotency key is fresh) and
//! queued for its channels through `router.admit`. An acknowledgement calls `on_ack`.
//! - [`escalation_log`]: the escalations and their steps in the journal database, so a
//!   restart resumes them ([`wire::Linkage`] does all of the above in the journal
//!   transaction; the journal thread ticks it every second).

pub mod close;
pub mod escalate;
pub mod escalation_log;
pub mod group;
pub mod outbox;
pub mod route;
pub mod wire;
