//! One call's dispatching: forming batches, handing them to the backend, collecting outcomes in
//! submission order, and failing fast.
//!
//! The dispatcher sees only [`Backend::dispatch`] and the outcomes on its reply channel; it knows
//! nothing about threads or processes.

pub mod batching;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, unbounded};

pub use batching::{Batching, SizeChange};

use crate::backend::{Backend, CallLink};
use crate::error::{Error, ErrorKind, TaskContext};
use crate::task::{Batch, BatchOutcome, Callback, TaskFailure};

/// The ordered results of a call: task `i`'s output is `data[ends[i-1]..ends[i]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Results {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Results {
    /// Number of results (one per task).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the call had no task.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Task `index`'s output bytes.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)?;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        Some(&self.data[start..end])
    }

    /// Joins successful batch outcomes (any order) into submission order.
    fn from_outcomes(mut outcomes: Vec<BatchOutcome>) -> Results {
        outcomes.sort_unstable_by_key(|o| o.first);
        if outcomes.len() == 1 {
            let only = outcomes.pop().unwrap_or_else(|| unreachable!());
            return Results {
                data: only.data,
                ends: only.ends,
            };
        }
        let total_bytes = outcomes.iter().map(|o| o.data.len()).sum();
        let total_tasks = outcomes.iter().map(|o| o.ends.len()).sum();
        let mut results = Results {
            data: Vec::with_capacity(total_bytes),
            ends: Vec::with_capacity(total_tasks),
        };
        for outcome in outcomes {
            let base = results.data.len();
            results.data.extend_from_slice(&outcome.data);
            results
                .ends
                .extend(outcome.ends.iter().map(|end| base + end));
        }
        results
    }
}

/// The first failure seen, by task index, and which worker saw it.
#[derive(Clone, Debug)]
struct Failure {
    index: usize,
    failure: TaskFailure,
    worker: usize,
}

/// The state of one call, from its first task to its results.
#[derive(Debug)]
pub struct Call {
    link: CallLink,
    replies: Receiver<BatchOutcome>,
    submitted: usize,
    pending: Batch,
    in_flight: usize,
    outcomes: Vec<BatchOutcome>,
    failure: Option<Failure>,
    /// Set when the producer (not a task) failed; reported as the call's error.
    producer_error: Option<Error>,
}

impl Call {
    /// A call with nothing submitted yet; `capacity` sizes the first batch.
    pub fn new(capacity: usize) -> Self {
        let (reply, replies) = unbounded();
        Call {
            link: CallLink {
                reply,
                abort: Arc::new(AtomicBool::new(false)),
            },
            replies,
            submitted: 0,
            pending: Batch::new(0, capacity),
            in_flight: 0,
            outcomes: Vec::new(),
            failure: None,
            producer_error: None,
        }
    }

    /// Number of tasks submitted so far.
    pub fn submitted(&self) -> usize {
        self.submitted
    }

    /// True once a task failed (or the producer did): nothing more will be dispatched.
    pub fn failed(&self) -> bool {
        self.failure.is_some() || self.producer_error.is_some()
    }

    /// Adds a task; dispatches the pending batch once it reaches the current batch size.
    pub fn submit(
        &mut self,
        backend: &Backend,
        batching: &mut Batching,
        callback: Callback,
        arg: &[u8],
    ) {
        if self.failed() {
            return;
        }
        self.pending.push(callback, arg);
        self.submitted += 1;
        if self.pending.len() >= batching.size() {
            self.absorb_ready(batching);
            if self.failed() {
                return;
            }
            batching.adjust();
            let next = Batch::new(self.submitted, batching.size());
            let batch = std::mem::replace(&mut self.pending, next);
            self.dispatch(backend, batch);
        }
    }

    /// The error the call ends with, once something failed.
    pub fn failure_error(&self, backend: &Backend) -> Option<Error> {
        if let Some(error) = &self.producer_error {
            return Some(error.clone());
        }
        self.failure
            .as_ref()
            .map(|failure| failure_error(failure, backend))
    }

