//! The thread backend: `n` worker threads fed by one shared crossbeam queue of batches.
//!
//! Timeouts. A thread cannot be killed, so a task that runs past the call's timeout is *abandoned*:
//! a watchdog thread (started with the first timed batch) notices the overdue task through the
//! worker's [`Running`] record, claims the batch from the worker (one compare-and-swap decides
//! who reports it), reports the timeout (or, with on_error=collect, queues the batch again without
//! that task), and starts a replacement thread in its slot. The abandoned thread owns everything it
//! touches (its batch, its output arena, a handle to the call's reply channel), so when its task
//! finally returns, it drops its results and exits without touching the call's memory; its
//! callback's own use of user memory is the caller's affair (documented in the header). The pool's
//! drop joins only threads it still owns, so `pj_parallel_free` does not wait for a stuck task.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};

use super::CallLink;
use crate::error::panic_message;
use crate::task::{Batch, BatchOutcome, RunContext, Running, TaskFailure, WorkerId, run_batch};

/// One unit of work for a worker thread.
struct Job {
    batch: Batch,
    link: CallLink,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("first", &self.batch.first)
            .finish()
    }
}

/// A slot's state while it runs a timed batch: who reports the batch is decided by one CAS.
const IDLE: u8 = 0;
const BUSY: u8 = 1;
const ABANDONED: u8 = 2;

/// What a worker thread shares with the watchdog.
#[derive(Debug, Default)]
struct Slot {
    running: Running,
    state: AtomicU8,
    /// The timed job being run (only timed jobs are recorded; untimed ones cost nothing here).
    current: Mutex<Option<Arc<Job>>>,
}

/// A worker thread the pool still owns.
#[derive(Debug)]
struct Worker {
    slot: Arc<Slot>,
    handle: JoinHandle<()>,
}

/// What the pool, the watchdog and replacement threads need.
#[derive(Debug)]
struct Shared {
    queue: Receiver<Arc<Job>>,
    level: usize,
    /// Bytes of stack for each worker thread (replacements included).
    stack_size: usize,
    workers: Mutex<Vec<Worker>>,
    /// Wakes the watchdog when a timed batch starts (sent by workers, so it never misses one).
    wake: Mutex<Option<Sender<()>>>,
}

/// A fixed set of worker threads; dropping the pool lets them finish their current batch and joins
/// them (abandoned threads are left to finish on their own).
#[derive(Debug)]
pub struct ThreadPool {
    jobs: Option<Sender<Arc<Job>>>,
    shared: Arc<Shared>,
    watchdog: Mutex<Option<JoinHandle<()>>>,
    size: usize,
}

