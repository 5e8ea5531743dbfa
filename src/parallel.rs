//! The `Parallel` object: resolved settings, a reusable worker pool, and at most one call at a time.
//!
//! A call is a run of `submit`s, or a producer (`map` runs it whole; `imap` streams it through
//! `next`), ended by `collect`, by `next` reporting the end, or by an error. A call belongs to the
//! thread that started it until it ends: any other thread touching the object meanwhile gets
//! [`ErrorKind::Busy`] at once, as does a task that uses the object running it (joblib's "This
//! Parallel instance is already running !").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use crate::backend::{Backend, ProcessPool, SpillSpace, ThreadPool};
use crate::config::{BackendKind, Config, OnError, ProgressMode, Resolved, StartMethod};
use crate::dispatch::{
    Batching, Call, CallOptions, CancelReason, Producer, Results, Stop, Streamed,
};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::{Expected, Progress, StdStreams, Stream, VerboseSettings};
use crate::task::{ArgBuffers, Callback};

/// A configured parallel executor; see the module docs for the one-call-at-a-time rule.
#[derive(Debug)]
pub struct Parallel {
    settings: Resolved,
    /// The thread whose call is in flight (0: none). Only the owner ever locks `state`, so an intruder
    /// is turned away without touching the lock, and the owner never waits for one.
    owner: AtomicU64,
    /// Cancellation of the call in flight, reachable without the lock.
    stop: Stop,
    state: Mutex<State>,
    /// The fork generation and process this object was created in: a copy inherited by a forked
    /// child refuses calls (its pool's threads and workers are the parent's).
    born: (u64, u32),
}

#[derive(Debug)]
struct State {
    backend: Option<Backend>,
    batching: Batching,
    call: Option<Call>,
    /// The next call's size, announced by `expect`; taken when that call starts.
    expected: Option<Expected>,
    /// Argument buffers that every call's batches reuse, so that a later call copies its
    /// arguments into pages an earlier one already mapped.
    buffers: ArgBuffers,
    /// Spill files (process workers' arguments above max_nbytes) that every call reuses, so that
    /// a later call writes its arguments into file pages an earlier one allocated and kept
    /// workers still map.
    spill_space: SpillSpace,
}

/// Exclusive access for the owning thread; on drop, ownership ends unless a submit/collect call is
/// still in flight.
struct Entered<'a> {
    owner: &'a AtomicU64,
    guard: Option<MutexGuard<'a, State>>,
}

impl std::ops::Deref for Entered<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Entered<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let call_in_flight = self
            .guard
            .as_ref()
            .is_some_and(|state| state.call.is_some());
        // Unlock before giving up ownership, so the next owner never finds the lock still held.
        drop(self.guard.take());
        if !call_in_flight {
            self.owner.store(0, Ordering::Release);
        }
    }
}

