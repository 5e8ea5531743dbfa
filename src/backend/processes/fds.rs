//! The parent ends of pj's worker sockets in this process, so that a newly forked worker can close
//! the copies it inherits (async-signal-safe: a fixed array of atomics, no lock). The close is
//! libc's: it closes a raw number from the table, which rustix's `close` takes unsafely too.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

const SLOTS: usize = 1024;
static FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// Records `fd`; beyond the table's capacity it is simply not recorded (harmless but for the
/// EOF backup of parent-death detection).
pub(super) fn remember(fd: RawFd) {
    for slot in &FDS {
        if slot
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

pub(super) fn forget(fd: RawFd) {
    for slot in &FDS {
        if slot
            .compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// In a freshly forked child: closes every recorded fd but `keep`.
pub(super) fn close_all_except(keep: RawFd) {
    for slot in &FDS {
        let fd = slot.swap(-1, Ordering::Relaxed);
        if fd >= 0 && fd != keep {
            // SAFETY: closing an inherited descriptor of the parent's; close is
            // async-signal-safe.
            unsafe { libc::close(fd) };
        }
    }
}
