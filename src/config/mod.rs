//! Options of a parallel call, in joblib's keywords and spellings: parsing, validation, layering of
//! scoped defaults, and resolution into the settings one call uses.
//!
//! Every value is validated when it is set (so a C caller learns about a typo where it made it, with
//! the bad value quoted), and again when a [`Config`] is resolved (its fields are public, so
//! resolution cannot assume they went through the setters). A [`Config`] only records what was set;
//! joblib's defaults are applied by [`Config::resolve`], which lets scoped defaults be layered with
//! [`Config::layered_over`] first.
//!
//! This module holds [`Config`], [`Resolved`] and the defaults and limits; the parts live in:
//! - `keywords`: the keyword enums ([`BackendKind`], [`Prefer`], [`MmapMode`], ...) and their
//!   spellings;
//! - `parse`: the parsers and checks of option values given as strings;
//! - `size`: [`parse_max_nbytes`] and [`parse_mmap_mode`] (sizes like `"1.5M"`, computed exactly);
//! - `pre_dispatch`: [`PreDispatchExpr`], the `pre_dispatch` expression language;
//! - [`scope`]: the thread's stack of scoped defaults.

mod keywords;
mod parse;
mod pre_dispatch;
pub mod scope;
mod size;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

pub use keywords::{
    BackendKind, BatchSize, MaxNbytes, MmapMode, OnError, PreDispatch, Prefer, ProgressMode,
    Require, ReturnAs, StartMethod,
};
use parse::{
    check_batch_size, check_idle_worker_timeout, check_idle_worker_timeout_limit,
    check_max_tasks_per_child, check_n_jobs, check_stack_size, check_timeout, check_timeout_limit,
    check_verbose, check_worker_memory_limit, parse_backend, parse_batch_bytes, parse_batch_size,
    parse_bool, parse_idle_worker_timeout, parse_max_tasks_per_child, parse_n_jobs, parse_on_error,
    parse_prefer, parse_progress, parse_require, parse_return_as, parse_stack_size,
    parse_start_method, parse_temp_folder, parse_timeout, parse_verbose, parse_worker_memory_limit,
};
pub use size::{parse_max_nbytes, parse_mmap_mode};

/// The backend used when neither a backend nor a hint is given: processes, as joblib (loky).
pub const DEFAULT_BACKEND: BackendKind = BackendKind::Processes;

/// joblib's default `pre_dispatch`.
pub const DEFAULT_PRE_DISPATCH: &str = "2*n_jobs";

/// joblib's default `max_nbytes` (`"1M"`).
pub const DEFAULT_MAX_NBYTES: u64 = 1 << 20;

/// The default cap on an auto batch's argument and result bytes (`batch_bytes`, pj's own): with
/// pre_dispatch batches in the window, a stream of large results holds about pre_dispatch × this
/// (plus, on processes, each worker's reused argument buffer of up to a batch). 16 MiB keeps a
/// stream of 1 MiB results on 2 workers under 128 MiB and is no slower than larger batches:
/// copying the bytes costs far more than a batch's fixed cost.
pub const DEFAULT_BATCH_BYTES: usize = 16 << 20;

/// loky's default `idle_worker_timeout`: kept worker processes idle this long exit.
pub const DEFAULT_IDLE_WORKER_TIMEOUT: Duration = Duration::from_secs(300);

/// When worker processes are replaced or retired (process backend only): after
/// `max_tasks_per_child` tasks, when their resident memory exceeds `worker_memory_limit` after a
/// batch, or after `idle_worker_timeout` without work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recycling {
    /// A worker is replaced after running this many tasks (`None`: never).
    pub max_tasks_per_child: Option<NonZeroUsize>,
    /// A worker whose resident set exceeds this many bytes after a batch is replaced before the
    /// next one (`None`: never).
    pub worker_memory_limit: Option<u64>,
    /// A worker idle this long exits; the next batch starts a new one (`None`: never).
    pub idle_worker_timeout: Option<Duration>,
}

