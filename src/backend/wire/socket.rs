//! Frames on a socket: writes (with any descriptors attached) and reads that wait for data while
//! checking that the peer still lives. Sockets are written with `MSG_NOSIGNAL`, so a dead peer is
//! an error, never a SIGPIPE. Every call is rustix's (send, recv, sendmsg/recvmsg with
//! SCM_RIGHTS, poll); none retries on EINTR by itself, so each is wrapped in `retry_on_intr`.

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

/// Writes one frame (length, then payload) to a socket.
pub fn send_frame(fd: BorrowedFd<'_>, payload: &[u8]) -> io::Result<()> {
    send_frame_with_fds(fd, payload, &[])
}

/// Most descriptors one frame carries (a batch refers to few spill files).
pub const MAX_FDS_PER_FRAME: usize = 16;

/// Writes one frame, passing `fds` (at most [`MAX_FDS_PER_FRAME`]) to the peer with its header
/// (`SCM_RIGHTS`): the peer gets its own descriptors for the same open files.
pub fn send_frame_with_fds(
    fd: BorrowedFd<'_>,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let header = (payload.len() as u64).to_ne_bytes();
    if fds.is_empty() {
        send_all(fd, &header)?;
    } else {
        send_header_with_fds(fd, &header, fds)?;
    }
    send_all(fd, payload)
}

/// Room for the control message of [`MAX_FDS_PER_FRAME`] descriptors (on the stack: no
/// allocation per frame).
const CONTROL_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_FRAME));

fn send_header_with_fds(
    fd: BorrowedFd<'_>,
    header: &[u8; 8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let too_many = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one frame",
        )
    };
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(too_many());
    }
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(too_many());
    }
    let iov = [IoSlice::new(header)];
    let sent = retry_on_intr(|| sendmsg(fd, &iov, &mut control, SendFlags::NOSIGNAL))?;
    // The descriptors went with the first byte; the rest of the header follows plainly.
    send_all(fd, &header[sent..])
}

/// Reads one frame like [`recv_frame`], also receiving the descriptors sent with its header
/// (appended to `fds`, close-on-exec).
pub fn recv_frame_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    period_ms: i32,
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

/// Blocks until `fd` is readable; fails when `watch.alive` says the peer is gone.
/// Waits until `fd` is readable (or the stream ended or failed), with a short yielding spin first
/// (see [`crate::spin`]: measured with `cargo bench --bench overhead`, batch_size 1 on processes
/// went from 13.7 to 7.0 us per task).
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

/// Fills `buf`; returns false when the stream ended before the first byte and `eof_ok`.
fn recv_exact(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    eof_ok: bool,
    watch: &Watch<'_>,
) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        wait_readable(fd, watch)?;
        let rest = &mut buf[filled..];
        let (got, _) = retry_on_intr(|| recv(fd, &mut *rest, RecvFlags::empty()))?;
        if got == 0 {
            if filled == 0 && eof_ok {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the worker closed the stream mid-frame",
            ));
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
}
