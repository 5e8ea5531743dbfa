//! A worker rank. Before anything else it reports its registry's fingerprint, and rank 0 checks
//! every rank against its own. A rank runs each batch through a local one-worker process pool (a
//! child kept across batches: forked, or spawned from the program's executable when the program
//! called `pj_worker_main_if_requested` first): a task that crashes, exits or overruns its timeout kills
//! that child, not the rank, so it is reported (naming the rank and the task) instead of ending
//! the MPI job; on_error=collect retries the rest of the batch there, as on the process backend.
//!
//! A rank whose own MPI operation fails (or in whose loop pj panics) stops serving: what MPI left
//! half done cannot be trusted. Before it leaves it tells rank 0 why (`TAG_LEFT`, best effort),
//! so that rank 0 fails that rank's batches at once, naming the error, instead of waiting out the
//! silence limit; rank 0 gives it no more work and does not tell it to stop.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError, unbounded};

use super::ops::{MpiOps, PendingSend, Reassembly};
use super::{
    HEARTBEAT, HELLO_LIMIT, LEFT_LIMIT, RESULTS_ABOVE, TAG_ALIVE, TAG_ARGS, TAG_BATCH, TAG_CANCEL,
    TAG_HELLO, TAG_LARGE, TAG_LEFT, TAG_OUTCOME, TAG_STOP, TAKE_ABOVE, finish_message,
    split_message, take_payload,
};
use crate::backend::staging::next_spill_file_id;
use crate::backend::wire::{decode_batch_landed, decode_batch_parts, encode_outcome_meta};
use crate::backend::{CallFiles, CallLink, ProcessPool};
use crate::config::{Recycling, StartMethod};
use crate::error::{Error, ErrorKind, Result, panic_message};
use crate::memmap::folder::resolve_temp_folder;
use crate::memmap::{BackingFile, MapAccess, Mapping};
use crate::spin::Backoff;
use crate::task::KEPT_BYTES;
use crate::task::{BatchOutcome, TaskFailure, WorkerId};

/// A worker rank: reports its registry, then runs rank 0's batches until told to stop. Returns
/// the rank's exit status.
pub fn serve(ops: MpiOps) -> c_int {
    let mut hello = crate::registry::fingerprint().to_ne_bytes().to_vec();
    hello.extend_from_slice(crate::registry::names().join("\n").as_bytes());
    if ops.send_and_wait(0, TAG_HELLO, hello, HELLO_LIMIT).is_err() {
        return 2;
    }
    // One child, kept across batches and calls: the rank survives whatever a task does. Forked,
    // unless the program can be its own worker (it called pj_worker_main_if_requested before
    // pj_mpi_main, as a Go program does: Go code cannot run in a forked child): then spawned.
    // The caller's recycling options do not reach it (documented: MPI ignores them).
    let stack_size = crate::config::default_stack_size();
    let start_method = if crate::backend::spawn::can_spawn_itself() {
        StartMethod::Spawn
    } else {
        StartMethod::Fork
    };
    let Ok(pool) = ProcessPool::new(1, true, start_method, stack_size, Recycling::NEVER) else {
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
        parts: Reassembly::default(),
        meta: Vec::new(),
        files: CallFiles::results_only(RESULTS_ABOVE),
        folder: resolve_temp_folder(None).path,
        landings: Vec::new(),
        pending: None,
    };
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.serve()));
    let (status, left) = match served {
        Ok(Ok(status)) => (status, None),
        Ok(Err(error)) => (2, Some(error.to_string())),
        Err(payload) => (
            4,
            Some(format!("pj panicked: {}", panic_message(&*payload))),
        ),
    };
    if let Some(why) = left {
        // Best effort: when this fails too, rank 0 gives the rank up for its silence.
        let ops = worker.ops;
        let _ = std::panic::catch_unwind(move || {
            ops.send_and_wait(0, TAG_LEFT, why.into_bytes(), LEFT_LIMIT)
        });
    }
    // The outcomes of the last batches are on their way; let them leave before the pool goes.
    let mut backoff = Backoff::default();
    while !worker.sends.is_empty() && worker.ops.complete(&mut worker.sends).is_ok() {
        MpiOps::pause(&worker.sends, &mut backoff);
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
    /// The landing file holding its message, busy until its outcome comes.
    landing: Option<u64>,
}

