//! `pj_out_t` (a task's output, written inside the callback) and `pj_results_t` (a call's results).

use std::ffi::c_char;

use super::error::pj_error_t;
use super::{
    Handle, Owned, borrow, borrow_mut, borrow_mut_opt, borrow_opt, bytes_arg, free_box,
    null_argument, out_arg, pj_status, run_value, run_without_error_out,
};
use crate::dispatch::Results;
use crate::error::{Error, ErrorKind};
use crate::task::TaskOutput;

/// The ordered results of a call: one byte string per task, in submission order, and with
/// on_error=collect each task's own status. Created by `pj_parallel_collect` or `pj_parallel_map`,
/// owned by the caller, freed with `pj_results_free`. Its functions only read it: several threads
/// may read one results object at once.
///
/// Methods: `pj_results_len`, `pj_results_get`, `pj_results_status`, `pj_results_error`,
/// `pj_results_error_count`, `pj_results_free`.
pub struct pj_results_t {
    results: Results,
    /// The failed tasks' errors as C objects, lent out by `pj_results_error`; sorted by index.
    errors: Vec<(usize, pj_error_t)>,
}

// SAFETY: C only holds results `pj_parallel_collect` or `pj_parallel_map` gave it, alive until
// `pj_results_free`.
unsafe impl Handle for pj_results_t {
    const ARG: &'static str = "results";
}

impl Owned for pj_results_t {}

// SAFETY: C only holds the output handle pj lent to the running task callback, alive until the
// callback returns (pj.h: `pj_out_t` is only ever lent to a task callback).
unsafe impl Handle for TaskOutput {
    const ARG: &'static str = "out";
}

impl pj_results_t {
    /// `results` with their errors prepared as C objects, to hand to C.
    pub(crate) fn new(results: Results) -> pj_results_t {
        let errors = results
            .errors()
            .iter()
            .map(|(index, error)| (*index, pj_error_t::new(error.clone())))
            .collect();
        pj_results_t { results, errors }
    }

    fn error(&self, index: usize) -> Option<&pj_error_t> {
        let at = self.errors.binary_search_by_key(&index, |(i, _)| *i).ok()?;
        Some(&self.errors[at].1)
    }
}

/// Replaces the task's output with a copy of `data[0..len]`. `data` may be NULL when `len` is 0.
/// It may also point into the output itself (bytes written through `pj_out_alloc`'s pointer):
/// those bytes then become the whole output. Call it only from inside the task callback that
/// received `out`.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `out` is NULL, or `data` is NULL with
/// `len > 0`; PJ_STATUS_INVALID_ARGUMENT when `len` exceeds PTRDIFF_MAX (no buffer is that large;
/// the output is unchanged); PJ_STATUS_IO when the copy cannot be allocated: the output is then
/// empty and the task fails with PJ_STATUS_IO whatever the callback returns, unless a later
/// `pj_out_set` or `pj_out_alloc` succeeds.
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_set(out: *mut TaskOutput, data: *const u8, len: usize) -> pj_status {
    run_without_error_out(|| {
        let out = borrow_mut(out)?;
        // SAFETY: the caller guarantees `len` readable bytes at a non-NULL `data`.
        let data = unsafe { bytes_arg(data, len, "data") }?;
        if !out.set(data) {
            return Err(Error::new(
                ErrorKind::Io,
                format!("pj_out_set: cannot allocate {len} bytes: out of memory"),
            ));
        }
        Ok(())
    })
}

/// Replaces the task's output with `len` zeroed bytes and returns a pointer to them, to be written
/// in place (memory the executor reuses across batches and calls is zeroed again: no task sees
/// another's output). The pointer is valid until the callback returns or calls another `pj_out_*`
/// function.
/// Never NULL for a `len` that can be allocated (even 0). Returns NULL when `out` is NULL, and when
/// the bytes cannot be allocated (any `len` beyond the memory available, SIZE_MAX included): the
/// output is then empty and the task fails with PJ_STATUS_IO ("task N: cannot allocate its output
/// of L bytes ...") whatever the callback returns, unless a later `pj_out_set` or `pj_out_alloc`
/// succeeds. A failed allocation never aborts the process.
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_alloc(out: *mut TaskOutput, len: usize) -> *mut u8 {
    run_value(std::ptr::null_mut(), || match borrow_mut_opt(out) {
        Some(out) => out
            .alloc(len)
            .map_or(std::ptr::null_mut(), <[u8]>::as_mut_ptr),
        None => std::ptr::null_mut(),
    })
}

/// Shortens the task's output to its first `len` bytes: for an output written in place through
/// `pj_out_alloc` with a bound larger than what was produced (a compressor's worst case, say).
/// Frees nothing and copies nothing; a pointer from `pj_out_alloc` stays valid for the first
/// `len` bytes. Call it only from inside the task callback that received `out`.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `out` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// when `len` is larger than the output (the output is unchanged).
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_truncate(out: *mut TaskOutput, len: usize) -> pj_status {
    run_without_error_out(|| {
        let out = borrow_mut(out)?;
        let have = out.data().len();
        if !out.truncate(len) {
            return Err(Error::invalid(format!(
                "pj_out_truncate: {len} bytes is more than the output's {have}"
            )));
        }
        Ok(())
    })
}

