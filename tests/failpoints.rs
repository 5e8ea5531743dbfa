//! The failpoint matrix: every armed stage x mode x backend x on_error x call style, each cell in a
//! process of its own (this executable, re-run with `PJ_FP_CELL`), several at a time. Each cell
//! asserts that the call returns within a bound with a status that is not OK-with-wrong-data,
//! that the error names the stage (and the task where the stage has one), that the executor works
//! on the next call, and that nothing is left behind (no child process, no file in the temp
//! folder). Needs the cargo feature `failpoints` (`cargo test --features failpoints --test
//! failpoints`); its own main, so that spawned workers can be this executable.
//!
//! Cells where a failure cannot be survived by design are not run and are listed as such: a
//! caller-side stage that ends the process (exit, segv) ends the caller, and one that hangs in the
//! caller hangs it, as any library code would.

mod common;

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Where a stage runs.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// In the caller's process (its threads included): only error, truncate and panic are
    /// survivable there.
    Caller,
    /// In a worker process: every mode applies.
    #[allow(dead_code)] // the worker stages join the table as their failpoints land
    Worker,
}

/// The stages the matrix arms: where they run, the pass they fire on (mid-call), and the backends
/// that have them.
const STAGES: &[(&str, Side, u32, &[&str])] = &[
    // The 16th exported call of a cell: one of its submits.
    ("export", Side::Caller, 16, &["threads", "fork", "spawn"]),
];

const MODES: &[&str] = &["error", "truncate", "panic", "exit", "segv", "hang"];

/// Tasks per call; the argument bytes of each (above max_nbytes 1k on processes: spilled).
const TASKS: u64 = 24;
const ARG_BYTES: usize = 2048;
/// How long a cell may take before it counts as hung.
const CELL_LIMIT: Duration = Duration::from_secs(60);

/// Task: the argument's first word x -> [x * x, pid].
unsafe extern "C" fn square(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: ARG_BYTES-byte arguments whose first 8 bytes are x.
    let x = unsafe { arg_u64(arg, len.min(8)) };
    let words = [x * x, u64::from(std::process::id())];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

fn main() {
    let mut err = std::ptr::null_mut();
    check(pj_register(c"square".as_ptr(), Some(square), &mut err), err).unwrap();
    pj_worker_main_if_requested(0, std::ptr::null());
    if let Ok(cell) = std::env::var("PJ_FP_CELL") {
        run_cell(&cell);
        return;
    }
    run_matrix();
}

/// One cell's options: backend, on_error and call style, as "fork,collect,streamed".
fn options(backend: &str, on_error: &str) -> Vec<(&'static str, String)> {
    let mut options = match backend {
        "threads" => vec![("backend", "threads".to_string())],
        "fork" => vec![("backend", "processes".to_string())],
        _ => vec![
            ("backend", "processes".to_string()),
            ("start_method", "spawn".to_string()),
        ],
    };
    options.push(("n_jobs", "2".to_string()));
    options.push(("max_nbytes", "1k".to_string()));
    // Hangs in a worker end at the task timeout.
    options.push(("timeout", "3".to_string()));
    options.push(("on_error", on_error.to_string()));
    options
}

/// Runs one call of TASKS tasks; returns the status, the error (message, task index) and the
/// results that came back OK, by index.
fn one_call(par: &Par, streamed: bool) -> (pj_status, String, i64, BTreeMap<usize, Vec<u8>>) {
    let mut got = BTreeMap::new();
    let args: Vec<Vec<u8>> = (0..TASKS)
        .map(|x| {
            let mut a = vec![0u8; ARG_BYTES];
            a[..8].copy_from_slice(&x.to_ne_bytes());
            a
        })
        .collect();
    let mut status = pj_status::Ok;
    let mut message = String::new();
    let mut task = -1;
    let fail = |st: pj_status, err: *mut pj_error_t| {
        let e = take_error(st, err);
        (st, e.message, e.task_index)
    };
    for arg in &args {
        let mut err = std::ptr::null_mut();
        let st =
            pj_parallel_submit_named(par.0, c"square".as_ptr(), arg.as_ptr(), arg.len(), &mut err);
        if st != pj_status::Ok {
            (status, message, task) = fail(st, err);
            break;
        }
    }
    if status == pj_status::Ok && !streamed {
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let st = pj_parallel_collect(par.0, &mut res, &mut err);
        if st == pj_status::Ok {
            for i in 0..pj_results_len(res) {
                let (mut data, mut len) = (std::ptr::null(), 0);
                if pj_results_get(res, i, &mut data, &mut len) == pj_status::Ok {
                    // SAFETY: a view of `len` bytes, valid until pj_results_free.
                    got.insert(i, unsafe { std::slice::from_raw_parts(data, len) }.to_vec());
                } else if pj_results_status(res, i) != pj_status::Ok && message.is_empty() {
                    // on_error=collect: the first failed task's error stands for the call's.
                    let e = pj_results_error(res, i);
                    // SAFETY: a borrowed error of `res`, read before pj_results_free.
                    message = unsafe { std::ffi::CStr::from_ptr(pj_error_message(e)) }
                        .to_string_lossy()
                        .into_owned();
                    task = i as i64;
                    status = pj_results_status(res, i);
                }
            }
            pj_results_free(res);
        } else {
            (status, message, task) = fail(st, err);
        }
    } else if status == pj_status::Ok {
        loop {
            let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
            let mut err = std::ptr::null_mut();
            let st = pj_parallel_next(par.0, &mut index, &mut data, &mut len, &mut err);
            if st == pj_status::Done {
                break;
            }
            if st != pj_status::Ok {
                (status, message, task) = fail(st, err);
                break;
            }
            // SAFETY: a view of `len` bytes, valid until the next pj_parallel_next.
            got.insert(
                index,
                unsafe { std::slice::from_raw_parts(data, len) }.to_vec(),
            );
        }
    }
    (status, message, task, got)
}

/// In the cell's own process: the armed call, then (disarmed) a second call on the same executor;
/// prints what the parent checks, one `key value` line each.
fn run_cell(cell: &str) {
    let parts: Vec<&str> = cell.split(',').collect();
    let (backend, on_error, style) = (parts[0], parts[1], parts[2]);
    let options = options(backend, on_error);
    let pairs: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = children().len();
    let par = match parallel(&pairs) {
        Ok(par) => par,
        Err(e) => {
            println!("first {:?} {}", e.status, e.message.replace('\n', " "));
            println!("first_task -1");
            pj::failpoint::disarm();
            let par = parallel(&pairs).expect("an executor after disarming");
            second_call(&par, style);
            drop(par);
            println!("children {}", children().len().saturating_sub(before));
            return;
        }
    };
    let (status, message, task, got) = one_call(&par, style == "streamed");
    println!("first {status:?} {}", message.replace('\n', " "));
    println!("first_task {task}");
    let wrong = got
        .iter()
        .filter(|(i, r)| r.len() != 16 || r[..8] != ((**i as u64) * (**i as u64)).to_ne_bytes())
        .count();
    println!("wrong {wrong}");
    pj::failpoint::disarm();
    // What the armed call left (tasks submitted before a failed submit) is collected first.
    let mut res = std::ptr::null_mut();
    if pj_parallel_collect(par.0, &mut res, std::ptr::null_mut()) == pj_status::Ok {
        pj_results_free(res);
    }
    second_call(&par, style);
    drop(par);
    println!("children {}", children().len().saturating_sub(before));
}

fn second_call(par: &Par, style: &str) {
    let (status, message, _, got) = one_call(par, style == "streamed");
    println!(
        "second {status:?} {} {}",
        got.len(),
        message.replace('\n', " ")
    );
}

/// A cell's verdict from its output.
fn judge(stage: &str, mode: &str, out: &str) -> Result<(), String> {
    let line = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or("")
            .to_string()
    };
    let first = line("first");
    let second = line("second");
    if line("wrong") != "0" && !line("wrong").is_empty() {
        return Err(format!("{} results were wrong", line("wrong")));
    }
    if first.starts_with("Ok") {
        return Err(format!("the armed call returned OK: {first}"));
    }
    // The error names the stage (or, for a panic, says pj panicked there; for a dead or timed-out
    // worker, says so).
    let named = first.contains(&format!("failpoint {stage}"))
        || (mode == "panic" && first.contains("panicked"))
        || (matches!(mode, "exit" | "segv") && first.starts_with("WorkerDied"))
        || (mode == "hang" && first.starts_with("Timeout"));
    if !named {
        return Err(format!("the error does not say what failed: {first}"));
    }
    if !second.starts_with(&format!("Ok {TASKS}")) {
        return Err(format!("the next call did not work: {second}"));
    }
    if line("children") != "0" {
        return Err(format!("{} child processes were left", line("children")));
    }
    Ok(())
}

