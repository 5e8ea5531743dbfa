//! A task's descendants die with its worker (issue 18 item 3): each worker process leads its own
//! process group, and pj kills that group whenever it ends a worker. A task here starts a
//! `sleep 1000` grandchild, writes its pid to a file, then crashes, hangs past the timeout, hangs
//! until cancelled, hangs while a sibling fails (fail fast), or returns (the worker then ends
//! with the call, or with `pj_parallel_free` when workers are kept). The grandchild must be gone
//! soon after. A child of the host started before the call must survive all of it.

mod common;

use std::ffi::{CString, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// What a task does after starting its grandchild (its 8-byte argument).
const RETURN: u64 = 0;
const CRASH: u64 = 1;
const HANG: u64 = 2;
/// Fails at once (code 3), once the file of the sibling's grandchild exists.
const FAIL: u64 = 3;

/// Generous: a busy machine may take a while to schedule the kill and the reaper.
const BOUND: Duration = Duration::from_secs(20);

/// Task: starts `sleep 1000` (its own child, the worker's grandchild), writes its pid to the file
/// named by the NUL-terminated path `userdata` points to, then does what its argument says. With
/// FAIL, it starts nothing: it waits for that file, then fails.
unsafe extern "C" fn grandchild_task(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: the test passes a live CString as userdata (a copy in a forked worker) and an 8-byte
    // argument.
    let (path, what) = unsafe {
        (
            std::ffi::CStr::from_ptr(userdata as *const libc::c_char),
            arg_u64(arg, len),
        )
    };
    let path = Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    if what == FAIL {
        let deadline = Instant::now() + BOUND;
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        return 3;
    }
    let Ok(child) = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return 9;
    };
    // Written whole, then renamed, so that the test never reads half a pid.
    let partial = path.with_extension("partial");
    if std::fs::write(&partial, child.id().to_string()).is_err()
        || std::fs::rename(&partial, path).is_err()
    {
        return 10;
    }
    // Not waited for: the grandchild is left behind.
    std::mem::forget(child);
    match what {
        CRASH => std::process::abort(),
        HANG => {
            // Never looks at pj_out_cancelled: only a kill ends it early.
            std::thread::sleep(Duration::from_secs(1000));
            0
        }
        _ => {
            pj_out_set(out, [1u8].as_ptr(), 1);
            0
        }
    }
}

/// A file the task writes its grandchild's pid to (unique per test and process), removed on drop.
struct PidFile {
    path: PathBuf,
    c_path: CString,
}

impl PidFile {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pj-process-groups-{}-{test}.pid",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        PidFile { path, c_path }
    }

    fn userdata(&self) -> *mut c_void {
        self.c_path.as_ptr() as *mut c_void
    }

    /// Waits (bounded) for the task to write the pid.
    fn grandchild(&self) -> Grandchild {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.path) {
                let pid: i32 = text.trim().parse().expect("a pid");
                return Grandchild::new(pid);
            }
            assert!(
                Instant::now() < deadline,
                "the task did not write its grandchild's pid"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("partial"));
    }
}

/// The task's `sleep 1000`, identified by its pid and start time (so that a reused pid is not
/// mistaken for it). Dropping it kills it if it still runs, so that a failing test leaks nothing.
struct Grandchild {
    pid: i32,
    start: Option<String>,
}

impl Grandchild {
    fn new(pid: i32) -> Self {
        Grandchild {
            pid,
            start: process_state(pid).map(|(_, start)| start),
        }
    }

    /// Whether the grandchild still runs: its pid names the same process (same start time), and it
    /// is not a zombie (dead, waiting for init or a subreaper to reap it).
    fn alive(&self) -> bool {
        match (process_state(self.pid), &self.start) {
            (Some((state, start)), Some(first)) => &start == first && state != 'Z' && state != 'X',
            _ => false,
        }
    }

