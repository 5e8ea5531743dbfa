//! Worker recycling and idle timeout (issue 18 items 1-2): `max_tasks_per_child` replaces a worker
//! process after exactly that many tasks, `worker_memory_limit` replaces a worker whose resident
//! memory exceeds it after a batch, `idle_worker_timeout` retires idle workers; every replacement
//! is silent (no task lost, run twice or blamed).

mod common;

use std::collections::HashMap;
use std::ffi::c_void;
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// The resident set size of process `pid` (`self` for this one), in bytes, from its statm.
fn rss_of(pid: &str) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// Writes (this process's pid, the task's argument, `extra`) as three u64s.
fn put_triple(out: *mut TaskOutput, arg: u64, extra: u64) {
    let mut bytes = Vec::with_capacity(24);
    bytes.extend_from_slice(&u64::from(std::process::id()).to_ne_bytes());
    bytes.extend_from_slice(&arg.to_ne_bytes());
    bytes.extend_from_slice(&extra.to_ne_bytes());
    pj_out_set(out, bytes.as_ptr(), bytes.len());
}

/// Task: returns (pid, its argument, 0).
unsafe extern "C" fn pid_task(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes the argument's bytes, `len` of them.
    let arg = unsafe { arg_u64(arg, len) };
    put_triple(out, arg, 0);
    0
}

/// How much one leaking task leaks.
const LEAK: usize = 4 << 20;

/// Task: leaks `LEAK` bytes of touched memory, then returns (pid, its argument, its RSS).
unsafe extern "C" fn leaking_task(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes the argument's bytes, `len` of them.
    let arg = unsafe { arg_u64(arg, len) };
    // Every page written, so that it is resident.
    std::mem::forget(vec![1u8; LEAK]);
    put_triple(out, arg, rss_of("self"));
    0
}

/// Runs tasks 0..n of `task` in one call; returns each result's (pid, argument, extra).
fn run(par: &Par, task: pj_task_fn, n: u64) -> Result<Vec<(u64, u64, u64)>, CError> {
    for i in 0..n {
        par.submit(task, std::ptr::null_mut(), &i.to_ne_bytes())?;
    }
    let results = par.collect()?;
    Ok(results
        .iter()
        .map(|r| {
            assert_eq!(r.len(), 24, "{r:?}");
            let word = |k: usize| u64::from_ne_bytes(r[k * 8..k * 8 + 8].try_into().unwrap());
            (word(0), word(1), word(2))
        })
        .collect())
}

/// Tasks per pid.
fn tasks_per_pid(results: &[(u64, u64, u64)]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for (pid, _, _) in results {
        *counts.entry(*pid).or_default() += 1;
    }
    counts
}

#[test]
fn max_tasks_per_child_replaces_each_worker_after_exactly_that_many_tasks() {
    // Fixed batches that do not divide 10 (a batch is split at the boundary), single tasks, and
    // auto batching (whose batches grow past 10).
    for batch_size in ["3", "1", "auto"] {
        let par = parallel(&[
            ("backend", "processes"),
            ("n_jobs", "2"),
            ("batch_size", batch_size),
            ("max_tasks_per_child", "10"),
        ])
        .unwrap();
        let results = run(&par, Some(pid_task), 100).unwrap();
        let args: Vec<u64> = results.iter().map(|r| r.1).collect();
        assert_eq!(
            args,
            (0..100).collect::<Vec<_>>(),
            "batch_size {batch_size}"
        );
        let counts = tasks_per_pid(&results);
        assert!(
            counts.len() >= 10,
            "batch_size {batch_size}: {} distinct workers: {counts:?}",
            counts.len()
        );
        assert!(
            counts.values().all(|&n| n <= 10),
            "batch_size {batch_size}: a worker ran more than 10 tasks: {counts:?}"
        );
    }
}

