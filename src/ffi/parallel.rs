//! `pj_parallel_t`: a configured executor running one call at a time.

use std::ffi::c_void;

use super::{
    Handle, Owned, borrow, borrow_opt, bytes_arg, free_box, null_argument, out_arg, pj_config_t,
    pj_error_t, pj_results_t, pj_status, run, run_status, run_value,
};
use crate::config::Config;
use crate::dispatch::Producer;
use crate::error::{Error, ErrorKind};
use crate::parallel::Parallel;
use crate::progress::Expected;
use crate::task::{Callback, TaskOutput};

/// A task callback. pj calls it once per task with the `userdata` given at submission, the task's
/// argument bytes (a copy pj owns: valid only during the call) and `out`, the task's output handle
/// (write the result with `pj_out_set` or `pj_out_alloc`; valid only during the call). Return 0 for
/// success or any other value for failure (attach an explanation with `pj_out_error`).
///
/// Processes (the default backend): it runs in a worker process forked from the caller when the
/// call starts, so `userdata` and everything that existed then is readable there (copy-on-write),
/// but what the task writes to memory stays in the worker: hand results back through `out`. In the
/// worker only the forking thread exists: the callback must not wait for a lock or a condition that
/// another thread of the parent held or was to signal at the time of the fork. A crash (signal,
/// exit(), _exit()) kills only the worker and fails the call with PJ_STATUS_WORKER_DIED.
///
/// Threading: with the threads backend it runs on pj's worker threads, several at once, possibly
/// with the same `userdata`: it must be thread-safe. With n_jobs 1 (or the sequential backend) it
/// runs on the caller's thread, inside `pj_parallel_submit`, `pj_parallel_collect` or
/// `pj_parallel_map`. It must not unwind (no C++ exception, no longjmp out of it) and must not use the
/// `pj_parallel_t` running it (that gives PJ_STATUS_BUSY).
///
/// Stopping early: once the call is cancelled, another task failed (on_error "raise") or the
/// executor is being freed, pj starts no new task, but it waits for callbacks running on threads
/// (and on the caller's thread) before the call returns. A long callback should poll
/// `pj_out_cancelled(out)` and return as soon as it gives 1; its result (or failure) is then
/// discarded and never taken for the call's cause.
pub type pj_task_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        arg: *const u8,
        arg_len: usize,
        out: *mut TaskOutput,
    ) -> i32,
>;

/// A producer of task arguments for `pj_parallel_map`, always called on the caller's thread. Return 1
/// after storing the next argument in `*arg_out` / `*len_out` (pj copies the bytes before calling the
/// producer again, so a reused buffer is fine; `*arg_out` may be NULL when `*len_out` is 0), 0 when
/// there are no more arguments, or a negative value to fail the call (PJ_STATUS_TASK_FAILED, the
/// message quotes the value). pj stops calling it as soon as a task has failed.
pub type pj_producer_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        arg_out: *mut *const u8,
        len_out: *mut usize,
    ) -> i32,
>;

/// A configured executor: runs tasks on a pool of workers (or sequentially) and returns their
/// results in submission order. Created by `pj_parallel_new`, owned by the caller, freed with
/// `pj_parallel_free`. Its worker pool starts with the first call and is reused by later ones.
///
/// Memory: the memory of its calls' arguments, and of their results (on processes and MPI: of
/// the results above max_nbytes, in files), is kept for later calls (results' once
/// `pj_results_free` frees them), so that a call repeated touches no fresh page: at most 256 MiB
/// of each kind while the executor lives.
///
/// Threading: any thread may use it, but it runs one call at a time. A submit/collect call belongs to
/// the thread that made its first `pj_parallel_submit` until its `pj_parallel_collect`; while a call
/// is in flight, every other thread (and a task running inside the call) gets PJ_STATUS_BUSY at once.
///
/// Fork: an executor copied into a child by `fork()` (the host's own, or a pj worker process whose
/// task reaches an executor of the parent) belongs to the parent. Every call on it in the child returns
/// at once: PJ_STATUS_INVALID_ARGUMENT ("this executor was created in process N ..."), or
/// PJ_STATUS_BUSY when the copy was taken while another thread's call was in flight (as for a task of
/// a worker process using the executor running it); create a new executor in the child.
/// `pj_parallel_free` on the copy is safe and leaks it (see there).
///
/// Methods: `pj_parallel_submit`, `pj_parallel_collect`, `pj_parallel_map`, `pj_parallel_imap`,
/// `pj_parallel_next`, `pj_parallel_for`, `pj_parallel_cancel`, `pj_parallel_free`.
pub struct pj_parallel_t {
    parallel: Parallel,
}

