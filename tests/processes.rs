//! The process backend: results, copy-on-write userdata, large results, crash isolation, no orphans,
//! no leaks.
//!
//! Crash and leak scenarios run in a re-executed copy of this test binary (rayon's
//! `stack_overflow_crash` technique): the `child_case` test, ignored in normal runs, performs the
//! scenario named by `PJ_TEST_CASE` and prints `KEY=value` lines that the parent test checks. So
//! even a bug that took the parent process down would fail one test, not the runner.

mod common;

use std::ffi::c_void;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const CASE: &str = "PJ_TEST_CASE";

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find(|l| l.starts_with("Threads:")).unwrap()[8..]
        .trim()
        .parse()
        .unwrap()
}

/// An executor with two worker processes and the given extra options.
fn two_workers(extra: &[(&str, &str)]) -> Par {
    let mut options = vec![("backend", "processes"), ("n_jobs", "2")];
    options.extend_from_slice(extra);
    parallel(&options).unwrap()
}

/// Runs `child_case` for `case` in a fresh copy of this binary; returns its `KEY=value` lines.
fn run_case(case: &str) -> Vec<(String, String)> {
    let output = child_case_command(CASE, case).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "case {case}: the child test failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn value<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

/// Task: returns 2x its argument, except at the index stored in `userdata`'s crash plan.
/// Never inlined: crash reports must name it.
#[inline(never)]
unsafe extern "C" fn crashing(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments; userdata points at a static str naming the crash.
    let (x, how) = unsafe { (arg_u64(arg, len), *(userdata as *const &str)) };
    if x == 6 {
        // SAFETY: each branch deliberately ends this worker process, as the scenario requires.
        unsafe {
            match how {
                "segv" => std::ptr::write_volatile(16 as *mut u8, 1),
                "abort" => libc::abort(),
                "exit0" => libc::exit(0),
                "_exit3" => libc::_exit(3),
                "grandchild" => {
                    // A grandchild inherits the worker's socket and outlives it: the death must
                    // still be noticed at once, not when the grandchild exits (after 30 s, or as
                    // soon as the process that ran the call is gone: it leaves nothing behind).
                    let caller = libc::getppid();
                    if libc::fork() == 0 {
                        // Not the test's output pipes: the parent test waits for their end.
                        libc::close(1);
                        libc::close(2);
                        for _ in 0..300 {
                            if libc::kill(caller, 0) != 0 {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        libc::_exit(0);
                    }
                    std::ptr::write_volatile(16 as *mut u8, 1);
                }
                "sigkill" => {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                "overflow" => {
                    std::hint::black_box(recurse(0));
                }
                _ => {}
            }
        }
    }
    let y = (2 * x).to_ne_bytes();
    pj_out_set(out, y.as_ptr(), 8);
    0
}

/// Recurses until the stack overflows (each frame keeps a buffer alive across the call, so it can
/// be neither inlined nor turned into a loop).
#[inline(never)]
#[allow(unconditional_recursion)] // the very point
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1).wrapping_add(frame[depth as usize % 64])
}

/// Task: returns `arg` (a u64) bytes, each the low byte of its offset / 4096, written in place.
unsafe extern "C" fn sized(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: an 8-byte argument; pj_out_alloc returns `n` writable bytes (or NULL).
    unsafe {
        let n = arg_u64(arg, len) as usize;
        let at = pj_out_alloc(out, n);
        if at.is_null() {
            return 1;
        }
        for (i, b) in std::slice::from_raw_parts_mut(at, n).iter_mut().enumerate() {
            *b = (i >> 12) as u8;
        }
    }
    0
}

/// Task: 2x its argument, except task 6, which returns 64 MiB and has its worker SIGKILLed while
/// the worker is blocked in a socket write (sendmsg or sendto) of its outcome frame (a thread of
/// the worker watches the main thread's system call in /proc; the parent reads the frame as it
/// comes, so the write takes a while).
unsafe extern "C" fn killed_mid_frame(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let x = unsafe { arg_u64(arg, len) };
    if x != 6 {
        let y = (2 * x).to_ne_bytes();
        pj_out_set(out, y.as_ptr(), 8);
        return 0;
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    std::thread::spawn(move || {
        let path = format!("/proc/self/task/{tid}/syscall");
        let writes = [libc::SYS_sendmsg.to_string(), libc::SYS_sendto.to_string()];
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            let call = now.split_whitespace().next().unwrap_or("");
            if writes.iter().any(|w| w == call) {
                // SAFETY: ends this worker process, as the scenario requires.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            std::thread::yield_now();
        }
    });
    let n = 64 << 20;
    // SAFETY: pj_out_alloc returns `n` writable bytes, valid until the callback returns.
    let buf = unsafe { std::slice::from_raw_parts_mut(pj_out_alloc(out, n), n) };
    buf.fill(6);
    0
}

/// The re-executed scenarios. Ignored in normal runs; see the module docs.
#[test]
#[ignore]
fn child_case() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    // The harness prints "test child_case ... " without a newline: start our lines on a fresh one.
    println!();
    match case.as_str() {
        "segv" | "abort" | "exit0" | "_exit3" | "sigkill" | "grandchild" | "overflow" => {
            let how: &'static str = Box::leak(case.clone().into_boxed_str());
            let par = two_workers(&[("batch_size", "1")]);
            for i in 0..10u64 {
                let _ = par.submit(
                    Some(crashing),
                    &how as *const &str as *mut c_void,
                    &i.to_ne_bytes(),
                );
            }
            let err = par.collect().unwrap_err();
            println!("STATUS={:?}", err.status);
            println!("INDEX={}", err.task_index);
            println!("MESSAGE={}", err.message);
            println!("REPORT_SIGNAL={}", err.report.contains("killed by signal"));
            let line = |prefix: &str| {
                err.report
                    .lines()
                    .find_map(|l| l.trim_start().strip_prefix(prefix))
                    .unwrap_or("none")
                    .to_owned()
            };
            println!("REPORT_KILLED_BY={}", line("killed by signal: "));
            println!("REPORT_FAULT={}", line("fault address: "));
            // The backtrace block: the indented lines after "  backtrace:", on one line.
            let frames: Vec<&str> = err
                .report
                .lines()
                .skip_while(|l| *l != "  backtrace:")
                .skip(1)
                .take_while(|l| l.starts_with("    "))
                .map(str::trim)
                .collect();
            println!(
                "REPORT_BACKTRACE={}",
                err.report.contains("\n  backtrace:\n")
            );
            println!("REPORT_FRAMES={}", frames.join(" | "));
            // The same object works again.
            for i in 0..10u64 {
                par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                    .unwrap();
            }
            println!("NEXT={:?}", as_u64s(&par.collect().unwrap()));
            println!("CHILDREN={}", children().len());
        }
        "midframe" => {
            // Task 6 returns 64 MiB through the socket (max_nbytes none) and has its worker
            // SIGKILLed while the worker is inside a socket write of that outcome frame.
            // The kill needs the worker seen blocked in that write: on a loaded machine the
            // watcher can miss every moment of it, and the call then succeeds; that attempt proves
            // nothing, so it is made again (at most 5 times) with a fresh executor.
            let mut attempts = 0;
            let (par, err) = loop {
                let par = two_workers(&[("batch_size", "1"), ("max_nbytes", "none")]);
                for i in 0..10u64 {
                    par.submit(
                        Some(killed_mid_frame),
                        std::ptr::null_mut(),
                        &i.to_ne_bytes(),
                    )
                    .unwrap();
                }
                attempts += 1;
                match par.collect() {
                    Err(err) => break (par, err),
                    Ok(results) if attempts == 5 => {
                        panic!("the call succeeded 5 times ({} results)", results.len())
                    }
                    Ok(_) => {}
                }
            };
            println!("STATUS={:?}", err.status);
            println!("INDEX={}", err.task_index);
            println!("MESSAGE={}", err.message);
            for i in 0..10u64 {
                par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                    .unwrap();
            }
            println!("NEXT={:?}", as_u64s(&par.collect().unwrap()));
            println!("CHILDREN={}", children().len());
        }
        "retained" => {
            // One 300 MiB result through the socket, freed: what stays resident in this process
            // while the executor (and its proxies) live on. (An executor keeps up to 256 MiB of
            // result memory for reuse by later calls: a larger buffer is not kept.)
            let rss_kib = || {
                let status = std::fs::read_to_string("/proc/self/status").unwrap();
                let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
                line[6..]
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            };
            let par = two_workers(&[("batch_size", "1"), ("max_nbytes", "none")]);
            par.submit(Some(double_task), std::ptr::null_mut(), &1u64.to_ne_bytes())
                .unwrap();
            par.collect().unwrap();
            let before = rss_kib();
            par.submit(
                Some(sized),
                std::ptr::null_mut(),
                &(300u64 << 20).to_ne_bytes(),
            )
            .unwrap();
            let results = par.collect().unwrap();
            assert_eq!(results[0].len(), 300 << 20);
            drop(results);
            println!("RETAINED_KIB={}", rss_kib().saturating_sub(before));
        }
        "orphans" => {
            unsafe extern "C" fn sleep_long(
                _: *mut c_void,
                _: *const u8,
                _: usize,
                _: *mut TaskOutput,
            ) -> i32 {
                std::thread::sleep(Duration::from_secs(60));
                0
            }
            let par = two_workers(&[("batch_size", "1")]);
            for _ in 0..4 {
                par.submit(Some(sleep_long), std::ptr::null_mut(), &[])
                    .unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while children().len() < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let pids: Vec<String> = children().iter().map(|p| p.to_string()).collect();
            println!("PIDS={}", pids.join(","));
            let _ = par.collect();
        }
        "leaks" => {
            let par = two_workers(&[]);
            let call = |n: u64| {
                for i in 0..n {
                    par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                        .unwrap();
                }
                assert_eq!(par.collect().unwrap().len(), n as usize);
            };
            call(10);
            let (fds, threads, kids) = (fd_count(), thread_count(), children().len());
            for round in 0..1_000 {
                call(1 + round % 7);
            }
            println!("FDS={fds},{}", fd_count());
            println!("THREADS={threads},{}", thread_count());
            println!("CHILDREN={kids},{}", children().len());
        }
        "idle" => {
            // Waiters spin briefly before they sleep (process proxies and workers, worker threads,
            // the caller); idle, nobody may keep spinning.
            let par = two_workers(&[("keep_workers", "true"), ("batch_size", "1")]);
            let threads =
                parallel(&[("backend", "threads"), ("n_jobs", "2"), ("batch_size", "1")]).unwrap();
            for _ in 0..3 {
                for executor in [&par, &threads] {
                    for i in 0..2_000u64 {
                        executor
                            .submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                            .unwrap();
                    }
                    assert_eq!(executor.collect().unwrap().len(), 2_000);
                }
            }
            let workers = children();
            // utime + stime, in clock ticks, of this process (the proxies are its threads) and of
            // the kept workers.
            let ticks = |pid: &str| -> u64 {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
                let fields: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .collect();
                fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
            };
            let total =
                || ticks("self") + workers.iter().map(|p| ticks(&p.to_string())).sum::<u64>();
            let before = total();
            std::thread::sleep(Duration::from_secs(1));
            println!("WORKERS={}", workers.len());
            println!("IDLE_TICKS={}", total() - before);
        }
        "kept" => {
            // Tasks slow enough that both workers are forked and served, even under load.
            unsafe extern "C" fn slow_double(
                userdata: *mut c_void,
                arg: *const u8,
                len: usize,
                out: *mut TaskOutput,
            ) -> i32 {
                std::thread::sleep(Duration::from_millis(2));
                // SAFETY: forwarding the callback's own arguments.
                unsafe { double_task(userdata, arg, len, out) }
            }
            let par = two_workers(&[("keep_workers", "true"), ("batch_size", "1")]);
            let call = || {
                for i in 0..100u64 {
                    par.submit(Some(slow_double), std::ptr::null_mut(), &i.to_ne_bytes())
                        .unwrap();
                }
                as_u64s(&par.collect().unwrap()) == (0..100).map(|i| 2 * i).collect::<Vec<_>>()
            };
            println!("FIRST={}", call());
            let kept = children();
            println!("KEPT={}", kept.len());
            // SAFETY: killing our own idle worker, as a user's `kill -9` would.
            unsafe { libc::kill(kept[0], libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(50));
            println!("SECOND={}", call());
            drop(par);
            println!("CHILDREN={}", children().len());
        }
        "sigalrm" => {
            // Cancel from a signal handler, as a host's SIGINT handler would.
            static PAR: std::sync::atomic::AtomicPtr<pj_parallel_t> =
                std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
            extern "C" fn on_alarm(_: libc::c_int) {
                pj_parallel_cancel(PAR.load(std::sync::atomic::Ordering::Relaxed));
            }
            let par = two_workers(&[("batch_size", "1")]);
            PAR.store(par.0, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: installing a handler in this child test process, which only this case uses.
            unsafe {
                libc::signal(libc::SIGALRM, on_alarm as *const () as libc::sighandler_t);
                libc::alarm(1);
            }
            let start = Instant::now();
            for i in 1..4u64 {
                par.submit(
                    Some(fail_first_sleep_rest),
                    std::ptr::null_mut(),
                    &i.to_ne_bytes(),
                )
                .unwrap();
            }
            let err = par.collect().unwrap_err();
            println!("STATUS={:?}", err.status);
            println!("ELAPSED_MS={}", start.elapsed().as_millis());
            for i in 0..3u64 {
                par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                    .unwrap();
            }
            println!("NEXT={:?}", as_u64s(&par.collect().unwrap()));
            println!("CHILDREN={}", children().len());
        }
        "sigint" => {
            // The host has its own SIGINT action; pj must put it back exactly.
            static HOST_CALLS: std::sync::atomic::AtomicUsize =
                std::sync::atomic::AtomicUsize::new(0);
            extern "C" fn host_handler(_: libc::c_int) {
                HOST_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // SAFETY: zeroed sigactions are valid; this child process is this case's alone.
            let read_action = || unsafe {
                let mut now: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGINT, std::ptr::null(), &mut now);
                let mask: Vec<i32> = (1..32)
                    .filter(|&s| libc::sigismember(&now.sa_mask, s) == 1)
                    .collect();
                (now.sa_sigaction, now.sa_flags, mask)
            };
            // SAFETY: as above.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = host_handler as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_NODEFER;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaddset(&mut action.sa_mask, libc::SIGUSR2);
                libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
            }
            unsafe extern "C" fn nap(
                _: *mut c_void,
                _: *const u8,
                _: usize,
                _: *mut TaskOutput,
            ) -> i32 {
                std::thread::sleep(Duration::from_millis(200));
                0
            }
            let before = read_action();
            {
                // Without handle_sigint, pj never touches the action, even while it blocks.
                let par = two_workers(&[("batch_size", "1")]);
                for _ in 0..4 {
                    par.submit(Some(nap), std::ptr::null_mut(), &[]).unwrap();
                }
                let during = read_action();
                par.collect().unwrap();
                println!(
                    "DEFAULT_UNTOUCHED={}",
                    during == before && read_action() == before
                );
            }
            for backend in ["processes", "threads", "sequential"] {
                let par = parallel(&[
                    ("backend", backend),
                    ("n_jobs", "2"),
                    ("batch_size", "1"),
                    ("handle_sigint", "true"),
                ])
                .unwrap();
                let interrupter = std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    // SAFETY: signalling our own process.
                    unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
                });
                let start = Instant::now();
                // 50 tasks of 0.2 s: 5 s of work, interrupted at 0.3 s.
                for _ in 0..50 {
                    if par.submit(Some(nap), std::ptr::null_mut(), &[]).is_err() {
                        break;
                    }
                }
                let err = par.collect().unwrap_err();
                interrupter.join().unwrap();
                println!("{backend}_STATUS={:?}", err.status);
                println!("{backend}_MESSAGE={}", err.message);
                println!("{backend}_ELAPSED_MS={}", start.elapsed().as_millis());
                println!("{backend}_RESTORED={}", read_action() == before);
                for i in 0..3u64 {
                    par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                        .unwrap();
                }
                println!("{backend}_NEXT={:?}", as_u64s(&par.collect().unwrap()));
            }
            println!(
                "HOST_CALLS_DURING={}",
                HOST_CALLS.load(std::sync::atomic::Ordering::SeqCst)
            );
            // SAFETY: signalling our own process, whose host handler is back.
            unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
            std::thread::sleep(Duration::from_millis(50));
            println!(
                "HOST_CALLS_AFTER={}",
                HOST_CALLS.load(std::sync::atomic::Ordering::SeqCst)
            );
            println!("CHILDREN={}", children().len());
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn a_dying_worker_is_reported_with_the_task_and_the_cause() {
    let cases = [
        ("segv", "SIGSEGV"),
        ("abort", "SIGABRT"),
        ("sigkill", "SIGKILL"),
        ("grandchild", "SIGSEGV"),
        ("exit0", "exit status 0"),
        ("_exit3", "exit status 3"),
    ];
    for (case, cause) in cases {
        let start = Instant::now();
        let lines = run_case(case);
        // Generous (a busy machine takes seconds to start the child and symbolize its crash),
        // yet well below the 30 s the grandchild keeps the worker's socket open.
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{case}: the death was noticed late"
        );
        assert_eq!(value(&lines, "STATUS"), "WorkerDied", "{case}");
        assert_eq!(
            value(&lines, "INDEX"),
            "6",
            "{case}: the task that was running"
        );
        let message = value(&lines, "MESSAGE");
        assert!(
            message.contains(cause) && message.contains("task 6"),
            "{case}: {message}"
        );
        assert_eq!(
            value(&lines, "REPORT_SIGNAL"),
            (!cause.starts_with("exit")).to_string(),
            "{case}"
        );
        // The worker's crash handler recorded the crashing stack for the signals a task raises
        // itself (not SIGKILL, which cannot be caught, nor an exit).
        let crashed = matches!(cause, "SIGSEGV" | "SIGABRT");
        if crashed {
            assert!(
                value(&lines, "REPORT_KILLED_BY").starts_with(cause),
                "{case}: {lines:?}"
            );
        }
        assert_eq!(
            value(&lines, "REPORT_BACKTRACE"),
            crashed.to_string(),
            "{case}: {lines:?}"
        );
        let frames = value(&lines, "REPORT_FRAMES");
        if crashed {
            assert!(
                frames.starts_with("#0 0x") && frames.contains("crashing"),
                "{case}: the backtrace names the crashing function: {frames}"
            );
            // The handler's own frames are left out: the first frame is the task's (or, for
            // abort, libc's, below the task).
            assert!(!frames.contains("on_fatal_signal"), "{case}: {frames}");
            // pj's own worker loop below the task is summed up in one line.
            assert!(
                frames.contains("pj::task::run_batch at ")
                    && frames.contains("frames of pj's worker loop"),
                "{case}: {frames}"
            );
        }
        let fault = if cause == "SIGSEGV" { "0x10" } else { "none" };
        assert_eq!(value(&lines, "REPORT_FAULT"), fault, "{case}");
        assert_eq!(
            value(&lines, "NEXT"),
            format!("{:?}", (0..10).map(|i| 2 * i).collect::<Vec<u64>>())
        );
        assert_eq!(
            value(&lines, "CHILDREN"),
            "0",
            "{case}: no worker left behind"
        );
    }
}

#[test]
fn a_stack_overflow_in_a_task_is_reported_with_its_backtrace() {
    // The crash handler runs on an alternate signal stack: it still records the stack when the
    // worker's own stack is exhausted.
    let lines = run_case("overflow");
    assert_eq!(value(&lines, "STATUS"), "WorkerDied");
    assert_eq!(value(&lines, "INDEX"), "6");
    assert!(
        value(&lines, "REPORT_KILLED_BY").starts_with("SIGSEGV"),
        "{lines:?}"
    );
    let frames = value(&lines, "REPORT_FRAMES");
    assert!(
        frames.starts_with("#0 0x") && frames.contains("processes::recurse"),
        "{frames}"
    );
    assert_eq!(
        value(&lines, "NEXT"),
        format!("{:?}", (0..10).map(|i| 2 * i).collect::<Vec<u64>>())
    );
    assert_eq!(value(&lines, "CHILDREN"), "0");
}

#[test]
fn workers_die_with_a_killed_parent() {
    let mut child = child_case_command(CASE, "orphans")
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
        .expect("the child printed its workers");
    assert!(pids.len() >= 2, "workers were running: {pids:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let alive = |pid: i32| {
        // A zombie waiting for a reaper is dead too.
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
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivors: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        survivors.is_empty(),
        "workers outlived their parent by 2 s: {survivors:?}"
    );
}

#[test]
fn a_thousand_calls_leak_no_fd_thread_or_child() {
    let lines = run_case("leaks");
    for key in ["FDS", "THREADS", "CHILDREN"] {
        let (before, after) = value(&lines, key).split_once(',').unwrap();
        assert_eq!(before, after, "{key} changed over 1,000 calls");
    }
}

#[test]
fn a_kept_worker_killed_between_calls_is_replaced() {
    let lines = run_case("kept");
    assert_eq!(value(&lines, "FIRST"), "true");
    assert_eq!(value(&lines, "KEPT"), "2", "kept workers outlive the call");
    assert_eq!(value(&lines, "SECOND"), "true");
    assert_eq!(
        value(&lines, "CHILDREN"),
        "0",
        "freeing the object retires kept workers"
    );
}

#[test]
fn idle_proxies_and_workers_do_not_spin() {
    let lines = run_case("idle");
    assert_eq!(value(&lines, "WORKERS"), "2");
    // A thread spinning through that second would show about 100 ticks; idle is 0 or 1.
    let ticks: u64 = value(&lines, "IDLE_TICKS").parse().unwrap();
    assert!(ticks <= 10, "{ticks} clock ticks of CPU in 1 s idle");
}

/// Data the workers read through `userdata`: it exists before the call, so the fork copies it.
static TABLE: [u64; 4] = [10, 20, 30, 40];

#[test]
fn workers_see_the_parents_memory_and_return_in_order() {
    unsafe extern "C" fn lookup(
        userdata: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: userdata is a Vec<u64> the parent built before the call; arguments are 8 bytes.
        let (table, i) = unsafe { (&*(userdata as *const Vec<u64>), arg_u64(arg, len) as usize) };
        let pid = std::process::id() as u64;
        // Long enough that one worker cannot drain the queue before the other one starts, even
        // on a loaded machine.
        std::thread::sleep(std::time::Duration::from_micros(200));
        let bytes = [table[i % table.len()].to_ne_bytes(), pid.to_ne_bytes()].concat();
        pj_out_set(out, bytes.as_ptr(), bytes.len());
        0
    }
    let heap_table: Vec<u64> = TABLE.iter().map(|x| x + 1).collect();
    let par = two_workers(&[("batch_size", "3")]);
    for i in 0..1_000u64 {
        par.submit(
            Some(lookup),
            &heap_table as *const Vec<u64> as *mut c_void,
            &i.to_ne_bytes(),
        )
        .unwrap();
    }
    let results = par.collect().unwrap();
    let mut pids = std::collections::BTreeSet::new();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            u64::from_ne_bytes(r[..8].try_into().unwrap()),
            heap_table[i % 4]
        );
        pids.insert(u64::from_ne_bytes(r[8..].try_into().unwrap()));
    }
    assert!(
        !pids.contains(&(std::process::id() as u64)),
        "tasks ran in worker processes"
    );
    assert!(pids.len() >= 2, "both workers served the call: {pids:?}");
}

#[test]
fn results_larger_than_a_pipe_come_back_intact() {
    unsafe extern "C" fn big(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: 8-byte arguments.
        let seed = unsafe { arg_u64(arg, len) } as u8;
        let n = 64 << 20;
        // SAFETY: pj_out_alloc returns `n` writable bytes, valid until the callback returns.
        let buf = unsafe { std::slice::from_raw_parts_mut(pj_out_alloc(out, n), n) };
        for (i, b) in buf.iter_mut().enumerate().step_by(4096) {
            *b = seed.wrapping_add((i >> 12) as u8);
        }
        buf[n - 1] = seed;
        0
    }
    let par = two_workers(&[("batch_size", "1")]);
    for seed in 0..8u64 {
        par.submit(Some(big), std::ptr::null_mut(), &seed.to_ne_bytes())
            .unwrap();
    }
    let results = par.collect().unwrap();
    assert_eq!(results.len(), 8);
    for (seed, r) in results.iter().enumerate() {
        assert_eq!(r.len(), 64 << 20);
        assert_eq!(r[r.len() - 1], seed as u8);
        assert_eq!(r[4096 * 77], (seed as u8).wrapping_add(77));
    }
}

#[test]
fn a_failing_task_on_processes_names_its_index() {
    let counter = Box::new(Counter {
        runs: Default::default(),
        fail_at: 537,
    });
    let par = two_workers(&[]);
    for i in 0..10_000u64 {
        let _ = par.submit(
            Some(double_task),
            &*counter as *const Counter as *mut c_void,
            &i.to_ne_bytes(),
        );
    }
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::TaskFailed);
    assert_eq!(err.task_index, 537);
    assert!(
        err.message.contains("cannot handle this one"),
        "{}",
        err.message
    );
    assert!(err.report.contains("backend: processes"), "{}", err.report);
    // The worker line names the process that ran the task (not one of this process's threads).
    let worker = err
        .report
        .lines()
        .find_map(|l| l.trim().strip_prefix("worker: process "))
        .unwrap_or_else(|| panic!("no worker pid: {}", err.report));
    let pid: u32 = worker.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(pid, std::process::id(), "{}", err.report);
}

#[test]
fn forking_while_other_threads_allocate_and_print_never_deadlocks_a_worker() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let noise: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sink = std::io::sink();
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 + i * 37]).collect();
                    let _ = writeln!(sink, "{}", v.len());
                    let _ = format!("{:?}", &v[3]);
                }
            })
        })
        .collect();
    unsafe extern "C" fn allocate(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // The worker allocates and formats too: with a malloc lock inherited in a locked state
        // this would hang.
        let text = format!("{:?}", vec![1u8; 100]);
        std::hint::black_box(text);
        pj_out_set(out, arg, len);
        0
    }
    let start = Instant::now();
    let par = two_workers(&[("batch_size", "1")]);
    for _ in 0..200 {
        for i in 0..4u64 {
            par.submit(Some(allocate), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
        assert_eq!(par.collect().unwrap().len(), 4);
        assert!(start.elapsed() < Duration::from_secs(60), "calls stalled");
    }
    stop.store(true, Ordering::Relaxed);
    for t in noise {
        t.join().unwrap();
    }
}

/// Task: fails at once for argument 0, sleeps 10 s otherwise.
unsafe extern "C" fn fail_first_sleep_rest(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    if unsafe { arg_u64(arg, len) } == 0 {
        pj_out_error(out, c"task 0 gives up".as_ptr());
        return 5;
    }
    std::thread::sleep(Duration::from_secs(10));
    0
}

#[test]
fn a_failure_kills_the_running_workers_instead_of_waiting() {
    let par = two_workers(&[("batch_size", "1")]);
    let start = Instant::now();
    for i in 0..100u64 {
        let _ = par.submit(
            Some(fail_first_sleep_rest),
            std::ptr::null_mut(),
            &i.to_ne_bytes(),
        );
    }
    let err = par.collect().unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        (err.status, err.task_index),
        (pj_status::TaskFailed, 0),
        "{}",
        err.message
    );
    assert!(err.message.contains("task 0 gives up"));
    // Reusable, and the killed worker was replaced.
    for i in 1..5u64 {
        par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
            .unwrap();
    }
    assert_eq!(as_u64s(&par.collect().unwrap()), vec![2, 4, 6, 8]);
}

