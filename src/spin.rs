//! Waiting without paying for a sleep when the wait is short.
//!
//! Putting a thread to sleep and waking it costs tens of microseconds on these machines (the CPU
//! goes idle and must be woken), while what it waits for often comes sooner: a worker's reply
//! to a batch it just received, the next batch right after an outcome. So a waiter first polls
//! for up to [`SPIN`], calling `sched_yield` between polls (a pure spin takes the CPU the other
//! side needs when there are fewer CPUs than busy threads, and made things slower on 2 CPUs), and
//! only while its previous wait was short: after a long wait (a long batch), spinning would
//! only take CPU from the workers, so the next wait sleeps at once. An idle thread therefore
//! spins at most once, for at most [`SPIN`].
//!
//! Some waits have nothing to sleep on: the MPI backend learns of a message only by probing
//! (pj never blocks inside MPI). Those poll with a `Backoff`: a short spin, then sleeps that
//! double up to a few milliseconds, so that an idle poller costs next to no CPU.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The longest a waiter polls before it sleeps.
pub const SPIN: Duration = Duration::from_micros(20);

/// A thread spins only while its last wait ended within this.
const SPIN_PAYS_BELOW: Duration = Duration::from_micros(100);

thread_local! {
    static LAST_WAIT_WAS_SHORT: Cell<bool> = const { Cell::new(true) };
}

/// Waits for `poll` to give a value: polls it (yielding between polls) for up to [`SPIN`] when
/// this thread's last wait was short, then calls `sleep`, which blocks until the value (or an
/// error) comes. Records how long the whole wait took for the next one.
pub fn wait<T>(mut poll: impl FnMut() -> Option<T>, sleep: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    if LAST_WAIT_WAS_SHORT.get() {
        loop {
            if let Some(value) = poll() {
                return value;
            }
            if start.elapsed() > SPIN {
                break;
            }
            std::thread::yield_now();
        }
    }
    let value = sleep();
    LAST_WAIT_WAS_SHORT.set(start.elapsed() < SPIN_PAYS_BELOW);
    value
}

/// Polling pace for a loop that can only poll: a short spin, then sleeps doubling up to a few
/// milliseconds (longer after a long idle spell), reset by any progress. Unlike [`wait`], it keeps
/// no state between loops: each loop owns its own.
#[derive(Default)]
pub(crate) struct Backoff {
    rounds: u32,
    idle_since: Option<Instant>,
}

impl Backoff {
    /// Rounds that only spin (no sleep) after a reset.
    const SPINS: u32 = 64;
    /// The first sleep is twice this, and each next one doubles.
    const STEP: Duration = Duration::from_micros(10);
    /// The longest sleep...
    const CAP: Duration = Duration::from_millis(2);
    /// ...and the longest once the poller has been idle for [`Self::LONG_IDLE`].
    const LONG_IDLE_CAP: Duration = Duration::from_millis(10);
    const LONG_IDLE: Duration = Duration::from_secs(1);

    /// Something happened: the next rounds spin again.
    pub(crate) fn reset(&mut self) {
        self.rounds = 0;
        self.idle_since = None;
    }

    /// How long to wait now (zero while spinning), for a caller that waits its own way.
    pub(crate) fn next(&mut self) -> Duration {
        self.rounds = self.rounds.saturating_add(1);
        if self.rounds <= Self::SPINS {
            return Duration::ZERO;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        let cap = if since.elapsed() > Self::LONG_IDLE {
            Self::LONG_IDLE_CAP
        } else {
            Self::CAP
        };
        let step = (self.rounds - Self::SPINS).min(16);
        (Self::STEP * (1u32 << step.min(10))).min(cap)
    }

    /// Waits [`Self::next`]: a spin-loop hint while spinning, else a sleep.
    pub(crate) fn pause(&mut self) {
        let wait = self.next();
        if wait.is_zero() {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(backoff: &mut Backoff, rounds: usize) -> Vec<u128> {
        (0..rounds).map(|_| backoff.next().as_micros()).collect()
    }

    #[test]
    fn backoff_spins_64_rounds_then_sleeps_doubling_from_20_us_to_2_ms() {
        let mut backoff = Backoff::default();
        assert_eq!(micros(&mut backoff, 64), vec![0; 64]);
        assert_eq!(
            micros(&mut backoff, 10),
            vec![20, 40, 80, 160, 320, 640, 1280, 2000, 2000, 2000]
        );
        backoff.reset();
        assert_eq!(micros(&mut backoff, 65)[63..], [0, 20]);
    }

    #[test]
    fn backoff_sleeps_up_to_10_ms_after_a_second_idle() {
        let mut backoff = Backoff::default();
        micros(&mut backoff, 64);
        assert_eq!(backoff.next(), Duration::from_micros(20));
        backoff.idle_since = Instant::now().checked_sub(Duration::from_secs(2));
        assert!(backoff.idle_since.is_some());
        assert_eq!(
            micros(&mut backoff, 12),
            vec![
                40, 80, 160, 320, 640, 1280, 2560, 5120, 10000, 10000, 10000, 10000
            ]
        );
    }
}
