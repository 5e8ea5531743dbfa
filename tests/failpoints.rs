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
    Worker,
}

const PROCESSES: &[&str] = &["fork", "spawn", "forkserver"];

/// The stages the matrix arms: where they run, the pass they fire on (mid-call: passes are counted
/// per process, and a forked worker starts from its parent's count, which is 0 for worker
/// stages), and the backends that have them.
const STAGES: &[(&str, Side, u32, &[&str])] = &[
    // The 16th exported call of a cell: one of its submits.
    ("export", Side::Caller, 16, &["threads", "fork", "spawn"]),
    // Each task's argument is spilled as it is submitted: the 5th task's.
    ("spill_write", Side::Caller, 5, PROCESSES),
    ("batch_send", Side::Caller, 3, PROCESSES),
    ("result_receive", Side::Caller, 3, PROCESSES),
    ("result_decode", Side::Caller, 3, PROCESSES),
    // Every worker's first start.
    ("worker_start", Side::Worker, 1, PROCESSES),
    // A worker's second batch.
    ("batch_receive", Side::Worker, 2, PROCESSES),
    ("arg_map", Side::Worker, 2, PROCESSES),
    ("result_encode", Side::Worker, 2, PROCESSES),
    ("result_send", Side::Worker, 2, PROCESSES),
    ("task_cleanup", Side::Worker, 2, PROCESSES),
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
        "forkserver" => vec![
            ("backend", "processes".to_string()),
            ("start_method", "forkserver".to_string()),
        ],
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
                if pj_results_status(res, i) == pj_status::Ok
                    && pj_results_get(res, i, &mut data, &mut len) == pj_status::Ok
                {
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
    println!("backend {backend}");
    let options = options(backend, on_error);
    let pairs: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = children().len();
    let fds = open_fds();
    let par = match parallel(&pairs) {
        Ok(par) => par,
        Err(e) => {
            println!("first {:?} {}", e.status, e.message.replace('\n', " "));
            println!("first_task -1");
            pj::failpoint::disarm();
            let par = parallel(&pairs).expect("an executor after disarming");
            second_call(&par, style);
            drop(par);
            println!("children {}", left_over(before));
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
    println!("got {}", got.len());
    pj::failpoint::disarm();
    // What the armed call left (tasks submitted before a failed submit) is collected first.
    let mut res = std::ptr::null_mut();
    if pj_parallel_collect(par.0, &mut res, std::ptr::null_mut()) == pj_status::Ok {
        pj_results_free(res);
    }
    // Workers kept from the armed call were started armed (disarming reaches the workers started
    // from now on): one of them may still fire once. The call after that must work.
    // (n_jobs of them: as many more calls.)
    let tries = if backend == "fork" { 3 } else { 1 };
    for _ in 0..tries {
        if second_call(&par, style) {
            break;
        }
    }
    drop(par);
    println!("children {}", left_over(before));
    println!("fds {}", fds_left(backend, fds));
}

/// This process's open descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Descriptors opened since `fds` and still open (the fork server, a process-wide child that stays
/// by design, keeps its socket: not counted).
fn fds_left(backend: &str, fds: usize) -> usize {
    let server = usize::from(backend == "forkserver");
    open_fds().saturating_sub(fds + server)
}

/// The worker processes left after the executor was freed: this process's children beyond the
/// `before` it had, and the workers of the fork server (a process-wide child that stays by design,
/// whose workers are its children). Waits a little for the server to reap what it was told to.
fn left_over(before: usize) -> usize {
    let of = |pid: i32| -> Vec<i32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let server = std::env::var("PJ_FP_CELL").is_ok_and(|c| c.starts_with("forkserver,"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mine = children();
        let count = if server {
            // The server is the one child; what it still runs is left over.
            mine.len().saturating_sub(before.max(1))
                + mine.iter().map(|&p| of(p).len()).sum::<usize>()
        } else {
            mine.len().saturating_sub(before)
        };
        if count == 0 || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The call after the armed one (prints its line; a repeated call overwrites it for the judge);
/// whether it worked.
fn second_call(par: &Par, style: &str) -> bool {
    let (status, message, _, got) = one_call(par, style == "streamed");
    println!(
        "second {status:?} {} {}",
        got.len(),
        message.replace('\n', " ")
    );
    status == pj_status::Ok && got.len() == TASKS as usize
}

/// A cell's verdict from its output.
fn judge(stage: &str, side: Side, mode: &str, out: &str) -> Result<(), String> {
    // The last line of each key counts.
    let line = |key: &str| {
        out.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or("")
            .to_string()
    };
    let first = line("first");
    let second = line("second");
    if line("wrong") != "0" && !line("wrong").is_empty() {
        return Err(format!("{} results were wrong", line("wrong")));
    }
    // A worker that ends after it served a batch and before any task of its next one started
    // (receiving or mapping it) is replaced and the batch runs again, whole: nothing is lost and
    // nobody is to blame, so the call succeeds, with every result.
    let replaced = side == Side::Worker
        && matches!(stage, "batch_receive" | "arg_map")
        && matches!(mode, "panic" | "exit" | "segv");
    let survived = replaced && first.starts_with("Ok") && line("got") == TASKS.to_string();
    if first.starts_with("Ok") && !survived {
        return Err(format!("the armed call returned OK: {first}"));
    }
    // The error names the stage (or, for a panic, says pj panicked there; for a dead or timed-out
    // worker, says so).
    let died = first.starts_with("WorkerDied");
    let named = first.contains(&format!("failpoint {stage}"))
        || (mode == "panic" && first.contains("panicked"))
        || (matches!(mode, "exit" | "segv") && died)
        || (mode == "hang" && first.starts_with("Timeout"))
        || (side == Side::Worker && mode == "panic" && died)
        // A worker that cannot send its outcome (or start) can only end: the caller sees a death
        // (or, for a spawned one, a handshake it never answered).
        || (matches!(stage, "result_send" | "worker_start") && died)
        || (stage == "worker_start" && first.contains("handshake"))
        // An outcome cut short in its encoding reaches the caller, which cannot read it.
        || (stage == "result_encode" && mode == "truncate" && first.contains("unreadable"));
    if !named && !survived {
        return Err(format!("the error does not say what failed: {first}"));
    }
    // The fork server was forked while armed, and a spawning executor passes its workers the
    // environment it had when it was created: disarming reaches neither, their workers stay
    // armed, so the next call is not checked for their worker stages.
    let armed_server =
        side == Side::Worker && matches!(line("backend").as_str(), "forkserver" | "spawn");
    if !armed_server && !second.starts_with(&format!("Ok {TASKS}")) {
        return Err(format!("the next call did not work: {second}"));
    }
    if line("children") != "0" {
        return Err(format!("{} child processes were left", line("children")));
    }
    if !matches!(line("fds").as_str(), "0" | "") {
        return Err(format!("{} descriptors were left open", line("fds")));
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
            if stage == "worker_start" && mode == "hang" {
                not_run.push(format!(
                    "{stage}={mode} on spawn, forkserver: a worker that never answers the \
                     handshake is bounded by its 30 s limit, per start (too slow for the matrix)"
                ));
            }
            for &backend in backends {
                for on_error in ["raise", "collect"] {
                    for style in ["ordered", "streamed"] {
                        // Trimmed to keep the matrix to a few minutes: a worker stage's streamed
                        // cells only on fork (the style changes only how the caller reads), and
                        // a hung spawned or fork-server worker's start (which waits out the
                        // handshake limit of 30 s) in one cell per backend.
                        if side == Side::Worker && style == "streamed" && backend != "fork" {
                            continue;
                        }
                        if stage == "worker_start" && mode == "hang" && backend != "fork" {
                            continue;
                        }
                        cells.push((
                            side,
                            format!("{stage}={mode}@{pass}"),
                            format!("{backend},{on_error},{style}"),
                        ));
                    }
                }
            }
        }
    }
    // PJ_FP_ONLY=stage[,stage...]: only those stages' cells (while working on them).
    if let Ok(only) = std::env::var("PJ_FP_ONLY") {
        let only: Vec<&str> = only.split(',').collect();
        cells.retain(|(_, spec, _)| only.iter().any(|o| spec.starts_with(&format!("{o}="))));
    }
    let exe = std::env::current_exe().unwrap();
    let temp_root = std::env::temp_dir().join(format!("pj-failpoints-{}", std::process::id()));
    let cells_started = std::cell::Cell::new(0);
    let mut failures = Vec::new();
    let mut passed = 0;
    // Three cells at a time: the machine has 2 CPUs, and cells mostly wait (for timeouts).
    for batch in cells.chunks(3) {
        let running: Vec<_> = batch
            .iter()
            .map(|(side, spec, cell)| {
                let temp = temp_root.join(format!("{}", cells_started.get()));
                cells_started.set(cells_started.get() + 1);
                std::fs::create_dir_all(&temp).unwrap();
                let child = Command::new(&exe)
                    .env("PJ_TEMP_FOLDER", &temp)
                    .env("PJ_FAILPOINTS", spec)
                    .env("PJ_FP_CELL", cell)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (*side, spec, cell, child, Instant::now(), temp)
            })
            .collect();
        for (side, spec, cell, mut child, start, temp) in running {
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
                Some(_) => judge(stage, side, mode, &out),
            };
            // Nothing is left in the cell's temp folder (spill files, result files).
            let left: Vec<_> = walk(&temp);
            let verdict = verdict.and_then(|()| match left.is_empty() {
                true => Ok(()),
                false => Err(format!("files were left in the temp folder: {left:?}")),
            });
            let _ = std::fs::remove_dir_all(&temp);
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
    let _ = std::fs::remove_dir_all(&temp_root);
    assert!(failures.is_empty(), "{} cells failed", failures.len());
}

/// Every file under `dir` (not the folders).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
