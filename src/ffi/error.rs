//! `pj_error_t`: an owned error object handed to C through `error_out`.

use std::ffi::{CString, c_char};

use super::{Handle, Owned, borrow_opt, free_box, pj_status, run_value};
use crate::error::Error;

/// An error: a status, a one-line message, a multi-line report and, for task errors, the index of the
/// failed task. Created by pj (through `error_out`), owned by the caller, freed with `pj_error_free`.
/// Its functions only read it: several threads may read one error at once.
///
/// Methods: `pj_error_status`, `pj_error_message`, `pj_error_report`, `pj_error_task_index`,
/// `pj_error_callback_code`, `pj_error_callback_message`, `pj_error_free`.
pub struct pj_error_t {
    error: Error,
    message: CString,
    report: CString,
    callback_message: Option<CString>,
}

fn c_string(text: String) -> CString {
    CString::new(text).unwrap_or_else(|e| {
        let cleaned: Vec<u8> = e.into_vec().into_iter().filter(|&b| b != 0).collect();
        CString::new(cleaned).unwrap_or_default()
    })
}

// SAFETY: C only holds errors pj gave through `error_out` (alive until `pj_error_free`) or lent from
// a results object (alive until `pj_results_free`).
unsafe impl Handle for pj_error_t {
    const ARG: &'static str = "error";
}

impl Owned for pj_error_t {}

impl pj_error_t {
    /// `error` with its C strings prepared once (to hand to C through `error_out`, or for errors a
    /// results object lends out).
    pub(crate) fn new(error: Error) -> pj_error_t {
        let message = c_string(error.message().to_owned());
        let report = c_string(error.report());
        let callback_message = error
            .task()
            .and_then(|t| t.callback_message.clone())
            .map(c_string);
        pj_error_t {
            error,
            message,
            report,
            callback_message,
        }
    }

    /// The core error inside.
    pub fn error(&self) -> &Error {
        &self.error
    }
}

/// The status this error was returned with. NULL gives PJ_STATUS_NULL_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn pj_error_status(error: *const pj_error_t) -> pj_status {
    run_value(pj_status::Panic, || {
        borrow_opt(error).map_or(pj_status::NullArgument, |e| pj_status::of(e.error.kind()))
    })
}

/// The one-line message (UTF-8), e.g. `task 537 failed with code 7: bad input`. It never holds a
/// newline or another control character: those of an embedded text (a callback's message, an OS
/// error) appear escaped as `\n`, `\t`, `\u{1b}`. The string belongs to the error and lives until
/// `pj_error_free`. NULL gives an empty static string.
#[unsafe(no_mangle)]
pub extern "C" fn pj_error_message(error: *const pj_error_t) -> *const c_char {
    run_value(c"".as_ptr(), || {
        borrow_opt(error).map_or(c"".as_ptr(), |e| e.message.as_ptr())
    })
}

/// A multi-line report (UTF-8, each line ending in a newline), pj's counterpart of joblib's worker
/// traceback: the kind of error, and for task errors the task index, backend, worker (thread number
/// or process id) and the callback's code; for a dead worker the signal (or exit status), the fault
/// address and a backtrace of the crashing thread captured by the worker's crash handler
/// (function, file and line when the program has symbols and debug info); for a timeout the limit
/// and how long the task had run; then the message, and a callback's message of several lines as it
/// gave it (one indented line each). The string
/// belongs to the error and lives until `pj_error_free`. NULL gives an empty static string.
#[unsafe(no_mangle)]
pub extern "C" fn pj_error_report(error: *const pj_error_t) -> *const c_char {
    run_value(c"".as_ptr(), || {
        borrow_opt(error).map_or(c"".as_ptr(), |e| e.report.as_ptr())
    })
}

/// The index (in submission order, from 0) of the task the error is about, or -1 when the error is
/// not about one task (or `error` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn pj_error_task_index(error: *const pj_error_t) -> i64 {
    run_value(-1, || {
        borrow_opt(error)
            .and_then(|e| e.error.task_index())
            .map_or(-1, |index| i64::try_from(index).unwrap_or(i64::MAX))
    })
}

/// The non-zero code the failed task's callback returned, or 0 when there is none (the error is not
/// a callback failure, or `error` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn pj_error_callback_code(error: *const pj_error_t) -> i32 {
    run_value(0, || {
        borrow_opt(error)
            .and_then(|e| e.error.task())
            .and_then(|t| t.code)
            .unwrap_or(0)
    })
}

/// The message the failed task's callback attached with `pj_out_error`, exactly as given (the
/// one-line message embeds it, control characters escaped, as `task N failed with code C: <message>`,
/// or `task N failed with code C` when it is empty). The string belongs to the
/// error and lives until it is freed. NULL when there is none (no message attached, the error is
/// not a callback failure, or `error` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn pj_error_callback_message(error: *const pj_error_t) -> *const c_char {
    run_value(std::ptr::null(), || {
        borrow_opt(error)
            .and_then(|e| e.callback_message.as_ref())
            .map_or(std::ptr::null(), |m| m.as_ptr())
    })
}

/// Frees an error. NULL is a no-op; freeing twice is undefined behaviour.
#[unsafe(no_mangle)]
pub extern "C" fn pj_error_free(error: *mut pj_error_t) {
    run_value((), || free_box(error))
}
