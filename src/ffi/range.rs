//! `pj_parallel_for`: OpenMP's `parallel for` and rayon's `par_iter` for C: one callback per range
//! of indices instead of one per item, so a loop body costs what it costs in a plain loop. Its
//! named form (`pj_register_range`, `pj_parallel_for_named`) runs on every backend and start
//! method: the range travels with the registry index of its function instead of its address.

use std::ffi::{c_char, c_void};

use super::handle::out_opt;
use super::parallel::parallel_behind;
use super::results::pj_results_t;
use super::{null_argument, pj_error_t, pj_status, run, str_arg};
use crate::dispatch::Results;
use crate::error::{Error, ErrorKind, Result};
use crate::parallel::Parallel;
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

/// The task argument of one range of a named loop: the range and its function's registry index.
#[repr(C)]
#[derive(Clone, Copy)]
struct NamedRangeArg {
    start: u64,
    end: u64,
    index: u64,
}

const NAMED_ARG_LEN: usize = std::mem::size_of::<NamedRangeArg>();

/// The task callback of named loops (registered with every range function, so that workers that
/// do not share the caller's image find it by index): unpacks a range and calls the range function
/// registered at the index it carries, with NULL userdata.
unsafe extern "C" fn run_named_range(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    if len != NAMED_ARG_LEN {
        return -1;
    }
    // SAFETY: pj passes the `NAMED_ARG_LEN` bytes the producer wrote (read unaligned).
    let range = unsafe { (arg as *const NamedRangeArg).read_unaligned() };
    let Some(func) = u32::try_from(range.index)
        .ok()
        .and_then(crate::registry::range_at)
    else {
        return -1;
    };
    // SAFETY: the `pj_range_fn` contract, with NULL userdata as `pj_register_range` documents.
    unsafe {
        func(
            std::ptr::null_mut(),
            range.start as usize,
            range.end as usize,
            out,
        )
    }
}

/// Runs `callback` over `0..n` cut in ranges of about `n / (16 x n_jobs)` items, each range's
/// task argument made by `arg(start, end)`; errors are rewritten in terms of the ranges' items.
fn run_ranges<const LEN: usize>(
    parallel: &Parallel,
    n: usize,
    callback: Callback,
    arg: impl Fn(u64, u64) -> [u8; LEN] + Send + 'static,
) -> Result<Results> {
    let ranges = parallel.settings().n_jobs.max(1) * RANGES_PER_WORKER;
    let grain = n.div_ceil(ranges).max(1);
    let mut next = 0usize;
    let producer = Box::new(move |sink: &mut dyn FnMut(&[u8])| {
        if next >= n {
            return Ok(false);
        }
        // Saturating: with n near SIZE_MAX, next + grain would wrap and never reach n.
        let end = n.min(next.saturating_add(grain));
        sink(&arg(next as u64, end as u64));
        next = end;
        Ok(true)
    });
    let describe = |error: Error| name_range(error, grain, n);
    // Progress counts the loop's items, not its ranges.
    let expected = Expected {
        items: n,
        items_per_task: std::num::NonZeroUsize::new(grain).unwrap_or(std::num::NonZeroUsize::MIN),
    };
    let results = parallel
        .map_expecting(callback, producer, Some(expected))
        .map_err(describe)?;
    match results.errors().first() {
        Some((_, error)) => Err(describe(error.clone())),
        None => Ok(results),
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
/// `pj_parallel_collect`; PJ_STATUS_UNSUPPORTED with start_method "spawn" or "forkserver" and
/// backend "mpi", whose workers do not share the caller's function addresses (use
/// `pj_parallel_for_named`). With on_error=collect every range runs and the first failed range's
/// error is returned.
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
                    "pj_parallel_for does not support {setting}: register the range function \
                     with pj_register_range and call pj_parallel_for_named"
                ),
            ));
        }
        // As integers: they only travel in task arguments, to be turned back into the function
        // and userdata by `run_range`.
        let (func, userdata) = (func as usize, userdata as usize);
        // SAFETY: `run_range` only forwards to the caller's `pj_range_fn`, whose contract is that of
        // `pj_task_fn`.
        let callback = unsafe { Callback::new(run_range, std::ptr::null_mut()) };
        run_ranges(parallel, n, callback, move |start, end| {
            let arg = RangeArg {
                start,
                end,
                func,
                userdata,
            };
            // SAFETY: RangeArg is plain old data (four integers, no padding).
            unsafe { std::mem::transmute::<RangeArg, [u8; ARG_LEN]>(arg) }
        })?;
        Ok(())
    })
}

