//! Rank 0's dispatcher thread, which owns every MPI exchange. It sends each batch to the least
//! busy worker rank (up to two batches in flight per rank, so that a rank finds its next batch
//! waiting when it finishes one), encoded as the spawn start method encodes it (registry indices,
//! argument bytes), and hands each outcome to its call. Sends are non-blocking and the dispatcher
//! keeps receiving while they complete, so large payloads in both directions cannot deadlock.
//! When a call is aborted (a task failed, a timeout, pj_parallel_cancel), the ranks holding its
//! batches are told to cancel them (their running tasks are killed); when it is abandoned
//! (pj_parallel_free), to let running tasks finish, as the process backend does; either way those
//! tasks see pj_out_cancelled. A rank silent for 10 s while it has work is given up (heartbeats
//! come every second); a rank that says it stopped serving (`TAG_LEFT`: an error of its own) has
//! its batches failed at once and gets no more work. At detach every other rank is told to leave;
//! one that cannot be told (its stop message failed twice) counts as given up.
//!
//! A panic in pj's own code on this thread (a bug) is caught where it would lose a call's batches
//! or the ranks' way out ([`guarded`]): in sending a batch it fails that batch; in a round of
//! receiving it ends the backend as an MPI error does (every batch in flight fails with the
//! panic's text); at the handshake it fails every call; and at detach the ranks are still told to
//! leave.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::ops::{MpiOps, PendingSend, Reassembly};
use super::rank0::{Gate, Order, Readiness, fail};
use super::{
    ARGS_APART, HELLO_LIMIT, SILENCE_LIMIT, TAG_ARGS, TAG_BATCH, TAG_CANCEL, TAG_HELLO, TAG_LARGE,
    TAG_LEFT, TAG_OUTCOME, TAG_STOP, finish_message, split_message, take_payload,
};
use crate::backend::CallLink;
use crate::backend::wire::{SlabResultRef, decode_outcome_parts, encode_batch_meta};
use crate::error::{Error, ErrorKind, Result, panic_message};
use crate::spin::Backoff;
use crate::task::{Batch, BatchOutcome, BufferPool, TaskFailure, WorkerId};

/// How long stopping waits for cancelled batches and the final messages.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A batch on a worker rank.
struct InFlight {
    seq: u64,
    batch: Batch,
    link: CallLink,
    cancelled: bool,
    /// Its outcome came, listing results in slabs: it waits for them ([`TAG_LARGE`]).
    waiting: Option<Waiting>,
}

/// A batch's arguments sent apart ([`TAG_ARGS`]): given back to the executor's buffers when MPI
/// no longer reads them.
struct PooledArgs {
    bytes: Vec<u8>,
    pool: Option<BufferPool>,
}

impl AsRef<[u8]> for PooledArgs {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PooledArgs {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give(std::mem::take(&mut self.bytes));
        }
    }
}

/// An outcome whose results in slabs are on their way, one message each, in the order listed.
struct Waiting {
    outcome: BatchOutcome,
    listed: Vec<SlabResultRef>,
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
    /// Stopped serving on an error of its own (it said so): not told to stop either.
    left: bool,
}

/// Rank 0's dispatcher state.
pub(super) struct Dispatcher {
    ops: MpiOps,
    /// By worker rank - 1.
    ranks: Vec<Rank>,
    sends: Vec<PendingSend>,
    next_seq: u64,
    buf: Vec<u8>,
    /// Split outcomes being received.
    parts: Reassembly,
    /// The error that ended the backend ([`Dispatcher::fail_all`]), told to every later call.
    ended: Option<String>,
    /// Scratch for a batch's encoding but its argument bytes, reused.
    meta: Vec<u8>,
}

impl Dispatcher {
    pub(super) fn new(ops: MpiOps) -> Self {
        let ranks = (ops.size - 1).max(0) as usize;
        Dispatcher {
            ops,
            ranks: (0..ranks)
                .map(|_| Rank {
                    batches: VecDeque::new(),
                    heard: Instant::now(),
                    usable: false,
                    lost: false,
                    left: false,
                })
                .collect(),
            sends: Vec::new(),
            next_seq: 1,
            buf: Vec::new(),
            parts: Reassembly::default(),
            ended: None,
            meta: Vec::new(),
        }
    }

