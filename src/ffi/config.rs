//! `pj_config_t`: options for a `pj_parallel_t`, in joblib's keywords and spellings.

use std::ffi::{c_char, c_void};

use super::{
    Handle, Owned, borrow, borrow_mut, borrow_opt, free_box, out_arg, pj_error_t, pj_status, run,
    run_value, run_without_error_out, str_arg,
};
use crate::config::{Config, ProgressHook};
use crate::error::Error;

/// Options for `pj_parallel_new`: every option starts unset (joblib's defaults apply). Created by
/// `pj_config_new`, owned by the caller, freed with `pj_config_free`; `pj_parallel_new` copies it, so
/// it may be changed or freed afterwards. Not thread-safe for writing: do not set options on one
/// config from two threads at once.
///
/// Methods: `pj_config_set`, `pj_config_set_n_jobs`, `pj_config_set_backend`,
/// `pj_config_set_batch_size`, `pj_config_set_verbose`, `pj_config_set_timeout`,
/// `pj_config_set_stack_size`, `pj_config_set_max_tasks_per_child`,
/// `pj_config_set_worker_memory_limit`, `pj_config_set_idle_worker_timeout`,
/// `pj_config_set_progress`, `pj_effective_n_jobs`, `pj_config_free`.
pub struct pj_config_t {
    pub(crate) config: Config,
}

/// A progress callback for `pj_config_set_progress`: called with the `userdata` given there, the
/// number of tasks completed so far, the total number of tasks (-1 while unknown: pj learns it when
/// the input ends, at `pj_parallel_collect` or when the producer returns 0) and the seconds
/// elapsed since the call started.
///
/// Threading: always on the thread that drives the call (inside `pj_parallel_submit`,
/// `pj_parallel_collect`, `pj_parallel_map` or `pj_parallel_next`), never concurrently, on every
/// backend (n_jobs 1 included). It is called once per completed task, in order (completed = 1, 2,
/// 3, ...), but as batches complete: with auto batching several calls come at once. It must return
/// quickly, must not unwind, and must not use the `pj_parallel_t` running the call, except for
/// `pj_parallel_cancel`.
pub type pj_progress_fn = Option<
    unsafe extern "C" fn(userdata: *mut c_void, completed: u64, total: i64, elapsed_seconds: f64),
>;

// SAFETY: C only holds configs `pj_config_new` gave it, alive until `pj_config_free`.
unsafe impl Handle for pj_config_t {
    const ARG: &'static str = "config";
}

impl Owned for pj_config_t {}

/// Creates a config with every option unset and stores it in `*config_out` (owned by the caller:
/// free it with `pj_config_free`).
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_NULL_ARGUMENT when `config_out` is NULL (nothing is created).
/// It takes no `error_out`, unlike other fallible functions: a NULL `config_out` is its only
/// failure, so the status is the whole report.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_new(config_out: *mut *mut pj_config_t) -> pj_status {
    run_without_error_out(|| {
        out_arg(config_out, "config_out")?.give(pj_config_t {
            config: Config::default(),
        });
        Ok(())
    })
}

/// Frees a config. NULL is a no-op.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_free(config: *mut pj_config_t) {
    run_value((), || free_box(config))
}

