//! A proxy thread: it takes batches from the pool's queue, starts its worker when it has none,
//! sends it each batch as one frame and waits for the outcome frame, watching the call's abort
//! flag, the running task's timeout and the worker's life meanwhile.
//!
//! Fail fast. Once the call is aborted (a task failed, or it was cancelled), a proxy waiting for its
//! worker raises the stop flag in the worker's shared page (what `pj_out_cancelled` reads there)
//! within 100 ms, SIGKILLs the worker (and its process group: what its task started) and reaps it;
//! its batch counts as not run. Every end of a worker kills its group ([`super::child`]). An abandoned call
//! (`pj_parallel_free`: `CallLink::drain`) only raises the flag and waits for the outcome, as the
//! thread backend must: the running task may finish, and the worker stops before its next one.
//!
//! Timeouts. With a timeout, the worker stamps each task's start (CLOCK_MONOTONIC, shared by every
//! process) in the shared page; the proxy, waiting for the outcome, checks the stamp every tenth
//! of the limit (at most 100 ms apart). An overdue task's worker gets SIGTERM, then SIGKILL after a
//! short grace, and is reaped; the next batch forks a fresh one. A worker outside any task
//! (receiving its batch, mapping its arguments, returning its outcome) is held to the same limit
//! (`TaskFailure::Stalled`), including while the proxy sends it a batch it does not read (a
//! stopped worker): the worker's socket has a send timeout, so a send that makes no progress
//! returns to check, as the wait for the outcome does.
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
//!
//! Recycling. With `max_tasks_per_child`, the proxy counts the tasks sent to its worker and cuts a
//! batch larger than the worker's remaining allowance: the first part runs on this worker, which
//! is then retired (socket shut down: it leaves through `_exit(0)` and is reaped), the rest on a
//! fresh one, and the parts' outcomes go back to the call as one. With `worker_memory_limit`, the
//! proxy reads its worker's resident set from `/proc/<pid>/statm` (a descriptor opened when the
//! worker starts, read again at offset 0: one syscall per batch) after each batch, and retires a
//! worker above the limit before its next batch. With `idle_worker_timeout`, a proxy whose worker
//! had no batch for that long retires it: only the proxy talks to its worker, so a batch that
//! comes meanwhile waits in the queue and then gets a fresh worker; it never meets one exiting.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvError, Sender, select};

use super::start::{Start, Worker, spawn_worker};
use crate::backend::CallLink;
use crate::backend::slabs::{ResultSlabs, Slab};
use crate::backend::wire::{
    LIVENESS_PERIOD_MS, LentSlab, MAX_FDS_PER_FRAME, SlabResultRef, bound_sends,
    decode_outcome_parts, encode_batch_meta, recv_parts, send_parts_watched,
};
use crate::config::Recycling;
use crate::failpoint::{self, Stage};
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
    /// The meta part of the frames both ways (a few words per task; reused).
    meta: Vec<u8>,
    /// Where an outcome's result bytes are received: they become the outcome's `data` by move,
    /// so this is empty again after each outcome and the next one lands in fresh memory (or in a
    /// buffer put here before the exchange).
    bulk: Vec<u8>,
    /// Descriptors of result slabs the worker made for the last outcome.
    fds: Vec<OwnedFd>,
    /// How to start a fresh worker.
    start: Start,
    /// When the worker is replaced or retired.
    recycling: Recycling,
    /// Tasks sent to the current worker (in batches it returned).
    tasks_run: usize,
    /// With a memory limit: the current worker's `/proc/<pid>/statm`, opened at its start.
    statm: Option<OwnedFd>,
    /// The current worker's resident set exceeded the memory limit after its last batch.
    over_memory: bool,
    /// The executor's kept result slabs, lent to batches of calls with results above max_nbytes.
    slabs: ResultSlabs,
    /// The slabs lent with the batch being exchanged: what its outcome did not use goes back.
    lent: Vec<Slab>,
}

/// What woke a waiting proxy.
// A job is moved once per batch, from the queue to `run_job`; boxing it would allocate per batch.
#[allow(clippy::large_enum_variant)]
enum Event {
    Job(Result<Job, RecvError>),
    Control(Result<Control, RecvError>),
    /// Its worker was idle for `idle_worker_timeout`.
    Idle,
}

