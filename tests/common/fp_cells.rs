//! What the failpoint matrices (`tests/failpoints.rs`, `tests/failpoints_mpi.rs`) share: one call
//! as a cell runs and reports it, and the pool that runs cells, each a process of its own (the
//! test executable re-run with `PJ_FAILPOINTS` and `PJ_FP_CELL`), several at a time.

// Each matrix uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::common::*;
use pj::ffi::*;

/// How long a cell may take before it counts as hung.
pub const CELL_LIMIT: Duration = Duration::from_secs(60);

/// What one call gave: the status, the error (message, task index), the results that came back
/// OK by index, and (on_error=collect, ordered) the tasks reported failed, each with its status
/// and message.
pub struct Call {
    pub status: pj_status,
    pub message: String,
    pub task: i64,
    pub got: BTreeMap<usize, Vec<u8>>,
    pub blamed: BTreeMap<usize, String>,
}

/// Submits the registered task "square" once per argument, then collects (or, `streamed`, reads
/// with `pj_parallel_next`); stops at the first failure a submit, the collect or the stream
/// reports.
pub fn one_call(par: &Par, streamed: bool, args: &[Vec<u8>]) -> Call {
    let mut call = Call {
        status: pj_status::Ok,
        message: String::new(),
        task: -1,
        got: BTreeMap::new(),
        blamed: BTreeMap::new(),
    };
    let fail = |call: &mut Call, st: pj_status, err: *mut pj_error_t| {
        let e = take_error(st, err);
        (call.status, call.message, call.task) = (st, e.message, e.task_index);
    };
    for arg in args {
        let mut err = std::ptr::null_mut();
        let st =
            pj_parallel_submit_named(par.0, c"square".as_ptr(), arg.as_ptr(), arg.len(), &mut err);
        if st != pj_status::Ok {
            fail(&mut call, st, err);
            return call;
        }
    }
    if !streamed {
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let st = pj_parallel_collect(par.0, &mut res, &mut err);
        if st != pj_status::Ok {
            fail(&mut call, st, err);
            return call;
        }
        for i in 0..pj_results_len(res) {
            let (mut data, mut len) = (std::ptr::null(), 0);
            let status = pj_results_status(res, i);
            if status == pj_status::Ok
                && pj_results_get(res, i, &mut data, &mut len) == pj_status::Ok
            {
                // SAFETY: a view of `len` bytes, valid until pj_results_free.
                call.got
                    .insert(i, unsafe { std::slice::from_raw_parts(data, len) }.to_vec());
            } else if status != pj_status::Ok {
                let e = pj_results_error(res, i);
                // SAFETY: a borrowed error of `res`, read before pj_results_free.
                let text = unsafe { std::ffi::CStr::from_ptr(pj_error_message(e)) }
                    .to_string_lossy()
                    .into_owned();
                // on_error=collect: the first failed task's error stands for the call's.
                if call.message.is_empty() {
                    (call.status, call.message, call.task) = (status, text.clone(), i as i64);
                }
                call.blamed.insert(i, format!("{status:?} {text}"));
            }
        }
        pj_results_free(res);
        return call;
    }
    loop {
        let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
        let mut err = std::ptr::null_mut();
        let st = pj_parallel_next(par.0, &mut index, &mut data, &mut len, &mut err);
        if st == pj_status::Done {
            return call;
        }
        if st != pj_status::Ok {
            fail(&mut call, st, err);
            return call;
        }
        // SAFETY: a view of `len` bytes, valid until the next pj_parallel_next.
        call.got.insert(
            index,
            unsafe { std::slice::from_raw_parts(data, len) }.to_vec(),
        );
    }
}

/// Results that are not [x * x, pid] for their index x.
pub fn wrong(got: &BTreeMap<usize, Vec<u8>>) -> usize {
    got.iter()
        .filter(|(i, r)| r.len() != 16 || r[..8] != ((**i as u64) * (**i as u64)).to_ne_bytes())
        .count()
}

/// This process's open descriptors.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The value of the last `key value` line of a cell's output ("" without one).
pub fn line(out: &str, key: &str) -> String {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or("")
        .to_string()
}

/// A cell of a matrix: the failpoint spec it arms and the cell's own description (`PJ_FP_CELL`).
pub struct Cell {
    pub spec: String,
    pub cell: String,
}

impl Cell {
    /// The armed stage.
    pub fn stage(&self) -> &str {
        self.spec.split('=').next().unwrap_or("")
    }

    /// The armed mode.
    pub fn mode(&self) -> &str {
        self.spec.split(['=', '@']).nth(1).unwrap_or("")
    }
}

