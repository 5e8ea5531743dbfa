//! Starting a worker, and the parent's handle on it ([`Worker`]): fork, or spawn through
//! [`crate::backend::spawn`], one at a time under pj's fork lock.
//!
//! Locks across a fork (audit; handlers in [`crate::fork`]). pj's process-wide locks a child may
//! take: the fork lock of [`spawn_worker`] (held by the forking proxy itself: reset in the child);
//! the task registry's RwLock, handle_sigint's state and the MPI attachment (taken by the prepare
//! handler, so no other thread is inside them at the fork; the child also drops its copy of the
//! MPI attachment, whose thread did not survive). Per-object locks (a `Parallel`'s state, the
//! thread pool's mutexes, channels) belong to executors, which refuse calls in a forked child
//! before touching any of them, and are leaked there by free. The CPU-count and crash-stack
//! one-time initializations complete before pj first forks. Not covered: Rust's stdout/stderr
//! locks (a task printing through Rust's std in a worker forked while another thread printed) and
//! the host's own locks.
//!
//! `fork` itself stays hand-written on libc: no crate offers it safely in a multi-threaded
//! process (the child's steps are audited here and in the worker module).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use rustix::process::Pid;

use super::child::{Child, lead_own_group};
use super::fds;
use super::forkserver;
use super::page::SharedRunning;
use super::spawn::{SpawnPlan, WorkerIds, handshake};
use super::worker::worker_main;
use crate::backend::crash;

/// How a pool's workers start.
#[derive(Clone)]
pub(super) enum Start {
    /// A fork of the caller, by the proxy thread.
    Fork,
    /// A fresh run of the executable.
    Spawn(Arc<SpawnPlan>),
    /// A fork of the fork server.
    ForkServer,
}

impl Start {
    /// Whether the workers are not copies of the caller as it is now: batches then name their
    /// functions by registry index.
    pub(super) fn by_index(&self) -> bool {
        !matches!(self, Start::Fork)
    }
}

/// The parent's side of one worker.
pub(super) struct Worker {
    pub(super) pid: Pid,
    /// Waiting for it and signalling it.
    pub(super) child: Child,
    pub(super) socket: OwnedFd,
    pub(super) running: SharedRunning,
    /// Spill files whose descriptors this worker already received, of spill epoch `epoch`.
    pub(super) sent_files: Vec<u64>,
    pub(super) epoch: u64,
    /// Result slabs whose descriptors this worker holds (those lent with its last batch).
    pub(super) sent_slabs: Vec<u64>,
    /// It returned the outcome of a batch: it was working, so a later death before any task of a
    /// batch started is not a start-up failure that would repeat.
    pub(super) served: bool,
}

impl Drop for Worker {
    fn drop(&mut self) {
        fds::forget(self.socket.as_raw_fd());
    }
}

/// Forks a worker for `slot`. The child never returns from here.
pub(super) fn spawn_worker(
    slot: usize,
    level: usize,
    start: &Start,
    give_up: &dyn Fn() -> bool,
) -> io::Result<Worker> {
    let spawn = match start {
        Start::Spawn(plan) => Some(&**plan),
        Start::Fork => None,
        Start::ForkServer => return serve_worker(slot, level, give_up),
    };
    // Proxies fork one at a time: between the socket pair's creation and the parent closing its copy
    // of the child's end, a concurrent fork would let another worker inherit that end and keep the
    // stream open after this worker dies. With the lock, every pj socket that exists during a fork
    // is in the registry, and the new worker closes all but its own. The child inherits the lock
    // held: pj's fork handler frees it there, so a task can start its own process pool.
    let forking = crate::fork::FORK_LOCK.lock();
    let running = SharedRunning::new(spawn.is_some())?;
    // A spawned worker maps the page from its descriptor (made for it by `new`).
    let page = running.fd.as_ref().map(AsFd::as_fd);
    if spawn.is_some() && page.is_none() {
        return Err(io::Error::other("the shared page has no descriptor"));
    }
    // Done at pool creation already; a no-op here.
    crash::prepare();
    let (parent_end, child_end) = UnixStream::pair()?;
    let parent_pid = rustix::process::getpid();
    fds::remember(parent_end.as_raw_fd());
    fds::remember(child_end.as_raw_fd());
    if let (Some(plan), Some(page)) = (spawn, page) {
        let ids = WorkerIds {
            socket: child_end.as_fd(),
            page,
            parent: parent_pid,
            slot,
            level,
        };
        let started = plan.start(&ids);
        fds::forget(child_end.as_raw_fd());
        drop(child_end);
        // The child's end is closed here: other forks may go on while this worker starts up
        // (up to the handshake limit).
        drop(forking);
        let pid = started.inspect_err(|_| fds::forget(parent_end.as_raw_fd()))?;
        let socket: OwnedFd = parent_end.into();
        if let Err(error) = handshake(socket.as_fd(), pid, give_up) {
            // The handshake already killed and reaped the worker.
            fds::forget(socket.as_raw_fd());
            return Err(error);
        }
        return Ok(Worker {
            pid,
            child: Child::Own(pid),
            socket,
            running,
            sent_files: Vec::new(),
            sent_slabs: Vec::new(),
            epoch: 0,
            served: false,
        });
    }
    // SAFETY: fork has no memory-safety preconditions; the child below only runs the worker loop
    // and leaves through _exit, never returning into the parent's code.
    let pid = unsafe { libc::fork() };
    fds::forget(child_end.as_raw_fd());
    if pid < 0 {
        let error = io::Error::last_os_error();
        fds::forget(parent_end.as_raw_fd());
        return Err(error);
    }
    let Some(pid) = Pid::from_raw(pid) else {
        // First, before anything a task may start: the worker's own process group.
        lead_own_group();
        worker_main(child_end.as_fd(), &running, parent_pid, slot, level);
    };
    drop(child_end);
    Ok(Worker {
        pid,
        child: Child::Own(pid),
        socket: parent_end.into(),
        running,
        sent_files: Vec::new(),
        sent_slabs: Vec::new(),
        epoch: 0,
        served: false,
    })
}

/// Has the fork server start a worker for `slot` (see [`forkserver`]), then checks its registry.
fn serve_worker(slot: usize, level: usize, give_up: &dyn Fn() -> bool) -> io::Result<Worker> {
    // As in `spawn_worker`: the socket pair exists, and the server may fork, only under the lock.
    let mut forking = crate::fork::FORK_LOCK.lock();
    let running = SharedRunning::new(true)?;
    let Some(page) = running.fd.as_ref().map(AsFd::as_fd) else {
        return Err(io::Error::other("the shared page has no descriptor"));
    };
    let (parent_end, child_end) = UnixStream::pair()?;
    fds::remember(parent_end.as_raw_fd());
    fds::remember(child_end.as_raw_fd());
    let started =
        forkserver::fork_worker(&mut forking, child_end.as_fd(), page, slot, level, give_up);
    fds::forget(child_end.as_raw_fd());
    drop(child_end);
    drop(forking);
    let socket: OwnedFd = parent_end.into();
    let started = started.inspect_err(|_| fds::forget(socket.as_raw_fd()))?;
    if let Err(error) = forkserver::handshake(socket.as_fd(), started.pid, &started.child, give_up)
    {
        fds::forget(socket.as_raw_fd());
        return Err(error);
    }
    Ok(Worker {
        pid: started.pid,
        child: started.child,
        socket,
        running,
        sent_files: Vec::new(),
        sent_slabs: Vec::new(),
        epoch: 0,
        served: false,
    })
}