/// A file a worker rank receives large batch messages into ([`WorkerRank::land`]): its spill
/// file id and descriptor (published to the local pool's calls) and the rank's mapping of it.
struct Landing {
    id: u64,
    fd: Arc<std::os::fd::OwnedFd>,
    map: Mapping,
    /// A local batch in flight refers to it.
    busy: bool,
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
    /// Split batches being received.
    parts: Reassembly,
    /// Scratch for an outcome's encoding but its result bytes, reused.
    meta: Vec<u8>,
    /// What the local pool's batches share: results above [`RESULTS_ABOVE`] come back in
    /// result slabs, which this rank sends to rank 0 from where they lie.
    files: Arc<CallFiles>,
    /// Where landing files are made (the temp folder resolved from the environment).
    folder: std::path::PathBuf,
    /// The files large arguments are received into, at most [`DEPTH`].
    landings: Vec<Landing>,
    /// Arguments that came apart ([`TAG_ARGS`]), for the batch message that follows them.
    pending: Option<Pending>,
}

/// A batch's arguments received apart, waiting for the batch.
enum Pending {
    /// The first `len` bytes of landing file `id`.
    Landed { id: u64, len: usize },
    /// In memory.
    Inline(Vec<u8>),
}

/// Arguments sent apart of at least this many bytes are received into a landing file.
const LAND_ABOVE: usize = 1 << 20;

