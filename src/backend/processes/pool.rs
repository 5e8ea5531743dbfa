//! The pool: one proxy thread per worker slot, fed by one shared crossbeam queue (exactly like the
//! thread backend's workers), and the retirement of every worker at the end of a call unless
//! `keep_workers` is set.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, unbounded};

use super::proxy::{Control, Job, Proxy};
use super::spawn::SpawnPlan;
use super::start::Start;
use crate::backend::CallLink;
use crate::backend::crash;
use crate::backend::slabs::ResultSlabs;
use crate::config::{Recycling, StartMethod};
use crate::task::{Batch, BatchOutcome, TaskFailure, WorkerId};

/// A pool of forked workers behind proxy threads.
#[derive(Debug)]
pub struct ProcessPool {
    jobs: Option<Sender<Job>>,
    controls: Vec<Sender<Control>>,
    proxies: Vec<JoinHandle<()>>,
    keep_workers: bool,
}

impl ProcessPool {
    /// Starts `size` proxy threads; workers are forked by the first batch of each call. A forked
    /// worker runs its tasks on the copy of its proxy thread, so proxies get `stack_size` bytes
    /// of stack: the tasks' stack. (A spawned worker runs them on its main thread.) `recycling`
    /// says when a proxy replaces its worker (after so many tasks, above a memory limit) or
    /// retires it (idle).
    pub fn new(
        size: usize,
        keep_workers: bool,
        start: StartMethod,
        stack_size: usize,
        recycling: Recycling,
    ) -> io::Result<Self> {
        let start = match start {
            StartMethod::Fork => Start::Fork,
            StartMethod::Spawn => Start::Spawn(Arc::new(SpawnPlan::new()?)),
            StartMethod::ForkServer => {
                super::forkserver::ensure_started()?;
                Start::ForkServer
            }
        };
        let (jobs, queue) = unbounded::<Job>();
        let size = size.max(1);
        // Once per process, off the path of the first fork: the workers' crash-handler stack, and
        // pj's fork handlers (MPI worker ranks make pools without an executor).
        crash::prepare();
        crate::fork::register_handlers();
        let level = crate::nesting::level() + 1;
        // The result slabs the executor keeps, shared by its proxies.
        let slabs = ResultSlabs::default();
        let mut pool = ProcessPool {
            jobs: Some(jobs),
            controls: Vec::with_capacity(size),
            proxies: Vec::with_capacity(size),
            keep_workers,
        };
        for slot in 0..size {
            let (control, inbox) = unbounded();
            let queue = queue.clone();
            let start = start.clone();
            let slabs = slabs.clone();
            // If spawning fails part-way, dropping `pool` on the error path joins what started.
            let proxy = std::thread::Builder::new()
                .name(format!("pj-proxy-{slot}"))
                .stack_size(stack_size)
                .spawn(move || {
                    Proxy::new(slot, level, start, recycling, slabs).run(queue, inbox)
                })?;
            pool.controls.push(control);
            pool.proxies.push(proxy);
        }
        Ok(pool)
    }

    /// Number of worker slots.
    pub fn size(&self) -> usize {
        self.proxies.len()
    }

    /// Queues `batch`; a proxy sends it to its worker and the outcome arrives on `link.reply`.
    pub fn dispatch(&self, batch: Batch, link: &CallLink) {
        let job = Job {
            batch,
            link: link.clone(),
        };
        if let Some(jobs) = &self.jobs
            && let Err(unsent) = jobs.send(job)
        {
            let Job { batch, link } = unsent.into_inner();
            let failure = TaskFailure::Io("the process pool is shut down".into());
            let outcome = BatchOutcome::failed(
                &batch,
                WorkerId::Process { slot: 0, pid: 0 },
                batch.first,
                failure,
            );
            link.send(batch, outcome);
        }
    }

    /// Ends a call: retires every worker (and waits until each is reaped) unless workers are kept.
    pub fn end_call(&self) {
        if !self.keep_workers {
            self.retire_all();
        }
    }

    fn retire_all(&self) {
        let (ack, acks) = unbounded();
        let sent = self
            .controls
            .iter()
            .filter(|c| c.send(Control::Retire(ack.clone())).is_ok())
            .count();
        drop(ack);
        for _ in 0..sent {
            if acks.recv().is_err() {
                break;
            }
        }
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        self.controls.clear();
        for proxy in self.proxies.drain(..) {
            let _ = proxy.join();
        }
    }
}