impl Parallel {
    /// Resolves `config` (layered over this thread's scoped defaults, and adjusted for nesting) and
    /// prepares an executor; workers start with the first call.
    pub fn new(config: &Config) -> Result<Self> {
        crate::failpoint::init();
        let mut layered = crate::config::scope::with_scopes(config);
        // joblib's nesting policy: inside a task, threads one level down, sequential below that,
        // unless the call names its backend.
        match crate::nesting::level() {
            0 => {}
            1 => {
                layered.backend.get_or_insert(BackendKind::Threads);
            }
            _ => {
                layered.backend.get_or_insert(BackendKind::Sequential);
            }
        }
        if crate::backend::spawn::is_spawned_worker() {
            return Err(Error::invalid(
                "this process was started as a pj worker (start_method \"spawn\"): its main must call \
                 pj_worker_main_if_requested(argc, argv) right after its pj_register calls, before \
                 creating executors",
            ));
        }
        let mut settings = layered.resolve(crate::cpu::cpu_count())?;
        if let Some(replaced) = settings.sharedmem_replaced
            && let Some(note) = crate::progress::verbose::forced_to_threads_note(
                settings.verbose,
                replaced,
                BackendKind::Threads.joblib_class_name(),
            )
        {
            // joblib prints it with a bare print: stdout, whatever the verbose level.
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(note.as_bytes());
        }
        // Before the object exists, hence before any fork can copy it.
        crate::fork::register_handlers();
        if settings.backend == BackendKind::Mpi {
            use_mpi_ranks(&mut settings)?;
        }
        if settings.start_method == StartMethod::ForkServer
            && settings.backend == BackendKind::Processes
            && !settings.sequential
        {
            // Now, while the caller may still be small: its workers are forks of this copy.
            crate::backend::forkserver::ensure_started().map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot start the fork server (start_method \"forkserver\"): {e}"),
                )
            })?;
        }
        let batching = Batching::new(settings.batch_size).with_max_bytes(settings.batch_bytes);
        let state = State {
            backend: None,
            batching,
            call: None,
            expected: None,
            buffers: ArgBuffers::default(),
            spill_space: SpillSpace::default(),
        };
        Ok(Parallel {
            settings,
            owner: AtomicU64::new(0),
            stop: Stop::default(),
            state: Mutex::new(state),
            born: (crate::fork::generation(), std::process::id()),
        })
    }

    /// Whether this object was inherited through a fork (this process is not the one that created
    /// it). Such an object refuses calls; freeing it must leak it (see `pj_parallel_free`).
    pub fn inherited(&self) -> bool {
        self.born.0 != crate::fork::generation()
    }

    /// The settings every call of this object uses.
    pub fn settings(&self) -> &Resolved {
        &self.settings
    }

    /// Adds one task to the current call, starting a call if none is in flight. Blocks while
    /// pre_dispatch × batch size tasks are submitted and not completed.
    ///
    /// Once a task has failed, this returns that failure and accepts nothing more; `collect` (or
    /// `next`) then ends the call with the same error.
    pub fn submit(&self, callback: Callback, arg: &[u8]) -> Result<()> {
        self.check_callback(callback)?;
        let mut entered = self.enter()?;
        let state = &mut *entered;
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        let call = match &mut state.call {
            Some(call) => call,
            empty => empty.insert(new_call(
                &self.settings,
                &mut state.batching,
                &self.stop,
                backend,
                state.expected.take(),
                &state.buffers,
                &state.spill_space,
            )),
        };
        call.submit(backend, &mut state.batching, callback, arg);
        if let Some(error) = call.failure_error(backend) {
            // Report the failure now (the producer loop should stop), but keep the call: collect
            // reports it again and ends the call.
            return Err(error);
        }
        Ok(())
    }

    /// Ends the current call: runs what remains (a producer's inputs included), waits for every task
    /// and returns the results not yet handed out by `next`, in input order, or the first failure.
    /// Without a call in flight it returns no results.
    pub fn collect(&self) -> Result<Results> {
        let mut entered = self.enter()?;
        let state = &mut *entered;
        let Some(call) = state.call.take() else {
            return Ok(Results::default());
        };
        // A call exists only after its backend was created.
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        call.finish(backend, &mut state.batching)
    }

    /// Runs a whole call on this thread: pulls every input from `producer` (paced by completions),
    /// runs `callback` on each, and returns the results in input order. A call of this thread still
    /// in flight is abandoned first.
    pub fn map(&self, callback: Callback, producer: Producer) -> Result<Results> {
        self.map_expecting(callback, producer, None)
    }

    /// [`Parallel::map`] for a call whose size is known (`pj_parallel_for`), announced to
    /// progress reporting in place of anything `expect` announced.
    pub fn map_expecting(
        &self,
        callback: Callback,
        producer: Producer,
        expected: Option<Expected>,
    ) -> Result<Results> {
        self.check_callback(callback)?;
        let mut entered = self.enter()?;
        let state = &mut *entered;
        let call = self.producer_call(state, callback, producer, expected)?;
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        call.finish(backend, &mut state.batching)
    }

    /// Starts a streaming call whose inputs `producer` gives, pulled by `next` (on the thread that
    /// calls it) only while the window has room. A call of this thread still in flight is abandoned
    /// first.
    pub fn imap(&self, callback: Callback, producer: Producer) -> Result<()> {
        self.check_callback(callback)?;
        let mut entered = self.enter()?;
        let state = &mut *entered;
        state.call = Some(self.producer_call(state, callback, producer, None)?);
        Ok(())
    }

    /// A call of `producer`'s inputs for `map` and `imap`: abandons this thread's call in flight
    /// first, and sizes the new one by `expected`, else by what `expect` announced (taken either
    /// way: an announcement is for one call).
    fn producer_call(
        &self,
        state: &mut State,
        callback: Callback,
        producer: Producer,
        expected: Option<Expected>,
    ) -> Result<Call> {
        abandon_call(state);
        let announced = state.expected.take();
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        Ok(new_call(
            &self.settings,
            &mut state.batching,
            &self.stop,
            backend,
            expected.or(announced),
            &state.buffers,
            &state.spill_space,
        )
        .with_producer(callback, producer))
    }

    /// Announces the size of the next call (the one the next submit, map or imap starts) to
    /// progress reporting: see [`Expected`]. Refused while a call fed by submits is in flight
    /// (its size must be known before its first completion is reported).
    pub fn expect(&self, expected: Expected) -> Result<()> {
        let mut entered = self.enter()?;
        let state = &mut *entered;
        if state.call.is_some() {
            return Err(Error::invalid(
                "pj_parallel_expect: a call is in flight; announce a call's size before its \
                 first submit (or collect the call first)",
            ));
        }
        state.expected = Some(expected);
        Ok(())
    }

    /// Hands the next result of the current call to `read` (in input order, or in completion order
    /// for `return_as = generator_unordered`). `Ok(None)` when every result has been handed out: the
    /// call is then over. The view `read` gets stays valid, unchanged, until this object is used
    /// again by the owning thread (the streaming contract of `pj_parallel_next`).
    pub fn next<R>(&self, read: impl FnOnce(Streamed<'_>) -> R) -> Result<Option<R>> {
        let mut entered = self.enter()?;
        let state = &mut *entered;
        let Some(call) = state.call.as_mut() else {
            return Ok(None);
        };
        let backend = ensure_backend(&mut state.backend, &self.settings)?;
        match call.next(backend, &mut state.batching) {
            Ok(Some(streamed)) => Ok(Some(read(streamed))),
            Ok(None) => {
                state.call = None;
                Ok(None)
            }
            Err(error) => {
                // As collect and map do on a failure or a cancellation: running process workers
                // are killed (abandon would let them finish, which may take as long as they like).
                if let Some(call) = state.call.take() {
                    call.end_failed(state.backend.as_ref(), &mut state.batching);
                }
                Err(error)
            }
        }
    }

    /// Cancels the call in flight, if any: it stops dispatching, running process workers are killed
    /// (threads finish their current task, which sees `pj_out_cancelled`), and the blocked call
    /// returns [`ErrorKind::Cancelled`] once no task of it runs. No effect when no call is in flight.
    /// Only atomic stores: callable from any thread or a signal handler.
    pub fn cancel(&self) {
        self.stop.cancel(CancelReason::Requested);
    }

    /// Whether tasks run in processes that are not forks of the caller (spawned workers, MPI
    /// ranks): tasks must then name registered functions, without userdata. `Some` names the
    /// setting responsible, for messages.
    pub fn needs_registered_tasks(&self) -> Option<&'static str> {
        if self.settings.backend == BackendKind::Mpi {
            // Even on one rank (sequential), so that a program behaves the same under -n 1.
            return Some("backend \"mpi\"");
        }
        if self.settings.backend != BackendKind::Processes || self.settings.sequential {
            return None;
        }
        match self.settings.start_method {
            StartMethod::Fork => None,
            StartMethod::Spawn => Some("start_method \"spawn\""),
            StartMethod::ForkServer => Some("start_method \"forkserver\""),
        }
    }

    /// With spawned workers or MPI ranks, a task's function must be registered and its userdata
    /// NULL: such a process has neither the caller's function addresses nor its memory.
    fn check_callback(&self, callback: Callback) -> Result<()> {
        let Some(setting) = self.needs_registered_tasks() else {
            return Ok(());
        };
        if crate::registry::index_of(callback.func()).is_none() {
            return Err(Error::invalid(format!(
                "with {setting}, task functions must be registered with pj_register (in every \
                 process, before pj_worker_main_if_requested or pj_mpi_main)",
            )));
        }
        if !callback.userdata().is_null() {
            return Err(Error::invalid(format!(
                "with {setting}, userdata must be NULL: the workers do not share the caller's \
                 memory (pass data in the task's argument bytes)",
            )));
        }
        Ok(())
    }

    /// Claims the object for this thread (or confirms it owns it) and locks its state; BUSY when
    /// another thread's call is in flight or this thread re-enters from inside a task.
    fn enter(&self) -> Result<Entered<'_>> {
        let me = current_thread();
        let owned = self.owner.load(Ordering::Acquire) == me;
        if !owned
            && self
                .owner
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            // Also a copy inherited by a fork while another thread's call was in flight (a
            // process worker's task using the executor that runs it).
            return Err(busy());
        }
        if self.inherited() {
            if !owned {
                self.owner.store(0, Ordering::Release);
            }
            return Err(Error::invalid(format!(
                "this executor was created in process {}; this process is a fork of it, where its \
                 workers do not exist: create a new executor in the child",
                self.born.1
            )));
        }
        let mut entered = Entered {
            owner: &self.owner,
            guard: None,
        };
        entered.guard = Some(match self.state.try_lock() {
            Ok(guard) => guard,
            // Only the owner locks, so this is the owner re-entering from one of its own tasks; the
            // outer frame still holds the lock and keeps ownership.
            Err(TryLockError::WouldBlock) => {
                std::mem::forget(entered);
                return Err(busy());
            }
            // A panic inside pj (reported as PJ_STATUS_PANIC) left the state half-updated: drop the
            // call it was in; the pool and the batch statistics are still sound.
            Err(TryLockError::Poisoned(poisoned)) => {
                self.state.clear_poison();
                let mut guard = poisoned.into_inner();
                let state = &mut *guard;
                if let Some(call) = state.call.take() {
                    call.abandon(state.backend.as_ref(), &mut state.batching);
                }
                guard
            }
        });
        Ok(entered)
    }
}

