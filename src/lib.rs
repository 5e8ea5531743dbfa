//! pj: joblib's `Parallel` for C, C++ and Go.
//!
//! A user hands pj a task callback and many inputs; pj runs them on a worker pool (threads, worker
//! processes forked or spawned, or MPI ranks) or sequentially, in batches, and returns the results in
//! submission order. `docs/ARCHITECTURE.md` draws the layers and one call's journey.
//! The C ABI lives in [`ffi`] and is described by the generated `include/pj.h`; everything else is the
//! safe core it delegates to.
//!
//! Module map (only `ffi` and `task`, which tests and benches drive, are public; the rest is the
//! crate's own):
//! - `config`: options, joblib spellings, validation and resolution of a call's settings;
//! - `cpu`: the CPU count (affinity, cgroup quotas, `PJ_MAX_CPU_COUNT`);
//! - `error`: the error type;
//! - `failpoint`: test-only fault injection at the stages a task cannot reach (feature `failpoints`);
//! - [`task`]: what one task is (callback, argument bytes) and where its output goes;
//! - `dispatch`: batching, ordering and fail-fast for one call;
//! - `backend`: the worker pools behind one enum;
//! - `memmap`: temp folders, anonymous memory-mapped files, spilled arguments, shared buffers;
//! - `parallel`: the `Parallel` object: settings, pool reuse, one call at a time;
//! - `registry`: task functions by name, for workers spawned afresh (`start_method=spawn`);
//! - `sigint`: handle_sigint's handler, installed only while a call blocks;
//! - `stop`: the flags that stop a call (cancel, SIGINT, fail-fast);
//! - `spin`: the short adaptive spin every waiter does before it sleeps;
//! - `fork`: pj's fork handlers (locks usable in a forked child, inherited executors refused);
//! - `nesting`: how deep the current thread is in nested calls;
//! - `progress`: joblib's verbose lines, the progress bar and the progress callback;
//! - [`ffi`]: the C boundary (the only home of exported `extern "C"` functions).

pub(crate) mod backend;
pub(crate) mod config;
pub(crate) mod cpu;
pub(crate) mod dispatch;
pub(crate) mod error;
#[doc(hidden)]
pub mod failpoint;
pub mod ffi;
pub(crate) mod fork;
pub(crate) mod memmap;
pub(crate) mod nesting;
pub(crate) mod parallel;
pub(crate) mod progress;
pub(crate) mod registry;
pub(crate) mod sigint;
pub(crate) mod spin;
pub(crate) mod stop;
pub mod task;

pub use error::{Error, ErrorKind, Result};
