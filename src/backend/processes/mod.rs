//! The process backend: forked worker processes, each driven by a proxy thread in the parent.
//!
//! Shape. The pool has one proxy thread per worker slot. Proxies take batches from one shared
//! crossbeam queue (exactly like the thread backend's workers), send each batch as one frame over a
//! socket pair to their own forked worker, block for the outcome frame and hand it to the call. A
//! worker runs the very same `run_batch` as a thread would. So the per-task cost is the encoding of
//! the task into a frame, and the syscalls are per batch (auto batching makes batches large).
//!
//! Lifetime. A proxy forks its worker when it receives its first batch of a call, so the worker sees
//! the parent's memory as it is then (copy-on-write): the user's `userdata` and what it points to
//! are valid there. At the end of the call the workers are retired (socket shut down, process
//! reaped) unless `keep_workers` is set.
//!
//! Fail fast. Once the call is aborted (a task failed, or it was cancelled), a proxy waiting for its
//! worker raises the stop flag in the worker's shared page (what `pj_out_cancelled` reads there)
//! within 100 ms, SIGKILLs the worker and reaps it; its batch counts as not run. An abandoned call
//! (`pj_parallel_free`: `CallLink::drain`) only raises the flag and waits for the outcome, as the
//! thread backend must: the running task may finish, and the worker stops before its next one.
//!
//! Timeouts. With a timeout, the worker stamps each task's start (CLOCK_MONOTONIC, shared by every
//! process) in the shared page; the proxy, waiting for the outcome, checks the stamp every tenth
//! of the limit (at most 100 ms apart). An overdue task's worker gets SIGTERM, then SIGKILL after a
//! short grace, and is reaped; the next batch forks a fresh one.
//!
//! on_error=collect. When a worker dies or times out, the proxy runs the batch again in a fresh
//! worker without the task that killed it (recorded as that task's failure). The tasks the dead
//! worker had already completed run a second time, because their results died with it (documented
//! in the header; batch_size=1 avoids it).
//!
//! Crash isolation. A worker that dies (signal, exit(), _exit(), SIGKILL from outside) closes its
//! socket: the proxy sees the end of the stream before a complete outcome, reaps that one pid
//! (never "any child"), reads which task was running from a shared page the worker updates before
//! each task, and reports `TaskFailure::Died`. The next batch gets a fresh worker. A worker killed
//! by a crash signal (SIGSEGV, SIGABRT, ...) first records the crashing stack in that page from its
//! crash handler ([`super::crash`]); the proxy symbolizes it for the report. A worker that had
//! served batches and dies before any task of its current batch started (a kept worker killed
//! while idle, between calls or batches) is no task's fault: the batch runs, whole, on a fresh
//! worker, whatever on_error says.
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

pub(super) mod child;
mod fds;
pub(super) mod page;
pub(super) mod worker;

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, select, unbounded};

use self::child::{terminate, wait_for, wait_for_peek};
use self::page::SharedRunning;
use self::worker::worker_main;
use super::CallLink;
use super::crash;
use super::spawn::{SpawnPlan, WorkerIds, handshake};
use super::spill::map_results;
use super::wire::{
    LIVENESS_PERIOD_MS, MAX_FDS_PER_FRAME, RunFlags, decode_outcome, encode_batch,
    recv_frame_with_fds, send_frame_with_fds,
};
use crate::config::StartMethod;
use crate::task::{Batch, BatchOutcome, Death, TaskFailure};

/// One batch for a proxy.
struct Job {
    batch: Batch,
    link: CallLink,
}

/// Messages to one proxy.
enum Control {
    /// Retire the worker (if any), then acknowledge.
    Retire(Sender<()>),
}

/// A pool of forked workers behind proxy threads.
#[derive(Debug)]
pub struct ProcessPool {
    jobs: Option<Sender<Job>>,
    controls: Vec<Sender<Control>>,
    proxies: Vec<JoinHandle<()>>,
    keep_workers: bool,
}

