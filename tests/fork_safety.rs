//! Fork safety (issue 16 items 2 and 3): locks held across a fork, and executors a forked child
//! inherits. Every wait on a child is bounded, so a hang fails the test instead of stalling it.

mod common;

use std::ffi::c_void;
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Task: returns [x * x, this process's pid].
unsafe extern "C" fn square_pid(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let x = unsafe { arg_u64(arg, len) };
    let words = [x * x, u64::from(std::process::id())];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

fn words(r: &[u8]) -> Vec<u64> {
    r.chunks(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Task (run in a forked worker): makes its own process pool, runs x, x+1, x+2, x+3 on it and
/// returns the sum of their squares; a failure is reported with its message.
unsafe extern "C" fn nested_pool(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let x = unsafe { arg_u64(arg, len) };
    let inner = || -> Result<u64, CError> {
        let par = parallel(&[
            ("backend", "processes"),
            ("n_jobs", "2"),
            ("batch_size", "1"),
        ])?;
        for i in x..x + 4 {
            par.submit(Some(square_pid), std::ptr::null_mut(), &i.to_ne_bytes())?;
        }
        Ok(par.collect()?.iter().map(|r| words(r)[0]).sum())
    };
    match inner() {
        Ok(sum) => {
            pj_out_set(out, sum.to_ne_bytes().as_ptr(), 8);
            0
        }
        Err(e) => {
            let message = std::ffi::CString::new(e.message).unwrap_or_default();
            pj_out_error(out, message.as_ptr());
            1
        }
    }
}

/// Item 2: a task in a forked worker starts its own process pool (allowed by the header). The
/// worker was forked while its proxy held pj's fork lock; the inner pool must not wait for it.
#[test]
fn a_task_in_a_forked_worker_can_start_its_own_process_pool() {
    // The timeout turns the former hang (inner proxies waiting for the lock forever) into a
    // failure; a working nested call takes well under a second.
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("batch_size", "1"),
        ("timeout", "30"),
    ])
    .unwrap();
    for x in [1u64, 10, 100] {
        par.submit(Some(nested_pool), std::ptr::null_mut(), &x.to_ne_bytes())
            .unwrap();
    }
    let sums = par.collect().unwrap_or_else(|e| panic!("{}", e.message));
    let expected = |x: u64| (x..x + 4).map(|i| i * i).sum::<u64>();
    assert_eq!(as_u64s(&sums), [expected(1), expected(10), expected(100)]);
}

/// Runs `child` in a forked copy of this process and returns its exit status; the child must end
/// within `limit` (it is killed otherwise, and the test fails).
fn in_forked_child(limit: Duration, child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `child` (pj's C API and allocation, fork-safe with glibc) and leaves
    // through _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: leaving the child without running the harness's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: polls our own child; `status` is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid {
            assert!(libc::WIFEXITED(status), "the child died: {status:#x}");
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() > deadline {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: reaps the child just killed.
            let _ = unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!("the forked child hung (killed after {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Item 3: a used executor that a fork copies refuses calls in the child at once, with a clear
/// error, and freeing the copy neither hangs nor touches the parent's workers.
#[test]
fn an_executor_inherited_by_a_fork_refuses_calls_and_frees_safely() {
    for options in [
        &[("backend", "threads"), ("n_jobs", "2")][..],
        &[("backend", "processes"), ("n_jobs", "2")][..],
        &[
            ("backend", "processes"),
            ("n_jobs", "2"),
            ("keep_workers", "true"),
        ][..],
    ] {
        let par = parallel(options).unwrap();
        for i in 0..8u64 {
            par.submit(Some(square_pid), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
        let before: Vec<u64> = par.collect().unwrap().iter().map(|r| words(r)[1]).collect();
        let parent = std::process::id();
        let handle = par.0;
        let code = in_forked_child(Duration::from_secs(20), move || {
            let copy = Par(handle);
            let refused = |e: Result<(), CError>| match e {
                Err(e) => {
                    e.status == pj_status::InvalidArgument
                        && e.message
                            .contains(&format!("this executor was created in process {parent}"))
                }
                Ok(()) => false,
            };
            if !refused(copy.submit(Some(square_pid), std::ptr::null_mut(), &[0; 8])) {
                return 2;
            }
            if !refused(copy.collect().map(|_| ())) {
                return 3;
            }
            // Freeing the copy (Par's drop) must neither hang nor kill the parent's workers.
            drop(copy);
            0
        });
        assert_eq!(code, 0, "{options:?}");
        // With keep_workers, the parent's idle workers survived the child's free.
        if options.contains(&("keep_workers", "true")) {
            for &pid in &before {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                assert!(
                    !stat.is_empty() && !state.starts_with('Z'),
                    "kept worker {pid} is gone: {stat}"
                );
            }
        }
        // The parent's executor still works.
        for i in 0..8u64 {
            par.submit(Some(square_pid), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
        let after = par.collect().unwrap();
        assert_eq!(words(&after[7])[0], 49, "{options:?}");
    }
}