    /// The dispatcher's life: the registry check, then batches until `stopping`; returns how many
    /// ranks it gave up.
    pub(super) fn run(
        mut self,
        queue: &Receiver<Order>,
        gate: &Gate,
        ready: &Readiness,
        stopping: &AtomicBool,
    ) -> usize {
        let verdict = guarded(|| Ok(self.handshake())).unwrap_or_else(|e| Err(e.to_string()));
        {
            let (lock, changed) = &**ready;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
            changed.notify_all();
        }
        let stop = || stopping.load(Ordering::Acquire);
        let mut backoff = Backoff::default();
        while !stop() {
            let mut progressed = match guarded(|| self.poll()) {
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
                    Ok(Order::Run { batch, link }) => match &self.ended {
                        Some(error) => fail(
                            batch,
                            &link,
                            &format!(
                                "no MPI rank can run tasks: the MPI backend ended after an \
                                 error on rank 0 ({error})"
                            ),
                        ),
                        None => fail(batch, &link, "no MPI rank can run tasks"),
                    },
                    Ok(Order::Wake) => {}
                    Err(_) => break,
                }
                continue;
            }
            if progressed {
                backoff.reset();
                continue;
            }
            if MpiOps::transferring(&self.sends) {
                // A send in flight moves only while this thread calls into MPI: no sleep.
                std::thread::yield_now();
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
        // Batches still queued never reach a rank; their calls learn why. Closed first, under
        // the gate: a batch queued from now on is failed by its caller instead.
        let mut open = gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *open = false;
        while let Ok(order) = queue.try_recv() {
            if let Order::Run { batch, link } = order {
                fail(batch, &link, "the MPI backend was detached (pj_mpi_detach)");
            }
        }
        drop(open);
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
                    match self.parts.receive(&self.ops, (source, tag, len), &mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => continue,
                        Err(error) => return Err(error.to_string()),
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
            let outcome = BatchOutcome::skipped(&batch, WorkerId::NoRank);
            link.send(batch, outcome);
            return;
        }
        let Some(slot) = self.free_rank() else {
            unreachable!("start is only called when a rank has room")
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut meta = std::mem::take(&mut self.meta);
        let mut batch = batch;
        let sent = guarded(|| {
            // MPI ranks get every argument and result in their messages: the link has no files.
            let flags = link.run_flags();
            encode_batch_meta(&batch, flags, &[], &[], &[], true, &mut meta)
                .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
            let mut sends = Vec::new();
            if batch.parts().1.len() >= ARGS_APART {
                // Large arguments go first, in a message of their own sent from the batch's
                // buffer (no copy, no fresh memory), which goes back to the executor's buffers
                // once MPI is done with it; the batch message then carries none.
                let args = PooledArgs {
                    bytes: batch.take_args(),
                    pool: batch.pool().cloned(),
                };
                sends = self
                    .ops
                    .start_send_from(rank_of(slot), TAG_ARGS, Arc::new(args))?;
            }
            let args = batch.parts().1;
            // Room for the whole message at once (finish_message then does not reallocate).
            let len = args.len() + meta.len() + 24;
            let mut message = Vec::new();
            message.try_reserve_exact(len).map_err(|_| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot allocate {len} bytes for a batch's message"),
                )
            })?;
            message.extend_from_slice(args);
            let timeout = link.timeout.map_or(0, |t| {
                u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
            });
            finish_message(&mut message, &meta, seq, timeout)?;
            sends.extend(self.ops.start_send(rank_of(slot), TAG_BATCH, message)?);
            Ok(sends)
        });
        self.meta = meta;
        match sent {
            Ok(sends) => {
                self.sends.extend(sends);
                let rank = &mut self.ranks[slot];
                if rank.batches.is_empty() {
                    // Its silence while idle does not count.
                    rank.heard = Instant::now();
                }
                rank.batches.push_back(InFlight {
                    waiting: None,
                    seq,
                    batch,
                    link,
                    cancelled: false,
                });
            }
            Err(error) => fail(batch, &link, &error.to_string()),
        }
    }

