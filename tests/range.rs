//! `pj_parallel_for`: a callback per range of indices, covering 0..n exactly once.

mod common;

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Where `double_range` writes: out[i] = 2 * i, and how many ranges ran.
struct Table {
    out: *mut u64,
    ranges: AtomicUsize,
    fail_at: usize,
}

unsafe extern "C" fn double_range(
    userdata: *mut c_void,
    start: usize,
    end: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: userdata is a live Table whose `out` holds n u64, and ranges are disjoint.
    let table = unsafe { &*(userdata as *const Table) };
    table.ranges.fetch_add(1, Ordering::Relaxed);
    if (start..end).contains(&table.fail_at) {
        pj_out_error(out, c"bad range".as_ptr());
        return 3;
    }
    for i in start..end {
        // SAFETY: i < n, and no other range writes index i.
        unsafe { table.out.add(i).write(2 * i as u64) };
    }
    0
}

fn run_for(par: &Par, n: usize, userdata: *mut c_void) -> Result<(), CError> {
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_for(par.0, n, Some(double_range), userdata, &mut err),
        err,
    )
}

#[test]
fn every_index_is_covered_once_on_threads_and_sequentially() {
    for options in [
        &[("backend", "threads"), ("n_jobs", "2")][..],
        &[("n_jobs", "1")][..],
    ] {
        for n in [0usize, 1, 5, 31, 33, 1_000_003] {
            let par = parallel(options).unwrap();
            let mut out = vec![u64::MAX; n];
            let table = Table {
                out: out.as_mut_ptr(),
                ranges: AtomicUsize::new(0),
                fail_at: usize::MAX,
            };
            run_for(&par, n, (&table as *const Table).cast_mut().cast()).unwrap();
            for (i, v) in out.iter().enumerate() {
                assert_eq!(*v, 2 * i as u64, "{options:?} n={n}: index {i}");
            }
            let ranges = table.ranges.load(Ordering::Relaxed);
            assert!(
                ranges <= n.max(1) && (n == 0) == (ranges == 0),
                "{ranges} ranges for {n}"
            );
        }
    }
}

#[test]
fn worker_processes_write_into_a_shared_buffer() {
    let n = 300_007usize;
    let par = parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    let mut shared = std::ptr::null_mut();
    assert_eq!(
        pj_shared_new(std::ptr::null(), n * 8, &mut shared, std::ptr::null_mut()),
        pj_status::Ok
    );
    let table = Table {
        out: pj_shared_data(shared).cast(),
        ranges: AtomicUsize::new(0),
        fail_at: usize::MAX,
    };
    run_for(&par, n, (&table as *const Table).cast_mut().cast()).unwrap();
    // SAFETY: the shared buffer holds n u64 until pj_shared_free.
    let out = unsafe { std::slice::from_raw_parts(table.out, n) };
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, 2 * i as u64, "index {i}");
    }
    pj_shared_free(shared);
}

#[test]
fn a_failing_range_is_named_by_its_items() {
    for backend in ["threads", "processes"] {
        let n = 10_000usize;
        let par = parallel(&[("backend", backend), ("n_jobs", "2")]).unwrap();
        let mut out = vec![0u64; n];
        let table = Table {
            out: out.as_mut_ptr(),
            ranges: AtomicUsize::new(0),
            fail_at: 5_000,
        };
        let err = run_for(&par, n, (&table as *const Table).cast_mut().cast()).unwrap_err();
        assert_eq!(err.status, pj_status::TaskFailed, "{backend}");
        // 2 workers x 16 ranges: ranges of 313 items; 5,000 is in 4,695..5,008.
        assert_eq!(err.task_index, 4_695, "{backend}: {}", err.message);
        assert_eq!(
            err.message, "items 4695..5008 failed with code 3: bad range",
            "{backend}"
        );
        assert_eq!(err.code, 3);
        assert_eq!(err.callback_message.as_deref(), Some("bad range"));
        // The object works again.
        let table = Table {
            out: out.as_mut_ptr(),
            ranges: AtomicUsize::new(0),
            fail_at: usize::MAX,
        };
        if backend == "threads" {
            run_for(&par, n, (&table as *const Table).cast_mut().cast()).unwrap();
            assert_eq!(out[n - 1], 2 * (n as u64 - 1));
        }
    }
}