impl Proxy {
    /// A proxy for `slot` whose worker's tasks run at nesting `level`; it has no worker yet.
    pub(super) fn new(
        slot: usize,
        level: usize,
        start: Start,
        recycling: Recycling,
        slabs: ResultSlabs,
    ) -> Self {
        Proxy {
            slot,
            level,
            worker: None,
            meta: Vec::new(),
            bulk: Vec::new(),
            fds: Vec::new(),
            start,
            recycling,
            tasks_run: 0,
            statm: None,
            over_memory: false,
            slabs,
            lent: Vec::new(),
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
            match self.next_event(&queue, &inbox) {
                Event::Job(Ok(job)) => self.run_job(job),
                Event::Control(Ok(Control::Retire(ack))) => {
                    self.retire();
                    let _ = ack.send(());
                }
                Event::Idle => self.retire(),
                Event::Job(Err(_)) | Event::Control(Err(_)) => break,
            }
        }
        self.retire();
    }

    /// Blocks for the next job or control; with a worker and an idle timeout, for at most that
    /// long.
    fn next_event(&self, queue: &Receiver<Job>, inbox: &Receiver<Control>) -> Event {
        let idle = self.worker.as_ref().and(self.recycling.idle_worker_timeout);
        match idle {
            Some(timeout) => select! {
                recv(queue) -> job => Event::Job(job),
                recv(inbox) -> control => Event::Control(control),
                default(timeout) => Event::Idle,
            },
            None => select! {
                recv(queue) -> job => Event::Job(job),
                recv(inbox) -> control => Event::Control(control),
            },
        }
    }

    /// Runs a batch and reports its outcome; with `max_tasks_per_child`, in parts, each within
    /// its worker's remaining allowance (workers replaced in between), reported as one outcome.
    fn run_job(&mut self, Job { mut batch, link }: Job) {
        if link.abort.load(Ordering::Relaxed) {
            // The call already failed: this batch never starts.
            let outcome = BatchOutcome::skipped(&batch, self.unstarted());
            link.send(batch, outcome);
            return;
        }
        let size = batch.len();
        self.retire_if_due();
        let mut rest = self.cut_at_allowance(&mut batch);
        let mut outcome = self.run_part(&batch, &link);
        while let Some(mut part) = rest.take() {
            let whole =
                outcome.failure.is_none() && outcome.first + outcome.completed() == part.first;
            if !whole || link.abort.load(Ordering::Relaxed) {
                // The rest never starts: the call is stopping.
                break;
            }
            self.retire_if_due();
            rest = self.cut_at_allowance(&mut part);
            let next = self.run_part(&part, &link);
            if !outcome.append(next) {
                link.abort.store(true, Ordering::Relaxed);
                outcome.failure = Some((
                    part.first,
                    TaskFailure::Io("cannot allocate memory for a batch's results".into()),
                ));
                break;
            }
        }
        outcome.size = size;
        link.send(batch, outcome);
        // A worker that is due leaves now, not when the next batch comes (a kept worker over
        // the memory limit would otherwise hold its memory while idle).
        self.retire_if_due();
    }

    /// The tasks of `batch` beyond what the current worker may still run (`max_tasks_per_child`),
    /// split off; `None` when it may run them all.
    fn cut_at_allowance(&self, batch: &mut Batch) -> Option<Batch> {
        let max = self.recycling.max_tasks_per_child?.get();
        // Without a worker the next one starts afresh.
        let used = if self.worker.is_some() {
            self.tasks_run
        } else {
            0
        };
        let left = max.saturating_sub(used).max(1);
        (left < batch.len()).then(|| batch.split_off(left))
    }

    /// Retires the worker when it ran its `max_tasks_per_child` tasks or exceeded
    /// `worker_memory_limit` after its last batch: the next batch starts a fresh one.
    fn retire_if_due(&mut self) {
        if self.worker.is_none() {
            return;
        }
        let spent = self
            .recycling
            .max_tasks_per_child
            .is_some_and(|max| self.tasks_run >= max.get());
        if spent || self.over_memory {
            self.retire();
        }
    }

