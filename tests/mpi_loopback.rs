//! The MPI backend's protocol without MPI: an in-process stand-in for the shim's operations table
//! (one mailbox per rank, ranks 1..N as threads running `pj_mpi_serve`), so that rank 0's
//! dispatcher and the worker ranks' loop are tested by `cargo test` wherever it runs. The real
//! thing, under mpirun, is tested by ctest (examples/mpi).
//!
//! One test function: an attachment is process-wide, so the scenarios run in sequence.

mod common;
#[path = "common/mpi_fabric.rs"]
mod mpi_fabric;

use std::ffi::{CString, c_void};
use std::time::{Duration, Instant};

use common::*;
use mpi_fabric::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Task: x * x; fails on 37 (code 3), crashes on 1_000_005, returns 20 MiB for 2_000_000.
unsafe extern "C" fn square(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments, or a big buffer whose first 8 bytes are x.
    let x = unsafe { arg_u64(arg, len.min(8)) };
    match x {
        37 => {
            pj_out_error(out, c"thirty-seven".as_ptr());
            3
        }
        // SAFETY: deliberately crashes this worker process.
        1_000_005 => unsafe {
            libc::raise(libc::SIGSEGV);
            0
        },
        2_000_000 => {
            let big = vec![1u8; 20 << 20];
            pj_out_set(out, big.as_ptr(), big.len());
            0
        }
        _ if len > 8 => {
            // A big argument comes back reversed.
            // SAFETY: `len` readable bytes.
            let mut bytes = unsafe { std::slice::from_raw_parts(arg, len) }.to_vec();
            bytes.reverse();
            pj_out_set(out, bytes.as_ptr(), bytes.len());
            0
        }
        _ => {
            let y = (x * x).to_ne_bytes();
            pj_out_set(out, y.as_ptr(), 8);
            0
        }
    }
}

/// Task: sleeps 30 s (only a cancellation ends it in time).
unsafe extern "C" fn nap(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    std::thread::sleep(Duration::from_secs(30));
    0
}

/// Task: the argument is a folder. Writes `started-<pid>` there, polls `pj_out_cancelled` for up
/// to 10 s and writes `saw-<pid>` once it sees the call stopping.
unsafe extern "C" fn poll(_: *mut c_void, arg: *const u8, len: usize, out: *mut TaskOutput) -> i32 {
    // SAFETY: pj passes `len` readable bytes: a folder's path, built from an OsStr.
    let dir = std::path::PathBuf::from(unsafe {
        std::ffi::OsStr::from_encoded_bytes_unchecked(std::slice::from_raw_parts(arg, len))
    });
    let pid = std::process::id();
    std::fs::write(dir.join(format!("started-{pid}")), b"").unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if pj_out_cancelled(out) != 0 {
            std::fs::write(dir.join(format!("saw-{pid}")), b"").unwrap();
            return 0;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    0
}

/// Files in `dir` whose names start with `prefix`.
fn count(dir: &std::path::Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .count()
}

fn submit_named(par: &Par, arg: &[u8]) -> Result<(), CError> {
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_submit_named(par.0, c"square".as_ptr(), arg.as_ptr(), arg.len(), &mut err),
        err,
    )
}

/// Submits every x (stopping at a failure, which collect then reports and which ends the call).
fn squares(par: &Par, xs: impl Iterator<Item = u64>) -> Result<Vec<u64>, CError> {
    for x in xs {
        if let Err(error) = submit_named(par, &x.to_ne_bytes()) {
            // A task's failure is reported by collect too; an executor's own is not.
            par.collect()?;
            return Err(error);
        }
    }
    Ok(as_u64s(&par.collect()?))
}

