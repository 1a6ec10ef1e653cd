//! What one device has been sent and what it is still owed: the pure
//! bookkeeping of a session's delivery loop (see [`super::session`]), kept
//! apart from the socket so that its rules are unit-tested.
//!
//! Live changes offered by the fan-out wait here ordered by `seq` and go out
//! while they follow on from the last delivered `seq`. A gap that does not
//! fill within [`GAP_WAIT`], more than [`MAX_WAITING`] changes waiting, a
//! socket that could not take a change, or a bus reconnect turn into a
//! catch-up from the database from the last delivered `seq`.
//!
//! One rule says what a device is not sent, live and in a catch-up alike:
//! the changes its own socket wrote ([`Delivery::is_own`]). Everything else
//! reaches it, including writes of another socket or a REST call that
//! carries the same instance id (a second tab sharing the id must not miss
//! them because it fell behind).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{domain::Change, telemetry::TraceContext};

/// How long a missing `seq` may be waited for (it may be in flight on
/// another task or pod) before reading it from the database.
pub const GAP_WAIT: Duration = Duration::from_millis(50);
/// Live changes buffered per socket before falling back to a catch-up.
pub const MAX_WAITING: usize = 256;

/// A live change waiting its turn.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub change: Change,
    /// This socket wrote it: it advances the seq but is not echoed.
    pub own: bool,
    /// When the change was published (wall-clock µs), for the latency metric.
    pub published_us: i64,
    /// The trace of the write (or of its fan-out receipt on this pod),
    /// when it is traced: its delivery to the device continues it.
    pub trace: Option<TraceContext>,
}

/// What the delivery loop does next.
#[derive(Debug)]
pub enum Step {
    /// Nothing to send: sleep until offered something, or at most this long
    /// (a gap is being waited for).
    Wait(Option<Duration>),
    /// Send this run of consecutive changes, in seq order.
    Emit(Vec<Waiting>),
    /// Read what changed after `from` from the database; `gap` when it is
    /// because a missing seq did not arrive in time.
    CatchUp { from: i64, gap: bool },
}

#[derive(Debug, Default)]
pub struct Delivery {
    /// Highest seq delivered or deliberately skipped; `None` until
    /// `pending-updates` has gone out.
    delivered: Option<i64>,
    waiting: BTreeMap<i64, Waiting>,
    /// Seqs this socket wrote above `delivered`, kept even when `waiting` is
    /// dropped for an overflow so that the catch-up skips them too. Bounded
    /// like `waiting`: past that, the oldest are forgotten and would at worst
    /// be echoed (the value the device itself wrote).
    own: BTreeSet<i64>,
    catch_up: bool,
    gap_since: Option<Instant>,
}

impl Delivery {
    /// The highest seq sent or skipped, `None` before `pending-updates`.
    pub fn delivered(&self) -> Option<i64> {
        self.delivered
    }

    /// Everything up to `seq` has been sent or deliberately skipped.
    pub fn advance(&mut self, seq: i64) {
        let seq = self.delivered.map_or(seq, |d| d.max(seq));
        self.delivered = Some(seq);
        self.own = self.own.split_off(&(seq + 1));
    }

    /// Whether this socket wrote `seq`.
    pub fn is_own(&self, seq: i64) -> bool {
        self.own.contains(&seq)
    }

    /// The device must catch up from the database (the bus reconnected, or
    /// the socket could not take everything).
    pub fn owe_catch_up(&mut self) {
        self.catch_up = true;
    }

    /// Takes live changes from the fan-out; `own` when this socket wrote
    /// them, `trace` the trace they came in. Returns how many waiting
    /// changes were dropped because the buffer overflowed (a catch-up is
    /// then owed), 0 otherwise.
    pub fn offer(
        &mut self,
        own: bool,
        published_us: i64,
        changes: &[Change],
        trace: Option<&TraceContext>,
    ) -> usize {
        let floor = self.delivered.unwrap_or(i64::MIN);
        for change in changes.iter().filter(|c| c.seq > floor) {
            if own {
                self.own.insert(change.seq);
                while self.own.len() > MAX_WAITING {
                    self.own.pop_first();
                }
            }
            self.waiting.insert(
                change.seq,
                Waiting {
                    change: change.clone(),
                    own,
                    published_us,
                    trace: trace.cloned(),
                },
            );
        }
        if self.waiting.len() <= MAX_WAITING {
            return 0;
        }
        let dropped = self.waiting.len();
        self.waiting.clear();
        self.catch_up = true;
        dropped
    }

