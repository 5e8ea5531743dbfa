//! One call's dispatching: forming batches, the pre-dispatch window, handing batches to the backend,
//! handing results back (all at once, or streamed in input or completion order), and failing fast.
//!
//! The dispatcher sees only the backend's [`Stager`] (which adds each argument to its batch),
//! [`Backend::dispatch`] and the outcomes on its reply channel; it knows nothing about threads,
//! processes, files or MPI ranks (an outcome names its worker, [`crate::task::WorkerId`]).
//! `arrived` keeps completed batches until `next` hands their results out; `results` joins them
//! for `finish`.
//!
//! Flow control. A call never holds more than `window` tasks "in the air", where `window` is
//! pre_dispatch × the current batch size (exactly pre_dispatch with batches of one task, as joblib
//! reads pre_dispatch items before the first completion; as batches grow, joblib keeps about
//! pre_dispatch batches in flight, and so does pj). What counts as in the air depends on who pushes:
//! - `submit` (the user pushes): tasks submitted and not completed. Results waiting to be read never
//!   block a submit, or a single-threaded "submit some, read some" loop would deadlock.
//! - a producer (pj pulls, in `next` or `collect`): tasks produced and not yet *consumed*, so a slow
//!   reader of `next` pauses production instead of piling results up in memory.

pub mod batching;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};

pub use crate::stop::{CancelReason, Stop};
mod arrived;
mod results;

use arrived::Arrived;
pub use batching::Batching;
pub use results::Results;

use crate::backend::{Backend, CallLink, Stager};
use crate::config::ReturnAs;
use crate::error::{Error, ErrorKind};
use crate::progress::{Progress, Snapshot};
use crate::sigint::SigintGuard;
use crate::task::{Batch, BatchOutcome, Callback, TaskFailure, WorkerId};

/// How often a blocked call looks for a cancellation.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Pulls task arguments for a call: hands the next argument to `sink` and returns `Ok(true)`, or
/// returns `Ok(false)` at the end of the input, or the producer's error. Runs on the thread that
/// drives the call.
pub type Producer = Box<dyn FnMut(&mut dyn FnMut(&[u8])) -> Result<bool, Error> + Send>;

/// One streamed result: the task's index and a view of its output, valid until the call is used
/// again.
#[derive(Debug, PartialEq, Eq)]
pub struct Streamed<'a> {
    /// The task's index in input order.
    pub index: usize,
    /// The task's output bytes (empty for a failed task).
    pub data: &'a [u8],
    /// With on_error=collect: the task's own error, when it failed (the call goes on).
    pub error: Option<Error>,
}

/// What a call needs to know from the object's settings.
#[derive(Clone, Copy, Debug)]
pub struct CallOptions {
    /// pre_dispatch in tasks; `None` for "all".
    pub pre_dispatch: Option<usize>,
    /// The order `next` hands results out in.
    pub order: ReturnAs,
    /// The first batch's size.
    pub first_batch: usize,
    /// The per-task time limit.
    pub timeout: Option<Duration>,
    /// on_error=collect: failed tasks become per-task errors and the call goes on.
    pub collect: bool,
    /// Whether a SIGINT cancels the call while it blocks (or runs tasks inline).
    pub handle_sigint: bool,
}

/// The call's failure: the first one seen (as joblib raises the first failure it observes), and which
/// worker saw it. Later failures never replace it, so `submit` and `collect` report the same one.
#[derive(Clone, Debug)]
struct Failure {
    index: usize,
    failure: TaskFailure,
    worker: WorkerId,
}

