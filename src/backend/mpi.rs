//! The MPI backend: the same program under `mpirun -n N`, rank 0 dispatching, ranks 1..N-1 working.
//!
//! libpj never links MPI. A shim compiled with mpicc (`pj_mpi_main`, bindings/mpi) initializes MPI,
//! duplicates `MPI_COMM_WORLD` for pj, and hands pj a table of C functions ([`MpiOps`]): a
//! non-blocking send and its test, a non-blocking probe, a receive. Rank 0 attaches the table
//! ([`attach`]) and returns to the program; every other rank serves ([`serve`]) until rank 0
//! detaches at exit ([`detach`]).
//!
//! Rank 0. One dispatcher thread owns every MPI exchange. Calls of every `Parallel` object on
//! backend "mpi" queue their batches to it (an [`MpiPool`] is a handle on that queue); the
//! dispatcher sends each batch to the least busy worker rank (up to two batches in flight per rank,
//! so that a rank finds its next batch waiting when it finishes one), encoded as the spawn start
//! method encodes it (registry indices, argument bytes), and hands each outcome to its call.
//! Sends are non-blocking and the dispatcher keeps receiving while they complete, so large
//! payloads in both directions cannot deadlock. When a call is aborted (a task failed, a timeout,
//! pj_parallel_cancel), the ranks holding its batches are told to cancel them (their running tasks
//! are killed); when it is abandoned (pj_parallel_free), to let running tasks finish, as the
//! process backend does; either way those tasks see pj_out_cancelled. A rank silent for
//! 10 s while it has work is given up (heartbeats come every second).
//!
//! Worker ranks. Before anything else a rank reports its registry's fingerprint, and rank 0 checks
//! every rank against its own. A rank runs each batch through a local one-worker process pool (a
//! forked child kept across batches): a task that crashes, exits or overruns its timeout kills
//! that child, not the rank, so it is reported (naming the rank and the task) instead of ending
//! the MPI job; on_error=collect retries the rest of the batch there, as on the process backend.
//!
//! Waiting. Nothing here blocks inside MPI: both sides poll with `iprobe` and back off from a
//! short spin to sleeps of up to a few milliseconds, so an idle rank costs next to no CPU. Rank 0's
//! dispatcher blocks on its job queue (no polling at all) while no batch is in flight.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, unbounded};

use super::wire::{RunFlags, decode_batch, decode_outcome, encode_batch, encode_outcome};
use super::{CallLink, ProcessPool};
use crate::config::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::spin::Backoff;
use crate::task::{Batch, BatchOutcome, TaskFailure};

/// The shim's MPI operations (see `pj_mpi_ops_t` in the header for each function's contract).
#[derive(Clone, Copy, Debug)]
pub struct MpiOps {
    pub context: *mut c_void,
    pub rank: c_int,
    pub size: c_int,
    pub isend: unsafe extern "C" fn(
        *mut c_void,
        c_int,
        c_int,
        *const u8,
        usize,
        *mut *mut c_void,
    ) -> c_int,
    pub test: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
    pub iprobe: unsafe extern "C" fn(*mut c_void, *mut c_int, *mut c_int, *mut usize) -> c_int,
    pub recv: unsafe extern "C" fn(*mut c_void, c_int, c_int, *mut u8, usize) -> c_int,
    /// The largest message the transport carries, in bytes.
    pub max_message: usize,
}

// SAFETY: the table is plain function pointers and the shim's context, which the shim keeps valid
// for the program's life; pj calls it from one thread at a time (the dispatcher, or the serving
// thread), as the header documents.
unsafe impl Send for MpiOps {}

/// Message tags on pj's communicator.
const TAG_HELLO: c_int = 1;
const TAG_BATCH: c_int = 2;
const TAG_OUTCOME: c_int = 3;
const TAG_CANCEL: c_int = 4;
const TAG_STOP: c_int = 5;
const TAG_ALIVE: c_int = 6;

