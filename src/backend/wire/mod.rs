//! Framing between the parent and a worker process: one frame per batch each way.
//!
//! A frame between a proxy and its worker has two parts ([`send_parts`], [`recv_parts`]): a
//! 16-byte header (the two parts' lengths), a `meta` part (everything but the bulk bytes: a few
//! words per task) and a `bulk` part (a batch's argument bytes, an outcome's result bytes).
//! Integers are native-endian (both sides are the same binary on the same machine). The encodings
//! live in [`batch`] and [`outcome`], the socket reads and writes in [`socket`]; this module holds
//! what they share. Results above max_nbytes do not travel in frames: they lie in result slabs
//! (`backend::slabs`), which the outcome lists. The MPI backend sends the same two parts as one
//! message each, the bulk bytes
//! first (see `backend::mpi`: the bulk part of a large outcome becomes the message, and a large
//! received message becomes the bulk part, neither copied); [`encode_batch`] and
//! [`encode_outcome`] (the meta part followed by the bulk bytes) remain for this module's tests.
//!
//! Copies of one argument byte below max_nbytes (processes backend), submit to task:
//! - before: (1) `pj_parallel_submit` copies it into the batch's argument buffer (reused across
//!   batches, `ArgBuffers`); (2) `encode_batch` copies it into the proxy's frame buffer; (3) the
//!   kernel copies it into the socket; (4) the kernel copies it into the worker's frame buffer
//!   (reused), zero-filled first; (5) `decode_batch` copies it into a fresh `Vec` for the batch;
//!   the task reads it there.
//! - after: (1) as before; (2) the kernel copies it from the batch's own buffer into the socket
//!   (`sendmsg` over header, meta and the batch's buffer); (3) the kernel copies it into the
//!   worker's argument buffer, which the batch then owns by move while it runs and gives back for
//!   the next frame (reused, never zero-filled); the task reads it there. Two copies are the
//!   kernel's: a socket cannot do with fewer.
//!
//! Copies of one result byte below max_nbytes, task to caller:
//! - before: (1) the task writes it into its batch's output arena (`pj_out_alloc` / `pj_out_set`);
//!   (2) `encode_outcome` copies it into the worker's frame buffer (reused); (3) the kernel copies
//!   it into the socket; (4) the kernel copies it into the proxy's frame buffer, zero-filled first
//!   and kept at its largest size for the proxy's life; (5) `decode_outcome` copies it into a fresh
//!   `Vec`, the outcome's `data`; (6) when the call had more than one batch, the results gather
//!   every outcome's bytes into one fresh buffer (`dispatch::results`, shared by every backend).
//! - after: (1) as before; (2) the kernel copies it from the arena into the socket (`sendmsg` over
//!   header, meta and the arena); (3) the kernel copies it into a receive buffer that becomes the
//!   outcome's `data` by move (not zero-filled, not copied out; the proxy keeps no large buffer);
//!   (4) as (6) before, outside this module.
//!
//! Measured (200 MiB per call as 400 arguments or results of 512 KiB, processes, n_jobs=2, kept
//! workers, CPU time of calls 2-6 on a loaded 2-core machine): arguments 78-93 ms in the parent
//! and 66-75 ms in the workers before, 56-70 and 30-36 after; results 267-312 and 72-93 before,
//! 186-247 and 57-84 after (a memcpy of the same bytes into a reused buffer: 23 ms). What remains
//! on the results' side is mostly fresh memory (page faults and the kernel zeroing pages for the
//! receive buffers and the gathered results) rather than the socket. The socket's send buffer is
//! left at the system default: 1 MiB and 4 MiB did not use less CPU, and the minimum doubled it.

mod batch;
mod outcome;
mod socket;

pub use batch::{
    DecodedBatch, LentSlab, RunFlags, batch_span, decode_batch_landed, decode_batch_parts,
    encode_batch_meta,
};
#[cfg(test)]
pub use batch::{decode_batch, encode_batch};
pub use outcome::{SlabResultRef, decode_outcome_parts, encode_outcome_meta};
#[cfg(test)]
pub use outcome::{decode_outcome, encode_outcome};
#[cfg(feature = "failpoints")]
pub use socket::send_truncated;
pub use socket::{
    LIVENESS_PERIOD_MS, MAX_FDS_PER_FRAME, bound_sends, recv_frame, recv_parts, send_frame,
    send_parts, send_parts_watched,
};

use std::io;

/// A malformed frame (a bug, or memory corruption in the worker).
fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed {what} frame"),
    )
}

fn put(out: &mut Vec<u8>, value: usize) {
    out.extend_from_slice(&(value as u64).to_ne_bytes());
}

/// Reads integers and byte runs off a payload.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> io::Result<&'a [u8]> {
        if len > self.buf.len() {
            return Err(malformed(self.what));
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    fn word(&mut self) -> io::Result<usize> {
        let bytes = self.bytes(8)?;
        let value = u64::from_ne_bytes(bytes.try_into().map_err(|_| malformed(self.what))?);
        usize::try_from(value).map_err(|_| malformed(self.what))
    }

    fn words(&mut self, count: usize) -> io::Result<Vec<usize>> {
        let len = count.checked_mul(8).ok_or_else(|| malformed(self.what))?;
        let bytes = self.bytes(len)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()) as usize)
            .collect())
    }
}

