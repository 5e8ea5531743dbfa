//! Cancellation and cooperative stopping: `pj_parallel_cancel` while a submit blocks, callbacks that
//! poll `pj_out_cancelled` under cancel, fail-fast and `pj_parallel_free`, on every backend.

mod common;

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Task: sleeps 10 s without looking at anything (only a kill ends it early).
unsafe extern "C" fn sleep_10s(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    std::thread::sleep(Duration::from_secs(10));
    0
}

#[test]
fn cancel_during_a_blocked_submit_returns_cancelled_from_that_submit() {
    // The window (pre_dispatch 2*n_jobs = 4 tasks of one) fills with 10 s tasks, so a submit
    // blocks; a cancel from another thread must end that very submit with CANCELLED. The outcome
    // used to depend on whether a killed worker's batch or the cancellation was seen first, so
    // the scenario runs several times.
    // Threads could not kill their sleepers (this is about the submit's status, not promptness):
    // processes only, where the bug was.
    {
        let backend = "processes";
        for trial in 0..10 {
            let par = Arc::new(
                parallel(&[("backend", backend), ("n_jobs", "2"), ("batch_size", "1")]).unwrap(),
            );
            let mut blocked = None;
            let mut canceller = None;
            for submitted in 0..100 {
                let started = Instant::now();
                let result = par.submit(Some(sleep_10s), std::ptr::null_mut(), &[]);
                if started.elapsed() > Duration::from_millis(100) || result.is_err() {
                    blocked = Some((submitted, result));
                    break;
                }
                if submitted == 3 {
                    // The window is full: the next submit blocks until this cancel.
                    let par = par.clone();
                    canceller = Some(std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(300));
                        assert_eq!(pj_parallel_cancel(par.0), pj_status::Ok);
                    }));
                }
            }
            let (submitted, result) = blocked.expect("a submit blocked");
            assert_eq!(
                submitted, 4,
                "{backend} trial {trial}: the fifth submit blocks"
            );
            let error = result.expect_err(&format!(
                "{backend} trial {trial}: the submit blocked by a full window returned OK after \
                 pj_parallel_cancel"
            ));
            assert_eq!(error.status, pj_status::Cancelled, "{backend}: {error:?}");
            if let Some(canceller) = canceller {
                canceller.join().unwrap();
            }
            let error = par.collect().unwrap_err();
            assert_eq!(error.status, pj_status::Cancelled, "{backend}: {error:?}");
        }
    }
}
