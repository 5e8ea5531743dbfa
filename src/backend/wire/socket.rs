//! Frames on a socket: writes (with any descriptors attached) and reads that wait for data while
//! checking that the peer still lives. Sockets are written with `MSG_NOSIGNAL`, so a dead peer is
//! an error, never a SIGPIPE.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::{malformed, out_of_memory};

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
    use std::os::fd::AsRawFd;

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
