//! What one task is, how a batch of tasks runs, and where task output goes.
//!
//! A task is a C callback, its `userdata` and a snapshot of its argument bytes. Tasks travel in
//! [`Batch`]es; a batch runs its tasks one after another ([`run_batch`]) on whichever worker took it
//! (or inline, for the sequential backend), writing every result into one arena so that a task
//! costs no allocation of its own. On threads and sequential the arena is memory the executor
//! reuses (see `recycle`), sized from what its recent batches wrote.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod recycle;
mod worker;

pub use recycle::{Arena, ArgBuffers, BufferPool, KEPT_BYTES};
pub use worker::WorkerId;

/// The task callback, exactly as C declares `pj_task_fn` (the header's typedef lives in `ffi`).
///
/// This is a type, not an export: the C boundary itself stays in `ffi`.
pub type TaskFn = unsafe extern "C" fn(
    userdata: *mut c_void,
    arg: *const u8,
    arg_len: usize,
    out: *mut TaskOutput,
) -> i32;

/// A range function (`pj_range_fn` without the Option): runs the items `start..end`.
pub type RangeFn = unsafe extern "C" fn(
    userdata: *mut c_void,
    start: usize,
    end: usize,
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

    /// The function.
    pub fn func(self) -> TaskFn {
        self.func
    }

    /// The userdata it is called with.
    pub fn userdata(self) -> *mut c_void {
        self.userdata
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

/// Where a worker process puts the outputs above a size instead of its batch's arena: memory it
/// shares with the caller (a result slab), written in place by the task and read in place by the
/// caller, so that a large result crosses no socket and is never copied by pj.
///
/// Every method is called on the thread running the batch, between tasks or from inside the
/// running task's `pj_out_*` calls; none may unmap memory it handed out before the batch ends.
pub trait LargeSink {
    /// Outputs longer than this many bytes go to the sink (when it has room for them).
    fn above(&self) -> usize;
    /// `len` writable bytes for the running task's output (zeroed when `zeroed`), replacing the
    /// window it had (whose bytes stay readable until the batch ends). `None` when the sink has
    /// no room for it: the output then goes to the arena.
    fn window(&mut self, len: usize, zeroed: bool) -> Option<std::ptr::NonNull<u8>>;
    /// The running task's window is not its output (a smaller output replaced it, or the task
    /// failed): the sink may hand it out again.
    fn release(&mut self);
    /// The running task's window holds its output: task `index`, the first `len` bytes.
    fn commit(&mut self, index: usize, len: usize);
}

/// A task's output handle, lent to the task callback for the duration of the call: write the
/// result with `pj_out_set` (copy) or `pj_out_alloc` (in place), attach a failure message with
/// `pj_out_error`. Each write replaces the previous one. Never keep it after the callback returns.
///
/// Under the hood: a window at the end of its batch's output arena, so a task allocates nothing of
/// its own, and the flag that stops the task's call (for `pj_out_cancelled`).
#[derive(Debug)]
pub struct TaskOutput {
    arena: Arena,
    start: usize,
    message: Option<String>,
    /// The size of the last write, when it could not be allocated: the task then fails (unless a
    /// later write succeeds), whatever its callback returns.
    failed_alloc: Option<usize>,
    /// The running batch's abort flag ([`RunContext::abort`]); valid while the callback runs,
    /// which is the only time a `TaskOutput` is lent out.
    stop: *const AtomicBool,
    /// Where outputs above its size go (a worker process's result slabs); valid while the batch
    /// runs, like `stop`.
    sink: Option<*mut dyn LargeSink>,
    /// The output, when it lies in a window of `sink`: its start and length.
    large: Option<(std::ptr::NonNull<u8>, usize)>,
}

impl TaskOutput {
    /// Makes room for an output of `len` bytes (the previous output is dropped); false, with the
    /// output empty and the failure recorded, when the memory cannot be had. Never aborts.
    fn make_room(&mut self, len: usize) -> bool {
        self.drop_large();
        self.arena.truncate(self.start);
        if !self.arena.try_reserve(len) {
            self.failed_alloc = Some(len);
            return false;
        }
        self.failed_alloc = None;
        true
    }

    /// Replaces the task's output with a copy of `data`. False when the bytes cannot be
    /// allocated: the output is then empty and the task fails (unless a later write succeeds).
    /// `data` may lie inside the output itself (a C caller passing back part of the window
    /// `pj_out_alloc` gave it), or anywhere in the arena's memory: those bytes are moved to the
    /// window's start (allocating only when they reach past the arena's end).
    pub fn set(&mut self, data: &[u8]) -> bool {
        if let Some(window) = self.sink_window(data.len(), false) {
            // SAFETY: `window` begins `data.len()` writable bytes of the sink; `data` is readable
            // (it may overlap the window: an earlier window's bytes stay mapped, and `copy` is a
            // memmove).
            unsafe { std::ptr::copy(data.as_ptr(), window.as_ptr(), data.len()) };
            return true;
        }
        if let Some(from) = self.arena.offset_of(data).filter(|_| !data.is_empty()) {
            // Only the range is used from here on, not `data`: the arena moves the bytes itself
            // (they may overlap where they go, and lie anywhere in the arena's memory).
            if !self.arena.move_within(from..from + data.len(), self.start) {
                self.failed_alloc = Some(data.len());
                return false;
            }
            self.failed_alloc = None;
            return true;
        }
        if !self.make_room(data.len()) {
            return false;
        }
        self.arena.extend_from_slice(data);
        true
    }

    /// Shortens the output to its first `len` bytes (an output written in place larger than it
    /// turned out to be). False, with the output unchanged, when it is shorter than `len`.
    pub fn truncate(&mut self, len: usize) -> bool {
        if let Some((_, have)) = &mut self.large {
            if len > *have {
                return false;
            }
            *have = len;
            return true;
        }
        if len > self.arena.len() - self.start {
            return false;
        }
        self.arena.truncate(self.start + len);
        true
    }

    /// Replaces the task's output with `len` zeroed bytes and returns them for writing in place (in
    /// a reused arena, an earlier output's bytes are zeroed again).
    /// `None` when they cannot be allocated: the output is then empty and the task fails (unless a
    /// later write succeeds).
    pub fn alloc(&mut self, len: usize) -> Option<&mut [u8]> {
        if let Some(window) = self.sink_window(len, true) {
            // SAFETY: `window` begins `len` writable, zeroed bytes of the sink, which stay mapped
            // (and are not handed out again) until the task's output is released or committed.
            return Some(unsafe { std::slice::from_raw_parts_mut(window.as_ptr(), len) });
        }
        if !self.make_room(len) {
            return None;
        }
        // Room was reserved: this cannot allocate.
        Some(self.arena.grow(len))
    }

    /// Attaches an error message, reported if the callback returns non-zero.
    pub fn set_message(&mut self, message: String) {
        self.message = Some(message);
    }

    /// The bytes written so far (for tests and the safe API).
    pub fn data(&self) -> &[u8] {
        match self.large {
            // SAFETY: the window's first `len` bytes, mapped until the batch ends.
            Some((at, len)) => unsafe { std::slice::from_raw_parts(at.as_ptr(), len) },
            None => &self.arena[self.start..],
        }
    }

    /// A window of `len` bytes of the sink for the output (which then lies there), when there is
    /// a sink, `len` is above its size and it has room; the arena's part of the output is
    /// emptied. `None`: the output goes to the arena as usual.
    #[inline]
    fn sink_window(&mut self, len: usize, zeroed: bool) -> Option<std::ptr::NonNull<u8>> {
        let sink = self.sink?;
        // SAFETY: `sink` outlives the batch's run (see `run_batch_with`) and is only used from
        // the thread running it.
        let sink = unsafe { &mut *sink };
        if len <= sink.above() {
            return None;
        }
        let window = sink.window(len, zeroed)?;
        self.arena.truncate(self.start);
        self.failed_alloc = None;
        self.large = Some((window, len));
        Some(window)
    }

    /// The output no longer lies in the sink: its window goes back to it.
    fn drop_large(&mut self) {
        if self.large.take().is_some()
            && let Some(sink) = self.sink
        {
            // SAFETY: as in `sink_window`.
            unsafe { &mut *sink }.release();
        }
    }

    /// Whether the task's call is stopping: cancelled (`pj_parallel_cancel`, SIGINT with
    /// handle_sigint), failed under fail-fast, or abandoned (its executor is being freed). One
    /// relaxed atomic load: cheap enough for a callback to poll in its loop.
    pub fn cancelled(&self) -> bool {
        // SAFETY: `stop` points to the abort flag of the batch this output belongs to, which
        // `run_batch` borrows for longer than any callback holding this output can run.
        unsafe { &*self.stop }.load(Ordering::Relaxed)
    }
}

/// Tasks with consecutive indices, run one after another by one worker.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Index of the first task in submission order.
    pub first: usize,
    callbacks: Vec<Callback>,
    args: Vec<u8>,
    arg_ends: Vec<usize>,
    /// When the batch was handed to the backend (for auto batching).
    pub dispatched_at: Option<Instant>,
    /// Tasks already known to have failed in an earlier attempt at this batch (on_error=collect,
    /// after their worker died or timed out): not run again, reported with this failure. Sorted.
    pub forced: Vec<(usize, TaskFailure)>,
    /// Tasks whose argument lives in a spill file instead of `args` (process backend, arguments
    /// above max_nbytes), by task index, sorted; their range in `args` is empty. The files
    /// themselves are the call's, which its backend passes to the workers.
    pub spilled: Vec<(usize, ArgRef)>,
    /// Where `args` goes back when the batch is dropped (a batch made by
    /// [`Batch::with_buffers`]), so that a later batch reuses its pages.
    recycle: Option<ArgBuffers>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(buffers) = &self.recycle {
            buffers.give(std::mem::take(&mut self.args));
        }
    }
}