/// The state of one call, from its first task to its last result.
pub struct Call {
    link: CallLink,
    cancelled: Arc<AtomicU8>,
    /// With handle_sigint: the flags a SIGINT raises while this call blocks.
    sigint: Option<Stop>,
    replies: Receiver<BatchOutcome>,
    callback: Option<Callback>,
    producer: Option<Producer>,
    /// pre_dispatch in tasks; `None` for "all".
    pre_dispatch: Option<usize>,
    submitted: usize,
    pending: Batch,
    /// Argument bytes of the tasks in `pending` (auto batches are cut at the byte cap too).
    pending_bytes: usize,
    in_flight: usize,
    in_flight_tasks: usize,
    /// Completed batches whose results `next` has not handed out.
    arrived: Arrived,
    failure: Option<Failure>,
    /// Set when the producer (not a task) failed; reported as the call's error.
    producer_error: Option<Error>,
    /// Verbose lines, progress bar and progress callback, when any is wanted.
    progress: Option<Progress>,
    /// joblib's counters for progress: batches and tasks handed to the backend, tasks completed.
    dispatched_batches: usize,
    dispatched_tasks: usize,
    completed_tasks: usize,
    /// No more input will come: the producer ended, or `collect` was called.
    input_done: bool,
    /// The input ended (the producer's end before any completion, or `collect`) with a completion
    /// still to come: joblib finds the end of its input only when a completion asks for more,
    /// after reporting it, so `input_done` is set at the next completion.
    end_unseen: bool,
    /// How task arguments join their batch (the backend's: copied, or through files).
    stager: Stager,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("submitted", &self.submitted)
            .field("in_flight_tasks", &self.in_flight_tasks)
            .field("arrived_tasks", &self.arrived.unread())
            .field("has_producer", &self.producer.is_some())
            .finish_non_exhaustive()
    }
}

impl Call {
    /// A call with nothing submitted yet.
    ///
    /// `stop` is the object's cancellation pair, reset here: `cancelled` set from outside
    /// (pj_parallel_cancel) ends the call with [`ErrorKind::Cancelled`].
    pub fn new(options: CallOptions, stop: &Stop) -> Self {
        stop.cancelled.store(0, Ordering::Relaxed);
        stop.abort.store(false, Ordering::Relaxed);
        let (reply, replies) = unbounded();
        let CallOptions {
            pre_dispatch,
            order,
            first_batch,
            timeout,
            collect,
            handle_sigint,
        } = options;
        Call {
            link: CallLink {
                reply,
                abort: stop.abort.clone(),
                drain: Arc::new(AtomicBool::new(false)),
                timeout,
                collect,
                call: {
                    static NEXT_CALL: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(1);
                    NEXT_CALL.fetch_add(1, Ordering::Relaxed)
                },
                files: None,
            },
            cancelled: stop.cancelled.clone(),
            sigint: handle_sigint.then(|| stop.share()),
            replies,
            callback: None,
            producer: None,
            pre_dispatch,
            submitted: 0,
            pending: Batch::new(0, first_batch),
            pending_bytes: 0,
            in_flight: 0,
            in_flight_tasks: 0,
            arrived: Arrived::new(order),
            failure: None,
            producer_error: None,
            progress: None,
            dispatched_batches: 0,
            dispatched_tasks: 0,
            completed_tasks: 0,
            input_done: false,
            end_unseen: false,
            stager: Stager::default(),
        }
    }

    /// A call whose arguments join their batches through `stager` ([`Backend::stager`]).
    pub fn with_stager(mut self, stager: Stager) -> Self {
        self.link.files = stager.files();
        // Nothing was pushed yet: the first batch takes its buffer from the stager's.
        self.pending = stager.batch(self.submitted, self.pending.capacity());
        self.stager = stager;
        self
    }