/// Stops the call in flight, if any (a new call by its owner replaces it).
fn abandon_call(state: &mut State) {
    if let Some(old) = state.call.take() {
        old.abandon(state.backend.as_ref(), &mut state.batching);
    }
}

/// Progress reporting for a call, when verbose lines, a bar or a callback are wanted; prints the
/// "Using backend" line of a parallel call.
fn progress_for(
    settings: &Resolved,
    workers: usize,
    expected: Option<Expected>,
) -> Option<Progress> {
    let bar = settings.progress == ProgressMode::Bar;
    if settings.verbose <= 0 && !bar && settings.progress_hook.is_none() {
        return None;
    }
    let verbose = VerboseSettings {
        n_jobs_requested: settings.n_jobs_requested,
        verbose: settings.verbose,
        // joblib's len(iterable): the number of tasks, announced.
        total_tasks: expected.map(|e| e.tasks()),
        pre_dispatch_tasks: settings.pre_dispatch_tasks().ok().flatten().unwrap_or(0),
    };
    let mut progress = Progress::new(verbose, Box::new(Instant::now()), Box::new(StdStreams));
    if let Some(expected) = expected {
        progress = progress.with_expected(expected);
    }
    if let Some(hook) = settings.progress_hook {
        progress = progress.with_callback(Box::new(move |done, total, elapsed| {
            // SAFETY: the documented `pj_progress_fn` contract: callable with its userdata on the
            // thread that drives the call, until the object is freed.
            unsafe { hook.call(done, total, elapsed) }
        }));
    }
    if bar {
        let terminal = Stream::Stderr.is_terminal();
        progress = progress.with_bar(
            Stream::Stderr,
            terminal,
            terminal.then(|| Stream::Stderr.columns()).flatten(),
        );
    }
    if settings.sequential {
        progress = progress.sequential();
    } else {
        progress.start(settings.backend_class_name, workers);
    }
    Some(progress)
}

