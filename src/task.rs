//! What one task is, how a batch of tasks runs, and where task output goes.
//!
//! A task is a C callback, its `userdata` and a snapshot of its argument bytes. Tasks travel in
//! [`Batch`]es; a batch runs its tasks one after another ([`run_batch`]) on whichever worker took it
//! (or inline, for the sequential backend), writing every result into one growing arena so that a task
//! costs no allocation of its own.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The task callback, exactly as C declares `pj_task_fn` (the header's typedef lives in `ffi`).
///
/// This is a type, not an export: the C boundary itself stays in `ffi`.
pub type TaskFn = unsafe extern "C" fn(
    userdata: *mut c_void,
    arg: *const u8,
    arg_len: usize,
    out: *mut TaskOutput,
) -> i32;

/// A callback plus the `userdata` it is called with.
#[derive(Clone, Copy, Debug)]
pub struct Callback {
    func: TaskFn,
    userdata: *mut c_void,
}

// SAFETY: the C API documents that a task callback may be called from any worker thread, concurrently,
// with the `userdata` given at submission; making that safe is the caller's obligation, so moving the
// (pointer, function) pair to a worker thread is exactly what the contract allows.
unsafe impl Send for Callback {}
// SAFETY: as for `Send`: concurrent calls with the same `userdata` are part of the documented contract.
unsafe impl Sync for Callback {}

impl Callback {
    /// The function and userdata as integers, for the wire to a forked worker.
    pub fn to_raw(self) -> (usize, usize) {
        (self.func as usize, self.userdata as usize)
    }

    /// Rebuilds a callback from [`Callback::to_raw`]'s integers.
    ///
    /// # Safety
    /// `raw` must come from `to_raw` in this process or in the process this one was forked from
    /// (same address space image), under `Callback::new`'s contract.
    pub unsafe fn from_raw(raw: (usize, usize)) -> Self {
        // SAFETY: per this function's contract the integer is a valid `TaskFn` address here.
        let func = unsafe { std::mem::transmute::<usize, TaskFn>(raw.0) };
        Callback {
            func,
            userdata: raw.1 as *mut c_void,
        }
    }

    /// Pairs a callback with its userdata.
    ///
    /// # Safety
    /// `func` must be safe to call with `userdata` from any thread, concurrently, until the call that
    /// submitted it has returned (the C API's documented contract).
    pub unsafe fn new(func: TaskFn, userdata: *mut c_void) -> Self {
        Callback { func, userdata }
    }
}

/// A task's output handle, lent to the task callback for the duration of the call: write the
/// result with `pj_out_set` (copy) or `pj_out_alloc` (in place), attach a failure message with
/// `pj_out_error`. Each write replaces the previous one. Never keep it after the callback returns.
///
/// Under the hood: a window at the end of its batch's output arena, so a task allocates nothing of
/// its own.
#[derive(Debug)]
pub struct TaskOutput {
    arena: Vec<u8>,
    start: usize,
    message: Option<String>,
}

impl TaskOutput {
    /// Replaces the task's output with a copy of `data`.
    pub fn set(&mut self, data: &[u8]) {
        self.arena.truncate(self.start);
        self.arena.extend_from_slice(data);
    }

    /// Replaces the task's output with `len` zeroed bytes and returns them for writing in place.
    pub fn alloc(&mut self, len: usize) -> &mut [u8] {
        self.arena.truncate(self.start);
        self.arena.resize(self.start + len, 0);
        &mut self.arena[self.start..]
    }

    /// Attaches an error message, reported if the callback returns non-zero.
    pub fn set_message(&mut self, message: String) {
        self.message = Some(message);
    }

    /// The bytes written so far (for tests and the safe API).
    pub fn data(&self) -> &[u8] {
        &self.arena[self.start..]
    }
}

/// Tasks with consecutive indices, run one after another by one worker.
#[derive(Debug)]
pub struct Batch {
    /// Index of the first task in submission order.
    pub first: usize,
    callbacks: Vec<Callback>,
    args: Vec<u8>,
    arg_ends: Vec<usize>,
    /// When the batch was handed to the backend (for auto batching).
    pub dispatched_at: Option<Instant>,
}

impl Batch {
    /// An empty batch whose first task will have index `first`, with room for `capacity` tasks.
    pub fn new(first: usize, capacity: usize) -> Self {
        Batch {
            first,
            callbacks: Vec::with_capacity(capacity),
            args: Vec::new(),
            arg_ends: Vec::with_capacity(capacity),
            dispatched_at: None,
        }
    }

    /// Appends a task, copying its argument bytes.
    pub fn push(&mut self, callback: Callback, arg: &[u8]) {
        self.callbacks.push(callback);
        self.args.extend_from_slice(arg);
        self.arg_ends.push(self.args.len());
    }

    /// Number of tasks in the batch.
    pub fn len(&self) -> usize {
        self.callbacks.len()
    }

    /// True when the batch has no task.
    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty()
    }

    /// The batch's parts, for the wire: callbacks, concatenated arguments, argument end offsets.
    pub fn parts(&self) -> (&[Callback], &[u8], &[usize]) {
        (&self.callbacks, &self.args, &self.arg_ends)
    }

    /// Rebuilds a batch from the parts `parts` gave (the process backend's worker side).
    pub fn from_parts(
        first: usize,
        callbacks: Vec<Callback>,
        args: Vec<u8>,
        arg_ends: Vec<usize>,
    ) -> Self {
        Batch {
            first,
            callbacks,
            args,
            arg_ends,
            dispatched_at: None,
        }
    }

    /// Splits off the tasks from position `at` on into a new batch (used to spread a tail).
    pub fn split_off(&mut self, at: usize) -> Batch {
        let arg_start = if at == 0 { 0 } else { self.arg_ends[at - 1] };
        let callbacks = self.callbacks.split_off(at);
        let args = self.args.split_off(arg_start);
        let arg_ends = self
            .arg_ends
            .split_off(at)
            .into_iter()
            .map(|end| end - arg_start)
            .collect();
        Batch {
            first: self.first + at,
            callbacks,
            args,
            arg_ends,
            dispatched_at: None,
        }
    }
}

