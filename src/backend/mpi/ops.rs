//! The shim's table of MPI operations ([`MpiOps`]) and what pj builds on it: non-blocking sends
//! whose bytes live until MPI is done with them, probes and receives.
//!
//! Messages above the transport's limit (`max_message`: INT_MAX bytes under MPI, whose counts are
//! ints) travel in pieces: every piece but the last with [`TAG_PART`], the last with the message's
//! own tag, all started at once so that nothing the same rank sends comes between them. MPI does
//! not reorder two messages from one rank that match the same receive, and pj's probe takes any
//! tag from any rank, so a receiver gets the pieces in order and joins them ([`Reassembly`]).
//!
//! Progress. An MPI library moves a large message (a rendezvous) only while the program calls
//! into it: Open MPI's shared-memory transport, without single-copy support, pushes the next
//! fragments only inside the sender's `test` or `iprobe`. A sender that sleeps between tests
//! therefore stalls its own transfer (a 64 MiB batch took seconds instead of tens of
//! milliseconds), so the loops with a send in flight poll without sleeping
//! ([`MpiOps::transferring`]), yielding the CPU between polls, for as long as the send could take
//! at a pessimistic rate; past that (a receiver that is gone) they fall back to their backoff, so
//! that a send that never completes does not make a rank spin.

use std::ffi::{c_int, c_void};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::spin::Backoff;

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

fn mpi_error(what: &str, code: c_int) -> Error {
    Error::new(ErrorKind::Io, format!("MPI {what} failed (error {code})"))
}

/// The tag of a piece of a message that continues in the sender's next message.
const TAG_PART: c_int = 7;

/// How long a sender polls a send without sleeping ([`MpiOps::transferring`]): this long...
const SPIN_BASE: Duration = Duration::from_secs(1);
/// ...plus its length at this rate (bytes per second: far below what shared memory or a network
/// carries, so that a transfer that is only slow still gets its polls).
const SPIN_RATE: u64 = 50_000_000;

