//! Framing between the parent and a forked worker: one frame per batch each way.
//!
//! A frame is a u64 payload length followed by the payload; integers are native-endian (both sides
//! are the same binary on the same machine). A batch travels as its callbacks (function address,
//! userdata address: valid in the worker because it is a fork of the parent), its argument end
//! offsets and its argument bytes; an outcome as its result end offsets, result bytes and failure.
//! Sockets are written with `MSG_NOSIGNAL`, so a dead peer is an error, never a SIGPIPE.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::memmap::MapAccess;
use crate::task::{ArgRef, Batch, BatchOutcome, Callback, Death, TaskFailure, TaskFn};

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

/// How the worker runs a batch: the [`crate::task::RunContext`] flags that cross the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunFlags {
    /// Record each task's start time (the call has a timeout).
    pub timed: bool,
    /// on_error=collect: failed tasks do not stop the batch.
    pub collect: bool,
    /// How spilled arguments are mapped (mmap_mode).
    pub access: MapAccess,
    /// Which call the batch belongs to: a kept worker drops the previous call's spill files when
    /// it changes.
    pub call: u64,
    /// Results longer than this many bytes go back through files (u64::MAX: never).
    pub results_above: u64,
}

impl Default for RunFlags {
    fn default() -> Self {
        RunFlags {
            timed: false,
            collect: false,
            access: MapAccess::ReadOnly,
            call: 0,
            results_above: u64::MAX,
        }
    }
}

impl RunFlags {
    fn bits(self) -> usize {
        let access = match self.access {
            MapAccess::ReadOnly => 0,
            MapAccess::Shared => 1,
            MapAccess::Private => 2,
        };
        usize::from(self.timed) | usize::from(self.collect) << 1 | access << 2
    }

    fn from_bits(bits: usize) -> io::Result<Self> {
        let access = match (bits >> 2) & 3 {
            0 => MapAccess::ReadOnly,
            1 => MapAccess::Shared,
            2 => MapAccess::Private,
            _ => return Err(malformed("batch")),
        };
        Ok(RunFlags {
            timed: bits & 1 != 0,
            collect: bits & 2 != 0,
            access,
            call: 0,
            results_above: u64::MAX,
        })
    }
}

/// Encodes `batch` into `out` (cleared first). Of `batch.forced` only the indices travel: the
/// worker skips those tasks, and the parent, which kept the batch, merges their failures.
/// `attached` lists the ids of the spill files whose descriptors travel with this frame, in the
/// order of the descriptors; `results_folder` is where the worker writes results above
/// `flags.results_above`. `by_index`: the worker was spawned, not forked, so callbacks travel as
/// registry indices (the caller checked that every task's function is registered).
///
/// The frame is as large as the batch's arguments: when it cannot be allocated, this is an
/// [`io::ErrorKind::OutOfMemory`] error (never an abort).
pub fn encode_batch(
    batch: &Batch,
    flags: RunFlags,
    attached: &[u64],
    results_folder: &[u8],
    by_index: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let (callbacks, args, arg_ends) = batch.parts();
    out.clear();
    // Everything written below, so that nothing reallocates.
    let len = 80
        + callbacks.len() * 24
        + args.len()
        + results_folder.len()
        + batch.forced.len() * 8
        + batch.spilled.len() * 32
        + attached.len() * 8;
    out.try_reserve_exact(len)
        .map_err(|e| out_of_memory(len, &e))?;
    put(out, batch.first);
    put(out, callbacks.len());
    put(out, args.len());
    put(out, flags.bits());
    out.extend_from_slice(&flags.call.to_ne_bytes());
    out.extend_from_slice(&flags.results_above.to_ne_bytes());
    put(out, results_folder.len());
    out.extend_from_slice(results_folder);
    put(out, batch.forced.len());
    for (index, _) in &batch.forced {
        put(out, *index);
    }
    put(out, batch.spilled.len());
    for (index, at) in &batch.spilled {
        put(out, *index);
        out.extend_from_slice(&at.file.to_ne_bytes());
        out.extend_from_slice(&at.offset.to_ne_bytes());
        put(out, at.len);
    }
    put(out, attached.len());
    for id in attached {
        out.extend_from_slice(&id.to_ne_bytes());
    }
    // Tasks of a batch usually share their function: look each one up once.
    let mut last: Option<(usize, usize)> = None;
    for callback in callbacks {
        let (mut func, userdata) = callback.to_raw();
        if by_index {
            func = match last {
                Some((address, index)) if address == func => index,
                _ => {
                    let index = crate::registry::index_of(callback.func())
                        .map_or(usize::MAX, |i| i as usize);
                    last = Some((func, index));
                    index
                }
            };
        }
        put(out, func);
        put(out, userdata);
    }
    for &end in arg_ends {
        put(out, end);
    }
    out.extend_from_slice(args);
    Ok(())
}

