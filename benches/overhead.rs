//! Per-task overhead of pj on trivial tasks (x*2 on 8 bytes), through the C ABI.
//!
//! Run: `cargo bench --bench overhead` (optionally `-- 1000000` for the task count). Prints figures;
//! asserts nothing about time (these machines are shared and noisy).

use std::ffi::c_void;
use std::time::Instant;

mod support;

use pj::ffi::*;
use pj::task::TaskOutput;
use support::*;

fn via_submit(par: *mut pj_parallel_t, n: u64) -> f64 {
    pj_submit_trivial(par, n) * 1e9 / n as f64
}

fn via_map(par: *mut pj_parallel_t, n: u64) -> f64 {
    pj_map_trivial(par, n) * 1e9 / n as f64
}

fn median(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let default_n = if benching { 1_000_000 } else { 1_000 };
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default_n);
    let runs = if benching { 5 } else { 1 };
    println!(
        "pj per-task overhead, {n} trivial tasks (x*2 on 8 bytes), median of {runs} runs [min-max], ns/task"
    );
    println!("cpus: {}", pj_cpu_count());
    let setups: [(&str, &[(&str, &str)]); 7] = [
        (
            "processes n_jobs=2 batch=auto",
            &[("backend", "processes"), ("n_jobs", "2")],
        ),
        (
            "processes n_jobs=2 batch=1",
            &[
                ("backend", "processes"),
                ("n_jobs", "2"),
                ("batch_size", "1"),
            ],
        ),
        (
            "threads n_jobs=2 batch=auto",
            &[("backend", "threads"), ("n_jobs", "2")],
        ),
        (
            "threads n_jobs=2 batch=1",
            &[("backend", "threads"), ("n_jobs", "2"), ("batch_size", "1")],
        ),
        ("sequential batch=auto", &[("backend", "sequential")]),
        (
            "sequential batch=1",
            &[("backend", "sequential"), ("batch_size", "1")],
        ),
        (
            "threads n_jobs=1 (inline)",
            &[("backend", "threads"), ("n_jobs", "1")],
        ),
    ];
    for (name, options) in setups {
        let par = new_parallel(options);
        // Warm the pool and the batch-size statistics once, as a long-lived object would be.
        via_submit(par, n.min(10_000));
        let submit = median((0..runs).map(|_| via_submit(par, n)).collect());
        let map = median((0..runs).map(|_| via_map(par, n)).collect());
        println!(
            "{name:<30} submit {:>8.1} [{:.1}-{:.1}]   map {:>8.1} [{:.1}-{:.1}]",
            submit.0, submit.1, submit.2, map.0, map.1, map.2
        );
        pj_parallel_free(par);
    }
    let start = Instant::now();
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(std::hint::black_box(i) * 2);
    }
    std::hint::black_box(acc);
    println!(
        "{:<30} {:>8.2} ns/task",
        "plain serial loop",
        start.elapsed().as_secs_f64() * 1e9 / n as f64
    );
    if benching {
        cpu_bound_speedup();
        cold_first_call();
        big_buffer_read_by_two_tasks();
    }
}

/// Task: sums one byte per 64 of its half of the buffer. The argument is 8 bytes (which half) when
/// the buffer comes through userdata, or the half itself otherwise.
unsafe extern "C" fn sum_half(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: either an 8-byte half number with userdata the whole buffer, or the half itself.
    let bytes: &[u8] = unsafe {
        if userdata.is_null() {
            std::slice::from_raw_parts(arg, len)
        } else {
            let buffer = &*(userdata as *const Vec<u8>);
            let half = buffer.len() / 2;
            let which = u64::from_ne_bytes(std::slice::from_raw_parts(arg, 8).try_into().unwrap());
            &buffer[which as usize * half..(which as usize + 1) * half]
        }
    };
    let sum = bytes
        .iter()
        .step_by(64)
        .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)));
    pj_out_set(out, sum.to_ne_bytes().as_ptr(), 8);
    0
}