/// Sets an option from strings, with joblib's keywords and spellings: `n_jobs` ("4", "-1", "none"),
/// `backend` ("threads"/"threading", "sequential", "processes"/"loky"/"multiprocessing", "mpi"), `prefer`
/// ("threads", "processes", "none"), `require` ("sharedmem", "none"), `verbose` ("0", "10"),
/// `timeout` (seconds, "none"), `pre_dispatch` ("all", "2*n_jobs", "3"), `batch_size` ("auto", "8"; at most 1048576),
/// `temp_folder` (a path), `max_nbytes` ("1M", "512k", "none", "1048576"), `mmap_mode` ("r", "r+",
/// "w+", "c", "none"), `return_as` ("list", "generator", "generator_unordered"), and pj's own
/// `keep_workers` ("true"/"false": worker processes outlive a call; they then see the parent's memory
/// as of their fork, so userdata created after it is not valid in them), `on_error` ("raise": the
/// first failure ends the call, as joblib; "collect": every task runs, the call returns OK and each
/// result carries its own status: see `pj_results_status`) and `handle_sigint` ("true"/"false":
/// while a call blocks, a SIGINT cancels it instead of killing the process; see
/// `pj_parallel_cancel`), `progress` ("bar": a progress bar on stderr, redrawn in place on a
/// terminal, a plain line every 2 s otherwise; "none") and `start_method` ("fork", the default:
/// workers are copies of the caller; "spawn": workers are fresh runs of the executable, which must
/// call `pj_worker_main_if_requested` after its `pj_register` calls; tasks then name registered
/// functions, without userdata; see `examples/spawn.c`; "forkserver": workers are forks of pj's
/// fork server, a copy of this process made once, when the first such executor is created or at
/// `pj_forkserver_start`, so a worker starts in the same time whatever memory the caller holds by
/// then (fork's cold call grows with it); workers see memory as of the server's start and know the
/// functions registered by then, so tasks name registered functions, without userdata, as with
/// "spawn", but the program needs no `pj_worker_main_if_requested`; see `pj_forkserver_start`),
/// `stack_size` (bytes, "8M"-style sizes
/// or "none": see `pj_config_set_stack_size`) and `batch_bytes` (bytes, "16M"-style sizes, or
/// "none" for the default 16M: the most argument plus result bytes an automatically sized batch
/// takes, from a running estimate of a task's bytes, at least one task a batch; a fixed
/// `batch_size` ignores it. A stream of large results then holds about pre_dispatch batches of
/// at most this many bytes), `max_tasks_per_child` (a positive integer, or "none": see
/// `pj_config_set_max_tasks_per_child`), `worker_memory_limit` (bytes, "512M"-style sizes, or
/// "none": see `pj_config_set_worker_memory_limit`) and `idle_worker_timeout` (seconds, or
/// "none" to keep idle workers: see `pj_config_set_idle_worker_timeout`). Every value is validated
/// now. On failure the config is unchanged.
///
/// Memmapping (process backend only, as joblib): a task argument larger than `max_nbytes` (default
/// 1M; "none" disables) is written once to an unnamed file in the temp folder (`temp_folder`, else
/// PJ_TEMP_FOLDER, /dev/shm with more than 2 GB free, TMPDIR/TEMP/TMP, /tmp; resolved at each
/// call) and mapped by the workers instead of being copied to each of them; the same content
/// submitted many times is written once. `mmap_mode` decides the worker's view: "r" (default)
/// read-only, a write kills the worker (PJ_STATUS_WORKER_DIED, SIGSEGV); "r+" and "w+" writable,
/// each task with its own copy; "c" copy-on-write; "none" (or "None", joblib's `mmap_mode=None`,
/// which loads arrays into memory instead of memmapping them) memmaps nothing: large arguments and
/// results are copied through the socket like small ones, into the worker's (or caller's) own
/// memory, and the temp folder is never used. Writes never reach your original buffer: share
/// writable memory with `pj_shared_t`. A folder that pj chose itself (no `temp_folder`, no
/// PJ_TEMP_FOLDER) without room for an argument gives way to the next folder of that order with
/// room (/dev/shm, then TMPDIR/TEMP/TMP, then /tmp). A folder that is missing, unwritable, or full
/// when named by `temp_folder` or PJ_TEMP_FOLDER (or when no folder of the order has room) fails
/// the call with PJ_STATUS_IO naming it, before the task that needed it runs; a call with no argument above
/// max_nbytes never touches the folder. Results larger than max_nbytes come back the same way:
/// `pj_out_alloc` (or `pj_out_set`) hands the task a window of an unnamed file, which the caller's
/// results map, so the bytes are neither sent nor copied (up to 16 new files per batch; later
/// large results stay in the socket); once the results are freed, the executor keeps those files
/// (up to 256 MiB of them) for its next calls' large results. It keeps its argument files (up to
/// 256 MiB of them) too, for its next calls, which write their large arguments into the same
/// space, so kept workers read them without new files or page faults. Both go when the executor
/// is freed. Files have no name, so nothing is left behind, even if the process is killed.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config`, `key` or `value` is NULL;
/// PJ_STATUS_INVALID_ARGUMENT for an unknown key or a bad value (the message quotes it), or a string
/// that is not UTF-8.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set(
    config: *mut pj_config_t,
    key: *const c_char,
    value: *const c_char,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let config = &mut borrow_mut(config)?.config;
        // SAFETY: the caller passes NUL-terminated strings that live for the call (contract).
        let (key, value) = unsafe { (str_arg(key, "key")?, str_arg(value, "value")?) };
        config.set(key, value)
    })
}

