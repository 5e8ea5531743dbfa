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
//! No orphans. Workers ask for SIGKILL when their proxy thread (hence the parent) dies
//! (PR_SET_PDEATHSIG, re-checked against the parent pid right after fork), ignore SIGINT (the parent
//! decides), close the parent's ends of every pj socket they inherited, and leave only through
//! `_exit`. pj changes no signal disposition of the parent.
//!
//! Fork safety. Between fork and the worker loop the child runs only async-signal-safe calls
//! (prctl, getppid, signal, sigaltstack, sigaction, close). The loop itself allocates: glibc's fork
//! makes malloc and stdio usable in the child. A task callback must not take locks that another
//! parent thread may hold at the time of the fork (documented in the header).
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

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select, unbounded};

use super::CallLink;
use super::crash::{self, CrashRecord};
use super::spawn::{SpawnPlan, WorkerIds, handshake};
use super::spill::{SpillMaps, map_results, spill_results};
use super::wire::{
    DecodedBatch, LIVENESS_PERIOD_MS, MAX_FDS_PER_FRAME, RunFlags, decode_batch, decode_outcome,
    encode_batch, encode_outcome, recv_frame_with_fds, send_frame_with_fds,
};
use crate::config::StartMethod;
use crate::task::TaskFn;
use crate::task::{Batch, BatchOutcome, Death, RunContext, Running, TaskFailure, run_batch};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

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
        registry::forget(self.socket.as_raw_fd());
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

/// How long a timed-out worker may take to leave after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(100);

