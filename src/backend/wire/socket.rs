//! Frames on a socket: writes (with any descriptors attached) and reads that wait for data while
//! checking that the peer still lives. Sockets are written with `MSG_NOSIGNAL`, so a dead peer is
//! an error, never a SIGPIPE. Every call is rustix's (send, recv, sendmsg/recvmsg with
//! SCM_RIGHTS, poll); none retries on EINTR by itself, so each is wrapped in `retry_on_intr` or
//! loops on `EINTR` itself.
//!
//! Batches and outcomes travel as two-part frames ([`send_parts`], [`recv_parts`]): a small
//! `meta` part and a `bulk` part (the argument or result bytes), written together from where they
//! lie and read into separate buffers, so that the bulk bytes are never copied by pj on their way.
//! The spawn handshake uses single-part frames ([`send_frame`], [`recv_frame`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::retry_on_intr;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recv, recvmsg, send, sendmsg,
};

use super::{malformed, out_of_memory};

/// Writes one single-part frame (length, then payload) to a socket: the spawn handshake's.
pub fn send_frame(fd: BorrowedFd<'_>, payload: &[u8]) -> io::Result<()> {
    send_all(fd, &(payload.len() as u64).to_ne_bytes())?;
    send_all(fd, payload)
}

/// Most descriptors one frame carries (a batch refers to few spill files).
pub const MAX_FDS_PER_FRAME: usize = 16;

/// Room for the control message of [`MAX_FDS_PER_FRAME`] descriptors (on the stack: no
/// allocation per frame).
const CONTROL_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_FRAME));

/// Writes one two-part frame: a 16-byte header (the lengths of `meta` and `bulk`), then `meta`,
/// then `bulk`, gathered by the kernel from where they lie (`sendmsg` over three slices: neither
/// part is copied into a frame buffer first). `fds` (at most [`MAX_FDS_PER_FRAME`]) travel with the
/// first byte (`SCM_RIGHTS`): the peer gets its own descriptors for the same open files. Blocks
/// until the whole frame is in the socket.
pub fn send_parts(
    fd: BorrowedFd<'_>,
    meta: &[u8],
    bulk: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    write_parts(fd, meta, bulk, fds, None)
}

/// [`send_parts`] for a peer that may stop reading (a worker stopped, or stuck before it reads
/// its batch). `fd` must have a send timeout (`SO_SNDTIMEO`, [`bound_sends`]): each time a write
/// makes no progress for that long, `alive` is asked, as [`recv_parts`] does while no data comes;
/// when it says no, the write fails with `BrokenPipe` (the peer may have read part of the frame:
/// the stream cannot be used any more). The writes block in the kernel as [`send_parts`]'s do
/// (waking as soon as the peer makes room), so a peer that reads costs nothing more.
pub fn send_parts_watched(
    fd: BorrowedFd<'_>,
    meta: &[u8],
    bulk: &[u8],
    fds: &[BorrowedFd<'_>],
    alive: &dyn Fn() -> bool,
) -> io::Result<()> {
    write_parts(fd, meta, bulk, fds, Some(alive))
}

/// Gives `fd` the send timeout [`send_parts_watched`] needs: a write that makes no progress for
/// [`LIVENESS_PERIOD_MS`] returns, so that the writer can check on its peer.
pub fn bound_sends(fd: BorrowedFd<'_>) -> io::Result<()> {
    let period = std::time::Duration::from_millis(LIVENESS_PERIOD_MS as u64);
    rustix::net::sockopt::set_socket_timeout(fd, rustix::net::sockopt::Timeout::Send, Some(period))
        .map_err(io::Error::from)
}

/// [`send_parts`]; with `alive`, a write that times out (see [`send_parts_watched`]) asks it
/// whether to go on.
fn write_parts(
    fd: BorrowedFd<'_>,
    meta: &[u8],
    bulk: &[u8],
    fds: &[BorrowedFd<'_>],
    alive: Option<&dyn Fn() -> bool>,
) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(too_many_fds());
    }
    let header = parts_header(meta.len(), bulk.len());
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(too_many_fds());
    }
    let mut first = true;
    write_all_vectored([&header[..], meta, bulk], |slices| {
        loop {
            let sent = if first {
                retry_on_intr(|| sendmsg(fd, slices, &mut control, SendFlags::NOSIGNAL))
            } else {
                let mut none = SendAncillaryBuffer::default();
                retry_on_intr(|| sendmsg(fd, slices, &mut none, SendFlags::NOSIGNAL))
            };
            match (sent, alive) {
                (Ok(sent), _) => {
                    // The descriptors went with the first bytes.
                    first = false;
                    return Ok(sent);
                }
                // The send timeout passed without progress: the peer is not reading.
                (Err(rustix::io::Errno::AGAIN), Some(alive)) => {
                    if !alive() {
                        return Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the worker stopped reading",
                        ));
                    }
                }
                (Err(error), _) => return Err(error.into()),
            }
        }
    })
}