/// The bytes of a message being sent, and whatever holds them (a vector, or a result slab's
/// mapping), kept until MPI no longer reads them.
type SendBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A send in progress: its request and the bytes MPI reads until it completes (the whole message:
/// the pieces of a split message share it).
pub(super) struct PendingSend {
    request: *mut c_void,
    bytes: SendBytes,
    completed: bool,
    /// Until when its sender polls without sleeping (see [`MpiOps::transferring`]).
    spin_until: Instant,
}

impl Drop for PendingSend {
    fn drop(&mut self) {
        if !self.completed {
            // MPI may still read the bytes (a send abandoned at shutdown or after an error):
            // they are leaked, never freed under it.
            std::mem::forget(Arc::clone(&self.bytes));
        }
    }
}

impl MpiOps {
    /// Starts sending `bytes` as one message with `tag`, in pieces when it is larger than the
    /// transport's limit (kept alive in the returned sends until they complete). An error after
    /// some pieces were started leaves the receiver a partial message: MPI errors end the backend.
    pub(super) fn start_send(
        &self,
        dest: c_int,
        tag: c_int,
        bytes: Vec<u8>,
    ) -> Result<Vec<PendingSend>> {
        self.start_send_from(dest, tag, Arc::new(bytes))
    }

    /// [`MpiOps::start_send`] of bytes held by `owner` (a result read in place from its slab),
    /// which the returned sends keep until they complete.
    pub(super) fn start_send_from(
        &self,
        dest: c_int,
        tag: c_int,
        owner: SendBytes,
    ) -> Result<Vec<PendingSend>> {
        let stage = if self.rank == 0 {
            crate::failpoint::Stage::MpiSend
        } else {
            crate::failpoint::Stage::MpiRankSend
        };
        if let Some(injected) = crate::failpoint::hit(stage) {
            let error = injected.io_error(stage);
            return Err(Error::new(ErrorKind::Io, error.to_string()));
        }
        let bytes = (*owner).as_ref();
        let spin_until = Instant::now()
            + SPIN_BASE
            + Duration::from_micros(
                u64::try_from(bytes.len()).unwrap_or(u64::MAX) / (SPIN_RATE / 1_000_000),
            );
        let limit = self.max_message.max(1);
        let pieces = bytes.len().div_ceil(limit).max(1);
        let mut sends = Vec::with_capacity(pieces);
        for piece in 0..pieces {
            let start = piece * limit;
            let len = limit.min(bytes.len() - start);
            let piece_tag = if piece + 1 == pieces { tag } else { TAG_PART };
            let mut request = std::ptr::null_mut();
            // SAFETY: the shim's isend with its own context, on `len` bytes inside `bytes`, which
            // stays alive and unchanged in the returned PendingSend until `test` reports completion.
            let code = unsafe {
                (self.isend)(
                    self.context,
                    dest,
                    piece_tag,
                    bytes.as_ptr().add(start),
                    len,
                    &mut request,
                )
            };
            if code != 0 {
                return Err(mpi_error("send", code));
            }
            sends.push(PendingSend {
                request,
                bytes: Arc::clone(&owner),
                completed: false,
                spin_until,
            });
        }
        Ok(sends)
    }

    /// Whether `send` has completed (its request is then released by the shim).
    pub(super) fn sent(&self, send: &mut PendingSend) -> Result<bool> {
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
    pub(super) fn complete(&self, sends: &mut Vec<PendingSend>) -> Result<bool> {
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

    /// Whether a loop with `sends` pending should poll again at once (yielding the CPU, never
    /// sleeping): MPI moves a large message only while its sender calls into MPI (see the module
    /// doc), so a sleep between polls stalls the transfer. True while a send is pending that
    /// started less than a second plus its length at 50 MB/s ago; a send still pending after that
    /// (its receiver gone, or not receiving) no longer keeps its sender spinning.
    pub(super) fn transferring(sends: &[PendingSend]) -> bool {
        if sends.is_empty() {
            return false;
        }
        let now = Instant::now();
        sends.iter().any(|s| !s.completed && now < s.spin_until)
    }

    /// One wait of a polling loop with `sends` in flight: a yield while they transfer
    /// ([`Self::transferring`]), else `backoff`'s pause.
    pub(super) fn pause(sends: &[PendingSend], backoff: &mut Backoff) {
        if Self::transferring(sends) {
            std::thread::yield_now();
        } else {
            backoff.pause();
        }
    }

    /// Sends `bytes` and waits (polling, backing off) until the send completes or `limit` passes.
    pub(super) fn send_and_wait(
        &self,
        dest: c_int,
        tag: c_int,
        bytes: Vec<u8>,
        limit: Duration,
    ) -> Result<()> {
        let mut sends = self.start_send(dest, tag, bytes)?;
        let deadline = Instant::now() + limit;
        let mut backoff = Backoff::default();
        loop {
            self.complete(&mut sends)?;
            if sends.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("MPI rank {dest} did not take a message within {limit:?}"),
                ));
            }
            Self::pause(&sends, &mut backoff);
        }
    }

    /// A waiting message's (source, tag, length), if any.
    pub(super) fn probe(&self) -> Result<Option<(c_int, c_int, usize)>> {
        let (mut source, mut tag, mut len) = (0, 0, 0usize);
        // SAFETY: the shim's iprobe writes the three out-parameters, which are valid locals.
        match unsafe { (self.iprobe)(self.context, &mut source, &mut tag, &mut len) } {
            1 => Ok(Some((source, tag, len))),
            0 => Ok(None),
            code => Err(mpi_error("probe", code)),
        }
    }

    /// Receives the message `probe` announced, appended to `buf`.
    /// Receives the message `probe` announced (`source`, `tag`, `dst.len()` bytes) into `dst`,
    /// a message that was not split (the caller checked [`Reassembly::continues`]).
    pub(super) fn receive_into(&self, source: c_int, tag: c_int, dst: &mut [u8]) -> Result<()> {
        let stage = crate::failpoint::Stage::MpiRankReceive;
        if let Some(injected) = crate::failpoint::hit(stage) {
            let error = injected.io_error(stage);
            return Err(Error::new(ErrorKind::Io, error.to_string()));
        }
        // SAFETY: `dst` is `dst.len()` writable bytes, the length iprobe announced for this
        // message; the shim's recv writes only there.
        let code = unsafe { (self.recv)(self.context, source, tag, dst.as_mut_ptr(), dst.len()) };
        if code != 0 {
            return Err(mpi_error("receive", code));
        }
        Ok(())
    }

    fn receive_appended(
        &self,
        source: c_int,
        tag: c_int,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let stage = if self.rank == 0 {
            crate::failpoint::Stage::MpiReceive
        } else {
            crate::failpoint::Stage::MpiRankReceive
        };
        if let Some(injected) = crate::failpoint::hit(stage) {
            let error = injected.io_error(stage);
            return Err(Error::new(ErrorKind::Io, error.to_string()));
        }
        let start = buf.len();
        buf.try_reserve(len).map_err(|_| {
            Error::new(
                ErrorKind::Io,
                format!("cannot allocate {len} bytes for an MPI message from rank {source}"),
            )
        })?;
        // Received into the spare capacity as it is: zeroing it first would cost a pass over
        // the whole message (and fault its pages in) for bytes MPI overwrites.
        // SAFETY: `buf` has room (reserved above) for `len` bytes from `start`, the length
        // iprobe announced for this message; the shim's recv writes only there.
        let code =
            unsafe { (self.recv)(self.context, source, tag, buf.as_mut_ptr().add(start), len) };
        if code != 0 {
            return Err(mpi_error("receive", code));
        }
        // SAFETY: recv succeeded: the shim checked that the message it received had exactly
        // `len` bytes (else it fails with MPI_ERR_TRUNCATE), so they are all initialised.
        unsafe { buf.set_len(start + len) };
        Ok(())
    }
}