/// How long rank 0 waits for every worker rank to report its registry.
const HELLO_LIMIT: Duration = Duration::from_secs(30);
/// How long stopping waits for cancelled batches and the final messages.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// A rank running a batch says it is alive this often...
const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...and rank 0 gives it up after this long without a word. By default Open MPI ends the whole
/// job when a rank dies; this covers runtimes that keep the job going (mpirun --enable-recovery).
const SILENCE_LIMIT: Duration = Duration::from_secs(10);

fn mpi_error(what: &str, code: c_int) -> Error {
    Error::new(ErrorKind::Io, format!("MPI {what} failed (error {code})"))
}

/// A send in progress: its request and the bytes MPI reads until it completes.
struct PendingSend {
    request: *mut c_void,
    bytes: Vec<u8>,
    completed: bool,
}

impl Drop for PendingSend {
    fn drop(&mut self) {
        if !self.completed {
            // MPI may still read the bytes (a send abandoned at shutdown or after an error):
            // they are leaked, never freed under it.
            std::mem::forget(std::mem::take(&mut self.bytes));
        }
    }
}

impl MpiOps {
    /// Starts sending `bytes` (kept alive in the returned value until the send completes).
    fn start_send(&self, dest: c_int, tag: c_int, bytes: Vec<u8>) -> Result<PendingSend> {
        let mut request = std::ptr::null_mut();
        // SAFETY: the shim's isend with its own context; `bytes` stays alive and unchanged in the
        // returned PendingSend until `test` reports completion.
        let code = unsafe {
            (self.isend)(
                self.context,
                dest,
                tag,
                bytes.as_ptr(),
                bytes.len(),
                &mut request,
            )
        };
        if code != 0 {
            return Err(mpi_error("send", code));
        }
        Ok(PendingSend {
            request,
            bytes,
            completed: false,
        })
    }

    /// Whether `send` has completed (its request is then released by the shim).
    fn sent(&self, send: &mut PendingSend) -> Result<bool> {
        if send.completed {
            return Ok(true);
        }
        // SAFETY: a request isend returned and test has not yet reported complete.
        match unsafe { (self.test)(self.context, send.request) } {
            1 => {
                send.completed = true;
                Ok(true)
            }
            0 => Ok(false),
            code => Err(mpi_error("test", code)),
        }
    }

    /// Drops the completed sends of `sends`; whether there were any.
    fn complete(&self, sends: &mut Vec<PendingSend>) -> Result<bool> {
        let before = sends.len();
        let mut i = 0;
        while i < sends.len() {
            if self.sent(&mut sends[i])? {
                sends.swap_remove(i);
            } else {
                i += 1;
            }
        }
        Ok(sends.len() < before)
    }

    /// Sends `bytes` and waits (polling, backing off) until the send completes or `limit` passes.
    fn send_and_wait(
        &self,
        dest: c_int,
        tag: c_int,
        bytes: Vec<u8>,
        limit: Duration,
    ) -> Result<()> {
        let mut send = self.start_send(dest, tag, bytes)?;
        let deadline = Instant::now() + limit;
        let mut backoff = Backoff::default();
        while !self.sent(&mut send)? {
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("MPI rank {dest} did not take a message within {limit:?}"),
                ));
            }
            backoff.pause();
        }
        Ok(())
    }

    /// A waiting message's (source, tag, length), if any.
    fn probe(&self) -> Result<Option<(c_int, c_int, usize)>> {
        let (mut source, mut tag, mut len) = (0, 0, 0usize);
        // SAFETY: the shim's iprobe writes the three out-parameters, which are valid locals.
        match unsafe { (self.iprobe)(self.context, &mut source, &mut tag, &mut len) } {
            1 => Ok(Some((source, tag, len))),
            0 => Ok(None),
            code => Err(mpi_error("probe", code)),
        }
    }

    /// Receives the message `probe` announced into `buf` (resized to its length).
    fn receive(&self, source: c_int, tag: c_int, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.resize(len, 0);
        // SAFETY: `buf` has room for `len` bytes, the length iprobe announced for this message.
        let code = unsafe { (self.recv)(self.context, source, tag, buf.as_mut_ptr(), len) };
        if code != 0 {
            return Err(mpi_error("receive", code));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Rank 0

/// One batch for the dispatcher, or a wake-up to see the stop flag.
// Wake is sent once per program: boxing the common variant would cost an allocation per batch.
#[allow(clippy::large_enum_variant)]
enum Order {
    Run { batch: Batch, link: CallLink },
    Wake,
}

/// What the dispatcher found about the worker ranks' registries (`None` while it is still
/// waiting for them).
type Readiness = Arc<(Mutex<Option<std::result::Result<(), String>>>, Condvar)>;

/// Rank 0's attachment: the dispatcher's queue, stop flag and thread (which returns how many
/// ranks it gave up).
struct World {
    orders: Sender<Order>,
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
    let ready: Readiness = Arc::default();
    let stopping = Arc::new(AtomicBool::new(false));
    let workers = (ops.size - 1) as usize;
    let thread = {
        let (ready, stopping) = (Arc::clone(&ready), Arc::clone(&stopping));
        std::thread::Builder::new()
            .name("pj-mpi".into())
            .spawn(move || Dispatcher::new(ops).run(&queue, &ready, &stopping))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot start pj's MPI dispatcher thread: {e}"),
                )
            })?
    };
    *world = Some(World {
        orders,
        ready,
        workers,
        stopping,
        thread: Some(thread),
    });
    Ok(())
}

