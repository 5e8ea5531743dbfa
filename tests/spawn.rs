//! start_method=spawn: workers are fresh runs of this very executable (a test with its own `main`,
//! `harness = false`, so that the re-executed copy can turn into a worker as a C program would).
//! Scenarios run in sequence; any failure panics, which fails the test.

mod common;

use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Set by the caller before its calls; a forked worker inherits it, a spawned one does not.
static MARKER: AtomicU64 = AtomicU64::new(0);

/// Task: returns [x * x, this process's pid, MARKER].
unsafe extern "C" fn square(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments, or a big buffer whose first 8 bytes are x.
    let x = unsafe { arg_u64(arg, len.min(8)) };
    let words = [
        x * x,
        u64::from(std::process::id()),
        MARKER.load(Ordering::Relaxed),
    ];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

/// Task: fails on 3, crashes on 4, never returns on 5, on 1000 leaves a grandchild and crashes
/// ([`leave_a_grandchild`]), else like `square`.
unsafe extern "C" fn moody(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    match unsafe { arg_u64(arg, len) } {
        3 => {
            pj_out_error(out, c"three is bad".as_ptr());
            7
        }
        // SAFETY: deliberately crashes this worker process.
        4 => unsafe {
            std::ptr::write_volatile(16 as *mut u8, 1);
            0
        },
        5 => loop {
            std::thread::sleep(Duration::from_millis(10));
        },
        1000 => leave_a_grandchild(),
        // SAFETY: forwarding the task's own arguments.
        _ => unsafe { square(userdata, arg, len, out) },
    }
}

/// Task: the argument is a folder. Writes `started-<pid>` there, polls `pj_out_cancelled` for up
/// to 10 s and writes `saw-<pid>` once it sees the call stopping.
unsafe extern "C" fn poll(_: *mut c_void, arg: *const u8, len: usize, out: *mut TaskOutput) -> i32 {
    // SAFETY: pj passes `len` readable bytes: a folder's path, built from an OsStr.
    let dir = std::path::PathBuf::from(unsafe {
        std::ffi::OsStr::from_encoded_bytes_unchecked(std::slice::from_raw_parts(arg, len))
    });
    let pid = std::process::id();
    std::fs::write(dir.join(format!("started-{pid}")), pid.to_string()).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if pj_out_cancelled(out) != 0 {
            std::fs::write(dir.join(format!("saw-{pid}")), pid.to_string()).unwrap();
            return 0;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    0
}

unsafe extern "C" fn unregistered(
    _: *mut c_void,
    _: *const u8,
    _: usize,
    _: *mut TaskOutput,
) -> i32 {
    0
}

/// Where `moody(1000)` writes its grandchild's pid: a file named after the caller's pid (the spawned
/// worker's parent).
fn grandchild_file(caller: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pj-spawn-grandchild-{caller}"))
}

/// In a worker: starts `sleep 1000` (the worker's grandchild), writes its pid to
/// [`grandchild_file`], then crashes.
fn leave_a_grandchild() -> ! {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = grandchild_file(std::os::unix::process::parent_id());
    let partial = path.with_extension("partial");
    std::fs::write(&partial, child.id().to_string()).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    std::process::abort()
}

fn register(name: &str, f: pj_task_fn) {
    let name = CString::new(name).unwrap();
    assert_eq!(
        pj_register(name.as_ptr(), f, std::ptr::null_mut()),
        pj_status::Ok
    );
}

fn spawn_executor(extra: &[(&str, &str)]) -> Par {
    let mut options = vec![
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("start_method", "spawn"),
    ];
    options.extend_from_slice(extra);
    parallel(&options).unwrap()
}

fn submit_named(par: &Par, name: &str, arg: &[u8]) -> Result<(), CError> {
    let name = CString::new(name).unwrap();
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_submit_named(par.0, name.as_ptr(), arg.as_ptr(), arg.len(), &mut err),
        err,
    )
}

fn words(r: &[u8]) -> Vec<u64> {
    r.chunks(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

fn main() {
    register("square", Some(square));
    register("moody", Some(moody));
    register("poll", Some(poll));
    register_doubles();
    // A copy of this program started with PJ_TEST_EXTRA registers one more function, so that its
    // registry differs from the caller's.
    if std::env::var_os("PJ_TEST_EXTRA").is_some() {
        register("extra", Some(unregistered));
    }
    // A copy started with PJ_TEST_FORGET never becomes a worker, as a program that forgot the
    // call: it runs this main on, and creating an executor must fail there.
    // A copy started with PJ_TEST_SLOW_START takes 2 s before it reaches the entry point; one
    // started with PJ_TEST_HANG never reaches it and never ends (as a program stuck at start-up).
    if std::env::var_os("PJ_WORKER_FD").is_some() {
        if std::env::var_os("PJ_TEST_SLOW_START").is_some() {
            std::thread::sleep(Duration::from_secs(2));
        }
        if std::env::var_os("PJ_TEST_HANG").is_some() {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    if std::env::var_os("PJ_TEST_FORGET").is_none() {
        pj_worker_main_if_requested(0, std::ptr::null());
    } else if std::env::var_os("PJ_WORKER_FD").is_some() {
        let err = parallel(&[])
            .err()
            .expect("a forgotten worker cannot create executors");
        assert!(
            err.message.contains("pj_worker_main_if_requested"),
            "{}",
            err.message
        );
        std::process::exit(1);
    }

    // Environment changes first, while this process has no other thread.
    mismatched_registries_are_refused();
    a_program_that_forgets_the_worker_entry_is_reported();
    a_worker_that_starts_slowly_still_works();
    worker_variables_that_name_no_descriptor_or_pid_make_the_copy_leave();
    a_call_cancelled_while_its_workers_start_ends_at_once();
    // 30 s of waiting: runs beside the scenarios below.
    let hung = a_worker_that_never_answers_is_given_up_at_the_limit();

    MARKER.store(42, Ordering::Relaxed);
    // While the hung worker's start-up is awaited, other workers start (forks are not held up for
    // the 30 s).
    let start = Instant::now();
    named_tasks_run_in_fresh_processes();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    errors_crashes_and_timeouts_are_reported();
    big_arguments_and_results_travel_through_files();
    pointer_submits_must_be_registered_and_without_userdata();
    named_loops_run_in_fresh_processes();
    free_lets_polling_tasks_finish();
    a_crashed_workers_grandchild_dies_with_it();
    hung.join().expect("the hung-worker scenario passed");
    println!("spawn: all scenarios passed");
}

fn mismatched_registries_are_refused() {
    // SAFETY: no other thread runs yet (the scenarios below start pj's).
    unsafe { std::env::set_var("PJ_TEST_EXTRA", "1") };
    let par = spawn_executor(&[]);
    let err = submit_named(&par, "square", &1u64.to_ne_bytes())
        .err()
        .or_else(|| par.collect().err())
        .expect("the call fails");
    drop(par);
    // SAFETY: the executor and its threads are gone; no other thread runs.
    unsafe { std::env::remove_var("PJ_TEST_EXTRA") };
    assert_eq!(err.status, pj_status::Io, "{}", err.message);
    assert!(
        err.message
            .contains("caller [square, moody, poll, doubles]")
            && err
                .message
                .contains("worker [square, moody, poll, doubles, extra]"),
        "{}",
        err.message
    );
}

fn a_program_that_forgets_the_worker_entry_is_reported() {
    // SAFETY: still no other pj thread; the previous executor was dropped and joined.
    unsafe { std::env::set_var("PJ_TEST_FORGET", "1") };
    let par = spawn_executor(&[]);
    let start = Instant::now();
    let err = submit_named(&par, "square", &1u64.to_ne_bytes())
        .err()
        .or_else(|| par.collect().err())
        .expect("the call fails");
    drop(par);
    // SAFETY: the executor and its threads are gone; no other thread runs.
    unsafe { std::env::remove_var("PJ_TEST_FORGET") };
    assert_eq!(err.status, pj_status::Io, "{}", err.message);
    assert!(
        err.message.contains("pj_worker_main_if_requested")
            && err.message.contains("exited with status 1"),
        "{}",
        err.message
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// A copy of this program whose PJ_WORKER_* variables (set by hand, not by pj) name no
/// descriptors leaves with status 6, as a worker whose shared page cannot be mapped, and one whose
/// parent variable is no pid leaves with status 1, as one whose parent is gone: it neither panics
/// into running the program on as a non-worker nor hangs.
fn worker_variables_that_name_no_descriptor_or_pid_make_the_copy_leave() {
    let me = std::process::id().to_string();
    let cases = [
        ("-1", "-1", me.as_str(), 6),
        ("-1", "-1", "0", 1),
        ("-1", "-1", "-3", 1),
    ];
    for (socket, page, parent, expected) in cases {
        let mut copy = std::process::Command::new(std::env::current_exe().unwrap())
            .env("PJ_WORKER_FD", socket)
            .env("PJ_WORKER_PAGE_FD", page)
            .env("PJ_WORKER_PARENT", parent)
            .env("PJ_WORKER_SLOT", "0")
            .env("PJ_WORKER_LEVEL", "0")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = copy.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = copy.kill();
                let _ = copy.wait();
                panic!("parent {parent}, page {page}: the copy did not leave (it ran on)");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            status.code(),
            Some(expected),
            "parent {parent}, page {page}: {status:?}"
        );
    }
}

/// Issue 16 item 1: the start-up limit is 30 s, not the first liveness poll (100 ms).
fn a_worker_that_starts_slowly_still_works() {
    // SAFETY: no other pj thread; the previous executors were dropped and joined.
    unsafe { std::env::set_var("PJ_TEST_SLOW_START", "1") };
    let par = spawn_executor(&[]);
    for i in 0..4u64 {
        submit_named(&par, "square", &i.to_ne_bytes()).unwrap();
    }
    let results = par.collect();
    drop(par);
    // SAFETY: the executor and its threads are gone; no other thread runs.
    unsafe { std::env::remove_var("PJ_TEST_SLOW_START") };
    let results = results.unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(words(&results[3])[0], 9);
}

/// A call cancelled while its workers start (copies stuck before the entry point) ends at once,
/// not when the 30 s start-up limit is over; the copies are killed.
fn a_call_cancelled_while_its_workers_start_ends_at_once() {
    // SAFETY: no other pj thread runs yet; the variable is read when the pool starts (first submit).
    unsafe { std::env::set_var("PJ_TEST_HANG", "1") };
    let par = spawn_executor(&[]);
    let before = children().len();
    let start = Instant::now();
    submit_named(&par, "square", &1u64.to_ne_bytes()).unwrap();
    // SAFETY: the pool captured its environment at the submit; its proxies never read it.
    unsafe { std::env::remove_var("PJ_TEST_HANG") };
    let canceller = cancel_after(&par, Duration::from_secs(1));
    let err = par.collect().unwrap_err();
    canceller.join().unwrap();
    let waited = start.elapsed();
    assert_eq!(err.status, pj_status::Cancelled, "{}", err.message);
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    assert_eq!(children().len(), before, "the stuck copies are gone");
}

/// A copy that never answers (alive, stuck before the entry point) fails the call once the
/// documented 30 s are over, with a message saying so; not before, not much later.
fn a_worker_that_never_answers_is_given_up_at_the_limit() -> std::thread::JoinHandle<()> {
    // SAFETY: no other pj thread runs yet; the variable is read when the pool starts (first submit).
    unsafe { std::env::set_var("PJ_TEST_HANG", "1") };
    let par = spawn_executor(&[]);
    let (pool_started, started) = std::sync::mpsc::channel();
    let scenario = std::thread::spawn(move || {
        let start = Instant::now();
        // The call belongs to this thread (its first submit), which collects it too.
        let submitted = submit_named(&par, "square", &1u64.to_ne_bytes());
        pool_started.send(()).unwrap();
        let err = submitted
            .err()
            .or_else(|| par.collect().err())
            .expect("the call fails");
        let waited = start.elapsed();
        assert_eq!(err.status, pj_status::Io, "{}", err.message);
        assert!(
            err.message
                .contains("did not answer pj's handshake within 30 s")
                && err.message.contains("pj_worker_main_if_requested"),
            "{}",
            err.message
        );
        assert!(
            waited >= Duration::from_secs(29) && waited < Duration::from_secs(90),
            "{waited:?}"
        );
    });
    started.recv().unwrap();
    // SAFETY: the pool captured its environment at the submit; the threads now running (the
    // scenario's, waiting in collect, and the pool's proxies, which fork and exec with that copy)
    // never read the environment.
    unsafe { std::env::remove_var("PJ_TEST_HANG") };
    scenario
}

fn named_tasks_run_in_fresh_processes() {
    let par = spawn_executor(&[]);
    for i in 0..200u64 {
        submit_named(&par, "square", &i.to_ne_bytes()).unwrap();
    }
    let results = par.collect().unwrap();
    assert_eq!(results.len(), 200);
    let me = u64::from(std::process::id());
    for (i, r) in results.iter().enumerate() {
        let w = words(r);
        assert_eq!(w[0], (i * i) as u64);
        assert_ne!(w[1], me, "ran in a worker process");
        assert_eq!(
            w[2], 0,
            "a spawned worker is a fresh image, not a copy of the caller"
        );
    }
    // The same calls on fork see the caller's memory.
    let forked = parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    submit_named(&forked, "square", &2u64.to_ne_bytes()).unwrap();
    assert_eq!(words(&forked.collect().unwrap()[0])[2], 42);
    // The object works for a second call (workers retired and spawned again).
    submit_named(&par, "square", &9u64.to_ne_bytes()).unwrap();
    assert_eq!(words(&par.collect().unwrap()[0])[0], 81);
}

fn errors_crashes_and_timeouts_are_reported() {
    let par = spawn_executor(&[("batch_size", "1"), ("timeout", "0.5")]);
    for (x, status) in [
        (3u64, pj_status::TaskFailed),
        (4, pj_status::WorkerDied),
        (5, pj_status::Timeout),
    ] {
        for i in 0..6u64 {
            let _ = submit_named(
                &par,
                "moody",
                &(if i == 2 { x } else { i + 10 }).to_ne_bytes(),
            );
        }
        let err = par.collect().unwrap_err();
        assert_eq!(err.status, status, "{x}: {}", err.message);
        assert_eq!(err.task_index, 2, "{x}: {}", err.message);
        if x == 3 {
            assert!(err.message.contains("three is bad"), "{}", err.message);
            assert_eq!(err.callback_message.as_deref(), Some("three is bad"));
        }
        if x != 3 {
            assert_eq!(err.callback_message, None, "{x}");
        }
        if x == 4 {
            assert!(err.report.contains("SIGSEGV"), "{}", err.report);
            assert!(
                err.report.contains("moody"),
                "the crash names the task function: {}",
                err.report
            );
        }
    }
    // on_error=collect: every task gets its own status.
    let par = spawn_executor(&[("batch_size", "1"), ("on_error", "collect")]);
    for x in [1u64, 3, 4, 6] {
        submit_named(&par, "moody", &x.to_ne_bytes()).unwrap();
    }
    let mut res = std::ptr::null_mut();
    assert_eq!(
        pj_parallel_collect(par.0, &mut res, std::ptr::null_mut()),
        pj_status::Ok
    );
    let statuses: Vec<pj_status> = (0..4).map(|i| pj_results_status(res, i)).collect();
    pj_results_free(res);
    assert_eq!(
        statuses,
        [
            pj_status::Ok,
            pj_status::TaskFailed,
            pj_status::WorkerDied,
            pj_status::Ok
        ]
    );
}

fn big_arguments_and_results_travel_through_files() {
    let par = spawn_executor(&[]);
    let mut big = vec![0u8; 3 << 20];
    big[..8].copy_from_slice(&12u64.to_ne_bytes());
    for _ in 0..4 {
        submit_named(&par, "square", &big).unwrap();
    }
    for r in par.collect().unwrap() {
        assert_eq!(words(&r)[0], 144);
    }
}

fn pointer_submits_must_be_registered_and_without_userdata() {
    let par = spawn_executor(&[]);
    par.submit(Some(square), std::ptr::null_mut(), &3u64.to_ne_bytes())
        .unwrap();
    assert_eq!(words(&par.collect().unwrap()[0])[0], 9);
    let err = par
        .submit(Some(unregistered), std::ptr::null_mut(), &[])
        .unwrap_err();
    assert_eq!(err.status, pj_status::InvalidArgument);
    assert!(err.message.contains("pj_register"), "{}", err.message);
    let mut x = 1u8;
    let err = par
        .submit(Some(square), (&raw mut x).cast(), &3u64.to_ne_bytes())
        .unwrap_err();
    assert_eq!(err.status, pj_status::InvalidArgument);
    assert!(
        err.message.contains("userdata must be NULL"),
        "{}",
        err.message
    );
    let name = CString::new("nope").unwrap();
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_submit_named(par.0, name.as_ptr(), std::ptr::null(), 0, &mut err);
    assert_eq!(take_error(status, err).status, pj_status::InvalidArgument);
}

/// pj_parallel_for_named runs its ranges in the spawned workers and brings their results back;
/// pj_parallel_for (function pointers) is refused, pointing to it.
fn named_loops_run_in_fresh_processes() {
    let par = spawn_executor(&[]);
    let pids = for_named_doubles(&par, 100_003).unwrap();
    let caller = u64::from(std::process::id());
    assert!(pids.iter().all(|&p| p != caller), "{pids:?}");
    unsafe extern "C" fn nothing(_: *mut c_void, _: usize, _: usize, _: *mut TaskOutput) -> i32 {
        0
    }
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_for(par.0, 10, Some(nothing), std::ptr::null_mut(), &mut err);
    let err = take_error(status, err);
    assert_eq!(err.status, pj_status::Unsupported);
    assert!(
        err.message.contains("pj_parallel_for_named"),
        "{}",
        err.message
    );
}

/// pj_parallel_free with tasks running in spawned workers: they see pj_out_cancelled (through the
/// memfd page they share with their proxy), finish, and free returns once they have, leaving no
/// worker behind.
fn free_lets_polling_tasks_finish() {
    let dir = std::env::temp_dir().join(format!("pj-spawn-free-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let files = |prefix: &str| -> Vec<i32> {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.parse().ok())
            .collect()
    };
    let par = spawn_executor(&[("batch_size", "1")]);
    let folder = dir.as_os_str().as_encoded_bytes();
    for _ in 0..4 {
        submit_named(&par, "poll", folder).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while files("started-").len() < 2 {
        assert!(Instant::now() < deadline, "the polling tasks did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    drop(par);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "free took {:?}",
        start.elapsed()
    );
    let (started, saw) = (files("started-"), files("saw-"));
    assert_eq!(started.len(), 2, "queued tasks never start");
    assert_eq!(saw.len(), 2, "both running tasks saw the flag and finished");
    for pid in started {
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "worker {pid} outlived free");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_crashed_workers_grandchild_dies_with_it() {
    // The spawned worker leads its own process group from before its exec: the grandchild its
    // task started is killed with it.
    let path = grandchild_file(std::process::id());
    let _ = std::fs::remove_file(&path);
    let par = spawn_executor(&[]);
    submit_named(&par, "moody", &1000u64.to_ne_bytes()).unwrap();
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::WorkerDied, "{}", err.message);
    let pid: i32 = std::fs::read_to_string(&path)
        .expect("the task wrote its grandchild's pid before crashing")
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let first = process_state(pid).map(|(_, start)| start);
    let alive = || match (process_state(pid), &first) {
        (Some((state, start)), Some(first)) => &start == first && !matches!(state, 'Z' | 'X'),
        _ => false,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if alive() {
        // SAFETY: our test's grandchild (same start time just checked); nothing is left running.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("the crashed spawned worker's grandchild {pid} still runs");
    }
}