    /// Polls until the grandchild is gone, within [`BOUND`].
    fn is_gone_soon(&self) -> bool {
        let deadline = Instant::now() + BOUND;
        while self.alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Grandchild {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: the pid names our test's grandchild (same start time just checked).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// A child of the host (the test process) started before the call: pj must never touch it.
struct HostChild(std::process::Child);

impl HostChild {
    fn start() -> Self {
        HostChild(
            Command::new("sleep")
                .arg("1000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn assert_alive(&mut self, when: &str) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the host's own child died {when}"
        );
    }
}

impl Drop for HostChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn submit_what(par: &Par, file: &PidFile, what: u64) {
    par.submit(Some(grandchild_task), file.userdata(), &what.to_ne_bytes())
        .unwrap();
}

#[test]
fn a_grandchild_dies_with_a_worker_that_crashed() {
    let mut host = HostChild::start();
    let file = PidFile::new("crash");
    let par = parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    submit_what(&par, &file, CRASH);
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::WorkerDied, "{}", err.message);
    let grandchild = file.grandchild();
    assert!(
        grandchild.is_gone_soon(),
        "the crashed task's grandchild {} still runs",
        grandchild.pid
    );
    host.assert_alive("after the call");
    drop(par);
    host.assert_alive("after pj_parallel_free");
}

#[test]
fn a_grandchild_dies_with_a_worker_whose_task_timed_out() {
    let mut host = HostChild::start();
    let file = PidFile::new("timeout");
    let par = parallel(&[("backend", "processes"), ("n_jobs", "2"), ("timeout", "1")]).unwrap();
    submit_what(&par, &file, HANG);
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::Timeout, "{}", err.message);
    let grandchild = file.grandchild();
    assert!(
        grandchild.is_gone_soon(),
        "the timed-out task's grandchild {} still runs",
        grandchild.pid
    );
    host.assert_alive("after the call");
    drop(par);
    host.assert_alive("after pj_parallel_free");
}

#[test]
fn a_grandchild_dies_with_a_worker_killed_by_a_cancel() {
    let mut host = HostChild::start();
    let file = PidFile::new("cancel");
    let par = Arc::new(parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap());
    submit_what(&par, &file, HANG);
    let canceller = {
        let par = Arc::clone(&par);
        let path = file.path.clone();
        std::thread::spawn(move || {
            // Once the grandchild exists (bounded), the task is running.
            let deadline = Instant::now() + BOUND;
            while !path.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(pj_parallel_cancel(par.0), pj_status::Ok);
        })
    };
    let err = par.collect().unwrap_err();
    canceller.join().unwrap();
    assert_eq!(err.status, pj_status::Cancelled, "{}", err.message);
    let grandchild = file.grandchild();
    assert!(
        grandchild.is_gone_soon(),
        "the cancelled task's grandchild {} still runs",
        grandchild.pid
    );
    host.assert_alive("after the call");
    drop(par);
    host.assert_alive("after pj_parallel_free");
}

#[test]
fn a_grandchild_dies_with_a_worker_killed_because_a_sibling_failed() {
    let mut host = HostChild::start();
    let file = PidFile::new("fail-fast");
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("batch_size", "1"),
    ])
    .unwrap();
    submit_what(&par, &file, HANG);
    submit_what(&par, &file, FAIL);
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::TaskFailed, "{}", err.message);
    assert_eq!(err.task_index, 1, "{}", err.message);
    let grandchild = file.grandchild();
    assert!(
        grandchild.is_gone_soon(),
        "the hanging task's grandchild {} still runs after its sibling failed",
        grandchild.pid
    );
    host.assert_alive("after the call");
    drop(par);
    host.assert_alive("after pj_parallel_free");
}

#[test]
fn a_grandchild_left_behind_by_a_kept_worker_dies_at_free() {
    let mut host = HostChild::start();
    let file = PidFile::new("free");
    let par = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("keep_workers", "true"),
    ])
    .unwrap();
    submit_what(&par, &file, RETURN);
    assert_eq!(par.collect().unwrap(), vec![vec![1u8]]);
    let grandchild = file.grandchild();
    // The worker is kept, and so is what its task left running, until the free.
    assert!(
        grandchild.alive(),
        "the kept worker's grandchild died early"
    );
    host.assert_alive("after the call");
    drop(par);
    assert!(
        grandchild.is_gone_soon(),
        "the kept worker's grandchild {} outlived pj_parallel_free",
        grandchild.pid
    );
    host.assert_alive("after pj_parallel_free");
}

