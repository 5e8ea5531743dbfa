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

use std::borrow::Cow;
use std::ffi::c_int;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

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
/// One result of an outcome that lists results in slabs: the result's bytes alone, sent by the
/// worker rank from the memory its child wrote them into, right after the outcome's message (in
/// the order the outcome lists them); rank 0 receives each into the memory the caller reads.
const TAG_LARGE: c_int = 9;

/// A batch's argument bytes, when they are [`ARGS_APART`] or more: sent by rank 0 straight from
/// the batch's buffer right before the batch's message (which then carries none); the worker
/// rank receives them into a landing file its child maps.
const TAG_ARGS: c_int = 10;

/// A batch whose argument bytes reach this many goes with them apart ([`TAG_ARGS`]).
const ARGS_APART: usize = 1 << 20;

/// A worker rank's child returns results above this many bytes in result slabs, which the rank
/// sends from where they lie ([`TAG_LARGE`]).
const RESULTS_ABOVE: u64 = 1 << 20;

/// How long a worker rank that stops on an error tries to tell rank 0 why.
const LEFT_LIMIT: Duration = Duration::from_secs(2);
/// How long rank 0 waits for every worker rank to report its registry.
const HELLO_LIMIT: Duration = Duration::from_secs(30);
/// A rank running a batch says it is alive this often...
const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...and rank 0 gives it up after this long without a word. By default Open MPI ends the whole
/// job when a rank dies; this covers runtimes that keep the job going (mpirun --enable-recovery).
const SILENCE_LIMIT: Duration = Duration::from_secs(10);

/// Batch and outcome messages: the payload (a batch's argument bytes, an outcome's result bytes)
/// first, then the rest of the encoding (`meta`: `encode_batch_meta`, `encode_outcome_meta`), its
/// length and two words (sequence number, then the timeout or the worker pid). The payload leads
/// so that a large one is copied neither into the message (an outcome's result bytes become the
/// message) nor out of it (the received message becomes the batch's argument bytes or the
/// outcome's results: [`take_payload`]). `message` holds the payload; this appends the rest.
fn finish_message(message: &mut Vec<u8>, meta: &[u8], seq: u64, word: u64) -> Result<()> {
    message.try_reserve_exact(meta.len() + 24).map_err(|_| {
        Error::new(
            ErrorKind::Io,
            format!(
                "cannot allocate {} bytes for an MPI message",
                message.len() + meta.len() + 24
            ),
        )
    })?;
    message.extend_from_slice(meta);
    message.extend_from_slice(&(meta.len() as u64).to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&word.to_ne_bytes());
    Ok(())
}

/// A message [`finish_message`] built: its payload's length, its meta's length, sequence number
/// and second word. `None` when it is too short or its lengths do not add up.
fn split_message(message: &[u8]) -> Option<(usize, usize, u64, u64)> {
    let word = |at: usize| {
        message
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    let tail = message.len().checked_sub(24)?;
    let meta_len = usize::try_from(word(tail)?).ok()?;
    let payload_len = tail.checked_sub(meta_len)?;
    Some((payload_len, meta_len, word(tail + 8)?, word(tail + 16)?))
}

/// A payload at least this large is not copied (see [`finish_message`]).
const TAKE_ABOVE: usize = 64 << 10;

/// The payload (its first `len` bytes) and meta (the `meta_len` after them) of the received
/// `message` ([`split_message`]). The payload is owned: the message's own buffer, truncated,
/// when it is large ([`TAKE_ABOVE`]) and fills at least half of it (`message` is then left empty
/// and the meta copied); else a copy (`message` stays, for the next receive to reuse).
fn take_payload(
    message: &mut Vec<u8>,
    len: usize,
    meta_len: usize,
) -> Result<(Vec<u8>, Cow<'_, [u8]>)> {
    let meta = len
        .checked_add(meta_len)
        .filter(|&end| end <= message.len())
        .map(|end| len..end)
        .ok_or_else(|| Error::new(ErrorKind::Io, "a malformed MPI message"))?;
    if len >= TAKE_ABOVE && len >= message.capacity() / 2 {
        let meta = message[meta].to_vec();
        let mut payload = std::mem::take(message);
        payload.truncate(len);
        return Ok((payload, Cow::Owned(meta)));
    }
    let mut payload = Vec::new();
    payload.try_reserve_exact(len).map_err(|_| {
        Error::new(
            ErrorKind::Io,
            format!("cannot allocate {len} bytes for an MPI message's payload"),
        )
    })?;
    payload.extend_from_slice(&message[..len]);
    Ok((payload, Cow::Borrowed(&message[meta])))
}
