//! The worker pools behind one [`Backend`] enum (crossbeam's "flavours" shape).
//!
//! A backend only runs batches and reports their outcomes on the call's reply channel; it knows
//! nothing about batch sizes, ordering or progress. Flavours:
//! - [`Backend::Sequential`]: runs each batch inline on the caller's thread (n_jobs == 1);
//! - [`Backend::Threads`]: a fixed pool of worker threads fed by one shared job queue;
//! - [`Backend::Processes`]: forked worker processes, each driven by a proxy thread;
//! - [`Backend::Mpi`]: the other ranks of an MPI job, fed by rank 0's dispatcher thread.

mod crash;
mod failure;
pub mod mpi;
mod processes;
mod slabs;
mod spill;
mod staging;
mod threads;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::Sender;

pub use mpi::MpiPool;
pub use processes::ProcessPool;
pub use processes::forkserver;
pub use processes::spawn;
pub use staging::{CallFiles, SpillOptions, SpillSpace, Stager};
pub use threads::ThreadPool;

use crate::config::{MaxNbytes, MmapMode};
use crate::memmap::MapAccess;
use crate::task::{Batch, BatchOutcome, RunContext, RunSettings, WorkerId, run_batch};
use wire::RunFlags;

/// Where a call's batches report back, and the flag that stops its queued work.
#[derive(Clone, Debug)]
pub struct CallLink {
    /// Receives one outcome per dispatched batch, whatever happens to it.
    pub reply: Sender<BatchOutcome>,
    /// Raised on the first failure (or cancellation): tasks not yet started are skipped, and
    /// running callbacks see it through `pj_out_cancelled`.
    pub abort: Arc<AtomicBool>,
    /// Raised (before `abort`, which is then stored with Release) when the call is abandoned
    /// (`pj_parallel_free`): backends that would kill a running task on abort let it finish
    /// instead, as threads must, so that free behaves alike on every backend.
    pub drain: Arc<AtomicBool>,
    /// The per-task time limit, counted from each task's start on its worker.
    pub timeout: Option<Duration>,
    /// on_error=collect: a failed, crashed or timed-out task does not stop the call.
    pub collect: bool,
    /// Unique per call in this process.
    pub call: u64,
    /// For a call whose process workers exchange large arguments and results through files:
    /// those files and how to use them ([`Stager::files`]); `None`: everything travels inline.
    pub files: Option<Arc<CallFiles>>,
}

impl CallLink {
    /// The flags a worker process or MPI rank runs this call's batches with.
    pub fn run_flags(&self) -> RunFlags {
        let files = self.files.as_deref();
        RunFlags {
            settings: self.settings(),
            access: files.map_or(MapAccess::ReadOnly, |f| f.access),
            call: self.call,
            spill_epoch: files.map_or(0, CallFiles::epoch),
            results_above: files.map_or(u64::MAX, |f| f.results.0),
        }
    }

    /// Reports `batch`'s outcome to its call, with auto-batching's timing sample: the seconds
    /// from the batch's dispatch to now. Every backend reports every outcome through here, so
    /// the sample means the same everywhere. A call that is gone (its receiver dropped) has
    /// nobody to tell: the outcome is dropped.
    ///
    /// The batch is dropped before the outcome leaves, so its argument buffer is back in the
    /// executor's pool by the time the caller can see the call end: a next call submitted at
    /// once reuses it instead of mapping fresh pages.
    pub fn send(&self, batch: Batch, outcome: BatchOutcome) {
        let dispatched_at = batch.dispatched_at;
        drop(batch);
        self.reply_with(dispatched_at, outcome);
    }

    /// [`CallLink::send`] for a batch still shared with someone else (a thread pool's watchdog
    /// may hold a job for a moment): its buffer goes back when the last holder drops it.
    pub fn send_shared(&self, batch: &Batch, outcome: BatchOutcome) {
        self.reply_with(batch.dispatched_at, outcome);
    }

    fn reply_with(&self, dispatched_at: Option<std::time::Instant>, mut outcome: BatchOutcome) {
        outcome.seconds = dispatched_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let _ = self.reply.send(outcome);
    }

    /// The call's run settings, as every worker gets them.
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            timed: self.timeout.is_some(),
            collect: self.collect,
        }
    }

    /// How a worker of this call runs its batches (unwatched: `timed` stamps nothing until a
    /// `running` record is given).
    pub fn run_context(&self, worker: WorkerId) -> RunContext<'_> {
        RunContext {
            settings: self.settings(),
            ..RunContext::new(&self.abort, worker)
        }
    }
}

/// A pool of workers, or none.
#[derive(Debug)]
pub enum Backend {
    /// No workers: batches run inline in the caller's thread.
    Sequential,
    /// A pool of worker threads.
    Threads(ThreadPool),
    /// A pool of forked worker processes.
    Processes(ProcessPool),
    /// The worker ranks of an MPI job (this process is rank 0).
    Mpi(MpiPool),
}

impl Backend {
    /// The backend's name as reports and progress lines show it.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sequential => "sequential",
            Backend::Threads(_) => "threads",
            Backend::Processes(_) => "processes",
            Backend::Mpi(_) => "mpi",
        }
    }

    /// Whether [`Backend::dispatch`] runs the batch on the calling thread before it returns (the
    /// sequential backend): then no other worker could take a piece of a batch split up, and
    /// whatever watches the caller (SIGINT with handle_sigint) must watch during the dispatch.
    pub fn runs_inline(&self) -> bool {
        matches!(self, Backend::Sequential)
    }

    /// How a call on this backend stages its arguments: process workers get arguments above
    /// `max_nbytes` through files (unless `mmap_mode` is none, joblib's None: everything is
    /// copied); threads share memory already, and MPI ranks get everything in their messages.
    pub fn stager(
        &self,
        max_nbytes: MaxNbytes,
        mode: MmapMode,
        folder: Option<&std::path::Path>,
    ) -> Stager {
        let options = match (self, max_nbytes) {
            _ if mode == MmapMode::None => None,
            (Backend::Processes(_), MaxNbytes::Bytes(above)) => Some(SpillOptions {
                above,
                mode,
                folder: folder.map(std::path::Path::to_path_buf),
            }),
            _ => None,
        };
        Stager::new(options)
    }

    /// Number of workers running batches concurrently.
    pub fn workers(&self) -> usize {
        match self {
            Backend::Sequential => 1,
            Backend::Threads(pool) => pool.size(),
            Backend::Processes(pool) => pool.size(),
            Backend::Mpi(pool) => pool.size(),
        }
    }

    /// Hands `batch` to a worker; its outcome arrives on `link.reply` (at once, for sequential).
    pub fn dispatch(&self, batch: Batch, link: &CallLink) {
        match self {
            Backend::Sequential => {
                let outcome = {
                    let _task_level = crate::nesting::Deeper::enter();
                    // No timeout here: one thread cannot watch itself (a warning says so at the
                    // call's start, as joblib's does).
                    run_batch(&batch, link.run_context(WorkerId::Caller), None)
                };
                link.send(batch, outcome);
            }
            Backend::Threads(pool) => pool.dispatch(batch, link),
            Backend::Processes(pool) => pool.dispatch(batch, link),
            Backend::Mpi(pool) => pool.dispatch(batch, link),
        }
    }

    /// Called once a call is over (every outcome received): retires per-call workers.
    pub fn end_call(&self) {
        if let Backend::Processes(pool) = self {
            pool.end_call();
        }
    }
}