impl ProcessPool {
    /// Starts `size` proxy threads; workers are forked by the first batch of each call. A forked
    /// worker runs its tasks on the copy of its proxy thread, so proxies get `stack_size` bytes
    /// of stack: the tasks' stack. (A spawned worker runs them on its main thread.)
    pub fn new(
        size: usize,
        keep_workers: bool,
        start: StartMethod,
        stack_size: usize,
    ) -> io::Result<Self> {
        let spawn = match start {
            StartMethod::Fork => None,
            StartMethod::Spawn => Some(Arc::new(SpawnPlan::new()?)),
        };
        let (jobs, queue) = unbounded::<Job>();
        let size = size.max(1);
        // Once per process, off the path of the first fork: the workers' crash-handler stack, and
        // pj's fork handlers (MPI worker ranks make pools without an executor).
        crash::prepare();
        crate::fork::register_handlers();
        let level = crate::nesting::level() + 1;
        let mut pool = ProcessPool {
            jobs: Some(jobs),
            controls: Vec::with_capacity(size),
            proxies: Vec::with_capacity(size),
            keep_workers,
        };
        for slot in 0..size {
            let (control, inbox) = unbounded();
            let queue = queue.clone();
            let spawn = spawn.clone();
            // If spawning fails part-way, dropping `pool` on the error path joins what started.
            let proxy = std::thread::Builder::new()
                .name(format!("pj-proxy-{slot}"))
                .stack_size(stack_size)
                .spawn(move || {
                    Proxy {
                        slot,
                        level,
                        worker: None,
                        buf: Vec::new(),
                        fds: Vec::new(),
                        spawn,
                    }
                    .run(queue, inbox)
                })?;
            pool.controls.push(control);
            pool.proxies.push(proxy);
        }
        Ok(pool)
    }

    /// Number of worker slots.
    pub fn size(&self) -> usize {
        self.proxies.len()
    }

    /// Queues `batch`; a proxy sends it to its worker and the outcome arrives on `link.reply`.
    pub fn dispatch(&self, batch: Batch, link: &CallLink) {
        let job = Job {
            batch,
            link: link.clone(),
        };
        if let Some(jobs) = &self.jobs
            && let Err(unsent) = jobs.send(job)
        {
            let Job { batch, link } = unsent.into_inner();
            let failure = TaskFailure::Spawn("the process pool is shut down".into());
            let _ = link
                .reply
                .send(BatchOutcome::failed(&batch, 0, batch.first, failure));
        }
    }

    /// Ends a call: retires every worker (and waits until each is reaped) unless workers are kept.
    pub fn end_call(&self) {
        if !self.keep_workers {
            self.retire_all();
        }
    }

    fn retire_all(&self) {
        let (ack, acks) = unbounded();
        let sent = self
            .controls
            .iter()
            .filter(|c| c.send(Control::Retire(ack.clone())).is_ok())
            .count();
        drop(ack);
        for _ in 0..sent {
            if acks.recv().is_err() {
                break;
            }
        }
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        self.controls.clear();
        for proxy in self.proxies.drain(..) {
            let _ = proxy.join();
        }
    }
}

/// The parent's side of one forked worker.
struct Worker {
    pid: libc::pid_t,
    socket: OwnedFd,
    running: SharedRunning,
    /// Spill files whose descriptors this worker already received, in call `call`.
    sent_files: Vec<u64>,
    call: u64,
    /// It returned the outcome of a batch: it was working, so a later death before any task of a
    /// batch started is not a start-up failure that would repeat.
    served: bool,
}

/// A proxy thread's state: its slot and its current worker.
struct Proxy {
    slot: usize,
    level: usize,
    worker: Option<Worker>,
    buf: Vec<u8>,
    /// Descriptors of result files that came with the last outcome.
    fds: Vec<OwnedFd>,
    /// With the spawn start method: how to start a fresh worker from the executable.
    spawn: Option<Arc<SpawnPlan>>,
}

impl Proxy {
    fn run(mut self, queue: Receiver<Job>, inbox: Receiver<Control>) {
        loop {
            select! {
                recv(queue) -> job => match job {
                    Ok(job) => self.run_job(job),
                    Err(_) => break,
                },
                recv(inbox) -> control => match control {
                    Ok(Control::Retire(ack)) => {
                        self.retire();
                        let _ = ack.send(());
                    }
                    Err(_) => break,
                },
            }
        }
        self.retire();
    }