// SAFETY: C only holds executors `pj_parallel_new` gave it, alive until `pj_parallel_free`; they
// are only ever borrowed shared (`Parallel` itself serialises concurrent use).
unsafe impl Handle for pj_parallel_t {
    const ARG: &'static str = "parallel";
}

impl Owned for pj_parallel_t {}

/// The executor behind a handle; NULL is a NullArgument error. For every `pj_parallel_*` module.
pub(super) fn parallel_behind<'a>(parallel: *const pj_parallel_t) -> Result<&'a Parallel, Error> {
    borrow(parallel).map(|p| &p.parallel)
}

fn callback(func: pj_task_fn, userdata: *mut c_void) -> Result<Callback, Error> {
    let func = func.ok_or_else(|| null_argument("fn"))?;
    // SAFETY: the documented `pj_task_fn` contract makes `func` callable with `userdata` from any
    // thread until the call that uses it returns.
    Ok(unsafe { Callback::new(func, userdata) })
}

/// Creates an executor from `config` (copied: the config may be freed afterwards; NULL means every
/// default: n_jobs 1, so tasks run sequentially) and stores it in `*parallel_out` (owned by the
/// caller: free it with `pj_parallel_free`). No worker starts before the first call; with
/// start_method "forkserver" (processes, n_jobs above 1) the process's fork server starts here if
/// it is not running (see `pj_forkserver_start`).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `parallel_out` is NULL;
/// PJ_STATUS_INVALID_ARGUMENT when the options are inconsistent (e.g. prefer="processes" with
/// require="sharedmem", or backend="processes" with require="sharedmem") or pre_dispatch
/// evaluates below 1; PJ_STATUS_IO when the fork server cannot be started.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_new(
    config: *const pj_config_t,
    parallel_out: *mut *mut pj_parallel_t,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel_out = out_arg(parallel_out, "parallel_out")?;
        let default = Config::default();
        let parallel = Parallel::new(borrow_opt(config).map_or(&default, |c| &c.config))?;
        parallel_out.give(pj_parallel_t { parallel });
        Ok(())
    })
}

/// Frees an executor. A call still in flight is abandoned: tasks not yet started never start, and
/// running callbacks see `pj_out_cancelled` return 1 and are waited for, on every backend (process
/// workers are not killed here: a callback may finish or clean up), so no callback touches your
/// data after this returns; then the worker threads are joined and the worker processes reaped
/// (none outlives this call), each with what its tasks started and left running (its process
/// group: see `pj_config_set_backend`). So free returns as soon as the running callbacks return: a callback
/// that never returns (and never polls `pj_out_cancelled`) blocks it, except one already abandoned
/// for running past the timeout on threads. NULL is a no-op. Must not be called while another
/// thread is inside a function on it.
///
/// In a child process forked after the executor was created (the executor is a copy there), this only
/// releases the handle: it neither joins threads (they exist only in the parent), nor kills or waits
/// for the parent's worker processes, nor removes the parent's temp files; the memory the copy holds
/// is leaked in the child.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_free(parallel: *mut pj_parallel_t) {
    run_value((), || free_box(parallel))
}

/// Adds a task to the current call (starting one if none is in flight): `fn(userdata, arg, arg_len,
/// out)` will run on a worker. The argument bytes are copied now (`arg` may be NULL when `arg_len`
/// is 0). Tasks are grouped into batches and dispatched as batches fill up; results come back, in
/// submission order, from `pj_parallel_collect`.
///
/// The call belongs to the thread of its first submit until `pj_parallel_collect` ends it (other
/// threads get PJ_STATUS_BUSY meanwhile). Blocking: with pre_dispatch set (default "2*n_jobs"), a
/// submit waits while pre_dispatch × the current batch size tasks are submitted and not completed
/// (results waiting to be collected do not count), so a fast submitter is paced by the workers; with
/// n_jobs 1 the task runs inside this submit (once its batch is full).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `parallel` or `fn` is NULL, or `arg` is NULL
/// with `arg_len > 0`; PJ_STATUS_INVALID_ARGUMENT when `arg_len` exceeds PTRDIFF_MAX, when the
/// backend needs registered functions (start_method "spawn" or "forkserver", backend "mpi") and
/// `fn` is not one or
/// `userdata` is not NULL, or when the executor was created in another process (a fork of its
/// creator); PJ_STATUS_BUSY when another thread's call is in flight; PJ_STATUS_IO when the workers
/// cannot be started or the argument cannot be copied (memory, temp folder: the error names the
/// task, `pj_error_task_index`, and says why); PJ_STATUS_CANCELLED when the call was cancelled (`pj_parallel_cancel`, also while this submit
/// was blocked, or a SIGINT with handle_sigint). Once the call has failed, every submit returns its
/// failure, without adding the task: PJ_STATUS_TASK_FAILED, PJ_STATUS_WORKER_DIED or
/// PJ_STATUS_TIMEOUT as `pj_parallel_collect` describes them, with the same error that
/// `pj_parallel_collect` then ends the call with (under on_error=collect, task failures never stop
/// a submit). A failed submit does not end the call: end it with `pj_parallel_collect` (which
/// returns that failure) before the next call; until then this executor's next submit returns the
/// same failure and other threads get PJ_STATUS_BUSY.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_submit(
    parallel: *mut pj_parallel_t,
    r#fn: pj_task_fn,
    userdata: *mut c_void,
    arg: *const u8,
    arg_len: usize,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        let callback = callback(r#fn, userdata)?;
        // SAFETY: the caller guarantees `arg_len` readable bytes at a non-NULL `arg` for the call.
        let arg = unsafe { bytes_arg(arg, arg_len, "arg") }?;
        parallel.submit(callback, arg)
    })
}

