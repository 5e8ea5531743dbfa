//! The page a worker shares with its parent: the running task (index and start), the crash record
//! and the stop flag. Mapped MAP_SHARED, so it survives fork; for a spawned worker it is a memfd
//! whose descriptor the worker inherits across exec.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;

use crate::backend::crash::CrashRecord;
use crate::task::Running;

/// A [`Running`] record and a [`CrashRecord`] in a MAP_SHARED page that survives fork: the worker
/// writes, the parent reads. For a spawned worker the page is a memfd, passed by descriptor.
pub(in crate::backend) struct SharedRunning {
    ptr: *mut Shared,
    /// The memfd behind the page (spawn start method only).
    pub(super) fd: Option<OwnedFd>,
}

/// The layout of the shared page.
#[repr(C)]
struct Shared {
    running: Running,
    crash: CrashRecord,
    /// The running batch's abort flag, as the worker's tasks see it (`pj_out_cancelled`): the
    /// proxy sets it before sending each batch and raises it once the call is aborted; the
    /// worker raises it itself when a task fails under fail-fast.
    stop: AtomicBool,
}

// SAFETY: the page is owned by this value and only accessed through atomics.
unsafe impl Send for SharedRunning {}

const PAGE: usize = 4096;
const _: () = assert!(std::mem::size_of::<Shared>() <= PAGE);

impl SharedRunning {
    /// A fresh page; `passable`: backed by a memfd that a spawned worker can map.
    pub(super) fn new(passable: bool) -> io::Result<Self> {
        if !passable {
            return Self::map(None);
        }
        // SAFETY: a NUL-terminated name; the flags are valid.
        let raw = unsafe { libc::memfd_create(c"pj-worker".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor memfd_create just returned, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sizing our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(Some(fd))
    }

    /// Maps the page of a spawned worker's parent, from the descriptor it passed.
    pub(in crate::backend) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Self::map(Some(fd))
    }

    fn map(fd: Option<OwnedFd>) -> io::Result<Self> {
        let (flags, raw) = match &fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a shared mapping of one page (of the memfd, sized to a page, or anonymous);
        // checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedRunning {
            ptr: ptr.cast(),
            fd,
        })
    }

    pub(in crate::backend) fn get(&self) -> &Running {
        // SAFETY: the mapping is page-aligned, zero-filled (a valid `Shared`: atomics and a bool,
        // all zero) and lives as long as `self`.
        unsafe { &(*self.ptr).running }
    }

    pub(in crate::backend) fn crash(&self) -> &CrashRecord {
        // SAFETY: as in `get`.
        unsafe { &(*self.ptr).crash }
    }

    pub(in crate::backend) fn stop(&self) -> &AtomicBool {
        // SAFETY: as in `get`.
        unsafe { &(*self.ptr).stop }
    }
}

impl Drop for SharedRunning {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`, once.
        unsafe { libc::munmap(self.ptr.cast(), PAGE) };
    }
}