    fn run_job(&mut self, Job { batch, link }: Job) {
        if link.abort.load(Ordering::Relaxed) {
            // The call already failed: this batch never starts.
            let _ = link.reply.send(BatchOutcome::skipped(&batch, self.slot));
            return;
        }
        // With on_error=collect, a batch whose worker died or timed out runs again without the
        // task responsible, until an attempt completes.
        let mut retry: Option<Batch> = None;
        let outcome = loop {
            let attempt = retry.as_ref().unwrap_or(&batch);
            match self.exchange(attempt, &link) {
                // A worker that had served died before any task of this attempt started (killed
                // while idle, between calls or batches): nothing of it ran, nobody is to blame.
                // The same attempt goes to a fresh worker; should that one die before starting,
                // `unstarted` is false and the death is reported.
                Err(Some(Lost {
                    unstarted: true, ..
                })) => {}
                Ok(mut outcome) => {
                    outcome.seconds = batch
                        .dispatched_at
                        .map_or(0.0, |t| t.elapsed().as_secs_f64());
                    outcome.merge_forced(&attempt.forced);
                    if outcome.failure.is_some() {
                        link.abort.store(true, Ordering::Relaxed);
                    }
                    break outcome;
                }
                Err(Some(Lost {
                    index,
                    failure,
                    retryable: true,
                    ..
                })) if link.collect => {
                    retry = Some(attempt.retry_without(index, failure));
                }
                Err(Some(Lost { index, failure, .. })) => {
                    link.abort.store(true, Ordering::Relaxed);
                    break BatchOutcome::failed(&batch, self.slot, index, failure);
                }
                Err(None) => break BatchOutcome::skipped(&batch, self.slot),
            }
        };
        let _ = link.reply.send(outcome);
    }