/// Why a task did not produce a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskFailure {
    /// The callback returned a non-zero code, with the message it attached (if any).
    Returned { code: i32, message: Option<String> },
    /// pj's own code panicked while running the task.
    Panicked(String),
    /// No worker could be started to run the task (fork or socket failure).
    Spawn(String),
    /// The worker process running the task died.
    Died {
        /// The worker's process id.
        pid: i32,
        /// How it died.
        death: Death,
    },
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// Killed by this signal.
    Signal(i32),
    /// Exited (exit() or _exit()) with this status, even 0: a task never ends its worker.
    Exited(i32),
    /// Gone, status unknown (it was reaped by someone else).
    Unknown,
}

/// What came back from running a batch.
#[derive(Debug)]
pub struct BatchOutcome {
    /// Index of the batch's first task.
    pub first: usize,
    /// Number of tasks the batch held when dispatched.
    pub size: usize,
    /// Concatenated outputs of the tasks that completed, in order.
    pub data: Vec<u8>,
    /// End offset in `data` of each completed task's output.
    pub ends: Vec<usize>,
    /// The first failure in the batch: (task index, failure). Tasks after it did not run.
    pub failure: Option<(usize, TaskFailure)>,
    /// Seconds from dispatch to completion (auto batching's sample).
    pub seconds: f64,
    /// Which worker ran it: the worker's number in its pool (0 for the sequential backend).
    pub worker: usize,
}

impl BatchOutcome {
    /// Number of tasks that produced a result.
    pub fn completed(&self) -> usize {
        self.ends.len()
    }
}

/// Runs every task of `batch` in order, stopping at the first failure or when `abort` is raised
/// (set by whichever worker fails first, so queued work stops everywhere).
///
/// `progress`, when given, receives `index + 1` of each task just before it starts: the process
/// backend reads it from shared memory to name the task a dead worker was running.
pub fn run_batch(
    batch: Batch,
    abort: &AtomicBool,
    worker: usize,
    progress: Option<&AtomicU64>,
) -> BatchOutcome {
    let size = batch.len();
    let mut out = TaskOutput {
        arena: Vec::new(),
        start: 0,
        message: None,
    };
    let mut ends = Vec::with_capacity(size);
    let mut failure = None;
    let mut arg_start = 0;
    for (offset, (callback, &arg_end)) in batch.callbacks.iter().zip(&batch.arg_ends).enumerate() {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let arg = &batch.args[arg_start..arg_end];
        arg_start = arg_end;
        if let Some(progress) = progress {
            progress.store((batch.first + offset + 1) as u64, Ordering::Relaxed);
        }
        out.start = out.arena.len();
        // SAFETY: `Callback::new`'s contract makes the callback callable here with its userdata; `arg`
        // is a live slice for the duration of the call and `out` a live, exclusive TaskOutput.
        let code = unsafe { (callback.func)(callback.userdata, arg.as_ptr(), arg.len(), &mut out) };
        if code != 0 {
            out.arena.truncate(out.start);
            abort.store(true, Ordering::Relaxed);
            failure = Some((
                batch.first + offset,
                TaskFailure::Returned {
                    code,
                    message: out.message.take(),
                },
            ));
            break;
        }
        out.message = None;
        ends.push(out.arena.len());
    }
    let seconds = batch
        .dispatched_at
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    BatchOutcome {
        first: batch.first,
        size,
        data: out.arena,
        ends,
        failure,
        seconds,
        worker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn double_it(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: run_batch passes a valid (arg, len) slice and a live output.
        let (arg, out) = unsafe { (std::slice::from_raw_parts(arg, len), &mut *out) };
        let x = u64::from_ne_bytes(arg.try_into().unwrap());
        if x == 3 {
            out.set_message("three is bad".into());
            return 7;
        }
        out.set(&(2 * x).to_ne_bytes());
        0
    }

    fn batch_of(first: usize, values: &[u64]) -> Batch {
        // SAFETY: double_it is a plain function that ignores its userdata.
        let cb = unsafe { Callback::new(double_it, std::ptr::null_mut()) };
        let mut batch = Batch::new(first, values.len());
        for v in values {
            batch.push(cb, &v.to_ne_bytes());
        }
        batch
    }

    #[test]
    fn runs_in_order_and_stops_at_failure() {
        let abort = AtomicBool::new(false);
        let outcome = run_batch(batch_of(10, &[1, 2, 3, 4]), &abort, 0, None);
        assert_eq!(outcome.completed(), 2);
        assert_eq!(&outcome.data[..8], &2u64.to_ne_bytes());
        assert_eq!(
            outcome.failure,
            Some((
                12,
                TaskFailure::Returned {
                    code: 7,
                    message: Some("three is bad".into())
                }
            ))
        );
        assert!(abort.load(Ordering::Relaxed));
    }

    #[test]
    fn split_off_keeps_arguments_aligned() {
        let mut batch = batch_of(5, &[1, 2, 4, 5]);
        let tail = batch.split_off(1);
        assert_eq!(tail.first, 6);
        let abort = AtomicBool::new(false);
        let outcome = run_batch(tail, &abort, 0, None);
        let values: Vec<u64> = outcome
            .data
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![4, 8, 10]);
        assert_eq!(run_batch(batch, &abort, 0, None).completed(), 1);
    }
}