/// Task: sleeps up to 10 s, returning as soon as `pj_out_cancelled` says the call is stopping.
unsafe extern "C" fn sleep_until_cancelled(
    _: *mut c_void,
    _: *const u8,
    _: usize,
    out: *mut TaskOutput,
) -> i32 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) && pj_out_cancelled(out) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    0
}

#[test]
fn freeing_mid_call_on_processes_returns_promptly() {
    // Free waits for running tasks (as on threads) and tells them to stop: tasks that poll
    // pj_out_cancelled end at once; queued ones never start.
    let par = two_workers(&[("batch_size", "1"), ("pre_dispatch", "all")]);
    for i in 1..20u64 {
        par.submit(
            Some(sleep_until_cancelled),
            std::ptr::null_mut(),
            &i.to_ne_bytes(),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    drop(par);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "free took {:?}",
        start.elapsed()
    );
}

#[test]
fn cancel_from_a_signal_handler_stops_the_call_promptly() {
    let lines = run_case("sigalrm");
    assert_eq!(value(&lines, "STATUS"), "Cancelled");
    let elapsed: u64 = value(&lines, "ELAPSED_MS").parse().unwrap();
    assert!(
        elapsed < 2_000,
        "alarm at 1 s, cancelled after {elapsed} ms (tasks sleep 10 s)"
    );
    assert_eq!(
        value(&lines, "NEXT"),
        "[0, 2, 4]",
        "the object stays usable"
    );
    assert_eq!(value(&lines, "CHILDREN"), "0");
}

#[test]
fn handle_sigint_cancels_the_call_and_restores_the_hosts_action() {
    let lines = run_case("sigint");
    for backend in ["processes", "threads", "sequential"] {
        let key = |k: &str| format!("{backend}_{k}");
        assert_eq!(value(&lines, &key("STATUS")), "Cancelled", "{backend}");
        assert!(
            value(&lines, &key("MESSAGE")).contains("SIGINT"),
            "{backend}: {lines:?}"
        );
        let elapsed: u64 = value(&lines, &key("ELAPSED_MS")).parse().unwrap();
        // The signal comes at 0.3 s; threads and sequential finish the 0.2 s task in progress.
        assert!(elapsed < 1_500, "{backend}: {elapsed} ms");
        assert_eq!(value(&lines, &key("RESTORED")), "true", "{backend}");
        assert_eq!(value(&lines, &key("NEXT")), "[0, 2, 4]", "{backend}");
    }
    assert_eq!(value(&lines, "DEFAULT_UNTOUCHED"), "true");
    assert_eq!(
        value(&lines, "HOST_CALLS_DURING"),
        "0",
        "pj consumed the SIGINTs"
    );
    assert_eq!(
        value(&lines, "HOST_CALLS_AFTER"),
        "1",
        "the host's handler is back"
    );
    assert_eq!(value(&lines, "CHILDREN"), "0");
}

#[test]
fn cancel_from_another_thread_on_every_backend() {
    for backend in ["processes", "threads", "sequential"] {
        unsafe extern "C" fn short_sleep(
            _: *mut c_void,
            _: *const u8,
            _: usize,
            _: *mut TaskOutput,
        ) -> i32 {
            std::thread::sleep(Duration::from_millis(50));
            0
        }
        let par = std::sync::Arc::new(
            parallel(&[("backend", backend), ("n_jobs", "2"), ("batch_size", "1")]).unwrap(),
        );
        let canceller = {
            let par = par.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                assert_eq!(pj_parallel_cancel(par.0), pj_status::Ok);
            })
        };
        let start = Instant::now();
        let mut failed = None;
        for _ in 0..1_000 {
            if let Err(e) = par.submit(Some(short_sleep), std::ptr::null_mut(), &[]) {
                failed = Some(e);
                break;
            }
        }
        let err = failed.unwrap_or_else(|| par.collect().unwrap_err());
        assert_eq!(
            err.status,
            pj_status::Cancelled,
            "{backend}: {}",
            err.message
        );
        let _ = par.collect();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{backend}: {:?}",
            start.elapsed()
        );
        canceller.join().unwrap();
        assert_eq!(
            pj_parallel_cancel(std::ptr::null()),
            pj_status::NullArgument
        );
    }
}