/// Issue 6's bench: a 200 MB buffer read by 2 tasks on 2 worker processes, in ms per call, when the
/// buffer exists before the call (userdata, copy-on-write), is spilled to a file (arguments above
/// max_nbytes), or goes through the socket (max_nbytes=none).
fn big_buffer_read_by_two_tasks() {
    let buffer: Vec<u8> = vec![3u8; 200 << 20];
    let half = buffer.len() / 2;
    let time = |options: &[(&str, &str)], through_userdata: bool| {
        let samples: Vec<f64> = (0..5)
            .map(|_| {
                let par = new_parallel(options);
                let start = Instant::now();
                for which in 0..2u64 {
                    let mut err = std::ptr::null_mut();
                    let status = if through_userdata {
                        let arg = which.to_ne_bytes();
                        let userdata = &buffer as *const Vec<u8> as *mut c_void;
                        pj_parallel_submit(par, Some(sum_half), userdata, arg.as_ptr(), 8, &mut err)
                    } else {
                        let part = &buffer[which as usize * half..(which as usize + 1) * half];
                        let null = std::ptr::null_mut();
                        pj_parallel_submit(
                            par,
                            Some(sum_half),
                            null,
                            part.as_ptr(),
                            part.len(),
                            &mut err,
                        )
                    };
                    assert_eq!(status, pj_status::Ok);
                }
                let mut res = std::ptr::null_mut();
                let status = pj_parallel_collect(par, &mut res, std::ptr::null_mut());
                assert_eq!(status, pj_status::Ok);
                let elapsed = start.elapsed().as_secs_f64() * 1e3;
                pj_results_free(res);
                pj_parallel_free(par);
                elapsed
            })
            .collect();
        median(samples)
    };
    let processes = [("backend", "processes"), ("n_jobs", "2")];
    /// (name, options, whether the buffer goes through userdata).
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, bool);
    let cases: [Case; 3] = [
        (
            "userdata (exists before the call)",
            processes.to_vec(),
            true,
        ),
        (
            "spilled argument (max_nbytes=1M)",
            processes.to_vec(),
            false,
        ),
        (
            "through the socket (max_nbytes=none)",
            [&processes[..], &[("max_nbytes", "none")]].concat(),
            false,
        ),
    ];
    for (name, options, through_userdata) in cases {
        let (median, min, max) = time(&options, through_userdata);
        println!("200 MB read by 2 tasks, {name:<38} {median:>8.1} ms [{min:.1}-{max:.1}]");
    }
}

/// Spins for about a millisecond of CPU (no sleeping: the point is to use a core).
unsafe extern "C" fn burn_1ms(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed().as_micros() < 1000 {
        for i in 0..1000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
    }
    std::hint::black_box(x);
    pj_out_set(out, arg, len);
    0
}

/// 2,000 tasks of ~1 ms: wall time serial vs n_jobs=2 on each backend.
fn cpu_bound_speedup() {
    let run = |options: &[(&str, &str)]| {
        let par = new_parallel(options);
        let start = Instant::now();
        let res = submit_all(par, Some(burn_1ms), std::ptr::null_mut(), 0..2_000);
        let seconds = start.elapsed().as_secs_f64();
        pj_results_free(res);
        pj_parallel_free(par);
        seconds
    };
    let serial = run(&[("backend", "sequential")]);
    println!("2,000 x 1 ms tasks: sequential {serial:.3} s");
    for backend in ["processes", "threads"] {
        let times: Vec<f64> = (0..3)
            .map(|_| run(&[("backend", backend), ("n_jobs", "2")]))
            .collect();
        let (median, min, max) = median(times);
        println!(
            "2,000 x 1 ms tasks: {backend} n_jobs=2 {median:.3} s [{min:.3}-{max:.3}]  speedup {:.2}x",
            serial / median
        );
    }
}

/// A new object's first call of two trivial tasks on processes: fork, run, retire.
fn cold_first_call() {
    let times: Vec<f64> = (0..20)
        .map(|_| {
            let start = Instant::now();
            let par = new_parallel(&[
                ("backend", "processes"),
                ("n_jobs", "2"),
                ("batch_size", "1"),
            ]);
            for i in 0..2u64 {
                let arg = i.to_ne_bytes();
                pj_parallel_submit(
                    par,
                    Some(double),
                    std::ptr::null_mut(),
                    arg.as_ptr(),
                    8,
                    std::ptr::null_mut(),
                );
            }
            let mut res = std::ptr::null_mut();
            assert_eq!(
                pj_parallel_collect(par, &mut res, std::ptr::null_mut()),
                pj_status::Ok
            );
            pj_results_free(res);
            pj_parallel_free(par);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let (median, min, max) = median(times);
    println!(
        "cold first call (new object, 2 tasks, processes n_jobs=2, incl. free): {median:.2} ms [{min:.2}-{max:.2}]"
    );
}