/// Fault injection (feature `failpoints`): writes the header of a two-part frame of `meta` and
/// `bulk` and only half of its parts, as a writer cut short would, and fails as that writer.
#[cfg(feature = "failpoints")]
pub fn send_truncated(fd: BorrowedFd<'_>, meta: &[u8], bulk: &[u8]) -> io::Result<()> {
    let header = parts_header(meta.len(), bulk.len());
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(meta);
    bytes.extend_from_slice(bulk);
    let keep = header.len() + (bytes.len() - header.len()) / 2;
    send_all(fd, &bytes[..keep])?;
    Err(io::Error::new(
        io::ErrorKind::WriteZero,
        "failpoint: the frame was cut short",
    ))
}

/// The header of a two-part frame: the lengths of its two parts.
fn parts_header(meta: usize, bulk: usize) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&(meta as u64).to_ne_bytes());
    header[8..].copy_from_slice(&(bulk as u64).to_ne_bytes());
    header
}

fn too_many_fds() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many descriptors for one frame",
    )
}

/// Writes every byte of `parts`, in order, through `write` (one vectored write: it returns how
/// many bytes it took, possibly fewer than offered), offering what is left after a short write.
fn write_all_vectored(
    parts: [&[u8]; 3],
    mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
) -> io::Result<()> {
    let mut slices = parts.map(IoSlice::new);
    let mut rest = &mut slices[..];
    // Leading empty parts are skipped (a write of nothing would look like a full socket).
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        let sent = write(rest)?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the socket took no byte of the frame",
            ));
        }
        IoSlice::advance_slices(&mut rest, sent);
    }
    Ok(())
}

/// Reads one two-part frame written by [`send_parts`]: its first part into `meta`, its second
/// into `bulk` (each emptied first and resized to its part; memory they already have is reused,
/// and `bulk` is never zero-filled before the bytes land), the descriptors sent with it appended
/// to `fds` (close-on-exec). `Ok(false)` on a clean end of stream before a frame started; a stream
/// that ends inside a frame is an `UnexpectedEof` error (a peer that died mid-write). While no
/// data comes, `alive` is asked every `period_ms` milliseconds; when it says no, the read fails
/// with `BrokenPipe`. A part that cannot be allocated is an [`io::ErrorKind::OutOfMemory`] error:
/// for the bulk part, after the frame was read whole (its bulk bytes dropped, its meta part in
/// `meta`: the stream goes on); for the meta part (then empty), with the frame unread (the stream
/// cannot be used any more).
pub fn recv_parts(
    fd: BorrowedFd<'_>,
    meta: &mut Vec<u8>,
    bulk: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    period_ms: i32,
    alive: &dyn Fn() -> bool,
) -> io::Result<bool> {
    let watch = Watch { period_ms, alive };
    let mut header = [0u8; 16];
    wait_readable(fd, &watch)?;
    let got = recv_with_fds(fd, &mut header, fds)?;
    if got == 0 {
        return Ok(false);
    }
    if got < header.len() {
        recv_exact(fd, &mut header[got..], false, &watch)?;
    }
    let length = |at: usize| {
        let word: [u8; 8] = header[at..at + 8].try_into().unwrap_or_default();
        usize::try_from(u64::from_ne_bytes(word)).map_err(|_| malformed("oversized"))
    };
    let (meta_len, bulk_len) = (length(0)?, length(8)?);
    make_room(meta, meta_len)?;
    recv_exact(fd, meta, false, &watch)?;
    bulk.clear();
    if let Err(error) = bulk.try_reserve_exact(bulk_len) {
        // Read past the bytes that have nowhere to go: the stream stays usable, and the caller
        // still has the meta part to answer the frame with.
        discard(fd, bulk_len, &watch)?;
        return Err(out_of_memory(bulk_len, &error));
    }
    recv_uninit(fd, bulk, bulk_len, &watch)?;
    Ok(true)
}

