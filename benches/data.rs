//! The data path (issue 17): 200 MiB passed as 512 KiB and as 4 MiB arguments, and returned as
//! 512 KiB results, on threads, sequential and processes (n_jobs=2, keep_workers=true, the SAME
//! executor reused for 6 calls), beside a plain memcpy of the same bytes, the userdata path and
//! rayon over the same chunks; then the cold processes call from a caller holding 0, 200 MiB and
//! 1 GiB of touched memory.
//!
//! Run: `cargo bench --bench data` (`-- --quick` for the small sizes). Under
//! `cargo test --all-targets` it runs the small sizes as a smoke test. Prints figures; asserts
//! nothing about time, only that every result is right.

use std::ffi::c_void;
use std::time::Instant;

use rayon::prelude::*;

mod support;

use pj::ffi::*;
use pj::task::TaskOutput;
use support::*;

/// The caller's bytes, cut in chunks of `chunk` bytes (tasks reach them through userdata).
struct Source {
    bytes: Vec<u8>,
    chunk: usize,
}

impl Source {
    fn part(&self, index: usize) -> &[u8] {
        &self.bytes[index * self.chunk..(index + 1) * self.chunk]
    }
}

/// The task work: one byte in 64 read and summed.
fn sum64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .step_by(64)
        .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)))
}

