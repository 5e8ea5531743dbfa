//! Auto batching bounds a batch's bytes, not only its duration: a stream of fast tasks with large
//! results keeps the caller's memory bounded by the window.
//!
//! The stream runs in a re-executed copy of this test binary, so that its peak RSS (VmHWM) is the
//! stream's own and not that of the other tests of this binary.

mod common;

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const CASE: &str = "PJ_BATCH_BYTES_CASE";

/// Bytes each task returns: a little above max_nbytes (1M), so that results come back through
/// files the caller maps (the fastest path: fast tasks are what grows batches).
const RESULT_BYTES: usize = (1 << 20) + 4096;
/// Tasks in the stream.
const TASKS: u64 = 1000;
/// What reading one result costs the caller.
const READ_MICROS: u64 = 2000;

/// Task: returns RESULT_BYTES bytes, each the low byte of its 8-byte argument. (Written in a
/// buffer of its own and set with pj_out_set: a plain copy, fast in debug builds too.)
unsafe extern "C" fn one_mib(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; RESULT_BYTES]);
    }
    // SAFETY: 8-byte arguments.
    let value = unsafe { arg_u64(arg, len) };
    BUF.with_borrow_mut(|buf| {
        // SAFETY: the buffer holds RESULT_BYTES bytes (a memset, not a loop, in debug builds).
        unsafe { std::ptr::write_bytes(buf.as_mut_ptr(), value as u8, RESULT_BYTES) };
        pj_out_set(out, buf.as_ptr(), buf.len())
    }) as i32
}

/// Producer: 0, 1, ..., TASKS - 1 from the AtomicU64 `userdata` points to.
unsafe extern "C" fn count(userdata: *mut c_void, arg: *mut *const u8, len: *mut usize) -> i32 {
    thread_local! {
        static BUF: std::cell::Cell<[u8; 8]> = const { std::cell::Cell::new([0; 8]) };
    }
    // SAFETY: the child passes a live AtomicU64.
    let next = unsafe { &*(userdata as *const AtomicU64) };
    let i = next.fetch_add(1, Ordering::Relaxed);
    if i >= TASKS {
        return 0;
    }
    BUF.with(|buf| {
        buf.set(i.to_ne_bytes());
        // SAFETY: valid output pointers; the buffer outlives the producer call (pj copies the
        // argument before calling the producer again).
        unsafe {
            *arg = buf.as_ptr().cast::<u8>();
            *len = 8;
        }
    });
    1
}

/// This process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Streams TASKS results of about 1 MiB with imap on processes (max_nbytes 1M), read as they come,
/// with `options` added; prints the growth of the peak RSS in MiB on a line "growth N".
fn stream(options: &[(&str, &str)]) {
    let mut all = vec![
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("max_nbytes", "1M"),
    ];
    all.extend_from_slice(options);
    let par = parallel(&all).unwrap();
    let before = peak_rss();
    let next = AtomicU64::new(0);
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_imap(
        par.0,
        Some(one_mib),
        std::ptr::null_mut(),
        Some(count),
        (&next as *const AtomicU64).cast_mut().cast(),
        &mut err,
    );
    check(status, err).unwrap();
    let mut read = 0u64;
    loop {
        let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_next(par.0, &mut index, &mut data, &mut len, &mut err);
        if status == pj_status::Done {
            break;
        }
        check(status, err).unwrap();
        assert_eq!(len, RESULT_BYTES);
        // SAFETY: a live view of `len` bytes; touch every page as a real reader would.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        assert!(bytes.iter().step_by(4096).all(|&b| b == index as u8));
        // A reader a little slower than the workers: the window, not the reader's pace, is then
        // what bounds the results held.
        std::thread::sleep(std::time::Duration::from_micros(READ_MICROS));
        read += 1;
    }
    assert_eq!(read, TASKS);
    let growth = peak_rss().saturating_sub(before);
    println!("growth {}", growth >> 20);
}

/// Task: returns nothing.
unsafe extern "C" fn nothing(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    0
}

/// On threads, submits 20,000 tiny tasks (auto batching grows to thousands of tasks a batch),
/// then LARGE_ARGS tasks of 1 MiB arguments; prints the growth of the peak RSS as `stream` does.
fn large_arguments_after_tiny_ones() {
    let par = parallel(&[("backend", "threads"), ("n_jobs", "2")]).unwrap();
    let big = vec![7u8; 1 << 20];
    let before = peak_rss();
    for i in 0..20_000u64 {
        par.submit(Some(nothing), std::ptr::null_mut(), &i.to_ne_bytes())
            .unwrap();
    }
    for _ in 0..LARGE_ARGS {
        par.submit(Some(nothing), std::ptr::null_mut(), &big)
            .unwrap();
    }
    assert_eq!(par.collect().unwrap().len(), 20_000 + LARGE_ARGS);
    let growth = peak_rss().saturating_sub(before);
    println!("growth {}", growth >> 20);
}

/// Tasks with 1 MiB arguments in `large_arguments_after_tiny_ones`.
const LARGE_ARGS: usize = 400;

/// Runs the stream in a child; returns its peak RSS growth in MiB.
fn child_growth(case: &str) -> u64 {
    let output = child_case_command(CASE, case).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "case {case}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("growth "))
        .unwrap_or_else(|| panic!("no growth line in:\n{stdout}"))
        .trim()
        .parse()
        .unwrap()
}

/// The default cap (16 MiB a batch) holds 1 MiB results to batches of about 16 tasks, where
/// time-based growth alone let batches reach hundreds of tasks. Results mapped from files count in
/// the caller's RSS once read, and a batch's are released together after its last one is read, so
/// the peak follows the batch size: 241 MiB in every run before the cap, about 15 after.
#[test]
fn a_stream_of_large_results_stays_within_the_window() {
    let growth = child_growth("default");
    assert!(growth <= 100, "the stream's peak RSS grew by {growth} MiB");
}

/// The batch_bytes option is taken, and bounds the stream as well.
#[test]
fn batch_bytes_sets_the_cap() {
    let growth = child_growth("8M");
    assert!(growth <= 64, "the stream's peak RSS grew by {growth} MiB");
}

/// A batch is cut once its arguments reach the cap, even when the batch size grown on tiny tasks
/// would take hundreds of large ones (before the cut, all 400 MiB of arguments waited in one
/// pending batch).
#[test]
fn a_batch_is_cut_at_the_cap_when_large_arguments_follow_tiny_ones() {
    let growth = child_growth("args");
    assert!(growth <= 200, "the caller's peak RSS grew by {growth} MiB");
}

/// The re-executed scenarios. Ignored in normal runs.
#[test]
#[ignore]
fn child_case() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    println!();
    match case.as_str() {
        "default" => stream(&[]),
        "8M" => stream(&[("batch_bytes", "8M")]),
        "args" => large_arguments_after_tiny_ones(),
        other => panic!("unknown case {other}"),
    }
}
