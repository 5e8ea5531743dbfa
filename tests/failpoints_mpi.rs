//! The failpoint matrix's MPI cells: the MPI stages (rank 0's and a worker rank's sends and
//! receives) x mode x on_error x call style, over the in-process MPI fabric (a job of 3 ranks:
//! rank 0 attached in the cell's process, ranks 1 and 2 as its threads, each running its tasks
//! in a forked one-worker child). Each cell is a process of its own (this executable, re-run with
//! `PJ_FP_CELL`: an MPI attachment is process-wide). Each cell asserts that the armed call returns
//! within a bound without wrong data, with an error that names the stage (or the rank that was
//! lost), that the next call on the same executor works (or, where the MPI backend ended by
//! design, refuses and says why), that `pj_mpi_detach` returns and every worker rank leaves, and
//! that no child process or descriptor is left. Needs the cargo feature `failpoints` (`cargo
//! test --features failpoints --test failpoints_mpi`).
//!
//! Cells not run by design: in this fabric every rank is a thread of the cell's process, so a
//! stage that ends the process (exit, segv) ends all ranks at once, as under mpirun a dying rank
//! ends the MPI job (MPI's design); a hang on rank 0 hangs its dispatcher thread, as any library
//! code that hangs in the caller would.

mod common;
#[path = "common/fp_cells.rs"]
mod fp_cells;
#[path = "common/mpi_fabric.rs"]
mod mpi_fabric;

use std::ffi::c_void;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fp_cells::*;
use mpi_fabric::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// The stages and the pass each fires on (mid-call). Rank 0's passes are counted in its
/// dispatcher; the worker ranks, threads of the cell's process, share one count per stage, so a
/// worker rank stage fires on exactly one of them:
/// - rank 0's third batch sent;
/// - rank 0's third message received (after the two ranks' registry reports: the first outcome);
/// - the worker ranks' third send (after their two registry reports: the first outcome);
/// - the worker ranks' third batch received.
const STAGES: &[(&str, u32)] = &[
    ("mpi_send", 3),
    ("mpi_receive", 3),
    ("mpi_rank_send", 3),
    ("mpi_rank_receive", 3),
];

const MODES: &[&str] = &["error", "truncate", "panic", "exit", "segv", "hang"];

/// Tasks per call, two per batch: twelve batches, several on each worker rank.
const TASKS: u64 = 24;