/// A batch as the worker receives it.
#[derive(Debug)]
pub struct DecodedBatch {
    /// The tasks.
    pub batch: Batch,
    /// How to run them.
    pub flags: RunFlags,
    /// The ids of the spill files whose descriptors came with the frame, in their order.
    pub attached: Vec<u64>,
    /// Where to write results above `flags.results_above` (a path, as bytes).
    pub results_folder: Vec<u8>,
}

/// Decodes a batch encoded by [`encode_batch`]; with `functions` (a spawned worker's registry),
/// callbacks are registry indices into it.
///
/// # Safety
/// Without `functions`, `buf` must come from `encode_batch` in this process or the process this
/// one was forked from, so that its callback addresses are valid here.
pub unsafe fn decode_batch(buf: &[u8], functions: Option<&[TaskFn]>) -> io::Result<DecodedBatch> {
    let mut r = Reader { buf, what: "batch" };
    let (first, count, args_len) = (r.word()?, r.word()?, r.word()?);
    let mut flags = RunFlags::from_bits(r.word()?)?;
    flags.call = r.word()? as u64;
    flags.results_above = r.word()? as u64;
    let folder_len = r.word()?;
    let results_folder = r.bytes(folder_len)?.to_vec();
    let forced_count = r.word()?;
    if forced_count > count {
        return Err(malformed("batch"));
    }
    let forced = r.words(forced_count)?;
    let spilled_count = r.word()?;
    if spilled_count > count {
        return Err(malformed("batch"));
    }
    let mut spilled = Vec::with_capacity(spilled_count);
    for _ in 0..spilled_count {
        let index = r.word()?;
        let (file, offset) = (r.word()? as u64, r.word()? as u64);
        let len = r.word()?;
        spilled.push((index, ArgRef { file, offset, len }));
    }
    let attached_count = r.word()?;
    let attached = r
        .words(attached_count)?
        .into_iter()
        .map(|id| id as u64)
        .collect();
    let raw = r.words(count.checked_mul(2).ok_or_else(|| malformed("batch"))?)?;
    let callbacks = match functions {
        Some(functions) => raw
            .chunks_exact(2)
            .map(|pair| {
                let func = *functions.get(pair[0]).ok_or_else(|| malformed("batch"))?;
                // SAFETY: a function this process registered, called without userdata, as the
                // spawn start method documents.
                Ok(unsafe { Callback::new(func, std::ptr::null_mut()) })
            })
            .collect::<io::Result<Vec<_>>>()?,
        // SAFETY: the caller guarantees the addresses came from `to_raw` in this address space
        // image.
        None => raw
            .chunks_exact(2)
            .map(|pair| unsafe { Callback::from_raw((pair[0], pair[1])) })
            .collect(),
    };
    let arg_ends = r.words(count)?;
    let args = r.bytes(args_len)?.to_vec();
    if arg_ends.windows(2).any(|w| w[0] > w[1])
        || arg_ends.last().is_some_and(|&end| end != args_len)
    {
        return Err(malformed("batch"));
    }
    let mut batch = Batch::from_parts(first, callbacks, args, arg_ends);
    // The worker only needs to know which tasks to skip; the failures themselves stay with the
    // parent.
    batch.forced = forced
        .into_iter()
        .map(|index| (index, TaskFailure::Spawn(String::new())))
        .collect();
    batch.spilled = spilled;
    Ok(DecodedBatch {
        batch,
        flags,
        attached,
        results_folder,
    })
}

