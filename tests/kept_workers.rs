//! Kept workers (keep_workers=true) that die while idle (issue 16 item 7): a worker that dies
//! between calls, or after it received a batch but before any task of it started, is replaced
//! silently and the batch runs on a fresh worker; only a task that was running is blamed.

mod common;

use std::ffi::c_void;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Task: returns this process's pid.
unsafe extern "C" fn pid_task(_: *mut c_void, _: *const u8, _: usize, out: *mut TaskOutput) -> i32 {
    let pid = u64::from(std::process::id());
    pj_out_set(out, pid.to_ne_bytes().as_ptr(), 8);
    0
}

/// Runs `n` tasks in one call and returns each task's status and pid.
fn call(par: &Par, n: usize) -> Result<Vec<(pj_status, u64)>, CError> {
    for _ in 0..n {
        par.submit(Some(pid_task), std::ptr::null_mut(), &[])?;
    }
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    check(pj_parallel_collect(par.0, &mut res, &mut err), err)?;
    let statuses: Vec<pj_status> = (0..n).map(|i| pj_results_status(res, i)).collect();
    let results = results_to_vec(res);
    Ok(statuses
        .into_iter()
        .zip(results.iter().map(|r| {
            r.get(..8)
                .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap()))
        }))
        .collect())
}

#[test]
fn an_idle_kept_worker_killed_from_outside_is_replaced_without_blaming_a_task() {
    for on_error in ["collect", "raise"] {
        let par = parallel(&[
            ("backend", "processes"),
            ("n_jobs", "2"),
            ("keep_workers", "true"),
            ("batch_size", "1"),
            ("on_error", on_error),
        ])
        .unwrap();
        let mut outcomes = call(&par, 8).unwrap();
        for round in 0..20 {
            let victim = outcomes[round % outcomes.len()].1;
            // SAFETY: killing our own idle worker, as a user's `kill -9` would; its proxy has not
            // reaped it (it is idle), so the pid is still that worker's.
            unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
            // At once: the death is typically noticed only once a batch was sent to it.
            outcomes = call(&par, 8)
                .unwrap_or_else(|e| panic!("{on_error}, round {round}: {}", e.message));
            assert!(
                outcomes.iter().all(|(status, _)| *status == pj_status::Ok),
                "{on_error}, round {round}: {outcomes:?}"
            );
            assert!(
                outcomes.iter().all(|(_, pid)| *pid != victim),
                "{on_error}, round {round}: the killed worker ran a task"
            );
        }
    }
}

/// Two kept workers, stopped (SIGSTOP: a debugger, a job-control signal sent to their pids)
/// between calls; then a call that sends each a batch far larger than a socket's buffer, which a
/// stopped worker never reads. With `cancel`, the call is cancelled after a second from another
/// thread. Returns the call's error and how long it took; the stopped workers are continued
/// afterwards (those pj did not kill), and the next call must run on new workers.
fn call_to_stopped_workers(timeout: &str, cancel: bool) -> (CError, std::time::Duration) {
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("keep_workers", "true"),
        ("timeout", timeout),
        ("max_nbytes", "none"),
        ("batch_size", "1"),
    ])
    .unwrap();
    let first: Vec<u64> = call(&par, 4).unwrap().iter().map(|&(_, pid)| pid).collect();
    let mut stopped: Vec<i32> = first.iter().map(|&p| p as i32).collect();
    stopped.sort_unstable();
    stopped.dedup();
    for &pid in &stopped {
        // SAFETY: signalling our own worker processes.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    }
    let big = vec![7u8; 16 << 20];
    let par = std::sync::Arc::new(par);
    let (done, result) = std::sync::mpsc::channel();
    let caller = std::sync::Arc::clone(&par);
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        let outcome = (|| {
            for _ in 0..2 {
                caller.submit(Some(pid_task), std::ptr::null_mut(), &big)?;
            }
            caller.collect()
        })();
        let _ = done.send(outcome);
    });
    if cancel {
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert_eq!(pj_parallel_cancel(par.0), pj_status::Ok);
    }
    let outcome = result.recv_timeout(std::time::Duration::from_secs(60));
    let took = started.elapsed();
    for &pid in &stopped {
        // SAFETY: as above; the workers may be gone already.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    let error = outcome
        .expect("the call blocked in sending to a stopped worker")
        .unwrap_err();
    let again = call(&par, 4).unwrap();
    assert!(
        again
            .iter()
            .all(|&(status, pid)| status == pj_status::Ok && !stopped.contains(&(pid as i32)))
    );
    (error, took)
}

#[test]
fn a_kept_worker_stopped_while_idle_cannot_block_the_next_call_past_its_timeout() {
    // The worker is stuck outside any task: bound by the timeout, not waited for in the send.
    let (error, took) = call_to_stopped_workers("2", false);
    assert_eq!(error.status, pj_status::Timeout, "{}", error.message);
    assert!(error.message.contains("stuck"), "{}", error.message);
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_call_blocked_sending_to_a_stopped_worker_can_be_cancelled() {
    let (error, took) = call_to_stopped_workers("none", true);
    assert_eq!(error.status, pj_status::Cancelled, "{}", error.message);
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}
