//! The MPI backend keeps a large message moving. MPI moves a large message only while its sender
//! calls into MPI (Open MPI's shared-memory transport without single-copy support pushes each
//! fragment from inside the sender's MPI_Test or MPI_Iprobe): here, over the in-process fabric in
//! its fragment mode (2 KiB per call of the sender), an 8 MiB argument and an 8 MiB result need
//! 4,096 calls each from their senders. A sender that slept between its polls (from 20 us up to
//! 10 ms) took about half a minute for them; one that polls without sleeping while its send is
//! in flight takes milliseconds. And once the call is done, the ranks are idle again: they must
//! not keep spinning. And rank 0 hands a large result to the caller in the memory MPI received
//! it into, with no copy.
//!
//! A test process of its own: an attachment is process-wide.

mod common;
#[path = "common/mpi_fabric.rs"]
mod mpi_fabric;

use std::ffi::c_void;
use std::time::{Duration, Instant};

use common::*;
use mpi_fabric::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Task: returns its argument.
unsafe extern "C" fn echo(_: *mut c_void, arg: *const u8, len: usize, out: *mut TaskOutput) -> i32 {
    pj_out_set(out, arg, len);
    0
}

/// CPU time of this process (rank 0's dispatcher and the worker rank are threads of it).
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0);
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[test]
fn large_messages_move_while_their_sender_polls_and_idle_ranks_do_not_spin() {
    assert_eq!(
        pj_register(c"echo".as_ptr(), Some(echo), std::ptr::null_mut()),
        pj_status::Ok
    );
    let workers = start_job_fragmented(2, 2048);
    let par = parallel(&[("backend", "mpi")]).unwrap();
    let mut err = std::ptr::null_mut();
    let small = 5u64.to_ne_bytes();
    check(
        pj_parallel_submit_named(par.0, c"echo".as_ptr(), small.as_ptr(), 8, &mut err),
        err,
    )
    .unwrap();
    assert_eq!(par.collect().unwrap(), vec![small.to_vec()]);

    let big: Vec<u8> = (0..8u64 << 20).map(|b| (b * 7 + 3) as u8).collect();
    let started = Instant::now();
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_submit_named(par.0, c"echo".as_ptr(), big.as_ptr(), big.len(), &mut err),
        err,
    )
    .unwrap();
    let results = par.collect().unwrap();
    let took = started.elapsed();
    assert_eq!(results.len(), 1);
    assert!(results[0] == big, "the 8 MiB result differs");
    // Milliseconds when the senders poll; about 30 s when they sleep between polls.
    assert!(
        took < Duration::from_secs(10),
        "8 MiB each way took {took:?}: a sender slept while its send was in flight"
    );

    // A large result is received straight into the memory the caller reads: rank 0 neither
    // zero-fills a receive buffer nor copies the result bytes out of the message.
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_submit_named(par.0, c"echo".as_ptr(), big.as_ptr(), big.len(), &mut err),
        err,
    )
    .unwrap();
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
    let (mut data, mut len) = (std::ptr::null(), 0usize);
    assert_eq!(pj_results_get(res, 0, &mut data, &mut len), pj_status::Ok);
    // SAFETY: pj_results_get gave `len` readable bytes at `data`, valid until pj_results_free.
    assert!(unsafe { std::slice::from_raw_parts(data, len) } == &big[..]);
    assert_eq!(
        data as usize,
        LARGE_RECEIVE_AT_RANK_0.load(std::sync::atomic::Ordering::Relaxed),
        "the result was copied after MPI received it"
    );
    pj_results_free(res);

    // Idle: the dispatcher blocks on its queue, the worker rank backs off to sleeps.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_time() - before;
    // A thread spinning through that second would show about 1 s; idle polling a few ms.
    assert!(
        spent < Duration::from_millis(200),
        "{spent:?} of CPU in 1 s idle"
    );
    drop(par);
    assert_eq!(end_job(workers), vec![0], "the worker rank leaves cleanly");
}
