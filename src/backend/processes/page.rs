//! The page a worker shares with its parent: the running task (index and start), the crash record
//! and the stop flag. Mapped MAP_SHARED, so it survives fork; for a spawned worker it is a memfd
//! whose descriptor the worker inherits across exec. memfd, sizing and mapping are rustix's
//! calls (mapping and unmapping stay `unsafe`: they create and end a raw pointer's validity).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;

use rustix::fs::{MemfdFlags, ftruncate, memfd_create};
use rustix::mm::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};

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
        let fd = memfd_create(c"pj-worker", MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, PAGE as u64)?;
        Self::map(Some(fd))
    }

    /// Maps the page of a spawned worker's parent, from the descriptor it passed.
    pub(in crate::backend) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Self::map(Some(fd))
    }

    fn map(fd: Option<OwnedFd>) -> io::Result<Self> {
        let null = std::ptr::null_mut();
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a new shared mapping of one page (of the memfd, sized to a page, or anonymous)
        // at an address the kernel picks, so no existing memory is affected.
        let ptr = unsafe {
            match &fd {
                Some(fd) => mmap(null, PAGE, prot, MapFlags::SHARED, fd, 0),
                None => mmap_anonymous(null, PAGE, prot, MapFlags::SHARED),
            }
        }?;
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
        let _ = unsafe { munmap(self.ptr.cast(), PAGE) };
    }
}
