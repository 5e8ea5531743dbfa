//! Per-task timeouts (processes, threads, sequential) and on_error=collect.

mod common;

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// A pid slot in a MAP_SHARED page: a worker process writes its pid, the test reads it (other tests
/// fork workers concurrently, so "no child left" cannot be checked globally here).
struct SharedPid(*mut AtomicI32);

// SAFETY: the page behind SharedPid is shared memory accessed only through atomics.
unsafe impl Sync for SharedPid {}

impl SharedPid {
    fn new() -> Self {
        // SAFETY: an anonymous shared page; checked below. Never unmapped: an abandoned thread or
        // a late worker may still write to it.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        SharedPid(page.cast())
    }

    fn get(&self) -> i32 {
        // SAFETY: the page lives for the rest of the process.
        unsafe { &*self.0 }.load(Ordering::SeqCst)
    }
}

/// Records the calling process's pid in `slot`.
///
/// # Safety
/// `slot` comes from a `SharedPid`.
unsafe fn record_pid(slot: *mut AtomicI32) {
    // SAFETY: per the contract, a live shared page; getpid has no preconditions.
    unsafe { (*slot).store(libc::getpid(), Ordering::SeqCst) };
}

/// Whether `pid` is gone: reaped, neither a zombie nor an orphan.
fn is_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    let alive = unsafe { libc::kill(pid, 0) };
    alive != 0
}

/// Lets stuck thread tasks return at the end of a test (a thread cannot be killed).
static RELEASE: AtomicBool = AtomicBool::new(false);

/// Task: 2x its argument; argument 1 never returns on its own. With a SharedPid slot as
/// `userdata` (processes) it records its pid and spins: the worker must be killed. With NULL
/// (threads) it sleeps in a loop until RELEASE, so an abandoned thread does not burn a CPU for the
/// rest of the run.
unsafe extern "C" fn stuck_at_one(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let x = unsafe { arg_u64(arg, len) };
    if x == 1 {
        if !userdata.is_null() {
            // SAFETY: a non-NULL userdata is a SharedPid slot.
            unsafe { record_pid(userdata.cast()) };
            loop {
                std::hint::spin_loop();
            }
        }
        while !RELEASE.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let y = (2 * x).to_ne_bytes();
    pj_out_set(out, y.as_ptr(), 8);
    0
}

fn submit_values(
    par: &Par,
    f: pj_task_fn,
    userdata: *mut c_void,
    values: impl Iterator<Item = u64>,
) {
    for x in values {
        if par.submit(f, userdata, &x.to_ne_bytes()).is_err() {
            break;
        }
    }
}

#[test]
fn an_endless_task_on_processes_times_out_and_its_worker_is_killed() {
    let pid = SharedPid::new();
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("timeout", "0.5"),
    ])
    .unwrap();
    let start = Instant::now();
    submit_values(&par, Some(stuck_at_one), pid.0.cast(), 0..4);
    let err = par.collect().unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err.status, pj_status::Timeout, "{}", err.message);
    assert_eq!(err.task_index, 1);
    assert!(err.message.contains("task 1 timed out"), "{}", err.message);
    assert!(err.message.contains("0.5 s limit"), "{}", err.message);
    assert!(err.report.contains("timeout: 0.5 s"), "{}", err.report);
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(500),
        "fired early: {elapsed:?}"
    );
    let stuck = pid.get();
    assert!(
        stuck > 0 && is_gone(stuck),
        "the stuck worker {stuck} is gone"
    );

    // The object stays usable, with a fresh worker.
    submit_values(&par, Some(stuck_at_one), pid.0.cast(), [2, 3].into_iter());
    let results = par.collect().unwrap();
    assert_eq!(
        results,
        vec![4u64.to_ne_bytes().to_vec(), 6u64.to_ne_bytes().to_vec()]
    );
}

#[test]
fn an_endless_task_on_threads_is_abandoned_and_free_returns_promptly() {
    let par = parallel(&[("backend", "threads"), ("n_jobs", "2"), ("timeout", "0.3")]).unwrap();
    let start = Instant::now();
    submit_values(&par, Some(stuck_at_one), std::ptr::null_mut(), 0..4);
    let err = par.collect().unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err.status, pj_status::Timeout, "{}", err.message);
    assert_eq!(err.task_index, 1);
    assert!(err.report.contains("backend: threads"), "{}", err.report);
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");

    // A replacement thread serves the next call while the stuck one still sleeps.
    submit_values(
        &par,
        Some(stuck_at_one),
        std::ptr::null_mut(),
        [2, 3, 4].into_iter(),
    );
    assert_eq!(par.collect().unwrap().len(), 3);

    let start = Instant::now();
    drop(par);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "free waited for the abandoned thread: {:?}",
        start.elapsed()
    );
    // Let the abandoned thread's task return now: it must drop its late result quietly.
    RELEASE.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
}

