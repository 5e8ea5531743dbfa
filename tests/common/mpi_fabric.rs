//! The in-process MPI fabric the loopback tests run pj's MPI backend over: a stand-in for the
//! shim's operations table (one mailbox per rank), rank 0 attached here with `pj_mpi_attach`,
//! ranks 1..N as threads running `pj_mpi_serve`. Included by the MPI tests with
//! `#[path = "common/mpi_fabric.rs"] mod mpi_fabric;` (next to `mod common;`).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};

use crate::common::check;
use pj::ffi::*;

/// One message in flight.
struct Message {
    source: c_int,
    tag: c_int,
    bytes: Vec<u8>,
}

/// Every rank's mailbox; `corrupt_hello_from`: a rank whose registry report is garbled on the way
/// (as if it had registered other functions).
struct Fabric {
    mailboxes: Vec<Mutex<VecDeque<Message>>>,
    corrupt_hello_from: Option<c_int>,
    /// 0: a message reaches its mailbox at once. Otherwise, as MPI's rendezvous over shared
    /// memory without single-copy support: a message travels `fragment` bytes per call its
    /// sender makes into the fabric (test or iprobe), and reaches the mailbox (and its send
    /// completes) only after its last fragment; each rank's messages leave in order.
    fragment: usize,
    /// By sender: its messages on their way (fragment mode).
    outboxes: Vec<Mutex<VecDeque<Outgoing>>>,
}