/// Reads `len` bytes from `fd` and drops them.
fn discard(fd: BorrowedFd<'_>, mut len: usize, watch: &Watch<'_>) -> io::Result<()> {
    let mut scrap = [0u8; 16 << 10];
    while len > 0 {
        let take = len.min(scrap.len());
        recv_exact(fd, &mut scrap[..take], false, watch)?;
        len -= take;
    }
    Ok(())
}

/// Appends `len` bytes from `fd` to `buf` (which has room for them), straight into its spare
/// capacity: nothing is written to that memory before the bytes arrive.
fn recv_uninit(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    len: usize,
    watch: &Watch<'_>,
) -> io::Result<()> {
    let end = buf.len() + len;
    while buf.len() < end {
        let want = end - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want];
        let got = match recv(fd, spare, RecvFlags::DONTWAIT) {
            Ok(((filled, _), _)) => filled.len(),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                wait_readable(fd, watch)?;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if got == 0 {
            return Err(cut_short());
        }
        // SAFETY: recv initialised the first `got` bytes of the spare capacity (`got <= want`,
        // which is within the capacity reserved by the caller).
        unsafe { buf.set_len(buf.len() + got) };
    }
    Ok(())
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the worker closed the stream mid-frame",
    )
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

/// One recvmsg into `bytes`, collecting any descriptors that come with them (each a fresh one
/// this process now owns; any not collected are closed with the control buffer).
fn recv_with_fds(
    fd: BorrowedFd<'_>,
    bytes: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(bytes)];
    let got = retry_on_intr(|| recvmsg(fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC))?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(malformed("descriptor-carrying"));
    }
    Ok(got.bytes)
}

fn send_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let sent = retry_on_intr(|| send(fd, bytes, SendFlags::NOSIGNAL))?;
        bytes = &bytes[sent..];
    }
    Ok(())
}

/// How often a blocked reader asks `alive` whether the peer still runs, unless told otherwise.
pub const LIVENESS_PERIOD_MS: i32 = 100;

/// Reads one frame into `buf`. `Ok(false)` on a clean end of stream before a frame started; a
/// stream that ends inside a frame is an `UnexpectedEof` error (a worker that died mid-write).
/// While no data comes, `alive` is asked every `period_ms` milliseconds; when it says no, the read
/// fails with `BrokenPipe` even if the stream stays open.
pub fn recv_frame(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    period_ms: i32,
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
    period_ms: i32,
    alive: &'a dyn Fn() -> bool,
}

/// Polls `fd` for input for at most `timeout`: the number of ready descriptors (0 or 1).
fn poll_readable(fd: BorrowedFd<'_>, timeout: &Timespec) -> io::Result<usize> {
    let mut poll_fd = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    Ok(poll(&mut poll_fd, Some(timeout))?)
}

/// Waits until `fd` is readable (or the stream ended or failed; fails when `watch.alive` says the
/// peer is gone), with a short yielding spin first (see [`crate::spin`]: measured with `cargo
/// bench --bench overhead`, batch_size 1 on processes went from 13.7 to 7.0 us per task).
fn wait_readable(fd: BorrowedFd<'_>, watch: &Watch<'_>) -> io::Result<()> {
    const NOW: Timespec = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Readable, or the stream ended or failed (the read reports which); a failed poll is left to
    // the blocking loop, which handles errors.
    let readable_now = || matches!(poll_readable(fd, &NOW), Ok(1..)).then_some(Ok(()));
    crate::spin::wait(readable_now, || wait_readable_sleeping(fd, watch))
}

