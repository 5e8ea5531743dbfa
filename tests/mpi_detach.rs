//! `pj_mpi_detach` racing a caller that keeps dispatching batches: every call must end (with an
//! error) however the detach falls between the caller's dispatches. A batch queued after the
//! dispatcher's last look at its queue, and before the queue was gone, was once dropped unanswered,
//! and its call waited for it forever (about 1 run in 30 of mpi_loopback's detach scenario).
//!
//! Its own test binary: an MPI attachment is process-wide.

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

/// Tasks the caller submits per round (it stops at the first refused submit).
const TASKS: u64 = 200_000;
/// Rounds: each detaches at another moment of the caller's stream.
const ROUNDS: u64 = 30;

#[test]
fn detach_racing_a_dispatching_caller_ends_every_call() {
    assert_eq!(
        pj_register(c"echo".as_ptr(), Some(echo), std::ptr::null_mut()),
        pj_status::Ok
    );
    let started = Instant::now();
    for round in 0..ROUNDS {
        let workers = start_job(2, None);
        let (done, ended) = std::sync::mpsc::channel();
        let (created, ready) = std::sync::mpsc::channel();
        let caller = std::thread::spawn(move || {
            // Batches of one task, no pre-dispatch window: every submit queues a batch for the
            // dispatcher until the call learns it failed.
            let par = parallel(&[
                ("backend", "mpi"),
                ("batch_size", "1"),
                ("pre_dispatch", "all"),
            ])
            .unwrap();
            created.send(()).unwrap();
            let mut refused = None;
            for i in 0..TASKS {
                let mut err = std::ptr::null_mut();
                let arg = i.to_ne_bytes();
                let status =
                    pj_parallel_submit_named(par.0, c"echo".as_ptr(), arg.as_ptr(), 8, &mut err);
                if status != pj_status::Ok {
                    refused = Some((i, take_error(status, err)));
                    break;
                }
            }
            let _ = done.send((refused, par.collect().map(|r| r.len())));
        });
        ready.recv().unwrap();
        // Detach at a different moment of the stream each round.
        std::thread::sleep(Duration::from_micros(200 + round * 97 % 3000));
        let (_, statuses) = detach_job(workers);
        let outcome = ended.recv_timeout(Duration::from_secs(20));
        let (refused, collected) = outcome.unwrap_or_else(|_| {
            panic!("round {round}: the call never ended after pj_mpi_detach (workers {statuses:?})")
        });
        caller.join().unwrap();
        // The call may have finished before the detach: then every result is there. Otherwise it
        // failed, and a submit it refused said so with the same status.
        match (&refused, collected) {
            (None, Ok(n)) => assert_eq!(n, TASKS as usize, "round {round}"),
            (Some((_, submit)), Err(call)) => {
                assert_eq!(
                    submit.status, call.status,
                    "round {round}: {}",
                    call.message
                )
            }
            (None, Err(_)) => {}
            (Some((i, submit)), Ok(n)) => panic!(
                "round {round}: submit {i} failed ({:?}: {}) but the call returned {n} results",
                submit.status, submit.message
            ),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "{:?}",
        started.elapsed()
    );
}
