//! A proxy thread: it takes batches from the pool's queue, starts its worker when it has none,
//! sends it each batch as one frame and waits for the outcome frame, watching the call's abort
//! flag, the running task's timeout and the worker's life meanwhile.
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
//! crash handler ([`crate::backend::crash`]); the proxy symbolizes it for the report. A worker that
//! had served batches and dies before any task of its current batch started (a kept worker killed
//! while idle, between calls or batches) is no task's fault: the batch runs, whole, on a fresh
//! worker, whatever on_error says.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender, select};

use super::child::{is_running, kill_and_reap, reap, terminate, try_reap};
use super::spawn::SpawnPlan;
use super::start::{Worker, spawn_worker};
use crate::backend::CallLink;
use crate::backend::spill::map_results;
use crate::backend::wire::{
    LIVENESS_PERIOD_MS, MAX_FDS_PER_FRAME, decode_outcome, encode_batch, recv_frame_with_fds,
    send_frame_with_fds,
};
use crate::memmap::{MapAccess, Mapping};
use crate::task::{Batch, BatchOutcome, Death, LargeOutput, TaskFailure, WorkerId};

/// One batch for a proxy.
pub(super) struct Job {
    pub(super) batch: Batch,
    pub(super) link: CallLink,
}

/// Messages to one proxy.
pub(super) enum Control {
    /// Retire the worker (if any), then acknowledge.
    Retire(Sender<()>),
}

/// A proxy thread's state: its slot and its current worker.
pub(super) struct Proxy {
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
    /// A proxy for `slot` whose worker's tasks run at nesting `level`; it has no worker yet.
    pub(super) fn new(slot: usize, level: usize, spawn: Option<Arc<SpawnPlan>>) -> Self {
        Proxy {
            slot,
            level,
            worker: None,
            buf: Vec::new(),
            fds: Vec::new(),
            spawn,
        }
    }

    /// This proxy's slot, for an outcome no worker process produced.
    fn unstarted(&self) -> WorkerId {
        WorkerId::Process {
            slot: self.slot,
            pid: 0,
        }
    }

    /// Serves batches and controls until the pool closes the queue or the control channel, then
    /// retires its worker.
    pub(super) fn run(mut self, queue: Receiver<Job>, inbox: Receiver<Control>) {
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
            link.send(&batch, BatchOutcome::skipped(&batch, self.unstarted()));
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
                    break BatchOutcome::failed(&batch, self.unstarted(), index, failure);
                }
                Err(None) => break BatchOutcome::skipped(&batch, self.unstarted()),
            }
        };
        link.send(&batch, outcome);
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
                        TaskFailure::Io(format!("cannot start a worker process: {e}")),
                    ))
                })?;
            self.worker = Some(worker);
        }
        // Read once: the worker and this proxy must agree on which epoch the frame is of.
        let flags = link.run_flags();
        if let Some(worker) = self.worker.as_mut()
            && worker.epoch != flags.spill_epoch
        {
            // The worker forgets the previous epoch's files when it sees the new one.
            worker.sent_files.clear();
            worker.epoch = flags.spill_epoch;
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
        let files = link.files.as_deref();
        let results_folder = files.map_or(&[][..], |f| f.results.1.as_slice());

        // Spill files this worker has not seen travel with the frame (SCM_RIGHTS).
        let unsent = files.map_or_else(Vec::new, |f| f.unsent(batch, &worker.sent_files));
        let attached: Vec<u64> = unsent.iter().map(|(id, _)| *id).collect();
        let attached_fds: Vec<_> = unsent.iter().map(|(_, fd)| fd.as_fd()).collect();
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
        .map_err(|e| Some(Lost::fatal(batch.first, TaskFailure::Io(e.to_string()))))?;
        self.fds.clear();
        let fd = worker.socket.as_fd();
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
            is_running(pid)
        };
        let period = link.timeout.map_or(LIVENESS_PERIOD_MS, |limit| {
            let tenth = (limit / 10)
                .as_millis()
                .clamp(1, LIVENESS_PERIOD_MS as u128);
            tenth as i32
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
                let ran = WorkerId::Process {
                    slot: self.slot,
                    pid: u32::try_from(pid.as_raw_pid()).unwrap_or(0),
                };
                let decoded = decode_outcome(&self.buf, ran)
                    .map_err(|e| Some(Lost::fatal(batch.first, self.kill_worker(&e))))?;
                let (mut outcome, files) = decoded;
                if let Some(worker) = self.worker.as_mut() {
                    worker.served = true;
                }
                let mapped = map_results(files, fds).map_err(|e| {
                    Some(Lost::fatal(
                        batch.first,
                        TaskFailure::Io(e.message().to_owned()),
                    ))
                })?;
                outcome.large = mapped
                    .into_iter()
                    .map(|(index, mapping)| (index, MappedResult::output(mapping)))
                    .collect();
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
                    // Our own child, not yet reaped.
                    kill_and_reap(worker.pid);
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
            return Lost::fatal(batch.first, TaskFailure::Io("the worker vanished".into()));
        };
        let running = worker
            .running
            .get()
            .index()
            .filter(|&index| index >= batch.first);
        let death = reap(worker.pid);
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
                pid: worker.pid.as_raw_pid(),
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
            // Our own child, not yet reaped.
            kill_and_reap(worker.pid);
        }
        if error.kind() == io::ErrorKind::OutOfMemory {
            return TaskFailure::Io(error.to_string());
        }
        TaskFailure::Io(format!(
            "a worker process sent an unreadable result ({error})"
        ))
    }

    /// Between calls a kept worker may have been killed from outside: notice before sending to it.
    fn reap_if_dead(&mut self) {
        if let Some(worker) = &self.worker
            && try_reap(worker.pid).is_some()
        {
            let worker = self.worker.take();
            drop(worker);
        }
    }

    /// Shuts the worker's socket down (it reads the end of the stream and `_exit`s) and reaps it.
    fn retire(&mut self) {
        if let Some(worker) = self.worker.take() {
            // Other processes holding a copy of the socket see the shutdown too. A failure leaves
            // the socket to be closed when the worker is dropped: the worker then sees EOF.
            let _ = rustix::net::shutdown(&worker.socket, rustix::net::Shutdown::Both);
            let _ = reap(worker.pid);
        }
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

/// A result that came back through a file, mapped read-only: the call reads it in place until its
/// results are freed, which unmaps it.
struct MappedResult(Mapping);

impl MappedResult {
    fn output(mapping: Mapping) -> LargeOutput {
        // Read in place by the caller: nothing may write to it (see `as_ref`).
        debug_assert_eq!(mapping.access(), MapAccess::ReadOnly);
        LargeOutput::new(MappedResult(mapping))
    }
}

impl AsRef<[u8]> for MappedResult {
    fn as_ref(&self) -> &[u8] {
        if self.0.is_empty() {
            return &[];
        }
        // SAFETY: a read-only mapping of `len()` bytes, unmapped only when `self` is dropped,
        // which the borrow of `self` prevents while the slice lives.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), self.0.len()) }
    }
}

/// Whether an earlier attempt already recorded task `index` as failed.
fn batch_forces(batch: &Batch, index: usize) -> bool {
    batch.forced.iter().any(|(i, _)| *i == index)
}