/// Registers a range function under `name` (UTF-8, copied) for `pj_parallel_for_named`, in the
/// same registry as `pj_register` and under the same rules: every process of the program (spawned
/// workers, MPI ranks) registers the same functions under the same names in the same order,
/// before `pj_worker_main_if_requested` / `pj_mpi_main`, and a name is unique among task and range
/// functions. The function is called with NULL userdata. Thread-safe.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `name` or `fn` is NULL;
/// PJ_STATUS_INVALID_ARGUMENT for an empty name, a name already registered for another function,
/// or a name that is not UTF-8.
#[unsafe(no_mangle)]
pub extern "C" fn pj_register_range(
    name: *const c_char,
    r#fn: pj_range_fn,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        // SAFETY: the caller passes a NUL-terminated string that lives for the call (contract).
        let name = unsafe { str_arg(name, "name") }?;
        let func = r#fn.ok_or_else(|| null_argument("fn"))?;
        crate::registry::register_range(name, func, run_named_range)
    })
}

/// `pj_parallel_for` with the range function registered under `name` (see `pj_register_range`),
/// called with NULL userdata: the same ranges (about 16 per worker over `0..n`, in order), on
/// every backend and start method (threads, sequential, fork, spawn, MPI). What a range sets with
/// `pj_out_set` / `pj_out_alloc` comes back: when `results_out` is not NULL it receives one result
/// per range, range k (counted from 0 in item order) at index k (owned by the caller: free with
/// `pj_results_free`); a range that needs its bounds in its output writes them there. Ranges that
/// run in other processes (spawn, MPI) reach the caller only through their results.
///
/// Returns the statuses of `pj_parallel_for` (without its PJ_STATUS_UNSUPPORTED), and
/// PJ_STATUS_NULL_ARGUMENT when `name` is NULL; PJ_STATUS_INVALID_ARGUMENT when no range function
/// is registered under `name`. `*results_out` is written only on success.
#[unsafe(no_mangle)]
pub extern "C" fn pj_parallel_for_named(
    parallel: *mut super::pj_parallel_t,
    name: *const c_char,
    n: usize,
    results_out: *mut *mut pj_results_t,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let parallel = parallel_behind(parallel)?;
        // SAFETY: the caller passes a NUL-terminated string that lives for the call (contract).
        let name = unsafe { str_arg(name, "name") }?;
        let index = crate::registry::lookup_range(name).ok_or_else(|| {
            Error::invalid(format!("no range function is registered under \"{name}\""))
        })?;
        // SAFETY: `run_named_range` only forwards to a registered `pj_range_fn`, whose contract is
        // that of `pj_task_fn`.
        let callback = unsafe { Callback::new(run_named_range, std::ptr::null_mut()) };
        let index = u64::from(index);
        let results = run_ranges(parallel, n, callback, move |start, end| {
            let arg = NamedRangeArg { start, end, index };
            // SAFETY: NamedRangeArg is plain old data (three integers, no padding).
            unsafe { std::mem::transmute::<NamedRangeArg, [u8; NAMED_ARG_LEN]>(arg) }
        })?;
        if let Some(out) = out_opt(results_out) {
            out.give(pj_results_t::new(results));
        }
        Ok(())
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