unsafe extern "C" fn sleep_300ms(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: 8-byte arguments.
    let y = (2 * unsafe { arg_u64(arg, len) }).to_ne_bytes();
    pj_out_set(out, y.as_ptr(), 8);
    0
}

#[test]
fn the_clock_starts_when_the_task_starts() {
    // Four 0.3 s tasks, limit 0.5 s: the last ones wait 0.3-0.9 s in the queue, which does not
    // count (joblib's head-of-queue stopwatch would count it).
    for backend in ["processes", "threads"] {
        for n_jobs in ["1", "2"] {
            for batch_size in ["1", "auto"] {
                let par = parallel(&[
                    ("backend", backend),
                    ("n_jobs", n_jobs),
                    ("timeout", "0.5"),
                    ("batch_size", batch_size),
                ])
                .unwrap();
                submit_values(&par, Some(sleep_300ms), std::ptr::null_mut(), 0..4);
                let results = par.collect().unwrap_or_else(|e| {
                    panic!(
                        "{backend} n_jobs={n_jobs} batch_size={batch_size}: {}",
                        e.message
                    )
                });
                assert_eq!(results.len(), 4);
                assert_eq!(results[3], 6u64.to_ne_bytes());
            }
        }
    }
}

#[test]
fn timeout_values_are_checked() {
    for bad in ["0", "-1", "nan", "NaN", "-inf", "abc", ""] {
        let err = config(&[("timeout", bad)]).unwrap_err();
        assert_eq!(err.status, pj_status::InvalidArgument, "{bad}");
    }
    for good in ["none", "inf", "0.001", "10"] {
        pj_config_free(config(&[("timeout", good)]).unwrap());
    }
    let cfg = config(&[]).unwrap();
    for bad in [0.0, -1.0, f64::NAN] {
        let mut err = std::ptr::null_mut();
        let status = pj_config_set_timeout(cfg, bad, &mut err);
        assert_eq!(take_error(status, err).status, pj_status::InvalidArgument);
    }
    assert_eq!(
        pj_config_set_timeout(cfg, f64::INFINITY, std::ptr::null_mut()),
        pj_status::Ok
    );
    pj_config_free(cfg);
}

/// What the `mixed` task shares with its test. Leaked, because an abandoned thread may still read
/// it after the test returns (the hazard the header documents for thread timeouts).
struct Plan {
    runs: AtomicUsize,
    release: AtomicBool,
    /// The pid of the worker that ran task 50 (processes).
    stuck_pid: SharedPid,
}

fn leaked_plan() -> &'static Plan {
    Box::leak(Box::new(Plan {
        runs: AtomicUsize::new(0),
        release: AtomicBool::new(false),
        stuck_pid: SharedPid::new(),
    }))
}

/// Task plan for the collect test: argument x; 10, 20, 30 fail with code x; 40 crashes its worker
/// (processes only); 50 does not return until released (timeout); others return 2x.
unsafe extern "C" fn mixed(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments; userdata is a leaked Plan.
    let (x, plan) = unsafe { (arg_u64(arg, len), &*(userdata as *const Plan)) };
    plan.runs.fetch_add(1, Ordering::Relaxed);
    match x {
        10 | 20 | 30 => {
            let message = std::ffi::CString::new(format!("bad input {x}")).unwrap();
            pj_out_error(out, message.as_ptr());
            return x as i32;
        }
        // SAFETY: deliberately crashes the worker process (processes backend only).
        40 => unsafe { std::ptr::write_volatile(16 as *mut u8, 1) },
        50 => {
            // SAFETY: a live shared page.
            unsafe { record_pid(plan.stuck_pid.0) };
            while !plan.release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        _ => {}
    }
    let y = (2 * x).to_ne_bytes();
    pj_out_set(out, y.as_ptr(), 8);
    0
}

/// A collected result: status, output, and the task's error message.
fn collected(res: *mut pj_results_t) -> Vec<(pj_status, Vec<u8>, String, i64)> {
    let n = pj_results_len(res);
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let (mut data, mut len) = (std::ptr::null(), 0usize);
        assert_eq!(pj_results_get(res, i, &mut data, &mut len), pj_status::Ok);
        // SAFETY: a live view into res.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        let error = pj_results_error(res, i);
        let (message, index) = if error.is_null() {
            (String::new(), -1)
        } else {
            // SAFETY: a borrowed error living as long as res.
            let text = unsafe { CStr::from_ptr(pj_error_message(error)) };
            (
                text.to_string_lossy().into_owned(),
                pj_error_task_index(error),
            )
        };
        rows.push((pj_results_status(res, i), bytes, message, index));
    }
    assert_eq!(pj_results_status(res, n), pj_status::InvalidArgument);
    assert!(pj_results_error(res, n).is_null());
    assert_eq!(
        pj_results_status(std::ptr::null(), 0),
        pj_status::NullArgument
    );
    rows
}