#[test]
fn a_worker_killed_while_writing_its_outcome_frame_is_reported() {
    let lines = run_case("midframe");
    assert_eq!(value(&lines, "STATUS"), "WorkerDied", "{lines:?}");
    assert_eq!(value(&lines, "INDEX"), "6", "{lines:?}");
    let message = value(&lines, "MESSAGE");
    assert!(
        message.contains("SIGKILL") && message.contains("task 6"),
        "{message}"
    );
    assert_eq!(
        value(&lines, "NEXT"),
        format!("{:?}", (0..10).map(|i| 2 * i).collect::<Vec<u64>>())
    );
    assert_eq!(value(&lines, "CHILDREN"), "0", "no worker left behind");
}

#[test]
fn a_large_result_through_the_socket_is_not_kept_once_freed() {
    let lines = run_case("retained");
    let retained: u64 = value(&lines, "RETAINED_KIB").parse().unwrap();
    // 300 MiB came through; a buffer of that size kept by the parent would show in full.
    assert!(retained < 64 << 10, "{retained} KiB still resident");
}

/// A results object read on one thread while the executor runs the next call on another.
struct Held(*mut pj_results_t);
// SAFETY: a results object is independent of its executor once collected; only one thread
// touches it at a time here.
unsafe impl Send for Held {}