#[test]
fn max_tasks_per_child_counts_across_calls_of_kept_workers() {
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("keep_workers", "true"),
        ("batch_size", "4"),
        ("max_tasks_per_child", "6"),
    ])
    .unwrap();
    let mut all = Vec::new();
    for _ in 0..5 {
        all.extend(run(&par, Some(pid_task), 8).unwrap());
    }
    let counts = tasks_per_pid(&all);
    assert!(counts.values().all(|&n| n <= 6), "{counts:?}");
    assert!(counts.len() >= 40 / 6, "{counts:?}");
}

#[test]
fn a_leaking_task_under_worker_memory_limit_keeps_each_worker_under_the_limit_plus_one_batch() {
    const BATCH: u64 = 4;
    const TASKS: u64 = 60;
    // A forked worker starts with the caller's resident pages: the limit is counted from there.
    let limit = rss_of("self") + (48 << 20);
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("batch_size", &BATCH.to_string()),
        ("worker_memory_limit", &limit.to_string()),
    ])
    .unwrap();
    let results = run(&par, Some(leaking_task), TASKS).unwrap();
    let args: Vec<u64> = results.iter().map(|r| r.1).collect();
    assert_eq!(args, (0..TASKS).collect::<Vec<_>>(), "no task lost");
    // A worker is checked after each batch: before its last batch it was under the limit, and
    // one batch leaks BATCH * LEAK more (plus slack for the allocator, outputs and other tests of this binary growing the caller).
    let bound = limit + BATCH * LEAK as u64 + (8 << 20);
    let worst = results.iter().map(|r| r.2).max().unwrap();
    eprintln!(
        "worst worker RSS {} MiB, limit {} MiB, bound {} MiB",
        worst >> 20,
        limit >> 20,
        bound >> 20
    );
    assert!(
        worst <= bound,
        "a worker reached {} MiB, bound {} MiB (limit {} MiB)",
        worst >> 20,
        bound >> 20,
        limit >> 20
    );
    // 240 MiB leaked in all, at most about 56 MiB per worker: they were replaced.
    let counts = tasks_per_pid(&results);
    assert!(counts.len() >= 4, "{counts:?}");
}

/// Whether process `pid` still exists (a zombie counts as gone: its proxy reaps it).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn kept_workers_exit_after_the_idle_timeout_and_the_next_call_works() {
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("keep_workers", "true"),
        ("batch_size", "1"),
        ("idle_worker_timeout", "1"),
    ])
    .unwrap();
    let first = run(&par, Some(pid_task), 8).unwrap();
    let pids: Vec<u64> = tasks_per_pid(&first).into_keys().collect();
    // Generous: the timeout is 1 s, a busy machine may take longer to get round to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "idle workers {pids:?} still alive after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run(&par, Some(pid_task), 8).unwrap();
    let args: Vec<u64> = second.iter().map(|r| r.1).collect();
    assert_eq!(args, (0..8).collect::<Vec<_>>());
    assert!(
        second.iter().all(|r| !pids.contains(&r.0)),
        "an exited worker ran a task"
    );
}

#[test]
fn kept_workers_stay_without_an_idle_timeout() {
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("keep_workers", "true"),
        ("batch_size", "1"),
        ("idle_worker_timeout", "none"),
    ])
    .unwrap();
    let first = run(&par, Some(pid_task), 8).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for pid in tasks_per_pid(&first).into_keys() {
        assert!(alive(pid), "kept worker {pid} exited");
    }
    let second = run(&par, Some(pid_task), 8).unwrap();
    assert_eq!(second.len(), 8);
}

#[test]
fn calls_racing_the_idle_timeout_always_succeed() {
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("keep_workers", "true"),
        ("batch_size", "1"),
        ("idle_worker_timeout", "0.02"),
    ])
    .unwrap();
    let mut pids = std::collections::HashSet::new();
    for round in 0..40u64 {
        // Pauses around the timeout: calls start before, while and after workers retire.
        std::thread::sleep(Duration::from_millis(round % 5 * 10));
        let results =
            run(&par, Some(pid_task), 4).unwrap_or_else(|e| panic!("round {round}: {}", e.message));
        assert_eq!(
            results.iter().map(|r| r.1).collect::<Vec<_>>(),
            (0..4).collect::<Vec<_>>()
        );
        pids.extend(results.iter().map(|r| r.0));
    }
    assert!(pids.len() > 2, "no worker was retired: {pids:?}");
}

