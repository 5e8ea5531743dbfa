//! The worker process's side: its first steps after fork (or exec), and the loop that reads
//! batches, runs them with the very same `run_batch` as a thread would, and writes outcomes.
//!
//! No orphans. Workers lead their own process group (see the `child` module: the parent kills it
//! with the worker, so that what a task started dies too), ask for SIGKILL when their proxy
//! thread (hence the parent) dies (PR_SET_PDEATHSIG, re-checked against the parent pid right after
//! fork), ignore SIGINT (the parent decides), SIGTTIN and SIGTTOU (outside the terminal's
//! foreground group), close the parent's ends of every pj socket they inherited, and leave only
//! through `_exit`. pj changes no signal disposition of the parent.
//!
//! Fork safety. Between fork and the worker loop the child runs only async-signal-safe calls
//! (setpgid, prctl, getppid, signal, sigaltstack, sigaction, close). The loop itself allocates:
//! glibc's fork makes malloc and stdio usable in the child. A task callback must not take locks
//! that another parent thread may hold at the time of the fork (documented in the header).
//!
//! prctl and getppid are rustix's (raw system calls, no allocation). Hand-written on libc:
//! `signal` (rustix sets signal actions only in its unstable `runtime` module), and `_exit`
//! ([`leave`], likewise: std's `exit` would run the parent image's atexit handlers).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use rustix::process::{Pid, Signal, getppid, set_parent_process_death_signal};

use super::child::mark_as_worker;
use super::fds;
use super::page::SharedRunning;
use crate::backend::crash;
use crate::backend::slabs::WorkerSlabs;
use crate::backend::spill::SpillMaps;
use crate::backend::wire::{
    DecodedBatch, LIVENESS_PERIOD_MS, MAX_FDS_PER_FRAME, batch_span, decode_batch_parts,
    encode_outcome_meta, recv_parts, send_parts,
};
use crate::failpoint::{Injected, Stage, hit};
use crate::task::{BatchOutcome, RunContext, TaskFailure, TaskFn, WorkerId, run_batch};

/// The worker process: reads batches, runs them, writes outcomes, until the stream ends.
pub(super) fn worker_main(
    socket: BorrowedFd<'_>,
    running: &SharedRunning,
    parent_pid: Pid,
    slot: usize,
    level: usize,
) -> ! {
    tie_to_parent(parent_pid);
    // A worker that cannot start ends before its first batch (a panic must not unwind into the
    // parent's code, of which this is a copy).
    if catch_unwind(|| hit(Stage::WorkerStart)).map_or(true, |injected| injected.is_some()) {
        leave(1);
    }
    // Record the stack of a crash (async-signal-safe too: sigaltstack and sigaction).
    crash::install(running.crash());
    // Drop the inherited parent ends of every pj socket, so that their workers see EOF when due.
    fds::close_all_except(socket.as_raw_fd());
    leave(serve(socket, running, slot, level, None))
}

/// Ends the worker process at once with status `code` (async-signal-safe): `_exit` skips the
/// atexit handlers and stdio flushing, which belong to the parent's image (or, in a spawned
/// worker, to the caller's program).
pub(in crate::backend) fn leave(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it ends this process only.
    unsafe { libc::_exit(code) }
}

/// A worker's first step, forked or spawned (async-signal-safe): mark itself a worker, die with
/// the parent, and leave at once if it died before the request was in place; leave SIGINT to the
/// parent, which decides.
pub(in crate::backend) fn tie_to_parent(parent_pid: Pid) {
    // The workers this one's tasks start stay in its process group.
    mark_as_worker();
    tie_to(parent_pid);
}

/// [`tie_to_parent`] for the fork server, which is not a worker: the workers it forks lead their
/// own process groups, as the caller's own forks do.
pub(in crate::backend) fn tie_server_to_host(host_pid: Pid) {
    tie_to(host_pid);
}