/// Task: x -> [x * x, pid].
unsafe extern "C" fn square(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let x = unsafe { arg_u64(arg, len.min(8)) };
    let words = [x * x, u64::from(std::process::id())];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

fn main() {
    let mut err = std::ptr::null_mut();
    check(pj_register(c"square".as_ptr(), Some(square), &mut err), err).unwrap();
    if let Ok(cell) = std::env::var("PJ_FP_CELL") {
        run_cell(&cell);
        return;
    }
    run_matrix();
}

/// A call's arguments: x = 0..TASKS, 8 bytes each.
fn arguments() -> Vec<Vec<u8>> {
    (0..TASKS).map(|x| x.to_ne_bytes().to_vec()).collect()
}

/// In the cell's own process: a job of 3 ranks, the armed call, then (disarmed) a second call on
/// the same executor, then the job's end; prints what the parent checks, one `key value` line
/// each.
fn run_cell(cell: &str) {
    if matches!(cell, "handshake" | "detach") {
        run_edge_cell(cell);
        return;
    }
    let parts: Vec<&str> = cell.split(',').collect();
    let (on_error, style) = (parts[0], parts[1]);
    let streamed = style == "streamed";
    // Read before disarming, which removes the variable.
    let hang = std::env::var("PJ_FAILPOINTS").is_ok_and(|f| f.contains("=hang"));
    let before = children().len();
    let fds = open_fds();
    let workers = start_job(3, None);
    let par = parallel(&[
        ("backend", "mpi"),
        ("batch_size", "2"),
        ("on_error", on_error),
    ])
    .expect("an executor on backend mpi");
    let first = one_call(&par, streamed, &arguments());
    println!(
        "first {:?} {}",
        first.status,
        first.message.replace('\n', " ")
    );
    println!("first_task {}", first.task);
    println!("wrong {}", wrong(&first.got));
    println!("got {}", first.got.len());
    println!("failed {}", first.blamed.len());
    pj::failpoint::disarm();
    // What a streamed call left is collected first.
    let mut res = std::ptr::null_mut();
    if pj_parallel_collect(par.0, &mut res, std::ptr::null_mut()) == pj_status::Ok {
        pj_results_free(res);
    }
    let second = one_call(&par, streamed, &arguments());
    println!(
        "second {:?} {} {}",
        second.status,
        second.got.len(),
        second.message.replace('\n', " ")
    );
    println!("second_wrong {}", wrong(&second.got));
    drop(par);
    if hang {
        // A worker rank hangs for good: rank 0 gave it up, and only the other one can be joined.
        println!("lost {}", pj_mpi_detach());
        let deadline = Instant::now() + Duration::from_secs(15);
        while workers.iter().filter(|w| !w.is_finished()).count() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let statuses: Vec<String> = workers
            .into_iter()
            .map(|w| match w.is_finished() {
                true => w.join().unwrap().to_string(),
                false => "hung".to_string(),
            })
            .collect();
        println!("statuses [{}]", statuses.join(", "));
    } else {
        let (lost, statuses) = detach_job(workers);
        println!("lost {lost}");
        println!("statuses {statuses:?}");
    }
    println!("children {}", children().len().saturating_sub(before));
    println!("fds {}", open_fds().saturating_sub(fds));
}

/// A cell at the job's edges, where no call runs: "handshake" (the stage fires while rank 0 takes
/// the ranks' registry reports: creating an executor fails, then, disarmed, again, as the ranks'
/// check has failed for good) or "detach" (the stage fires as rank 0 tells the ranks to leave).
/// Prints `first` (a call), `second` (a call on a new executor, disarmed), `lost`, `statuses`,
/// `children`, `fds`.
fn run_edge_cell(cell: &str) {
    let before = children().len();
    let fds = open_fds();
    let workers = start_job(3, None);
    // A call on a new executor (the registry check's verdict reaches the first call).
    let call = || {
        let par = parallel(&[("backend", "mpi"), ("batch_size", "2")]).expect("an executor");
        let call = one_call(&par, false, &arguments());
        match (call.status, wrong(&call.got)) {
            (pj_status::Ok, 0) => format!("Ok {}", call.got.len()),
            (pj_status::Ok, wrong) => format!("Ok with {wrong} wrong results"),
            (status, _) => format!("{status:?} {}", call.message.replace('\n', " ")),
        }
    };
    println!("first {}", call());
    if cell == "handshake" {
        pj::failpoint::disarm();
    }
    println!("second {}", call());
    let (lost, statuses) = detach_job(workers);
    println!("lost {lost}");
    println!("statuses {statuses:?}");
    println!("children {}", children().len().saturating_sub(before));
    println!("fds {}", open_fds().saturating_sub(fds));
}

/// The verdict of an edge cell (see [`run_edge_cell`]).
fn judge_edge(cell: &str, stage: &str, mode: &str, out: &str) -> Result<(), String> {
    let line = |key: &str| line(out, key);
    let (first, second) = (line("first"), line("second"));
    let expected = if cell == "handshake" {
        // A failed registry check fails every executor on backend "mpi" (the ranks are refused
        // and leave with status 2 at detach), naming what failed.
        let named = first.starts_with("Io ")
            && (first.contains(&format!("failpoint {stage}"))
                || (mode == "panic" && first.contains("panicked")));
        if !named {
            return Err(format!("the error does not say what failed: {first}"));
        }
        if second != first {
            return Err(format!("the next call did not fail alike: {second}"));
        }
        "[2, 2]"
    } else {
        let ok = format!("Ok {TASKS}");
        if first != ok || second != ok {
            return Err(format!("calls failed: {first} / {second}"));
        }
        "[0, 0]"
    };
    // Every rank was told to leave, and left.
    if line("lost") != "0" || line("statuses") != expected {
        return Err(format!(
            "detach gave up {} ranks, statuses {} (expected {expected})",
            line("lost"),
            line("statuses")
        ));
    }
    if line("children") != "0" || line("fds") != "0" {
        return Err(format!(
            "{} children and {} descriptors were left",
            line("children"),
            line("fds")
        ));
    }
    Ok(())
}

/// A cell's verdict from its output.
fn judge(stage: &str, mode: &str, out: &str) -> Result<(), String> {
    let line = |key: &str| line(out, key);
    let first = line("first");
    let second = line("second");
    for key in ["wrong", "second_wrong"] {
        if line(key) != "0" {
            return Err(format!("{} results were wrong ({key})", line(key)));
        }
    }
    if first.starts_with("Ok") {
        return Err(format!("the armed call returned OK: {first}"));
    }
    if mode == "hang" {
        return judge_hang(&first, &second, &line);
    }
    let named = first.contains(&format!("failpoint {stage}"))
        || (mode == "panic" && first.contains("panicked"));
    if !named {
        return Err(format!("the error does not say what failed: {first}"));
    }
    // An error (or a panic of pj's) on rank 0 other than in sending a batch ends the backend by
    // design: what MPI left half done cannot be trusted. The next call then fails, saying why,
    // and the worker ranks leave with status 2.
    let ended = stage == "mpi_receive";
    // A worker rank whose own MPI operation fails (or in whose loop pj panics) stops serving,
    // with status 2 (4 for a panic), after telling rank 0 why (which names it): the one rank
    // that failed, while the other serves the next call.
    let rank_stage = stage.starts_with("mpi_rank_");
    if rank_stage {
        let left = if mode == "panic" { "4" } else { "2" };
        let statuses = line("statuses");
        if statuses != format!("[0, {left}]") && statuses != format!("[{left}, 0]") {
            return Err(format!("the worker ranks left with statuses {statuses}"));
        }
        let rank = if statuses.starts_with("[0") { 2 } else { 1 };
        if !first.contains("the rank stopped serving: ")
            || !first.ends_with(&format!("(MPI rank {rank})"))
        {
            return Err(format!(
                "the error does not name the rank that left: {first}"
            ));
        }
    }
    if ended {
        let why = format!(
            "Io 0 task 0: no MPI rank can run tasks: the MPI backend ended after an error on \
             rank 0 ({first_message})",
            first_message = first.split_once(": ").map_or("", |(_, m)| m)
        );
        if second != why {
            return Err(format!(
                "the next call did not refuse as documented: {second}"
            ));
        }
    } else if !second.starts_with(&format!("Ok {TASKS}")) {
        return Err(format!("the next call did not work: {second}"));
    }
    if line("lost") != "0" {
        return Err(format!("pj_mpi_detach gave up {} ranks", line("lost")));
    }
    let statuses = if ended { "[2, 2]" } else { "[0, 0]" };
    if !rank_stage && line("statuses") != statuses {
        return Err(format!(
            "the worker ranks left with statuses {}",
            line("statuses")
        ));
    }
    if line("children") != "0" {
        return Err(format!("{} child processes were left", line("children")));
    }
    if line("fds") != "0" {
        return Err(format!("{} descriptors were left open", line("fds")));
    }
    Ok(())
}

/// A worker rank that hangs in its MPI stage (rank 0 hears nothing from it): rank 0 gives it up
/// after the silence limit (10 s), failing its batches with PJ_STATUS_WORKER_DIED and naming it;
/// the other rank serves the next call; at detach rank 0 reports the rank it gave up and tells
/// the other to leave without MPI_Finalize (status 3). The hung rank's thread, and the forked
/// child it runs tasks in (when it had started it), stay: under mpirun they are the hung rank's
/// own process's, which mpirun ends with the job; here they are this cell's, so its descriptors
/// are not counted.
fn judge_hang(first: &str, second: &str, line: &dyn Fn(&str) -> String) -> Result<(), String> {
    let statuses = line("statuses");
    let rank = match statuses.as_str() {
        "[hung, 3]" => 1,
        "[3, hung]" => 2,
        _ => return Err(format!("the worker ranks left with statuses {statuses}")),
    };
    if !first.starts_with("WorkerDied")
        || !first.contains("stopped answering for 10 s")
        || !first.ends_with(&format!("(MPI rank {rank})"))
    {
        return Err(format!("the error does not name the silent rank: {first}"));
    }
    if !second.starts_with(&format!("Ok {TASKS}")) {
        return Err(format!("the next call did not work: {second}"));
    }
    if line("lost") != "1" {
        return Err(format!(
            "pj_mpi_detach gave up {} ranks, not 1",
            line("lost")
        ));
    }
    // The hung rank's child (when it had started one) is all that may be left.
    if !matches!(line("children").as_str(), "0" | "1") {
        return Err(format!(
            "{} child processes, more than the hung rank's one",
            line("children")
        ));
    }
    Ok(())
}

fn run_matrix() {
    let mut cells = Vec::new();
    let mut not_run = Vec::new();
    for &(stage, pass) in STAGES {
        for &mode in MODES {
            if matches!(mode, "exit" | "segv") {
                not_run.push(format!(
                    "{stage}={mode}: ends the process, which holds every rank of the loopback job \
                     (under mpirun a rank that dies ends the MPI job, by MPI's design)"
                ));
                continue;
            }
            if mode == "hang" && !stage.starts_with("mpi_rank_") {
                not_run.push(format!(
                    "{stage}={mode}: hangs rank 0's dispatcher thread, in the caller's process, \
                     as any library code hanging in the caller would"
                ));
                continue;
            }
            for on_error in ["raise", "collect"] {
                for style in ["ordered", "streamed"] {
                    cells.push(Cell {
                        spec: format!("{stage}={mode}@{pass}"),
                        cell: format!("{on_error},{style}"),
                    });
                }
            }
        }
    }
    // The job's edges: rank 0's first receive (a registry report) and its 25th send (after two
    // calls of twelve batches each: the first rank's stop message).
    for mode in ["error", "panic"] {
        cells.push(Cell {
            spec: format!("mpi_receive={mode}@1"),
            cell: "handshake".to_string(),
        });
        cells.push(Cell {
            spec: format!("mpi_send={mode}@25"),
            cell: "detach".to_string(),
        });
    }
    let exe = std::env::current_exe().unwrap();
    let verdict = |cell: &Cell, ended: &Ended<'_>| match cell.cell.as_str() {
        "handshake" | "detach" => judge_edge(&cell.cell, cell.stage(), cell.mode(), &ended.stdout),
        _ => judge(cell.stage(), cell.mode(), &ended.stdout),
    };
    // A hung worker rank's cell waits out rank 0's silence limit (10 s): four cells at a time
    // (the machine has 2 CPUs; the ranks mostly wait), hang cells first.
    run_cells(
        "MPI failpoint matrix",
        cells,
        &not_run,
        4,
        |_, _| Command::new(&exe),
        verdict,
    );
}