    /// Sends the batch to the worker (forking one if needed) and reads its outcome; on failure,
    /// the task it concerns.
    /// `Err(None)`: the call was aborted (another task failed, or the call was abandoned) while this
    /// batch ran, and the worker was killed rather than waited for.
    fn exchange(&mut self, batch: &Batch, link: &CallLink) -> Result<BatchOutcome, Option<Lost>> {
        self.reap_if_dead();
        if self.worker.is_none() {
            let worker =
                spawn_worker(self.slot, self.level, self.spawn.as_deref()).map_err(|e| {
                    Some(Lost::fatal(
                        batch.first,
                        TaskFailure::Spawn(format!("cannot start a worker process: {e}")),
                    ))
                })?;
            self.worker = Some(worker);
        }
        if let Some(worker) = self.worker.as_mut()
            && worker.call != link.call
        {
            // The worker forgets the previous call's files when it sees the new call id.
            worker.sent_files.clear();
            worker.call = link.call;
        }
        let Some(worker) = self.worker.as_ref() else {
            unreachable!("a worker was just installed")
        };
        worker.running.get().reset();
        // The worker is idle (between batches): it reads the flag only after this frame arrives.
        worker
            .running
            .stop()
            .store(link.abort.load(Ordering::Relaxed), Ordering::Relaxed);
        let flags = RunFlags {
            timed: link.timeout.is_some(),
            collect: link.collect,
            access: link.access,
            call: link.call,
            results_above: link
                .results_spill
                .as_ref()
                .map_or(u64::MAX, |(above, _)| *above),
        };
        let results_folder = link
            .results_spill
            .as_ref()
            .map_or(&[][..], |(_, folder)| folder.as_slice());

        // Spill files this worker has not seen travel with the frame (SCM_RIGHTS).
        let (mut attached, mut attached_fds) = (Vec::new(), Vec::new());
        for file in &batch.files {
            if !worker.sent_files.contains(&file.id) {
                attached.push(file.id);
                attached_fds.push(file.fd.as_raw_fd());
            }
        }
        let by_index = self.spawn.is_some();
        // Nothing was sent when the frame cannot be allocated: the worker stays usable.
        encode_batch(
            batch,
            flags,
            &attached,
            results_folder,
            by_index,
            &mut self.buf,
        )
        .map_err(|e| Some(Lost::fatal(batch.first, TaskFailure::Spawn(e.to_string()))))?;
        self.fds.clear();
        let fd = worker.socket.as_raw_fd();
        let pid = worker.pid;
        let running = worker.running.get();
        let stop = worker.running.stop();
        let overdue = Cell::new(None);
        // EOF is the fast signal of a death; the periodic check covers a stream kept open by a
        // grandchild the task started, which would otherwise hide the death forever. It also
        // stops waiting once the call is aborted (fail fast and cancel kill running tasks; an
        // abandoned call, `drain`, lets them finish) or the running task is past the timeout. The
        // worker's tasks see the abort through the shared page first (pj_out_cancelled).
        let alive = || {
            if link.abort.load(Ordering::Acquire) {
                stop.store(true, Ordering::Relaxed);
                if !link.drain.load(Ordering::Relaxed) {
                    return false;
                }
            }
            if let Some(limit) = link.timeout
                && let Some((index, elapsed)) = running.elapsed()
                && elapsed > limit
            {
                overdue.set(Some((index, limit, elapsed)));
                return false;
            }
            wait_for_peek(pid)
        };
        let period = link.timeout.map_or(LIVENESS_PERIOD_MS, |limit| {
            let tenth = (limit / 10)
                .as_millis()
                .clamp(1, LIVENESS_PERIOD_MS as u128);
            tenth as libc::c_int
        });
        let sent = attached_fds.chunks(MAX_FDS_PER_FRAME).len().max(1);
        let received = if sent > 1 {
            // More new files than one frame carries: cannot happen with batches of a few files,
            // but fail clearly rather than send a frame whose files the worker cannot find.
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a batch refers to too many spill files",
            ))
        } else {
            send_frame_with_fds(fd, &self.buf, &attached_fds).and_then(|()| {
                recv_frame_with_fds(fd, &mut self.buf, &mut self.fds, period, &alive)
            })
        };
        if let Some(worker) = self.worker.as_mut() {
            worker.sent_files.extend_from_slice(&attached);
        }
        match received {
            Ok(true) => {
                let fds = std::mem::take(&mut self.fds);
                let decoded = decode_outcome(&self.buf, self.slot)
                    .map_err(|e| Some(Lost::fatal(batch.first, self.kill_worker(&e))))?;
                let (mut outcome, files) = decoded;
                outcome.pid = u32::try_from(pid).unwrap_or(0);
                if let Some(worker) = self.worker.as_mut() {
                    worker.served = true;
                }
                outcome.mapped = map_results(files, fds).map_err(|e| {
                    Some(Lost::fatal(
                        batch.first,
                        TaskFailure::Spawn(e.message().to_owned()),
                    ))
                })?;
                Ok(outcome)
            }
            // The caller could not allocate the outcome (a result too large for its memory):
            // the frame was not read, so this worker's stream is unusable.
            Err(error) if error.kind() == io::ErrorKind::OutOfMemory => {
                Err(Some(Lost::fatal(batch.first, self.kill_worker(&error))))
            }
            _ if overdue.get().is_some() => {
                let Some((index, limit, elapsed)) = overdue.get() else {
                    unreachable!("checked by the guard")
                };
                if let Some(worker) = self.worker.take() {
                    terminate(worker.pid);
                }
                Err(Some(Lost {
                    index,
                    failure: TaskFailure::TimedOut { limit, elapsed },
                    retryable: !batch_forces(batch, index),
                    unstarted: false,
                }))
            }
            Ok(false) | Err(_) if link.abort.load(Ordering::Relaxed) => {
                if let Some(worker) = self.worker.take() {
                    // SAFETY: `pid` is our own child, not yet reaped, so it cannot have been reused.
                    unsafe { libc::kill(worker.pid, libc::SIGKILL) };
                    let _ = wait_for(worker.pid, 0);
                }
                Err(None)
            }
            // The stream ended (or broke) before a whole outcome: the worker died.
            Ok(false) | Err(_) => Err(Some(self.reap_dead(batch))),
        }
    }

    /// Reaps a worker whose stream ended (it is exiting now) and names the task it was running:
    /// the worker records the index in the shared page before each task.
    fn reap_dead(&mut self, batch: &Batch) -> Lost {
        let Some(worker) = self.worker.take() else {
            return Lost::fatal(
                batch.first,
                TaskFailure::Spawn("the worker vanished".into()),
            );
        };
        let running = worker
            .running
            .get()
            .index()
            .filter(|&index| index >= batch.first);
        let death = wait_for(worker.pid, 0).unwrap_or(Death::Unknown);
        // Reaped: the crash record is final. Symbolized here, where the worker's image (the
        // parent's, which it was forked from) is still loaded.
        let crash = match death {
            Death::Signal(signal) => worker.running.crash().read(signal),
            Death::Exited(_) | Death::Unknown | Death::Silent(_) => None,
        };
        let (fault_address, backtrace) =
            crash.map_or((None, None), |c| (c.fault_address, c.backtrace));
        let index = running.unwrap_or(batch.first);
        Lost {
            index,
            failure: TaskFailure::Died {
                pid: worker.pid,
                death,
                fault_address,
                backtrace,
            },
            // A worker that died before its first task (or on a task it should have skipped) would
            // die again: only a death that a task caused is retried without that task.
            retryable: running.is_some() && !batch_forces(batch, index),
            unstarted: running.is_none() && worker.served,
        }
    }

    /// Kills and reaps a worker that sent garbage.
    fn kill_worker(&mut self, error: &io::Error) -> TaskFailure {
        if let Some(worker) = self.worker.take() {
            // SAFETY: `pid` is our own child, not yet reaped, so the pid cannot have been reused.
            unsafe { libc::kill(worker.pid, libc::SIGKILL) };
            let _ = wait_for(worker.pid, 0);
        }
        if error.kind() == io::ErrorKind::OutOfMemory {
            return TaskFailure::Spawn(error.to_string());
        }
        TaskFailure::Spawn(format!(
            "a worker process sent an unreadable result ({error})"
        ))
    }

    /// Between calls a kept worker may have been killed from outside: notice before sending to it.
    fn reap_if_dead(&mut self) {
        if let Some(worker) = &self.worker
            && wait_for(worker.pid, libc::WNOHANG).is_some()
        {
            let worker = self.worker.take();
            drop(worker);
        }
    }

    /// Shuts the worker's socket down (it reads the end of the stream and `_exit`s) and reaps it.
    fn retire(&mut self) {
        if let Some(worker) = self.worker.take() {
            // SAFETY: shutting down a socket we own; other processes holding a copy see it too.
            unsafe { libc::shutdown(worker.socket.as_raw_fd(), libc::SHUT_RDWR) };
            let _ = wait_for(worker.pid, 0);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        fds::forget(self.socket.as_raw_fd());
    }
}