#[test]
fn a_grandchild_left_behind_dies_with_its_worker_at_the_end_of_the_call() {
    let mut host = HostChild::start();
    let file = PidFile::new("end-of-call");
    let par = parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    submit_what(&par, &file, RETURN);
    assert_eq!(par.collect().unwrap(), vec![vec![1u8]]);
    let grandchild = file.grandchild();
    assert!(
        grandchild.is_gone_soon(),
        "the grandchild {} outlived its worker, retired at the end of the call",
        grandchild.pid
    );
    host.assert_alive("after the call");
    drop(par);
    host.assert_alive("after pj_parallel_free");
}

/// Task: starts a process pool of its own whose one task starts the grandchild and hangs (so the
/// grandchild's parent is an inner worker), waits for its pid file, then crashes without freeing
/// that pool.
unsafe extern "C" fn nested_task(
    userdata: *mut c_void,
    _: *const u8,
    _: usize,
    _: *mut TaskOutput,
) -> i32 {
    let Ok(inner) = parallel(&[
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("batch_size", "1"),
    ]) else {
        return 11;
    };
    if inner
        .submit(Some(grandchild_task), userdata, &HANG.to_ne_bytes())
        .is_err()
    {
        return 12;
    }
    // SAFETY: the test passes a live CString as userdata (a copy in this forked worker).
    let path = unsafe { std::ffi::CStr::from_ptr(userdata as *const libc::c_char) };
    let path = Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let deadline = Instant::now() + BOUND;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::abort()
}

#[test]
fn a_grandchild_of_a_nested_pools_worker_dies_with_the_outer_worker() {
    let mut host = HostChild::start();
    let file = PidFile::new("nested");
    let par = parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    par.submit(Some(nested_task), file.userdata(), &[]).unwrap();
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::WorkerDied, "{}", err.message);
    let grandchild = file.grandchild();
    assert!(
        grandchild.is_gone_soon(),
        "the nested pool's grandchild {} outlived the outer worker",
        grandchild.pid
    );
    host.assert_alive("after the call");
    drop(par);
    host.assert_alive("after pj_parallel_free");
}

/// Task: reads one byte from its standard input; the result is the errno of a failed read, or 0.
unsafe extern "C" fn read_stdin(
    _: *mut c_void,
    _: *const u8,
    _: usize,
    out: *mut TaskOutput,
) -> i32 {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into a local.
    let read = unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) };
    let errno = if read < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    };
    pj_out_set(out, errno.to_ne_bytes().as_ptr(), 4);
    0
}

/// Set for the copy of this test binary that `script` runs on a pseudo-terminal.
const TERMINAL_CASE: &str = "PJ_PROCESS_GROUPS_TERMINAL_CASE";

/// On a terminal (run by the test below): a worker is outside the terminal's foreground group, so
/// a task reading the terminal gets EIO rather than being stopped by SIGTTIN (which would hang
/// the call).
#[test]
#[ignore = "run on a pseudo-terminal by a_task_reading_the_terminal_gets_eio_instead_of_stopping"]
fn terminal_child_case() {
    if std::env::var_os(TERMINAL_CASE).is_none() {
        return;
    }
    // SAFETY: isatty only reads the descriptor's state.
    assert_eq!(unsafe { libc::isatty(0) }, 1, "stdin is the terminal");
    let par = parallel(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    par.submit(Some(read_stdin), std::ptr::null_mut(), &[])
        .unwrap();
    let results = par.collect().unwrap();
    let errno = i32::from_ne_bytes(results[0][..4].try_into().unwrap());
    println!("TASK READ ERRNO {errno}");
}

#[test]
fn a_task_reading_the_terminal_gets_eio_instead_of_stopping() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let command = format!(
        "{TERMINAL_CASE}=1 {} --exact terminal_child_case --ignored --nocapture --test-threads=1",
        exe.display()
    );
    let mut script = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BOUND;
    while script.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = script.kill();
            let _ = script.wait();
            panic!("the call whose task reads the terminal hung (a stopped worker?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut script.stdout.take().unwrap(), &mut text).unwrap();
    assert!(
        text.contains(&format!("TASK READ ERRNO {}", libc::EIO)),
        "{text}"
    );
}