fn new_call(
    settings: &Resolved,
    batching: &mut Batching,
    stop: &Stop,
    backend: &Backend,
    expected: Option<Expected>,
    buffers: &ArgBuffers,
    spill_space: &SpillSpace,
) -> Call {
    // Each call learns its own batch size, as joblib resets its statistics at each call.
    batching.reset();
    if settings.sequential
        && let Some(limit) = settings.timeout
    {
        warn_timeout_ignored(limit);
    }
    // resolve() already evaluated pre_dispatch for this n_jobs, so this cannot fail; "all" if it did.
    let pre_dispatch = settings.pre_dispatch_tasks().ok().flatten();
    let options = CallOptions {
        pre_dispatch,
        order: settings.return_as,
        first_batch: batching.size(),
        timeout: settings.timeout,
        collect: settings.on_error == OnError::Collect,
        handle_sigint: settings.handle_sigint,
    };
    let stager = backend
        .stager(
            settings.max_nbytes,
            settings.mmap_mode,
            settings.temp_folder.as_deref(),
        )
        .with_buffers(buffers.clone())
        .with_spill_space(spill_space);
    Call::new(options, stop)
        .with_progress(progress_for(settings, backend.workers(), expected))
        .with_stager(stager)
}

impl Drop for Parallel {
    fn drop(&mut self) {
        // An unfinished call is abandoned: queued tasks are skipped, running ones are waited for, so no
        // worker uses the caller's data after the object is gone.
        let inherited = self.inherited();
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inherited {
            // A copy made by fork: its threads and workers are the parent's (joining or killing
            // them here would hang or hit the parent's), its temp files too. Leak them.
            std::mem::forget(state.call.take());
            std::mem::forget(state.backend.take());
            // Its spill files' mappings were not inherited (MADV_DONTFORK): unmapping their
            // addresses here could unmap whatever this process mapped there since.
            std::mem::forget(std::mem::take(&mut state.spill_space));
            return;
        }
        if let Some(call) = state.call.take() {
            call.abandon(state.backend.as_ref(), &mut state.batching);
        }
    }
}