/// A batch that came back without an outcome: the task it concerns and why.
struct Lost {
    index: usize,
    failure: TaskFailure,
    /// Whether running the batch again without that task can succeed (on_error=collect).
    retryable: bool,
    /// A worker that had served batches died before any task of this one started: the batch
    /// runs again, whole, on a fresh worker (the task named is not to blame).
    unstarted: bool,
}

impl Lost {
    fn fatal(index: usize, failure: TaskFailure) -> Self {
        Lost {
            index,
            failure,
            retryable: false,
            unstarted: false,
        }
    }
}

/// Whether an earlier attempt already recorded task `index` as failed.
fn batch_forces(batch: &Batch, index: usize) -> bool {
    batch.forced.iter().any(|(i, _)| *i == index)
}

/// Forks a worker for `slot`. The child never returns from here.
fn spawn_worker(slot: usize, level: usize, spawn: Option<&SpawnPlan>) -> io::Result<Worker> {
    // Proxies fork one at a time: between the socket pair's creation and the parent closing its copy
    // of the child's end, a concurrent fork would let another worker inherit that end and keep the
    // stream open after this worker dies. With the lock, every pj socket that exists during a fork
    // is in the registry, and the new worker closes all but its own. The child inherits the lock
    // held: pj's fork handler frees it there, so a task can start its own process pool.
    let forking = crate::fork::FORK_LOCK.lock();
    let running = SharedRunning::new(spawn.is_some())?;
    // Done at pool creation already; a no-op here.
    crash::prepare();
    let (parent_end, child_end) = UnixStream::pair()?;
    // SAFETY: getpid has no preconditions.
    let parent_pid = unsafe { libc::getpid() };
    fds::remember(parent_end.as_raw_fd());
    fds::remember(child_end.as_raw_fd());
    if let Some(plan) = spawn {
        let page = running.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
        let ids = WorkerIds {
            socket: child_end.as_raw_fd(),
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
        if let Err(error) = handshake(socket.as_raw_fd(), pid) {
            // The handshake already killed and reaped the worker.
            fds::forget(socket.as_raw_fd());
            return Err(error);
        }
        return Ok(Worker {
            pid,
            socket,
            running,
            sent_files: Vec::new(),
            call: 0,
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
    if pid == 0 {
        worker_main(child_end.as_raw_fd(), &running, parent_pid, slot, level);
    }
    drop(child_end);
    Ok(Worker {
        pid,
        socket: parent_end.into(),
        running,
        sent_files: Vec::new(),
        call: 0,
        served: false,
    })
}
