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
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
    let value = sleep();
    LAST_WAIT_WAS_SHORT.set(start.elapsed() < SPIN_PAYS_BELOW);
    value
}
