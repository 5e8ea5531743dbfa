//! The data path (issue 17): 200 MiB passed as 512 KiB and as 4 MiB arguments, and returned as
//! 512 KiB results, on threads, sequential and processes (n_jobs=2, keep_workers=true, the SAME
//! executor reused for 6 calls), beside a plain memcpy of the same bytes, the userdata path, rayon
//! over the same chunks and joblib passing the same bytes as numpy arrays (memmapping on and off;
//! benches/compare/joblib_bench.py `data`, run with the `python3` on PATH: a venv with joblib and
//! numpy); then a stream of 10,000 results of 1 MiB (the caller's peak RSS with and without
//! batch_bytes), and the cold processes call from a caller holding 0, 200 MiB and 1 GiB.
//!
//! Run: `cargo bench --bench data` (`-- --quick` for the small sizes, `-- --no-joblib` without the
//! joblib rows). Under `cargo test --all-targets` it runs the small sizes as a smoke test, without
//! joblib. Prints figures; asserts nothing about time, only that every result is right.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

mod support;

use pj::ffi::*;
use pj::task::TaskOutput;
use support::data_path::*;
use support::*;

/// Prints one row: call 1, 2, 3 and the last call in ms, and GB/s over the median of calls 2..last.
fn row(name: &str, bytes: usize, seconds: &Result<Vec<f64>, String>) {
    let seconds = match seconds {
        Ok(s) if s.len() >= 2 => s,
        Ok(_) => return println!("| {name} | too few calls | | | | |"),
        Err(why) => return println!("| {name} | skipped: {why} | | | | |"),
    };
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

/// The environment variable that makes a re-executed copy of this bench run one stream.
const STREAM: &str = "PJ_DATA_BENCH_STREAM";

fn main() {
    if let Ok(spec) = std::env::var(STREAM) {
        return stream_child(&spec);
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file as a smoke test.
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let quick = !bench || args.iter().any(|a| a == "--quick");
    let joblib = bench && !args.iter().any(|a| a == "--no-joblib");
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
    let mut source = Source {
        bytes: pattern(total),
        chunk: 1,
    };
    for (name, seconds) in baseline_rows(&source, calls) {
        row(&name, total, &seconds);
    }
    for (backend, options) in BACKENDS {
        for (name, seconds) in pj_rows(&mut source, calls, backend, options, true) {
            row(&name, total, &seconds);
        }
    }
    drop(source);
    if joblib {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/compare/joblib_bench.py");
        for (name, seconds) in joblib_rows("python3", &script, total, calls) {
            row(&name, total, &seconds);
        }
    }
    println!();
    streams(if quick { 200 } else { 10_000 });
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

/// Bytes of each result of the stream: 1 MiB, max_nbytes' size (so they travel by socket).
const STREAM_RESULT: usize = 1 << 20;

/// Task: returns STREAM_RESULT bytes, each the low byte of its 8-byte argument.
unsafe extern "C" fn one_mib(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    let value = read_u64(arg, len) as u8;
    let dst = pj_out_alloc(out, STREAM_RESULT);
    if dst.is_null() {
        return 1;
    }
    // SAFETY: pj_out_alloc returned STREAM_RESULT writable bytes.
    unsafe { std::ptr::write_bytes(dst, value, STREAM_RESULT) };
    0
}

/// Producer: 0, 1, ... up to the count in the `[AtomicU64; 2]` (next, count) `userdata` points to.
unsafe extern "C" fn count_to(userdata: *mut c_void, arg: *mut *const u8, len: *mut usize) -> i32 {
    thread_local! {
        static BUF: std::cell::Cell<[u8; 8]> = const { std::cell::Cell::new([0; 8]) };
    }
    // SAFETY: the stream passes a live [AtomicU64; 2].
    let [next, count] = unsafe { &*(userdata as *const [AtomicU64; 2]) };
    let i = next.fetch_add(1, Ordering::Relaxed);
    if i >= count.load(Ordering::Relaxed) {
        return 0;
    }
    BUF.with(|buf| {
        buf.set(i.to_ne_bytes());
        // SAFETY: valid output pointers; pj copies the argument before the next producer call.
        unsafe {
            *arg = buf.as_ptr().cast::<u8>();
            *len = 8;
        }
    });
    1
}

/// This process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// Issue 17 item 6, in a re-executed copy of this bench (so that its peak RSS is the stream's):
/// `spec` = "TASKS BATCH_BYTES". Streams TASKS results of 1 MiB with imap on processes (n_jobs=2,
/// max_nbytes 1M), each read (every page touched) as it comes, and prints "stream SECONDS
/// GROWTH_BYTES".
fn stream_child(spec: &str) {
    let mut words = spec.split_whitespace();
    let tasks: u64 = words.next().and_then(|w| w.parse().ok()).expect("tasks");
    let batch_bytes = words.next().expect("batch_bytes");
    let mut options = vec![
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("max_nbytes", "1M"),
    ];
    if batch_bytes != "default" {
        options.push(("batch_bytes", batch_bytes));
    }
    let par = new_parallel(&options);
    let before = peak_rss();
    let state = [AtomicU64::new(0), AtomicU64::new(tasks)];
    let start = Instant::now();
    let status = pj_parallel_imap(
        par,
        Some(one_mib),
        std::ptr::null_mut(),
        Some(count_to),
        (&state as *const [AtomicU64; 2]).cast_mut().cast(),
        std::ptr::null_mut(),
    );
    assert_eq!(status, pj_status::Ok);
    let mut read = 0u64;
    loop {
        let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
        let status = pj_parallel_next(par, &mut index, &mut data, &mut len, std::ptr::null_mut());
        if status == pj_status::Done {
            break;
        }
        assert_eq!(status, pj_status::Ok);
        assert_eq!(len, STREAM_RESULT);
        // SAFETY: pj_parallel_next gave a view of `len` bytes, valid until the next call.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        assert!(bytes.iter().step_by(4096).all(|&b| b == index as u8));
        read += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(read, tasks);
    pj_parallel_free(par);
    println!("stream {seconds} {}", peak_rss().saturating_sub(before));
}

/// Issue 17 item 6: the stream of 1 MiB results with the default batch_bytes and without a cap
/// (`none`: batches grow by time alone, as before batch_bytes), each in a fresh process.
fn streams(tasks: u64) {
    println!(
        "| stream: {tasks} results of 1 MiB, imap, processes n_jobs=2, max_nbytes 1M | seconds | GB/s | caller's peak RSS growth, MiB |"
    );
    println!("|---|--:|--:|--:|");
    for (label, batch_bytes) in [
        ("batch_bytes default (16M)", "default"),
        ("batch_bytes none", "none"),
    ] {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .env(STREAM, format!("{tasks} {batch_bytes}"))
            .output()
            .expect("re-executing the bench");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let figures: Option<(f64, u64)> = stdout.lines().find_map(|l| {
            let mut w = l.strip_prefix("stream ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        });
        match figures {
            Some((seconds, growth)) if output.status.success() => println!(
                "| {label} | {seconds:.2} | {:.2} | {} |",
                (tasks as f64 * STREAM_RESULT as f64) / seconds / 1e9,
                growth >> 20
            ),
            _ => panic!(
                "the stream ({label}) failed: {}\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
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