    /// A call that reports its progress through `progress`.
    pub fn with_progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// joblib's counters as progress reporting reads them.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            dispatched_batches: self.dispatched_batches,
            dispatched_tasks: self.dispatched_tasks,
            completed_tasks: self.completed_tasks,
            input_exhausted: self.input_done || self.pre_dispatch.is_none(),
            still_reading: !self.input_done,
            aborting: self.failed(),
        }
    }

    /// No more input will come: `collect` was called, or `next` handed out the last result of a
    /// call fed by submits (a producer's end is seen in `produce_one`). As with a producer, the
    /// end is noticed at the next completion, after reporting it, when one is still to come (as
    /// joblib notices the end of its input at the first completion after the last dispatch);
    /// otherwise the call is complete now and its final line is due.
    fn close_input(&mut self) {
        if self.input_done || self.end_unseen {
            return;
        }
        self.note_input_end();
        if self.pre_dispatch.is_some() && (self.in_flight > 0 || !self.pending.is_empty()) {
            self.end_unseen = true;
            return;
        }
        self.input_done = true;
        if !self.failed() {
            let snapshot = self.snapshot();
            if let Some(progress) = self.progress.as_mut() {
                progress.input_closed(&snapshot);
            }
        }
    }

    /// Tells progress reporting the call's number of tasks, now that no more input will come.
    fn note_input_end(&mut self) {
        let total = self.submitted;
        if let Some(progress) = self.progress.as_mut() {
            progress.input_ended(total);
        }
    }

    /// Ends progress reporting: the sequential path's last evaluation, and the bar's final line.
    fn finish_progress(&mut self) {
        let snapshot = self.snapshot();
        if let Some(progress) = self.progress.take() {
            progress.ended(&snapshot);
        }
    }

    /// A call whose inputs come from `producer`, each run with `callback`.
    pub fn with_producer(mut self, callback: Callback, producer: Producer) -> Self {
        self.callback = Some(callback);
        self.producer = Some(producer);
        self
    }

    /// True once a task has failed (or the producer did): nothing more will be dispatched.
    pub fn failed(&self) -> bool {
        self.failure.is_some() || self.producer_error.is_some()
    }

    /// The error the call ends with, once something failed.
    pub fn failure_error(&self, backend: &Backend) -> Option<Error> {
        if let Some(error) = &self.producer_error {
            return Some(error.clone());
        }
        self.failure
            .as_ref()
            .map(|f| backend.task_error(f.index, &f.failure, f.worker))
    }

    /// Adds a task pushed by the user. Blocks while the window is full (tasks submitted and not
    /// completed); dispatches the pending batch once it reaches the current batch size.
    pub fn submit(
        &mut self,
        backend: &Backend,
        batching: &mut Batching,
        callback: Callback,
        arg: &[u8],
    ) {
        self.check_cancelled();
        self.wait_for_room(backend, batching, false);
        self.push(backend, batching, callback, arg);
    }

    /// Runs the producer to its end (pacing it by completions), waits for every task, and returns
    /// all results not yet handed out by `next`, in input order, or the first failure.
    pub fn finish(mut self, backend: &Backend, batching: &mut Batching) -> Result<Results, Error> {
        while self.producer.is_some() && !self.failed() {
            self.wait_for_room(backend, batching, false);
            self.produce_one(backend, batching);
        }
        self.close_input();
        self.flush(backend, true);
        self.drain(batching);
        self.stager.end_call();
        // A cancellation may have ended the work without a wait ever timing out.
        self.check_cancelled();
        self.finish_progress();
        backend.end_call();
        if let Some(error) = self.failure_error(backend) {
            return Err(error);
        }
        Results::from_outcomes(self.arrived.take_all(), |index, failure, outcome| {
            backend.task_error(index, failure, outcome.worker)
        })
    }

    /// The next result in the call's order, pulling from the producer as room allows; `Ok(None)`
    /// once every task's result was handed out (the call is then over).
    pub fn next(
        &mut self,
        backend: &Backend,
        batching: &mut Batching,
    ) -> Result<Option<Streamed<'_>>, Error> {
        self.arrived.release_read();
        loop {
            self.check_cancelled();
            if let Some(error) = self.failure_error(backend) {
                return Err(error);
            }
            // Keep the workers fed before handing anything out.
            while self.producer.is_some() && !self.failed() && self.has_room(batching, true) {
                self.produce_one(backend, batching);
            }
            if self.producer.is_none() && (self.input_done || self.end_unseen) {
                // The input ended: send what is left now (it already counts in the window), so
                // that once the end is seen, every task has been dispatched, as in joblib.
                self.flush(backend, true);
            }
            self.absorb_ready(batching);
            if self.failed() {
                continue;
            }
            if self.arrived.ready() {
                break;
            }
            if self.in_flight > 0 && self.producer.is_some() {
                // The window is full: a completion makes room for full batches.
                self.wait_one(batching);
            } else if !self.pending.is_empty() {
                let end_of_input = self.producer.is_none();
                self.flush(backend, end_of_input);
            } else if self.in_flight > 0 {
                self.wait_one(batching);
            } else if self.producer.is_none() {
                // Every result was handed out: no more input can come (a call fed by submits
                // learns it only here).
                self.close_input();
                self.stager.end_call();
                self.finish_progress();
                backend.end_call();
                return Ok(None);
            } else {
                return Err(Error::new(
                    ErrorKind::Panic,
                    "pj internal error: a streaming call stalled",
                ));
            }
        }
        let (index, data, failure) = self.arrived.read();
        let error = failure.map(|(failure, worker)| backend.task_error(index, failure, worker));
        Ok(Some(Streamed { index, data, error }))
    }

    /// Stops queued work and waits for the outcomes of everything in flight, so that no worker still
    /// uses the caller's data (userdata, callbacks) when this returns; then ends the call. Running
    /// tasks are waited for on every backend (process workers are not killed): they see the abort
    /// through `pj_out_cancelled` and may end early.
    pub fn abandon(self, backend: Option<&Backend>, batching: &mut Batching) {
        self.link.drain.store(true, Ordering::Relaxed);
        self.stop_and_end(backend, batching);
    }

    /// Ends a call whose `next` returned the call's failure (a task's, the producer's, a
    /// cancellation): the abort stays without `drain`, as in `finish`, so process workers running a
    /// task are killed instead of waited for; waits for the outcomes in flight, then ends the call.
    pub fn end_failed(self, backend: Option<&Backend>, batching: &mut Batching) {
        self.stop_and_end(backend, batching);
    }

    /// Aborts the call (with `drain` as the caller set it), waits for the outcomes in flight and
    /// ends the call: its spill files go back for reuse, progress reports the abort.
    fn stop_and_end(mut self, backend: Option<&Backend>, batching: &mut Batching) {
        // Release: whoever sees the abort sees `drain` too.
        self.link.abort.store(true, Ordering::Release);
        self.producer = None;
        self.drain(batching);
        self.stager.end_call();
        let snapshot = Snapshot {
            aborting: true,
            ..self.snapshot()
        };
        if let Some(progress) = self.progress.take() {
            progress.finish(&snapshot);
        }
        if let Some(backend) = backend {
            backend.end_call();
        }
    }

    /// Records that the producer failed with `error`: the call stops and returns it.
    fn fail_producer(&mut self, error: Error) {
        self.link.abort.store(true, Ordering::Relaxed);
        self.producer = None;
        self.producer_error.get_or_insert(error);
    }

    fn push(&mut self, backend: &Backend, batching: &mut Batching, callback: Callback, arg: &[u8]) {
        if self.failed() {
            return;
        }
        if let Err(error) = self.stager.push(&mut self.pending, callback, arg) {
            // The argument could not be stored (its spill file): the error names the task.
            let error = match error.kind() {
                ErrorKind::Io => backend.task_error(
                    self.submitted,
                    &TaskFailure::Io(format!(
                        "its argument ({} bytes) cannot be stored: {}",
                        arg.len(),
                        error.message()
                    )),
                    WorkerId::Caller,
                ),
                _ => error,
            };
            self.fail_producer(error);
            return;
        }
        self.submitted += 1;
        self.pending_bytes = self.pending_bytes.saturating_add(arg.len());
        let full = self.pending.len() >= batching.size()
            || (batching.is_auto() && self.pending_bytes >= batching.max_bytes());
        if full {
            // Auto-batching sizes the next batch from the latest durations, so it takes in every
            // completion first. A fixed size takes them in only when the window is full (as
            // joblib, which reports each completion and then dispatches one more batch), so the
            // counters each verbose line is chosen from do not depend on how fast tasks ran.
            if batching.is_auto() {
                self.absorb_ready(batching);
            }
            if self.failed() {
                return;
            }
            batching.record_arg_bytes(self.pending.len(), std::mem::take(&mut self.pending_bytes));
            if let Some(change) = batching.adjust()
                && let Some(progress) = self.progress.as_mut()
            {
                progress.batch_size_changed(&change);
            }
            let next = self.stager.batch(self.submitted, batching.size());
            let batch = std::mem::replace(&mut self.pending, next);
            self.dispatch(backend, batch);
        }
    }

    /// Calls the producer once; at its end (or error) the producer is dropped.
    fn produce_one(&mut self, backend: &Backend, batching: &mut Batching) {
        if self.check_cancelled() {
            return;
        }
        let (Some(mut producer), Some(callback)) = (self.producer.take(), self.callback) else {
            return;
        };
        // The producer is out of `self` while it runs, so its sink can copy the item straight into
        // the pending batch.
        let produced = producer(&mut |arg: &[u8]| self.push(backend, batching, callback, arg));
        match produced {
            Ok(true) => self.producer = Some(producer),
            // joblib's `_original_iterator = None`: later completions are reported against the
            // tasks dispatched, and the one completing the last task prints "finished".
            Ok(false) => {
                self.note_input_end();
                if self.completed_tasks == 0 && self.submitted > 0 && self.pre_dispatch.is_some() {
                    self.end_unseen = true;
                } else {
                    self.input_done = true;
                }
            }
            Err(error) => self.fail_producer(error),
        }
    }

    /// Whether one more task fits in the window. `counting_unread`: count results not yet handed
    /// out (pj pulls from a producer for a reader of `next`).
    fn has_room(&self, batching: &Batching, counting_unread: bool) -> bool {
        let Some(pre_dispatch) = self.pre_dispatch else {
            return true;
        };
        let window = pre_dispatch.saturating_mul(batching.size());
        let unread = if counting_unread {
            self.arrived.unread()
        } else {
            0
        };
        self.pending.len() + self.in_flight_tasks + unread < window
    }

    /// Blocks until one more task fits in the window (or the call failed).
    fn wait_for_room(&mut self, backend: &Backend, batching: &mut Batching, counting_unread: bool) {
        while !self.failed() && !self.has_room(batching, counting_unread) {
            if self.in_flight > 0 {
                // A completion makes room; the pending batch keeps filling up to full size.
                self.wait_one(batching);
            } else if !self.pending.is_empty() {
                self.flush(backend, false);
            } else {
                return;
            }
        }
    }

    /// Dispatches the pending batch; at the end of the input, spread thinly over the workers
    /// (joblib splits a tail into 10 × n_jobs pieces to limit stragglers).
    fn flush(&mut self, backend: &Backend, end_of_input: bool) {
        if self.failed() || self.pending.is_empty() {
            return;
        }
        let next = self.stager.batch(self.submitted, 0);
        let mut batch = std::mem::replace(&mut self.pending, next);
        self.pending_bytes = 0;
        let chunk = if !end_of_input || backend.runs_inline() {
            batch.len()
        } else {
            (batch.len() / (10 * backend.workers())).max(1)
        };
        if batch.len() <= chunk {
            self.dispatch(backend, batch);
            return;
        }
        // Pieces are cut from the end, so that each byte is copied once (cutting from the front
        // would copy the whole rest at every cut), and dispatched in task order.
        let mut pieces = Vec::with_capacity(batch.len().div_ceil(chunk));
        while batch.len() > chunk {
            let at = (batch.len() - 1) / chunk * chunk;
            pieces.push(batch.split_off(at));
        }
        self.dispatch(backend, batch);
        while let Some(piece) = pieces.pop() {
            self.dispatch(backend, piece);
        }
    }

    fn dispatch(&mut self, backend: &Backend, mut batch: Batch) {
        batch.dispatched_at = Some(Instant::now());
        self.in_flight += 1;
        self.in_flight_tasks += batch.len();
        self.dispatched_batches += 1;
        self.dispatched_tasks += batch.len();
        // An inline backend runs the batch right here: a SIGINT meanwhile stops it after the
        // current task.
        let _sigint = if backend.runs_inline() {
            self.sigint.as_ref().map(SigintGuard::enter)
        } else {
            None
        };
        backend.dispatch(batch, &self.link);
    }

    /// Takes in every outcome that is already there, without blocking.
    fn absorb_ready(&mut self, batching: &mut Batching) {
        while let Ok(outcome) = self.replies.try_recv() {
            self.absorb(outcome, batching);
        }
    }

    /// Blocks for one outcome, or until the call is cancelled.
    fn wait_one(&mut self, batching: &mut Batching) {
        let _sigint = self.sigint.as_ref().map(SigintGuard::enter);
        loop {
            // The call holds a sender of its own reply channel, so this cannot disconnect. The
            // timeout only lets a cancellation (an atomic store, async-signal-safe) be seen.
            let replies = &self.replies;
            let arrived = || match replies.try_recv() {
                Ok(outcome) => Some(Ok(outcome)),
                Err(crossbeam_channel::TryRecvError::Empty) => None,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    Some(Err(crossbeam_channel::RecvTimeoutError::Disconnected))
                }
            };
            match crate::spin::wait(arrived, || replies.recv_timeout(CANCEL_POLL)) {
                Ok(outcome) => {
                    self.absorb(outcome, batching);
                    // A cancellation's first effect may be this outcome (a process worker killed
                    // by the abort): the call must not take the room it makes for a new task.
                    self.check_cancelled();
                    return;
                }
                Err(_) if self.check_cancelled() => return,
                Err(_) => {}
            }
        }
    }

    /// Records a cancellation requested from outside; true when the call is cancelled.
    fn check_cancelled(&mut self) -> bool {
        let reason = self.cancelled.load(Ordering::Relaxed);
        if reason == 0 {
            return false;
        }
        if !self.failed() {
            let message = if reason == CancelReason::Sigint as u8 {
                "the call was cancelled by SIGINT (handle_sigint)"
            } else {
                "the call was cancelled (pj_parallel_cancel)"
            };
            self.fail_producer(Error::new(ErrorKind::Cancelled, message));
        }
        true
    }

    /// Blocks until every dispatched batch has reported.
    fn drain(&mut self, batching: &mut Batching) {
        while self.in_flight > 0 {
            self.wait_one(batching);
        }
    }

    fn absorb(&mut self, mut outcome: BatchOutcome, batching: &mut Batching) {
        self.in_flight -= 1;
        self.in_flight_tasks -= outcome.size;
        if let Some((index, failure)) = outcome.failure.take() {
            if self.failure.is_none() {
                self.failure = Some(Failure {
                    index,
                    failure,
                    worker: outcome.worker,
                });
            }
            return;
        }
        if batching.is_auto() {
            let large: usize = outcome.large.iter().map(|(_, out)| out.bytes().len()).sum();
            batching.record_result_bytes(outcome.completed(), outcome.data.len() + large);
        }
        if outcome.completed() == outcome.size {
            batching.record(outcome.size, outcome.seconds);
            self.completed_tasks += outcome.size;
            if !self.failed() {
                let snapshot = self.snapshot();
                if let Some(progress) = self.progress.as_mut() {
                    progress.completed(&snapshot);
                }
            }
        }
        if std::mem::take(&mut self.end_unseen) {
            self.input_done = true;
        }
        if self.failed() || outcome.completed() == 0 {
            return;
        }
        self.arrived.push(outcome);
    }
}