/// Where a spilled argument lives: a byte range of one spill file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgRef {
    /// The file's id, unique in this process (workers cache descriptors and mappings by it).
    pub file: u64,
    /// Page-aligned offset of the argument in the file.
    pub offset: u64,
    /// The argument's length.
    pub len: usize,
}

/// At most this many tasks' room is set aside when a batch is created; larger batches grow as tasks
/// come (a fixed batch_size is a limit, not a promise that many tasks will come).
const PREALLOCATED_TASKS: usize = 4096;

impl Batch {
    /// An empty batch whose first task will have index `first`, with room for `capacity` tasks
    /// (up to a few thousand; more grow as they come).
    pub fn new(first: usize, capacity: usize) -> Self {
        let capacity = capacity.min(PREALLOCATED_TASKS);
        Batch {
            first,
            callbacks: Vec::with_capacity(capacity),
            args: Vec::new(),
            arg_ends: Vec::with_capacity(capacity),
            dispatched_at: None,
            forced: Vec::new(),
            spilled: Vec::new(),
            recycle: None,
        }
    }

    /// [`Batch::new`] whose arguments are copied into a buffer taken from `buffers`, given back
    /// when the batch (or any copy or piece of it) is dropped.
    pub fn with_buffers(first: usize, capacity: usize, buffers: &ArgBuffers) -> Self {
        let mut batch = Batch::new(first, capacity);
        batch.args = buffers.take(None);
        batch.recycle = Some(buffers.clone());
        batch
    }

