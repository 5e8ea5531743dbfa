//! Named task functions: `pj_register`, `pj_parallel_submit_named`, the entry point of
//! spawned workers, `pj_worker_main_if_requested`, and the fork server's start,
//! `pj_forkserver_start`.

use std::ffi::{c_char, c_int};

use super::parallel::{parallel_behind, pj_task_fn};
use super::{bytes_arg, null_argument, pj_error_t, pj_status, run, run_value, str_arg};
use crate::error::Error;
use crate::task::Callback;

/// Registers a task function under `name` (UTF-8, copied), for workers that do not share the
/// caller's memory image: with `start_method` "spawn", worker processes are fresh runs of the same
/// executable, and tasks travel as registry indices. Every process of the program must register
/// the same functions under the same names in the same order, before
/// `pj_worker_main_if_requested`: a worker whose registry differs is refused (the call fails with
/// PJ_STATUS_IO naming both lists). With "forkserver", register them before the fork server
/// starts (see `pj_forkserver_start`). Registering a name again for the same function is a no-op.
/// Thread-safe.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `name` or `fn` is NULL;
/// PJ_STATUS_INVALID_ARGUMENT for an empty name, a name already registered for another function,
/// or a name that is not UTF-8.
#[unsafe(no_mangle)]
pub extern "C" fn pj_register(
    name: *const c_char,
    r#fn: pj_task_fn,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        // SAFETY: the caller passes a NUL-terminated string that lives for the call (contract).
        let name = unsafe { str_arg(name, "name") }?;
        let func = r#fn.ok_or_else(|| null_argument("fn"))?;
        crate::registry::register(name, func)
    })
}

/// Adds a task that runs the function registered under `name` (see `pj_register`) with no
/// userdata, like `pj_parallel_submit` (the argument bytes are copied now). Works with every
/// backend and start method.
///
/// Returns the statuses of `pj_parallel_submit`, and PJ_STATUS_NULL_ARGUMENT when `name` is NULL;
/// PJ_STATUS_INVALID_ARGUMENT when no function is registered under `name`.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_submit_named(
    parallel: *mut super::pj_parallel_t,
    name: *const c_char,
    arg: *const u8,
    arg_len: usize,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        // SAFETY: the caller passes a NUL-terminated string that lives for the call (contract).
        let name = unsafe { str_arg(name, "name") }?;
        let func = crate::registry::lookup(name).ok_or_else(|| {
            Error::invalid(format!("no task function is registered under \"{name}\""))
        })?;
        // SAFETY: a registered function is a `pj_task_fn` whose contract holds with NULL userdata.
        let callback = unsafe { Callback::new(func, std::ptr::null_mut()) };
        // SAFETY: the caller guarantees `arg_len` readable bytes at a non-NULL `arg` for the call.
        let arg = unsafe { bytes_arg(arg, arg_len, "arg") }?;
        parallel.submit(callback, arg)
    })
}

/// The entry point of spawned workers. Call it at the start of `main`, right after the program's
/// `pj_register` calls and before anything else that matters (threads, output, executors): when
/// this process was started by pj as a worker (`start_method` "spawn"), it becomes that worker —
/// it checks its registry against the caller's, serves tasks until the caller is done with it,
/// and exits without returning; otherwise it returns 0 at once. `argc` and `argv` are `main`'s
/// (kept for start methods that will need them; they may be 0 and NULL). A program that uses
/// spawn but never calls it gets PJ_STATUS_INVALID_ARGUMENT from `pj_parallel_new` in the worker
/// copy, and the caller's call fails with PJ_STATUS_IO saying so.
///
/// Start-up limit: a worker copy must reach this call within 30 seconds of being started (what
/// `main` does before it counts, so keep it short). The caller's call fails with PJ_STATUS_IO when a
/// copy ends before answering (the message gives its exit status or signal) or is still running
/// after 30 seconds without answering (the copy is then killed; the message says so).
#[unsafe(no_mangle)]
pub extern "C" fn pj_worker_main_if_requested(argc: c_int, argv: *const *const c_char) -> c_int {
    let _ = (argc, argv);
    run_value(0, || {
        crate::backend::spawn::worker_main_if_requested();
        0
    })
}

/// Starts this process's fork server now, if it has none running (`start_method` "forkserver").
/// The fork server is a copy of this process made when it starts; every worker of every
/// "forkserver" executor is a fork of it, so starting a worker costs the same whatever memory this
/// process holds by then. It starts by itself with the first processes executor that uses
/// "forkserver" (`pj_parallel_new`); call this at the start of `main`, after the program's
/// `pj_register` calls and before it allocates much, to make the copy while the process is small.
/// Calling it again is a no-op while the server runs.
///
/// Workers see memory as of the server's start, and know the functions registered by then: a
/// function registered later fails calls with PJ_STATUS_IO naming both lists. Of the descriptors
/// open at the server's start, the server and its workers keep only stdin, stdout and stderr. One server per
/// process, shared by all executors; it reaps its workers, and it and its workers end when this
/// process ends (even killed). pj keeps one thread for the process's lifetime to fork it (the
/// server's parent-death signal is tied to that thread). A server killed from outside is replaced
/// at the next worker start. Thread-safe; blocks for the fork (a millisecond for a small
/// process).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_IO when the server cannot be started (no thread, no process,
/// no socket: the message says which).
#[unsafe(no_mangle)]
pub extern "C" fn pj_forkserver_start(error_out: *mut *mut pj_error_t) -> pj_status {
    run(error_out, || {
        crate::backend::forkserver::ensure_started().map_err(|e| {
            Error::new(
                crate::error::ErrorKind::Io,
                format!("cannot start the fork server: {e}"),
            )
        })
    })
}