#[test]
fn threads_and_sequential_accept_and_ignore_the_options() {
    for (backend, n_jobs) in [("threads", "2"), ("processes", "1"), ("sequential", "2")] {
        let par = parallel(&[
            ("backend", backend),
            ("n_jobs", n_jobs),
            ("max_tasks_per_child", "1"),
            ("worker_memory_limit", "1"),
            ("idle_worker_timeout", "0.01"),
        ])
        .unwrap();
        let results = run(&par, Some(pid_task), 20).unwrap();
        let counts = tasks_per_pid(&results);
        assert_eq!(counts.len(), 1, "{backend}: {counts:?}");
        assert!(counts.contains_key(&u64::from(std::process::id())));
    }
}

#[test]
fn the_typed_setters_check_the_documented_ranges() {
    let cfg = config(&[]).unwrap();
    let mut err = std::ptr::null_mut();
    for (value, expected) in [
        (1, pj_status::Ok),
        (u64::from(u32::MAX), pj_status::Ok),
        (0, pj_status::InvalidArgument),
    ] {
        let status = pj_config_set_max_tasks_per_child(cfg, value, &mut err);
        if status != pj_status::Ok {
            let e = take_error(status, err);
            assert!(e.message.contains("max_tasks_per_child"), "{}", e.message);
        }
        assert_eq!(status, expected, "max_tasks_per_child {value}");
    }
    for (value, expected) in [
        (1, pj_status::Ok),
        (512 << 20, pj_status::Ok),
        (u64::MAX, pj_status::Ok),
        (0, pj_status::InvalidArgument),
    ] {
        let status = pj_config_set_worker_memory_limit(cfg, value, &mut err);
        if status != pj_status::Ok {
            let e = take_error(status, err);
            assert!(e.message.contains("worker_memory_limit"), "{}", e.message);
        }
        assert_eq!(status, expected, "worker_memory_limit {value}");
    }
    for (value, expected) in [
        (1.0, pj_status::Ok),
        (0.001, pj_status::Ok),
        (f64::INFINITY, pj_status::Ok),
        (0.0, pj_status::InvalidArgument),
        (-1.0, pj_status::InvalidArgument),
        (f64::NAN, pj_status::InvalidArgument),
    ] {
        let status = pj_config_set_idle_worker_timeout(cfg, value, &mut err);
        if status != pj_status::Ok {
            let e = take_error(status, err);
            assert!(e.message.contains("idle_worker_timeout"), "{}", e.message);
        }
        assert_eq!(status, expected, "idle_worker_timeout {value}");
    }
    pj_config_free(cfg);
}

/// Task: fails (code 7) for odd arguments, else returns (pid, argument, 0).
unsafe extern "C" fn odd_fails(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes the argument's bytes, `len` of them.
    if unsafe { arg_u64(arg, len) } % 2 == 1 {
        return 7;
    }
    // SAFETY: as above.
    unsafe { pid_task(userdata, arg, len, out) }
}

#[test]
fn a_batch_split_at_the_allowance_keeps_collected_failures_in_place() {
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("batch_size", "4"),
        ("max_tasks_per_child", "5"),
        ("on_error", "collect"),
    ])
    .unwrap();
    for i in 0..40u64 {
        par.submit(Some(odd_fails), std::ptr::null_mut(), &i.to_ne_bytes())
            .unwrap();
    }
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
    let statuses: Vec<pj_status> = (0..40).map(|i| pj_results_status(res, i)).collect();
    let results = results_to_vec(res);
    for (i, (status, result)) in statuses.iter().zip(&results).enumerate() {
        if i % 2 == 1 {
            assert_eq!(*status, pj_status::TaskFailed, "task {i}");
            assert!(result.is_empty(), "task {i}: {result:?}");
        } else {
            assert_eq!(*status, pj_status::Ok, "task {i}");
            assert_eq!(result[8..16], (i as u64).to_ne_bytes(), "task {i}");
        }
    }
}
