//! The process backend: forked worker processes, each driven by a proxy thread in the parent.
//!
//! Shape. The pool has one proxy thread per worker slot. Proxies take batches from one shared
//! crossbeam queue (exactly like the thread backend's workers), send each batch as one frame over a
//! socket pair to their own forked worker, block for the outcome frame and hand it to the call. A
//! worker runs the very same `run_batch` as a thread would. So the per-task cost is the encoding of
//! the task into a frame, and the syscalls are per batch (auto batching makes batches large).
//!
//! Lifetime. A proxy forks its worker when it receives its first batch of a call, so the worker sees
//! the parent's memory as it is then (copy-on-write): the user's `userdata` and what it points to
//! are valid there. (With `spawn` and `forkserver` they are not: see those modules.) At the end of
//! the call the workers are retired (socket shut down, process reaped) unless `keep_workers` is
//! set.
//!
//! Modules, each using only those listed after it (a one-way graph):
//! - `pool`: [`ProcessPool`], the shared job queue and the proxy threads;
//! - `proxy`: a proxy thread, which starts its worker, sends it batches and reads their outcomes;
//! - `start`: the parent's handle on one worker, and starting it (fork, [`spawn`], or through
//!   `forkserver`);
//! - `forkserver`: the `forkserver` start method: a small server process, forked from the caller
//!   once, forks the workers and reaps them;
//! - [`spawn`]: the `spawn` start method: a worker started afresh from the executable, and its
//!   handshake;
//! - `worker`: the worker process's side, its first steps and its batch loop;
//! - `page`: the page a worker shares with its parent;
//! - `child`: waiting for, and stopping, one child process;
//! - `fds`: the parent ends of pj's worker sockets, which a new worker closes.

pub(super) mod child;
mod fds;
pub mod forkserver;
pub(super) mod page;
mod pool;
mod proxy;
pub mod spawn;
mod start;
pub(super) mod worker;

pub use pool::ProcessPool;