/// Stops a worker whose task overran: SIGTERM (it may clean up), SIGKILL after [`TERM_GRACE`],
/// then reaps it.
fn terminate(pid: libc::pid_t) {
    // SAFETY: `pid` is our own child, not yet reaped, so it cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + TERM_GRACE;
    while std::time::Instant::now() < deadline {
        if wait_for(pid, libc::WNOHANG).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: as above; the child has not been reaped (the last poll found it running).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = wait_for(pid, 0);
}

/// Waits for our child `pid` (`flags` 0 blocks, WNOHANG polls). `Some(death)` once it has ended;
/// `None` while it runs. A child already reaped elsewhere (SIGCHLD ignored by the host) is
/// `Death::Unknown`.
pub(super) fn wait_for(pid: libc::pid_t, flags: libc::c_int) -> Option<Death> {
    loop {
        let mut status = 0;
        // SAFETY: waits for one specific child of ours; `status` is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, flags) };
        if got == pid {
            return Some(if libc::WIFSIGNALED(status) {
                Death::Signal(libc::WTERMSIG(status))
            } else {
                Death::Exited(libc::WEXITSTATUS(status))
            });
        }
        if got == 0 {
            return None;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Some(Death::Unknown);
        }
    }
}

/// Whether our child `pid` is still running, without reaping it (the proxy reaps it afterwards to
/// learn how it died).
pub(super) fn wait_for_peek(pid: libc::pid_t) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-buffer for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits (without blocking, without reaping) for one specific child of ours.
        let got = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if got == 0 {
            // SAFETY: waitid filled `info`; si_pid is 0 when the child has not changed state.
            return unsafe { info.si_pid() } == 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
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
    registry::remember(parent_end.as_raw_fd());
    registry::remember(child_end.as_raw_fd());
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
        registry::forget(child_end.as_raw_fd());
        drop(child_end);
        // The child's end is closed here: other forks may go on while this worker starts up
        // (up to the handshake limit).
        drop(forking);
        let pid = started.inspect_err(|_| registry::forget(parent_end.as_raw_fd()))?;
        let socket: OwnedFd = parent_end.into();
        if let Err(error) = handshake(socket.as_raw_fd(), pid) {
            // The handshake already killed and reaped the worker.
            registry::forget(socket.as_raw_fd());
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
    registry::forget(child_end.as_raw_fd());
    if pid < 0 {
        let error = io::Error::last_os_error();
        registry::forget(parent_end.as_raw_fd());
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

/// The worker process: reads batches, runs them, writes outcomes, until the stream ends.
fn worker_main(
    socket: RawFd,
    running: &SharedRunning,
    parent_pid: libc::pid_t,
    slot: usize,
    level: usize,
) -> ! {
    tie_to_parent(parent_pid);
    // Record the stack of a crash (async-signal-safe too: sigaltstack and sigaction).
    crash::install(running.crash());
    // Drop the inherited parent ends of every pj socket, so that their workers see EOF when due.
    registry::close_all_except(socket);
    let code = serve(socket, running, slot, level, None);
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the parent's image.
    unsafe { libc::_exit(code) }
}

/// A worker's first step, forked or spawned (async-signal-safe): die with the parent, and leave
/// at once if it died before the request was in place; leave SIGINT to the parent, which decides.
pub(super) fn tie_to_parent(parent_pid: libc::pid_t) {
    // SAFETY: prctl, getppid, _exit and signal are async-signal-safe and act on this process only.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent_pid {
            libc::_exit(1);
        }
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// The worker loop: reads batches, runs them, writes outcomes, until the stream ends; returns the
/// exit status. `functions`: for a spawned worker, the registry that batch callbacks index into
/// (a forked worker gets function addresses instead).
pub(super) fn serve(
    socket: RawFd,
    running: &SharedRunning,
    slot: usize,
    level: usize,
    functions: Option<&[TaskFn]>,
) -> i32 {
    crate::nesting::set_level(level);
    let served = catch_unwind(AssertUnwindSafe(|| {
        // In the shared page: the parent raises it when the call is aborted, so a running
        // callback sees it (pj_out_cancelled) and the batch stops before its next task.
        let abort = running.stop();
        let (mut inbox, mut outbox) = (Vec::new(), Vec::new());
        let mut received = Vec::new();
        let mut spill = SpillMaps::default();
        // The parent's death is PR_SET_PDEATHSIG's to notice; here only the stream's end counts.
        while let Ok(true) = recv_frame_with_fds(
            socket,
            &mut inbox,
            &mut received,
            LIVENESS_PERIOD_MS,
            &|| true,
        ) {
            // SAFETY: the frame was encoded by our parent, of which this process is a fork (its
            // addresses are valid here), or, for a spawned worker, carries registry indices.
            let Ok(DecodedBatch {
                batch,
                flags,
                attached,
                results_folder,
            }) = (unsafe { decode_batch(&inbox, functions) })
            else {
                return 3;
            };
            if attached.len() != received.len() {
                return 3;
            }
            if flags.call != spill.call {
                // A kept worker's new call: the previous call's files and mappings go, so their
                // space is freed once the parent drops them too.
                spill = SpillMaps::for_call(flags.call);
            }
            spill
                .files
                .extend(attached.into_iter().zip(received.drain(..)));
            let Ok(spilled) = spill.map_batch(&batch, flags.access) else {
                return 5;
            };
            let ctx = RunContext {
                running: Some(running.get()),
                timed: flags.timed,
                collect: flags.collect,
                spilled: &spilled,
                ..RunContext::new(abort, slot)
            };
            let mut outcome = run_batch(&batch, ctx);
            drop(spilled);
            spill.end_batch();
            let mut files = Vec::new();
            if flags.results_above != u64::MAX {
                let folder = std::path::Path::new(std::ffi::OsStr::from_bytes(&results_folder));
                match spill_results(&mut outcome, flags.results_above, folder, MAX_FDS_PER_FRAME) {
                    Ok(spilled) => files = spilled,
                    Err(error) => {
                        outcome.failure = Some((
                            outcome.first,
                            TaskFailure::Spawn(format!(
                                "cannot return a result through a file: {error}"
                            )),
                        ));
                    }
                }
            }
            let listed: Vec<(usize, usize)> = files.iter().map(|f| (f.index, f.len)).collect();
            let raw: Vec<RawFd> = files.iter().map(|f| f.fd.as_raw_fd()).collect();
            encode_outcome(&outcome, &listed, &mut outbox);
            if send_frame_with_fds(socket, &outbox, &raw).is_err() {
                return 0;
            }
        }
        0
    }));
    served.unwrap_or(4)
}

/// A [`Running`] record and a [`CrashRecord`] in a MAP_SHARED page that survives fork: the worker
/// writes, the parent reads. For a spawned worker the page is a memfd, passed by descriptor.
pub(super) struct SharedRunning {
    ptr: *mut Shared,
    /// The memfd behind the page (spawn start method only).
    fd: Option<OwnedFd>,
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
    fn new(passable: bool) -> io::Result<Self> {
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
    pub(super) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
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

    pub(super) fn get(&self) -> &Running {
        // SAFETY: the mapping is page-aligned, zero-filled (a valid `Shared`: atomics and a bool,
        // all zero) and lives as long as `self`.
        unsafe { &(*self.ptr).running }
    }

    pub(super) fn crash(&self) -> &CrashRecord {
        // SAFETY: as in `get`.
        unsafe { &(*self.ptr).crash }
    }

    pub(super) fn stop(&self) -> &AtomicBool {
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

/// The parent ends of pj's worker sockets in this process, so that a newly forked worker can close
/// the copies it inherits (async-signal-safe: a fixed array of atomics, no lock).
mod registry {
    use super::*;

    const SLOTS: usize = 1024;
    static FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

    /// Records `fd`; beyond the table's capacity it is simply not recorded (harmless but for the
    /// EOF backup of parent-death detection).
    pub fn remember(fd: RawFd) {
        for slot in &FDS {
            if slot
                .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    pub fn forget(fd: RawFd) {
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
    pub fn close_all_except(keep: RawFd) {
        for slot in &FDS {
            let fd = slot.swap(-1, Ordering::Relaxed);
            if fd >= 0 && fd != keep {
                // SAFETY: closing an inherited descriptor of the parent's; close is
                // async-signal-safe.
                unsafe { libc::close(fd) };
            }
        }
    }
}