impl Recycling {
    /// Workers live as long as their pool (MPI worker ranks' own child).
    pub const NEVER: Recycling = Recycling {
        max_tasks_per_child: None,
        worker_memory_limit: None,
        idle_worker_timeout: None,
    };
}

/// The largest accepted `n_jobs`. joblib has no cap, but pj starts that many threads or processes,
/// and a typo like `n_jobs=1000000` should fail at once rather than exhaust the machine.
pub const MAX_N_JOBS: i64 = 65_536;

/// The largest fixed `batch_size`: a batch's tasks wait for one another in one worker, so beyond
/// a million there is nothing left to amortise, only memory to exhaust (auto batching stops far
/// lower, at [`crate::dispatch::batching::MAX_BATCH_SIZE`]).
pub const MAX_FIXED_BATCH_SIZE: usize = 1 << 20;

/// The smallest accepted `stack_size`: room for pj's own frames and a small task.
pub const MIN_STACK_SIZE: usize = 64 << 10;

/// The largest accepted `stack_size` (1 GiB); also the most an inherited RLIMIT_STACK gives.
pub const MAX_STACK_SIZE: usize = 1 << 30;

/// The task stack when RLIMIT_STACK is unlimited: Linux's usual limit (8 MiB).
pub const UNLIMITED_STACK_DEFAULT: usize = 8 << 20;

/// Rust's own thread stack, the least a task stack is given by default (2 MiB).
const RUST_THREAD_STACK: usize = 2 << 20;

/// The option keys understood by [`Config::set`], in joblib's spelling.
pub const KEYS: [&str; 22] = [
    "n_jobs",
    "backend",
    "prefer",
    "require",
    "verbose",
    "timeout",
    "pre_dispatch",
    "batch_size",
    "temp_folder",
    "max_nbytes",
    "mmap_mode",
    "return_as",
    "keep_workers",
    "on_error",
    "handle_sigint",
    "progress",
    "start_method",
    "stack_size",
    "batch_bytes",
    "max_tasks_per_child",
    "worker_memory_limit",
    "idle_worker_timeout",
];

/// A progress callback, as C declares `pj_progress_fn`: called with (userdata, completed tasks,
/// total or -1 when unknown, elapsed seconds).
pub type ProgressFn = unsafe extern "C" fn(*mut std::ffi::c_void, u64, i64, f64);

/// A progress callback and its userdata (plain data: configs are copied into each object).
#[derive(Clone, Copy, Debug)]
pub struct ProgressHook {
    /// The function.
    pub func: ProgressFn,
    /// Passed back to it unchanged.
    pub userdata: *mut std::ffi::c_void,
}

// SAFETY: the hook is only ever called on the thread that drives a call (documented in the header);
// moving the pointer pair between threads with the config is what the C API's contract allows.
unsafe impl Send for ProgressHook {}
// SAFETY: as above: shared references only copy the pair, never call it concurrently.
unsafe impl Sync for ProgressHook {}

impl ProgressHook {
    /// Calls the hook.
    ///
    /// # Safety
    /// Under the `pj_progress_fn` contract: on the thread driving the call, while the userdata is
    /// valid.
    pub unsafe fn call(&self, completed: u64, total: i64, elapsed_seconds: f64) {
        // SAFETY: per this function's contract.
        unsafe { (self.func)(self.userdata, completed, total, elapsed_seconds) }
    }
}

impl PartialEq for ProgressHook {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.func, other.func) && self.userdata == other.userdata
    }
}

