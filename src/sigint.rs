//! `handle_sigint`: while a call of such an object blocks, a SIGINT cancels it instead of killing
//! the process.
//!
//! By default pj touches no signal disposition. With the option, each blocking entry point holds a
//! [`SigintGuard`]: the first guard in the process saves the host's SIGINT action and installs
//! pj's handler; the last one restores the saved action exactly (handler, flags and mask, as
//! `sigaction` returned them). In between, a SIGINT marks every registered call cancelled (atomic
//! stores only, so the handler is async-signal-safe) and the calls return PJ_STATUS_CANCELLED.
//! The host's own handler is not called for a SIGINT that pj consumed.
//!
//! `sigaction` stays hand-written on libc: rustix installs signal handlers only in its unstable
//! `runtime` module, and the saved action must be restored exactly as libc returned it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::stop::{CancelReason, Stop};

/// How many calls may block with handle_sigint at once (beyond it, extra calls are simply not
/// cancelled by SIGINT; they remain cancellable with `pj_parallel_cancel`).
const SLOTS: usize = 256;

/// The calls that a SIGINT cancels: pointers to their objects' [`Stop`]s, registered by guards
/// that outlive their registration.
static TARGETS: [AtomicPtr<Stop>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

/// The host's action saved by the first guard, and how many guards are alive.
struct Installed {
    previous: libc::sigaction,
    guards: usize,
}

// SAFETY: `sigaction` is plain data (a function address, flags and a signal mask).
unsafe impl Send for Installed {}

static STATE: Mutex<Option<Installed>> = Mutex::new(None);

/// handle_sigint's state held across a fork ([`crate::fork`]), so that no other thread is inside it
/// at the fork; released in the parent and the child.
pub(crate) struct ForkHold(#[allow(dead_code)] std::sync::MutexGuard<'static, Option<Installed>>);

/// Takes handle_sigint's state for a fork.
pub(crate) fn hold_for_fork() -> ForkHold {
    ForkHold(STATE.lock().unwrap_or_else(|p| p.into_inner()))
}

/// pj's SIGINT handler: cancels every registered call.
extern "C" fn on_sigint(_: libc::c_int) {
    for target in &TARGETS {
        let stop = target.load(Ordering::Acquire);
        if !stop.is_null() {
            // SAFETY: a registered Stop stays alive until its guard unregisters it, and the guard
            // unregisters before the Stop's owner can go away. `cancel` only stores atomics.
            unsafe { (*stop).cancel(CancelReason::Sigint) };
        }
    }
}

/// While alive, a SIGINT cancels the call that `stop` belongs to.
#[derive(Debug)]
pub struct SigintGuard {
    slot: Option<usize>,
}

impl SigintGuard {
    /// Registers `stop` and installs pj's handler if no other guard did. Never fails: without a
    /// free slot or when sigaction fails, the call just is not cancellable by SIGINT.
    pub fn enter(stop: &Stop) -> SigintGuard {
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let pointer = (stop as *const Stop).cast_mut();
        let slot = TARGETS.iter().position(|target| {
            target
                .compare_exchange(
                    std::ptr::null_mut(),
                    pointer,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        });
        if slot.is_none() {
            return SigintGuard { slot: None };
        }
        match state.as_mut() {
            Some(installed) => installed.guards += 1,
            None => match install() {
                Some(previous) => {
                    *state = Some(Installed {
                        previous,
                        guards: 1,
                    })
                }
                None => {
                    if let Some(slot) = slot {
                        TARGETS[slot].store(std::ptr::null_mut(), Ordering::Release);
                    }
                    return SigintGuard { slot: None };
                }
            },
        }
        SigintGuard { slot }
    }
}

impl Drop for SigintGuard {
    fn drop(&mut self) {
        let Some(slot) = self.slot else {
            return;
        };
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(installed) = state.as_mut() {
            installed.guards -= 1;
            if installed.guards == 0 {
                // Restore before unregistering: a SIGINT in between goes to the host's action.
                // SAFETY: reinstating the action sigaction gave us, unchanged.
                unsafe { libc::sigaction(libc::SIGINT, &installed.previous, std::ptr::null_mut()) };
                *state = None;
            }
        }
        TARGETS[slot].store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// Installs pj's handler; returns the action it replaced.
fn install() -> Option<libc::sigaction> {
    // SAFETY: zeroed sigaction structs are valid inputs/outputs; the mask is emptied with
    // sigemptyset; the handler is an `extern "C" fn(c_int)` that only stores atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(libc::SIGINT, &action, &mut previous) == 0).then_some(previous)
    }
}