/// Sets `n_jobs`: a positive number of workers, at most 65536, or negative for "all CPUs but |n|-1"
/// (cpus + 1 + n, at least 1), as joblib. Unset means 1. A positive value is taken as given, never
/// capped at the CPU count (as in joblib).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// for 0 (no meaning) or a value above 65536 (any negative value gives at least 1 worker).
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_n_jobs(
    config: *mut pj_config_t,
    n_jobs: i64,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || borrow_mut(config)?.config.set_n_jobs(n_jobs))
}

/// Sets the backend by name: "processes" (the default; aliases "loky", "multiprocessing"),
/// "threads" (alias "threading"), "sequential" or "mpi". With an effective n_jobs of 1 every backend
/// runs the tasks sequentially in the caller's thread, as joblib does.
///
/// "processes": the processes a task starts (`system`, `fork`, `posix_spawn`) die with its worker.
/// Each worker process leads a process group of its own, which they inherit, and whenever pj ends
/// a worker (its task crashed, exited or ran past `timeout`, the call was cancelled or failed fast,
/// the call ended without keep_workers, or `pj_parallel_free`) it SIGKILLs that group too, as loky
/// kills a worker's process tree; the caller's own children and process group are never touched.
/// So nothing a task left running in the background outlives its worker, nor `pj_parallel_free`.
/// A process that leaves the group (`setsid`, as a daemon does, or `setpgid`) is out of pj's
/// reach: that is how a task starts something meant to outlive it. The workers of a process
/// pool a task starts stay in its worker's group. If the caller itself is killed, its workers die
/// with it but what their tasks started stays. Being in their own groups, workers are not in a
/// terminal's foreground group: the terminal's Ctrl-C, Ctrl-\ and Ctrl-Z reach the caller only
/// (handle_sigint turns Ctrl-C into a cancel, which ends the workers and their groups). Workers
/// ignore SIGINT, SIGTTIN and SIGTTOU, and the processes tasks start inherit that: a task that
/// reads the terminal gets EIO instead of being stopped.
///
/// "mpi": the program runs under `mpirun -n N` and calls `pj_mpi_main(&argc, &argv)` (pj_mpi.h, the
/// pj_mpi library built where MPI is installed) after its `pj_register` calls; rank 0 continues as
/// the caller and ranks 1..N-1 are the workers (n_jobs, when positive, caps how many are used; one
/// rank alone runs calls sequentially). Tasks name registered functions, without userdata
/// (`pj_parallel_submit_named`), and arguments and results travel by MPI messages (a batch above
/// 2 GiB in several; no memmapping). Each worker rank runs its batches in a child process (forked;
/// spawned from the executable when the program called `pj_worker_main_if_requested` before
/// `pj_mpi_main`), so a task that crashes, exits or overruns `timeout` is reported
/// (PJ_STATUS_WORKER_DIED / PJ_STATUS_TIMEOUT, the message ending "(MPI rank R)") and the rank
/// goes on; a rank that stops answering for 10 s
/// fails its batch with PJ_STATUS_WORKER_DIED and gets no more work (by default Open MPI ends the
/// whole job when a rank dies). An MPI operation that fails on rank 0 (pj's communicator returns
/// MPI errors) fails that batch when it was a batch's send, and otherwise every batch in flight,
/// with PJ_STATUS_IO naming the error; after the latter (or a panic of pj's there) the backend
/// has ended for the program: later calls fail with PJ_STATUS_IO, naming the error, and the
/// worker ranks leave with status 2 at detach. A worker rank whose own MPI operation fails (or
/// in which pj panics) stops serving and tells rank 0 why: its batches fail with PJ_STATUS_IO
/// ("the rank stopped serving: ...", naming the rank) and the other ranks go on. A rank's forked
/// child leads its own process group as a process worker does: what a task starts dies with that child (crash, timeout, cancel, fail-fast), and
/// at the latest when the rank's pj ends; the ranks themselves are mpirun's, and what becomes of
/// their processes when a rank dies or the job is killed is mpirun's to decide. Without
/// `pj_mpi_main`, `pj_parallel_new` fails with PJ_STATUS_UNSUPPORTED.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` or `backend` is NULL;
/// PJ_STATUS_INVALID_ARGUMENT for an unknown name.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_backend(
    config: *mut pj_config_t,
    backend: *const c_char,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let config = &mut borrow_mut(config)?.config;
        // SAFETY: the caller passes a NUL-terminated string that lives for the call (contract).
        let backend = unsafe { str_arg(backend, "backend") }?;
        config.set_backend(backend)
    })
}