/// Encodes `outcome` into `out` (cleared first). `files` lists the results that travel as descriptors with the
/// frame, as (task index, length), in the order of the descriptors.
pub fn encode_outcome(outcome: &BatchOutcome, files: &[(usize, usize)], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(48 + outcome.ends.len() * 8 + outcome.data.len());
    put(out, outcome.first);
    put(out, outcome.size);
    put(out, outcome.ends.len());
    put(out, outcome.data.len());
    for &end in &outcome.ends {
        put(out, end);
    }
    out.extend_from_slice(&outcome.data);
    match &outcome.failure {
        None => put(out, 0),
        Some((index, failure)) => put_failure(out, *index, failure),
    }
    put(out, outcome.errors.len());
    for (index, failure) in &outcome.errors {
        put_failure(out, *index, failure);
    }
    put(out, files.len());
    for &(index, len) in files {
        put(out, index);
        put(out, len);
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
        TaskFailure::Spawn(text) => {
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
        TaskFailure::TimedOut { limit, elapsed } => {
            put(out, 5);
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
                TaskFailure::Spawn(text)
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
        _ => Err(malformed(r.what)),
    }
}

/// Decodes an outcome encoded by [`encode_outcome`]; `worker` and `seconds` are the parent's to
/// fill. Also returns the (task index, length) of the results that came as descriptors.
pub fn decode_outcome(
    buf: &[u8],
    worker: usize,
) -> io::Result<(BatchOutcome, Vec<(usize, usize)>)> {
    let mut r = Reader {
        buf,
        what: "outcome",
    };
    let (first, size, completed, data_len) = (r.word()?, r.word()?, r.word()?, r.word()?);
    let ends = r.words(completed)?;
    let bytes = r.bytes(data_len)?;
    let mut data = Vec::new();
    data.try_reserve_exact(bytes.len())
        .map_err(|e| out_of_memory(bytes.len(), &e))?;
    data.extend_from_slice(bytes);
    if ends.windows(2).any(|w| w[0] > w[1]) || ends.last().is_some_and(|&end| end != data_len) {
        return Err(malformed("outcome"));
    }
    let failure = match r.word()? {
        0 => None,
        tag => Some(read_failure(&mut r, tag)?),
    };
    let error_count = r.word()?;
    if error_count > size {
        return Err(malformed("outcome"));
    }
    let mut errors = Vec::with_capacity(error_count);
    for _ in 0..error_count {
        let tag = r.word()?;
        errors.push(read_failure(&mut r, tag)?);
    }
    let file_count = r.word()?;
    if file_count > size {
        return Err(malformed("outcome"));
    }
    let mut files = Vec::with_capacity(file_count);
    for _ in 0..file_count {
        files.push((r.word()?, r.word()?));
    }
    let outcome = BatchOutcome {
        first,
        size,
        data,
        ends,
        failure,
        errors,
        mapped: Vec::new(),
        seconds: 0.0,
        worker,
        pid: 0,
    };
    Ok((outcome, files))
}

/// Writes one frame (length, then payload) to a socket.
pub fn send_frame(fd: RawFd, payload: &[u8]) -> io::Result<()> {
    send_frame_with_fds(fd, payload, &[])
}

/// Most descriptors one frame carries (a batch refers to few spill files).
pub const MAX_FDS_PER_FRAME: usize = 16;

/// Writes one frame, passing `fds` (at most [`MAX_FDS_PER_FRAME`]) to the peer with its header
/// (`SCM_RIGHTS`): the peer gets its own descriptors for the same open files.
pub fn send_frame_with_fds(fd: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let header = (payload.len() as u64).to_ne_bytes();
    if fds.is_empty() {
        send_all(fd, &header)?;
    } else {
        send_header_with_fds(fd, &header, fds)?;
    }
    send_all(fd, payload)
}

/// Room for the control message of [`MAX_FDS_PER_FRAME`] descriptors (u64s keep it aligned).
type ControlBuffer = [u64; 16];

const _: () = assert!(
    std::mem::size_of::<ControlBuffer>()
        >= std::mem::size_of::<libc::cmsghdr>() + MAX_FDS_PER_FRAME * 4 + 8
);

fn send_header_with_fds(fd: RawFd, header: &[u8; 8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one frame",
        ));
    }
    let mut control: ControlBuffer = [0; 16];
    let mut iov = libc::iovec {
        iov_base: header.as_ptr() as *mut libc::c_void,
        iov_len: header.len(),
    };
    let fds_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: msghdr is plain data; every pointer set below points into live local buffers large
    // enough for what the CMSG macros compute (checked by the assertion on ControlBuffer).
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(fds_bytes) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fds_bytes) as usize;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            fds_bytes as usize,
        );
        loop {
            let sent = libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL);
            if sent >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break sent;
            }
        }
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The descriptors went with the first byte; the rest of the header follows plainly.
    send_all(fd, &header[sent as usize..])
}