/// Announces the size of the next call on `parallel` (the one the next `pj_parallel_submit`,
/// `pj_parallel_map` or `pj_parallel_imap` starts), for progress reporting only: the progress
/// callback and the progress bar show the total, percentage and ETA from the first completion
/// instead of only once the input has ended, and the verbose lines say "Done k out of N" as
/// joblib's do for an input with a length. `n_items` is the number of inputs; `items_per_task` is
/// 1 when each task is one input, or the number of inputs each task covers when a caller chunks
/// them (the last task may cover fewer): the callback and the bar then count inputs, not tasks
/// (`pj_parallel_for` does this for its ranges by itself). The call runs whatever is submitted: a
/// wrong announcement only misleads the progress display, and once the input ends the real number
/// of tasks is shown. The C++ and Go wrappers call this whenever their input has a length.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `parallel` is NULL;
/// PJ_STATUS_INVALID_ARGUMENT when `items_per_task` is 0, when a call fed by submits is in flight
/// (announce a call's size before its first submit), or when the executor was created in another
/// process; PJ_STATUS_BUSY when another thread's call is in flight. Never blocks.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_expect(
    parallel: *mut pj_parallel_t,
    n_items: usize,
    items_per_task: usize,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        let items_per_task = std::num::NonZeroUsize::new(items_per_task).ok_or_else(|| {
            Error::invalid("pj_parallel_expect: items_per_task must be at least 1")
        })?;
        parallel.expect(Expected {
            items: n_items,
            items_per_task,
        })
    })
}

/// Ends the current call: waits for every submitted task and stores their results, in submission
/// order, in `*results_out` (owned by the caller: free with `pj_results_free`). Without a call in
/// flight it returns an empty result set. Once it has run (OK or any failure of the call) the call is
/// over and the object is ready for a new call; PJ_STATUS_NULL_ARGUMENT (NULL `results_out`) and
/// PJ_STATUS_BUSY return before touching the call, which stays open: collect it again.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `parallel` or `results_out` is NULL;
/// PJ_STATUS_BUSY when another thread's call is in flight; PJ_STATUS_TASK_FAILED when a task failed:
/// the error names the call's failure (the first one seen, as joblib raises the first failure it
/// observes: the same one a refused submit named), its code and message, and tasks queued behind it
/// never started; PJ_STATUS_WORKER_DIED when a worker process died while running a task (the
/// error names the task, and the signal or exit status); PJ_STATUS_TIMEOUT when a task ran past the
/// timeout (the error names the task and the limit; on processes its worker was killed, on threads
/// the stuck thread was abandoned: it keeps running the callback, so the callback must not use
/// memory you free after this call returns), or when a worker process stayed stuck outside any task
/// (receiving, mapping or returning a batch) for longer than the timeout (the error says so and
/// names a task of that batch); PJ_STATUS_CANCELLED after `pj_parallel_cancel` (or a
/// SIGINT with handle_sigint); PJ_STATUS_IO when a worker process cannot be started;
/// PJ_STATUS_PANIC for an internal bug. `*results_out` is written only on success.
///
/// With on_error=collect, task failures (TASK_FAILED, TIMEOUT, WORKER_DIED) do not end the call:
/// every task runs, this returns PJ_STATUS_OK, and `pj_results_status` / `pj_results_error` give
/// each task's own outcome. A dead or timed-out worker is replaced; the tasks its batch had already
/// completed run again in the new worker (their results died with the old one), so with auto
/// batching a task can run twice when a neighbour crashes; set batch_size 1 if that matters.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_collect(
    parallel: *mut pj_parallel_t,
    results_out: *mut *mut pj_results_t,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        let results_out = out_arg(results_out, "results_out")?;
        let results = parallel.collect()?;
        results_out.give(pj_results_t::new(results));
        Ok(())
    })
}