/// A message on its way in fragment mode, and the fragments it still needs.
struct Outgoing {
    dest: usize,
    message: Message,
    remaining: usize,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Fabric {
    /// Moves `rank`'s oldest message on by one fragment (`advance`), then delivers every message
    /// at the front that has no fragment left.
    fn progress(&self, rank: c_int, advance: bool) {
        if self.fragment == 0 {
            return;
        }
        let mut outbox = self.outboxes[rank as usize].lock().unwrap();
        if advance && let Some(front) = outbox.front_mut() {
            front.remaining = front.remaining.saturating_sub(1);
        }
        while outbox.front().is_some_and(|o| o.remaining == 0) {
            let Outgoing {
                dest,
                message,
                done,
                ..
            } = outbox.pop_front().unwrap();
            self.mailboxes[dest].lock().unwrap().push_back(message);
            done.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// A rank's end: its number and the fabric (the table's `context`).
struct Endpoint {
    rank: c_int,
    fabric: Arc<Fabric>,
}

/// A send completes at its second test, so that pj's wait for completion is exercised (in
/// fragment mode: once its message was delivered).
struct Request {
    tests: u32,
    delivered: Option<Arc<std::sync::atomic::AtomicBool>>,
    sender: c_int,
    fabric: Arc<Fabric>,
}

unsafe extern "C" fn isend(
    context: *mut c_void,
    dest: c_int,
    tag: c_int,
    data: *const u8,
    len: usize,
    request: *mut *mut c_void,
) -> c_int {
    // SAFETY: the context is the Endpoint this table was made with; pj passes `len` readable
    // bytes and a valid out-pointer.
    let (me, bytes) = unsafe {
        (
            &*context.cast::<Endpoint>(),
            std::slice::from_raw_parts(data, len),
        )
    };
    let mut bytes = bytes.to_vec();
    if tag == 1 && Some(me.rank) == me.fabric.corrupt_hello_from {
        bytes[0] ^= 0xff;
    }
    let Some(mailbox) = me.fabric.mailboxes.get(dest as usize) else {
        return 6; // MPI_ERR_RANK
    };
    let message = Message {
        source: me.rank,
        tag,
        bytes,
    };
    let mut delivered = None;
    if me.fabric.fragment == 0 {
        mailbox.lock().unwrap().push_back(message);
    } else {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        delivered = Some(Arc::clone(&done));
        me.fabric.outboxes[me.rank as usize]
            .lock()
            .unwrap()
            .push_back(Outgoing {
                dest: dest as usize,
                remaining: len.div_ceil(me.fabric.fragment).saturating_sub(1),
                message,
                done,
            });
        // A message of one fragment leaves at once (unless older ones are still on their way).
        me.fabric.progress(me.rank, false);
    }
    let pending = Request {
        tests: 0,
        delivered,
        sender: me.rank,
        fabric: Arc::clone(&me.fabric),
    };
    // SAFETY: a valid out-pointer (contract).
    unsafe { *request = Box::into_raw(Box::new(pending)).cast() };
    0
}

unsafe extern "C" fn test(_: *mut c_void, request: *mut c_void) -> c_int {
    // SAFETY: a request isend made, not yet reported complete.
    let pending = unsafe { &mut *request.cast::<Request>() };
    pending.tests += 1;
    if let Some(delivered) = &pending.delivered {
        pending.fabric.progress(pending.sender, true);
        if !delivered.load(std::sync::atomic::Ordering::Acquire) {
            return 0;
        }
    } else if pending.tests < 2 {
        return 0;
    }
    // SAFETY: complete: released once, as the table's contract says.
    drop(unsafe { Box::from_raw(request.cast::<Request>()) });
    1
}

unsafe extern "C" fn iprobe(
    context: *mut c_void,
    source: *mut c_int,
    tag: *mut c_int,
    len: *mut usize,
) -> c_int {
    // SAFETY: as in isend; the out-pointers are valid.
    let me = unsafe { &*context.cast::<Endpoint>() };
    me.fabric.progress(me.rank, true);
    let mailbox = me.fabric.mailboxes[me.rank as usize].lock().unwrap();
    let Some(first) = mailbox.front() else {
        return 0;
    };
    // SAFETY: valid out-pointers (contract).
    unsafe {
        *source = first.source;
        *tag = first.tag;
        *len = first.bytes.len();
    }
    1
}

unsafe extern "C" fn recv(
    context: *mut c_void,
    source: c_int,
    tag: c_int,
    data: *mut u8,
    len: usize,
) -> c_int {
    // SAFETY: as in isend; `data` has room for `len` bytes.
    let me = unsafe { &*context.cast::<Endpoint>() };
    let message = me.fabric.mailboxes[me.rank as usize]
        .lock()
        .unwrap()
        .pop_front()
        .expect("recv follows a successful iprobe");
    assert_eq!(
        (message.source, message.tag, message.bytes.len()),
        (source, tag, len)
    );
    // SAFETY: `len` bytes fit in `data`.
    unsafe { std::ptr::copy_nonoverlapping(message.bytes.as_ptr(), data, len) };
    if me.rank == 0 && len >= 1 << 20 {
        LARGE_RECEIVE_AT_RANK_0.store(data as usize, std::sync::atomic::Ordering::Relaxed);
    }
    0
}

/// Where rank 0 last received a message of 1 MiB or more (the address pj's recv wrote to).
pub static LARGE_RECEIVE_AT_RANK_0: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

fn table(rank: c_int, fabric: &Arc<Fabric>) -> pj_mpi_ops_t {
    let endpoint = Box::new(Endpoint {
        rank,
        fabric: Arc::clone(fabric),
    });
    pj_mpi_ops_t {
        // Leaked: the table must stay valid until detach, and a test process is short-lived.
        context: Box::into_raw(endpoint).cast(),
        rank,
        size: fabric.mailboxes.len() as c_int,
        isend: Some(isend),
        test: Some(test),
        iprobe: Some(iprobe),
        recv: Some(recv),
        max_message: MAX_MESSAGE,
    }
}

/// The fabric's message limit (MPI's is INT_MAX bytes), small enough to test the split messages.
pub const MAX_MESSAGE: usize = 16 << 20;

/// An MPI job of `size` ranks: attaches rank 0 here, runs the others on threads; returns them, to
/// join after `pj_mpi_detach` (with their exit statuses).
pub fn start_job(
    size: usize,
    corrupt_hello_from: Option<c_int>,
) -> Vec<std::thread::JoinHandle<c_int>> {
    start_fabric(size, corrupt_hello_from, 0)
}

/// [`start_job`] over a fabric that moves messages above `fragment` bytes only while their
/// sender calls into it, `fragment` bytes per call (see [`Fabric`]'s fragment mode).
pub fn start_job_fragmented(size: usize, fragment: usize) -> Vec<std::thread::JoinHandle<c_int>> {
    start_fabric(size, None, fragment)
}

fn start_fabric(
    size: usize,
    corrupt_hello_from: Option<c_int>,
    fragment: usize,
) -> Vec<std::thread::JoinHandle<c_int>> {
    let fabric = Arc::new(Fabric {
        mailboxes: (0..size).map(|_| Mutex::default()).collect(),
        corrupt_hello_from,
        fragment,
        outboxes: (0..size).map(|_| Mutex::default()).collect(),
    });
    let workers = (1..size as c_int)
        .map(|rank| {
            let ops = table(rank, &fabric);
            let ops = SendOps(ops);
            std::thread::spawn(move || {
                let ops = ops;
                pj_mpi_serve(&ops.0)
            })
        })
        .collect();
    let ops = table(0, &fabric);
    let mut err = std::ptr::null_mut();
    check(pj_mpi_attach(&ops, &mut err), err).unwrap();
    workers
}

pub struct SendOps(pub pj_mpi_ops_t);
// SAFETY: the endpoint behind the context is Sync (mailboxes behind mutexes).
unsafe impl Send for SendOps {}

pub fn end_job(workers: Vec<std::thread::JoinHandle<c_int>>) -> Vec<c_int> {
    let (lost, statuses) = detach_job(workers);
    assert_eq!(lost, 0, "no rank was given up");
    statuses
}

/// Detaches rank 0 and joins the worker ranks: what `pj_mpi_detach` returned (the ranks given up)
/// and each worker rank's exit status.
pub fn detach_job(workers: Vec<std::thread::JoinHandle<c_int>>) -> (c_int, Vec<c_int>) {
    let lost = pj_mpi_detach();
    (
        lost,
        workers.into_iter().map(|w| w.join().unwrap()).collect(),
    )
}