    /// Runs one batch (or part of one) to its outcome, retrying as on_error and deaths require.
    fn run_part(&mut self, batch: &Batch, link: &CallLink) -> BatchOutcome {
        // With on_error=collect, a batch whose worker died or timed out runs again without the
        // task responsible, until an attempt completes.
        let mut retry: Option<Batch> = None;
        loop {
            let attempt = retry.as_ref().unwrap_or(batch);
            // A panic here must not end the proxy thread: its batch would never be reported and
            // the call would wait for it forever. The worker's stream is then in an unknown state.
            let exchanged = catch_unwind(AssertUnwindSafe(|| self.exchange(attempt, link)))
                .unwrap_or_else(|panic| {
                    let message = crate::error::panic_message(panic.as_ref());
                    let failure = TaskFailure::Panicked(message);
                    Err(Some(Lost::fatal(
                        attempt.first,
                        self.kill_worker_for(failure),
                    )))
                });
            // Lent slabs the outcome did not fill go back (all of them when the worker died or
            // was killed: it writes nothing any more).
            if !self.lent.is_empty() {
                self.slabs.give_back(self.lent.drain(..));
            }
            match exchanged {
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
                    break BatchOutcome::failed(batch, self.unstarted(), index, failure);
                }
                Err(None) => break BatchOutcome::skipped(batch, self.unstarted()),
            }
        }
    }

    /// Sends the batch to the worker (forking one if needed) and reads its outcome; on failure,
    /// the task it concerns.
    /// `Err(None)`: the call was aborted (another task failed, or the call was abandoned) while this
    /// batch ran, and the worker was killed rather than waited for.
    fn exchange(&mut self, batch: &Batch, link: &CallLink) -> Result<BatchOutcome, Option<Lost>> {
        self.reap_if_dead();
        if self.worker.is_none() {
            // A batch's send waits for a worker that stops reading no longer than a call's
            // checks allow (see `send_parts_watched`).
            // A start the call stops waiting for (cancelled, or failed meanwhile) is given up at
            // once rather than awaited up to the start-up limit.
            let give_up = || link.abort.load(Ordering::Relaxed);
            let worker = spawn_worker(self.slot, self.level, &self.start, &give_up)
                .and_then(|worker| match bound_sends(worker.socket.as_fd()) {
                    Ok(()) => Ok(worker),
                    Err(error) => {
                        worker.child.kill_and_reap();
                        Err(error)
                    }
                })
                .map_err(|e| {
                    (!give_up()).then(|| {
                        Lost::fatal(
                            batch.first,
                            TaskFailure::Io(format!("cannot start a worker process: {e}")),
                        )
                    })
                })?;
            self.statm = self
                .recycling
                .worker_memory_limit
                .and_then(|_| open_statm(worker.pid));
            self.worker = Some(worker);
            self.tasks_run = 0;
            self.over_memory = false;
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
        let mut attached_fds: Vec<_> = unsent.iter().map(|(_, fd)| fd.as_fd()).collect();
        // Kept result slabs for the batch's large results, when the call has some: the worker
        // gets the descriptors it does not hold from its previous batch.
        if flags.results_above != u64::MAX {
            let room = MAX_FDS_PER_FRAME.saturating_sub(attached_fds.len());
            self.lent = self.slabs.lend(batch.len().min(room));
        }
        let lent: Vec<LentSlab> = self
            .lent
            .iter()
            .map(|slab| LentSlab {
                id: slab.id(),
                capacity: slab.capacity(),
                with_fd: !worker.sent_slabs.contains(&slab.id()),
            })
            .collect();
        attached_fds.extend(
            self.lent
                .iter()
                .zip(&lent)
                .filter(|(_, l)| l.with_fd)
                .map(|(slab, _)| slab.fd()),
        );
        let by_index = self.start.by_index();
        // Nothing was sent when the frame cannot be allocated: the worker stays usable.
        encode_batch_meta(
            batch,
            flags,
            &attached,
            &lent,
            results_folder,
            by_index,
            &mut self.meta,
        )
        .map_err(|e| Some(Lost::fatal(batch.first, TaskFailure::Io(e.to_string()))))?;
        self.fds.clear();
        let fd = worker.socket.as_fd();
        let pid = worker.pid;
        let child = &worker.child;
        let running = worker.running.get();
        let stop = worker.running.stop();
        let overdue = Cell::new(None);
        let stalled = Cell::new(None);
        let idle_since = Cell::new(None);
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
            if let Some(limit) = link.timeout {
                match running.elapsed() {
                    Some((index, elapsed)) => {
                        idle_since.set(None);
                        if elapsed > limit {
                            overdue.set(Some((index, limit, elapsed)));
                            return false;
                        }
                    }
                    // Outside any task (receiving the batch, mapping its arguments, sending its
                    // outcome) the worker is bound by the same limit, else it could hang the
                    // call.
                    None => {
                        let since = idle_since.get().unwrap_or_else(Instant::now);
                        idle_since.set(Some(since));
                        let elapsed = since.elapsed();
                        if elapsed > limit {
                            let index = running.index().unwrap_or(batch.first);
                            stalled.set(Some((index, limit, elapsed)));
                            return false;
                        }
                    }
                }
            }
            child.is_running()
        };
        let period = link.timeout.map_or(LIVENESS_PERIOD_MS, |limit| {
            let tenth = (limit / 10)
                .as_millis()
                .clamp(1, LIVENESS_PERIOD_MS as u128);
            tenth as i32
        });
        let sent = attached_fds.chunks(MAX_FDS_PER_FRAME).len().max(1);
        let mut injected_receive = false;
        let received = if sent > 1 {
            // More new files than one frame carries: cannot happen with batches of a few files,
            // but fail clearly rather than send a frame whose files the worker cannot find.
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a batch refers to too many spill files",
            ))
        } else {
            // The result bytes land in memory the executor's earlier results used (pages already
            // mapped), when it has some to give.
            if self.bulk.capacity() == 0
                && let Some(pool) = batch.pool()
            {
                self.bulk = pool.take_received();
            }
            // The argument bytes go from the batch's own buffer.
            let (_, args, _) = batch.parts();
            match failpoint::hit(Stage::BatchSend) {
                // The worker may have read part of a frame: its stream is unusable.
                Some(injected) => {
                    #[cfg(feature = "failpoints")]
                    if injected == failpoint::Injected::Truncate {
                        let _ = crate::backend::wire::send_truncated(fd, &self.meta, args);
                    }
                    let error = injected.io_error(Stage::BatchSend);
                    let failure = TaskFailure::Io(format!("cannot send a batch: {error}"));
                    return Err(Some(Lost::fatal(
                        batch.first,
                        self.kill_worker_for(failure),
                    )));
                }
                None => send_parts_watched(fd, &self.meta, args, &attached_fds, &alive),
            }
            .and_then(|()| {
                let received = recv_parts(
                    fd,
                    &mut self.meta,
                    &mut self.bulk,
                    &mut self.fds,
                    period,
                    &alive,
                );
                match (received, failpoint::hit(Stage::ResultReceive)) {
                    (Ok(true), Some(injected)) => {
                        injected_receive = true;
                        Err(injected.io_error(Stage::ResultReceive))
                    }
                    (received, _) => received,
                }
            })
        };
        if let Some(worker) = self.worker.as_mut() {
            worker.sent_files.extend_from_slice(&attached);
            // The worker keeps the slabs of this batch, and drops the others.
            worker.sent_slabs.clear();
            worker.sent_slabs.extend(lent.iter().map(|slab| slab.id));
        }
        match received {
            // The outcome frame was read, but not understood: the worker goes with it.
            Err(error) if injected_receive => {
                let failure = TaskFailure::Io(format!("cannot receive an outcome: {error}"));
                Err(Some(Lost::fatal(
                    batch.first,
                    self.kill_worker_for(failure),
                )))
            }
            Ok(true) => {
                let fds = std::mem::take(&mut self.fds);
                let ran = WorkerId::Process {
                    slot: self.slot,
                    pid: u32::try_from(pid.as_raw_pid()).unwrap_or(0),
                };
                // The received result bytes become the outcome's: no copy; they go back to the
                // executor's pool with the results.
                let data = std::mem::take(&mut self.bulk);
                let data = match batch.pool() {
                    Some(pool) => pool.received(data),
                    None => data.into(),
                };
                let decoded = decode_outcome_parts(&self.meta, data, ran)
                    .map_err(|e| Some(Lost::fatal(batch.first, self.kill_worker(&e))))?;
                let (mut outcome, files) = decoded;
                if let Some(worker) = self.worker.as_mut() {
                    worker.served = true;
                }
                self.tasks_run += batch.len();
                if let Some(limit) = self.recycling.worker_memory_limit {
                    self.over_memory = self.statm.as_ref().and_then(resident_bytes) > Some(limit);
                }
                outcome.large = self.slab_results(files, fds).map_err(|e| {
                    Some(Lost::fatal(
                        batch.first,
                        TaskFailure::Io(e.message().to_owned()),
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
                    worker.child.terminate();
                }
                Err(Some(Lost {
                    index,
                    failure: TaskFailure::TimedOut { limit, elapsed },
                    retryable: !batch_forces(batch, index),
                    unstarted: false,
                }))
            }
            _ if stalled.get().is_some() => {
                let Some((index, limit, elapsed)) = stalled.get() else {
                    unreachable!("checked by the guard")
                };
                if let Some(worker) = self.worker.take() {
                    worker.child.terminate();
                }
                // No task of the batch is to blame: none was running.
                Err(Some(Lost::fatal(
                    index,
                    TaskFailure::Stalled { limit, elapsed },
                )))
            }
            Ok(false) | Err(_) if link.abort.load(Ordering::Relaxed) => {
                if let Some(worker) = self.worker.take() {
                    worker.child.kill_and_reap();
                }
                Err(None)
            }
            // The stream ended (or broke) before a whole outcome: the worker died.
            Ok(false) | Err(_) => Err(Some(self.reap_dead(batch))),
        }
    }

    /// The results an outcome says lie in slabs, (task index, length, slab id: a lent slab, or
    /// 0 for one the worker made, whose descriptor is the next of `fds`), read in place.
    fn slab_results(
        &mut self,
        files: Vec<SlabResultRef>,
        fds: Vec<OwnedFd>,
    ) -> crate::Result<Vec<(usize, LargeOutput)>> {
        let garbled = || {
            crate::Error::new(
                crate::ErrorKind::Io,
                "a worker sent result slabs that do not match its outcome",
            )
        };
        if files.iter().filter(|(_, _, id)| *id == 0).count() != fds.len() {
            return Err(garbled());
        }
        let mut fds = fds.into_iter();
        let mut large = Vec::with_capacity(files.len());
        for (index, len, id) in files {
            let slab = match id {
                0 => Slab::adopt(fds.next().ok_or_else(garbled)?)?,
                _ => {
                    let at = self.lent.iter().position(|s| s.id() == id);
                    self.lent.swap_remove(at.ok_or_else(garbled)?)
                }
            };
            if len > slab.capacity() {
                return Err(garbled());
            }
            large.push((index, self.slabs.output(slab, len)));
        }
        large.sort_unstable_by_key(|(index, _)| *index);
        Ok(large)
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
        let death = worker.child.reap();
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

    /// Kills and reaps a worker whose stream is unusable; `failure` is why.
    fn kill_worker_for(&mut self, failure: TaskFailure) -> TaskFailure {
        if let Some(worker) = self.worker.take() {
            worker.child.kill_and_reap();
        }
        failure
    }

    /// Kills and reaps a worker that sent garbage.
    fn kill_worker(&mut self, error: &io::Error) -> TaskFailure {
        if let Some(worker) = self.worker.take() {
            worker.child.kill_and_reap();
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
            && worker.child.try_reap().is_some()
        {
            let worker = self.worker.take();
            drop(worker);
        }
    }

    /// Shuts the worker's socket down (it reads the end of the stream and `_exit`s) and reaps it.
    fn retire(&mut self) {
        self.statm = None;
        if let Some(worker) = self.worker.take() {
            // Other processes holding a copy of the socket see the shutdown too. A failure leaves
            // the socket to be closed when the worker is dropped: the worker then sees EOF.
            let _ = rustix::net::shutdown(&worker.socket, rustix::net::Shutdown::Both);
            let _ = worker.child.reap();
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

/// Opens our child `pid`'s `/proc/<pid>/statm` (`None` without /proc: the memory limit is then
/// not enforced). The child is not reaped while the descriptor is used, so the pid is its.
fn open_statm(pid: rustix::process::Pid) -> Option<OwnedFd> {
    let path = format!("/proc/{}/statm", pid.as_raw_pid());
    rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// The resident set size, in bytes, that a `/proc/<pid>/statm` descriptor reports now (its second
/// field, in pages); read at offset 0 each time, without allocating.
fn resident_bytes(statm: &OwnedFd) -> Option<u64> {
    let mut text = [0u8; 128];
    let len = rustix::io::pread(statm, &mut text, 0).ok()?;
    let fields = std::str::from_utf8(text.get(..len)?).ok()?;
    let pages: u64 = fields.split_ascii_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(rustix::param::page_size() as u64)
}

/// Whether an earlier attempt already recorded task `index` as failed.
fn batch_forces(batch: &Batch, index: usize) -> bool {
    batch.forced.iter().any(|(i, _)| *i == index)
}