    /// Records that the producer failed with `error`: the call stops and returns it.
    pub fn fail_producer(&mut self, error: Error) {
        self.link.abort.store(true, Ordering::Relaxed);
        self.producer_error.get_or_insert(error);
    }

    /// Dispatches what is pending (spreading a tail over the workers, as joblib does to limit
    /// stragglers), waits for every outcome, and returns the ordered results or the first failure.
    pub fn finish(mut self, backend: &Backend, batching: &mut Batching) -> Result<Results, Error> {
        if !self.failed() && !self.pending.is_empty() {
            let tail = std::mem::replace(&mut self.pending, Batch::new(self.submitted, 0));
            let chunk = match backend {
                Backend::Sequential => tail.len(),
                _ => (tail.len() / (10 * backend.workers())).max(1),
            };
            self.dispatch_split(backend, tail, chunk);
        }
        self.drain(batching);
        if let Some(error) = self.failure_error(backend) {
            return Err(error);
        }
        Ok(Results::from_outcomes(std::mem::take(&mut self.outcomes)))
    }

    /// Stops queued work and waits for outcomes of everything in flight, so that no worker still uses
    /// the caller's data (userdata, callbacks) when the call returns.
    pub fn abandon(mut self, batching: &mut Batching) {
        self.link.abort.store(true, Ordering::Relaxed);
        self.drain(batching);
    }

    fn dispatch_split(&mut self, backend: &Backend, mut batch: Batch, chunk: usize) {
        while batch.len() > chunk {
            let rest = batch.split_off(chunk);
            self.dispatch(backend, batch);
            batch = rest;
        }
        if !batch.is_empty() {
            self.dispatch(backend, batch);
        }
    }

    fn dispatch(&mut self, backend: &Backend, mut batch: Batch) {
        batch.dispatched_at = Some(Instant::now());
        self.in_flight += 1;
        backend.dispatch(batch, &self.link);
    }

    /// Takes in every outcome that is already there, without blocking.
    fn absorb_ready(&mut self, batching: &mut Batching) {
        while let Ok(outcome) = self.replies.try_recv() {
            self.absorb(outcome, batching);
        }
    }

    /// Blocks until every dispatched batch has reported.
    fn drain(&mut self, batching: &mut Batching) {
        while self.in_flight > 0 {
            match self.replies.recv() {
                Ok(outcome) => self.absorb(outcome, batching),
                // Unreachable: the call holds a sender of its own reply channel.
                Err(_) => break,
            }
        }
    }

    fn absorb(&mut self, mut outcome: BatchOutcome, batching: &mut Batching) {
        self.in_flight -= 1;
        if let Some((index, failure)) = outcome.failure.take() {
            let earlier = self.failure.as_ref().is_none_or(|f| index < f.index);
            if earlier {
                self.failure = Some(Failure {
                    index,
                    failure,
                    worker: outcome.worker,
                });
            }
            return;
        }
        if outcome.completed() == outcome.size {
            batching.record(outcome.size, outcome.seconds);
        }
        if !self.failed() {
            self.outcomes.push(outcome);
        }
    }
}

fn failure_error(failure: &Failure, backend: &Backend) -> Error {
    let Failure {
        index,
        ref failure,
        worker,
    } = *failure;
    let (kind, code, message) = match failure {
        TaskFailure::Returned {
            code,
            message: Some(text),
        } => (
            ErrorKind::TaskFailed,
            Some(*code),
            format!("task {index} failed with code {code}: {text}"),
        ),
        TaskFailure::Returned {
            code,
            message: None,
        } => (
            ErrorKind::TaskFailed,
            Some(*code),
            format!("task {index} failed with code {code}"),
        ),
        TaskFailure::Panicked(text) => (
            ErrorKind::Panic,
            None,
            format!("task {index}: pj panicked: {text}"),
        ),
    };
    Error::new(kind, message).with_task(TaskContext {
        index,
        code,
        backend: backend.name(),
        worker: backend.describe_worker(worker),
    })
}
