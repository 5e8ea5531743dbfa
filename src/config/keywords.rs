//! The keyword values of the options, one enum per keyword with joblib's (or pj's) spellings: its
//! name table (`name`, `from_name`, `Display`) lives with it, so a spelling is defined once.

use std::fmt;
use std::num::NonZeroUsize;

use super::pre_dispatch::{self, PreDispatchExpr};
use crate::error::Result;

/// Where tasks run. joblib's names are accepted as aliases, so code ported from Python keeps working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Forked worker processes (joblib's `loky` and `multiprocessing`).
    Processes,
    /// A pool of threads in the calling process (joblib's `threading`).
    Threads,
    /// The caller's thread, one task after another.
    Sequential,
    /// The other ranks of an MPI job (`mpirun`), with this process as rank 0.
    Mpi,
}

impl BackendKind {
    /// pj's canonical spelling, used in messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Processes => "processes",
            BackendKind::Threads => "threads",
            BackendKind::Sequential => "sequential",
            BackendKind::Mpi => "mpi",
        }
    }

    /// joblib's backend class name, for the verbose start line
    /// (`Using backend ThreadingBackend with 2 concurrent workers.`). A backend spelt
    /// `multiprocessing` is announced as `MultiprocessingBackend` instead
    /// ([`Resolved::backend_class_name`](super::Resolved::backend_class_name)).
    pub fn joblib_class_name(self) -> &'static str {
        match self {
            BackendKind::Processes => "LokyBackend",
            BackendKind::Threads => "ThreadingBackend",
            BackendKind::Sequential => "SequentialBackend",
            BackendKind::Mpi => "MPIBackend",
        }
    }

    /// Looks a backend up by pj or joblib name (`processes`/`loky`/`multiprocessing`,
    /// `threads`/`threading`, `sequential`); names are case-sensitive, as in joblib.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "processes" | "loky" | "multiprocessing" => Some(BackendKind::Processes),
            "threads" | "threading" => Some(BackendKind::Threads),
            "sequential" => Some(BackendKind::Sequential),
            "mpi" => Some(BackendKind::Mpi),
            _ => None,
        }
    }

    /// Whether tasks see the caller's memory (what `require="sharedmem"` asks for).
    pub fn has_shared_memory(self) -> bool {
        !matches!(self, BackendKind::Processes | BackendKind::Mpi)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A soft hint for the backend, used only when none is named: libraries state a preference and
/// leave the final choice to their users, as joblib recommends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// Prefer worker processes.
    Processes,
    /// Prefer threads.
    Threads,
}

impl Prefer {
    /// joblib's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Prefer::Processes => "processes",
            Prefer::Threads => "threads",
        }
    }
}

impl fmt::Display for Prefer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A hard constraint on the backend: tasks that write to the caller's memory need it to be shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Require {
    /// Tasks must see the caller's memory: threads or sequential, never processes.
    SharedMem,
}

impl Require {
    /// joblib's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Require::SharedMem => "sharedmem",
        }
    }
}

impl fmt::Display for Require {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many tasks go into one batch: joblib's adaptive heuristic, or a fixed count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    /// Adapt the batch size so that a batch takes 0.2 to 2 seconds.
    Auto,
    /// Always this many tasks per batch.
    Fixed(NonZeroUsize),
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Auto => f.write_str("auto"),
            BatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// How a worker maps an argument that was passed through a file (above `max_nbytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmapMode {
    /// Read-only (joblib's default): workers cannot modify shared inputs by accident.
    R,
    /// Read-write.
    RPlus,
    /// Created or truncated, then read-write.
    WPlus,
    /// Copy-on-write: writes stay private to the worker.
    C,
    /// No memmapping (joblib's `mmap_mode=None`, which loads arrays into memory instead): large
    /// arguments and results travel like small ones, copied into the other process's memory, and
    /// the temp folder is never used.
    None,
}