fn ensure_backend<'a>(slot: &'a mut Option<Backend>, settings: &Resolved) -> Result<&'a Backend> {
    if slot.is_none() {
        let cannot = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("cannot start the workers' threads: {e}"),
            )
        };
        let backend = if settings.sequential {
            Backend::Sequential
        } else if settings.backend == BackendKind::Mpi {
            Backend::Mpi(crate::backend::MpiPool::connect(settings.n_jobs)?)
        } else if settings.backend == BackendKind::Processes {
            Backend::Processes(
                ProcessPool::new(
                    settings.n_jobs,
                    settings.keep_workers,
                    settings.start_method,
                    settings.stack_size,
                    settings.recycling,
                )
                .map_err(cannot)?,
            )
        } else {
            Backend::Threads(ThreadPool::new(settings.n_jobs, settings.stack_size).map_err(cannot)?)
        };
        *slot = Some(backend);
    }
    Ok(slot.as_ref().unwrap_or_else(|| unreachable!()))
}

/// Backend "mpi": the worker ranks are the workers. n_jobs caps how many are used (1 keeps the
/// call on rank 0, sequential, as n_jobs=1 does everywhere); unset or negative uses them all; an
/// MPI job of one rank runs its calls sequentially.
fn use_mpi_ranks(settings: &mut Resolved) -> Result<()> {
    let ranks =
        crate::backend::mpi::worker_ranks().ok_or_else(crate::backend::mpi::not_attached)?;
    let wanted = match settings.n_jobs_requested {
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX).min(ranks),
        _ => ranks,
    };
    settings.sequential = ranks == 0 || settings.n_jobs_requested == Some(1);
    settings.n_jobs = wanted.max(1);
    Ok(())
}