#[test]
fn null_arguments_are_refused() {
    let par = parallel(&[]).unwrap();
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_for(par.0, 10, None, std::ptr::null_mut(), &mut err);
    assert_eq!(take_error(status, err).status, pj_status::NullArgument);
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_for(
        std::ptr::null_mut(),
        10,
        Some(double_range),
        std::ptr::null_mut(),
        &mut err,
    );
    assert_eq!(take_error(status, err).status, pj_status::NullArgument);
}

/// The named form runs on every backend here (spawn in tests/spawn.rs, MPI in
/// tests/mpi_loopback.rs), with each range's result in range order.
#[test]
fn named_loops_return_each_range_s_result_in_order() {
    register_doubles();
    for options in [
        &[("backend", "threads"), ("n_jobs", "2")][..],
        &[("n_jobs", "1")][..],
        &[("backend", "processes"), ("n_jobs", "2")][..],
    ] {
        let par = parallel(options).unwrap();
        for n in [0usize, 1, 31, 33, 100_003] {
            let pids = for_named_doubles(&par, n).unwrap();
            assert!(
                pids.len() <= 32 && (n == 0) == pids.is_empty(),
                "{options:?}: {} ranges",
                pids.len()
            );
            let caller = u64::from(std::process::id());
            if options[0].1 == "processes" && n > 0 {
                assert!(pids.iter().all(|&p| p != caller), "{options:?}");
            } else {
                assert!(pids.iter().all(|&p| p == caller), "{options:?}");
            }
        }
        // Without results_out, and a failing range named by its items.
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_for_named(
            par.0,
            c"doubles".as_ptr(),
            1000,
            std::ptr::null_mut(),
            &mut err,
        );
        check(status, err).unwrap();
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_for_named(
            par.0,
            c"doubles".as_ptr(),
            200_000,
            std::ptr::null_mut(),
            &mut err,
        );
        let err = take_error(status, err);
        assert_eq!(err.status, pj_status::TaskFailed, "{options:?}");
        assert!(
            err.message.contains("failed with code 3: bad range")
                && err.message.starts_with("items "),
            "{}",
            err.message
        );
    }
}

#[test]
fn named_loops_refuse_unknown_names_and_task_functions() {
    register_doubles();
    unsafe extern "C" fn task(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
        0
    }
    let mut err = std::ptr::null_mut();
    check(
        pj_register(c"range-test-task".as_ptr(), Some(task), &mut err),
        err,
    )
    .unwrap();
    let par = parallel(&[]).unwrap();
    for name in [c"nope", c"range-test-task"] {
        let mut err = std::ptr::null_mut();
        let status =
            pj_parallel_for_named(par.0, name.as_ptr(), 10, std::ptr::null_mut(), &mut err);
        let err = take_error(status, err);
        assert_eq!(err.status, pj_status::InvalidArgument);
        assert!(err.message.contains("no range function"), "{}", err.message);
    }
    // A range name is not a task name, and a name is unique across both kinds.
    let mut err = std::ptr::null_mut();
    let status =
        pj_parallel_submit_named(par.0, c"doubles".as_ptr(), std::ptr::null(), 0, &mut err);
    assert_eq!(take_error(status, err).status, pj_status::InvalidArgument);
    let mut err = std::ptr::null_mut();
    let status = pj_register_range(c"range-test-task".as_ptr(), Some(doubles_range), &mut err);
    assert_eq!(take_error(status, err).status, pj_status::InvalidArgument);
    let mut err = std::ptr::null_mut();
    let status = pj_register_range(c"doubles".as_ptr(), None, &mut err);
    assert_eq!(take_error(status, err).status, pj_status::NullArgument);
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_for_named(par.0, std::ptr::null(), 10, std::ptr::null_mut(), &mut err);
    assert_eq!(take_error(status, err).status, pj_status::NullArgument);
}
