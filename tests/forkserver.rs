//! start_method=forkserver: workers are forks of a fork server, a copy of this process made when
//! the first such executor was created. A test with its own `main` (`harness = false`): the task
//! functions must be registered before the server starts, and the scenarios about the host's end
//! run in re-executed copies of this binary (`PJ_FORKSERVER_CASE`), whose fate does not touch
//! the runner. Any failure panics, which fails the test.

mod common;

use std::ffi::{CString, c_void};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const CASE: &str = "PJ_FORKSERVER_CASE";

/// Set before the server starts (7) and after (42): a forkserver worker sees 7, a fork one 42.
static MARKER: AtomicU64 = AtomicU64::new(0);

/// Task: returns [x * x, this process's pid, MARKER, the parent's pid].
unsafe extern "C" fn square(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let x = unsafe { arg_u64(arg, len.min(8)) };
    let words = [
        x * x,
        u64::from(std::process::id()),
        MARKER.load(Ordering::Relaxed),
        u64::from(std::os::unix::process::parent_id()),
    ];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

/// Task: fails on 3, crashes on 4, never returns on 5, SIGKILLs itself on 6, else `square`.
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
        6 => {
            // SAFETY: signals this very process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            0
        }
        // SAFETY: forwarding the task's own arguments.
        _ => unsafe { square(userdata, arg, len, out) },
    }
}

/// Task: starts `sleep 1000` (the worker's own child), writes its pid to the file whose path is
/// the argument, then crashes its worker.
unsafe extern "C" fn orphaner(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    _: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes: a path, built from an OsStr.
    let path = std::path::PathBuf::from(unsafe {
        std::ffi::OsStr::from_encoded_bytes_unchecked(std::slice::from_raw_parts(arg, len))
    });
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(&path, child.id().to_string()).unwrap();
    std::mem::forget(child);
    // SAFETY: deliberately crashes this worker process.
    unsafe { libc::raise(libc::SIGSEGV) };
    0
}