    /// The executor's buffer pool this batch's arguments came from (and go back to), if any.
    pub fn pool(&self) -> Option<&BufferPool> {
        self.recycle.as_ref()
    }

    /// Appends a task whose argument was written to a spill file, at `arg`.
    pub fn push_spilled(&mut self, callback: Callback, arg: ArgRef) {
        let index = self.first + self.callbacks.len();
        self.callbacks.push(callback);
        self.arg_ends.push(self.args.len());
        self.spilled.push((index, arg));
    }

    /// Appends a task, copying its argument bytes; an I/O error, with the batch unchanged, when
    /// the memory for the copy cannot be had (arguments are sized by the caller: never abort).
    pub fn push(&mut self, callback: Callback, arg: &[u8]) -> crate::Result<()> {
        let reserved = self.args.try_reserve(arg.len()).and_then(|()| {
            self.callbacks.try_reserve(1)?;
            self.arg_ends.try_reserve(1)
        });
        if let Err(error) = reserved {
            return Err(crate::Error::new(
                crate::ErrorKind::Io,
                format!(
                    "cannot copy a task argument of {} bytes: {error}",
                    arg.len()
                ),
            ));
        }
        self.callbacks.push(callback);
        self.args.extend_from_slice(arg);
        self.arg_ends.push(self.args.len());
        Ok(())
    }

