//! The `Parallel` object: resolved settings, a reusable worker pool, and at most one call at a time.
//!
//! A call is either a `map` (one function call that pulls inputs from a producer on the caller's
//! thread) or a run of `submit`s ended by `collect`. A submit/collect call belongs to the thread that
//! made its first submit: any other thread touching the object before `collect` gets
//! [`ErrorKind::Busy`] at once, as does a task that uses the object running it (joblib's "This
//! Parallel instance is already running !").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::backend::{Backend, ThreadPool};
use crate::config::{BackendKind, Config, Resolved};
use crate::dispatch::{Batching, Call, Results};
use crate::error::{Error, ErrorKind, Result};
use crate::task::Callback;

/// A configured parallel executor; see the module docs for the one-call-at-a-time rule.
#[derive(Debug)]
pub struct Parallel {
    settings: Resolved,
    /// The thread whose call is in flight (0: none). Only the owner ever locks `state`, so an intruder
    /// is turned away without touching the lock, and the owner never waits for one.
    owner: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    backend: Option<Backend>,
    batching: Batching,
    call: Option<Call>,
}

/// Exclusive access for the owning thread; on drop, ownership ends unless a submit/collect call is
/// still in flight.
struct Entered<'a> {
    owner: &'a AtomicU64,
    guard: Option<MutexGuard<'a, State>>,
}

impl std::ops::Deref for Entered<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Entered<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let call_in_flight = self
            .guard
            .as_ref()
            .is_some_and(|state| state.call.is_some());
        // Unlock before giving up ownership, so the next owner never finds the lock still held.
        drop(self.guard.take());
        if !call_in_flight {
            self.owner.store(0, Ordering::Release);
        }
    }
}

impl Parallel {
    /// Resolves `config` and prepares an executor; workers start with the first call.
    pub fn new(config: &Config) -> Result<Self> {
        let settings = config.resolve(crate::cpu::cpu_count())?;
        if settings.backend == BackendKind::Processes {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "backend \"processes\" is not available yet in this build of pj; use \"threads\" or \"sequential\"",
            ));
        }
        let batching = Batching::new(settings.batch_size);
        let state = State {
            backend: None,
            batching,
            call: None,
        };
        Ok(Parallel {
            settings,
            owner: AtomicU64::new(0),
            state: Mutex::new(state),
        })
    }

    /// The settings every call of this object uses.
    pub fn settings(&self) -> &Resolved {
        &self.settings
    }

    /// Adds one task to the current submit/collect call, starting the call if needed.
    ///
    /// Once a task has failed, this returns that failure and accepts nothing more; `collect` then ends
    /// the call with the same error.
    pub fn submit(&self, callback: Callback, arg: &[u8]) -> Result<()> {
        let mut entered = self.enter()?;
        let state = &mut *entered;
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        let call = state
            .call
            .get_or_insert_with(|| Call::new(state.batching.size()));
        call.submit(backend, &mut state.batching, callback, arg);
        if call.failed() {
            // Report the failure now (the producer loop should stop), but keep the call: collect
            // reports it again and ends the call.
            return Err(call.failure_error(backend).unwrap_or_else(busy));
        }
        Ok(())
    }

    /// Ends the current submit/collect call: waits for every task and returns the results in
    /// submission order, or the first failure. Without a call in progress it returns no results.
    pub fn collect(&self) -> Result<Results> {
        let mut entered = self.enter()?;
        let state = &mut *entered;
        let Some(call) = state.call.take() else {
            return Ok(Results::default());
        };
        // A call exists only after its backend was created.
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        call.finish(backend, &mut state.batching)
    }

    /// Runs a whole call on this thread: `feed` pushes every argument into the sink it is given (the
    /// sink copies it and returns false once a task has failed, so the producer can stop) and returns
    /// the producer's own error, if any, which then becomes the call's. Returns the results in input
    /// order.
    pub fn map(
        &self,
        callback: Callback,
        feed: impl FnOnce(&mut dyn FnMut(&[u8]) -> bool) -> Result<()>,
    ) -> Result<Results> {
        let mut entered = self.enter()?;
        let state = &mut *entered;
        if state.call.is_some() {
            return Err(busy());
        }
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        let batching = &mut state.batching;
        let mut call = Call::new(batching.size());
        let fed = {
            let mut sink = |arg: &[u8]| {
                call.submit(backend, batching, callback, arg);
                !call.failed()
            };
            feed(&mut sink)
        };
        if let Err(error) = fed {
            call.fail_producer(error);
        }
        call.finish(backend, batching)
    }

    /// Claims the object for this thread (or confirms it owns it) and locks its state; BUSY when
    /// another thread's call is in flight or this thread re-enters from inside a task.
    fn enter(&self) -> Result<Entered<'_>> {
        let me = current_thread();
        if self.owner.load(Ordering::Acquire) != me
            && self
                .owner
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return Err(busy());
        }
        let mut entered = Entered {
            owner: &self.owner,
            guard: None,
        };
        entered.guard = Some(match self.state.try_lock() {
            Ok(guard) => guard,
            // Only the owner locks, so this is the owner re-entering from one of its own tasks; the
            // outer frame still holds the lock and keeps ownership.
            Err(TryLockError::WouldBlock) => {
                std::mem::forget(entered);
                return Err(busy());
            }
            // A panic inside pj (reported as PJ_STATUS_PANIC) left the state half-updated: drop the
            // call it was in; the pool and the batch statistics are still sound.
            Err(TryLockError::Poisoned(poisoned)) => {
                self.state.clear_poison();
                let mut guard = poisoned.into_inner();
                let state = &mut *guard;
                if let Some(call) = state.call.take() {
                    call.abandon(&mut state.batching);
                }
                guard
            }
        });
        Ok(entered)
    }
}

impl Drop for Parallel {
    fn drop(&mut self) {
        // An unfinished call is abandoned: queued tasks are skipped, running ones are waited for, so no
        // worker uses the caller's data after the object is gone.
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(call) = state.call.take() {
            call.abandon(&mut state.batching);
        }
    }
}

fn ensure_backend<'a>(slot: &'a mut Option<Backend>, settings: &Resolved) -> Result<&'a Backend> {
    if slot.is_none() {
        let backend = if settings.sequential {
            Backend::Sequential
        } else {
            let pool = ThreadPool::new(settings.n_jobs).map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot start worker threads: {e}"))
            })?;
            Backend::Threads(pool)
        };
        *slot = Some(backend);
    }
    Ok(slot.as_ref().unwrap_or_else(|| unreachable!()))
}

fn busy() -> Error {
    Error::new(
        ErrorKind::Busy,
        "this pj_parallel_t is already running a call on another thread (or the call is re-entrant); \
         one call at a time per object",
    )
}

/// A small, unique, never-reused id for the current thread (0 is never handed out).
fn current_thread() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}