/// Rank 0 at exit: cancels what runs, stops the worker ranks and the dispatcher. Returns how
/// many worker ranks were given up for silence (then MPI_Finalize would wait for them forever).
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
        let (orders, ready, ranks) = {
            let world = world();
            let world = world.as_ref().ok_or_else(not_attached)?;
            (
                world.orders.clone(),
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
            workers: workers.clamp(1, ranks.max(1)),
        })
    }

    /// Number of worker ranks this pool keeps busy.
    pub fn size(&self) -> usize {
        self.workers
    }

    /// Queues `batch`; its outcome arrives on `link.reply`.
    pub fn dispatch(&self, batch: Batch, link: &CallLink) {
        let order = Order::Run {
            batch,
            link: link.clone(),
        };
        if let Err(unsent) = self.orders.send(order)
            && let Order::Run { batch, link } = unsent.into_inner()
        {
            fail(&batch, &link, "the MPI backend is detached (pj_mpi_detach)");
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

/// A batch on a worker rank.
struct InFlight {
    seq: u64,
    batch: Batch,
    link: CallLink,
    cancelled: bool,
}

/// Batches in flight per worker rank: while one runs, the next is already there, so a rank never
/// waits for rank 0 to notice an outcome and send more.
const DEPTH: usize = 2;

/// Rank 0's view of one worker rank.
struct Rank {
    /// Its batches, oldest first (it runs them in this order).
    batches: VecDeque<InFlight>,
    /// When it last sent anything, or was given work while idle.
    heard: Instant,
    /// Passed the registry check and not given up.
    usable: bool,
    /// Given up for silence: gone, so not even told to stop.
    lost: bool,
}

/// Rank 0's dispatcher state.
struct Dispatcher {
    ops: MpiOps,
    /// By worker rank - 1.
    ranks: Vec<Rank>,
    sends: Vec<PendingSend>,
    next_seq: u64,
    buf: Vec<u8>,
}

impl Dispatcher {
    fn new(ops: MpiOps) -> Self {
        let ranks = (ops.size - 1).max(0) as usize;
        Dispatcher {
            ops,
            ranks: (0..ranks)
                .map(|_| Rank {
                    batches: VecDeque::new(),
                    heard: Instant::now(),
                    usable: false,
                    lost: false,
                })
                .collect(),
            sends: Vec::new(),
            next_seq: 1,
            buf: Vec::new(),
        }
    }

    /// The dispatcher's life: the registry check, then batches until `stopping`; returns how many
    /// ranks it gave up.
    fn run(mut self, queue: &Receiver<Order>, ready: &Readiness, stopping: &AtomicBool) -> usize {
        let verdict = self.handshake();
        {
            let (lock, changed) = &**ready;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
            changed.notify_all();
        }
        let stop = || stopping.load(Ordering::Acquire);
        let mut backoff = Backoff::default();
        while !stop() {
            let mut progressed = match self.poll() {
                Ok(progressed) => progressed,
                Err(error) => {
                    self.fail_all(&error.to_string());
                    false
                }
            };
            // Take orders while a rank has room.
            while self.free_rank().is_some() && !stop() {
                let order = if self.idle() && !progressed {
                    // Nothing in flight: block on the queue, no polling at all.
                    match queue.recv() {
                        Ok(order) => order,
                        Err(_) => break,
                    }
                } else {
                    match queue.try_recv() {
                        Ok(order) => order,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                };
                progressed = true;
                if let Order::Run { batch, link } = order {
                    self.start(batch, link);
                }
            }
            if stop() {
                break;
            }
            if self.ranks.iter().all(|r| !r.usable && r.batches.is_empty()) {
                // No usable rank at all (every rank failed the handshake or was given up).
                match queue.recv() {
                    Ok(Order::Run { batch, link }) => {
                        fail(&batch, &link, "no MPI rank can run tasks")
                    }
                    Ok(Order::Wake) => {}
                    Err(_) => break,
                }
                continue;
            }
            if progressed {
                backoff.reset();
                continue;
            }
            let wait = backoff.next();
            if wait.is_zero() {
                continue;
            }
            // Sleep, but wake for a new batch when a rank has room.
            if self.free_rank().is_some() {
                match queue.recv_timeout(wait) {
                    Ok(Order::Run { batch, link }) => {
                        self.start(batch, link);
                        backoff.reset();
                    }
                    Ok(Order::Wake) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                std::thread::sleep(wait);
            }
        }
        let lost = self.stop();
        // Batches still queued never reach a rank; their calls learn why.
        while let Ok(order) = queue.try_recv() {
            if let Order::Run { batch, link } = order {
                fail(
                    &batch,
                    &link,
                    "the MPI backend was detached (pj_mpi_detach)",
                );
            }
        }
        lost
    }

    /// Waits for every worker rank's registry report and checks it against ours.
    fn handshake(&mut self) -> std::result::Result<(), String> {
        let ours = crate::registry::fingerprint();
        let mut problems = Vec::new();
        let mut answered = vec![false; self.ranks.len()];
        let deadline = Instant::now() + HELLO_LIMIT;
        let mut backoff = Backoff::default();
        while answered.iter().any(|a| !a) && Instant::now() < deadline {
            match self.ops.probe() {
                Ok(Some((source, tag, len))) => {
                    let mut buf = Vec::new();
                    if let Err(error) = self.ops.receive(source, tag, len, &mut buf) {
                        return Err(error.to_string());
                    }
                    let Some(slot) = slot_of(source, self.ranks.len()) else {
                        continue;
                    };
                    if tag != TAG_HELLO {
                        continue;
                    }
                    answered[slot] = true;
                    let theirs = buf
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_ne_bytes);
                    if theirs == Some(ours) {
                        self.ranks[slot].usable = true;
                    } else {
                        let names = String::from_utf8_lossy(buf.get(8..).unwrap_or_default())
                            .replace('\n', ", ");
                        problems.push(format!(
                            "MPI rank {source} registered other task functions than rank 0: rank 0 \
                             [{}], rank {source} [{names}]",
                            crate::registry::names().join(", ")
                        ));
                    }
                    backoff.reset();
                }
                Ok(None) => backoff.pause(),
                Err(error) => return Err(error.to_string()),
            }
        }
        for (slot, answered) in answered.iter().enumerate() {
            if !answered {
                problems.push(format!(
                    "MPI rank {} did not report its registry within {} s: every rank must call \
                     pj_mpi_main after its pj_register calls",
                    slot + 1,
                    HELLO_LIMIT.as_secs()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn idle(&self) -> bool {
        self.ranks.iter().all(|r| r.batches.is_empty()) && self.sends.is_empty()
    }

    /// A usable rank with room for a batch, the least busy first.
    fn free_rank(&self) -> Option<usize> {
        (0..self.ranks.len())
            .filter(|&s| self.ranks[s].usable && self.ranks[s].batches.len() < DEPTH)
            .min_by_key(|&s| self.ranks[s].batches.len())
    }

    /// Sends `batch` to a rank with room.
    fn start(&mut self, batch: Batch, link: CallLink) {
        if link.abort.load(Ordering::Relaxed) {
            let _ = link.reply.send(BatchOutcome::skipped(&batch, 0));
            return;
        }
        let Some(slot) = self.free_rank() else {
            unreachable!("start is only called when a rank has room")
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let flags = RunFlags {
            timed: link.timeout.is_some(),
            collect: link.collect,
            access: link.access,
            call: link.call,
            results_above: u64::MAX,
        };
        let mut message = Vec::new();
        if let Err(error) = encode_batch(&batch, flags, &[], &[], true, &mut message) {
            fail(&batch, &link, &error.to_string());
            return;
        }
        let timeout = link.timeout.map_or(0, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        append_trailer(&mut message, seq, timeout);
        if message.len() > self.ops.max_message {
            fail(
                &batch,
                &link,
                &too_big("the arguments of this batch", message.len(), &self.ops),
            );
            return;
        }
        match self.ops.start_send(rank_of(slot), TAG_BATCH, message) {
            Ok(send) => {
                self.sends.push(send);
                let rank = &mut self.ranks[slot];
                if rank.batches.is_empty() {
                    // Its silence while idle does not count.
                    rank.heard = Instant::now();
                }
                rank.batches.push_back(InFlight {
                    seq,
                    batch,
                    link,
                    cancelled: false,
                });
            }
            Err(error) => fail(&batch, &link, &error.to_string()),
        }
    }

    /// One round: completes sends, receives outcomes, cancels aborted batches. Whether anything
    /// happened.
    fn poll(&mut self) -> Result<bool> {
        let mut progressed = self.ops.complete(&mut self.sends)?;
        while let Some((source, tag, len)) = self.ops.probe()? {
            progressed = true;
            let mut buf = std::mem::take(&mut self.buf);
            self.ops.receive(source, tag, len, &mut buf)?;
            if let Some(slot) = slot_of(source, self.ranks.len()) {
                self.ranks[slot].heard = Instant::now();
                if tag == TAG_OUTCOME {
                    self.finish(slot, &buf);
                }
            }
            self.buf = buf;
        }
        self.give_up_silent_ranks();
        for slot in 0..self.ranks.len() {
            for running in &mut self.ranks[slot].batches {
                if running.cancelled || !running.link.abort.load(Ordering::Acquire) {
                    continue;
                }
                running.cancelled = true;
                // The batch's sequence number, then 1 when the call is abandoned (`drain`: the
                // rank lets a running task finish instead of killing it), else 0.
                let mut cancel = running.seq.to_ne_bytes().to_vec();
                cancel.push(u8::from(running.link.drain.load(Ordering::Relaxed)));
                self.sends
                    .push(self.ops.start_send(rank_of(slot), TAG_CANCEL, cancel)?);
                progressed = true;
            }
        }
        Ok(progressed)
    }

    /// Hands the outcome in `message` (from the rank of `slot`) to its call.
    fn finish(&mut self, slot: usize, message: &[u8]) {
        let Some((body, seq, pid)) = split_trailer(message) else {
            return;
        };
        let batches = &mut self.ranks[slot].batches;
        let Some(InFlight { batch, link, .. }) = batches
            .iter()
            .position(|r| r.seq == seq)
            .and_then(|at| batches.remove(at))
        else {
            return;
        };
        let outcome = match decode_outcome(body, slot) {
            Ok((mut outcome, _)) => {
                outcome.pid = pid as u32;
                outcome.seconds = batch
                    .dispatched_at
                    .map_or(0.0, |t| t.elapsed().as_secs_f64());
                if outcome.failure.is_some() {
                    link.abort.store(true, Ordering::Relaxed);
                }
                outcome
            }
            Err(error) => {
                link.abort.store(true, Ordering::Relaxed);
                BatchOutcome::failed(
                    &batch,
                    slot,
                    batch.first,
                    TaskFailure::Spawn(format!("MPI rank {}: {error}", rank_of(slot))),
                )
            }
        };
        let _ = link.reply.send(outcome);
    }

    /// A rank that said nothing for [`SILENCE_LIMIT`] while it had work is lost: its batches
    /// fail (WORKER_DIED, each at its first task: which task ran is unknown) and it gets no
    /// more work.
    fn give_up_silent_ranks(&mut self) {
        for (slot, rank) in self.ranks.iter_mut().enumerate() {
            if rank.batches.is_empty() || rank.heard.elapsed() < SILENCE_LIMIT {
                continue;
            }
            rank.usable = false;
            rank.lost = true;
            let silent = rank.heard.elapsed().as_secs() as u32;
            for InFlight { batch, link, .. } in rank.batches.drain(..) {
                link.abort.store(true, Ordering::Relaxed);
                let failure = TaskFailure::Died {
                    pid: 0,
                    death: crate::task::Death::Silent(silent),
                    fault_address: None,
                    backtrace: None,
                };
                let _ = link
                    .reply
                    .send(BatchOutcome::failed(&batch, slot, batch.first, failure));
            }
        }
    }

    /// An MPI operation failed: every batch in flight fails with `message`.
    fn fail_all(&mut self, message: &str) {
        for rank in &mut self.ranks {
            for InFlight { batch, link, .. } in rank.batches.drain(..) {
                fail(&batch, &link, message);
            }
            rank.usable = false;
        }
    }

    /// Cancels what runs, waits (bounded) for it, then tells every rank to leave; returns how many
    /// ranks were given up.
    fn stop(&mut self) -> usize {
        for running in self.ranks.iter().flat_map(|r| &r.batches) {
            running.link.abort.store(true, Ordering::Relaxed);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        let mut backoff = Backoff::default();
        while !self.idle() && Instant::now() < deadline {
            match self.poll() {
                Ok(true) => backoff.reset(),
                Ok(false) => backoff.pause(),
                Err(_) => break,
            }
        }
        for (slot, rank) in self.ranks.iter_mut().enumerate() {
            for InFlight { batch, link, .. } in rank.batches.drain(..) {
                let _ = link.reply.send(BatchOutcome::skipped(&batch, slot));
            }
        }
        // Sends still pending are abandoned (their bytes are leaked: MPI may still read them).
        self.sends.clear();
        // A rank refused at the handshake learns it here, and ends with status 2; when a rank
        // was lost, every rank learns that MPI_Finalize would wait for it forever.
        let lost = self.ranks.iter().filter(|r| r.lost).count();
        for slot in (0..self.ranks.len()).filter(|&s| !self.ranks[s].lost) {
            let stop = vec![u8::from(!self.ranks[slot].usable), u8::from(lost > 0)];
            let _ = self
                .ops
                .send_and_wait(rank_of(slot), TAG_STOP, stop, STOP_LIMIT);
        }
        lost
    }
}

/// Why a message cannot travel.
fn too_big(what: &str, len: usize, ops: &MpiOps) -> String {
    format!(
        "{what} would take {len} bytes in one MPI message, above the transport's limit of {} \
         bytes (MPI counts are ints): use smaller arguments or results, or a smaller batch_size",
        ops.max_message
    )
}

/// The worker number of a batch that failed before it reached a rank.
pub const NO_RANK: usize = usize::MAX;

/// Fails a batch that never reached a rank.
fn fail(batch: &Batch, link: &CallLink, message: &str) {
    link.abort.store(true, Ordering::Relaxed);
    let failure = TaskFailure::Spawn(message.to_owned());
    let _ = link
        .reply
        .send(BatchOutcome::failed(batch, NO_RANK, batch.first, failure));
}

/// Batch and outcome messages end with two words (sequence number, then the timeout or the worker
/// pid): a trailer, so that the encoded body is never copied to make room for a header.
fn append_trailer(message: &mut Vec<u8>, seq: u64, word: u64) {
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&word.to_ne_bytes());
}

/// The body, sequence number and second word of a message [`append_trailer`] finished.
fn split_trailer(message: &[u8]) -> Option<(&[u8], u64, u64)> {
    let (body, trailer) = message.split_at_checked(message.len().checked_sub(16)?)?;
    let seq = u64::from_ne_bytes(trailer[..8].try_into().ok()?);
    let word = u64::from_ne_bytes(trailer[8..].try_into().ok()?);
    Some((body, seq, word))
}

fn rank_of(slot: usize) -> c_int {
    (slot + 1) as c_int
}

fn slot_of(rank: c_int, slots: usize) -> Option<usize> {
    usize::try_from(rank)
        .ok()
        .and_then(|r| r.checked_sub(1))
        .filter(|&s| s < slots)
}

// ---------------------------------------------------------------------------------------------
// Worker ranks

/// A worker rank: reports its registry, then runs rank 0's batches until told to stop. Returns
/// the rank's exit status.
pub fn serve(ops: MpiOps) -> c_int {
    let mut hello = crate::registry::fingerprint().to_ne_bytes().to_vec();
    hello.extend_from_slice(crate::registry::names().join("\n").as_bytes());
    if ops.send_and_wait(0, TAG_HELLO, hello, HELLO_LIMIT).is_err() {
        return 2;
    }
    // One forked child, kept across batches and calls: the rank survives whatever a task does.
    let stack_size = crate::config::default_stack_size();
    let Ok(pool) = ProcessPool::new(1, true, StartMethod::Fork, stack_size) else {
        return 2;
    };
    let mut worker = WorkerRank {
        ops,
        pool,
        functions: crate::registry::functions(),
        batches: VecDeque::new(),
        sends: Vec::new(),
        last_sent: Instant::now(),
        buf: Vec::new(),
    };
    let status = worker.serve().unwrap_or(2);
    // The outcomes of the last batches are on their way; let them leave before the pool goes.
    let mut backoff = Backoff::default();
    while !worker.sends.is_empty() && worker.ops.complete(&mut worker.sends).is_ok() {
        backoff.pause();
    }
    status
}

/// A batch handed to the rank's local pool, whose outcome goes back to rank 0.
struct LocalBatch {
    seq: u64,
    abort: Arc<std::sync::atomic::AtomicBool>,
    /// Raised with `abort` when rank 0's call was abandoned: the running task may finish.
    drain: Arc<AtomicBool>,
    outcome: Receiver<BatchOutcome>,
}

/// A worker rank's state.
struct WorkerRank {
    ops: MpiOps,
    pool: ProcessPool,
    functions: Vec<crate::task::TaskFn>,
    /// In the pool, oldest first (its one worker runs them in this order).
    batches: VecDeque<LocalBatch>,
    sends: Vec<PendingSend>,
    /// When this rank last sent rank 0 anything (the heartbeat's clock).
    last_sent: Instant,
    buf: Vec<u8>,
}

impl WorkerRank {
    /// The loop: takes messages, hands batches to the pool, returns outcomes in order, says it is
    /// alive while it has work. `Err` when MPI fails.
    fn serve(&mut self) -> Result<c_int> {
        let mut stopping: Option<c_int> = None;
        let mut backoff = Backoff::default();
        loop {
            let mut progressed = self.ops.complete(&mut self.sends)?;
            while let Some((source, tag, len)) = self.ops.probe()? {
                progressed = true;
                let mut buf = std::mem::take(&mut self.buf);
                self.ops.receive(source, tag, len, &mut buf)?;
                match tag {
                    TAG_BATCH => self.start(&buf)?,
                    TAG_CANCEL => {
                        let seq = buf
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_ne_bytes);
                        let drain = buf.get(8) == Some(&1);
                        for local in &self.batches {
                            if Some(local.seq) == seq {
                                if drain {
                                    local.drain.store(true, Ordering::Relaxed);
                                }
                                local.abort.store(true, Ordering::Release);
                            }
                        }
                    }
                    TAG_STOP => {
                        // Refused at the handshake: status 2; a rank of the job was lost: 3
                        // (leave without MPI_Finalize). What still runs is cancelled.
                        stopping = Some(match (buf.first(), buf.get(1)) {
                            (Some(1), _) => 2,
                            (_, Some(1)) => 3,
                            _ => 0,
                        });
                        for local in &self.batches {
                            local.abort.store(true, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
                self.buf = buf;
            }
            while let Some(front) = self.batches.front() {
                match front.outcome.try_recv() {
                    Ok(outcome) => {
                        let seq = front.seq;
                        self.batches.pop_front();
                        self.send_outcome(seq, &outcome)?;
                        progressed = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        return Err(Error::new(ErrorKind::Io, "the local pool went away"));
                    }
                }
            }
            if let Some(status) = stopping
                && self.batches.is_empty()
            {
                return Ok(status);
            }
            if !self.batches.is_empty() && self.last_sent.elapsed() >= HEARTBEAT {
                self.sends
                    .push(self.ops.start_send(0, TAG_ALIVE, Vec::new())?);
                self.last_sent = Instant::now();
            }
            if progressed {
                backoff.reset();
                continue;
            }
            let wait = backoff.next();
            match self.batches.front() {
                // Wake at once for the outcome; look at MPI again after `wait`.
                Some(front) if !wait.is_zero() => match front.outcome.recv_timeout(wait) {
                    Ok(outcome) => {
                        let seq = front.seq;
                        self.batches.pop_front();
                        self.send_outcome(seq, &outcome)?;
                        backoff.reset();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(Error::new(ErrorKind::Io, "the local pool went away"));
                    }
                },
                _ => backoff.pause(),
            }
        }
    }

    /// Decodes a batch message and hands the batch to the local pool.
    fn start(&mut self, message: &[u8]) -> Result<()> {
        let malformed = || Error::new(ErrorKind::Io, "a malformed batch message from rank 0");
        let (body, seq, timeout) = split_trailer(message).ok_or_else(malformed)?;
        let (reply, outcome) = unbounded();
        let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        // SAFETY: with a registry, the batch's callbacks are indices into this process's
        // functions.
        match unsafe { decode_batch(body, Some(&self.functions)) } {
            Ok(decoded) => {
                let mut batch = decoded.batch;
                batch.dispatched_at = Some(Instant::now());
                let link = CallLink {
                    reply,
                    abort: Arc::clone(&abort),
                    drain: Arc::clone(&drain),
                    timeout: (timeout != 0).then(|| Duration::from_nanos(timeout)),
                    collect: decoded.flags.collect,
                    access: decoded.flags.access,
                    call: decoded.flags.call,
                    results_spill: None,
                };
                self.pool.dispatch(batch, &link);
            }
            Err(error) => {
                // The batch's first task index and size lead its encoding.
                let word = |at: usize| {
                    body.get(at..at + 8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_ne_bytes) as usize
                };
                let first = word(0);
                let failure = TaskFailure::Spawn(format!("cannot decode the batch: {error}"));
                let _ = reply.send(BatchOutcome {
                    first,
                    size: word(8),
                    data: Vec::new(),
                    ends: Vec::new(),
                    failure: Some((first, failure)),
                    errors: Vec::new(),
                    mapped: Vec::new(),
                    seconds: 0.0,
                    worker: 0,
                    pid: 0,
                });
            }
        }
        self.batches.push_back(LocalBatch {
            seq,
            abort,
            drain,
            outcome,
        });
        Ok(())
    }

    /// Starts sending an outcome to rank 0 (rank 0 keeps receiving while it sends, so this
    /// completes unless rank 0 is gone, and then the MPI runtime ends the job).
    fn send_outcome(&mut self, seq: u64, outcome: &BatchOutcome) -> Result<()> {
        let mut message = Vec::new();
        encode_outcome(outcome, &[], &mut message);
        if message.len() > self.ops.max_message {
            // Sent instead: the batch failed, at its first task, saying why.
            let why = too_big("the results of this batch", message.len(), &self.ops);
            let failure = TaskFailure::Spawn(why);
            let failed = BatchOutcome {
                first: outcome.first,
                size: outcome.size,
                data: Vec::new(),
                ends: Vec::new(),
                failure: Some((outcome.first, failure)),
                errors: Vec::new(),
                mapped: Vec::new(),
                seconds: 0.0,
                worker: 0,
                pid: outcome.pid,
            };
            encode_outcome(&failed, &[], &mut message);
        }
        append_trailer(&mut message, seq, u64::from(outcome.pid));
        self.sends
            .push(self.ops.start_send(0, TAG_OUTCOME, message)?);
        self.last_sent = Instant::now();
        Ok(())
    }
}
