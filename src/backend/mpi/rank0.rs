//! Rank 0's side of the MPI backend: the attachment ([`attach`], [`detach`]) that starts and stops
//! the dispatcher thread, and the [`MpiPool`] handle through which calls of every `Parallel`
//! object on backend "mpi" queue their batches to that one thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, unbounded};

use super::dispatcher::Dispatcher;
use super::ops::MpiOps;
use crate::backend::CallLink;
use crate::error::{Error, ErrorKind, Result};
use crate::task::{Batch, BatchOutcome, TaskFailure, WorkerId};

/// One batch for the dispatcher, or a wake-up to see the stop flag.
// Wake is sent once per program: boxing the common variant would cost an allocation per batch.
#[allow(clippy::large_enum_variant)]
pub(super) enum Order {
    Run { batch: Batch, link: CallLink },
    Wake,
}

/// What the dispatcher found about the worker ranks' registries (`None` while it is still
/// waiting for them).
pub(super) type Readiness = Arc<(Mutex<Option<std::result::Result<(), String>>>, Condvar)>;

/// Whether the dispatcher still takes orders. Queueing a batch and closing the queue happen under
/// its lock, so that no batch lands in the queue after the dispatcher's last look at it (it would
/// be dropped with the queue, unanswered, and its call would wait for it forever).
pub(super) type Gate = Arc<Mutex<bool>>;

/// Rank 0's attachment: the dispatcher's queue, stop flag and thread (which returns how many
/// ranks it gave up).
struct World {
    orders: Sender<Order>,
    gate: Gate,
    ready: Readiness,
    workers: usize,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

static WORLD: Mutex<Option<World>> = Mutex::new(None);

fn world() -> std::sync::MutexGuard<'static, Option<World>> {
    WORLD.lock().unwrap_or_else(|p| p.into_inner())
}

/// The MPI attachment held across a fork ([`crate::fork`]); released in the parent and the child.
pub(crate) struct ForkHold(std::sync::MutexGuard<'static, Option<World>>);

/// Takes the MPI attachment for a fork.
pub(crate) fn hold_for_fork() -> ForkHold {
    ForkHold(world())
}

impl ForkHold {
    /// In the child: the dispatcher thread and the MPI library's state did not survive the fork,
    /// so the child has no MPI attached. The parent's attachment is leaked, not dropped (dropping
    /// would join a thread that does not exist here).
    pub(crate) fn forget_in_child(&mut self) {
        std::mem::forget(self.0.take());
    }
}

/// Rank 0: makes backend "mpi" available, with ranks 1..size as workers.
pub fn attach(ops: MpiOps) -> Result<()> {
    if ops.rank != 0 {
        return Err(Error::invalid(format!(
            "pj_mpi_attach is for rank 0 (this is rank {})",
            ops.rank
        )));
    }
    if ops.size < 1 {
        return Err(Error::invalid(format!(
            "the communicator's size must be at least 1 (got {})",
            ops.size
        )));
    }
    let mut world = world();
    if world.is_some() {
        return Err(Error::new(
            ErrorKind::Busy,
            "an MPI table is already attached (pj_mpi_main runs once per program; \
             pj_mpi_detach ends an attachment)",
        ));
    }
    let (orders, queue) = unbounded();
    let gate: Gate = Arc::new(Mutex::new(true));
    let ready: Readiness = Arc::default();
    let stopping = Arc::new(AtomicBool::new(false));
    let workers = (ops.size - 1) as usize;
    let thread = {
        let (ready, stopping, gate) =
            (Arc::clone(&ready), Arc::clone(&stopping), Arc::clone(&gate));
        std::thread::Builder::new()
            .name("pj-mpi".into())
            .spawn(move || Dispatcher::new(ops).run(&queue, &gate, &ready, &stopping))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot start pj's MPI dispatcher thread: {e}"),
                )
            })?
    };
    *world = Some(World {
        orders,
        gate,
        ready,
        workers,
        stopping,
        thread: Some(thread),
    });
    Ok(())
}

/// Rank 0 at exit: cancels what runs, stops the worker ranks and the dispatcher. Returns how
/// many worker ranks were given up for silence or could not be told to leave (then MPI_Finalize
/// would wait for them forever).
pub fn detach() -> usize {
    let Some(mut world) = world().take() else {
        return 0;
    };
    // The flag is seen at the dispatcher's next round, even while every rank is busy; the wake-up
    // ends a wait on the queue.
    world.stopping.store(true, Ordering::Release);
    let _ = world.orders.send(Order::Wake);
    world
        .thread
        .take()
        .and_then(|thread| thread.join().ok())
        .unwrap_or(0)
}

/// The number of worker ranks, when this process is rank 0 of an attached MPI job.
pub fn worker_ranks() -> Option<usize> {
    world().as_ref().map(|w| w.workers)
}

/// Rank 0's handle on the dispatcher: what a `Parallel` object's backend holds.
#[derive(Debug)]
pub struct MpiPool {
    orders: Sender<Order>,
    gate: Gate,
    workers: usize,
}

impl std::fmt::Debug for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Order")
    }
}

impl MpiPool {
    /// A handle using up to `workers` ranks; waits until every rank has reported its registry
    /// and fails if one differs from this process's or never answered.
    pub fn connect(workers: usize) -> Result<Self> {
        let (orders, gate, ready, ranks) = {
            let world = world();
            let world = world.as_ref().ok_or_else(not_attached)?;
            (
                world.orders.clone(),
                Arc::clone(&world.gate),
                Arc::clone(&world.ready),
                world.workers,
            )
        };
        let (lock, changed) = &*ready;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        while state.is_none() {
            state = changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(Err(message)) = state.as_ref() {
            return Err(Error::new(ErrorKind::Io, message.clone()));
        }
        Ok(MpiPool {
            orders,
            gate,
            workers: workers.clamp(1, ranks.max(1)),
        })
    }

    /// Number of worker ranks this pool keeps busy.
    pub fn size(&self) -> usize {
        self.workers
    }

    /// Queues `batch`; its outcome arrives on `link.reply`.
    pub fn dispatch(&self, batch: Batch, link: &CallLink) {
        let open = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if !*open {
            drop(open);
            fail(batch, link, "the MPI backend is detached (pj_mpi_detach)");
            return;
        }
        let order = Order::Run {
            batch,
            link: link.clone(),
        };
        let unsent = self.orders.send(order).err();
        drop(open);
        if let Some(unsent) = unsent
            && let Order::Run { batch, link } = unsent.into_inner()
        {
            fail(batch, &link, "the MPI backend is detached (pj_mpi_detach)");
        }
    }
}

/// The error for backend "mpi" in a process without an attached table.
pub fn not_attached() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "backend \"mpi\" needs the program to call pj_mpi_main(&argc, &argv) (pj_mpi.h, the pj_mpi \
         library built where MPI is installed) and to run under mpirun; this process has no MPI \
         attached",
    )
}

/// Fails a batch that never reached a rank.
pub(super) fn fail(batch: Batch, link: &CallLink, message: &str) {
    link.abort.store(true, Ordering::Relaxed);
    let failure = TaskFailure::Io(message.to_owned());
    let outcome = BatchOutcome::failed(&batch, WorkerId::NoRank, batch.first, failure);
    link.send(batch, outcome);
}
