//! The failpoint matrix: every armed stage x mode x backend x on_error x call style, each cell in a
//! process of its own (this executable, re-run with `PJ_FP_CELL`), several at a time. Each cell
//! asserts that the call returns within a bound with a status that is not OK-with-wrong-data,
//! that the error says what failed, that with on_error=collect every task came back right or is
//! blamed for the fault and the blamed tasks lie in no more batches than the stage fired (the
//! firings are counted in the cell's `PJ_FAILPOINTS_DIR`), that the executor works on the next
//! call once disarmed (everywhere, spawned workers and the fork server included), and that
//! nothing is left behind: no child process, descriptor, thread, mapping of a temp file, or file
//! in the temp folder. Needs the cargo feature `failpoints` (`cargo test --features failpoints
//! --test failpoints`); its own main, so that spawned workers can be this executable.
//!
//! Cells where a failure cannot be survived by design are not run and are listed as such: a
//! caller-side stage that ends the process (exit, segv) ends the caller, and one that hangs in the
//! caller hangs it, as any library code would.

mod common;
#[path = "common/fp_cells.rs"]
mod fp_cells;

use std::ffi::c_void;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fp_cells::*;
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
/// Tasks per batch.
const BATCH: u64 = 4;
const ARG_BYTES: usize = 2048;

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
        if std::env::var_os("PJ_FP_CELL_STARTED").is_some() {
            // A worker this cell spawned came back from pj_worker_main_if_requested into main,
            // where it would run the cell a second time: a worker must never return (told to the
            // judge through the shared folder).
            if let Some(dir) = std::env::var_os("PJ_FAILPOINTS_DIR") {
                let _ = std::fs::write(std::path::Path::new(&dir).join("returned-into-main"), b"");
            }
            std::process::exit(9);
        }
        // SAFETY: single-threaded still (no executor yet); the workers it spawns inherit it.
        unsafe { std::env::set_var("PJ_FP_CELL_STARTED", "1") };
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
    // Fixed batches, so that a fault's reach is known: one batch is BATCH tasks from a multiple
    // of BATCH.
    options.push(("batch_size", BATCH.to_string()));
    options.push(("max_nbytes", "1k".to_string()));
    // Hangs in a worker end at the task timeout.
    options.push(("timeout", "3".to_string()));
    options.push(("on_error", on_error.to_string()));
    options
}

/// A call's arguments: TASKS of ARG_BYTES bytes (spilled on processes), the first 8 being x.
fn arguments() -> Vec<Vec<u8>> {
    (0..TASKS)
        .map(|x| {
            let mut a = vec![0u8; ARG_BYTES];
            a[..8].copy_from_slice(&x.to_ne_bytes());
            a
        })
        .collect()
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
    let threads = thread_count();
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
    let call = one_call(&par, style == "streamed", &arguments());
    println!(
        "first {:?} {}",
        call.status,
        call.message.replace('\n', " ")
    );
    println!("first_task {}", call.task);
    println!("wrong {}", wrong(&call.got));
    println!("got {}", call.got.len());
    let blamed: Vec<String> = call.blamed.keys().map(usize::to_string).collect();
    println!("blamed {}", blamed.join(" "));
    for (index, message) in &call.blamed {
        println!("blame {index} {}", message.replace('\n', " "));
    }
    // Disarmed everywhere: here, in the workers kept from the armed call and in any fork server
    // (through PJ_FAILPOINTS_DIR), so the next call must work.
    pj::failpoint::disarm();
    // What the armed call left (tasks submitted before a failed submit) is collected first.
    let mut res = std::ptr::null_mut();
    if pj_parallel_collect(par.0, &mut res, std::ptr::null_mut()) == pj_status::Ok {
        pj_results_free(res);
    }
    second_call(&par, style);
    drop(par);
    println!("children {}", left_over(before));
    println!("fds {}", fds_left(backend, fds));
    println!("threads {}", threads_left(backend, threads));
    println!("mappings {}", mappings_left());
}

/// This process's threads.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Threads started since `threads` and still running, a little after the executor was freed (a
/// process pool's proxies are joined by the free; give the scheduler time for the rest). The
/// thread that forks the fork server, process-wide like the server, is not counted.
fn threads_left(backend: &str, threads: usize) -> usize {
    let forker = usize::from(backend == "forkserver");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = thread_count().saturating_sub(threads + forker);
        if left == 0 || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mappings of this process still backed by a file of pj's temp folder (spill or result files),
/// named in `/proc/self/maps`.
fn mappings_left() -> usize {
    let Ok(folder) = std::env::var("PJ_TEMP_FOLDER") else {
        return 0;
    };
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(folder.as_str()))
        .count()
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
    let call = one_call(par, style == "streamed", &arguments());
    println!(
        "second {:?} {} {}",
        call.status,
        call.got.len(),
        call.message.replace('\n', " ")
    );
    call.status == pj_status::Ok && call.got.len() == TASKS as usize
}

/// Whether an error (`Status message`) says what failed: it names the stage, or, for a panic, says
/// pj panicked there; for a dead or timed-out worker, says so.
fn says_what_failed(stage: &str, side: Side, mode: &str, error: &str) -> bool {
    let died = error.starts_with("WorkerDied");
    // Every worker stage is outside any task: a hang there is the worker's, not a task's.
    let stuck = error.starts_with("Timeout") && error.contains("stuck outside any task");
    error.contains(&format!("failpoint {stage}"))
        || (mode == "panic" && error.contains("panicked"))
        || (matches!(mode, "exit" | "segv") && died)
        || (mode == "hang" && side == Side::Worker && stuck)
        || (side == Side::Worker && mode == "panic" && died)
        // A worker's panic report (its backtrace, symbolized with RUST_BACKTRACE set) can take
        // longer than the timeout on a loaded machine: the worker is then stopped as stuck.
        || (side == Side::Worker && mode == "panic" && stuck)
        // A worker that cannot send its outcome (or start) can only end: the caller sees a death
        // (or, for a spawned one, a handshake it never answered).
        || (matches!(stage, "result_send" | "worker_start") && died)
        || (stage == "worker_start" && error.contains("handshake"))
        // An outcome cut short in its encoding reaches the caller, which cannot read it.
        || (stage == "result_encode" && mode == "truncate" && error.contains("unreadable"))
}