/// Sets a fixed batch size (tasks per batch), from 1 to 1048576 (2^20; the string setter checks
/// the same range). The default is "auto" (joblib's heuristic), which only the string setter can
/// restore: `pj_config_set(cfg, "batch_size", "auto", &err)`.
///
/// "auto" starts each call with batches of one task and doubles the size while batches complete in
/// under 0.2 s (halving it above 2 s), as joblib's process backends do; the statistics start afresh
/// at each call. A deliberate deviation from joblib: pj auto-batches on the threads backend too
/// (joblib's threading backend always dispatches single tasks), because a C task can take
/// nanoseconds and one dispatch per task would cost more than the task. Set 1 for joblib's threading
/// behaviour (and its exact verbose lines). With n_jobs 1 pj batches too (single tasks would cost
/// about 1 us each instead of tens of ns) but reports progress task by task and prints no batch-size
/// lines, so the verbose lines are those of joblib's sequential backend.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// for 0 or a value above 1048576.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_batch_size(
    config: *mut pj_config_t,
    batch_size: usize,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        borrow_mut(config)?.config.set_batch_size(batch_size)
    })
}

/// Sets joblib's verbosity level (0 silent; progress lines on stderr below 50, stdout from 50).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// for a negative level.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_verbose(
    config: *mut pj_config_t,
    verbose: i64,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        borrow_mut(config)?.config.set_verbose(verbose)
    })
}

/// Sets the per-task timeout in seconds; INFINITY means no limit (the default).
///
/// The clock starts when a task starts on its worker (joblib's starts when the caller first waits
/// for a batch, so queueing counts there and background time does not; pj's is simply "no task
/// runs longer than this"). A task past the limit fails the call with PJ_STATUS_TIMEOUT. Processes:
/// its worker gets SIGTERM, then SIGKILL 100 ms later, and is replaced by the next batch. Threads: a
/// thread cannot be killed, so the stuck thread is abandoned (it finishes the callback in the
/// background and its result is dropped) and replaced. The check runs every tenth of the limit
/// (at most 100 ms apart, 50 ms on threads). Sequential (n_jobs 1): no watcher; a warning is
/// printed on stderr at each call, as joblib does, and tasks run to completion.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// for 0, a negative value or NaN.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_timeout(
    config: *mut pj_config_t,
    seconds: f64,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        borrow_mut(config)?.config.set_timeout(seconds)
    })
}