/// Reads one frame like [`recv_frame`], also receiving the descriptors sent with its header
/// (appended to `fds`, close-on-exec).
pub fn recv_frame_with_fds(
    fd: RawFd,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    period_ms: libc::c_int,
    alive: &dyn Fn() -> bool,
) -> io::Result<bool> {
    let watch = Watch { period_ms, alive };
    let mut header = [0u8; 8];
    wait_readable(fd, &watch)?;
    let got = recv_with_fds(fd, &mut header, fds)?;
    if got == 0 {
        return Ok(false);
    }
    if got < header.len() {
        recv_exact(fd, &mut header[got..], false, &watch)?;
    }
    let len = usize::try_from(u64::from_ne_bytes(header)).map_err(|_| malformed("oversized"))?;
    make_room(buf, len)?;
    recv_exact(fd, buf, false, &watch)?;
    Ok(true)
}

/// Empties `buf` and makes it `len` bytes long, without aborting when the memory cannot be had:
/// frames are sized by the tasks' data, so that is an [`io::ErrorKind::OutOfMemory`] error (the
/// frame is then unread: the stream cannot be used any more).
fn make_room(buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    buf.clear();
    buf.try_reserve_exact(len)
        .map_err(|e| out_of_memory(len, &e))?;
    buf.resize(len, 0);
    Ok(())
}

/// The error for `len` bytes that could not be allocated.
fn out_of_memory(len: usize, error: &std::collections::TryReserveError) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!("cannot allocate {len} bytes for a batch's frame: {error}"),
    )
}

/// One recvmsg into `bytes`, collecting any descriptors that come with them.
fn recv_with_fds(fd: RawFd, bytes: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut control: ControlBuffer = [0; 16];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data pointing into live local buffers; recvmsg fills at most their
    // sizes; the CMSG macros walk only what the kernel wrote (it updates msg_controllen), and each
    // received descriptor is a fresh one this process now owns.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of::<ControlBuffer>();
        let got = loop {
            let got = libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if got >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break got;
            }
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = data.cast::<RawFd>().add(i).read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(malformed("descriptor-carrying"));
        }
        Ok(got as usize)
    }
}

fn send_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live buffer of `bytes.len()` bytes; `fd` is a socket owned by the
        // caller for the duration of the call.
        let sent =
            unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if sent < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        bytes = &bytes[sent as usize..];
    }
    Ok(())
}

/// How often a blocked reader asks `alive` whether the peer still runs, unless told otherwise.
pub const LIVENESS_PERIOD_MS: libc::c_int = 100;

/// Reads one frame into `buf`. `Ok(false)` on a clean end of stream before a frame started; a
/// stream that ends inside a frame is an `UnexpectedEof` error (a worker that died mid-write).
/// While no data comes, `alive` is asked every `period_ms` milliseconds; when it says no, the read
/// fails with `BrokenPipe` even if the stream stays open.
pub fn recv_frame(
    fd: RawFd,
    buf: &mut Vec<u8>,
    period_ms: libc::c_int,
    alive: &dyn Fn() -> bool,
) -> io::Result<bool> {
    let watch = Watch { period_ms, alive };
    let mut header = [0u8; 8];
    if !recv_exact(fd, &mut header, true, &watch)? {
        return Ok(false);
    }
    let len = usize::try_from(u64::from_ne_bytes(header)).map_err(|_| malformed("oversized"))?;
    make_room(buf, len)?;
    recv_exact(fd, buf, false, &watch)?;
    Ok(true)
}

