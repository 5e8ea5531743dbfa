//! Result memory is reused across batches and calls on threads, sequential and processes (issue
//! 17; on processes: the memory the caller receives results into): once an
//! executor has run the same work twice, a later call writes its results into memory an earlier
//! call's results used (given back by `pj_results_free`), touching no fresh page; `pj_out_alloc`
//! zeroes that memory before a task gets it, as pj.h promises. Results stay intact
//! until they are freed, even while later calls run.

mod common;

use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// The tests of this file count the process's page faults: they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const RESULT: usize = 256 << 10;

/// The byte task `task` of call `call` fills its result with.
fn byte(call: u64, task: u64) -> u8 {
    (call * 31 + task) as u8
}

/// Task: a result of `RESULT` bytes written in place, every byte `byte(call, task)`, where the
/// argument is (call, task). Records whether the
/// window `pj_out_alloc` gave it held anything but zeroes, counted in the `AtomicUsize` at a
/// non-NULL userdata.
unsafe extern "C" fn fill(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`.
    let arg = unsafe { std::slice::from_raw_parts(arg, len) };
    let call = u64::from_ne_bytes(arg[..8].try_into().unwrap());
    let task = u64::from_ne_bytes(arg[8..].try_into().unwrap());
    let dst = pj_out_alloc(out, RESULT);
    if dst.is_null() {
        return 1;
    }
    if !userdata.is_null() {
        // SAFETY: pj_out_alloc returned RESULT initialised, writable bytes.
        let window = unsafe { std::slice::from_raw_parts(dst, RESULT) };
        if window.iter().any(|&b| b != 0) {
            // SAFETY: a non-NULL userdata is a live AtomicUsize.
            unsafe { &*(userdata as *const AtomicUsize) }.fetch_add(1, Ordering::Relaxed);
        }
    }
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(dst, byte(call, task), RESULT) };
    0
}

/// Minor page faults of the whole process so far (tasks run on worker threads too).
fn process_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_minflt
}

/// Submits `tasks` tasks for call number `call` and collects them (results not freed).
fn run_call(par: &Par, call: u64, tasks: u64, userdata: *mut c_void) -> *mut pj_results_t {
    for task in 0..tasks {
        let arg = [call.to_ne_bytes(), task.to_ne_bytes()].concat();
        par.submit(Some(fill), userdata, &arg).unwrap();
    }
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
    res
}

/// Asserts that `res` holds call `call`'s results, whole; `expected` is a scratch buffer.
fn check_call(res: *mut pj_results_t, call: u64, tasks: u64, expected: &mut [u8]) {
    assert_eq!(pj_results_len(res), tasks as usize);
    for task in 0..tasks {
        let (mut data, mut len) = (std::ptr::null(), 0);
        assert_eq!(
            pj_results_get(res, task as usize, &mut data, &mut len),
            pj_status::Ok
        );
        // SAFETY: pj_results_get gave `len` readable bytes, valid until pj_results_free.
        let got = unsafe { std::slice::from_raw_parts(data, len) };
        // SAFETY: `expected` is a live, writable buffer of its length (a memset: quick unoptimised).
        unsafe { std::ptr::write_bytes(expected.as_mut_ptr(), byte(call, task), expected.len()) };
        assert!(got == expected, "call {call}, task {task}");
    }
}

#[test]
fn later_calls_write_their_results_into_memory_already_mapped() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // 80 MiB per call in two batches of 40 MiB: above the largest size glibc ever serves from its
    // heap, so each batch's results would be mapped afresh (and unmapped when freed) if not
    // reused. With threads and a batch larger than the call, the call is cut into pieces.
    const TASKS: u64 = 320;
    let pages = (RESULT * TASKS as usize / 4096) as i64;
    let mut expected = vec![0u8; RESULT];
    for (backend, batch_size) in [
        ("sequential", "160"),
        ("threads", "160"),
        ("threads", "1000"),
        // Results received from worker processes (below max_nbytes: by socket) land in the
        // executor's kept memory too.
        ("processes", "160"),
    ] {
        let par = parallel(&[
            ("backend", backend),
            ("n_jobs", if backend == "sequential" { "1" } else { "2" }),
            ("keep_workers", "true"),
            ("batch_size", batch_size),
        ])
        .unwrap();
        let mut faults = Vec::new();
        let mut previous: Option<(u64, *mut pj_results_t)> = None;
        for call in 0..6 {
            let before = process_faults();
            let res = run_call(&par, call, TASKS, std::ptr::null_mut());
            faults.push(process_faults() - before);
            check_call(res, call, TASKS, &mut expected);
            // The previous call's results were kept while this one ran: still intact.
            if let Some((earlier, results)) = previous.replace((call, res)) {
                check_call(results, earlier, TASKS, &mut expected);
                pj_results_free(results);
            }
        }
        if let Some((_, results)) = previous {
            pj_results_free(results);
        }
        // Calls 3 to 6: a fresh page for every result page would be `pages` faults per call
        // (fewer with huge pages); reused arenas leave only a few.
        assert!(
            faults[2..].iter().all(|&f| f < pages / 8),
            "{backend}, batch_size {batch_size}: page faults per call {faults:?}, {pages} pages of results per call"
        );
    }
}

#[test]
fn pj_out_alloc_zeroes_reused_memory_so_no_output_sees_another() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const TASKS: u64 = 16;
    let mut expected = vec![0u8; RESULT];
    for backend in ["sequential", "threads"] {
        let par = parallel(&[("backend", backend), ("batch_size", "4")]).unwrap();
        let first = run_call(&par, 1, TASKS, std::ptr::null_mut());
        check_call(first, 1, TASKS, &mut expected);
        pj_results_free(first);
        let unzeroed = AtomicUsize::new(0);
        let second = run_call(
            &par,
            2,
            TASKS,
            &unzeroed as *const AtomicUsize as *mut c_void,
        );
        check_call(second, 2, TASKS, &mut expected);
        pj_results_free(second);
        // pj.h promises zeroed bytes: a reused arena must not show an earlier output's bytes
        // (another task's, another call's) to a task.
        assert_eq!(
            unzeroed.load(Ordering::Relaxed),
            0,
            "{backend}: pj_out_alloc handed out windows holding an earlier output's bytes"
        );
    }
}