fn run_matrix() {
    let started = Instant::now();
    let mut cells = Vec::new();
    let mut not_run = Vec::new();
    for &(stage, side, pass, backends) in STAGES {
        for &mode in MODES {
            if side == Side::Caller && matches!(mode, "exit" | "segv" | "hang") {
                not_run.push(format!(
                    "{stage}={mode}: ends or hangs the caller by design"
                ));
                continue;
            }
            for &backend in backends {
                for on_error in ["raise", "collect"] {
                    for style in ["ordered", "streamed"] {
                        cells.push((
                            format!("{stage}={mode}@{pass}"),
                            format!("{backend},{on_error},{style}"),
                        ));
                    }
                }
            }
        }
    }
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    let mut passed = 0;
    // Two cells at a time: the machine has 2 CPUs, and each cell starts 2 workers.
    for batch in cells.chunks(2) {
        let running: Vec<_> = batch
            .iter()
            .map(|(spec, cell)| {
                let child = Command::new(&exe)
                    .env("PJ_FAILPOINTS", spec)
                    .env("PJ_FP_CELL", cell)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (spec, cell, child, Instant::now())
            })
            .collect();
        for (spec, cell, mut child, start) in running {
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if start.elapsed() > CELL_LIMIT {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let output = child.wait_with_output().unwrap();
            let out = String::from_utf8_lossy(&output.stdout).into_owned();
            let stage = spec.split('=').next().unwrap();
            let mode = spec.split(['=', '@']).nth(1).unwrap();
            let verdict = match status {
                None => Err(format!("hung (killed after {CELL_LIMIT:?})")),
                Some(s) if !s.success() => Err(format!(
                    "the caller died ({s}): {}",
                    String::from_utf8_lossy(&output.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                )),
                Some(_) => judge(stage, mode, &out),
            };
            match verdict {
                Ok(()) => passed += 1,
                Err(why) => failures.push(format!("{spec} on {cell}: {why}")),
            }
        }
    }
    println!(
        "failpoint matrix: {} cells run, {passed} passed, {} failed, {} not run, in {:.0?}",
        cells.len(),
        failures.len(),
        not_run.len(),
        started.elapsed()
    );
    for line in &not_run {
        println!("  not run: {line}");
    }
    for line in &failures {
        println!("  FAILED: {line}");
    }
    assert!(failures.is_empty(), "{} cells failed", failures.len());
}
