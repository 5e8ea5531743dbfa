//! Task stacks: worker threads and the threads that run tasks in worker processes get the caller's
//! stack size (RLIMIT_STACK, 8 MiB by default), or the `stack_size` option.
//!
//! A stack overflow on a thread of the calling process ends the whole process, so the threads case
//! runs in a child copy of this test binary (the `child_case` technique of tests/processes.rs).

mod common;

use std::ffi::c_void;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const CASE: &str = "PJ_STACK_CASE";

/// Bytes of stack one `deep` frame uses, at least.
const FRAME: usize = 64 << 10;

/// Recurses `depth` frames of `FRAME` bytes each, touching every one; returns a checksum.
#[inline(never)]
fn deep(depth: usize) -> u64 {
    let mut frame = [0u8; FRAME];
    for (i, byte) in frame.iter_mut().enumerate().step_by(512) {
        *byte = (i ^ depth) as u8;
    }
    // By reference: the frame is not copied (a debug build would copy it by value).
    std::hint::black_box(&mut frame);
    let below = if depth == 0 { 0 } else { deep(depth - 1) };
    below.wrapping_add(
        frame
            .iter()
            .step_by(512)
            .map(|&b| u64::from(b))
            .sum::<u64>(),
    )
}

/// Task: uses about 3 MiB of stack (more than Rust's 2 MiB thread default, less than 8 MiB).
unsafe extern "C" fn three_mib(
    _: *mut c_void,
    _: *const u8,
    _: usize,
    out: *mut TaskOutput,
) -> i32 {
    let sum = deep((3 << 20) / FRAME);
    let bytes = sum.to_ne_bytes();
    pj_out_set(out, bytes.as_ptr(), bytes.len());
    0
}

fn run_three_mib(options: &[(&str, &str)]) -> Result<Vec<Vec<u8>>, CError> {
    let par = parallel(options).unwrap();
    for _ in 0..4 {
        par.submit(Some(three_mib), std::ptr::null_mut(), &[])?;
    }
    par.collect()
}

/// Only the case named in the environment, in a child process; nothing in a normal run.
#[test]
#[ignore = "run by other tests in a child process"]
fn child_case() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    println!();
    if case == "threads" {
        let results = run_three_mib(&[("backend", "threads"), ("n_jobs", "2")]).unwrap();
        println!("RESULTS={}", results.len());
    }
}

#[test]
fn a_task_using_3_mib_of_stack_works_on_threads() {
    let output = child_case_command(CASE, "threads").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("RESULTS=4"),
        "the child died: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_task_using_3_mib_of_stack_works_on_processes() {
    let results = run_three_mib(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    assert_eq!(results.len(), 4);
    // The test thread has Rust's 2 MiB: compute the expected value on a thread with room.
    let expected = std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(|| deep((3 << 20) / FRAME).to_ne_bytes())
        .unwrap()
        .join()
        .unwrap();
    assert!(results.iter().all(|r| r[..] == expected[..]));
}

#[test]
fn a_smaller_stack_size_makes_the_worker_die_not_the_caller() {
    let err = run_three_mib(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("stack_size", "256K"),
    ])
    .unwrap_err();
    assert_eq!(err.status, pj_status::WorkerDied, "{}", err.message);
    // The caller goes on: the same task with room enough works.
    let results = run_three_mib(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("stack_size", "16M"),
    ])
    .unwrap();
    assert_eq!(results.len(), 4);
}

#[test]
fn the_typed_setter_checks_the_documented_range() {
    let cfg = config(&[]).unwrap();
    for (bytes, expected) in [
        (64 << 10, pj_status::Ok),
        (1 << 30, pj_status::Ok),
        ((64 << 10) - 1, pj_status::InvalidArgument),
        ((1 << 30) + 1, pj_status::InvalidArgument),
        (usize::MAX, pj_status::InvalidArgument),
        (0, pj_status::InvalidArgument),
    ] {
        let mut err = std::ptr::null_mut();
        let status = pj_config_set_stack_size(cfg, bytes, &mut err);
        if status != pj_status::Ok {
            let e = take_error(status, err);
            assert!(e.message.contains("stack_size"), "{}", e.message);
        }
        assert_eq!(status, expected, "{bytes}");
    }
    pj_config_free(cfg);
}