/// Attaches a message (a NUL-terminated string, copied; invalid UTF-8 is replaced) that explains a
/// failure: it is reported when the callback returns non-zero and ignored when it returns 0.
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_NULL_ARGUMENT when `out` or `message` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_error(out: *mut TaskOutput, message: *const c_char) -> pj_status {
    run_without_error_out(|| {
        let out = borrow_mut(out)?;
        if message.is_null() {
            return Err(null_argument("message"));
        }
        // SAFETY: non-NULL and NUL-terminated per the documented contract.
        let text = unsafe { std::ffi::CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        out.set_message(text);
        Ok(())
    })
}

/// 1 when the call running this task is stopping, else 0. A call stops when it is cancelled
/// (`pj_parallel_cancel`, or a SIGINT with handle_sigint), when another task failed under
/// on_error "raise" (fail-fast), or when its executor is being freed (`pj_parallel_free`) or
/// abandoned by a new call. Once 1 it stays 1 for the rest of the task. Call it only from inside
/// the task callback that received `out`, on its thread.
///
/// pj never interrupts a running callback on threads (nor on processes when freeing): the call
/// that stops waits for it, so that no callback touches your memory after that call returns. A
/// long callback that polls this (it is one atomic load: no lock, no system call, cheap enough
/// for every iteration of a loop) and returns early makes cancel, fail-fast and free prompt; what
/// it returns then is discarded. On processes a cancel or a failure kills running workers
/// (this may return 1 just before), and every backend sees the flag: threads, n_jobs 1,
/// forked and spawned workers, MPI ranks.
///
/// Returns 0 when `out` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_cancelled(out: *const TaskOutput) -> i32 {
    run_value(0, || {
        i32::from(borrow_opt(out).is_some_and(TaskOutput::cancelled))
    })
}

/// Number of results (one per task). NULL gives 0.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_len(results: *const pj_results_t) -> usize {
    run_value(0, || borrow_opt(results).map_or(0, |r| r.results.len()))
}

/// Borrows the output of task `index`: `*data_out` and `*len_out` receive its bytes, valid until
/// `pj_results_free`. An empty output gives a non-NULL pointer and length 0.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when a pointer is NULL; PJ_STATUS_INVALID_ARGUMENT
/// when `index >= pj_results_len(results)`. Outputs are written only on success. It takes no
/// `error_out`, unlike other fallible functions: each failing status has that one cause, so the
/// status is the whole report.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_get(
    results: *const pj_results_t,
    index: usize,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> pj_status {
    run_without_error_out(|| {
        let results = borrow(results)?;
        let data_out = out_arg(data_out, "data_out")?;
        let len_out = out_arg(len_out, "len_out")?;
        let bytes = results.results.get(index).ok_or_else(|| {
            Error::invalid(format!(
                "index {index} is out of range: there are {} results",
                results.results.len()
            ))
        })?;
        data_out.write(bytes.as_ptr());
        len_out.write(bytes.len());
        Ok(())
    })
}

/// The status of task `index`: PJ_STATUS_OK when it succeeded (always, unless the call used
/// on_error=collect); with on_error=collect, its own failure: PJ_STATUS_TASK_FAILED (the callback
/// returned non-zero), PJ_STATUS_TIMEOUT (it ran past the timeout and its worker was stopped),
/// PJ_STATUS_WORKER_DIED (its worker process crashed or exited while running it), PJ_STATUS_IO (its
/// output could not be allocated, see `pj_out_alloc`, or no worker could be started for it) or
/// PJ_STATUS_PANIC. A failed task's output is empty; `pj_results_error` tells more.
///
/// Returns that status; PJ_STATUS_NULL_ARGUMENT when `results` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// when `index >= pj_results_len(results)` (never a task's status).
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_status(results: *const pj_results_t, index: usize) -> pj_status {
    run_value(pj_status::Panic, || {
        let Some(results) = borrow_opt(results) else {
            return pj_status::NullArgument;
        };
        if index >= results.results.len() {
            return pj_status::InvalidArgument;
        }
        results
            .error(index)
            .map_or(pj_status::Ok, |e| pj_status::of(e.error().kind()))
    })
}

/// Borrows the error of task `index` (on_error=collect): its status, message (e.g. `task 7 failed
/// with code 3: bad input`), report, task index and callback code, through the `pj_error_*`
/// functions. The error belongs to `results` and lives until `pj_results_free`: never pass it to
/// `pj_error_free`.
///
/// Returns NULL when the task succeeded, when `results` is NULL, or when `index` is out of range.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_error(
    results: *const pj_results_t,
    index: usize,
) -> *const pj_error_t {
    run_value(std::ptr::null(), || {
        borrow_opt(results)
            .and_then(|r| r.error(index))
            .map_or(std::ptr::null(), |e| e as *const pj_error_t)
    })
}

/// Number of failed tasks (on_error=collect; always 0 otherwise). NULL gives 0.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_error_count(results: *const pj_results_t) -> usize {
    run_value(0, || borrow_opt(results).map_or(0, |r| r.errors.len()))
}

/// Frees results (and every pointer `pj_results_get` and `pj_results_error` returned from them).
/// On threads and sequential their memory goes back to the executor that made them, for its later
/// calls' results to be written into; results may outlive their executor (freed after
/// `pj_parallel_free`, their memory is then released). Any thread may free them. NULL is a
/// no-op.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_free(results: *mut pj_results_t) {
    run_value((), || free_box(results))
}