/// Sets the stack size, in bytes, of the threads that run tasks: the worker threads (threads
/// backend) and the thread that runs tasks in each forked worker process. The default is the
/// caller's own stack size, the soft RLIMIT_STACK (`ulimit -s`, 8 MiB on most Linux systems; 8 MiB
/// when unlimited), at least 2 MiB and at most 1 GiB. With n_jobs 1, tasks run on the caller's
/// thread; spawned workers (start_method "spawn") run them on their main thread, whose stack is
/// RLIMIT_STACK, and fork server workers ("forkserver") on a stack of the default size; none of
/// these is changed by this option. A task that overflows its stack kills its
/// worker process (PJ_STATUS_WORKER_DIED, SIGSEGV) but, on threads, the whole program, as any
/// stack overflow does: give deep recursion room here. `pj_config_set(cfg, "stack_size", "none")`
/// restores the default.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// below 65536 (64 KiB) or above 1073741824 (1 GiB).
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_stack_size(
    config: *mut pj_config_t,
    bytes: usize,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        borrow_mut(config)?.config.set_stack_size(bytes)
    })
}

/// Sets `max_tasks_per_child` (concurrent.futures' name): a worker process is replaced by a fresh
/// one after running this many tasks, so that what a task leaks or leaves behind (memory, file
/// descriptors, global state) lives at most that long. The count is exact: a batch larger than a
/// worker's remaining allowance is split, its first part finishing on that worker and the rest
/// going on in its successor. Replacement is silent: the worker exits normally between batches, no
/// task is lost, run twice or blamed, and the results come back as usual. Unset (the default, or
/// `pj_config_set(cfg, "max_tasks_per_child", "none")`) means never.
///
/// Process backend only. Threads and sequential (n_jobs 1) have no worker process and ignore it;
/// MPI ignores it too (each worker rank keeps its own forked child for the whole job). With
/// `keep_workers`, a worker's count goes on across calls.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// for 0 (or a value above SIZE_MAX).
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_max_tasks_per_child(
    config: *mut pj_config_t,
    max_tasks: u64,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        borrow_mut(config)?
            .config
            .set_max_tasks_per_child(max_tasks)
    })
}

/// Sets `worker_memory_limit` in bytes (loky's memory-leak protection): after each batch the
/// caller reads its worker process's resident set size (RSS, from /proc/<pid>/statm; without
/// /proc the limit is not enforced); a worker above the limit is replaced by a fresh one before its
/// next batch. A task that leaks therefore keeps a worker
/// under the limit plus what one batch leaks (a fixed `batch_size` bounds that; auto batching
/// sizes batches by time, not memory). Replacement is silent: the worker exits normally between
/// batches, no task is lost, run twice or blamed. A forked worker starts with the caller's
/// resident pages counted in its RSS, so set the limit well above the caller's own size; a limit
/// below it replaces every worker after each batch. Unset (the default, or
/// `pj_config_set(cfg, "worker_memory_limit", "none")`) means no limit. The string setter takes
/// "512M"-style sizes.
///
/// Process backend only. Threads and sequential (n_jobs 1) share the caller's memory and ignore
/// it; MPI ignores it too (each worker rank keeps its own forked child for the whole job).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// for 0.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_worker_memory_limit(
    config: *mut pj_config_t,
    bytes: u64,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        borrow_mut(config)?.config.set_worker_memory_limit(bytes)
    })
}

/// Sets `idle_worker_timeout` in seconds (loky's name and default, 300): a worker process that has
/// had no batch for this long exits, and the next batch that needs it starts a new one (forked
/// then, so it sees the caller's memory as it is then). This matters for kept workers
/// (`keep_workers`), which otherwise wait between calls; without `keep_workers` workers end with
/// each call anyway, and the timeout only ends a worker left idle within a long call (a slow
/// producer, say). Replacement is silent: the caller's pool retires the idle worker itself (the
/// worker never leaves on its own), so a call that starts as a worker is exiting simply gets a new
/// one, never an error. INFINITY (or `pj_config_set(cfg, "idle_worker_timeout", "none")`) means
/// idle workers never exit.
///
/// Process backend only. Threads and sequential (n_jobs 1) ignore it (worker threads live as long
/// as their `pj_parallel_t`); MPI ignores it too (each worker rank keeps its own forked child for
/// the whole job).
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `config` is NULL; PJ_STATUS_INVALID_ARGUMENT
/// for 0, a negative value or NaN.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_idle_worker_timeout(
    config: *mut pj_config_t,
    seconds: f64,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        borrow_mut(config)?.config.set_idle_worker_timeout(seconds)
    })
}