/// Runs a whole call: calls `producer(producer_userdata, &arg, &len)` on this thread for each
/// argument until it returns 0 (only as completions make room in the pre-dispatch window), runs
/// `fn(userdata, arg, len, out)` on each, and stores the results, in input order, in `*results_out`
/// (owned by the caller: free with `pj_results_free`). A call of this thread still in flight on
/// `parallel` is abandoned first (its queued tasks never start).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `parallel`, `fn`, `producer` or `results_out`
/// is NULL, or the producer returned 1 with a NULL argument and a non-zero length;
/// PJ_STATUS_BUSY when another thread's call is in flight; PJ_STATUS_IO when the worker threads
/// cannot be started; PJ_STATUS_TASK_FAILED when a task failed (as for `pj_parallel_collect`; the
/// producer is not called again) or the producer returned a value other than 0 and 1 (the error
/// quotes it); PJ_STATUS_WORKER_DIED, PJ_STATUS_TIMEOUT, PJ_STATUS_CANCELLED, PJ_STATUS_IO and
/// PJ_STATUS_PANIC as for `pj_parallel_collect` (on_error=collect included). `*results_out` is
/// written only on success.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_map(
    parallel: *mut pj_parallel_t,
    r#fn: pj_task_fn,
    userdata: *mut c_void,
    producer: pj_producer_fn,
    producer_userdata: *mut c_void,
    results_out: *mut *mut pj_results_t,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        let callback = callback(r#fn, userdata)?;
        let producer = c_producer(producer, producer_userdata)?;
        let results_out = out_arg(results_out, "results_out")?;
        let results = parallel.map(callback, producer)?;
        results_out.give(pj_results_t::new(results));
        Ok(())
    })
}

/// Starts a streaming call: results are read one at a time with `pj_parallel_next`, which calls
/// `producer(producer_userdata, &arg, &len)` on its own thread, only while fewer than
/// pre_dispatch × batch size tasks are produced and not yet read, so memory stays bounded however
/// slow the reader is. Results come in input order, or in completion order when the config's
/// `return_as` is "generator_unordered". A call of this thread still in flight on `parallel` is
/// abandoned first; `pj_parallel_free` (or another call) abandons this one cleanly.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `parallel`, `fn` or `producer` is NULL;
/// PJ_STATUS_BUSY when another thread's call is in flight; PJ_STATUS_IO when the worker threads
/// cannot be started.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_imap(
    parallel: *mut pj_parallel_t,
    r#fn: pj_task_fn,
    userdata: *mut c_void,
    producer: pj_producer_fn,
    producer_userdata: *mut c_void,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        let callback = callback(r#fn, userdata)?;
        let producer = c_producer(producer, producer_userdata)?;
        parallel.imap(callback, producer)
    })
}

/// Reads the next result of the current call (started by `pj_parallel_imap` or by
/// `pj_parallel_submit`s): `*index_out` receives the task's index in input order, `*data_out` and
/// `*len_out` a view of its output, valid until the next use of `parallel`. Order: input order
/// ("list", "generator"), or completion order ("generator_unordered"). Blocks until a result is
/// ready; with a producer, pulls inputs as room allows.
///
/// Returns PJ_STATUS_OK with a result; PJ_STATUS_DONE when every result has been read (the call is
/// over; also when no call is in flight); PJ_STATUS_NULL_ARGUMENT when a pointer is NULL;
/// PJ_STATUS_BUSY when another thread's call is in flight; PJ_STATUS_TASK_FAILED when a task (or
/// the producer) failed: the call is over and its outstanding tasks never start; PJ_STATUS_WORKER_DIED,
/// PJ_STATUS_TIMEOUT, PJ_STATUS_CANCELLED, PJ_STATUS_IO and PJ_STATUS_PANIC as for
/// `pj_parallel_collect`. Outputs are written only with PJ_STATUS_OK, except with on_error=collect:
/// then a failed task's turn returns its own status (TASK_FAILED, TIMEOUT, WORKER_DIED) with
/// `*index_out` set, an empty output and the task's error in `*error_out`, and the call goes on:
/// keep calling until PJ_STATUS_DONE.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_next(
    parallel: *mut pj_parallel_t,
    index_out: *mut usize,
    data_out: *mut *const u8,
    len_out: *mut usize,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run_status(error_out, || {
        let parallel = parallel_behind(parallel)?;
        let index_out = out_arg(index_out, "index_out")?;
        let data_out = out_arg(data_out, "data_out")?;
        let len_out = out_arg(len_out, "len_out")?;
        let next = parallel.next(|streamed| {
            let view = (streamed.index, streamed.data.as_ptr(), streamed.data.len());
            (view, streamed.error)
        })?;
        let Some(((index, data, len), task_error)) = next else {
            return Ok(pj_status::Done);
        };
        index_out.write(index);
        data_out.write(data);
        len_out.write(len);
        // With on_error=collect, a failed task's turn reports its own error; the call goes on.
        match task_error {
            Some(error) => Err(error),
            None => Ok(pj_status::Ok),
        }
    })
}