/// A cell that ended: how (`None`: killed as hung), its output, and its own folder (whatever the
/// command given to [`run_cells`] put there).
pub struct Ended<'a> {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub folder: &'a Path,
}

/// A cell's process, while it runs.
struct Running<'a> {
    cell: &'a Cell,
    child: std::process::Child,
    started: Instant,
    /// How it ended: its exit status, or `None` when it was killed as hung.
    status: Option<Option<ExitStatus>>,
    folder: PathBuf,
}

impl Running<'_> {
    /// Whether the cell ended (killed when it ran past CELL_LIMIT).
    fn ended(&mut self) -> bool {
        if self.status.is_none() {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(Some(status));
            } else if self.started.elapsed() > CELL_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.status = Some(None);
            }
        }
        self.status.is_some()
    }
}

/// Runs `cells`, `slots` at a time (a new one as soon as one ends), the hang cells first so that
/// the slowest overlap the rest; prints the summary line `title: ...`, the cells `not_run` and
/// every failure, and fails the test when a cell failed. `command(cell, folder)` makes a cell's
/// command (this executable, with its environment; the pool adds `PJ_FAILPOINTS`, `PJ_FP_CELL`
/// and the output files, which are in `folder`, the cell's own, removed after the verdict);
/// `judge` gives the verdict of a cell that exited with status 0.
pub fn run_cells(
    title: &str,
    mut cells: Vec<Cell>,
    not_run: &[String],
    slots: usize,
    command: impl Fn(&Cell, &Path) -> Command,
    judge: impl Fn(&Cell, &Ended<'_>) -> Result<(), String>,
) {
    let started = Instant::now();
    // PJ_FP_ONLY=stage[,stage...]: only those stages' cells (while working on them).
    if let Ok(only) = std::env::var("PJ_FP_ONLY") {
        let only: Vec<&str> = only.split(',').collect();
        cells.retain(|c| only.contains(&c.stage()));
    }
    cells.sort_by_key(|c| c.mode() != "hang");
    let root = std::env::temp_dir().join(format!("pj-failpoints-{}", std::process::id()));
    let mut queue = cells.iter().enumerate();
    let mut running: Vec<Running<'_>> = Vec::new();
    let (mut passed, mut failures) = (0, Vec::new());
    loop {
        while running.len() < slots {
            let Some((number, cell)) = queue.next() else {
                break;
            };
            let folder = root.join(number.to_string());
            std::fs::create_dir_all(&folder).unwrap();
            let stdout = std::fs::File::create(folder.join("stdout")).unwrap();
            let stderr = std::fs::File::create(folder.join("stderr")).unwrap();
            // Output in files: a pipe read only at the end could fill up and stop the cell.
            let child = command(cell, &folder)
                .env("PJ_FAILPOINTS", &cell.spec)
                .env("PJ_FP_CELL", &cell.cell)
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr))
                .spawn()
                .unwrap();
            running.push(Running {
                cell,
                child,
                started: Instant::now(),
                status: None,
                folder,
            });
        }
        if running.is_empty() {
            break;
        }
        let Some(done) = running.iter_mut().position(Running::ended) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let done = running.swap_remove(done);
        let read = |name: &str| std::fs::read_to_string(done.folder.join(name)).unwrap_or_default();
        let ended = Ended {
            status: done.status.flatten(),
            stdout: read("stdout"),
            stderr: read("stderr"),
            folder: &done.folder,
        };
        if std::env::var_os("PJ_FP_VERBOSE").is_some() {
            println!(
                "--- {} on {} ({:.1?})\n{}",
                done.cell.spec,
                done.cell.cell,
                done.started.elapsed(),
                ended.stdout
            );
        }
        let verdict = match ended.status {
            None => Err(format!("hung (killed after {CELL_LIMIT:?})")),
            Some(s) if !s.success() => Err(format!(
                "the cell died ({s}): {}",
                ended.stderr.lines().last().unwrap_or("")
            )),
            Some(_) => judge(done.cell, &ended),
        };
        let _ = std::fs::remove_dir_all(&done.folder);
        match verdict {
            Ok(()) => passed += 1,
            Err(why) => failures.push(format!("{} on {}: {why}", done.cell.spec, done.cell.cell)),
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "{title}: {} cells run, {passed} passed, {} failed, {} not run, in {:.0?}",
        cells.len(),
        failures.len(),
        not_run.len(),
        started.elapsed()
    );
    for line in not_run {
        println!("  not run: {line}");
    }
    for line in &failures {
        println!("  FAILED: {line}");
    }
    assert!(failures.is_empty(), "{} cells failed", failures.len());
}