impl ThreadPool {
    /// Starts `size` worker threads (at least one), one nesting level below the calling thread,
    /// each with `stack_size` bytes of stack.
    pub fn new(size: usize, stack_size: usize) -> std::io::Result<Self> {
        let (jobs, queue) = unbounded::<Arc<Job>>();
        let size = size.max(1);
        let pool = ThreadPool {
            jobs: Some(jobs),
            shared: Arc::new(Shared {
                queue,
                level: crate::nesting::level() + 1,
                stack_size,
                workers: Mutex::new(Vec::with_capacity(size)),
                wake: Mutex::new(None),
            }),
            watchdog: Mutex::new(None),
            size,
        };
        for worker in 0..size {
            // If spawning fails part-way, dropping `pool` on the error path joins the threads started so far.
            let started = spawn_worker(&pool.shared, worker)?;
            lock(&pool.shared.workers).push(started);
        }
        Ok(pool)
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Queues `batch`; some worker runs it and sends its outcome on `link.reply`.
    pub fn dispatch(&self, batch: Batch, link: &CallLink) {
        if link.timeout.is_some() {
            self.ensure_watchdog();
        }
        let job = Arc::new(Job {
            batch,
            link: link.clone(),
        });
        if let Some(jobs) = &self.jobs {
            // The workers hold the receiver until the pool is dropped, so the queue is always open here.
            if let Err(unsent) = jobs.send(job) {
                let job = unsent.into_inner();
                let failure = TaskFailure::Panicked("the worker pool is shut down".into());
                let outcome =
                    BatchOutcome::failed(&job.batch, WorkerId::Thread(0), job.batch.first, failure);
                reply(job, outcome);
            }
        }
    }

    /// Starts the watchdog the first time a timed batch comes.
    fn ensure_watchdog(&self) {
        let mut watchdog = lock(&self.watchdog);
        if watchdog.is_some() {
            return;
        }
        let Some(jobs) = self.jobs.clone() else {
            return;
        };
        let (wake, woken) = unbounded();
        *lock(&self.shared.wake) = Some(wake);
        let shared = self.shared.clone();
        let started = std::thread::Builder::new()
            .name("pj-watchdog".into())
            .spawn(move || watch(&shared, &woken, &jobs));
        match started {
            Ok(handle) => *watchdog = Some(handle),
            // Without a watchdog, timeouts cannot fire; the call still completes. Workers find no
            // wake channel and carry on.
            Err(_) => *lock(&self.shared.wake) = None,
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // The watchdog holds a sender of the job queue (to queue retries): stop it first, so that
        // closing ours ends the queue.
        drop(lock(&self.shared.wake).take());
        if let Some(watchdog) = lock(&self.watchdog).take() {
            let _ = watchdog.join();
        }
        drop(self.jobs.take());
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.handle.join();
        }
    }
}

/// A lock that survives a panic elsewhere (the data it guards stays consistent between statements).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_worker(shared: &Arc<Shared>, worker: usize) -> std::io::Result<Worker> {
    let slot = Arc::new(Slot::default());
    let (thread_slot, thread_shared) = (slot.clone(), shared.clone());
    let handle = std::thread::Builder::new()
        .name(format!("pj-worker-{worker}"))
        .stack_size(shared.stack_size)
        .spawn(move || {
            crate::nesting::set_level(thread_shared.level);
            worker_loop(worker, &thread_slot, &thread_shared)
        })?;
    Ok(Worker { slot, handle })
}

fn worker_loop(worker: usize, slot: &Slot, shared: &Shared) {
    let queued = || match shared.queue.try_recv() {
        Ok(job) => Some(Ok(job)),
        Err(crossbeam_channel::TryRecvError::Empty) => None,
        Err(crossbeam_channel::TryRecvError::Disconnected) => {
            Some(Err(crossbeam_channel::RecvError))
        }
    };
    while let Ok(job) = crate::spin::wait(queued, || shared.queue.recv()) {
        let timed = job.link.timeout.is_some();
        if timed {
            slot.running.reset();
            *lock(&slot.current) = Some(job.clone());
            slot.state.store(BUSY, Ordering::Release);
            if let Some(wake) = lock(&shared.wake).as_ref() {
                let _ = wake.send(());
            }
        }
        let ctx = RunContext {
            running: timed.then_some(&slot.running),
            ..job.link.run_context(WorkerId::Thread(worker))
        };
        let (first, size) = (job.batch.first, job.batch.len());
        let mut outcome = catch_unwind(AssertUnwindSafe(|| run_batch(&job.batch, ctx, None)))
            .unwrap_or_else(|panic| {
                job.link.abort.store(true, Ordering::Relaxed);
                lost_batch(
                    first,
                    size,
                    WorkerId::Thread(worker),
                    panic_message(panic.as_ref()),
                )
            });
        if timed {
            if slot
                .state
                .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // The watchdog gave up on this thread and reported the batch; a replacement took
                // the slot. Leave quietly: these results belong to nobody.
                return;
            }
            lock(&slot.current).take();
        }
        outcome.merge_forced(&job.batch.forced);
        // A closed reply channel means the call is gone; the outcome has nobody to tell.
        reply(job, outcome);
    }
}