    /// One round: completes sends, receives outcomes, cancels aborted batches. Whether anything
    /// happened.
    fn poll(&mut self) -> Result<bool> {
        let mut progressed = self.ops.complete(&mut self.sends)?;
        while let Some((source, tag, len)) = self.ops.probe()? {
            progressed = true;
            // A result of its own is received into memory the executor's earlier results used
            // (pages already mapped), when it has some to give: it becomes the result.
            let pooled = match tag {
                TAG_LARGE => slot_of(source, self.ranks.len()).and_then(|slot| {
                    let waiting = self.ranks[slot]
                        .batches
                        .iter()
                        .find(|r| r.waiting.is_some());
                    waiting
                        .and_then(|r| r.batch.pool())
                        .map(BufferPool::take_received)
                }),
                _ => None,
            };
            let mut buf = match &pooled {
                Some(_) => pooled.unwrap_or_default(),
                None => std::mem::take(&mut self.buf),
            };
            let whole = self
                .parts
                .receive(&self.ops, (source, tag, len), &mut buf)?;
            if let Some(slot) = slot_of(source, self.ranks.len()) {
                self.ranks[slot].heard = Instant::now();
                match whole {
                    Some(TAG_OUTCOME) => self.finish(slot, &mut buf),
                    Some(TAG_LARGE) => self.large_result(slot, &mut buf),
                    Some(TAG_LEFT) => self.left(slot, &buf),
                    _ => {}
                }
            }
            if tag != TAG_LARGE {
                self.buf = buf;
            }
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
                    .extend(self.ops.start_send(rank_of(slot), TAG_CANCEL, cancel)?);
                progressed = true;
            }
        }
        Ok(progressed)
    }

    /// Hands the outcome in `message` (from the rank of `slot`) to its call.
    /// Large result bytes become the outcome's without a copy (`message` is then left empty).
    fn finish(&mut self, slot: usize, message: &mut Vec<u8>) {
        let Some((data_len, meta_len, seq, pid)) = split_message(message) else {
            return;
        };
        let batches = &mut self.ranks[slot].batches;
        let Some(at) = batches.iter().position(|r| r.seq == seq) else {
            return;
        };
        let Some(InFlight {
            batch,
            link,
            cancelled,
            ..
        }) = batches.remove(at)
        else {
            return;
        };
        let worker = WorkerId::Rank {
            rank: slot + 1,
            pid: pid as u32,
        };
        let decoded = take_payload(message, data_len, meta_len).and_then(|(data, meta)| {
            decode_outcome_parts(&meta, data.into(), worker)
                .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))
        });
        let outcome = match decoded {
            Ok((outcome, listed)) => {
                if outcome.failure.is_some() {
                    link.abort.store(true, Ordering::Relaxed);
                }
                if !listed.is_empty() {
                    // Its results in slabs follow, one message each: the batch waits for them,
                    // still the rank's (should the rank go, it fails as any batch in flight).
                    let waiting = Some(Waiting { outcome, listed });
                    batches.insert(
                        at,
                        InFlight {
                            seq,
                            batch,
                            link,
                            cancelled,
                            waiting,
                        },
                    );
                    return;
                }
                outcome
            }
            Err(error) => {
                link.abort.store(true, Ordering::Relaxed);
                BatchOutcome::failed(
                    &batch,
                    ran(slot),
                    batch.first,
                    TaskFailure::Io(format!("MPI rank {}: {error}", rank_of(slot))),
                )
            }
        };
        link.send(batch, outcome);
    }

    /// Adds the result in `message` (from the rank of `slot`: [`TAG_LARGE`]) to the outcome
    /// waiting for it, in the memory MPI received it into (`message` is left empty); hands the
    /// outcome to its call once it has every result it listed.
    fn large_result(&mut self, slot: usize, message: &mut Vec<u8>) {
        let batches = &mut self.ranks[slot].batches;
        let Some(at) = batches.iter().position(|r| r.waiting.is_some()) else {
            return;
        };
        let Some(waiting) = batches[at].waiting.as_mut() else {
            return;
        };
        let (index, len, _) = waiting.listed[waiting.outcome.large.len()];
        if message.len() != len {
            let Some(InFlight { batch, link, .. }) = batches.remove(at) else {
                return;
            };
            link.abort.store(true, Ordering::Relaxed);
            let failure = TaskFailure::Io(format!(
                "MPI rank {}: task {index}'s result has {} bytes, not {len}",
                rank_of(slot),
                message.len()
            ));
            let outcome = BatchOutcome::failed(&batch, ran(slot), index, failure);
            link.send(batch, outcome);
            return;
        }
        let bytes = std::mem::take(message);
        // Given back to the executor's pool when the caller frees its results.
        let bytes = match batches[at].batch.pool() {
            Some(pool) => pool.received(bytes),
            None => bytes.into(),
        };
        let Some(waiting) = batches[at].waiting.as_mut() else {
            return;
        };
        waiting
            .outcome
            .large
            .push((index, crate::task::LargeOutput::new(bytes)));
        if waiting.outcome.large.len() < waiting.listed.len() {
            return;
        }
        let Some(InFlight {
            batch,
            link,
            waiting: Some(Waiting { mut outcome, .. }),
            ..
        }) = batches.remove(at)
        else {
            return;
        };
        outcome.large.sort_unstable_by_key(|(index, _)| *index);
        link.send(batch, outcome);
    }

    /// The rank of `slot` stopped serving on an error of its own, whose text is `why`: its
    /// batches fail (PJ_STATUS_IO, each at its first task, naming the rank and the error) and it
    /// gets no more work.
    fn left(&mut self, slot: usize, why: &[u8]) {
        let rank = &mut self.ranks[slot];
        rank.usable = false;
        rank.left = true;
        // The outcome's worker names the rank.
        let message = format!("the rank stopped serving: {}", String::from_utf8_lossy(why));
        for InFlight { batch, link, .. } in rank.batches.drain(..) {
            link.abort.store(true, Ordering::Relaxed);
            let failure = TaskFailure::Io(message.clone());
            let outcome = BatchOutcome::failed(&batch, ran(slot), batch.first, failure);
            link.send(batch, outcome);
        }
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
                let outcome = BatchOutcome::failed(&batch, ran(slot), batch.first, failure);
                link.send(batch, outcome);
            }
        }
    }

    /// An MPI operation failed: every batch in flight fails with `message`, and no rank gets
    /// work any more (what MPI left half done cannot be trusted): later calls fail, saying why.
    fn fail_all(&mut self, message: &str) {
        self.ended.get_or_insert_with(|| message.to_owned());
        for rank in &mut self.ranks {
            for InFlight { batch, link, .. } in rank.batches.drain(..) {
                fail(batch, &link, message);
            }
            rank.usable = false;
        }
    }

    /// Cancels what runs, waits (bounded) for it, then tells every rank to leave; returns how many
    /// ranks were given up (for silence, or because they could not be told).
    fn stop(&mut self) -> usize {
        for running in self.ranks.iter().flat_map(|r| &r.batches) {
            running.link.abort.store(true, Ordering::Relaxed);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        let mut backoff = Backoff::default();
        while !self.idle() && Instant::now() < deadline {
            match guarded(|| self.poll()) {
                Ok(true) => backoff.reset(),
                Ok(false) => MpiOps::pause(&self.sends, &mut backoff),
                Err(_) => break,
            }
        }
        for (slot, rank) in self.ranks.iter_mut().enumerate() {
            for InFlight { batch, link, .. } in rank.batches.drain(..) {
                let outcome = BatchOutcome::skipped(&batch, ran(slot));
                link.send(batch, outcome);
            }
        }
        // Sends still pending are abandoned (their bytes are leaked: MPI may still read them).
        self.sends.clear();
        // A rank refused at the handshake learns it here, and ends with status 2; when a rank
        // was lost, every rank learns that MPI_Finalize would wait for it forever.
        let lost = self.ranks.iter().filter(|r| r.lost).count();
        // A stop message that fails is sent once more (a rank leaves at the first it gets); a
        // rank that could not be told serves on, and counts as given up.
        let mut untold = 0;
        for slot in (0..self.ranks.len()).filter(|&s| !self.ranks[s].lost && !self.ranks[s].left) {
            let stop = [u8::from(!self.ranks[slot].usable), u8::from(lost > 0)];
            let ops = &self.ops;
            let told = (0..2).any(|_| {
                guarded(|| ops.send_and_wait(rank_of(slot), TAG_STOP, stop.to_vec(), STOP_LIMIT))
                    .is_ok()
            });
            untold += usize::from(!told);
        }
        lost + untold
    }
}

/// Runs `f`, turning a panic in it into an error with the panic's text (see the module doc).
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "pj panicked in its MPI dispatcher: {}",
                panic_message(&*payload)
            ),
        ))
    })
}

/// The worker rank of `slot`, as an outcome names it (its process unknown).
fn ran(slot: usize) -> WorkerId {
    WorkerId::Rank {
        rank: slot + 1,
        pid: 0,
    }
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
