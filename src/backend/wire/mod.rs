//! Framing between the parent and a forked worker: one frame per batch each way.
//!
//! A frame is a u64 payload length followed by the payload; integers are native-endian (both sides
//! are the same binary on the same machine). The payload encodings live in [`batch`] and
//! [`outcome`], the socket reads and writes in [`socket`]; this module holds what they share.

mod batch;
mod outcome;
mod socket;

pub use batch::{DecodedBatch, RunFlags, decode_batch, encode_batch};
pub use outcome::{decode_outcome, encode_outcome};
pub use socket::{
    LIVENESS_PERIOD_MS, MAX_FDS_PER_FRAME, recv_frame, recv_frame_with_fds, send_frame,
    send_frame_with_fds,
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
        Batch, BatchOutcome, Callback, Death, RunSettings, TaskFailure, TaskOutput, WorkerId,
    };
    use std::ffi::c_void;
    use std::time::Duration;

    unsafe extern "C" fn echo(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
        0
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
        encode_batch(&batch, flags, &[7, 9], b"/tmp/x", false, &mut buf).unwrap();
        // SAFETY: encoded in this process.
        let decoded = unsafe { decode_batch(&buf, None) }.unwrap();
        let (back, back_flags) = (decoded.batch, decoded.flags);
        assert_eq!(decoded.attached, vec![7, 9]);
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
            data: b"hello".to_vec(),
            ends: vec![2, 5],
            failure: Some((
                42,
                TaskFailure::Returned {
                    code: -3,
                    message: Some("nope".into()),
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
        encode_outcome(&outcome, &[(41, 5 << 20)], &mut buf);
        let (back, files) = decode_outcome(&buf, WorkerId::Thread(1)).unwrap();
        assert_eq!(files, vec![(41, 5 << 20)]);
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