fn run_collect(backend: &str, batch_size: &str, crash: bool) {
    let plan = leaked_plan();
    let par = parallel(&[
        ("backend", backend),
        ("n_jobs", "2"),
        ("timeout", "0.5"),
        ("on_error", "collect"),
        ("batch_size", batch_size),
    ])
    .unwrap();
    let values = (0..100u64).filter(|&x| crash || x != 40);
    submit_values(
        &par,
        Some(mixed),
        (plan as *const Plan).cast_mut().cast(),
        values.clone(),
    );
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let start = Instant::now();
    check(pj_parallel_collect(par.0, &mut res, &mut err), err)
        .unwrap_or_else(|e| panic!("{backend}/{batch_size}: {}", e.message));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    plan.release.store(true, Ordering::Relaxed);
    let expected_failures = if crash { 5 } else { 4 };
    assert_eq!(pj_results_error_count(res), expected_failures);
    let rows = collected(res);
    pj_results_free(res);
    let values: Vec<u64> = values.collect();
    assert_eq!(rows.len(), values.len());
    for (i, (x, (status, bytes, message, index))) in values.iter().zip(&rows).enumerate() {
        let case = format!("{backend}/{batch_size}: task {i} (x={x})");
        match x {
            10 | 20 | 30 => {
                assert_eq!(*status, pj_status::TaskFailed, "{case}");
                assert_eq!(
                    *message,
                    format!("task {i} failed with code {x}: bad input {x}"),
                    "{case}"
                );
                assert_eq!(*index, i as i64, "{case}");
                assert!(bytes.is_empty(), "{case}");
            }
            40 => {
                assert_eq!(*status, pj_status::WorkerDied, "{case}");
                assert!(message.contains("SIGSEGV"), "{case}: {message}");
                assert_eq!(*index, i as i64, "{case}");
            }
            50 => {
                assert_eq!(*status, pj_status::Timeout, "{case}");
                assert!(
                    message.contains(&format!("task {i} timed out")),
                    "{case}: {message}"
                );
            }
            _ => {
                assert_eq!(*status, pj_status::Ok, "{case}: {message}");
                assert_eq!(*bytes, (2 * x).to_ne_bytes(), "{case}");
                assert!(message.is_empty(), "{case}");
            }
        }
    }
    if backend == "processes" {
        let pid = plan.stuck_pid.get();
        assert!(
            pid > 0 && is_gone(pid),
            "the timed-out worker {pid} is gone"
        );
    }
    if backend == "threads" {
        // Threads share the counter: every task ran at least once (the tasks sharing a batch with
        // the timed-out one may have run twice).
        let runs = plan.runs.load(Ordering::Relaxed);
        assert!(
            runs >= values.len(),
            "{runs} runs for {} tasks",
            values.len()
        );
        if batch_size == "1" {
            assert_eq!(
                runs,
                values.len(),
                "with batches of one, no task runs twice"
            );
        }
    }
}

#[test]
fn collect_on_processes_reports_each_failure_and_runs_everything_else() {
    for batch_size in ["1", "auto"] {
        run_collect("processes", batch_size, true);
    }
}

#[test]
fn collect_on_threads_reports_each_failure_and_runs_everything_else() {
    for batch_size in ["1", "auto"] {
        run_collect("threads", batch_size, false);
    }
}

#[test]
fn collect_streams_per_task_statuses_through_next() {
    let plan = leaked_plan();
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("on_error", "collect"),
        ("return_as", "generator"),
    ])
    .unwrap();
    let values = [5u64, 10, 40, 7];
    submit_values(
        &par,
        Some(mixed),
        (plan as *const Plan).cast_mut().cast(),
        values.into_iter(),
    );
    let mut seen = Vec::new();
    loop {
        let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_next(par.0, &mut index, &mut data, &mut len, &mut err);
        if status == pj_status::Done {
            break;
        }
        if status == pj_status::Ok {
            assert!(err.is_null());
            seen.push((index, status, len));
        } else {
            let e = take_error(status, err);
            assert_eq!(e.task_index, index as i64);
            seen.push((index, status, len));
        }
        assert!(seen.len() <= values.len(), "{seen:?}");
    }
    assert_eq!(
        seen,
        vec![
            (0, pj_status::Ok, 8),
            (1, pj_status::TaskFailed, 0),
            (2, pj_status::WorkerDied, 0),
            (3, pj_status::Ok, 8),
        ]
    );
}

#[test]
fn on_error_values_are_checked() {
    for bad in ["ignore", "", "Collect"] {
        let err = config(&[("on_error", bad)]).unwrap_err();
        assert_eq!(err.status, pj_status::InvalidArgument, "{bad}");
        assert!(
            err.message.contains(&format!("\"{bad}\"")),
            "{}",
            err.message
        );
    }
    for good in ["raise", "collect", "none"] {
        pj_config_free(config(&[("on_error", good)]).unwrap());
    }
}