/// joblib's warning when a timeout is set on the sequential path (one thread cannot watch itself),
/// written to stderr as one line.
fn warn_timeout_ignored(limit: std::time::Duration) {
    use std::io::Write;
    let seconds = limit.as_secs_f64();
    // Python's repr of a float, as joblib's message shows it: 0.5, 2.0.
    let shown = if seconds.fract() == 0.0 && seconds < 1e16 {
        format!("{seconds:.1}")
    } else {
        format!("{seconds}")
    };
    let line = format!(
        "pj: UserWarning: The backend class 'SequentialBackend' does not support timeout. You have \
         set 'timeout={shown}' in Parallel but the 'timeout' parameter will not be used.\n"
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn busy() -> Error {
    Error::new(
        ErrorKind::Busy,
        "this pj_parallel_t is already running a call on another thread (or the call is re-entrant); \
         one call at a time per object",
    )
}

/// A small, unique, never-reused id for the current thread (0 is never handed out).
fn current_thread() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;

    use super::*;
    use crate::task::TaskOutput;

    /// Task: 1 KiB result, every byte `2 * value`, written in place; fails (code 1, after writing
    /// its output in part) for values that end in 3 when `userdata` is non-NULL.
    unsafe extern "C" fn fill(
        userdata: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: run_batch passes a valid (arg, len) slice and a live output.
        let (arg, out) = unsafe { (std::slice::from_raw_parts(arg, len), &mut *out) };
        let value = u64::from_ne_bytes(arg.try_into().unwrap());
        out.alloc(1024).unwrap().fill(2 * value as u8);
        if !userdata.is_null() && value % 10 == 3 {
            out.alloc(512).unwrap().fill(0xee);
            return 1;
        }
        0
    }

    /// Task: cancels the executor in userdata at value 20, then returns like `fill`.
    unsafe extern "C" fn cancel_at_20(
        userdata: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: as for `fill`; userdata is the live executor running this task.
        let value = u64::from_ne_bytes(
            unsafe { std::slice::from_raw_parts(arg, len) }
                .try_into()
                .unwrap(),
        );
        if value == 20 {
            // SAFETY: see above.
            unsafe { &*(userdata as *const Parallel) }.cancel();
        }
        // SAFETY: as for `fill`, with a NULL userdata.
        unsafe { fill(std::ptr::null_mut(), arg, len, out) }
    }

    fn executor(options: &[(&str, &str)]) -> Parallel {
        let mut config = Config::default();
        for (key, value) in options {
            config.set(key, value).unwrap();
        }
        Parallel::new(&config).unwrap()
    }

    fn call(
        par: &Parallel,
        func: crate::task::TaskFn,
        userdata: *mut c_void,
        n: u64,
    ) -> Result<Results> {
        // SAFETY: the tasks above are safe to call from any thread with these userdata.
        let callback = unsafe { Callback::new(func, userdata) };
        for value in 0..n {
            if let Err(error) = par.submit(callback, &value.to_ne_bytes()) {
                // collect ends the failed call (with the same error).
                return par.collect().and(Err(error));
            }
        }
        par.collect()
    }

    /// Checks `fill`'s results: failed tasks (with `collect`) empty with an error, others whole.
    fn check(results: &Results, n: u64, collect: bool) {
        assert_eq!(results.len(), n as usize);
        for value in 0..n {
            let got = results.get(value as usize).unwrap();
            if collect && value % 10 == 3 {
                assert!(got.is_empty(), "task {value}");
                continue;
            }
            assert!(
                got.len() == 1024 && got.iter().all(|&b| b == 2 * value as u8),
                "task {value}"
            );
        }
        let failed = results.errors().iter().map(|(i, _)| *i as u64);
        let expected = (0..n).filter(|v| collect && v % 10 == 3);
        assert!(failed.eq(expected));
    }

    const BACKENDS: [&[(&str, &str)]; 2] = [
        &[("backend", "sequential"), ("batch_size", "8")],
        &[("backend", "threads"), ("n_jobs", "2"), ("batch_size", "8")],
    ];

    #[test]
    fn a_later_call_writes_its_results_into_the_arenas_of_earlier_ones() {
        for options in BACKENDS {
            let par = executor(options);
            let pool = par.state.lock().unwrap().buffers.clone();
            let first = call(&par, fill, std::ptr::null_mut(), 100).unwrap();
            let second = call(&par, fill, std::ptr::null_mut(), 100).unwrap();
            check(&first, 100, false);
            check(&second, 100, false);
            drop((first, second));
            let (fresh, grown) = (pool.fresh_outputs(), pool.grown_outputs());
            assert!(pool.kept_outputs() > 0, "{options:?}: arenas go back");
            for _ in 0..3 {
                let results = call(&par, fill, std::ptr::null_mut(), 100).unwrap();
                check(&results, 100, false);
            }
            assert_eq!(
                (pool.fresh_outputs(), pool.grown_outputs()),
                (fresh, grown),
                "{options:?}: no new arena after two calls, none grown"
            );
        }
    }

    #[test]
    fn collected_failures_stay_empty_in_reused_arenas() {
        for options in BACKENDS {
            let par = executor(&[options, &[("on_error", "collect")]].concat());
            let pool = par.state.lock().unwrap().buffers.clone();
            let failing = std::ptr::dangling_mut::<c_void>();
            for _ in 0..4 {
                let results = call(&par, fill, failing, 100).unwrap();
                check(&results, 100, true);
            }
            assert!(pool.kept_outputs() > 0, "{options:?}");
        }
    }

    #[test]
    fn a_cancelled_call_gives_its_unread_arenas_back() {
        for options in BACKENDS {
            let par = executor(options);
            let pool = par.state.lock().unwrap().buffers.clone();
            let this = &par as *const Parallel as *mut c_void;
            let error = call(&par, cancel_at_20, this, 100).err().unwrap();
            assert_eq!(error.kind(), ErrorKind::Cancelled, "{options:?}");
            assert!(
                pool.kept_outputs() > 0,
                "{options:?}: the batches before the cancel"
            );
            let results = call(&par, fill, std::ptr::null_mut(), 100).unwrap();
            check(&results, 100, false);
        }
    }

    #[test]
    fn results_outlive_their_executor_and_are_freed_after_it() {
        for options in BACKENDS {
            let par = executor(options);
            let kept = call(&par, fill, std::ptr::null_mut(), 100).unwrap();
            // A call whose arenas come from the first one's.
            drop(call(&par, fill, std::ptr::null_mut(), 100).unwrap());
            let last = call(&par, fill, std::ptr::null_mut(), 100).unwrap();
            let pool_alive = par.state.lock().unwrap().buffers.alive();
            drop(par);
            assert!(!pool_alive(), "{options:?}: results do not keep the pool");
            check(&kept, 100, false);
            check(&last, 100, false);
            drop(kept);
            check(&last, 100, false);
        }
    }
}
