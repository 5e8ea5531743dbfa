//! Argument memory is reused across batches and calls (issue 17 items 1–2): once an executor has
//! run the same work twice, copying the arguments of a later call touches no fresh page. Counted
//! as the minor page faults of the submitting thread (which does the copy on every backend).

mod common;

use std::ffi::c_void;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Task: returns the sum of every 64th byte of its argument (reads it, as a real task would).
unsafe extern "C" fn sum_task(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes a live argument of `len` bytes.
    let arg = unsafe { std::slice::from_raw_parts(arg, len) };
    let sum: u64 = arg.iter().step_by(64).map(|&b| u64::from(b)).sum();
    pj_out_set(out, sum.to_ne_bytes().as_ptr(), 8);
    0
}

/// Minor page faults of this thread so far.
fn thread_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_minflt
}

#[test]
fn later_calls_copy_their_arguments_into_memory_already_mapped() {
    const ARG: usize = 256 << 10;
    // 80 MiB per call in two batches of 40 MiB: above the largest size glibc ever serves from its
    // heap, so each batch would be mapped afresh (and unmapped when it ends) if not reused.
    const TASKS: usize = 320;
    let data: Vec<u8> = (0..ARG * TASKS).map(|i| (i % 251) as u8).collect();
    let expected: u64 = data[..ARG].iter().step_by(64).map(|&b| u64::from(b)).sum();
    let pages = (ARG * TASKS / 4096) as i64;
    // threads with a batch larger than the call: the whole call is the tail, cut into 20 pieces.
    for (backend, batch_size) in [
        ("sequential", "160"),
        ("threads", "160"),
        ("threads", "1000"),
    ] {
        let par = parallel(&[
            ("backend", backend),
            ("n_jobs", if backend == "threads" { "2" } else { "1" }),
            ("keep_workers", "true"),
            ("batch_size", batch_size),
        ])
        .unwrap();
        let mut faults = Vec::new();
        for _ in 0..6 {
            let before = thread_faults();
            for chunk in data.chunks(ARG) {
                par.submit(Some(sum_task), std::ptr::null_mut(), chunk)
                    .unwrap();
            }
            let results = par.collect().unwrap();
            faults.push(thread_faults() - before);
            assert_eq!(results.len(), TASKS);
            assert_eq!(as_u64s(&results[..1]), [expected]);
        }
        // Calls 3 to 6: a fresh page for every argument page would be `pages` faults per call
        // (fewer with huge pages); reused buffers leave only the results' own few.
        assert!(
            faults[2..].iter().all(|&f| f < pages / 8),
            "{backend}, batch_size {batch_size}: page faults per call {faults:?}, {pages} pages of arguments per call"
        );
    }
}