#[test]
fn the_mpi_protocol_over_an_in_process_fabric() {
    let name = CString::new("square").unwrap();
    assert_eq!(
        pj_register(name.as_ptr(), Some(square), std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_register(c"nap".as_ptr(), Some(nap), std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_register(c"poll".as_ptr(), Some(poll), std::ptr::null_mut()),
        pj_status::Ok
    );
    register_doubles();
    let started = Instant::now();

    // Three ranks: ordered results, twice on one object, then a second object.
    let workers = start_job(3, None);
    let par = parallel(&[("backend", "mpi")]).unwrap();
    let expected: Vec<u64> = (0..5000).map(|x| if x == 37 { 0 } else { x * x }).collect();
    let xs = || (0..5000u64).map(|x| if x == 37 { 0 } else { x });
    assert_eq!(squares(&par, xs()).unwrap(), expected);
    assert_eq!(squares(&par, xs()).unwrap(), expected);
    // pj_parallel_for_named: the ranges run on the ranks, their results come back in order.
    let pids = for_named_doubles(&par, 100_003).unwrap();
    assert!(!pids.contains(&u64::from(std::process::id())), "{pids:?}");
    drop(par);

    // Failures name the task and the rank; the object works afterwards.
    let par = parallel(&[("backend", "mpi")]).unwrap();
    let error = squares(&par, 0..100).unwrap_err();
    assert_eq!(error.status, pj_status::TaskFailed);
    assert_eq!(error.task_index, 37);
    assert!(error.message.contains("(MPI rank "), "{}", error.message);
    let error = squares(&par, 1_000_000..1_000_010).unwrap_err();
    assert_eq!(error.status, pj_status::WorkerDied, "{}", error.message);
    assert_eq!(error.task_index, 5);
    assert!(error.message.contains("SIGSEGV") && error.message.contains("(MPI rank "));
    assert_eq!(
        squares(&par, 0..10).unwrap(),
        (0..10).map(|x| x * x).collect::<Vec<_>>()
    );

    // Big arguments and results (4 MiB each way), byte for byte.
    for i in 0..4u64 {
        let mut big: Vec<u8> = (0..4 << 20).map(|b: u64| (b * 7 + i) as u8).collect();
        big[..8].copy_from_slice(&(100 + i).to_ne_bytes());
        submit_named(&par, &big).unwrap();
    }
    for (i, result) in par.collect().unwrap().iter().enumerate() {
        let mut big: Vec<u8> = (0..4 << 20)
            .map(|b: u64| (b * 7 + i as u64) as u8)
            .collect();
        big[..8].copy_from_slice(&(100 + i as u64).to_ne_bytes());
        big.reverse();
        assert!(result == &big, "big result {i} differs");
    }

    // Above the transport's message limit (16 MiB here): a 40 MiB argument and a 20 MiB result
    // travel in several messages and come back whole, in one batch with small tasks around them.
    let mut huge: Vec<u8> = (0..40u64 << 20).map(|b| (b * 13 + 5) as u8).collect();
    huge[..8].copy_from_slice(&9u64.to_ne_bytes());
    let batched = parallel(&[("backend", "mpi"), ("batch_size", "4")]).unwrap();
    for x in [3u64, 2_000_000] {
        submit_named(&batched, &x.to_ne_bytes()).unwrap();
    }
    submit_named(&batched, &huge).unwrap();
    submit_named(&batched, &4u64.to_ne_bytes()).unwrap();
    let results = batched.collect().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0], 9u64.to_ne_bytes());
    assert!(
        results[1] == vec![1u8; 20 << 20],
        "the 20 MiB result differs"
    );
    huge.reverse();
    assert!(
        results[2] == huge,
        "the 40 MiB argument came back different"
    );
    assert_eq!(results[3], 16u64.to_ne_bytes());
    drop(batched);
    // Both worker ranks at once (a batch each): rank 0 joins two split outcomes side by side.
    let one_each = parallel(&[("backend", "mpi"), ("batch_size", "1")]).unwrap();
    for _ in 0..2 {
        submit_named(&one_each, &2_000_000u64.to_ne_bytes()).unwrap();
    }
    for result in one_each.collect().unwrap() {
        assert!(result == vec![1u8; 20 << 20], "a 20 MiB result differs");
    }
    drop(one_each);
    assert_eq!(squares(&par, 0..3).unwrap(), vec![0, 1, 4]);

    // on_error=collect: every task runs, the failed one carries its status.
    let collecting = parallel(&[("backend", "mpi"), ("on_error", "collect")]).unwrap();
    for x in 30..40u64 {
        submit_named(&collecting, &x.to_ne_bytes()).unwrap();
    }
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    check(pj_parallel_collect(collecting.0, &mut res, &mut err), err).unwrap();
    assert_eq!(pj_results_len(res), 10);
    assert_eq!(pj_results_status(res, 7), pj_status::TaskFailed);
    assert_eq!(pj_results_status(res, 6), pj_status::Ok);
    pj_results_free(res);
    drop(collecting);

    // pj_parallel_cancel from another thread: the ranks are told, kill their running tasks, and
    // the call ends CANCELLED at once; the ranks serve the next call.
    let napping =
        std::sync::Arc::new(parallel(&[("backend", "mpi"), ("batch_size", "1")]).unwrap());
    let canceller = {
        let napping = napping.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(pj_parallel_cancel(napping.0), pj_status::Ok);
        })
    };
    let cancel_started = Instant::now();
    for _ in 0..4 {
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_submit_named(napping.0, c"nap".as_ptr(), [].as_ptr(), 0, &mut err);
        assert_eq!(status, pj_status::Ok);
    }
    let error = napping.collect().unwrap_err();
    assert_eq!(error.status, pj_status::Cancelled, "{}", error.message);
    assert!(
        cancel_started.elapsed() < Duration::from_secs(5),
        "cancelling took {:?}",
        cancel_started.elapsed()
    );
    canceller.join().unwrap();
    assert_eq!(
        squares(&napping, 0..20).unwrap(),
        (0..20).map(|x| x * x).collect::<Vec<_>>()
    );
    drop(napping);

    // pj_parallel_free with tasks running on the ranks: as on processes, they are not killed but
    // see pj_out_cancelled, finish, and free returns once they have.
    let dir = std::env::temp_dir().join(format!("pj-mpi-free-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let polling = parallel(&[("backend", "mpi"), ("batch_size", "1")]).unwrap();
    let folder = dir.as_os_str().as_encoded_bytes();
    for _ in 0..2 {
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_submit_named(
            polling.0,
            c"poll".as_ptr(),
            folder.as_ptr(),
            folder.len(),
            &mut err,
        );
        assert_eq!(status, pj_status::Ok);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&dir, "started-") < 2 {
        assert!(Instant::now() < deadline, "the polling tasks did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let free_started = Instant::now();
    drop(polling);
    assert!(
        free_started.elapsed() < Duration::from_secs(3),
        "free took {:?}",
        free_started.elapsed()
    );
    assert_eq!(count(&dir, "saw-"), 2, "both running tasks saw the flag");
    let _ = std::fs::remove_dir_all(&dir);

    // n_jobs=1 keeps the call on rank 0; pointer submissions must name registered functions.
    let sequential = parallel(&[("backend", "mpi"), ("n_jobs", "1")]).unwrap();
    assert_eq!(squares(&sequential, 0..5).unwrap(), vec![0, 1, 4, 9, 16]);
    let error = sequential
        .submit(Some(square), 8 as *mut c_void, &1u64.to_ne_bytes())
        .unwrap_err();
    assert_eq!(error.status, pj_status::InvalidArgument);
    drop(sequential);
    drop(par);
    assert_eq!(end_job(workers), vec![0, 0], "worker ranks leave cleanly");

    // Detached: backend "mpi" is unsupported again.
    let error = parallel(&[("backend", "mpi")]).err().expect("detached");
    assert_eq!(error.status, pj_status::Unsupported);

    // A rank whose registry report differs is named; it ends with status 2, the others with 0.
    let workers = start_job(3, Some(2));
    let par = parallel(&[("backend", "mpi")]).unwrap();
    let error = squares(&par, 0..4).unwrap_err();
    assert_eq!(error.status, pj_status::Io);
    assert!(
        error
            .message
            .contains("MPI rank 2 registered other task functions"),
        "{}",
        error.message
    );
    drop(par);
    assert_eq!(end_job(workers), vec![0, 2]);

    // pj_mpi_detach while a call runs (a program leaving with a call in flight): the dispatcher
    // stops even though every rank is busy, and the call ends with an error instead of waiting.
    let workers = start_job(3, None);
    let caller = std::thread::spawn(|| {
        let par = parallel(&[("backend", "mpi"), ("batch_size", "1")]).unwrap();
        for _ in 0..8 {
            let mut err = std::ptr::null_mut();
            if pj_parallel_submit_named(par.0, c"nap".as_ptr(), [].as_ptr(), 0, &mut err)
                != pj_status::Ok
            {
                pj_error_free(err);
                break;
            }
        }
        par.collect().map(|r| r.len())
    });
    std::thread::sleep(Duration::from_millis(300));
    let detach_started = Instant::now();
    assert_eq!(pj_mpi_detach(), 0);
    let outcome = caller.join().unwrap();
    assert!(outcome.is_err(), "the call cannot succeed: {outcome:?}");
    assert!(
        detach_started.elapsed() < Duration::from_secs(5),
        "detaching took {:?}",
        detach_started.elapsed()
    );
    for worker in workers {
        assert_eq!(worker.join().unwrap(), 0);
    }

    // One rank alone: calls run on it, sequentially.
    let workers = start_job(1, None);
    let par = parallel(&[("backend", "mpi")]).unwrap();
    assert_eq!(squares(&par, 0..5).unwrap(), vec![0, 1, 4, 9, 16]);
    drop(par);
    assert!(end_job(workers).is_empty());

    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    // Each worker rank's forked child went with its rank's pool.
    assert_eq!(children(), Vec::<i32>::new());
}
