//! The process backend's wire, measured against the alternative the design left open: a
//! shared-memory ring. Issue #4 asks for both to be measured before choosing.
//!
//! A parent and a forked child exchange request/reply frames, as a proxy and its worker do for
//! each batch: the parent writes a frame of `size` bytes, the child reads all of it and replies
//! with a frame of the same size, and the parent reads that. Printed: microseconds per round trip
//! and the throughput in MB/s, for a batch of one 8-byte task (latency) and for batches of 8,192
//! and 131,072 tasks (bandwidth), over
//! - `socket`: pj's transport (a socketpair, one frame = header + payload, blocking reads);
//! - `ring, futex`: a single-producer single-consumer byte ring per direction in a MAP_SHARED
//!   mapping, the reader sleeping on a futex when the ring is empty;
//! - `ring, spin 20us`: the same ring, the reader spinning up to 20 µs before sleeping.
//!
//! `cargo bench --bench transport`; under `cargo test --all-targets` it runs a few round trips
//! as a smoke test.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes of each ring's data area (a power of two).
const RING: usize = 1 << 20;

/// One direction: a byte ring with free-running head (written by the producer) and tail (by the
/// consumer), and a futex word the consumer sleeps on.
#[repr(C)]
struct Ring {
    head: AtomicU64,
    tail: AtomicU64,
    /// Bumped by the producer after each write; the consumer waits on it.
    seq: AtomicU32,
    /// Set by a consumer about to sleep, so the producer knows to wake it.
    sleeping: AtomicU32,
    data: [u8; RING],
}

/// How a reader waits for data.
#[derive(Clone, Copy)]
enum Wait {
    Futex,
    Spin(Duration),
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live, aligned u32 in a shared mapping (no FUTEX_PRIVATE_FLAG, since
    // the word is shared between processes).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32 in a shared mapping.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

impl Ring {
    /// Writes all of `bytes`, waiting for room as needed (the consumer frees it).
    fn write(&self, mut bytes: &[u8], wait: Wait) {
        while !bytes.is_empty() {
            let head = self.head.load(Ordering::Relaxed);
            let tail = self.tail.load(Ordering::Acquire);
            let room = RING - (head - tail) as usize;
            if room == 0 {
                std::hint::spin_loop();
                continue;
            }
            let n = room.min(bytes.len());
            let at = head as usize % RING;
            let first = n.min(RING - at);
            // SAFETY: the ring's data area is RING bytes; [at, at+first) and [0, n-first) are in
            // bounds and not being read (they lie between head and tail + RING).
            unsafe {
                let data = self.data.as_ptr() as *mut u8;
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(at), first);
                std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, n - first);
            }
            self.head.store(head + n as u64, Ordering::Release);
            self.seq.fetch_add(1, Ordering::Release);
            if self.sleeping.load(Ordering::SeqCst) != 0 {
                futex_wake(&self.seq);
            }
            bytes = &bytes[n..];
        }
        let _ = wait;
    }

    /// Reads exactly `out.len()` bytes, waiting as `wait` says.
    fn read(&self, out: &mut [u8], wait: Wait) {
        let mut filled = 0;
        while filled < out.len() {
            let tail = self.tail.load(Ordering::Relaxed);
            let head = self.wait_for_data(tail, wait);
            let n = ((head - tail) as usize).min(out.len() - filled);
            let at = tail as usize % RING;
            let first = n.min(RING - at);
            // SAFETY: [tail, tail+n) was published by the producer (Acquire on head).
            unsafe {
                let data = self.data.as_ptr();
                std::ptr::copy_nonoverlapping(data.add(at), out.as_mut_ptr().add(filled), first);
                std::ptr::copy_nonoverlapping(
                    data,
                    out.as_mut_ptr().add(filled + first),
                    n - first,
                );
            }
            self.tail.store(tail + n as u64, Ordering::Release);
            filled += n;
        }
    }

    /// Returns the head once it is past `tail`.
    fn wait_for_data(&self, tail: u64, wait: Wait) -> u64 {
        if let Wait::Spin(budget) = wait {
            let start = Instant::now();
            loop {
                let head = self.head.load(Ordering::Acquire);
                if head != tail {
                    return head;
                }
                if start.elapsed() > budget {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            let head = self.head.load(Ordering::Acquire);
            if head != tail {
                return head;
            }
            self.sleeping.store(1, Ordering::SeqCst);
            if self.head.load(Ordering::SeqCst) == tail {
                futex_wait(&self.seq, seq);
            }
            self.sleeping.store(0, Ordering::SeqCst);
        }
    }
}

/// Two rings in one shared mapping, surviving fork.
struct Rings {
    ptr: *mut [Ring; 2],
}

impl Rings {
    fn new() -> Rings {
        let len = std::mem::size_of::<[Ring; 2]>();
        // SAFETY: an anonymous shared mapping, zero-filled (a valid pair of empty rings).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Rings { ptr: ptr.cast() }
    }

    fn to_child(&self) -> &Ring {
        // SAFETY: the mapping lives until drop.
        unsafe { &(*self.ptr)[0] }
    }

    fn to_parent(&self) -> &Ring {
        // SAFETY: as above.
        unsafe { &(*self.ptr)[1] }
    }
}

impl Drop for Rings {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), std::mem::size_of::<[Ring; 2]>()) };
    }
}

