//! Issue 18 item 4: the cold processes call (new executor, 2 trivial tasks, n_jobs=2, free) per
//! start method, from a caller holding 0, 200 MiB and 1 GiB of touched memory; median of
//! `PJ_COLD_RUNS` calls (default 15). The task is a registered function, for every method.
//!
//! `cargo bench --bench cold_call` (its own main: spawned workers re-run it, and the fork server
//! must start before the caller grows).

use std::ffi::c_void;
use std::time::Instant;

mod support;

use pj::ffi::*;
use support::*;

fn main() {
    let name = c"double";
    assert_eq!(
        pj_register(name.as_ptr(), Some(double), std::ptr::null_mut()),
        pj_status::Ok
    );
    pj_worker_main_if_requested(0, std::ptr::null());
    // The fork server starts now, while this process is small.
    assert_eq!(pj_forkserver_start(std::ptr::null_mut()), pj_status::Ok);
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file as a smoke test
    // (small callers, two calls each).
    let benching = std::env::args().any(|a| a == "--bench");
    let runs: usize = std::env::var("PJ_COLD_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if benching { 15 } else { 2 });
    let held: &[usize] = if benching {
        &[0, 200 << 20, 1 << 30]
    } else {
        &[0, 8 << 20]
    };
    println!(
        "| cold call (new, 2 tasks, processes n_jobs=2, free), caller holding | start_method | median ms | min-max |"
    );
    println!("|---|---|--:|--:|");
    for &bytes in held {
        // Every page written (vec! of a non-zero byte), kept alive until the calls are done.
        let memory = std::hint::black_box(vec![1u8; bytes]);
        for method in ["fork", "spawn", "forkserver"] {
            let mut ms: Vec<f64> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    let par = new_parallel(&[
                        ("backend", "processes"),
                        ("n_jobs", "2"),
                        ("start_method", method),
                    ]);
                    let res = submit_all(par, Some(double), std::ptr::null_mut::<c_void>(), 0..2);
                    check_doubles(res, 2);
                    pj_parallel_free(par);
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            println!(
                "| {} MiB | {method} | {:.2} | {:.2}-{:.2} |",
                bytes >> 20,
                ms[ms.len() / 2],
                ms[0],
                ms[ms.len() - 1]
            );
        }
        drop(memory);
    }
}