/// How a blocked reader checks on its peer.
struct Watch<'a> {
    period_ms: libc::c_int,
    alive: &'a dyn Fn() -> bool,
}

/// Blocks until `fd` is readable; fails when `watch.alive` says the peer is gone.
/// Waits until `fd` is readable (or the stream ended or failed), with a short yielding spin first
/// (see [`crate::spin`]: measured with `cargo bench --bench overhead`, batch_size 1 on processes
/// went from 13.7 to 7.0 us per task).
fn wait_readable(fd: RawFd, watch: &Watch<'_>) -> io::Result<()> {
    let readable_now = || {
        let mut poll_fd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; a zero timeout never blocks.
        // Readable, or the stream ended or failed (the read reports which); a failed poll is
        // left to the blocking loop, which handles errors.
        (unsafe { libc::poll(&mut poll_fd, 1, 0) } > 0).then_some(Ok(()))
    };
    crate::spin::wait(readable_now, || wait_readable_sleeping(fd, watch))
}

/// Waits in poll, checking `watch` every period.
fn wait_readable_sleeping(fd: RawFd, watch: &Watch<'_>) -> io::Result<()> {
    loop {
        let mut poll_fd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, watch.period_ms.max(1)) };
        if ready > 0 {
            return Ok(());
        }
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 && !(watch.alive)() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the worker is gone",
            ));
        }
    }
}

/// Fills `buf`; returns false when the stream ended before the first byte and `eof_ok`.
fn recv_exact(fd: RawFd, buf: &mut [u8], eof_ok: bool, watch: &Watch<'_>) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        wait_readable(fd, watch)?;
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes; `fd` is a socket owned by
        // the caller for the duration of the call.
        let got = unsafe { libc::recv(fd, rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if got == 0 {
            if filled == 0 && eof_ok {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the worker closed the stream mid-frame",
            ));
        }
        filled += got as usize;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskOutput;
    use std::ffi::c_void;
    use std::os::fd::AsRawFd;

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
            timed: true,
            collect: false,
            access: MapAccess::Private,
            call: 12,
            results_above: 1 << 20,
        };
        let batch = batch.retry_without(41, TaskFailure::Spawn("lost".into()));
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
            mapped: Vec::new(),
            seconds: 0.0,
            worker: 0,
            pid: 0,
        };
        encode_outcome(&outcome, &[(41, 5 << 20)], &mut buf);
        let (back, files) = decode_outcome(&buf, 1).unwrap();
        assert_eq!(files, vec![(41, 5 << 20)]);
        assert_eq!(
            (back.first, back.size, &back.data, &back.ends),
            (40, 5, &outcome.data, &outcome.ends)
        );
        assert_eq!(back.failure, outcome.failure);
        assert_eq!(back.errors, outcome.errors);
        assert!(
            decode_outcome(&buf[..buf.len() - 1], 1).is_err(),
            "a truncated frame is refused"
        );
    }

    #[test]
    fn a_reader_notices_a_dead_peer_whose_stream_stays_open() {
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let start = std::time::Instant::now();
        let err = recv_frame(b.as_raw_fd(), &mut Vec::new(), 100, &|| false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn frames_cross_a_socket_and_a_cut_frame_is_an_error() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let big = vec![7u8; 3 << 20];
        let writer = std::thread::spawn(move || {
            send_frame(a.as_raw_fd(), &big).unwrap();
            // A frame header promising more than what follows, then the end of the stream.
            send_all(a.as_raw_fd(), &100u64.to_ne_bytes()).unwrap();
            send_all(a.as_raw_fd(), b"short").unwrap();
        });
        let mut buf = Vec::new();
        assert!(recv_frame(b.as_raw_fd(), &mut buf, 100, &|| true).unwrap());
        assert_eq!(buf.len(), 3 << 20);
        writer.join().unwrap();
        let err = recv_frame(b.as_raw_fd(), &mut buf, 100, &|| true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
