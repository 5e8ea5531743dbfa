//! The C boundary: the only home of exported `extern "C"` functions.
//!
//! Every export checks its pointers, catches panics, converts its arguments, delegates to the safe
//! core and converts the answer. Conventions (also stated at the top of `include/pj.h`):
//! - fallible functions return [`pj_status`] and take a last `pj_error_t **error_out` (may be NULL);
//!   on failure, a non-NULL `error_out` receives an owned error; on success it is left untouched.
//!   The few without one (`pj_config_new`, `pj_results_get`, `pj_out_set`, `pj_out_error`,
//!   `pj_parallel_cancel`: their C signatures are fixed) report by status alone;
//! - outputs are written only on success;
//! - a `**out` parameter hands ownership to the caller, who frees it with the matching `_free`.

#![allow(non_camel_case_types)]
// Exports are called from C, where `unsafe fn` means nothing; their pointer contracts are documented in
// the header and every dereference is checked for NULL and carries a SAFETY comment.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod config;
mod error;
mod handle;
mod mpi;
mod named;
mod parallel;
mod range;
mod results;
mod shared;

use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

pub use config::*;
pub use error::*;
pub use mpi::*;
pub use named::*;
pub use parallel::*;
pub use range::*;
pub use results::*;
pub use shared::*;

use crate::error::{Error, ErrorKind, panic_message};
pub(crate) use handle::{
    Handle, Owned, borrow, borrow_mut, borrow_mut_opt, borrow_opt, free_box, out_arg, out_opt,
};

/// Every status a pj function can return. The numbers are stable: they never change meaning, and
/// retired numbers are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pj_status {
    /// Success.
    Ok = 0,
    /// A stream has no more results (returned by functions that iterate).
    Done = 1,
    /// A required pointer argument was NULL.
    NullArgument = 2,
    /// An argument or option value was invalid, or an option key unknown; the message quotes it.
    InvalidArgument = 3,
    /// The object is running a call on another thread (or the call is re-entrant).
    Busy = 4,
    /// The request is valid but not supported by this build or backend.
    Unsupported = 5,
    /// A task callback returned a non-zero code (or a producer failed).
    TaskFailed = 6,
    /// A task exceeded the configured timeout.
    Timeout = 7,
    /// A worker process died while running a task.
    WorkerDied = 8,
    /// The call was cancelled.
    Cancelled = 9,
    /// An operating-system call failed (threads, files, memory maps).
    Io = 10,
    /// pj caught a panic (an internal bug); the message holds the panic text.
    Panic = 11,
}

impl pj_status {
    /// The status a kind of error is reported with: the one mapping from core errors to C statuses.
    pub fn of(kind: ErrorKind) -> pj_status {
        match kind {
            ErrorKind::NullArgument => pj_status::NullArgument,
            ErrorKind::InvalidArgument => pj_status::InvalidArgument,
            ErrorKind::Busy => pj_status::Busy,
            ErrorKind::Unsupported => pj_status::Unsupported,
            ErrorKind::TaskFailed => pj_status::TaskFailed,
            ErrorKind::Timeout => pj_status::Timeout,
            ErrorKind::WorkerDied => pj_status::WorkerDied,
            ErrorKind::Cancelled => pj_status::Cancelled,
            ErrorKind::Io => pj_status::Io,
            ErrorKind::Panic => pj_status::Panic,
        }
    }

    /// The status with number `raw`, if any (C hands statuses over as plain integers).
    pub fn from_raw(raw: u32) -> Option<pj_status> {
        const ALL: [pj_status; 12] = [
            pj_status::Ok,
            pj_status::Done,
            pj_status::NullArgument,
            pj_status::InvalidArgument,
            pj_status::Busy,
            pj_status::Unsupported,
            pj_status::TaskFailed,
            pj_status::Timeout,
            pj_status::WorkerDied,
            pj_status::Cancelled,
            pj_status::Io,
            pj_status::Panic,
        ];
        ALL.get(raw as usize).copied()
    }
}

/// Runs an export's body: catches panics, and on failure hands an owned error to `error_out`.
pub(crate) fn run(
    error_out: *mut *mut pj_error_t,
    body: impl FnOnce() -> Result<(), Error>,
) -> pj_status {
    run_status(error_out, || body().map(|()| pj_status::Ok))
}