/// Sets (or, with `fn` NULL, clears) the progress callback: see `pj_progress_fn`. `userdata` must stay
/// valid while an object created from this config runs calls. Works with verbose lines and the
/// progress bar (`pj_config_set(cfg, "progress", "bar")`), which are independent of it.
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_NULL_ARGUMENT when `config` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_set_progress(
    config: *mut pj_config_t,
    r#fn: pj_progress_fn,
    userdata: *mut c_void,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        let config = &mut borrow_mut(config)?.config;
        config.progress_hook = r#fn.map(|func| ProgressHook { func, userdata });
        Ok(())
    })
}

/// The number of CPUs pj may use: the smallest of the online CPUs, the process's affinity mask,
/// its cgroup CPU quota (rounded up) and the PJ_MAX_CPU_COUNT environment variable; at least 1.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn pj_cpu_count() -> usize {
    run_value(1, crate::cpu::cpu_count)
}

/// The number of workers a `pj_parallel_t` made from `config` would use (joblib's
/// `effective_n_jobs`), scoped defaults (`pj_config_push`) included: 1 when n_jobs is unset, or the
/// backend is "sequential"; NULL means an empty config.
/// Returns 0 only when the config cannot be resolved (then `pj_parallel_new` reports why).
#[unsafe(no_mangle)]
pub extern "C" fn pj_effective_n_jobs(config: *const pj_config_t) -> usize {
    run_value(0, || {
        let own = borrow_opt(config).map_or_else(Config::default, |c| c.config.clone());
        crate::config::scope::with_scopes(&own)
            .resolve(crate::cpu::cpu_count())
            .map_or(0, |resolved| resolved.n_jobs)
    })
}

/// Pushes a copy of `config` as this thread's innermost scoped default (joblib's
/// `parallel_config`): a `pj_parallel_t` created on this thread afterwards uses each option from its
/// own config if set there, else from the innermost pushed config that sets it, else joblib's
/// default; `pj_effective_n_jobs` follows the same rule. Other threads (pj's workers included) do
/// not see it. Undo with `pj_config_pop`.
///
/// `require` ("sharedmem") is a hard constraint, as in joblib: a backend without shared memory
/// ("processes", "mpi") that the object's own config does not name together with the constraint
/// (say, pushed here while the object's config sets require "sharedmem", or both pushed here)
/// gives way to "threads", with the object's own n_jobs or 1 (a pushed n_jobs was meant for the
/// backend given up), and at verbose >= 10 joblib's notice "Using ThreadingBackend as joblib
/// backend instead of LokyBackend as the latter does not provide shared memory semantics." is
/// printed on stdout. Only the object's own config setting both conflicts: `pj_parallel_new` then
/// fails with PJ_STATUS_INVALID_ARGUMENT.
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_NULL_ARGUMENT when `config` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_push(
    config: *const pj_config_t,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || {
        crate::config::scope::push(&borrow(config)?.config);
        Ok(())
    })
}

/// Removes this thread's innermost scoped default pushed by `pj_config_push`.
///
/// Returns PJ_STATUS_OK, or PJ_STATUS_INVALID_ARGUMENT when nothing was pushed on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn pj_config_pop(error_out: *mut *mut pj_error_t) -> pj_status {
    run(error_out, || {
        if crate::config::scope::pop() {
            Ok(())
        } else {
            Err(Error::invalid(
                "pj_config_pop: no config was pushed on this thread",
            ))
        }
    })
}
