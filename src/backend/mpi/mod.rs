//! The MPI backend: the same program under `mpirun -n N`, rank 0 dispatching, ranks 1..N-1 working.
//!
//! libpj never links MPI. A shim compiled with mpicc (`pj_mpi_main`, bindings/mpi) initializes MPI,
//! duplicates `MPI_COMM_WORLD` for pj, and hands pj a table of C functions ([`MpiOps`]): a
//! non-blocking send and its test, a non-blocking probe, a receive. Rank 0 attaches the table
//! ([`attach`]) and returns to the program; every other rank serves ([`serve`]) until rank 0
//! detaches at exit ([`detach`]).
//!
//! - `ops`: the table and the non-blocking sends, probes and receives pj builds on it;
//! - `rank0`: rank 0's attachment and the [`MpiPool`] handle a `Parallel` object's backend holds;
//! - `dispatcher`: rank 0's thread that owns every MPI exchange and feeds the worker ranks;
//! - `rank`: a worker rank's loop.
//!
//! This module holds what both sides of the conversation share: the message tags, the registry
//! handshake's time limit and the trailer that ends batch and outcome messages.
//!
//! Waiting. Nothing here blocks inside MPI: both sides poll with `iprobe` and back off from a
//! short spin to sleeps of up to a few milliseconds (`spin::Backoff`), so an idle rank costs next
//! to no CPU. Rank 0's dispatcher blocks on its job queue (no polling at all) while no batch is in
//! flight. While a send of theirs is in flight they poll without sleeping (yielding the CPU), for
//! a bounded time: MPI moves a large message only while its sender calls into MPI (see `ops`).

mod dispatcher;
mod ops;
mod rank;
mod rank0;

use std::ffi::c_int;
use std::time::Duration;

pub use ops::MpiOps;

pub use rank::serve;
pub(crate) use rank0::{ForkHold, hold_for_fork};
pub use rank0::{MpiPool, attach, detach, not_attached, worker_ranks};

/// Message tags on pj's communicator.
const TAG_HELLO: c_int = 1;
const TAG_BATCH: c_int = 2;
const TAG_OUTCOME: c_int = 3;
const TAG_CANCEL: c_int = 4;
const TAG_STOP: c_int = 5;
const TAG_ALIVE: c_int = 6;
/// A worker rank's last word when it stops serving on an error of its own (an MPI operation that
/// failed, a panic of pj's): the error's text. (7 is `ops::TAG_PART`.)
const TAG_LEFT: c_int = 8;

/// How long a worker rank that stops on an error tries to tell rank 0 why.
const LEFT_LIMIT: Duration = Duration::from_secs(2);
/// How long rank 0 waits for every worker rank to report its registry.
const HELLO_LIMIT: Duration = Duration::from_secs(30);
/// A rank running a batch says it is alive this often...
const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...and rank 0 gives it up after this long without a word. By default Open MPI ends the whole
/// job when a rank dies; this covers runtimes that keep the job going (mpirun --enable-recovery).
const SILENCE_LIMIT: Duration = Duration::from_secs(10);

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