/// The error for `len` bytes that could not be allocated.
fn out_of_memory(len: usize, error: &std::collections::TryReserveError) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!("cannot allocate {len} bytes for a batch's frame: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::MapAccess;
    use crate::task::{
        ArgRef, Batch, BatchOutcome, Callback, Death, RunSettings, TaskFailure, TaskOutput,
        WorkerId,
    };
    use std::ffi::c_void;
    use std::time::Duration;

    unsafe extern "C" fn echo(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
        0
    }

    #[test]
    fn a_landed_batch_leaves_its_large_arguments_in_the_file() {
        // SAFETY: a plain function with unused userdata.
        let cb = unsafe { Callback::new(echo, std::ptr::null_mut()) };
        let mut batch = Batch::new(7, 3);
        let big = [9u8; 100];
        for arg in [&big[..], b"xyz", &big[..60]] {
            batch.push(cb, arg).unwrap();
        }
        let mut meta = Vec::new();
        encode_batch_meta(&batch, RunFlags::default(), &[], &[], &[], false, &mut meta).unwrap();
        let (_, args, _) = batch.parts();
        // SAFETY: encoded in this process.
        let landed = unsafe { decode_batch_landed(&meta, args, 42, 50, None) }.unwrap();
        let back = landed.batch;
        assert_eq!(
            back.spilled,
            vec![
                (
                    7,
                    ArgRef {
                        file: 42,
                        offset: 0,
                        len: 100
                    }
                ),
                (
                    9,
                    ArgRef {
                        file: 42,
                        offset: 103,
                        len: 60
                    }
                ),
            ],
            "above 50 bytes: where they lie in the message"
        );
        assert_eq!(back.parts().1, b"xyz", "the small one is copied");
        assert_eq!(back.len(), 3);
        // SAFETY: as above.
        let short = unsafe { decode_batch_landed(&meta, &args[1..], 42, 50, None) };
        assert!(
            short.is_err(),
            "arguments that do not match the meta are refused"
        );
    }

    #[test]
    fn batches_and_outcomes_round_trip() {
        // SAFETY: a plain function with unused userdata.
        let cb = unsafe { Callback::new(echo, 0x1234 as *mut c_void) };
        let mut batch = Batch::new(40, 3);
        for arg in [&b"a"[..], b"", b"xyz"] {
            batch.push(cb, arg).unwrap();
        }
        let mut buf = Vec::new();
        let flags = RunFlags {
            settings: RunSettings {
                timed: true,
                collect: false,
            },
            access: MapAccess::Private,
            call: 12,
            spill_epoch: 5,
            results_above: 1 << 20,
        };
        let batch = batch.retry_without(41, TaskFailure::Io("lost".into()));
        let lent = [LentSlab {
            id: 3,
            capacity: 8 << 20,
            with_fd: true,
        }];
        encode_batch(&batch, flags, &[7, 9], &lent, b"/tmp/x", false, &mut buf).unwrap();
        // SAFETY: encoded in this process.
        let decoded = unsafe { decode_batch(&buf, None) }.unwrap();
        let (back, back_flags) = (decoded.batch, decoded.flags);
        assert_eq!(decoded.attached, vec![7, 9]);
        assert_eq!(decoded.lent, lent);
        assert_eq!(decoded.results_folder, b"/tmp/x");
        assert_eq!(back_flags, flags);
        assert_eq!(back.forced.len(), 1);
        assert_eq!(back.forced[0].0, 41);
        assert_eq!(back.first, 40);
        let (cbs, args, ends) = back.parts();
        assert_eq!((args, ends), (&b"axyz"[..], &[1usize, 1, 4][..]));
        assert_eq!(cbs[2].to_raw(), cb.to_raw());

        let outcome = BatchOutcome {
            first: 40,
            size: 5,
            data: b"hello".to_vec().into(),
            ends: vec![2, 5],
            failure: Some((
                42,
                TaskFailure::Stalled {
                    limit: Duration::from_millis(500),
                    elapsed: Duration::from_nanos(701_000_000),
                },
            )),
            errors: vec![
                (
                    40,
                    TaskFailure::Returned {
                        code: 9,
                        message: None,
                    },
                ),
                (41, TaskFailure::Panicked("boom".into())),
                (
                    42,
                    TaskFailure::Died {
                        pid: 4321,
                        death: Death::Signal(11),
                        fault_address: Some(0xdead),
                        backtrace: Some("#0 crash_here".into()),
                    },
                ),
                (
                    43,
                    TaskFailure::Died {
                        pid: 17,
                        death: Death::Exited(0),
                        fault_address: None,
                        backtrace: None,
                    },
                ),
                (
                    44,
                    TaskFailure::TimedOut {
                        limit: Duration::from_millis(500),
                        elapsed: Duration::from_nanos(612_345_678),
                    },
                ),
            ],
            large: Vec::new(),
            seconds: 0.0,
            worker: WorkerId::Caller,
        };
        encode_outcome(&outcome, &[(41, 5 << 20, 0), (43, 3 << 20, 17)], &mut buf);
        let (back, files) = decode_outcome(&buf, WorkerId::Thread(1)).unwrap();
        assert_eq!(files, vec![(41, 5 << 20, 0), (43, 3 << 20, 17)]);
        assert_eq!(
            (back.first, back.size, &back.data, &back.ends),
            (40, 5, &outcome.data, &outcome.ends)
        );
        assert_eq!(back.failure, outcome.failure);
        assert_eq!(back.errors, outcome.errors);
        assert!(
            decode_outcome(&buf[..buf.len() - 1], WorkerId::Thread(1)).is_err(),
            "a truncated frame is refused"
        );
    }
}