/// At most this many landing files: the batches rank 0 keeps in flight per rank.
const DEPTH: usize = 2;

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
                // Large arguments land in a file the child maps (an unsplit message only).
                if tag == TAG_ARGS
                    && source == 0
                    && len >= LAND_ABOVE
                    && !self.parts.continues(source)
                    && self.land(len)?
                {
                    continue;
                }
                let mut buf = std::mem::take(&mut self.buf);
                let whole = self
                    .parts
                    .receive(&self.ops, (source, tag, len), &mut buf)?;
                match whole.unwrap_or(0) {
                    TAG_BATCH => self.start(&mut buf)?,
                    // Arguments that could not land: they wait for their batch in memory.
                    TAG_ARGS => self.pending = Some(Pending::Inline(std::mem::take(&mut buf))),
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
                        if let Some(id) = self.batches.pop_front().and_then(|b| b.landing) {
                            self.landed(id);
                        }
                        self.send_outcome(seq, outcome)?;
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
                    .extend(self.ops.start_send(0, TAG_ALIVE, Vec::new())?);
                self.last_sent = Instant::now();
            }
            if progressed {
                backoff.reset();
                continue;
            }
            if MpiOps::transferring(&self.sends) {
                // An outcome in flight moves only while this thread calls into MPI: no sleep.
                std::thread::yield_now();
                continue;
            }
            let wait = backoff.next();
            match self.batches.front() {
                // Wake at once for the outcome; look at MPI again after `wait`.
                Some(front) if !wait.is_zero() => match front.outcome.recv_timeout(wait) {
                    Ok(outcome) => {
                        let seq = front.seq;
                        if let Some(id) = self.batches.pop_front().and_then(|b| b.landing) {
                            self.landed(id);
                        }
                        self.send_outcome(seq, outcome)?;
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

    /// Decodes a batch message and hands the batch to the local pool. Large argument bytes
    /// become the batch's without a copy (`message` is then left empty).
    fn start(&mut self, message: &mut Vec<u8>) -> Result<()> {
        let malformed = || Error::new(ErrorKind::Io, "a malformed batch message from rank 0");
        let (args_len, meta_len, seq, timeout) = split_message(message).ok_or_else(malformed)?;
        let (args, meta) = take_payload(message, args_len, meta_len)?;
        let (decoded, landing) = match self.pending.take() {
            // The batch's arguments came apart, just before it.
            Some(Pending::Landed { id, len }) => {
                let Some(landing) = self.landings.iter().find(|l| l.id == id) else {
                    return Err(malformed());
                };
                // SAFETY: the `len` bytes received into the landing file, which stay mapped and
                // unchanged while the batch runs (it is busy until its outcome comes).
                let args = unsafe { std::slice::from_raw_parts(landing.map.as_ptr(), len) };
                // SAFETY: with a registry, the batch's callbacks are indices into this
                // process's functions.
                let decoded = unsafe {
                    decode_batch_landed(&meta, args, id, TAKE_ABOVE, Some(&self.functions))
                };
                (decoded, Some(id))
            }
            // SAFETY: as above.
            Some(Pending::Inline(args)) => (
                unsafe { decode_batch_parts(&meta, args, Some(&self.functions)) },
                None,
            ),
            // SAFETY: as above.
            None => (
                unsafe { decode_batch_parts(&meta, args, Some(&self.functions)) },
                None,
            ),
        };
        self.run_local(decoded, &meta, seq, timeout, landing);
        Ok(())
    }

    /// Receives a batch's arguments (`len` bytes, announced by iprobe: [`TAG_ARGS`]) into a
    /// landing file, when one can be had: they wait there for their batch, whose large arguments
    /// the child then maps (the spill files of the local pool's calls) instead of receiving them
    /// over the socket. False when no landing file could be had: the caller receives the message
    /// as any other.
    fn land(&mut self, len: usize) -> Result<bool> {
        let Some(at) = self.landing_for(len) else {
            return Ok(false);
        };
        let (id, start) = (self.landings[at].id, self.landings[at].map.as_ptr());
        // SAFETY: a writable shared mapping of at least `len` bytes (`landing_for`), which no
        // one else reads or writes now: it is not busy, so no local batch refers to it.
        let dst = unsafe { std::slice::from_raw_parts_mut(start, len) };
        self.ops.receive_into(0, TAG_ARGS, dst)?;
        self.landings[at].busy = true;
        self.pending = Some(Pending::Landed { id, len });
        Ok(true)
    }

    /// A free landing file of at least `len` bytes (its index): the smallest free one that holds
    /// them, else a new one (replacing the smallest free one when [`DEPTH`] exist). `None` when
    /// none is free or a file cannot be made.
    fn landing_for(&mut self, len: usize) -> Option<usize> {
        let fits = (0..self.landings.len())
            .filter(|&at| !self.landings[at].busy && self.landings[at].map.len() >= len)
            .min_by_key(|&at| self.landings[at].map.len());
        if fits.is_some() {
            return fits;
        }
        if self.landings.len() >= DEPTH {
            let free = (0..self.landings.len())
                .filter(|&at| !self.landings[at].busy)
                .min_by_key(|&at| self.landings[at].map.len())?;
            self.landings.swap_remove(free);
        }
        let page = rustix::param::page_size();
        let size = len.checked_add(page - 1)? / page * page;
        // Free smaller files make room for a larger one within the bound (see `landed`).
        while self.landings_held() + size > self.landing_bound() {
            let smaller = (0..self.landings.len())
                .filter(|&at| !self.landings[at].busy && self.landings[at].map.len() < size)
                .min_by_key(|&at| self.landings[at].map.len());
            let Some(at) = smaller else { break };
            self.landings.swap_remove(at);
        }
        let file = BackingFile::create(&self.folder, size as u64).ok()?;
        let map = Mapping::map_whole(file.fd(), MapAccess::Shared).ok()?;
        // The child maps the file itself; a copy of this writable mapping is not its business.
        map.dont_fork().ok()?;
        self.landings.push(Landing {
            id: next_spill_file_id(),
            fd: Arc::new(file.into_fd()),
            map,
            busy: false,
        });
        self.publish_landings();
        Some(self.landings.len() - 1)
    }

    /// The bytes of the landing files.
    fn landings_held(&self) -> usize {
        self.landings.iter().map(|l| l.map.len()).sum()
    }

    /// What the landing files may hold once free: what an executor keeps ([`KEPT_BYTES`]), plus
    /// a MiB per file for the messages' other parts.
    fn landing_bound(&self) -> usize {
        KEPT_BYTES + self.landings.len().max(1) * (1 << 20)
    }

    /// Publishes the landing files to the local pool's calls (a new spill epoch).
    fn publish_landings(&self) {
        let files: Vec<_> = self
            .landings
            .iter()
            .map(|l| (l.id, Arc::clone(&l.fd)))
            .collect();
        self.files.publish(&files);
    }

    /// The local batch that used landing file `id` is over: the file is free again, and goes
    /// when the landing files hold more than an executor keeps ([`KEPT_BYTES`], plus a page per
    /// file for the messages' other parts).
    fn landed(&mut self, id: u64) {
        let Some(at) = self.landings.iter().position(|l| l.id == id) else {
            return;
        };
        self.landings[at].busy = false;
        if self.landings_held() > self.landing_bound() {
            self.landings.swap_remove(at);
            self.publish_landings();
        }
    }

    /// Hands a decoded batch (`meta`: its encoding, for the failure of one that could not be
    /// decoded) to the local pool; `landing`: the landing file holding its message.
    fn run_local(
        &mut self,
        decoded: std::io::Result<crate::backend::wire::DecodedBatch>,
        meta: &[u8],
        seq: u64,
        timeout: u64,
        landing: Option<u64>,
    ) {
        let (reply, outcome) = unbounded();
        let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        match decoded {
            Ok(decoded) => {
                let mut batch = decoded.batch;
                batch.dispatched_at = Some(Instant::now());
                let link = CallLink {
                    reply,
                    abort: Arc::clone(&abort),
                    drain: Arc::clone(&drain),
                    timeout: (timeout != 0).then(|| Duration::from_nanos(timeout)),
                    collect: decoded.flags.settings.collect,
                    call: decoded.flags.call,
                    // Large arguments in landing files, large results back in result slabs.
                    files: Some(Arc::clone(&self.files)),
                };
                self.pool.dispatch(batch, &link);
            }
            Err(error) => {
                // The batch's first task index and size lead its encoding.
                let word = |at: usize| {
                    meta.get(at..at + 8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_ne_bytes) as usize
                };
                let first = word(0);
                let failure = TaskFailure::Io(format!("cannot decode the batch: {error}"));
                let _ = reply.send(BatchOutcome {
                    first,
                    size: word(8),
                    data: Default::default(),
                    ends: Vec::new(),
                    failure: Some((first, failure)),
                    errors: Vec::new(),
                    large: Vec::new(),
                    seconds: 0.0,
                    worker: WorkerId::Process { slot: 0, pid: 0 },
                });
            }
        }
        self.batches.push_back(LocalBatch {
            seq,
            abort,
            drain,
            outcome,
            landing,
        });
    }

    /// Starts sending an outcome to rank 0 (rank 0 keeps receiving while it sends, so this
    /// completes unless rank 0 is gone, and then the MPI runtime ends the job).
    /// Large result bytes become the message without a copy; results in slabs follow it, one
    /// message each ([`TAG_LARGE`]), sent from the memory the child wrote them into.
    fn send_outcome(&mut self, seq: u64, mut outcome: BatchOutcome) -> Result<()> {
        let mut meta = std::mem::take(&mut self.meta);
        let large = std::mem::take(&mut outcome.large);
        let listed: Vec<_> = large
            .iter()
            .map(|(index, output)| (*index, output.bytes().len(), 0))
            .collect();
        encode_outcome_meta(&outcome, &listed, &mut meta);
        let data = std::mem::take(&mut outcome.data);
        let mut message = if data.len() >= TAKE_ABOVE {
            data.into_vec()
        } else {
            // Room for the whole message at once (finish_message then does not reallocate).
            let len = data.len() + meta.len() + 24;
            let mut message = Vec::new();
            message.try_reserve_exact(len).map_err(|_| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot allocate {len} bytes for an outcome's message"),
                )
            })?;
            message.extend_from_slice(&data);
            message
        };
        let sent = finish_message(&mut message, &meta, seq, u64::from(outcome.worker.pid()))
            .and_then(|()| self.ops.start_send(0, TAG_OUTCOME, message));
        self.meta = meta;
        self.sends.extend(sent?);
        for (_, output) in large {
            // The slab goes back to the local pool once MPI no longer reads it.
            let sent = self.ops.start_send_from(0, TAG_LARGE, Arc::new(output))?;
            self.sends.extend(sent);
        }
        self.last_sent = Instant::now();
        Ok(())
    }
}