/// Task: sleeps 60 s (a worker busy until it is killed).
unsafe extern "C" fn sleepy(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// Task: sleeps 300 ms, so that each of two workers gets one.
unsafe extern "C" fn nap(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    std::thread::sleep(Duration::from_millis(300));
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

fn register(name: &str, f: pj_task_fn) {
    let name = CString::new(name).unwrap();
    assert_eq!(
        pj_register(name.as_ptr(), f, std::ptr::null_mut()),
        pj_status::Ok
    );
}

fn forkserver(extra: &[(&str, &str)]) -> Par {
    let mut options = vec![
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("start_method", "forkserver"),
    ];
    options.extend_from_slice(extra);
    parallel(&options).unwrap_or_else(|e| panic!("{}", e.message))
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

/// The children of process `pid` ("self" for this one).
fn children_of(pid: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// Whether `pid` runs (a zombie waiting for its reaper counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Whether `pid` exists at all, zombie or not.
fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (up to 10 s, generous on a busy machine) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// This process's fork server: its only child not started by a test scenario.
fn the_server() -> i32 {
    let kids = children_of("self");
    assert_eq!(kids.len(), 1, "one child, the fork server: {kids:?}");
    kids[0]
}

fn main() {
    register("square", Some(square));
    register("moody", Some(moody));
    register("sleepy", Some(sleepy));
    register("nap", Some(nap));
    register("orphaner", Some(orphaner));
    if let Ok(case) = std::env::var(CASE) {
        child_case(&case);
        return;
    }
    bad_config_is_refused();
    MARKER.store(7, Ordering::Relaxed);
    // A socket of the caller's, open when the server starts.
    let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    // The server starts with the first forkserver executor: a copy of this process now.
    drop(forkserver(&[]));
    MARKER.store(42, Ordering::Relaxed);
    the_server_holds_none_of_the_callers_descriptors(&mut reader, writer);
    registered_functions_give_the_results_of_fork();
    plain_pointers_must_be_registered_and_without_userdata();
    errors_crashes_and_timeouts_are_reported_as_with_fork();
    cancel_kills_the_running_workers();
    a_call_cancelled_while_the_server_is_stopped_ends_at_once();
    a_crashed_workers_grandchild_is_gone();
    kept_workers_are_reused_and_freed_workers_are_gone();
    a_killed_server_is_replaced();
    nothing_is_left_after_the_host_exits("exit");
    nothing_is_left_after_the_host_exits("killed");
    functions_registered_after_the_server_started_are_refused();
    println!("forkserver: all scenarios passed");
}

/// Fork-server workers lead their own process group, which dies with them: a task's child does not
/// outlive its crashed worker.
fn a_crashed_workers_grandchild_is_gone() {
    let path =
        std::env::temp_dir().join(format!("pj-forkserver-{}-orphan.pid", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let par = forkserver(&[]);
    submit_named(&par, "orphaner", path.as_os_str().as_encoded_bytes()).unwrap();
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::WorkerDied, "{}", err.message);
    let pid: i32 = std::fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    // Gone, or a zombie its new parent has yet to reap.
    eventually(
        "the crashed worker's grandchild ends",
        || !matches!(process_state(pid), Some((state, _)) if state != 'Z' && state != 'X'),
    );
    drop(par);
}

fn bad_config_is_refused() {
    for bad in ["forkservr", "fork-server", "FORKSERVER"] {
        let err = parallel(&[("backend", "processes"), ("start_method", bad)])
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert_eq!(err.status, pj_status::InvalidArgument, "{}", err.message);
        assert!(
            err.message.contains("\"forkserver\""),
            "the message lists the choices: {}",
            err.message
        );
    }
    // Not a process pool: no server is started.
    drop(parallel(&[("backend", "threads"), ("start_method", "forkserver")]).unwrap());
    drop(
        parallel(&[
            ("backend", "processes"),
            ("n_jobs", "1"),
            ("start_method", "forkserver"),
        ])
        .unwrap(),
    );
    assert!(children_of("self").is_empty(), "no server without a pool");
}

/// The server lives as long as the caller: if it kept the caller's descriptors open, a pipe or
/// socket the caller closes would never reach its end for the peer.
fn the_server_holds_none_of_the_callers_descriptors(
    reader: &mut std::os::unix::net::UnixStream,
    writer: std::os::unix::net::UnixStream,
) {
    use std::io::Read;
    drop(writer);
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = reader.read(&mut byte);
    assert!(
        matches!(read, Ok(0)),
        "the caller closed its end, the peer must see the end of the stream: {read:?}"
    );
}

fn registered_functions_give_the_results_of_fork() {
    let server = the_server();
    let par = forkserver(&[]);
    let fork = parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    for executor in [&par, &fork] {
        for i in 0..100u64 {
            submit_named(executor, "square", &i.to_ne_bytes()).unwrap();
        }
        for i in 100..200u64 {
            executor
                .submit(Some(square), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
    }
    let (served, forked) = (par.collect().unwrap(), fork.collect().unwrap());
    assert_eq!(served.len(), 200);
    let me = u64::from(std::process::id());
    for (i, (s, f)) in served.iter().zip(&forked).enumerate() {
        let (s, f) = (words(s), words(f));
        assert_eq!(s[0], (i * i) as u64);
        assert_eq!(s[0], f[0]);
        assert_ne!(s[1], me, "ran in a worker process");
        assert_eq!(
            s[3], server as u64,
            "a forkserver worker is the server's child"
        );
        assert_eq!(f[3], me, "a fork worker is ours");
        assert_eq!(s[2], 7, "memory as of the server's fork");
        assert_eq!(f[2], 42, "memory as of the worker's fork");
    }
    // A second call works (workers retired, and started again).
    submit_named(&par, "square", &9u64.to_ne_bytes()).unwrap();
    assert_eq!(words(&par.collect().unwrap()[0])[0], 81);
    // Big arguments and results travel through files, as on fork.
    let mut big = vec![0u8; 3 << 20];
    big[..8].copy_from_slice(&12u64.to_ne_bytes());
    for _ in 0..4 {
        submit_named(&par, "square", &big).unwrap();
    }
    for r in par.collect().unwrap() {
        assert_eq!(words(&r)[0], 144);
    }
    drop(par);
    eventually("retired workers are reaped by the server", || {
        children_of(&server.to_string()).is_empty()
    });
}

fn plain_pointers_must_be_registered_and_without_userdata() {
    let par = forkserver(&[]);
    let err = par
        .submit(Some(unregistered), std::ptr::null_mut(), &[])
        .unwrap_err();
    assert_eq!(err.status, pj_status::InvalidArgument);
    assert!(
        err.message.contains("forkserver") && err.message.contains("pj_register"),
        "{}",
        err.message
    );
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
    unsafe extern "C" fn range(_: *mut c_void, _: usize, _: usize, _: *mut TaskOutput) -> i32 {
        0
    }
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_for(par.0, 10, Some(range), std::ptr::null_mut(), &mut err);
    assert_eq!(take_error(status, err).status, pj_status::Unsupported);
}

fn errors_crashes_and_timeouts_are_reported_as_with_fork() {
    let server = the_server();
    let options = [("batch_size", "1"), ("timeout", "0.5")];
    let par = forkserver(&options);
    let mut fork_options = vec![("backend", "processes"), ("n_jobs", "2")];
    fork_options.extend_from_slice(&options);
    let fork = parallel(&fork_options).unwrap();
    for (x, status, signal) in [
        (3u64, pj_status::TaskFailed, None),
        (4, pj_status::WorkerDied, Some("SIGSEGV (11)")),
        (5, pj_status::Timeout, None),
        (6, pj_status::WorkerDied, Some("SIGKILL (9)")),
    ] {
        let mut errors = Vec::new();
        for executor in [&par, &fork] {
            for i in 0..6u64 {
                let arg = if i == 2 { x } else { i + 10 };
                let _ = executor.submit(Some(moody), std::ptr::null_mut(), &arg.to_ne_bytes());
            }
            errors.push(executor.collect().unwrap_err());
        }
        let (served, forked) = (&errors[0], &errors[1]);
        assert_eq!(served.status, status, "{x}: {}", served.message);
        assert_eq!(served.status, forked.status, "{x}");
        assert_eq!(served.task_index, 2, "{x}: {}", served.message);
        assert_eq!(served.callback_message, forked.callback_message, "{x}");
        if let Some(signal) = signal {
            let line = format!("killed by signal: {signal}");
            assert!(served.report.contains(&line), "{x}: {}", served.report);
            assert!(forked.report.contains(&line), "{x}: {}", forked.report);
        }
        if x == 4 {
            assert!(
                served.report.contains("moody"),
                "the crash names the task function: {}",
                served.report
            );
        }
    }
    // on_error=collect: every task gets its own status.
    let par = forkserver(&[("batch_size", "1"), ("on_error", "collect")]);
    for x in [1u64, 3, 4, 6, 8] {
        submit_named(&par, "moody", &x.to_ne_bytes()).unwrap();
    }
    let mut res = std::ptr::null_mut();
    assert_eq!(
        pj_parallel_collect(par.0, &mut res, std::ptr::null_mut()),
        pj_status::Ok
    );
    let statuses: Vec<pj_status> = (0..5).map(|i| pj_results_status(res, i)).collect();
    pj_results_free(res);
    use pj_status::{Ok as Fine, TaskFailed, WorkerDied};
    assert_eq!(statuses, [Fine, TaskFailed, WorkerDied, WorkerDied, Fine]);
    drop(par);
    eventually("no worker left", || {
        children_of(&server.to_string()).is_empty()
    });
}

fn cancel_kills_the_running_workers() {
    let server = the_server().to_string();
    let par = forkserver(&[("batch_size", "1")]);
    for _ in 0..4 {
        submit_named(&par, "sleepy", &[]).unwrap();
    }
    eventually("two workers run", || children_of(&server).len() == 2);
    let workers = children_of(&server);
    let canceller = cancel_after(&par, Duration::from_millis(100));
    let start = Instant::now();
    let err = par.collect().unwrap_err();
    canceller.join().unwrap();
    assert_eq!(err.status, pj_status::Cancelled, "{}", err.message);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    for pid in workers {
        assert!(!exists(pid), "worker {pid} outlived the cancelled call");
    }
}

/// A call cancelled while the server cannot answer (stopped: a debugger, a job-control signal)
/// ends at once, not when the 30 s answer limit is over, and the server is kept: once it runs
/// again, the answer it owes is read and the worker it started is killed, and the next call is
/// served by the same server, with no stray worker.
fn a_call_cancelled_while_the_server_is_stopped_ends_at_once() {
    let server = the_server();
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
    let par = forkserver(&[]);
    let start = Instant::now();
    submit_named(&par, "square", &3u64.to_ne_bytes()).unwrap();
    let canceller = cancel_after(&par, Duration::from_secs(1));
    let err = par.collect().unwrap_err();
    canceller.join().unwrap();
    let waited = start.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server, libc::SIGCONT) }, 0);
    assert_eq!(err.status, pj_status::Cancelled, "{}", err.message);
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    for i in 0..4u64 {
        submit_named(&par, "square", &i.to_ne_bytes()).unwrap();
    }
    let results = par.collect().unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(words(&results[3])[0], 9);
    assert_eq!(the_server(), server, "the server was kept");
    drop(par);
    let server = server.to_string();
    eventually("no worker is left", || children_of(&server).is_empty());
}

fn kept_workers_are_reused_and_freed_workers_are_gone() {
    let server = the_server().to_string();
    let par = forkserver(&[("keep_workers", "true"), ("batch_size", "1")]);
    let pids = |results: Vec<Vec<u8>>| {
        let mut p: Vec<u64> = results.iter().map(|r| words(r)[1]).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let mut calls = Vec::new();
    for _ in 0..3 {
        for i in 0..40u64 {
            submit_named(&par, "square", &i.to_ne_bytes()).unwrap();
        }
        calls.push(pids(par.collect().unwrap()));
    }
    assert!(!calls[0].is_empty() && calls[0].len() <= 2, "{calls:?}");
    let all: std::collections::BTreeSet<u64> = calls.iter().flatten().copied().collect();
    assert!(all.len() <= 2, "kept workers serve every call: {calls:?}");
    let kept = children_of(&server);
    assert_eq!(kept.len(), all.len(), "kept between calls: {kept:?}");
    drop(par);
    // Freed: reaped, not even zombies.
    for pid in kept {
        assert!(!exists(pid), "worker {pid} outlived pj_parallel_free");
    }
    assert!(alive(server.parse().unwrap()), "the server stays");
}

fn a_killed_server_is_replaced() {
    let old = the_server();
    // SAFETY: our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
    eventually("the server died", || !alive(old));
    let par = forkserver(&[]);
    for i in 0..10u64 {
        submit_named(&par, "square", &i.to_ne_bytes()).unwrap();
    }
    let results = par.collect().unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(words(&results[3])[0], 9);
    let new = the_server();
    assert_ne!(new, old);
    assert!(!exists(old), "the dead server was reaped");
    assert_eq!(words(&results[3])[3], new as u64);
}

/// A copy of this program starts a server and kept workers (busy, or idle), prints their pids and
/// exits (or is killed): the server and its workers must go with it.
fn nothing_is_left_after_the_host_exits(how: &str) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CASE, how)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pids: Vec<i32> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("PIDS=")
                .map(|p| p.split(',').filter_map(|x| x.parse().ok()).collect())
        })
        .expect("the copy printed its server and workers");
    assert!(pids.len() >= 3, "{how}: a server and two workers: {pids:?}");
    if how == "killed" {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    if how == "exit" {
        assert!(status.success(), "{status:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivors: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        survivors.is_empty(),
        "{how}: outlived the host by 10 s: {survivors:?}"
    );
}

/// The server is a copy of the caller as of its start: a function registered later is unknown to
/// its workers, and the call says so (run last: the registry only grows).
fn functions_registered_after_the_server_started_are_refused() {
    register("late", Some(unregistered));
    let par = forkserver(&[]);
    let err = submit_named(&par, "square", &1u64.to_ne_bytes())
        .err()
        .or_else(|| par.collect().err())
        .expect("the call fails");
    assert_eq!(err.status, pj_status::Io, "{}", err.message);
    assert!(
        err.message
            .contains("caller [square, moody, sleepy, nap, orphaner, late]")
            && err
                .message
                .contains("worker [square, moody, sleepy, nap, orphaner]")
            && err.message.contains("before the first executor"),
        "{}",
        err.message
    );
}

/// The re-executed copies.
fn child_case(case: &str) {
    let par = forkserver(&[("keep_workers", "true"), ("batch_size", "1")]);
    let server = the_server();
    match case {
        "exit" => {
            // Idle kept workers.
            for _ in 0..4 {
                submit_named(&par, "nap", &[]).unwrap();
            }
            par.collect().unwrap();
        }
        "killed" => {
            // Busy workers.
            for _ in 0..4 {
                submit_named(&par, "sleepy", &[]).unwrap();
            }
        }
        _ => panic!("unknown case {case}"),
    }
    let server_id = server.to_string();
    eventually("two workers", || children_of(&server_id).len() == 2);
    let mut pids = vec![server];
    pids.extend(children_of(&server_id));
    let listed: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    println!("PIDS={}", listed.join(","));
    if case == "killed" {
        // Wait for the kill.
        std::thread::sleep(Duration::from_secs(60));
    }
    // Exits without freeing anything, as a program may.
    std::process::exit(0);
}
