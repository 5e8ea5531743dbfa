//! How a call is stopped from outside its dispatcher: two shared atomics that `pj_parallel_cancel`,
//! a SIGINT handler, fail-fast and the workers all see. A leaf module (it imports nothing of pj), so
//! that the dispatcher, the SIGINT handler and the executor can all use it without a cycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Why a call was cancelled (the value of [`Stop::cancelled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// `pj_parallel_cancel`.
    Requested = 1,
    /// A SIGINT, with handle_sigint.
    Sigint = 2,
}

/// An object's means to stop its call in flight: `abort` stops queued and running work (workers
/// check it), `cancelled` says the stop came from outside, and why (0: not cancelled). Both are
/// plain atomics, so setting them is async-signal-safe.
#[derive(Debug, Default)]
pub struct Stop {
    /// Shared with the call's workers.
    pub abort: Arc<AtomicBool>,
    /// Set by a cancellation request: a [`CancelReason`] as u8, or 0.
    pub cancelled: Arc<AtomicU8>,
}

impl Stop {
    /// Requests that the call in flight stop and return `ErrorKind::Cancelled`. Async-signal-safe.
    pub fn cancel(&self, reason: CancelReason) {
        self.cancelled.store(reason as u8, Ordering::Relaxed);
        self.abort.store(true, Ordering::Relaxed);
    }

    /// Another handle on the same two flags.
    pub fn share(&self) -> Stop {
        Stop {
            abort: self.abort.clone(),
            cancelled: self.cancelled.clone(),
        }
    }
}