/// Task: the sum of one byte in 64 of its chunk, as 8 bytes. The chunk is the argument itself when
/// userdata is NULL, or chunk number `arg` of the `Source` in userdata.
unsafe extern "C" fn read_chunk(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`; a non-NULL userdata is a live Source.
    let bytes = unsafe {
        if userdata.is_null() {
            std::slice::from_raw_parts(arg, len)
        } else {
            (*(userdata as *const Source)).part(read_u64(arg, len) as usize)
        }
    };
    set_u64(out, sum64(bytes));
    0
}

/// Task: returns chunk number `arg` of the `Source` in userdata as its result (written in place).
unsafe extern "C" fn return_chunk(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: userdata is a live Source; pj passes 8 readable bytes at `arg`.
    let part = unsafe { (*(userdata as *const Source)).part(read_u64(arg, len) as usize) };
    let dst = pj_out_alloc(out, part.len());
    if dst.is_null() {
        return 1;
    }
    // SAFETY: pj_out_alloc returned `part.len()` writable bytes, apart from `part`.
    unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len()) };
    0
}

/// How a row feeds its tasks.
#[derive(Clone, Copy)]
enum Feed {
    /// Each chunk is an argument (copied by pj at submit).
    Args,
    /// Each argument is a chunk number; the task reads the chunk through userdata.
    Userdata,
    /// Each argument is a chunk number; the task returns the chunk as its result.
    Results,
}

/// One call: every chunk submitted, collected and checked; returns the seconds from the first
/// submit to the end of collect (checking and `pj_results_free` are not timed).
fn one_call(par: *mut pj_parallel_t, source: &Source, feed: Feed, expected: u64) -> f64 {
    let n = source.bytes.len() / source.chunk;
    let userdata = source as *const Source as *mut c_void;
    let start = Instant::now();
    for i in 0..n {
        let index = (i as u64).to_ne_bytes();
        let (task, userdata, arg): (pj_task_fn, _, &[u8]) = match feed {
            Feed::Args => (Some(read_chunk), std::ptr::null_mut(), source.part(i)),
            Feed::Userdata => (Some(read_chunk), userdata, &index),
            Feed::Results => (Some(return_chunk), userdata, &index),
        };
        let status = pj_parallel_submit(
            par,
            task,
            userdata,
            arg.as_ptr(),
            arg.len(),
            std::ptr::null_mut(),
        );
        assert_eq!(status, pj_status::Ok);
    }
    let mut res = std::ptr::null_mut();
    let status = pj_parallel_collect(par, &mut res, std::ptr::null_mut());
    assert_eq!(status, pj_status::Ok);
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(pj_results_len(res), n);
    match feed {
        Feed::Args | Feed::Userdata => {
            let total = (0..n).fold(0u64, |acc, i| acc.wrapping_add(result_u64(res, i)));
            assert_eq!(total, expected);
        }
        Feed::Results => {
            for i in 0..n {
                let (mut data, mut len) = (std::ptr::null(), 0);
                assert_eq!(pj_results_get(res, i, &mut data, &mut len), pj_status::Ok);
                // SAFETY: pj_results_get gave `len` readable bytes, valid until pj_results_free.
                let got = unsafe { std::slice::from_raw_parts(data, len) };
                assert_eq!(sum64(got), sum64(source.part(i)));
            }
        }
    }
    pj_results_free(res);
    seconds
}

/// Prints one row: call 1, 2, 3 and the last call in ms, and GB/s over the median of calls 2..last.
fn row(name: &str, bytes: usize, seconds: &[f64]) {
    let ms = |s: f64| format!("{:.1}", s * 1e3);
    let mut steady = seconds[1..].to_vec();
    steady.sort_by(f64::total_cmp);
    let median = steady[steady.len() / 2];
    println!(
        "| {name} | {} | {} | {} | {} | {:.2} |",
        ms(seconds[0]),
        ms(seconds[1]),
        seconds.get(2).map_or("-".into(), |&s| ms(s)),
        ms(*seconds.last().unwrap()),
        bytes as f64 / median / 1e9
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file as a smoke test.
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--quick");
    let (total, calls) = if quick { (8 << 20, 4) } else { (200 << 20, 6) };
    println!(
        "pj data path: {} MiB per call, n_jobs=2, keep_workers=true, the same executor for {calls} calls; \
         ms per call (submit to collect), GB/s over the median of calls 2-{calls}",
        total >> 20
    );
    println!("load average: {}", load_average());
    println!();
    println!("| path | call 1 | call 2 | call 3 | call {calls} | GB/s |");
    println!("|---|--:|--:|--:|--:|--:|");
    data_rows(total, calls);
    println!();
    let held: &[usize] = if quick {
        &[0, 8 << 20]
    } else {
        &[0, 200 << 20, 1 << 30]
    };
    cold_calls(held, if quick { 3 } else { 20 });
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn data_rows(total: usize, calls: usize) {
    // A pattern, so that a wrong chunk or a stale result changes the sums.
    let bytes: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut source = Source { bytes, chunk: 1 };

    // The bytes copied once, into memory touched before (reused) and into a fresh allocation.
    let mut dst = vec![0u8; total];
    let reused: Vec<f64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(&source.bytes);
            std::hint::black_box(&dst);
            start.elapsed().as_secs_f64()
        })
        .collect();
    drop(dst);
    row("memcpy into a reused buffer", total, &reused);
    let fresh: Vec<f64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            let copy = std::hint::black_box(source.bytes.to_vec());
            let seconds = start.elapsed().as_secs_f64();
            drop(copy);
            seconds
        })
        .collect();
    row("memcpy into a fresh allocation", total, &fresh);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let expected512 = source.bytes.chunks(512 << 10).map(sum64).sum::<u64>();
    let rayon: Vec<f64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            let sum: u64 = pool.install(|| source.bytes.par_chunks(512 << 10).map(sum64).sum());
            let seconds = start.elapsed().as_secs_f64();
            assert_eq!(sum, expected512);
            seconds
        })
        .collect();
    row("rayon, 2 threads, 512 KiB chunks", total, &rayon);

    let backends: [(&str, &[(&str, &str)]); 3] = [
        ("threads", &[("backend", "threads"), ("n_jobs", "2")]),
        ("sequential", &[("backend", "sequential")]),
        ("processes", &[("backend", "processes"), ("n_jobs", "2")]),
    ];
    let kib512 = "512 KiB args";
    let cases = [
        (kib512, 512 << 10, Feed::Args),
        ("4 MiB args", 4 << 20, Feed::Args),
        ("userdata, 512 KiB chunks", 512 << 10, Feed::Userdata),
        ("512 KiB results", 512 << 10, Feed::Results),
    ];
    for (backend, options) in backends {
        for (what, chunk, feed) in cases {
            source.chunk = chunk;
            let expected = source.bytes.chunks(chunk).map(sum64).sum::<u64>();
            let par = new_parallel(&[options, &[("keep_workers", "true")]].concat());
            let seconds: Vec<f64> = (0..calls)
                .map(|_| one_call(par, &source, feed, expected))
                .collect();
            pj_parallel_free(par);
            let how = match (backend, chunk, feed) {
                ("processes", c, Feed::Args) if c > 1 << 20 => ", memmapped (above max_nbytes)",
                ("processes", _, Feed::Args | Feed::Results) => ", socket (below max_nbytes)",
                _ => "",
            };
            row(&format!("{backend}, {what}{how}"), total, &seconds);
        }
    }
}

/// Issue 17 item 5: a cold call (new executor, 2 trivial tasks, processes n_jobs=2, free) from a
/// caller that holds `held` bytes of touched memory, median of `runs` calls.
fn cold_calls(held: &[usize], runs: usize) {
    println!(
        "| cold call (new, 2 tasks, processes n_jobs=2, free), caller holding | median ms | min-max |"
    );
    println!("|---|--:|--:|");
    for &bytes in held {
        // Every page written (vec! of a non-zero byte), kept alive until the calls are done.
        let memory = std::hint::black_box(vec![1u8; bytes]);
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let par = new_parallel(&[("backend", "processes"), ("n_jobs", "2")]);
                let res = submit_all(par, Some(double), std::ptr::null_mut(), 0..2);
                check_doubles(res, 2);
                pj_parallel_free(par);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        drop(memory);
        ms.sort_by(f64::total_cmp);
        println!(
            "| {} MiB | {:.2} | {:.2}-{:.2} |",
            bytes >> 20,
            ms[ms.len() / 2],
            ms[0],
            ms[ms.len() - 1]
        );
    }
}