/// A frame: 8-byte length, then the payload.
fn ring_round_trips(size: usize, trips: usize, wait: Wait) -> Duration {
    let rings = Rings::new();
    let payload = vec![7u8; size];
    // SAFETY: the child only runs the echo loop below and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut buf = vec![0u8; size];
        for _ in 0..trips {
            let mut header = [0u8; 8];
            rings.to_child().read(&mut header, wait);
            let len = u64::from_ne_bytes(header) as usize;
            rings.to_child().read(&mut buf[..len], wait);
            rings.to_parent().write(&header, wait);
            rings.to_parent().write(&buf[..len], wait);
        }
        // SAFETY: leaving the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut back = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..trips {
        let header = (size as u64).to_ne_bytes();
        rings.to_child().write(&header, wait);
        rings.to_child().write(&payload, wait);
        let mut reply = [0u8; 8];
        rings.to_parent().read(&mut reply, wait);
        rings.to_parent().read(&mut back, wait);
    }
    let elapsed = start.elapsed();
    reap(pid);
    assert_eq!(back, payload);
    elapsed
}

fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: a live buffer and an open socket.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        assert!(n > 0, "send failed");
        bytes = &bytes[n as usize..];
    }
}

fn read_exact(fd: i32, out: &mut [u8]) {
    let mut filled = 0;
    while filled < out.len() {
        // SAFETY: a live buffer and an open socket.
        let n = unsafe { libc::recv(fd, out[filled..].as_mut_ptr().cast(), out.len() - filled, 0) };
        assert!(n > 0, "recv failed");
        filled += n as usize;
    }
}

fn socket_round_trips(size: usize, trips: usize) -> Duration {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two descriptors.
    let created =
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    assert_eq!(created, 0);
    let payload = vec![7u8; size];
    // SAFETY: the child only runs the echo loop below and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let fd = fds[1];
        let mut buf = vec![0u8; size];
        for _ in 0..trips {
            let mut header = [0u8; 8];
            read_exact(fd, &mut header);
            let len = u64::from_ne_bytes(header) as usize;
            read_exact(fd, &mut buf[..len]);
            write_all(fd, &header);
            write_all(fd, &buf[..len]);
        }
        // SAFETY: leaving the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let fd = fds[0];
    let mut back = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..trips {
        write_all(fd, &(size as u64).to_ne_bytes());
        write_all(fd, &payload);
        let mut reply = [0u8; 8];
        read_exact(fd, &mut reply);
        read_exact(fd, &mut back);
    }
    let elapsed = start.elapsed();
    reap(pid);
    // SAFETY: closing the pair we created.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert_eq!(back, payload);
    elapsed
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn median(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let runs = if benching { 5 } else { 1 };
    println!(
        "parent <-> forked worker, request and reply of the same size; median of {runs} runs [min-max]"
    );
    let sizes = [
        (8usize, "1 task (8 B)"),
        (64 << 10, "8,192 tasks (64 KiB)"),
        (1 << 20, "131,072 tasks (1 MiB)"),
    ];
    for (size, label) in sizes {
        let trips = match (benching, size) {
            (false, _) => 10,
            (true, 8) => 20_000,
            (true, s) if s <= 64 << 10 => 5_000,
            (true, _) => 500,
        };
        let transports: [(&str, &dyn Fn() -> Duration); 3] = [
            ("socket", &|| socket_round_trips(size, trips)),
            ("ring, futex", &|| {
                ring_round_trips(size, trips, Wait::Futex)
            }),
            ("ring, spin 20us", &|| {
                ring_round_trips(size, trips, Wait::Spin(Duration::from_micros(20)))
            }),
        ];
        for (name, run) in transports {
            let us: Vec<f64> = (0..runs)
                .map(|_| run().as_secs_f64() * 1e6 / trips as f64)
                .collect();
            let (med, min, max) = median(us);
            let mb_per_s = 2.0 * size as f64 / med; // bytes per µs = MB/s
            println!(
                "{label:<22} {name:<16} {med:>9.2} us/round trip [{min:.2}-{max:.2}]  {mb_per_s:>8.0} MB/s"
            );
        }
    }
}