/// Like [`run`], for bodies that succeed with a status of their own (`PJ_STATUS_DONE`).
pub(crate) fn run_status(
    error_out: *mut *mut pj_error_t,
    body: impl FnOnce() -> Result<pj_status, Error>,
) -> pj_status {
    let body = || {
        // Outside tasks only: inside one, the task's own pj_out_* calls would take the passes.
        let stage = crate::failpoint::Stage::Export;
        if let Some(injected) = (crate::nesting::level() == 0)
            .then(|| crate::failpoint::hit(stage))
            .flatten()
        {
            let io = injected.io_error(stage);
            return Err(Error::new(ErrorKind::Io, io.to_string()));
        }
        body()
    };
    let error = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => return status,
        Ok(Err(error)) => error,
        Err(panic) => Error::new(
            ErrorKind::Panic,
            format!("pj panicked: {}", panic_message(panic.as_ref())),
        ),
    };
    let status = pj_status::of(error.kind());
    if let Some(error_out) = out_opt(error_out) {
        error_out.give(pj_error_t::new(error));
    }
    status
}

/// Like [`run`], for the few fallible exports without `error_out`: the status is the whole report,
/// and a failure's message goes nowhere.
pub(crate) fn run_without_error_out(body: impl FnOnce() -> Result<(), Error>) -> pj_status {
    run(std::ptr::null_mut(), body)
}

/// Runs an export that reports no error object: a panic yields `on_panic`.
pub(crate) fn run_value<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// The error for a NULL pointer argument named `name`.
pub(crate) fn null_argument(name: &str) -> Error {
    Error::new(
        ErrorKind::NullArgument,
        format!("argument `{name}` is NULL"),
    )
}

/// Borrows a NUL-terminated C string as UTF-8.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that outlives the returned borrow.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Error> {
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str()
        .map_err(|_| Error::invalid(format!("argument `{name}` is not valid UTF-8")))
}

/// Borrows `len` bytes at `ptr`; `(NULL, 0)` is the empty slice. A length beyond `isize::MAX`
/// (C's PTRDIFF_MAX) is an invalid argument: no object is that large.
///
/// # Safety
/// When `len > 0`, `ptr` must be NULL or point to `len` readable bytes that outlive the borrow.
pub(crate) unsafe fn bytes_arg<'a>(
    ptr: *const u8,
    len: usize,
    name: &str,
) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    if isize::try_from(len).is_err() {
        let len_name = match name {
            "arg" => "arg_len",
            _ => "len",
        };
        return Err(Error::invalid(format!(
            "`{len_name}` {len} is larger than any buffer can be (at most {} bytes)",
            isize::MAX
        )));
    }
    // SAFETY: non-NULL with `len` readable bytes per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A short, static description of a status: `"PJ_STATUS_TIMEOUT: a task exceeded the timeout"`.
/// Unknown numbers give `"unknown pj_status"`. The string is static: never free it.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn pj_status_str(status: u32) -> *const c_char {
    let text: &'static CStr = match pj_status::from_raw(status) {
        Some(pj_status::Ok) => c"PJ_STATUS_OK: success",
        Some(pj_status::Done) => c"PJ_STATUS_DONE: no more results",
        Some(pj_status::NullArgument) => {
            c"PJ_STATUS_NULL_ARGUMENT: a required pointer argument was NULL"
        }
        Some(pj_status::InvalidArgument) => {
            c"PJ_STATUS_INVALID_ARGUMENT: an argument or option was invalid"
        }
        Some(pj_status::Busy) => c"PJ_STATUS_BUSY: the object is running a call on another thread",
        Some(pj_status::Unsupported) => {
            c"PJ_STATUS_UNSUPPORTED: not supported by this build or backend"
        }
        Some(pj_status::TaskFailed) => c"PJ_STATUS_TASK_FAILED: a task returned a non-zero code",
        Some(pj_status::Timeout) => c"PJ_STATUS_TIMEOUT: a task exceeded the timeout",
        Some(pj_status::WorkerDied) => c"PJ_STATUS_WORKER_DIED: a worker process died",
        Some(pj_status::Cancelled) => c"PJ_STATUS_CANCELLED: the call was cancelled",
        Some(pj_status::Io) => c"PJ_STATUS_IO: an operating-system call failed",
        Some(pj_status::Panic) => c"PJ_STATUS_PANIC: pj caught an internal panic",
        None => c"unknown pj_status",
    };
    text.as_ptr()
}

/// pj's version as a static string, e.g. `"0.1.0"` (equal to the PJ_VERSION_* macros). Never free it.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn pj_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}
