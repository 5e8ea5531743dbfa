//! `pj_shared_t`: a buffer that tasks of every backend read and write in place.

use super::{
    Handle, Owned, borrow_opt, free_box, out_arg, pj_config_t, pj_error_t, pj_status, run,
    run_value,
};
use crate::config::Config;
use crate::memmap::SharedBuffer;
use crate::memmap::folder::prepare_temp_folder;

/// A buffer shared by the caller and every worker, threads or processes: joblib's "each task fills
/// its own slice of a w+ output array" pattern. Created by `pj_shared_new`, owned by the caller,
/// freed with `pj_shared_free`. Its bytes start zeroed and live in a memory-mapped file in the
/// temp folder, created without a name, so nothing is left in the folder however the process ends.
///
/// Processes: a worker sees the buffer when it was created before the worker was forked, which is
/// the case for every buffer created before the call starts (workers are forked at each call's
/// start). With keep_workers=true, create buffers before the first call: a worker forked earlier
/// does not have the mapping. Writes from workers are visible to the caller as soon as the call
/// returns. pj adds no synchronisation: tasks should write disjoint ranges.
///
/// Methods: `pj_shared_data`, `pj_shared_len`, `pj_shared_free`.
pub struct pj_shared_t {
    buffer: SharedBuffer,
}

// SAFETY: C only holds buffers `pj_shared_new` gave it, alive until `pj_shared_free`.
unsafe impl Handle for pj_shared_t {
    const ARG: &'static str = "shared";
}

impl Owned for pj_shared_t {}

/// Creates a zeroed shared buffer of `nbytes` bytes (0 is allowed: `pj_shared_data` is then a
/// non-NULL pointer that must not be dereferenced) in the temp folder that `config` resolves to
/// (its `temp_folder` option, else PJ_TEMP_FOLDER, /dev/shm when it has more than 2 GB free,
/// TMPDIR/TEMP/TMP, /tmp); `config` may be NULL for the defaults. A folder pj chose itself (no
/// `temp_folder`, no PJ_TEMP_FOLDER) with too little room gives way to the next one of that order
/// with room. The space is reserved now, so a full folder fails here rather than as a SIGBUS in a
/// task.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `shared_out` is NULL; PJ_STATUS_IO when the
/// folder is missing, not writable or too full (named by `temp_folder` or PJ_TEMP_FOLDER, or no
/// folder of the order has room; the message names the folder and the system error).
#[unsafe(no_mangle)]
pub extern "C" fn pj_shared_new(
    config: *const pj_config_t,
    nbytes: usize,
    shared_out: *mut *mut pj_shared_t,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let shared_out = out_arg(shared_out, "shared_out")?;
        let default = Config::default();
        let config = borrow_opt(config).map_or(&default, |c| &c.config);
        let layered = crate::config::scope::with_scopes(config);
        let folder = prepare_temp_folder(layered.temp_folder.as_deref(), nbytes as u64)?;
        let buffer = SharedBuffer::new(&folder.path, nbytes)?;
        shared_out.give(pj_shared_t { buffer });
        Ok(())
    })
}

/// The buffer's first byte, writable by the caller and by tasks; valid until `pj_shared_free`.
/// NULL gives NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pj_shared_data(shared: *const pj_shared_t) -> *mut u8 {
    run_value(std::ptr::null_mut(), || {
        borrow_opt(shared).map_or(std::ptr::null_mut(), |s| s.buffer.data())
    })
}

/// The buffer's size in bytes. NULL gives 0.
#[unsafe(no_mangle)]
pub extern "C" fn pj_shared_len(shared: *const pj_shared_t) -> usize {
    run_value(0, || borrow_opt(shared).map_or(0, |s| s.buffer.len()))
}

/// Frees a shared buffer: unmaps it here (workers that still map it keep their own mapping until
/// they exit). No call that uses it may be running. NULL is a no-op.
#[unsafe(no_mangle)]
pub extern "C" fn pj_shared_free(shared: *mut pj_shared_t) {
    run_value((), || free_box(shared))
}