fn tie_to(parent_pid: Pid) {
    // Cannot fail for a valid signal; the parent check below covers a parent already gone.
    let _ = set_parent_process_death_signal(Some(Signal::KILL));
    if getppid() != Some(parent_pid) {
        leave(1);
    }
    // SAFETY: signal is async-signal-safe; ignoring SIGINT affects this process only.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

/// The worker loop: reads batches, runs them, writes outcomes, until the stream ends; returns the
/// exit status. `functions`: for a spawned worker, the registry that batch callbacks index into
/// (a forked worker gets function addresses instead).
pub(in crate::backend) fn serve(
    socket: BorrowedFd<'_>,
    running: &SharedRunning,
    slot: usize,
    level: usize,
    functions: Option<&[TaskFn]>,
) -> i32 {
    crate::nesting::set_level(level);
    let served = catch_unwind(AssertUnwindSafe(|| {
        // In the shared page: the parent raises it when the call is aborted, so a running
        // callback sees it (pj_out_cancelled) and the batch stops before its next task.
        let abort = running.stop();
        // Frame parts: the batch's meta part in, the outcome's meta part out, and the argument
        // bytes, received into the memory of the previous batch's (the batch owns them while it
        // runs and gives them back).
        let (mut inbox, mut outbox) = (Vec::new(), Vec::new());
        let mut args = Vec::new();
        let mut received = Vec::new();
        let mut spill = SpillMaps::default();
        // Where outputs above max_nbytes are written: slabs the parent lends, or new ones.
        let mut slabs = WorkerSlabs::default();
        // The parent's death is PR_SET_PDEATHSIG's to notice; here only the stream's end counts.
        loop {
            let mut received_batch = recv_parts(
                socket,
                &mut inbox,
                &mut args,
                &mut received,
                LIVENESS_PERIOD_MS,
                &|| true,
            );
            // An error after the whole frame arrived is reported as the batch's failure.
            let mut readable = false;
            if matches!(received_batch, Ok(true))
                && let Some(injected) = hit(Stage::BatchReceive)
            {
                received_batch = Err(injected.io_error(Stage::BatchReceive));
                readable = true;
            }
            match received_batch {
                Ok(true) => {}
                Err(error) if readable || error.kind() == io::ErrorKind::OutOfMemory => {
                    // No room here for the batch's arguments (the frame was read past them),
                    // or the frame cannot be used: the batch fails with that, and the worker
                    // serves the next one.
                    let Ok((first, size)) = batch_span(&inbox) else {
                        return 0;
                    };
                    let failed = failed_outcome(first, size, slot, error.to_string());
                    encode_outcome_meta(&failed, &[], &mut outbox);
                    // Spill files that came with the frame cannot be filed without its
                    // arguments; the parent counts them as sent: this worker must go.
                    if send_parts(socket, &outbox, &[], &[]).is_err() || !received.is_empty() {
                        return 0;
                    }
                    continue;
                }
                Ok(false) | Err(_) => break,
            }
            // SAFETY: the frame was encoded by our parent, of which this process is a fork (its
            // addresses are valid here), or, for a spawned worker, carries registry indices.
            let Ok(DecodedBatch {
                batch,
                flags,
                attached,
                lent,
                results_folder,
            }) = (unsafe { decode_batch_parts(&inbox, std::mem::take(&mut args), functions) })
            else {
                return 3;
            };
            let slab_fds = lent.iter().filter(|slab| slab.with_fd).count();
            if attached.len() + slab_fds != received.len() {
                return 3;
            }
            let mut slab_fds = received.split_off(attached.len()).into_iter();
            let lent = lent
                .iter()
                .map(|slab| {
                    let fd = if slab.with_fd { slab_fds.next() } else { None };
                    (slab.id, slab.capacity, fd)
                })
                .collect();
            let folder = std::path::Path::new(std::ffi::OsStr::from_bytes(&results_folder));
            let above = usize::try_from(flags.results_above).unwrap_or(usize::MAX);
            slabs.begin(above, folder, MAX_FDS_PER_FRAME, lent);
            if flags.spill_epoch != spill.epoch {
                // New spill files: the previous epoch's files and mappings go, so their space is
                // freed once the parent drops them too. A kept worker keeps them across calls
                // of one epoch, mapped, so that the next call's arguments fault nothing in.
                spill = SpillMaps::for_epoch(flags.spill_epoch);
            }
            spill
                .files
                .extend(attached.into_iter().zip(received.drain(..)));
            let mapped = match hit(Stage::ArgMap) {
                Some(injected) => Err(crate::Error::new(
                    crate::ErrorKind::Io,
                    injected.io_error(Stage::ArgMap).to_string(),
                )),
                None => spill.map_batch(&batch, flags.access),
            };
            let spilled = match mapped {
                Ok(spilled) => spilled,
                Err(error) => {
                    // No task of the batch can run: the batch fails with why, and the worker
                    // serves the next one (the files stay filed for it).
                    let failed = failed_outcome(
                        batch.first,
                        batch.len(),
                        slot,
                        format!("cannot map a spilled argument: {}", error.message()),
                    );
                    spill.end_batch();
                    args = batch.into_args();
                    encode_outcome_meta(&failed, &[], &mut outbox);
                    if send_parts(socket, &outbox, &[], &[]).is_err() {
                        return 0;
                    }
                    continue;
                }
            };
            let ctx = RunContext {
                running: Some(running.get()),
                settings: flags.settings,
                spilled: &spilled,
                ..RunContext::new(abort, WorkerId::Process { slot, pid: 0 })
            };
            let sink =
                (above != usize::MAX).then_some(&mut slabs as &mut dyn crate::task::LargeSink);
            let mut outcome = run_batch(&batch, ctx, sink);
            drop(spilled);
            spill.end_batch();
            if let Some(injected) = hit(Stage::TaskCleanup) {
                // The batch's tasks ran, but what they leave behind may not be released: the
                // batch fails with that (its results are not trusted).
                let error = injected.io_error(Stage::TaskCleanup).to_string();
                outcome = failed_outcome(batch.first, batch.len(), slot, error);
                slabs.discard();
            }
            args = batch.into_args();
            if let Some(error) = slabs.error.take()
                && outcome.failure.is_none()
                && !flags.settings.collect
            {
                // A result could not get a slab (a bad or full temp folder) and went inline: the
                // batch fails with why, naming that task, as joblib's would when it cannot dump a
                // result (a task that failed anyway, say its output could not be allocated at
                // all, keeps its own failure; with on_error=collect the result is simply returned
                // inline).
                let index = first_inline_above(&outcome, above).unwrap_or(outcome.first);
                outcome.failure = Some((
                    index,
                    TaskFailure::Io(format!("cannot return a result through a file: {error}")),
                ));
            }
            let listed = slabs.listed();
            let attached = slabs.made_fds();
            // The result bytes go from the arena the tasks wrote them into.
            match hit(Stage::ResultEncode) {
                Some(Injected::Error) => {
                    let error = Injected::Error.io_error(Stage::ResultEncode).to_string();
                    let failed = failed_outcome(outcome.first, outcome.size, slot, error);
                    encode_outcome_meta(&failed, &[], &mut outbox);
                    if send_parts(socket, &outbox, &[], &[]).is_err() {
                        return 0;
                    }
                    continue;
                }
                Some(Injected::Truncate) => {
                    encode_outcome_meta(&outcome, &listed, &mut outbox);
                    outbox.truncate(outbox.len() / 2);
                }
                None => encode_outcome_meta(&outcome, &listed, &mut outbox),
            }
            let sent = match hit(Stage::ResultSend) {
                #[cfg(feature = "failpoints")]
                Some(Injected::Truncate) => {
                    crate::backend::wire::send_truncated(socket, &outbox, &outcome.data)
                }
                Some(injected) => Err(injected.io_error(Stage::ResultSend)),
                None => send_parts(socket, &outbox, &outcome.data, &attached),
            };
            if sent.is_err() {
                return 0;
            }
            // The slabs made for this outcome are the parent's now.
            drop(attached);
            slabs.end_batch();
        }
        0
    }));
    served.unwrap_or(4)
}

/// The first task of `outcome` whose output stayed in its arena though it is longer than `above`:
/// after a slab could not be made (`WorkerSlabs::error`), the task that needed it (an output goes
/// inline above `above` otherwise only once a frame's descriptors are used up, and then no slab
/// is made any more, so none fails).
fn first_inline_above(outcome: &BatchOutcome, above: usize) -> Option<usize> {
    let mut start = 0;
    for (offset, &end) in outcome.ends.iter().enumerate() {
        if end - start > above {
            return Some(outcome.first + offset);
        }
        start = end;
    }
    None
}

/// The outcome of a batch none of whose tasks ran or whose results cannot be sent: its first task
/// failed with `error`.
fn failed_outcome(first: usize, size: usize, slot: usize, error: String) -> BatchOutcome {
    BatchOutcome {
        first,
        size,
        data: Default::default(),
        ends: Vec::new(),
        failure: Some((first, TaskFailure::Io(error))),
        errors: Vec::new(),
        large: Vec::new(),
        seconds: 0.0,
        worker: WorkerId::Process { slot, pid: 0 },
    }
}