/// The options of a call as they were set. Every field `None` means "not set here", so that
/// scoped defaults can be layered ([`Config::layered_over`]) before joblib's defaults are applied
/// ([`Config::resolve`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Requested workers: positive, or negative for "all CPUs but |n|-1". Never `Some(0)`.
    pub n_jobs: Option<i64>,
    /// An explicit backend; it wins over `prefer`.
    pub backend: Option<BackendKind>,
    /// joblib's class name for `backend` as it was spelt, when it is not the kind's own
    /// ([`BackendKind::joblib_class_name`]): `multiprocessing` runs on pj's process pool as `loky`
    /// does, but joblib announces it as `MultiprocessingBackend`. Set and layered with `backend`.
    pub backend_class: Option<&'static str>,
    /// A soft backend hint.
    pub prefer: Option<Prefer>,
    /// A hard backend constraint.
    pub require: Option<Require>,
    /// joblib's verbosity level (>= 0).
    pub verbose: Option<i64>,
    /// `Some(None)`: explicitly no limit (it overrides an outer scope's limit); `Some(Some(d))`: a
    /// limit `d > 0`. The setters check and convert the value once; [`Config::resolve`] only
    /// refuses a zero set directly in the field.
    pub timeout: Option<Option<Duration>>,
    /// Tasks read before the first completion.
    pub pre_dispatch: Option<PreDispatch>,
    /// Tasks per batch.
    pub batch_size: Option<BatchSize>,
    /// Where memory-mapped files go; absolute (made so when set).
    pub temp_folder: Option<PathBuf>,
    /// Size above which arguments go through memory-mapped files.
    pub max_nbytes: Option<MaxNbytes>,
    /// How workers map those files.
    pub mmap_mode: Option<MmapMode>,
    /// How results are handed back.
    pub return_as: Option<ReturnAs>,
    /// Keep worker processes alive across calls (pj's own option; joblib has a reusable executor).
    pub keep_workers: Option<bool>,
    /// Fail fast, or collect per-task errors (pj's own option).
    pub on_error: Option<OnError>,
    /// Cancel a blocked call on SIGINT, with a handler installed only while it blocks (pj's own).
    pub handle_sigint: Option<bool>,
    /// A progress bar, or none (pj's own).
    pub progress: Option<ProgressMode>,
    /// A progress callback (pj's own; set with `pj_config_set_progress`).
    pub progress_hook: Option<ProgressHook>,
    /// How worker processes start.
    pub start_method: Option<StartMethod>,
    /// Bytes of stack for the threads that run tasks (worker threads, and the thread of each worker
    /// process); within [`MIN_STACK_SIZE`]..=[`MAX_STACK_SIZE`].
    pub stack_size: Option<usize>,
    /// The most argument and result bytes an auto batch takes (pj's own); at least 1.
    pub batch_bytes: Option<usize>,
    /// `Some(None)`: explicitly no limit; `Some(Some(n))`: a worker process is replaced after `n`
    /// tasks (concurrent.futures' name).
    pub max_tasks_per_child: Option<Option<NonZeroUsize>>,
    /// `Some(None)`: explicitly no limit; `Some(Some(bytes))`, bytes > 0: a worker process whose
    /// resident memory exceeds it after a batch is replaced (loky's memory-leak protection).
    pub worker_memory_limit: Option<Option<u64>>,
    /// `Some(None)`: idle worker processes never exit; `Some(Some(d))`, `d > 0`: they exit after
    /// `d` without work (loky's name).
    pub idle_worker_timeout: Option<Option<Duration>>,
    /// Set by [`Config::over_scopes`] when `require="sharedmem"` turned a scoped backend into
    /// threads: joblib's class name of the backend given up, for joblib's verbose notice.
    pub sharedmem_replaced: Option<&'static str>,
}