/// Reports a job's outcome; the job's batch (its argument buffer) is dropped first when nobody
/// else holds the job, so that the buffer is back in the pool before the caller can see the
/// call end (see [`CallLink::send`]).
fn reply(job: Arc<Job>, outcome: BatchOutcome) {
    match Arc::try_unwrap(job) {
        Ok(Job { batch, link }) => link.send(batch, outcome),
        // The watchdog looks at it this moment: the last holder gives the buffer back.
        Err(job) => job.link.send_shared(&job.batch, outcome),
    }
}

/// The watchdog: sleeps until a timed batch runs, then checks running tasks against their limits
/// every few milliseconds until none runs. Ends when the pool drops its wake sender.
fn watch(shared: &Arc<Shared>, woken: &Receiver<()>, jobs: &Sender<Arc<Job>>) {
    let mut period = None;
    loop {
        let woke = match period {
            None => woken.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(period) => woken.recv_timeout(period),
        };
        if woke == Err(RecvTimeoutError::Disconnected) {
            return;
        }
        period = check_slots(shared, jobs);
    }
}

/// Abandons every worker whose task is overdue; returns how soon to look again (`None`: no timed
/// batch is running).
fn check_slots(shared: &Arc<Shared>, jobs: &Sender<Arc<Job>>) -> Option<Duration> {
    let mut workers = lock(&shared.workers);
    let mut period: Option<Duration> = None;
    for number in 0..workers.len() {
        let slot = workers[number].slot.clone();
        if slot.state.load(Ordering::Acquire) != BUSY {
            continue;
        }
        let Some(job) = lock(&slot.current).clone() else {
            continue;
        };
        let Some(limit) = job.link.timeout else {
            continue;
        };
        // Look again at a tenth of the limit (bounded), so a timeout fires at most ~10% late.
        let next = (limit / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
        period = Some(period.map_or(next, |p| p.min(next)));
        let Some((index, elapsed)) = slot.running.elapsed() else {
            continue;
        };
        if elapsed <= limit
            || slot
                .state
                .compare_exchange(BUSY, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue;
        }
        slot.running.abandon();
        // The old handle is dropped: the stuck thread is detached, never joined. Without a
        // replacement (spawn failed), the slot keeps the abandoned thread, which leaves once its
        // task returns; the pool runs one thread short meanwhile.
        if let Ok(replacement) = spawn_worker(shared, number) {
            workers[number] = replacement;
        }
        let failure = TaskFailure::TimedOut { limit, elapsed };
        if job.link.collect {
            // Run the rest of the batch again without the overdue task (its earlier results died
            // with the abandoned thread's arena).
            let retry = Arc::new(Job {
                batch: job.batch.retry_without(index, failure),
                link: job.link.clone(),
            });
            if let Err(unsent) = jobs.send(retry) {
                let retry = unsent.into_inner();
                let outcome = BatchOutcome::failed(
                    &retry.batch,
                    WorkerId::Thread(number),
                    index,
                    TaskFailure::Panicked("the worker pool is shut down".into()),
                );
                reply(retry, outcome);
            }
        } else {
            job.link.abort.store(true, Ordering::Relaxed);
            let outcome =
                BatchOutcome::failed(&job.batch, WorkerId::Thread(number), index, failure);
            job.link.send_shared(&job.batch, outcome);
        }
    }
    period
}

/// The outcome of a batch that produced nothing because pj itself failed while running it.
fn lost_batch(first: usize, size: usize, worker: WorkerId, why: String) -> BatchOutcome {
    BatchOutcome {
        first,
        size,
        data: Default::default(),
        ends: Vec::new(),
        failure: Some((first, TaskFailure::Panicked(why))),
        errors: Vec::new(),
        large: Vec::new(),
        seconds: 0.0,
        worker,
    }
}