    /// Decides what to do next, as of `now`.
    pub fn next_step(&mut self, now: Instant) -> Step {
        let Some(delivered) = self.delivered else {
            return Step::Wait(None);
        };
        if self.catch_up {
            self.catch_up = false;
            self.gap_since = None;
            return Step::CatchUp {
                from: delivered,
                gap: false,
            };
        }
        self.waiting = self.waiting.split_off(&(delivered + 1));
        let Some(&first) = self.waiting.keys().next() else {
            self.gap_since = None;
            return Step::Wait(None);
        };
        if first == delivered + 1 {
            self.gap_since = None;
            let mut run = Vec::new();
            let mut next = first;
            while let Some(w) = self.waiting.remove(&next) {
                run.push(w);
                next += 1;
            }
            return Step::Emit(run);
        }
        let since = *self.gap_since.get_or_insert(now);
        match GAP_WAIT.checked_sub(now.saturating_duration_since(since)) {
            Some(left) if !left.is_zero() => Step::Wait(Some(left)),
            _ => {
                self.gap_since = None;
                Step::CatchUp {
                    from: delivered,
                    gap: true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64) -> Change {
        Change {
            key: format!("k{seq}"),
            value: None,
            metadata: None,
            version: 1,
            timestamp: 0,
            seq,
            deleted: false,
            instance_id: "phone".into(),
        }
    }

    /// The step as plain data, to compare.
    #[derive(Debug, PartialEq)]
    enum Got {
        Wait(Option<Duration>),
        Emit(Vec<(i64, bool)>),
        CatchUp { from: i64, gap: bool },
    }

    fn step(d: &mut Delivery, now: Instant) -> Got {
        match d.next_step(now) {
            Step::Wait(limit) => Got::Wait(limit),
            Step::Emit(run) => Got::Emit(run.iter().map(|w| (w.change.seq, w.own)).collect()),
            Step::CatchUp { from, gap } => Got::CatchUp { from, gap },
        }
    }

    fn run(seqs: &[i64]) -> Got {
        Got::Emit(seqs.iter().map(|&s| (s, false)).collect())
    }

    fn started(at: i64) -> Delivery {
        let mut d = Delivery::default();
        d.advance(at);
        d
    }

    #[test]
    fn nothing_goes_out_before_pending_updates() {
        let mut d = Delivery::default();
        assert_eq!(d.offer(false, 0, &[change(1)], None), 0);
        assert_eq!(step(&mut d, Instant::now()), Got::Wait(None));
        d.advance(0);
        assert_eq!(step(&mut d, Instant::now()), run(&[1]));
    }

    #[test]
    fn consecutive_changes_go_out_as_one_run_in_seq_order() {
        let mut d = started(10);
        d.offer(false, 0, &[change(13), change(11)], None);
        d.offer(false, 0, &[change(12)], None);
        assert_eq!(step(&mut d, Instant::now()), run(&[11, 12, 13]));
        d.advance(13);
        assert_eq!(step(&mut d, Instant::now()), Got::Wait(None));
    }

    #[test]
    fn what_was_already_delivered_is_dropped() {
        let mut d = started(10);
        d.offer(false, 0, &[change(9), change(10)], None);
        assert_eq!(step(&mut d, Instant::now()), Got::Wait(None));
        d.offer(false, 0, &[change(12)], None);
        d.advance(12); // a catch-up sent it meanwhile
        assert_eq!(step(&mut d, Instant::now()), Got::Wait(None));
    }

    #[test]
    fn a_gap_is_waited_for_then_repaired_from_the_database() {
        let mut d = started(10);
        d.offer(false, 0, &[change(12)], None);
        let t0 = Instant::now();
        assert_eq!(step(&mut d, t0), Got::Wait(Some(GAP_WAIT)));
        let half = GAP_WAIT / 2;
        assert_eq!(step(&mut d, t0 + half), Got::Wait(Some(GAP_WAIT - half)));
        assert_eq!(
            step(&mut d, t0 + GAP_WAIT),
            Got::CatchUp {
                from: 10,
                gap: true
            }
        );
    }

    #[test]
    fn a_gap_that_fills_in_time_goes_out_live() {
        let mut d = started(10);
        d.offer(false, 0, &[change(12)], None);
        let t0 = Instant::now();
        assert!(matches!(step(&mut d, t0), Got::Wait(Some(_))));
        d.offer(false, 0, &[change(11)], None);
        assert_eq!(step(&mut d, t0 + GAP_WAIT / 2), run(&[11, 12]));
        // The gap clock starts again for the next gap.
        d.advance(12);
        d.offer(false, 0, &[change(14)], None);
        let t1 = t0 + GAP_WAIT * 10;
        assert_eq!(step(&mut d, t1), Got::Wait(Some(GAP_WAIT)));
    }

    #[test]
    fn an_overflow_drops_the_buffer_and_owes_a_catch_up() {
        let mut d = started(0);
        let many: Vec<Change> = (2..=MAX_WAITING as i64 + 2).map(change).collect();
        assert_eq!(d.offer(false, 0, &many, None), MAX_WAITING + 1);
        assert_eq!(
            step(&mut d, Instant::now()),
            Got::CatchUp {
                from: 0,
                gap: false
            }
        );
        assert_eq!(step(&mut d, Instant::now()), Got::Wait(None));
    }

    #[test]
    fn an_owed_catch_up_comes_before_waiting_changes() {
        let mut d = started(5);
        d.offer(false, 0, &[change(6)], None);
        d.owe_catch_up();
        assert_eq!(
            step(&mut d, Instant::now()),
            Got::CatchUp {
                from: 5,
                gap: false
            }
        );
        d.advance(6);
        assert_eq!(step(&mut d, Instant::now()), Got::Wait(None));
    }

    #[test]
    fn own_writes_are_known_live_and_after_an_overflow() {
        let mut d = started(0);
        d.offer(true, 0, &[change(1)], None);
        d.offer(false, 0, &[change(2)], None);
        assert_eq!(
            step(&mut d, Instant::now()),
            Got::Emit(vec![(1, true), (2, false)])
        );
        // An overflow drops the buffer, not what the socket wrote: the
        // catch-up that follows skips the same changes the live path would.
        let mut d = started(0);
        d.offer(true, 0, &[change(3)], None);
        let many: Vec<Change> = (4..=MAX_WAITING as i64 + 4).map(change).collect();
        assert!(d.offer(false, 0, &many, None) > 0);
        assert!(d.is_own(3));
        assert!(!d.is_own(4));
        d.advance(3);
        assert!(!d.is_own(3), "forgotten once passed");
    }

    #[test]
    fn own_writes_are_bounded() {
        let mut d = started(0);
        let many: Vec<Change> = (1..=2 * MAX_WAITING as i64).map(change).collect();
        d.offer(true, 0, &many, None);
        assert!(!d.is_own(1));
        assert!(d.is_own(2 * MAX_WAITING as i64));
    }
}