impl MmapMode {
    /// The `numpy.memmap` spelling (`r`, `r+`, `w+`, `c`), or `none`.
    pub fn name(self) -> &'static str {
        match self {
            MmapMode::R => "r",
            MmapMode::RPlus => "r+",
            MmapMode::WPlus => "w+",
            MmapMode::C => "c",
            MmapMode::None => "none",
        }
    }
}

impl fmt::Display for MmapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How results are handed back: all at once, or as they become available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnAs {
    /// Every result, in input order, once all tasks are done.
    List,
    /// Results in input order, each as soon as it and all earlier ones are ready.
    Generator,
    /// Results in completion order.
    GeneratorUnordered,
}

impl ReturnAs {
    /// joblib's spelling.
    pub fn name(self) -> &'static str {
        match self {
            ReturnAs::List => "list",
            ReturnAs::Generator => "generator",
            ReturnAs::GeneratorUnordered => "generator_unordered",
        }
    }
}

impl fmt::Display for ReturnAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The size above which an argument travels through a memory-mapped file instead of a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxNbytes {
    /// Never use files (joblib's `max_nbytes=None`).
    Disabled,
    /// Arguments strictly larger than this many bytes use a file.
    Bytes(u64),
}

impl fmt::Display for MaxNbytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxNbytes::Disabled => f.write_str("none"),
            MaxNbytes::Bytes(n) => write!(f, "{n}"),
        }
    }
}

/// How many tasks a call reads from its input before the first one completes.
#[derive(Clone, Debug, PartialEq)]
pub enum PreDispatch {
    /// Read the whole input up front.
    All,
    /// An arithmetic expression on `n_jobs`, evaluated for each call.
    Expr(PreDispatchExpr),
}

impl PreDispatch {
    /// Parses joblib's spellings: `"all"`, or an expression such as `"2*n_jobs"` or `"3"` (see
    /// [`PreDispatchExpr::parse`]).
    pub fn parse(text: &str) -> Result<Self> {
        if text == "all" {
            Ok(PreDispatch::All)
        } else {
            PreDispatchExpr::parse(text).map(PreDispatch::Expr)
        }
    }

    /// The number of tasks to read up front for `n_jobs` workers; `None` means the whole input.
    /// An expression that is invalid for this `n_jobs`, or below 1, is an error.
    pub fn tasks(&self, n_jobs: usize) -> Result<Option<usize>> {
        match self {
            PreDispatch::All => Ok(None),
            PreDispatch::Expr(expr) => expr.eval(n_jobs).map(Some),
        }
    }
}

impl Default for PreDispatch {
    /// joblib's default, `"2*n_jobs"`: enough queued work to keep every worker busy while the
    /// next batches are formed.
    fn default() -> Self {
        PreDispatch::Expr(pre_dispatch::default_expr())
    }
}

impl fmt::Display for PreDispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreDispatch::All => f.write_str("all"),
            PreDispatch::Expr(expr) => f.write_str(expr.source()),
        }
    }
}

/// How worker processes start (pj's `start_method` option, after Python's multiprocessing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartMethod {
    /// A copy of the caller (the default): function pointers and userdata are valid in it.
    #[default]
    Fork,
    /// A fresh run of the same executable that turns into a worker in
    /// `pj_worker_main_if_requested`: tasks must name registered functions, without userdata.
    Spawn,
    /// A fork of pj's fork server, a small copy of the caller made once, early: workers start at
    /// the same cost whatever the caller's memory; tasks name registered functions, without
    /// userdata (as with `Spawn`).
    ForkServer,
}

/// pj's `progress` option: how progress is shown besides joblib's verbose lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing beyond verbose lines (the default).
    #[default]
    None,
    /// A progress bar on stderr: redrawn in place on a terminal, a plain line every few seconds
    /// otherwise.
    Bar,
}

/// What a call does when a task fails (pj's `on_error` option; joblib always raises).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// joblib's behaviour: the first failure ends the call, queued tasks never start.
    #[default]
    Raise,
    /// Every task runs; each result carries its own status, and the call returns OK.
    Collect,
}