/// The settings one call uses: a [`Config`] with joblib's defaults applied and every rule checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The value the user asked for, kept raw for `[Parallel(n_jobs=N)]` lines; `None` when unset.
    pub n_jobs_requested: Option<i64>,
    /// Effective number of workers, >= 1 (1 for the sequential backend).
    pub n_jobs: usize,
    /// The backend after backend/prefer/require resolution, before the `n_jobs == 1` fallback to
    /// sequential (which `sequential` reports).
    pub backend: BackendKind,
    /// joblib's class name for it, as the verbose start line announces it: the kind's own, or
    /// `MultiprocessingBackend` when the backend was given as `multiprocessing`.
    pub backend_class_name: &'static str,
    /// joblib's class name of a scoped backend that `require="sharedmem"` replaced by threads.
    pub sharedmem_replaced: Option<&'static str>,
    /// Whether the call runs in the caller's thread: the sequential backend, or a single worker.
    pub sequential: bool,
    /// Verbosity level (default 0).
    pub verbose: i64,
    /// Per-task time limit; `None` means none (the default).
    pub timeout: Option<Duration>,
    /// Tasks read before the first completion (default `"2*n_jobs"`); valid for `n_jobs`.
    pub pre_dispatch: PreDispatch,
    /// Tasks per batch (default auto).
    pub batch_size: BatchSize,
    /// An explicit folder for memory-mapped files, if set.
    pub temp_folder: Option<PathBuf>,
    /// Size above which arguments go through files (default 1 MiB).
    pub max_nbytes: MaxNbytes,
    /// How workers map those files (default read-only).
    pub mmap_mode: MmapMode,
    /// How results are handed back (default list).
    pub return_as: ReturnAs,
    /// Whether worker processes outlive a call (default false: forked at each call's start, so they
    /// see the parent's memory as it is then).
    pub keep_workers: bool,
    /// Fail fast (default) or collect per-task errors.
    pub on_error: OnError,
    /// Whether a SIGINT cancels a blocked call (default false: pj installs no handler).
    pub handle_sigint: bool,
    /// Whether to draw a progress bar (default none).
    pub progress: ProgressMode,
    /// The progress callback, if any.
    pub progress_hook: Option<ProgressHook>,
    /// How worker processes start (default fork).
    pub start_method: StartMethod,
    /// Bytes of stack for the threads that run tasks (default: [`default_stack_size`]).
    pub stack_size: usize,
    /// The most argument and result bytes an auto batch takes (default [`DEFAULT_BATCH_BYTES`]).
    pub batch_bytes: usize,
    /// When worker processes are replaced or retired (default: never replaced, idle ones exit
    /// after [`DEFAULT_IDLE_WORKER_TIMEOUT`]).
    pub recycling: Recycling,
}

impl Resolved {
    /// The number of tasks to read up front (`None`: the whole input), for this call's `n_jobs`.
    /// Never fails for a value produced by [`Config::resolve`], which already evaluated it.
    pub fn pre_dispatch_tasks(&self) -> Result<Option<usize>> {
        self.pre_dispatch.tasks(self.n_jobs)
    }
}

