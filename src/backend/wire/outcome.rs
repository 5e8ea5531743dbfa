//! The encoding of a batch's outcome: its result end offsets, result bytes, the failure that
//! stopped it and the failures collected on the way.

use std::io;
use std::time::Duration;

#[cfg(test)]
use super::out_of_memory;
use super::{Reader, malformed, put};
use crate::task::{Arena, BatchOutcome, Death, TaskFailure, WorkerId};

/// A result that lies in a result slab, as an outcome lists it: (task index, length, slab id:
/// a slab lent with the batch, or 0 for one the worker made, whose descriptor travels with the
/// frame, in the order of these entries).
pub type SlabResultRef = (usize, usize, u64);

/// Encodes `outcome` into `out` (cleared first), its result bytes last: [`encode_outcome_meta`]
/// followed by the bytes (one buffer, for transports that send one message). `files` lists the
/// results that lie in result slabs ([`SlabResultRef`]).
#[cfg(test)]
pub fn encode_outcome(outcome: &BatchOutcome, files: &[SlabResultRef], out: &mut Vec<u8>) {
    encode_outcome_meta(outcome, files, out);
    out.reserve(outcome.data.len());
    out.extend_from_slice(&outcome.data);
}

/// Encodes everything of `outcome` but its result bytes into `out` (cleared first): a socket
/// sends those from the outcome's own arena (`outcome.data`) right after it. `files` as for
/// [`encode_outcome`].
pub fn encode_outcome_meta(outcome: &BatchOutcome, files: &[SlabResultRef], out: &mut Vec<u8>) {
    out.clear();
    put(out, outcome.first);
    put(out, outcome.size);
    put(out, outcome.ends.len());
    put(out, outcome.data.len());
    for &end in &outcome.ends {
        put(out, end);
    }
    match &outcome.failure {
        None => put(out, 0),
        Some((index, failure)) => put_failure(out, *index, failure),
    }
    put(out, outcome.errors.len());
    for (index, failure) in &outcome.errors {
        put_failure(out, *index, failure);
    }
    put(out, files.len());
    for &(index, len, slab) in files {
        put(out, index);
        put(out, len);
        out.extend_from_slice(&slab.to_ne_bytes());
    }
}