    /// Number of tasks the batch has room for without growing.
    pub fn capacity(&self) -> usize {
        self.callbacks.capacity()
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
            forced: Vec::new(),
            spilled: Vec::new(),
            recycle: None,
        }
    }

    /// The batch's argument bytes, taken out of it, the batch left with its tasks (rank 0 sends
    /// them apart from the rest of the batch, which must no longer run).
    pub fn take_args(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.args)
    }

    /// The batch's argument bytes, taken out of it (a worker process receives the next batch's
    /// into the same memory).
    pub fn into_args(mut self) -> Vec<u8> {
        std::mem::take(&mut self.args)
    }

    /// A copy of this batch for another attempt, with task `index` recorded as failed (`failure`)
    /// so that the attempt skips it: on_error=collect's way past a worker that died or timed out.
    pub fn retry_without(&self, index: usize, failure: TaskFailure) -> Batch {
        let mut retry = self.clone();
        let at = retry.forced.partition_point(|(i, _)| *i < index);
        retry.forced.insert(at, (index, failure));
        retry
    }

    /// Whether task `index` is skipped because an earlier attempt already failed it.
    fn is_forced(&self, index: usize) -> bool {
        !self.forced.is_empty()
            && self
                .forced
                .binary_search_by_key(&index, |(i, _)| *i)
                .is_ok()
    }

    /// Splits off the tasks from position `at` on into a new batch (used to spread a tail).
    pub fn split_off(&mut self, at: usize) -> Batch {
        let arg_start = if at == 0 { 0 } else { self.arg_ends[at - 1] };
        let callbacks = self.callbacks.split_off(at);
        // The tail's bytes go into a reused buffer when this batch has a free list.
        let args = match &self.recycle {
            Some(buffers) => {
                let mut args = buffers.take(Some(self.args.len() - arg_start));
                args.extend_from_slice(&self.args[arg_start..]);
                self.args.truncate(arg_start);
                args
            }
            None => self.args.split_off(arg_start),
        };
        let arg_ends = self
            .arg_ends
            .split_off(at)
            .into_iter()
            .map(|end| end - arg_start)
            .collect();
        let split_index = self.first + at;
        let spilled_at = self.spilled.partition_point(|(i, _)| *i < split_index);
        let spilled = self.spilled.split_off(spilled_at);
        Batch {
            first: split_index,
            callbacks,
            args,
            arg_ends,
            dispatched_at: None,
            forced: Vec::new(),
            spilled,
            recycle: self.recycle.clone(),
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
    /// pj could not run the task or keep its output: no worker could be started or reached (fork,
    /// socket, a batch that cannot be decoded), or memory for its output could not be allocated.
    /// Reported as an I/O error.
    Io(String),
    /// The worker process running the task died.
    Died {
        /// The worker's process id.
        pid: i32,
        /// How it died.
        death: Death,
        /// For SIGSEGV and SIGBUS caught by the worker's crash handler: the faulting address.
        fault_address: Option<u64>,
        /// The crashing thread's stack as the worker's crash handler recorded it, one frame per
        /// line, innermost first (symbolized when symbols exist); `None` when nothing was recorded
        /// (a death by SIGKILL or exit, say).
        backtrace: Option<String>,
    },
    /// The task ran past the call's timeout and its worker was stopped.
    TimedOut {
        /// The configured limit.
        limit: Duration,
        /// How long the task had run when it was stopped.
        elapsed: Duration,
    },
    /// The worker process of the task's batch was stuck outside any task (receiving, mapping or
    /// returning the batch, or ending after a failure of pj's own) for longer than the call's
    /// timeout and was stopped: no task was running, the batch could not complete.
    Stalled {
        /// The configured limit.
        limit: Duration,
        /// How long the worker had been outside any task when it was stopped.
        elapsed: Duration,
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
    /// No sign of life for this many seconds: an MPI rank that stopped answering (its process
    /// is on another machine, or the MPI runtime keeps the job going without it).
    Silent(u32),
}

/// What came back from running a batch.
#[derive(Debug)]
pub struct BatchOutcome {
    /// Index of the batch's first task.
    pub first: usize,
    /// Number of tasks the batch held when dispatched.
    pub size: usize,
    /// Concatenated outputs of the tasks that completed, in order (in its executor's reused
    /// memory, which it goes back to when dropped, on threads and sequential).
    pub data: Arena,
    /// End offset in `data` of each completed task's output.
    pub ends: Vec<usize>,
    /// A failure that ends the call (fail-fast mode): (task index, failure). Tasks after it did
    /// not run.
    pub failure: Option<(usize, TaskFailure)>,
    /// With on_error=collect: every failed task of the batch, by index (sorted). Each still has an
    /// (empty) entry in `ends`, so results stay aligned with task indices.
    pub errors: Vec<(usize, TaskFailure)>,
    /// Outputs kept outside `data` by the backend (process backend: results above max_nbytes
    /// in result slabs, mapped; MPI: results received apart): (task index, output), sorted. Their entry in `ends`
    /// is empty.
    pub large: Vec<(usize, LargeOutput)>,
    /// Seconds from dispatch to completion (auto batching's sample), set by the backend as it
    /// reports the outcome (`CallLink::send`, the one place every backend samples).
    pub seconds: f64,
    /// Which worker ran it (or was to run it), as error reports name it.
    pub worker: WorkerId,
}

/// A task's output kept outside its batch's arena, in memory its backend owns (a result above
/// max_nbytes that a process worker wrote to a file, mapped by the parent): read in place, never
/// copied, and released when this is dropped (when the caller frees the call's results).
pub struct LargeOutput(Box<dyn AsRef<[u8]> + Send + Sync>);

impl LargeOutput {
    /// An output whose bytes `owner` holds (and releases when dropped).
    pub fn new(owner: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        LargeOutput(Box::new(owner))
    }

    /// The output's bytes.
    pub fn bytes(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl AsRef<[u8]> for LargeOutput {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::fmt::Debug for LargeOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LargeOutput({} bytes)", self.bytes().len())
    }
}

impl BatchOutcome {
    /// Number of tasks that produced a result (with on_error=collect, failed ones included).
    pub fn completed(&self) -> usize {
        self.ends.len()
    }

    /// An outcome with no result and no failure of its own: a batch that never ran (the call was
    /// aborted before it started, or while it ran).
    pub fn skipped(batch: &Batch, worker: WorkerId) -> BatchOutcome {
        BatchOutcome {
            first: batch.first,
            size: batch.len(),
            data: Arena::default(),
            ends: Vec::new(),
            failure: None,
            errors: Vec::new(),
            large: Vec::new(),
            seconds: 0.0,
            worker,
        }
    }

    /// The outcome of a batch that failed as a whole at task `index` (fail-fast).
    pub fn failed(
        batch: &Batch,
        worker: WorkerId,
        index: usize,
        failure: TaskFailure,
    ) -> BatchOutcome {
        BatchOutcome {
            failure: Some((index, failure)),
            ..BatchOutcome::skipped(batch, worker)
        }
    }

    /// Appends the outcome of the batch's next part (`next.first` is where this one ended: every
    /// task of this part completed, without a fail-fast failure), as one outcome for both: a
    /// backend that ran a batch in parts (a worker replaced part-way) reports it whole. False,
    /// with this outcome unchanged, when the memory for `next`'s bytes cannot be had.
    pub fn append(&mut self, next: BatchOutcome) -> bool {
        debug_assert!(self.failure.is_none());
        debug_assert_eq!(self.first + self.completed(), next.first);
        if !self.data.try_reserve(next.data.len())
            || self.ends.try_reserve(next.ends.len()).is_err()
        {
            return false;
        }
        let offset = self.data.len();
        self.data.extend_from_slice(&next.data);
        self.ends.extend(next.ends.iter().map(|end| end + offset));
        self.size += next.size;
        self.errors.extend(next.errors);
        self.large.extend(next.large);
        if next.failure.is_some() {
            // Reports name the worker that ran the failing task.
            self.worker = next.worker;
        }
        self.failure = next.failure;
        true
    }

    /// Adds the failures decided before this attempt ran (`Batch::forced`) to the collected errors.
    pub fn merge_forced(&mut self, forced: &[(usize, TaskFailure)]) {
        if forced.is_empty() {
            return;
        }
        self.errors.extend(forced.iter().cloned());
        self.errors.sort_by_key(|(index, _)| *index);
    }
}

/// What a worker publishes about the task it is running, for whoever watches it: the index (to
/// name the task a dead worker was running) and, for calls with a timeout, when it started.
/// Process workers keep it in a shared page, so every field is a plain atomic.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Running {
    /// index + 1 of the running (or last run) task; 0 before the batch's first task.
    index: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds at the running task's start; 0 when not timed or between
    /// batches.
    started_ns: AtomicU64,
    /// Raised by a watchdog that gave up on this worker: finish no further task.
    abandoned: AtomicBool,
}

impl Running {
    /// Records that task `index` starts now (`timed`: also its start time).
    fn start(&self, index: usize, timed: bool) {
        if timed {
            self.started_ns
                .store(monotonic_ns().max(1), Ordering::Relaxed);
        }
        self.index.store(index as u64 + 1, Ordering::Release);
    }

    /// Clears the start time (the batch is over: nothing of it can time out any more).
    pub fn stop_clock(&self) {
        self.started_ns.store(0, Ordering::Release);
    }

    /// Clears everything before a new batch.
    pub fn reset(&self) {
        self.index.store(0, Ordering::Relaxed);
        self.started_ns.store(0, Ordering::Release);
        self.abandoned.store(false, Ordering::Relaxed);
    }

    /// The index of the running (or last run) task, if any started.
    pub fn index(&self) -> Option<usize> {
        let raw = self.index.load(Ordering::Acquire);
        (raw > 0).then(|| (raw - 1) as usize)
    }

    /// The running task and how long it has run, when its clock runs.
    pub fn elapsed(&self) -> Option<(usize, Duration)> {
        let started = self.started_ns.load(Ordering::Acquire);
        if started == 0 {
            return None;
        }
        let index = self.index()?;
        Some((
            index,
            Duration::from_nanos(monotonic_ns().saturating_sub(started)),
        ))
    }

    /// Marks the worker as given up on (threads: its late results are dropped).
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine, so a parent can
/// time a task its forked worker started.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// How a call's tasks run, wherever its batches run: the per-call settings a worker thread reads
/// from its call, and a worker process or MPI rank receives with each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSettings {
    /// Record each task's start time (the call has a timeout; its watcher holds the limit).
    pub timed: bool,
    /// on_error=collect: a failed task does not stop the batch.
    pub collect: bool,
}

/// How a worker runs a batch.
#[derive(Clone, Copy, Debug)]
pub struct RunContext<'a> {
    /// Raised on the first failure (fail-fast), a cancellation or when the call is abandoned: no
    /// further task starts, and running callbacks see it through `pj_out_cancelled`.
    pub abort: &'a AtomicBool,
    /// Which worker runs the batch.
    pub worker: WorkerId,
    /// Where the worker publishes its running task, when someone watches it.
    pub running: Option<&'a Running>,
    /// The call's settings.
    pub settings: RunSettings,
    /// The bytes of the batch's spilled arguments, mapped by the worker: (task index, bytes),
    /// sorted like `Batch::spilled`.
    pub spilled: &'a [(usize, &'a [u8])],
}

