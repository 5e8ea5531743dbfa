//! `pj_parallel_for`: OpenMP's `parallel for` and rayon's `par_iter` for C: one callback per range
//! of indices instead of one per item, so a loop body costs what it costs in a plain loop.

use std::ffi::c_void;

use super::parallel::parallel_behind;
use super::{null_argument, pj_error_t, pj_status, run};
use crate::error::{Error, ErrorKind};
use crate::progress::Expected;
use crate::task::{Callback, TaskOutput};

/// A range callback for `pj_parallel_for`: processes the items `start..end` (end excluded) and
/// returns 0, or any other value for failure (attach an explanation with `pj_out_error(out, ...)`;
/// `out` takes no data here). Threading and process rules are those of `pj_task_fn`: with the
/// threads backend several ranges run at once on pj's threads; with processes each range runs in a
/// forked worker, so what it writes must go to memory shared with the caller (`pj_shared_t`).
pub type pj_range_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        start: usize,
        end: usize,
        out: *mut TaskOutput,
    ) -> i32,
>;

/// How many ranges per worker: enough for the fast workers to take over from a slow one, few
/// enough that the per-range cost (a few microseconds at most) stays negligible.
const RANGES_PER_WORKER: usize = 16;

/// The task argument of one range: the user's function and userdata travel with it (valid in
/// forked workers, which share the caller's image), so nothing needs to outlive the call.
#[repr(C)]
#[derive(Clone, Copy)]
struct RangeArg {
    start: u64,
    end: u64,
    func: usize,
    userdata: usize,
}

const ARG_LEN: usize = std::mem::size_of::<RangeArg>();

/// The task callback that unpacks a range and calls the user's function.
unsafe extern "C" fn run_range(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    if len != ARG_LEN {
        return -1;
    }
    // SAFETY: pj passes the `ARG_LEN` bytes the producer below wrote (read unaligned: pj's
    // argument buffers carry no alignment promise).
    let range = unsafe { (arg as *const RangeArg).read_unaligned() };
    // SAFETY: `func` is the non-NULL `pj_range_fn` the caller gave, in this process image (or the
    // one this worker was forked from).
    let func: unsafe extern "C" fn(*mut c_void, usize, usize, *mut TaskOutput) -> i32 =
        unsafe { std::mem::transmute::<usize, _>(range.func) };
    // SAFETY: the `pj_range_fn` contract.
    unsafe {
        func(
            range.userdata as *mut c_void,
            range.start as usize,
            range.end as usize,
            out,
        )
    }
}

/// Runs `fn(userdata, start, end, out)` over `0..n` split into ranges (about 16 per worker, each
/// at least one item), on the object's workers, and returns when every range is done. Nothing
/// comes back but the status: ranges write their results where the caller can read them (its own
/// memory with threads or n_jobs 1; a `pj_shared_t` with processes). `n` 0 runs nothing.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `parallel` or `fn` is NULL; PJ_STATUS_BUSY
/// when another thread's call is in flight; PJ_STATUS_TASK_FAILED when a range returned non-zero:
/// the error names the range's items ("items 4096..8192 failed with code 3: ..."), its task index
/// is the range's first item, and ranges not yet started never start; PJ_STATUS_WORKER_DIED,
/// PJ_STATUS_TIMEOUT, PJ_STATUS_CANCELLED, PJ_STATUS_IO and PJ_STATUS_PANIC as for
/// `pj_parallel_collect`; PJ_STATUS_UNSUPPORTED with start_method "spawn" or "forkserver". With
/// on_error=collect
/// every range runs and the first failed range's error is returned.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_for(
    parallel: *mut super::pj_parallel_t,
    n: usize,
    r#fn: pj_range_fn,
    userdata: *mut c_void,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        let func = r#fn.ok_or_else(|| null_argument("fn"))?;
        if let Some(setting) = parallel.needs_registered_tasks() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "pj_parallel_for does not support {setting} yet: submit registered functions \
                     with pj_parallel_submit_named"
                ),
            ));
        }
        let ranges = parallel.settings().n_jobs.max(1) * RANGES_PER_WORKER;
        let grain = n.div_ceil(ranges).max(1);
        // As integers: they only travel in task arguments, to be turned back into the function
        // and userdata by `run_range`.
        let (func, userdata) = (func as usize, userdata as usize);
        let mut next = 0usize;
        let producer = Box::new(move |sink: &mut dyn FnMut(&[u8])| {
            if next >= n {
                return Ok(false);
            }
            // Saturating: with n near SIZE_MAX, next + grain would wrap and never reach n.
            let end = n.min(next.saturating_add(grain));
            let arg = RangeArg {
                start: next as u64,
                end: end as u64,
                func,
                userdata,
            };
            // SAFETY: RangeArg is plain old data (four integers, no padding).
            let bytes = unsafe {
                std::slice::from_raw_parts(&arg as *const RangeArg as *const u8, ARG_LEN)
            };
            sink(bytes);
            next = end;
            Ok(true)
        });
        // SAFETY: `run_range` only forwards to the caller's `pj_range_fn`, whose contract is that of
        // `pj_task_fn`.
        let callback = unsafe { Callback::new(run_range, std::ptr::null_mut()) };
        let describe = |error: Error| name_range(error, grain, n);
        // Progress counts the loop's items, not its ranges.
        let expected = Expected {
            items: n,
            items_per_task: std::num::NonZeroUsize::new(grain)
                .unwrap_or(std::num::NonZeroUsize::MIN),
        };
        let results = parallel
            .map_expecting(callback, producer, Some(expected))
            .map_err(describe)?;
        match results.errors().first() {
            Some((_, error)) => Err(describe(error.clone())),
            None => Ok(()),
        }
    })
}

/// Rewrites a task error (about range number k) in terms of the range's items.
fn name_range(error: Error, grain: usize, n: usize) -> Error {
    let Some(task) = error.task() else {
        return error;
    };
    let start = task.index.saturating_mul(grain).min(n);
    let end = start.saturating_add(grain).min(n);
    let prefix = format!("task {} ", task.index);
    let detail = error
        .message()
        .strip_prefix(&prefix)
        .or_else(|| {
            error
                .message()
                .strip_prefix(&format!("task {}: ", task.index))
        })
        .unwrap_or(error.message());
    let message = if error.kind() == ErrorKind::TaskFailed {
        format!("items {start}..{end} {detail}")
    } else {
        format!("items {start}..{end}: {detail}")
    };
    let mut context = task.clone();
    context.index = start;
    Error::new(error.kind(), message).with_task(context)
}