/// Encodes one task failure (tag, index, details). A forked worker only reports a callback's
/// return code and pj's own panics; an MPI worker rank also relays the deaths and timeouts its
/// local process pool saw.
fn put_failure(out: &mut Vec<u8>, index: usize, failure: &TaskFailure) {
    match failure {
        TaskFailure::Returned { code, message } => {
            put(out, 1);
            put(out, index);
            out.extend_from_slice(&(*code as i64).to_ne_bytes());
            let text = message.as_deref().unwrap_or("");
            put(out, usize::from(message.is_some()));
            put(out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
        TaskFailure::Panicked(text) => {
            put(out, 2);
            put(out, index);
            put(out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
        TaskFailure::Io(text) => {
            put(out, 3);
            put(out, index);
            put(out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
        TaskFailure::Died {
            pid,
            death,
            fault_address,
            backtrace,
        } => {
            put(out, 4);
            put(out, index);
            out.extend_from_slice(&i64::from(*pid).to_ne_bytes());
            let (kind, value) = match *death {
                Death::Signal(signal) => (1, signal),
                Death::Exited(status) => (2, status),
                Death::Unknown => (3, 0),
                Death::Silent(seconds) => (4, seconds as i32),
            };
            put(out, kind);
            out.extend_from_slice(&i64::from(value).to_ne_bytes());
            put(out, usize::from(fault_address.is_some()));
            out.extend_from_slice(&fault_address.unwrap_or(0).to_ne_bytes());
            let text = backtrace.as_deref().unwrap_or("");
            put(out, usize::from(backtrace.is_some()));
            put(out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
        TaskFailure::TimedOut { limit, elapsed } | TaskFailure::Stalled { limit, elapsed } => {
            let tag = match failure {
                TaskFailure::TimedOut { .. } => 5,
                _ => 6,
            };
            put(out, tag);
            put(out, index);
            for duration in [limit, elapsed] {
                out.extend_from_slice(
                    &u64::try_from(duration.as_nanos())
                        .unwrap_or(u64::MAX)
                        .to_ne_bytes(),
                );
            }
        }
    }
}

/// Decodes what [`put_failure`] wrote, after its tag.
fn read_failure(r: &mut Reader<'_>, tag: usize) -> io::Result<(usize, TaskFailure)> {
    match tag {
        1 => {
            let index = r.word()?;
            let code = r.word()? as i64 as i32;
            let has_message = r.word()? != 0;
            let len = r.word()?;
            let text = String::from_utf8_lossy(r.bytes(len)?).into_owned();
            Ok((
                index,
                TaskFailure::Returned {
                    code,
                    message: has_message.then_some(text),
                },
            ))
        }
        2 | 3 => {
            let index = r.word()?;
            let len = r.word()?;
            let text = String::from_utf8_lossy(r.bytes(len)?).into_owned();
            let failure = if tag == 2 {
                TaskFailure::Panicked(text)
            } else {
                TaskFailure::Io(text)
            };
            Ok((index, failure))
        }
        4 => {
            let index = r.word()?;
            let pid = r.word()? as i64 as i32;
            let kind = r.word()?;
            let value = r.word()? as i64 as i32;
            let death = match kind {
                1 => Death::Signal(value),
                2 => Death::Exited(value),
                3 => Death::Unknown,
                4 => Death::Silent(value as u32),
                _ => return Err(malformed(r.what)),
            };
            let has_address = r.word()? != 0;
            let address = r.word()? as u64;
            let has_backtrace = r.word()? != 0;
            let len = r.word()?;
            let text = String::from_utf8_lossy(r.bytes(len)?).into_owned();
            Ok((
                index,
                TaskFailure::Died {
                    pid,
                    death,
                    fault_address: has_address.then_some(address),
                    backtrace: has_backtrace.then_some(text),
                },
            ))
        }
        5 => {
            let index = r.word()?;
            let limit = Duration::from_nanos(r.word()? as u64);
            let elapsed = Duration::from_nanos(r.word()? as u64);
            Ok((index, TaskFailure::TimedOut { limit, elapsed }))
        }
        6 => {
            let index = r.word()?;
            let limit = Duration::from_nanos(r.word()? as u64);
            let elapsed = Duration::from_nanos(r.word()? as u64);
            Ok((index, TaskFailure::Stalled { limit, elapsed }))
        }
        _ => Err(malformed(r.what)),
    }
}

/// Decodes an outcome encoded by [`encode_outcome`] (its result bytes are copied out of `buf`),
/// run by `worker` (which the receiving side knows); `seconds` is the parent's to fill. Also
/// returns the results that lie in result slabs ([`SlabResultRef`]).
#[cfg(test)]
pub fn decode_outcome(
    buf: &[u8],
    worker: WorkerId,
) -> io::Result<(BatchOutcome, Vec<SlabResultRef>)> {
    let mut r = Reader {
        buf,
        what: "outcome",
    };
    let (outcome, files) = decode_head(&mut r, worker)?;
    let bytes = r.bytes(outcome.data_len)?;
    let mut data = Vec::new();
    data.try_reserve_exact(bytes.len())
        .map_err(|e| out_of_memory(bytes.len(), &e))?;
    data.extend_from_slice(bytes);
    Ok((outcome.with_data(data), files))
}

/// Decodes an outcome sent as two parts: `meta` from [`encode_outcome_meta`] and the result
/// bytes, `data`, which become the outcome's own (moved, not copied). Otherwise as
/// [`decode_outcome`].
pub fn decode_outcome_parts(
    meta: &[u8],
    data: Arena,
    worker: WorkerId,
) -> io::Result<(BatchOutcome, Vec<SlabResultRef>)> {
    let mut r = Reader {
        buf: meta,
        what: "outcome",
    };
    let (outcome, files) = decode_head(&mut r, worker)?;
    if !r.buf.is_empty() || data.len() != outcome.data_len {
        return Err(malformed("outcome"));
    }
    Ok((outcome.with_data(data), files))
}

/// An outcome without its result bytes, which are `data_len` long.
struct Head {
    outcome: BatchOutcome,
    data_len: usize,
}

impl Head {
    fn with_data(mut self, data: impl Into<Arena>) -> BatchOutcome {
        self.outcome.data = data.into();
        self.outcome
    }
}

/// Reads what [`encode_outcome_meta`] wrote.
fn decode_head(r: &mut Reader<'_>, worker: WorkerId) -> io::Result<(Head, Vec<SlabResultRef>)> {
    let stage = crate::failpoint::Stage::ResultDecode;
    if let Some(injected) = crate::failpoint::hit(stage) {
        return Err(injected.io_error(stage));
    }
    let (first, size, completed, data_len) = (r.word()?, r.word()?, r.word()?, r.word()?);
    let ends = r.words(completed)?;
    if ends.windows(2).any(|w| w[0] > w[1]) || ends.last().is_some_and(|&end| end != data_len) {
        return Err(malformed("outcome"));
    }
    let failure = match r.word()? {
        0 => None,
        tag => Some(read_failure(r, tag)?),
    };
    let error_count = r.word()?;
    if error_count > size {
        return Err(malformed("outcome"));
    }
    let mut errors = Vec::with_capacity(error_count);
    for _ in 0..error_count {
        let tag = r.word()?;
        errors.push(read_failure(r, tag)?);
    }
    let file_count = r.word()?;
    if file_count > size {
        return Err(malformed("outcome"));
    }
    let mut files = Vec::with_capacity(file_count);
    for _ in 0..file_count {
        files.push((r.word()?, r.word()?, r.word()? as u64));
    }
    let outcome = BatchOutcome {
        first,
        size,
        data: Default::default(),
        ends,
        failure,
        errors,
        large: Vec::new(),
        seconds: 0.0,
        worker,
    };
    Ok((Head { outcome, data_len }, files))
}