/// Waits in poll, checking `watch` every period.
fn wait_readable_sleeping(fd: BorrowedFd<'_>, watch: &Watch<'_>) -> io::Result<()> {
    let period_ms = watch.period_ms.max(1);
    let period = Timespec {
        tv_sec: i64::from(period_ms / 1000),
        tv_nsec: i64::from(period_ms % 1000) * 1_000_000,
    };
    loop {
        match poll_readable(fd, &period) {
            Ok(0) => {
                if !(watch.alive)() {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the worker is gone",
                    ));
                }
            }
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Fills `buf`; returns false when the stream ended before the first byte and `eof_ok`. Each
/// read is tried first and waited for only when nothing is there (the rest of a frame usually is:
/// no poll before it).
fn recv_exact(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    eof_ok: bool,
    watch: &Watch<'_>,
) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let got = match recv(fd, &mut buf[filled..], RecvFlags::DONTWAIT) {
            Ok((got, _)) => got,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                wait_readable(fd, watch)?;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if got == 0 {
            if filled == 0 && eof_ok {
                return Ok(false);
            }
            return Err(cut_short());
        }
        filled += got;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_reader_notices_a_dead_peer_whose_stream_stays_open() {
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let start = std::time::Instant::now();
        let err = recv_frame(b.as_fd(), &mut Vec::new(), 100, &|| false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn frames_cross_a_socket_and_a_cut_frame_is_an_error() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let big = vec![7u8; 3 << 20];
        let writer = std::thread::spawn(move || {
            send_frame(a.as_fd(), &big).unwrap();
            // A frame header promising more than what follows, then the end of the stream.
            send_all(a.as_fd(), &100u64.to_ne_bytes()).unwrap();
            send_all(a.as_fd(), b"short").unwrap();
        });
        let mut buf = Vec::new();
        assert!(recv_frame(b.as_fd(), &mut buf, 100, &|| true).unwrap());
        assert_eq!(buf.len(), 3 << 20);
        writer.join().unwrap();
        let err = recv_frame(b.as_fd(), &mut buf, 100, &|| true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// The bytes `send_parts` writes for (meta, bulk).
    fn frame_bytes(meta: &[u8], bulk: &[u8]) -> Vec<u8> {
        let mut bytes = parts_header(meta.len(), bulk.len()).to_vec();
        bytes.extend_from_slice(meta);
        bytes.extend_from_slice(bulk);
        bytes
    }

    #[test]
    fn a_vectored_write_goes_on_after_a_short_write_at_every_boundary() {
        let (meta, bulk) = (b"meta-part", b"and the bulk bytes");
        for (meta, bulk) in [
            (&meta[..], &bulk[..]),
            (&[][..], &bulk[..]),
            (&meta[..], &[][..]),
        ] {
            let header = parts_header(meta.len(), bulk.len());
            let expected = frame_bytes(meta, bulk);
            // Each write takes at most `step` bytes: short writes land everywhere, inside the
            // header, between the parts and inside each of them.
            for step in 1..=expected.len() {
                let mut written = Vec::new();
                let mut calls = 0;
                write_all_vectored([&header[..], meta, bulk], |slices| {
                    calls += 1;
                    assert!(slices.iter().any(|s| !s.is_empty()), "something is offered");
                    let mut left = step;
                    for slice in slices {
                        let take = slice.len().min(left);
                        written.extend_from_slice(&slice[..take]);
                        left -= take;
                    }
                    Ok(step - left)
                })
                .unwrap();
                assert_eq!(written, expected, "step {step}");
                assert_eq!(calls, expected.len().div_ceil(step), "step {step}");
            }
        }
        let refused = write_all_vectored([&b"x"[..], b"", b""], |_| Ok(0)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WriteZero);
    }

    #[test]
    fn a_frame_that_arrives_one_byte_at_a_time_is_read_whole_with_its_descriptors() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let queued = b.try_clone().unwrap();
        let file = tempfile_fd();
        let frames = [
            frame_bytes(b"first meta", b"first bulk: a few bytes"),
            frame_bytes(b"", b"no meta"),
            frame_bytes(b"no bulk", b""),
        ];
        let sent = frames.clone();
        let writer = std::thread::spawn(move || {
            for (n, frame) in sent.iter().enumerate() {
                for (at, byte) in frame.iter().enumerate() {
                    if n == 0 && at == 0 {
                        // The descriptor goes with the frame's first byte, as `send_parts` sends it.
                        let fds = [file.as_fd()];
                        let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
                        let mut control = SendAncillaryBuffer::new(&mut space);
                        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
                        let iov = [IoSlice::new(std::slice::from_ref(byte))];
                        sendmsg(a.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL).unwrap();
                    } else {
                        send_all(a.as_fd(), std::slice::from_ref(byte)).unwrap();
                    }
                    // The next byte is sent only once the reader took this one: every read
                    // returns one byte.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    while rustix::io::ioctl_fionread(queued.as_fd()).unwrap() > 0 {
                        assert!(std::time::Instant::now() < deadline, "the reader stalled");
                        std::thread::yield_now();
                    }
                }
            }
        });
        let (mut meta, mut bulk, mut fds) = (Vec::new(), Vec::new(), Vec::new());
        for frame in &frames {
            assert!(recv_parts(b.as_fd(), &mut meta, &mut bulk, &mut fds, 100, &|| true).unwrap());
            let mut whole = parts_header(meta.len(), bulk.len()).to_vec();
            whole.extend_from_slice(&meta);
            whole.extend_from_slice(&bulk);
            assert_eq!(&whole, frame);
        }
        assert_eq!(fds.len(), 1, "the descriptor came with the first frame");
        writer.join().unwrap();
        assert!(
            !recv_parts(b.as_fd(), &mut meta, &mut bulk, &mut fds, 100, &|| true).unwrap(),
            "a clean end of stream between frames"
        );
    }

    /// A descriptor of an open file, to pass over a socket.
    fn tempfile_fd() -> OwnedFd {
        rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn frames_cut_anywhere_are_an_error_and_never_a_clean_end() {
        let frame = frame_bytes(b"some meta", b"bulk bytes");
        for cut in 1..frame.len() {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            send_all(a.as_fd(), &frame[..cut]).unwrap();
            drop(a);
            let (mut meta, mut bulk) = (Vec::new(), Vec::new());
            let err = recv_parts(
                b.as_fd(),
                &mut meta,
                &mut bulk,
                &mut Vec::new(),
                100,
                &|| true,
            )
            .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[test]
    fn large_parts_cross_a_socket_from_where_they_lie_into_reused_buffers() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // A small send buffer: the kernel takes the frame in many pieces.
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
        let bulk: Vec<u8> = (0..(3 << 20) + 7).map(|i| (i % 251) as u8).collect();
        let small: Vec<u8> = bulk[..1000].to_vec();
        let meta = vec![9u8; 4099];
        let (sent_bulk, sent_small, sent_meta) = (bulk.clone(), small.clone(), meta.clone());
        let writer = std::thread::spawn(move || {
            send_parts(a.as_fd(), &sent_meta, &sent_bulk, &[]).unwrap();
            send_parts(a.as_fd(), b"m", &sent_small, &[]).unwrap();
            // A frame promising more than what follows, then the end of the stream.
            send_all(a.as_fd(), &parts_header(1, 100)).unwrap();
            send_all(a.as_fd(), b"mshort").unwrap();
        });
        let (mut got_meta, mut got_bulk) = (Vec::new(), Vec::new());
        let mut fds = Vec::new();
        assert!(
            recv_parts(
                b.as_fd(),
                &mut got_meta,
                &mut got_bulk,
                &mut fds,
                100,
                &|| true
            )
            .unwrap()
        );
        assert!(got_meta == meta && got_bulk == bulk);
        let at = got_bulk.as_ptr();
        assert!(
            recv_parts(
                b.as_fd(),
                &mut got_meta,
                &mut got_bulk,
                &mut fds,
                100,
                &|| true
            )
            .unwrap()
        );
        assert!(got_meta == b"m" && got_bulk == small);
        assert_eq!(
            got_bulk.as_ptr(),
            at,
            "the second frame reused the first one's memory"
        );
        writer.join().unwrap();
        let err = recv_parts(
            b.as_fd(),
            &mut got_meta,
            &mut got_bulk,
            &mut fds,
            100,
            &|| true,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(fds.is_empty());
    }
}