impl<'a> RunContext<'a> {
    /// Plain fail-fast running, unwatched.
    pub fn new(abort: &'a AtomicBool, worker: WorkerId) -> Self {
        RunContext {
            abort,
            worker,
            running: None,
            settings: RunSettings::default(),
            spilled: &[],
        }
    }
}

/// Runs every task of `batch` in order. In fail-fast mode the batch stops at the first failure,
/// raising `abort` so that queued work stops everywhere; with `collect`, a failed task gets an
/// empty result and an entry in `errors`, and the batch goes on. Tasks in `batch.forced` are not
/// run (their failures are the caller's to merge). Any worker stops before its next task once
/// `abort` is raised (or its `running` record is abandoned).
///
/// With a `sink` (a worker process's result slabs), the outputs above its size are written
/// there instead of the arena: such a task's entry in `ends` is empty, and the sink is told its
/// index ([`LargeSink::commit`]).
pub fn run_batch(
    batch: &Batch,
    ctx: RunContext<'_>,
    sink: Option<&mut dyn LargeSink>,
) -> BatchOutcome {
    let size = batch.len();
    // The executor's reused memory when the batch has a pool (threads, sequential).
    let arena = batch
        .recycle
        .as_ref()
        .map_or_else(Arena::default, |pool| pool.take_output(size));
    let mut out = TaskOutput {
        arena,
        start: 0,
        message: None,
        failed_alloc: None,
        stop: ctx.abort,
        sink: sink.map(|sink| {
            let sink: *mut (dyn LargeSink + '_) = sink;
            // SAFETY: only the lifetime is erased: `out`, the only holder of the pointer, lives
            // in this function, shorter than the borrow of `sink`.
            unsafe { std::mem::transmute::<*mut (dyn LargeSink + '_), *mut dyn LargeSink>(sink) }
        }),
        large: None,
    };
    let mut ends = Vec::with_capacity(size);
    let mut failure = None;
    let mut errors = Vec::new();
    let mut arg_start = 0;
    let mut spilled = ctx.spilled.iter().peekable();
    for (offset, (callback, &arg_end)) in batch.callbacks.iter().zip(&batch.arg_ends).enumerate() {
        if ctx.abort.load(Ordering::Relaxed) {
            break;
        }
        let index = batch.first + offset;
        let mut arg = &batch.args[arg_start..arg_end];
        arg_start = arg_end;
        if let Some((_, bytes)) = spilled.next_if(|(i, _)| *i == index) {
            arg = bytes;
        }
        out.start = out.arena.len();
        if batch.is_forced(index) {
            ends.push(out.arena.len());
            continue;
        }
        if let Some(running) = ctx.running {
            if running.is_abandoned() {
                break;
            }
            running.start(index, ctx.settings.timed);
        }
        // SAFETY: `Callback::new`'s contract makes the callback callable here with its userdata; `arg`
        // is a live slice for the duration of the call and `out` a live, exclusive TaskOutput.
        let code = unsafe { (callback.func)(callback.userdata, arg.as_ptr(), arg.len(), &mut out) };
        if let Some(len) = out.failed_alloc.take() {
            // The output could not be kept: the task failed, whatever its callback returned.
            out.drop_large();
            out.arena.truncate(out.start);
            out.message = None;
            let lost = TaskFailure::Io(format!(
                "cannot allocate its output of {len} bytes (pj_out_alloc / pj_out_set): out of \
                 memory"
            ));
            if ctx.settings.collect {
                errors.push((index, lost));
                ends.push(out.arena.len());
                continue;
            }
            ctx.abort.store(true, Ordering::Relaxed);
            failure = Some((index, lost));
            break;
        }
        if code != 0 {
            out.drop_large();
            out.arena.truncate(out.start);
            let returned = TaskFailure::Returned {
                code,
                message: out.message.take(),
            };
            if ctx.settings.collect {
                errors.push((index, returned));
                ends.push(out.arena.len());
                continue;
            }
            if ctx.abort.load(Ordering::Relaxed) {
                // The call was already stopping (cancelled, or another task failed): this failure
                // is likely the callback's answer to pj_out_cancelled, not the call's cause. The
                // batch ends as one cut short by the abort.
                break;
            }
            ctx.abort.store(true, Ordering::Relaxed);
            failure = Some((index, returned));
            break;
        }
        out.message = None;
        if let (Some((_, len)), Some(sink)) = (out.large.take(), out.sink) {
            // SAFETY: as in `TaskOutput::sink_window`.
            unsafe { &mut *sink }.commit(index, len);
        }
        ends.push(out.arena.len());
    }
    if let Some(running) = ctx.running {
        running.stop_clock();
    }
    if let Some(pool) = &batch.recycle {
        pool.note_output(out.arena.len(), ends.len());
    }
    BatchOutcome {
        first: batch.first,
        size,
        data: out.arena,
        ends,
        failure,
        errors,
        large: Vec::new(),
        seconds: 0.0,
        worker: ctx.worker,
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
            batch.push(cb, &v.to_ne_bytes()).unwrap();
        }
        batch
    }

    #[test]
    fn runs_in_order_and_stops_at_failure() {
        let abort = AtomicBool::new(false);
        let outcome = run_batch(
            &batch_of(10, &[1, 2, 3, 4]),
            RunContext::new(&abort, WorkerId::Caller),
            None,
        );
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
    fn a_batch_with_buffers_gives_its_arguments_back_when_dropped_and_so_do_its_pieces() {
        let buffers = ArgBuffers::default();
        let mut batch = Batch::with_buffers(5, 4, &buffers);
        let callback = batch_of(0, &[0]).callbacks[0];
        for value in [1u64, 2, 4, 5] {
            batch.push(callback, &value.to_ne_bytes()).unwrap();
        }
        let tail = batch.split_off(1);
        let abort = AtomicBool::new(false);
        let outcome = run_batch(&tail, RunContext::new(&abort, WorkerId::Caller), None);
        assert_eq!(outcome.data.len(), 24, "the piece keeps its arguments");
        assert_eq!(buffers.kept(), 0);
        drop(tail);
        drop(batch);
        assert_eq!(buffers.kept(), 2);
        let again = Batch::with_buffers(0, 1, &buffers);
        assert!(again.args.is_empty() && again.args.capacity() > 0);
    }

    #[test]
    fn split_off_keeps_arguments_aligned() {
        let mut batch = batch_of(5, &[1, 2, 4, 5]);
        let tail = batch.split_off(1);
        assert_eq!(tail.first, 6);
        let abort = AtomicBool::new(false);
        let outcome = run_batch(&tail, RunContext::new(&abort, WorkerId::Caller), None);
        let values: Vec<u64> = outcome
            .data
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![4, 8, 10]);
        assert_eq!(
            run_batch(&batch, RunContext::new(&abort, WorkerId::Caller), None).completed(),
            1
        );
    }
}