/// Task: a result of a size and pattern set by its (call, index) argument, written in place.
unsafe extern "C" fn patterned(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 16-byte arguments; pj_out_alloc returns `n` writable bytes (or NULL).
    unsafe {
        let arg = std::slice::from_raw_parts(arg, len);
        let call = u64::from_ne_bytes(arg[..8].try_into().unwrap());
        let index = u64::from_ne_bytes(arg[8..].try_into().unwrap());
        let n = pattern_len(call, index);
        let at = pj_out_alloc(out, n);
        if at.is_null() {
            return 1;
        }
        for (i, b) in std::slice::from_raw_parts_mut(at, n).iter_mut().enumerate() {
            *b = pattern_byte(call, index, i);
        }
    }
    0
}

fn pattern_len(call: u64, index: u64) -> usize {
    1 + ((call * 7919 + index * 104_729) % (128 << 10)) as usize
}

fn pattern_byte(call: u64, index: u64, at: usize) -> u8 {
    (call as u8).wrapping_mul(31) ^ (index as u8).wrapping_mul(7) ^ (at % 253) as u8
}

/// Checks every result of call `call` (`n` tasks) byte by byte.
fn check_call(results: &Held, call: u64, n: u64) {
    assert_eq!(pj_results_len(results.0), n as usize);
    for index in 0..n {
        let (mut data, mut len) = (std::ptr::null(), 0usize);
        assert_eq!(
            pj_results_get(results.0, index as usize, &mut data, &mut len),
            pj_status::Ok
        );
        assert_eq!(len, pattern_len(call, index), "call {call} task {index}");
        // SAFETY: pj_results_get gave `len` readable bytes, valid until pj_results_free.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        for (at, b) in bytes.iter().enumerate() {
            assert_eq!(
                *b,
                pattern_byte(call, index, at),
                "call {call} task {index} byte {at}"
            );
        }
    }
}

#[test]
fn results_stay_intact_over_many_calls_checked_while_the_next_call_runs() {
    let par = std::sync::Arc::new(two_workers(&[("keep_workers", "true")]));
    const N: u64 = 40;
    let n = N;
    let run = |par: &Par, call: u64| {
        let n = N;
        for index in 0..n {
            let mut arg = call.to_ne_bytes().to_vec();
            arg.extend_from_slice(&index.to_ne_bytes());
            par.submit(Some(patterned), std::ptr::null_mut(), &arg)
                .unwrap();
        }
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
        Held(res)
    };
    let mut held = run(&par, 0);
    for call in 1..12 {
        let next = {
            let par = par.clone();
            std::thread::spawn(move || run(&par, call))
        };
        // The previous call's results, read while this one runs (and again once it is over).
        check_call(&held, call - 1, n);
        let done = next.join().unwrap();
        check_call(&held, call - 1, n);
        pj_results_free(held.0);
        held = done;
    }
    check_call(&held, 11, n);
    pj_results_free(held.0);
}