/// The pieces received so far of each rank's split message (see the module doc).
#[derive(Default)]
pub(super) struct Reassembly {
    /// By source rank: the pieces of its message in progress, joined.
    partial: Vec<Vec<u8>>,
}

impl Reassembly {
    /// Whether a message from `source` is in progress: its next piece continues it.
    pub(super) fn continues(&self, source: c_int) -> bool {
        usize::try_from(source)
            .ok()
            .and_then(|slot| self.partial.get(slot))
            .is_some_and(|partial| !partial.is_empty())
    }

    /// Receives the message `probe` announced (source, tag, len). `Some(tag)` when `buf` then
    /// holds a whole message with that tag (a piece joined to the ones before it, or a message
    /// that was never split), `None` when it was a piece to be continued.
    pub(super) fn receive(
        &mut self,
        ops: &MpiOps,
        (source, tag, len): (c_int, c_int, usize),
        buf: &mut Vec<u8>,
    ) -> Result<Option<c_int>> {
        let slot = usize::try_from(source)
            .ok()
            .filter(|&s| s < usize::try_from(ops.size).unwrap_or(0));
        let Some(slot) = slot else {
            // Not a rank of this communicator: read and drop it.
            buf.clear();
            ops.receive_appended(source, tag, len, buf)?;
            return Ok(None);
        };
        if self.partial.len() <= slot {
            self.partial.resize_with(slot + 1, Vec::new);
        }
        let partial = &mut self.partial[slot];
        if tag == TAG_PART {
            ops.receive_appended(source, tag, len, partial)?;
            return Ok(None);
        }
        if partial.is_empty() {
            buf.clear();
            ops.receive_appended(source, tag, len, buf)?;
        } else {
            ops.receive_appended(source, tag, len, partial)?;
            *buf = std::mem::take(partial);
        }
        Ok(Some(tag))
    }
}
