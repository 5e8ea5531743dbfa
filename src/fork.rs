//! What pj does when the process forks (its own workers' forks, or the host's `fork()`).
//!
//! Only the forking thread exists in the child, so a lock another thread held at the fork stays
//! locked there forever, and objects whose threads lived in the parent (worker pools, the MPI
//! dispatcher) are shells. pj registers `pthread_atfork` handlers once, when the first executor is
//! created (before any of its objects can be copied by a fork):
//! - prepare: takes the process-wide locks a child may need (the task registry, handle_sigint's
//!   state, the MPI attachment), so no other thread is inside them at the fork; parent and child
//!   release them right after;
//! - child: bumps the fork [`generation`], empties the MPI attachment (its dispatcher thread did
//!   not survive; the child sees no MPI) and resets [`FORK_LOCK`], which a proxy thread of the
//!   parent may have held.
//!
//! An executor records the generation it was created in: one atomic load when a call starts tells
//! that it was inherited through a fork, and the call is refused instead of waiting for threads or
//! workers that are not there (see `Parallel::inherited`).
//!
//! `pthread_atfork` stays hand-written on libc (no crate registers fork handlers); the fork lock's
//! futex calls are rustix's.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use rustix::thread::futex;

/// How many forks this process descends from since pj registered its handlers (0 in the process
/// that registered them).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The fork generation of this process: an executor made in another generation was inherited.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Registers pj's fork handlers, once per process (later calls return at once).
pub fn register_handlers() {
    // 0: not yet, 1: being registered, 2: done.
    static STATE: AtomicU8 = AtomicU8::new(0);
    if STATE.load(Ordering::Acquire) == 2 {
        return;
    }
    if STATE
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // SAFETY: three `extern "C" fn()` handlers that live as long as the program. Registration
        // fails only without memory (ENOMEM); pj then works as before, without the handlers.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        STATE.store(2, Ordering::Release);
        return;
    }
    while STATE.load(Ordering::Acquire) != 2 {
        std::thread::yield_now();
    }
}

/// The locks held across a fork by the forking thread, between prepare and parent/child.
struct Held {
    _registry: crate::registry::ForkHold,
    _sigint: crate::sigint::ForkHold,
    world: crate::backend::mpi::ForkHold,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

extern "C" fn prepare() {
    // Never unwind into libc: a panic here would abort; these only lock.
    let _ = std::panic::catch_unwind(|| {
        let held = Held {
            _registry: crate::registry::hold_for_fork(),
            _sigint: crate::sigint::hold_for_fork(),
            world: crate::backend::mpi::hold_for_fork(),
        };
        HELD.with(|slot| *slot.borrow_mut() = Some(held));
    });
}

extern "C" fn parent() {
    let _ = std::panic::catch_unwind(|| HELD.with(|slot| drop(slot.borrow_mut().take())));
}

extern "C" fn child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    FORK_LOCK.reset();
    let _ = std::panic::catch_unwind(|| {
        HELD.with(|slot| {
            if let Some(mut held) = slot.borrow_mut().take() {
                held.world.forget_in_child();
                drop(held);
            }
        })
    });
}

/// Serializes pj's own forks (see `spawn_worker` in the process backend). A plain futex lock, so
/// that the child handler can reset it: a fork by another thread while a proxy held it must not
/// leave it locked in the child.
pub static FORK_LOCK: ResetLock = ResetLock::new();

/// A mutex (0 free, 1 locked, 2 locked with waiters) that a fork's child handler can reset.
pub struct ResetLock {
    state: AtomicU32,
}

/// Holds a [`ResetLock`] until dropped.
pub struct ResetLockGuard<'a>(&'a ResetLock);

impl ResetLock {
    const fn new() -> Self {
        ResetLock {
            state: AtomicU32::new(0),
        }
    }

    /// Blocks until the lock is ours.
    pub fn lock(&self) -> ResetLockGuard<'_> {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.state.swap(2, Ordering::Acquire) != 0 {
                // Sleeps only while the word reads 2; spurious returns (EINTR, EAGAIN) loop back.
                let _ = futex::wait(&self.state, futex::Flags::PRIVATE, 2, None);
            }
        }
        ResetLockGuard(self)
    }

    /// In a fork's child (one thread): free, whoever held it in the parent.
    fn reset(&self) {
        self.state.store(0, Ordering::Relaxed);
    }
}

impl Drop for ResetLockGuard<'_> {
    fn drop(&mut self) {
        if self.0.state.swap(0, Ordering::Release) == 2 {
            // Wakes one waiter.
            let _ = futex::wake(&self.0.state, futex::Flags::PRIVATE, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    use std::time::{Duration, Instant};

    /// Forks while another thread holds each of pj's process-wide locks in turn; the child must be
    /// able to take them all (before the handlers, it waited forever for the lock its copy
    /// inherited held). The parent's wait for the child is bounded.
    #[test]
    fn a_fork_while_another_thread_holds_a_lock_leaves_it_usable_in_the_child() {
        register_handlers();
        let holders: [fn() -> Box<dyn std::any::Any>; 4] = [
            || Box::new(crate::registry::hold_for_fork()),
            || Box::new(crate::sigint::hold_for_fork()),
            || Box::new(crate::backend::mpi::hold_for_fork()),
            || Box::new(FORK_LOCK.lock()),
        ];
        for (which, hold) in holders.into_iter().enumerate() {
            let (held, taken) = std::sync::mpsc::channel();
            let holder = std::thread::spawn(move || {
                let guard = hold();
                held.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                drop(guard);
            });
            taken.recv().unwrap();
            // SAFETY: the child only takes pj's locks and leaves through _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            let Some(pid) = Pid::from_raw(pid) else {
                let _ = crate::registry::lookup("fork-test-missing");
                drop(crate::registry::hold_for_fork());
                drop(crate::sigint::SigintGuard::enter(
                    &crate::stop::Stop::default(),
                ));
                let _ = crate::backend::mpi::worker_ranks();
                drop(FORK_LOCK.lock());
                // SAFETY: leaving the forked test process at once.
                unsafe { libc::_exit(0) };
            };
            holder.join().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                // Polls our own child.
                if let Some((_, status)) = waitpid(Some(pid), WaitOptions::NOHANG).unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    // Our own child, not yet reaped.
                    let _ = kill_process(pid, Signal::KILL);
                    let _ = waitpid(Some(pid), WaitOptions::empty());
                    panic!("lock {which}: the child hung");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            assert_eq!(status.exit_status(), Some(0));
        }
    }
}