/// The effective number of workers for a requested `n_jobs`, as joblib computes it: unset means 1,
/// a negative `n` means `cpus + 1 + n` (so -1 is every CPU) but at least 1, positive values are used
/// as given (never capped at the CPU count, as in joblib) up to [`MAX_N_JOBS`], and 0 has no
/// meaning.
pub fn effective_n_jobs(requested: Option<i64>, cpus: usize) -> Result<usize> {
    match requested {
        None => Ok(1),
        Some(n) => {
            let n = check_n_jobs(n, &n.to_string())?;
            if n > 0 {
                // n <= MAX_N_JOBS, so it fits.
                Ok(usize::try_from(n).unwrap_or(1))
            } else {
                let cpus = i128::try_from(cpus).unwrap_or(i128::MAX / 2);
                let effective = (cpus + 1 + i128::from(n)).max(1);
                Ok(usize::try_from(effective).unwrap_or(usize::MAX))
            }
        }
    }
}
/// The task stack size when none is set: the caller's stack, i.e. the soft RLIMIT_STACK (8 MiB on
/// most Linux systems; [`UNLIMITED_STACK_DEFAULT`] when unlimited), at least Rust's 2 MiB thread
/// default and at most [`MAX_STACK_SIZE`].
pub fn default_stack_size() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Stack);
    // `None`: unlimited.
    let Some(current) = limit.current else {
        return UNLIMITED_STACK_DEFAULT;
    };
    usize::try_from(current)
        .unwrap_or(MAX_STACK_SIZE)
        .clamp(RUST_THREAD_STACK, MAX_STACK_SIZE)
}
impl Config {
    /// Sets an option from strings, with joblib's keywords and spellings, so that C, C++ and Go
    /// callers can pass options straight from their own configuration files or command lines.
    ///
    /// Keys: `n_jobs` (integer or `none`), `backend`, `prefer`, `require`, `verbose`, `timeout`
    /// (seconds, `none`/`inf`), `pre_dispatch` (`all` or an expression on `n_jobs`), `batch_size`
    /// (`auto` or a positive integer), `temp_folder`, `max_nbytes` (bytes, `none`, or `1.5M`-style
    /// sizes), `mmap_mode` (`r`, `r+`, `w+`, `c`, `none`), `return_as` (`list`, `generator`,
    /// `generator_unordered`), and pj's own `keep_workers`, `on_error` (`raise`, `collect`),
    /// `handle_sigint` (`true`, `false`), `progress` (`bar`, `none`), `start_method` (`fork`,
    /// `spawn`), `stack_size` (bytes, `8M`-style sizes, `none`), `batch_bytes` (bytes, `16M`-style
    /// sizes, `none`), `max_tasks_per_child` (a positive integer, `none`), `worker_memory_limit`
    /// (bytes, `512M`-style sizes, `none`) and `idle_worker_timeout` (seconds, `none`). Leading and trailing ASCII whitespace of the value is ignored;
    /// `none`/`None` restores joblib's default where joblib accepts `None`. Every error quotes the
    /// offending key or value, and on error the config is left unchanged.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let value = value.trim_matches(|c: char| c.is_ascii_whitespace());
        match key {
            "n_jobs" => self.n_jobs = parse_n_jobs(value)?,
            "backend" => self.set_backend(value)?,
            "prefer" => self.prefer = parse_prefer(value)?,
            "require" => self.require = parse_require(value)?,
            "verbose" => self.verbose = parse_verbose(value)?,
            "timeout" => self.timeout = Some(parse_timeout(value)?),
            "pre_dispatch" => self.pre_dispatch = Some(PreDispatch::parse(value)?),
            "batch_size" => self.batch_size = Some(parse_batch_size(value)?),
            "temp_folder" => self.temp_folder = Some(parse_temp_folder(value)?),
            "max_nbytes" => {
                let limit = parse_max_nbytes(value)?;
                self.max_nbytes = Some(limit.map_or(MaxNbytes::Disabled, MaxNbytes::Bytes));
            }
            "mmap_mode" => self.mmap_mode = Some(parse_mmap_mode(value)?),
            "return_as" => self.return_as = Some(parse_return_as(value)?),
            "keep_workers" => self.keep_workers = Some(parse_bool("keep_workers", value)?),
            "on_error" => self.on_error = Some(parse_on_error(value)?),
            "handle_sigint" => self.handle_sigint = Some(parse_bool("handle_sigint", value)?),
            "progress" => self.progress = Some(parse_progress(value)?),
            "start_method" => self.start_method = Some(parse_start_method(value)?),
            "stack_size" => self.stack_size = parse_stack_size(value)?,
            "batch_bytes" => self.batch_bytes = parse_batch_bytes(value)?,
            "max_tasks_per_child" => {
                self.max_tasks_per_child = Some(parse_max_tasks_per_child(value)?);
            }
            "worker_memory_limit" => {
                self.worker_memory_limit = Some(parse_worker_memory_limit(value)?);
            }
            "idle_worker_timeout" => {
                self.idle_worker_timeout = Some(parse_idle_worker_timeout(value)?);
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown option \"{key}\": expected one of {}",
                    KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Sets the requested number of workers: positive, or negative for "all CPUs but |n|-1".
    /// 0 has no meaning (as in joblib), and values above [`MAX_N_JOBS`] are refused because pj
    /// really starts that many workers.
    pub fn set_n_jobs(&mut self, n: i64) -> Result<()> {
        self.n_jobs = Some(check_n_jobs(n, &n.to_string())?);
        Ok(())
    }

    /// Sets the backend by pj or joblib name (see [`BackendKind::from_name`]); `none` unsets it.
    pub fn set_backend(&mut self, name: &str) -> Result<()> {
        let name = name.trim_matches(|c: char| c.is_ascii_whitespace());
        self.backend = parse_backend(name)?;
        self.backend_class = (name == "multiprocessing").then_some("MultiprocessingBackend");
        Ok(())
    }

    /// Sets a fixed number of tasks per batch, from 1 to [`MAX_FIXED_BATCH_SIZE`] (the check
    /// [`Config::set`] applies too); the adaptive default (`"auto"`) can only be restored through
    /// [`Config::set`], since it is not a number.
    pub fn set_batch_size(&mut self, size: usize) -> Result<()> {
        let size = check_batch_size(size, &size.to_string())?;
        self.batch_size = Some(BatchSize::Fixed(size));
        Ok(())
    }

    /// Sets the stack size, in bytes, of the threads that run tasks (worker threads, and the thread
    /// of each worker process); from [`MIN_STACK_SIZE`] to [`MAX_STACK_SIZE`].
    pub fn set_stack_size(&mut self, bytes: usize) -> Result<()> {
        self.stack_size = Some(check_stack_size(bytes as u64, &bytes.to_string())?);
        Ok(())
    }

    /// Sets joblib's verbosity level; negative levels are refused rather than silently meaning 0.
    pub fn set_verbose(&mut self, level: i64) -> Result<()> {
        self.verbose = Some(check_verbose(level, &level.to_string())?);
        Ok(())
    }

    /// Sets the per-task time limit in seconds. `+inf` means no limit (so C callers can express
    /// joblib's `None` with a double); 0, negative values and NaN are refused.
    pub fn set_timeout(&mut self, seconds: f64) -> Result<()> {
        self.timeout = Some(check_timeout(seconds, &seconds.to_string())?);
        Ok(())
    }

    /// Sets `max_tasks_per_child`: a worker process is replaced after running this many tasks
    /// (at least 1). `none` (no limit) can only be set through [`Config::set`].
    pub fn set_max_tasks_per_child(&mut self, tasks: u64) -> Result<()> {
        let tasks = check_max_tasks_per_child(tasks, &tasks.to_string())?;
        self.max_tasks_per_child = Some(Some(tasks));
        Ok(())
    }

    /// Sets `worker_memory_limit` in bytes (at least 1); `none` (no limit) can only be set through
    /// [`Config::set`].
    pub fn set_worker_memory_limit(&mut self, bytes: u64) -> Result<()> {
        let bytes = check_worker_memory_limit(bytes, &bytes.to_string())?;
        self.worker_memory_limit = Some(Some(bytes));
        Ok(())
    }

    /// Sets `idle_worker_timeout` in seconds; `+inf` means idle workers never exit; 0, negative
    /// values and NaN are refused.
    pub fn set_idle_worker_timeout(&mut self, seconds: f64) -> Result<()> {
        self.idle_worker_timeout = Some(check_idle_worker_timeout(seconds, &seconds.to_string())?);
        Ok(())
    }

    /// Fields set in `self` win over `outer`: this is how scoped defaults stack (object config >
    /// pushed config > joblib defaults), like joblib's `parallel_config` contexts. Pure precedence;
    /// [`Config::over_scopes`] adds the `require` rule when an object meets its scopes.
    pub fn layered_over(&self, outer: &Config) -> Config {
        let backend = self.backend.or(outer.backend);
        // joblib's class name goes with the backend it was given for.
        let backend_class = if self.backend.is_some() {
            self.backend_class
        } else {
            outer.backend_class
        };
        let require = self.require.or(outer.require);
        Config {
            n_jobs: self.n_jobs.or(outer.n_jobs),
            backend,
            backend_class,
            prefer: self.prefer.or(outer.prefer),
            require,
            verbose: self.verbose.or(outer.verbose),
            timeout: self.timeout.or(outer.timeout),
            pre_dispatch: self
                .pre_dispatch
                .clone()
                .or_else(|| outer.pre_dispatch.clone()),
            batch_size: self.batch_size.or(outer.batch_size),
            temp_folder: self
                .temp_folder
                .clone()
                .or_else(|| outer.temp_folder.clone()),
            max_nbytes: self.max_nbytes.or(outer.max_nbytes),
            mmap_mode: self.mmap_mode.or(outer.mmap_mode),
            return_as: self.return_as.or(outer.return_as),
            keep_workers: self.keep_workers.or(outer.keep_workers),
            on_error: self.on_error.or(outer.on_error),
            handle_sigint: self.handle_sigint.or(outer.handle_sigint),
            progress: self.progress.or(outer.progress),
            progress_hook: self.progress_hook.or(outer.progress_hook),
            start_method: self.start_method.or(outer.start_method),
            stack_size: self.stack_size.or(outer.stack_size),
            batch_bytes: self.batch_bytes.or(outer.batch_bytes),
            max_tasks_per_child: self.max_tasks_per_child.or(outer.max_tasks_per_child),
            worker_memory_limit: self.worker_memory_limit.or(outer.worker_memory_limit),
            idle_worker_timeout: self.idle_worker_timeout.or(outer.idle_worker_timeout),
            sharedmem_replaced: self.sharedmem_replaced.or(outer.sharedmem_replaced),
        }
    }

    /// An object's own config (`self`) over its thread's scoped defaults (`scopes`, already
    /// layered), with joblib's rule for `require="sharedmem"`, a hard constraint: a backend without
    /// shared memory that the object did not name together with `require` itself gives way to
    /// threads, and n_jobs is then the object's own or 1 (a scope's n_jobs was meant for the
    /// backend given up); [`Config::sharedmem_replaced`] keeps the name of that backend. Only an
    /// object config that sets both conflicts ([`Config::resolve`] refuses it). Measured against
    /// joblib 1.6: `parallel_config(backend="loky", n_jobs=3)` around
    /// `Parallel(require="sharedmem")` gives ThreadingBackend with n_jobs 1 (2 with
    /// `Parallel(n_jobs=2, ...)`), and so does one `parallel_config` that sets both.
    pub fn over_scopes(&self, scopes: &Config) -> Config {
        let mut layered = self.layered_over(scopes);
        let own_conflict = self.backend.is_some() && self.require.is_some();
        if let Some(backend) = layered.backend
            && layered.require == Some(Require::SharedMem)
            && !backend.has_shared_memory()
            && !own_conflict
        {
            layered.sharedmem_replaced = Some(
                layered
                    .backend_class
                    .unwrap_or_else(|| backend.joblib_class_name()),
            );
            layered.backend = Some(BackendKind::Threads);
            layered.backend_class = None;
            layered.n_jobs = self.n_jobs;
        }
        layered
    }

    /// The backend joblib would pick (its backend/prefer/require rules, without contexts): an
    /// explicit backend wins over `prefer` but must honour `require="sharedmem"`; otherwise
    /// `require` forces threads and `prefer` picks between threads and processes.
    fn resolve_backend(&self) -> Result<BackendKind> {
        let shared = self.require == Some(Require::SharedMem);
        if self.prefer == Some(Prefer::Processes) && shared {
            return Err(Error::invalid(
                "prefer == \"processes\" and require == \"sharedmem\" are inconsistent settings",
            ));
        }
        match self.backend {
            Some(backend) if shared && !backend.has_shared_memory() => {
                Err(Error::invalid(format!(
                    "backend \"{backend}\" does not support shared memory (require == \"sharedmem\"); \
                 use \"threads\" or \"sequential\""
                )))
            }
            Some(backend) => Ok(backend),
            None if shared => Ok(BackendKind::Threads),
            None => Ok(match self.prefer {
                Some(Prefer::Threads) => BackendKind::Threads,
                Some(Prefer::Processes) => BackendKind::Processes,
                None => DEFAULT_BACKEND,
            }),
        }
    }

    /// Resolves to the settings a call uses, applying joblib's defaults and checking every rule
    /// (fields are public, so values that bypassed the setters are checked here too). `cpus` is
    /// the CPU count that negative `n_jobs` counts from, usually [`crate::cpu::cpu_count`].
    pub fn resolve(&self, cpus: usize) -> Result<Resolved> {
        let backend = self.resolve_backend()?;
        let mut n_jobs = effective_n_jobs(self.n_jobs, cpus)?;
        if backend == BackendKind::Sequential {
            n_jobs = 1;
        }
        let verbose = match self.verbose {
            Some(level) => check_verbose(level, &level.to_string())?,
            None => 0,
        };
        let timeout = self
            .timeout
            .flatten()
            .map(check_timeout_limit)
            .transpose()?;
        let pre_dispatch = self.pre_dispatch.clone().unwrap_or_default();
        pre_dispatch.tasks(n_jobs)?;
        let recycling = self.recycling()?;
        Ok(Resolved {
            n_jobs_requested: self.n_jobs,
            n_jobs,
            backend,
            backend_class_name: match (self.backend, self.backend_class) {
                (Some(explicit), Some(class)) if explicit == backend => class,
                _ => backend.joblib_class_name(),
            },
            sharedmem_replaced: self.sharedmem_replaced,
            sequential: backend == BackendKind::Sequential || n_jobs == 1,
            verbose,
            timeout,
            pre_dispatch,
            batch_size: match self.batch_size {
                Some(BatchSize::Fixed(n)) => {
                    BatchSize::Fixed(check_batch_size(n.get(), &n.to_string())?)
                }
                Some(BatchSize::Auto) | None => BatchSize::Auto,
            },
            temp_folder: self.temp_folder.clone(),
            max_nbytes: self
                .max_nbytes
                .unwrap_or(MaxNbytes::Bytes(DEFAULT_MAX_NBYTES)),
            mmap_mode: self.mmap_mode.unwrap_or(MmapMode::R),
            return_as: self.return_as.unwrap_or(ReturnAs::List),
            keep_workers: self.keep_workers.unwrap_or(false),
            on_error: self.on_error.unwrap_or_default(),
            handle_sigint: self.handle_sigint.unwrap_or(false),
            progress: self.progress.unwrap_or_default(),
            progress_hook: self.progress_hook,
            start_method: self.start_method.unwrap_or_default(),
            stack_size: match self.stack_size {
                Some(bytes) => check_stack_size(bytes as u64, &bytes.to_string())?,
                None => default_stack_size(),
            },
            batch_bytes: self.batch_bytes.unwrap_or(DEFAULT_BATCH_BYTES).max(1),
            recycling,
        })
    }

    /// The recycling settings with their defaults, checked again (fields are public).
    fn recycling(&self) -> Result<Recycling> {
        let max_tasks_per_child = self
            .max_tasks_per_child
            .flatten()
            .map(|n| check_max_tasks_per_child(n.get() as u64, &n.to_string()))
            .transpose()?;
        let worker_memory_limit = self
            .worker_memory_limit
            .flatten()
            .map(|bytes| check_worker_memory_limit(bytes, &bytes.to_string()))
            .transpose()?;
        let idle_worker_timeout = match self.idle_worker_timeout {
            None => Some(DEFAULT_IDLE_WORKER_TIMEOUT),
            Some(limit) => limit.map(check_idle_worker_timeout_limit).transpose()?,
        };
        Ok(Recycling {
            max_tasks_per_child,
            worker_memory_limit,
            idle_worker_timeout,
        })
    }
}

#[cfg(test)]
mod tests;