/// With on_error=collect, only the tasks a fault reached are blamed: every task came back right
/// or is blamed with an error that says what failed, and the blamed tasks lie in at most `fired`
/// batches (each firing reaches one batch at most: the one being sent, received, mapped, run,
/// encoded or decoded when it fired).
fn check_blame(
    stage: &str,
    side: Side,
    mode: &str,
    out: &str,
    got: usize,
    fired: usize,
) -> Result<(), String> {
    let blamed: Vec<usize> = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("blamed"))
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|i| i.parse().ok())
        .collect();
    if blamed.is_empty() {
        // The call failed as a whole (a submit or the collect itself): nothing per task.
        return Ok(());
    }
    if blamed.len() + got != TASKS as usize {
        return Err(format!(
            "{} tasks blamed and {got} returned of {TASKS}: some were lost",
            blamed.len()
        ));
    }
    for line in out.lines().filter_map(|l| l.strip_prefix("blame ")) {
        let (index, error) = line.split_once(' ').unwrap_or((line, ""));
        if !says_what_failed(stage, side, mode, error) {
            return Err(format!(
                "task {index} is blamed for something else: {error}"
            ));
        }
    }
    let mut batches: Vec<usize> = blamed.iter().map(|&i| i / BATCH as usize).collect();
    batches.dedup();
    if batches.len() > fired {
        return Err(format!(
            "tasks {blamed:?} of {} batches are blamed for {fired} firings",
            batches.len()
        ));
    }
    Ok(())
}

/// A cell's verdict from its output, and the number of times its stage fired.
fn judge(stage: &str, side: Side, mode: &str, out: &str, fired: usize) -> Result<(), String> {
    // The last line of each key counts.
    let line = |key: &str| line(out, key);
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
    if !survived && !says_what_failed(stage, side, mode, &first) {
        return Err(format!("the error does not say what failed: {first}"));
    }
    if fired == 0 {
        return Err("the stage never fired".into());
    }
    // Where the stage has a task: the 5th argument spilled is task 4's, whose submit failed (a
    // panic is pj's own, reported by the exported function as such).
    if stage == "spill_write" && mode != "panic" && line("first_task") != "4" {
        return Err(format!("the error does not name task 4: {first}"));
    }
    let got = line("got").parse().unwrap_or(0);
    check_blame(stage, side, mode, out, got, fired)?;
    if !second.starts_with(&format!("Ok {TASKS}")) {
        return Err(format!("the next call did not work: {second}"));
    }
    for (key, what) in [
        ("children", "child processes"),
        ("fds", "descriptors"),
        ("threads", "threads"),
        ("mappings", "mappings of temp files"),
    ] {
        if !matches!(line(key).as_str(), "0" | "") {
            return Err(format!("{} {what} were left", line(key)));
        }
    }
    Ok(())
}

fn run_matrix() {
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
                        // Trimmed to keep the matrix to a few minutes: a hung spawned or
                        // fork-server worker's start (which waits out the handshake limit of
                        // 30 s) in one cell per backend.
                        if stage == "worker_start"
                            && mode == "hang"
                            && backend != "fork"
                            && (on_error, style) != ("raise", "ordered")
                        {
                            continue;
                        }
                        cells.push(Cell {
                            spec: format!("{stage}={mode}@{pass}"),
                            cell: format!("{backend},{on_error},{style}"),
                        });
                    }
                }
            }
        }
    }
    let exe = std::env::current_exe().unwrap();
    // Each cell's folder holds its temp folder (which must be left empty) and its failpoint
    // folder (PJ_FAILPOINTS_DIR: the firings, the disarm, a worker that returned into main).
    let command = |_: &Cell, folder: &Path| {
        let (temp, shared) = (folder.join("temp"), folder.join("fp"));
        std::fs::create_dir_all(&temp).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        let mut command = Command::new(&exe);
        command
            .env("PJ_TEMP_FOLDER", temp)
            .env("PJ_FAILPOINTS_DIR", shared);
        command
    };
    let verdict = |cell: &Cell, ended: &Ended<'_>| {
        let shared = ended.folder.join("fp");
        if shared.join("returned-into-main").exists() {
            return Err("a spawned worker returned into the program's main".into());
        }
        let fired = std::fs::read_to_string(shared.join("fired"))
            .unwrap_or_default()
            .lines()
            .count();
        judge(
            cell.stage(),
            side_of(cell.stage()),
            cell.mode(),
            &ended.stdout,
            fired,
        )?;
        // Nothing is left in the cell's temp folder (spill files, result files).
        let left = walk(&ended.folder.join("temp"));
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("files were left in the temp folder: {left:?}")),
        }
    };
    // Three at a time: the machine has 2 CPUs, and cells mostly wait (for timeouts).
    run_cells("failpoint matrix", cells, &not_run, 3, command, verdict);
}

/// Where `stage` runs.
fn side_of(stage: &str) -> Side {
    STAGES
        .iter()
        .find(|(name, ..)| *name == stage)
        .map_or(Side::Caller, |&(_, side, ..)| side)
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
