//! The thread backend: `n` worker threads fed by one shared crossbeam queue of batches.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};

use super::CallLink;
use crate::error::panic_message;
use crate::task::{Batch, BatchOutcome, TaskFailure, run_batch};

/// One unit of work for a worker thread.
struct Job {
    batch: Batch,
    link: CallLink,
}

/// A fixed set of worker threads; dropping the pool lets them finish their current batch and joins them.
#[derive(Debug)]
pub struct ThreadPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("first", &self.batch.first)
            .finish()
    }
}

impl ThreadPool {
    /// Starts `size` worker threads (at least one), one nesting level below the calling thread.
    pub fn new(size: usize) -> std::io::Result<Self> {
        let (jobs, queue) = unbounded::<Job>();
        let level = crate::nesting::level() + 1;
        let mut pool = ThreadPool {
            jobs: Some(jobs),
            workers: Vec::with_capacity(size.max(1)),
        };
        for worker in 0..size.max(1) {
            let queue = queue.clone();
            // If spawning fails part-way, dropping `pool` on the error path joins the threads started so far.
            let handle = std::thread::Builder::new()
                .name(format!("pj-worker-{worker}"))
                .spawn(move || {
                    crate::nesting::set_level(level);
                    worker_loop(worker, queue)
                })?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.workers.len()
    }

    /// Queues `batch`; some worker runs it and sends its outcome on `link.reply`.
    pub fn dispatch(&self, batch: Batch, link: &CallLink) {
        let job = Job {
            batch,
            link: link.clone(),
        };
        if let Some(jobs) = &self.jobs {
            // The workers hold the receiver until the pool is dropped, so the queue is always open here.
            if let Err(unsent) = jobs.send(job) {
                let job = unsent.into_inner();
                let _ = job.link.reply.send(lost_batch(
                    &job.batch,
                    0,
                    "the worker pool is shut down".into(),
                ));
            }
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn worker_loop(worker: usize, queue: Receiver<Job>) {
    while let Ok(Job { batch, link }) = queue.recv() {
        let (first, size) = (batch.first, batch.len());
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run_batch(batch, &link.abort, worker, None)
        }))
        .unwrap_or_else(|panic| {
            link.abort.store(true, Ordering::Relaxed);
            lost_batch_parts(first, size, worker, panic_message(panic.as_ref()))
        });
        // A closed reply channel means the call is gone; the outcome has nobody to tell.
        let _ = link.reply.send(outcome);
    }
}

fn lost_batch(batch: &Batch, worker: usize, why: String) -> BatchOutcome {
    lost_batch_parts(batch.first, batch.len(), worker, why)
}

/// The outcome of a batch that produced nothing because pj itself failed while running it.
fn lost_batch_parts(first: usize, size: usize, worker: usize, why: String) -> BatchOutcome {
    BatchOutcome {
        first,
        size,
        data: Vec::new(),
        ends: Vec::new(),
        failure: Some((first, TaskFailure::Panicked(why))),
        seconds: 0.0,
        worker,
    }
}
