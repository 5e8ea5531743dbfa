//! `pj_out_t` (a task's output, written inside the callback) and `pj_results_t` (a call's results).

use std::ffi::c_char;

use super::{bytes_arg, null_argument, out_arg, pj_status, run, run_value};
use crate::dispatch::Results;
use crate::error::Error;
use crate::task::TaskOutput;

/// The ordered results of a call: one byte string per task, in submission order. Created by
/// `pj_parallel_collect` or `pj_parallel_map`, owned by the caller, freed with `pj_results_free`.
/// Its functions only read it: several threads may read one results object at once.
///
/// Methods: `pj_results_len`, `pj_results_get`, `pj_results_free`.
pub struct pj_results_t {
    results: Results,
}

impl pj_results_t {
    pub(crate) fn boxed(results: Results) -> *mut pj_results_t {
        Box::into_raw(Box::new(pj_results_t { results }))
    }
}

/// Replaces the task's output with a copy of `data[0..len]`. `data` may be NULL when `len` is 0.
/// Call it only from inside the task callback that received `out`.
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_NULL_ARGUMENT when `out` is NULL, or `data` is NULL with
/// `len > 0`.
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_set(out: *mut TaskOutput, data: *const u8, len: usize) -> pj_status {
    run(std::ptr::null_mut(), || {
        // SAFETY: a non-NULL `out` is the live output handle of the running callback.
        let out = unsafe { out.as_mut() }.ok_or_else(|| null_argument("out"))?;
        // SAFETY: the caller guarantees `len` readable bytes at a non-NULL `data`.
        let data = unsafe { bytes_arg(data, len, "data") }?;
        out.set(data);
        Ok(())
    })
}

/// Replaces the task's output with `len` zeroed bytes and returns a pointer to them, to be written
/// in place. The pointer is valid until the callback returns or calls another `pj_out_*` function.
/// Returns NULL when `out` is NULL (never NULL otherwise, even for `len` 0).
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_alloc(out: *mut TaskOutput, len: usize) -> *mut u8 {
    run_value(std::ptr::null_mut(), || {
        // SAFETY: a non-NULL `out` is the live output handle of the running callback.
        match unsafe { out.as_mut() } {
            Some(out) => out.alloc(len).as_mut_ptr(),
            None => std::ptr::null_mut(),
        }
    })
}

/// Attaches a message (a NUL-terminated string, copied; invalid UTF-8 is replaced) that explains a
/// failure: it is reported when the callback returns non-zero and ignored when it returns 0.
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_NULL_ARGUMENT when `out` or `message` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pj_out_error(out: *mut TaskOutput, message: *const c_char) -> pj_status {
    run(std::ptr::null_mut(), || {
        // SAFETY: a non-NULL `out` is the live output handle of the running callback.
        let out = unsafe { out.as_mut() }.ok_or_else(|| null_argument("out"))?;
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

/// Number of results (one per task). NULL gives 0.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_len(results: *const pj_results_t) -> usize {
    run_value(0, || {
        // SAFETY: a non-NULL handle is alive until `pj_results_free` (caller's obligation).
        unsafe { results.as_ref() }.map_or(0, |r| r.results.len())
    })
}

/// Borrows the output of task `index`: `*data_out` and `*len_out` receive its bytes, valid until
/// `pj_results_free`. An empty output gives a non-NULL pointer and length 0.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when a pointer is NULL; PJ_STATUS_INVALID_ARGUMENT
/// when `index >= pj_results_len(results)`. Outputs are written only on success.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_get(
    results: *const pj_results_t,
    index: usize,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> pj_status {
    run(std::ptr::null_mut(), || {
        // SAFETY: a non-NULL handle is alive until `pj_results_free` (caller's obligation).
        let results = unsafe { results.as_ref() }.ok_or_else(|| null_argument("results"))?;
        out_arg(data_out, "data_out")?;
        out_arg(len_out, "len_out")?;
        let bytes = results.results.get(index).ok_or_else(|| {
            Error::invalid(format!(
                "index {index} is out of range: there are {} results",
                results.results.len()
            ))
        })?;
        // SAFETY: both output pointers were checked non-NULL and point to writable storage (contract).
        unsafe {
            *data_out = bytes.as_ptr();
            *len_out = bytes.len();
        }
        Ok(())
    })
}

/// Frees results (and every pointer `pj_results_get` returned from them). NULL is a no-op.
#[unsafe(no_mangle)]
pub extern "C" fn pj_results_free(results: *mut pj_results_t) {
    run_value((), || {
        if !results.is_null() {
            // SAFETY: a non-NULL handle came from `Box::into_raw` in `pj_results_t::boxed` and is
            // freed once (documented contract).
            drop(unsafe { Box::from_raw(results) });
        }
    })
}