/// The nesting level of the calling thread: 0 in your own code, 1 inside a task of a top-level call,
/// 2 inside a task of a call made by such a task, and so on. A `pj_parallel_t` created at level 1
/// uses threads, and at level 2 or deeper runs sequentially, unless its config (or a pushed config)
/// names a backend, as joblib does.
#[unsafe(no_mangle)]
pub extern "C" fn pj_nesting_level() -> usize {
    run_value(0, crate::nesting::level)
}

/// A C producer callback turned into the core's `Producer`.
fn c_producer(producer: pj_producer_fn, userdata: *mut c_void) -> Result<Producer, Error> {
    struct CProducer {
        func: unsafe extern "C" fn(*mut c_void, *mut *const u8, *mut usize) -> i32,
        userdata: *mut c_void,
        produced: usize,
    }
    // SAFETY: the producer is only ever called on the thread driving the call, one call at a time;
    // moving the pointer pair with the call is what the documented contract allows.
    unsafe impl Send for CProducer {}
    impl CProducer {
        fn produce(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<bool, Error> {
            let (mut arg, mut len) = (std::ptr::null::<u8>(), 0usize);
            // SAFETY: the producer contract: callable on this thread with its userdata and two valid
            // output pointers.
            let code = unsafe { (self.func)(self.userdata, &mut arg, &mut len) };
            match code {
                0 => Ok(false),
                1 => {
                    // SAFETY: the producer guarantees `len` readable bytes at `arg` until it is called
                    // again; the sink copies them before that.
                    let bytes = unsafe { bytes_arg(arg, len, "*arg_out (from the producer)") }?;
                    self.produced += 1;
                    sink(bytes);
                    Ok(true)
                }
                _ => Err(Error::new(
                    ErrorKind::TaskFailed,
                    format!(
                        "the producer failed: it returned {code} after {} items",
                        self.produced
                    ),
                )),
            }
        }
    }
    let func = producer.ok_or_else(|| null_argument("producer"))?;
    let mut state = CProducer {
        func,
        userdata,
        produced: 0,
    };
    Ok(Box::new(move |sink: &mut dyn FnMut(&[u8])| {
        state.produce(sink)
    }))
}

/// Cancels the call in flight on `parallel`, if any: dispatch stops, queued tasks never start, and
/// the blocked call returns PJ_STATUS_CANCELLED. A submit blocked by a full window returns within
/// about 20 ms. collect, map, next and `pj_parallel_for` return once no callback of the call runs
/// any more: process workers running a task, still starting, or not reading their batch are killed
/// (within about 100 ms); callbacks running on threads (or on the caller's thread, n_jobs 1) cannot
/// be interrupted and are waited for, so that none touches your memory after the call returns. They see `pj_out_cancelled` return 1: a
/// long callback that polls it and returns early makes the cancellation prompt. The object stays
/// usable. No effect when no call is in flight.
///
/// Async-signal-safe (it only stores two atomics): a SIGINT handler, or any thread, may call it.
/// `parallel` must stay alive during the call (do not race it with `pj_parallel_free`).
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_NULL_ARGUMENT when `parallel` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_cancel(parallel: *const pj_parallel_t) -> pj_status {
    // No error object: building one allocates, which a signal handler must not do.
    run_value(pj_status::Panic, || match borrow_opt(parallel) {
        Some(handle) => {
            handle.parallel.cancel();
            pj_status::Ok
        }
        None => pj_status::NullArgument,
    })
}
