//! The `spawn` start method: worker processes started afresh from the caller's executable.
//!
//! A proxy forks and, in the child, immediately execs `/proc/self/exe` with the caller's arguments
//! and environment plus `PJ_WORKER_*` variables naming the socket, the shared page, the parent,
//! the slot and the nesting level. The program runs its `main` from the start, registers its task
//! functions, and calls `pj_worker_main_if_requested`, which finds the variables and turns the
//! process into a worker ([`worker_main_if_requested`]). Before any batch, the parent and the
//! worker compare their registries' fingerprints ([`handshake`]): a worker whose program registered
//! other functions, or none, is refused with a message naming both lists.
//!
//! Between fork and exec the child only calls async-signal-safe functions (setpgid, signal, fcntl,
//! execve, _exit):
//! every string it needs was built before the fork.
//!
//! Hand-written on libc, not rustix: `fork` (no crate offers it safely in a multi-threaded
//! process), `execve` and `_exit` (rustix has them only in its unstable `runtime` module). The
//! fcntl between fork and exec is rustix's, a raw system call that allocates nothing.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::io::{FdFlags, fcntl_setfd};
use rustix::process::Pid;

use super::child::{is_running, kill_and_reap, lead_own_group, try_reap};
use super::page::SharedRunning;
use super::worker::{leave, serve, tie_to_parent};
use crate::backend::wire::{LIVENESS_PERIOD_MS, recv_frame, send_frame};
use crate::task::Death;

/// The environment variables that make a process a worker.
const FD_VAR: &str = "PJ_WORKER_FD";
const PAGE_VAR: &str = "PJ_WORKER_PAGE_FD";
const PARENT_VAR: &str = "PJ_WORKER_PARENT";
const SLOT_VAR: &str = "PJ_WORKER_SLOT";
const LEVEL_VAR: &str = "PJ_WORKER_LEVEL";

/// How long a spawned worker may take to reach `pj_worker_main_if_requested` (documented with
/// start_method in the header).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

/// What a spawned worker needs to know, passed through its environment.
#[derive(Debug, Clone, Copy)]
pub struct WorkerIds<'a> {
    /// The worker's end of the socket pair.
    pub socket: BorrowedFd<'a>,
    /// The memfd of the shared page.
    pub page: BorrowedFd<'a>,
    /// The caller's pid (the worker checks it is still its parent).
    pub parent: Pid,
    /// The worker's slot in the pool.
    pub slot: usize,
    /// The nesting level its tasks run at.
    pub level: usize,
}

/// The executable, arguments and environment a spawned worker starts with, prepared once per
/// pool (the caller's, as they are when the pool is created).
#[derive(Debug)]
pub struct SpawnPlan {
    exe: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

impl SpawnPlan {
    /// The caller's command line and environment, without any `PJ_WORKER_*` variable.
    pub fn new() -> io::Result<Self> {
        let to_c = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| io::Error::other("a NUL byte in the command line"))
        };
        let argv = std::env::args_os()
            .map(|a| to_c(a.into_vec()))
            .collect::<io::Result<Vec<_>>>()?;
        let env = std::env::vars_os()
            .filter(|(k, _)| !k.to_string_lossy().starts_with("PJ_WORKER_"))
            .map(|(k, v)| {
                let mut pair: OsString = k;
                pair.push("=");
                pair.push(v);
                to_c(pair.into_vec())
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(SpawnPlan {
            exe: c"/proc/self/exe".to_owned(),
            argv,
            env,
        })
    }

    /// Starts a worker: fork, then exec the executable in the child. Returns the child's pid.
    pub fn start(&self, ids: &WorkerIds<'_>) -> io::Result<Pid> {
        let vars = [
            (FD_VAR, ids.socket.as_raw_fd().to_string()),
            (PAGE_VAR, ids.page.as_raw_fd().to_string()),
            (PARENT_VAR, ids.parent.as_raw_pid().to_string()),
            (SLOT_VAR, ids.slot.to_string()),
            (LEVEL_VAR, ids.level.to_string()),
        ];
        let mut env: Vec<CString> = self.env.clone();
        for (key, value) in vars {
            env.push(CString::new(format!("{key}={value}")).map_err(io::Error::other)?);
        }
        let argv: Vec<*const libc::c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const libc::c_char> = env
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        // SAFETY: fork has no memory-safety preconditions; the child only runs async-signal-safe
        // calls on memory prepared above, then execs or _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        let Some(pid) = Pid::from_raw(pid) else {
            // In the child: its own process group first (kept across exec).
            lead_own_group();
            // Keep the two descriptors across exec (clear close-on-exec); a failure
            // shows as the worker's failure to answer the handshake.
            let _ = fcntl_setfd(ids.socket, FdFlags::empty());
            let _ = fcntl_setfd(ids.page, FdFlags::empty());
            // SAFETY: replaces the process image with pointers to NUL-terminated strings and
            // NULL-terminated arrays built before the fork.
            unsafe { libc::execve(self.exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            // On failure leave at once.
            leave(127);
        };
        Ok(pid)
    }
}

/// In the parent: checks that the worker `pid` on `socket` registered the same functions, in the
/// same order. Fails if it differs, exits first, does not answer within [`HANDSHAKE_LIMIT`], or
/// `give_up` says yes first (its call ended); on failure the worker is gone (killed if needed, and
/// reaped).
pub fn handshake(socket: BorrowedFd<'_>, pid: Pid, give_up: &dyn Fn() -> bool) -> io::Result<()> {
    let started = Instant::now();
    let deadline = started + HANDSHAKE_LIMIT;
    let alive = || Instant::now() < deadline && !give_up() && is_running(pid);
    let theirs = match ask_registry(socket, &alive) {
        Ok(None) => return Ok(()),
        Ok(Some(theirs)) => theirs,
        Err(()) if give_up() => {
            // Our own child, not yet reaped; its call ended while it started.
            kill_and_reap(pid);
            return Err(super::forkserver::gave_up());
        }
        Err(()) => return Err(not_answered(pid, started.elapsed())),
    };
    // Our own child, not yet reaped.
    kill_and_reap(pid);
    Err(io::Error::other(format!(
        "the spawned worker registered other task functions than the caller: caller [{}], \
         worker [{}]",
        crate::registry::names().join(", "),
        theirs.replace('\n', ", ")
    )))
}

/// The caller's half of the registry handshake (spawned and fork server workers): sends the
/// registry's fingerprint and reads the worker's verdict while `alive` holds. `Ok(None)`: the
/// worker's registry matches; `Ok(Some(names))`: it differs, and these are the worker's names
/// (one a line); `Err`: no answer (the stream ended, broke, or `alive` turned false).
pub(super) fn ask_registry(
    socket: BorrowedFd<'_>,
    alive: &dyn Fn() -> bool,
) -> Result<Option<String>, ()> {
    let fingerprint = crate::registry::fingerprint();
    let mut frame = fingerprint.to_ne_bytes().to_vec();
    frame.extend_from_slice(crate::registry::names().join("\n").as_bytes());
    let mut reply = Vec::new();
    let answered = send_frame(socket, &frame)
        .and_then(|()| recv_frame(socket, &mut reply, LIVENESS_PERIOD_MS, alive));
    if !matches!(answered, Ok(true)) {
        return Err(());
    }
    if reply.first() == Some(&1) {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(reply.get(1..).unwrap_or_default()).into_owned(),
    ))
}

/// Why the worker `pid` did not answer the handshake: it ended (reaped here, with how), or it is
/// still running past the limit (killed and reaped here).
fn not_answered(pid: Pid, waited: Duration) -> io::Error {
    const ENTRY: &str = "a program using start_method \"spawn\" must call \
        pj_worker_main_if_requested(argc, argv) at the start of main, after its pj_register calls";
    // The stream ended or the liveness check failed. A child that is exiting closes its socket
    // before it becomes a zombie: before the limit, give it a moment to show its status.
    let mut ended = try_reap(pid);
    let settle = Instant::now() + Duration::from_secs(1);
    while ended.is_none() && waited < HANDSHAKE_LIMIT && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(5));
        ended = try_reap(pid);
    }
    let how = match ended {
        Some(Death::Exited(127)) => {
            return io::Error::other(format!(
                "the spawned worker (pid {pid}) could not start: executing /proc/self/exe failed \
                 (exit status 127)"
            ));
        }
        Some(Death::Exited(code)) => format!("exited with status {code}"),
        Some(Death::Signal(signal)) => {
            format!("was killed by {}", crate::error::signal_name(signal))
        }
        Some(Death::Unknown | Death::Silent(_)) => "ended (status unknown)".to_owned(),
        None => {
            // Our own child, still running (not reaped).
            kill_and_reap(pid);
            if waited < HANDSHAKE_LIMIT {
                return io::Error::other(format!(
                    "the spawned worker (pid {pid}) closed its connection without answering pj's \
                     handshake, so it was killed: {ENTRY}"
                ));
            }
            return io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the spawned worker (pid {pid}) is running but did not answer pj's \
                     handshake within {} s (waited {:.1} s), so it was killed: {ENTRY}; it never \
                     called it, or its start-up before the call takes longer than that",
                    HANDSHAKE_LIMIT.as_secs(),
                    waited.as_secs_f64()
                ),
            );
        }
    };
    io::Error::other(format!(
        "the spawned worker (pid {pid}) {how} after {:.1} s, before answering pj's handshake: \
         {ENTRY}; a program that calls it ended for another reason before reaching it",
        waited.as_secs_f64()
    ))
}

/// Whether this process was started as a spawned worker (and has not become one yet).
pub fn is_spawned_worker() -> bool {
    std::env::var_os(FD_VAR).is_some()
}

fn var<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::env::var(key).ok()?.parse().ok()
}

/// Set once [`worker_main_if_requested`] has returned in this process: the program calls it, so a
/// fresh run of its executable can serve as its worker (see [`can_spawn_itself`]).
static SPAWNABLE: AtomicBool = AtomicBool::new(false);

/// Whether this program called `pj_worker_main_if_requested` (and is not a worker): then a copy of
/// it spawned with the `PJ_WORKER_*` variables turns into a worker. An MPI worker rank runs its
/// batches in such a copy instead of a forked child (a Go program cannot run in a forked child).
pub fn can_spawn_itself() -> bool {
    SPAWNABLE.load(Ordering::Acquire)
}

/// Turns this process into a worker if it was started as one; otherwise returns at once.
/// Never returns in a worker: it serves batches until its parent closes the stream, then exits.
pub fn worker_main_if_requested() {
    let (Some(socket), Some(page), Some(parent), Some(slot), Some(level)) = (
        var::<RawFd>(FD_VAR),
        var::<RawFd>(PAGE_VAR),
        var::<i32>(PARENT_VAR),
        var::<usize>(SLOT_VAR),
        var::<usize>(LEVEL_VAR),
    ) else {
        SPAWNABLE.store(true, Ordering::Release);
        return;
    };
    for key in [FD_VAR, PAGE_VAR, PARENT_VAR, SLOT_VAR, LEVEL_VAR] {
        // SAFETY: a spawned worker is at the start of its main, before it starts threads; the
        // variables must not reach the processes its tasks start.
        unsafe { std::env::remove_var(key) };
    }
    // Not a pid (0 or negative): as with any other pid that is not our parent.
    let Some(parent) = (parent > 0).then_some(parent).and_then(Pid::from_raw) else {
        leave(1)
    };
    tie_to_parent(parent);
    if socket < 0 || page < 0 {
        // Not descriptors (the parent passes open ones): as with a page that cannot be mapped.
        leave(6)
    }
    // SAFETY: the parent passed the socket and its memfd at these numbers (checked not to be
    // negative above); this process owns them from here on.
    let (socket, page) = unsafe { (OwnedFd::from_raw_fd(socket), OwnedFd::from_raw_fd(page)) };
    // Close-on-exec again for the two inherited descriptors (a failure only lets a program the
    // tasks start inherit them).
    let _ = fcntl_setfd(&socket, FdFlags::CLOEXEC);
    let _ = fcntl_setfd(&page, FdFlags::CLOEXEC);
    let Ok(running) = SharedRunning::from_fd(page) else {
        leave(6)
    };
    crate::backend::crash::prepare();
    running.crash().record_modules();
    crate::backend::crash::install(running.crash());
    handshake_and_serve(socket.as_fd(), &running, slot, level)
}

/// The rest of a spawned or fork server's worker: answers the registry handshake, serves batches,
/// and ends the process. Never returns, not even by unwinding: a spawned worker's caller is the
/// program's `main` (through `pj_worker_main_if_requested`, which would otherwise return into it
/// and run the program a second time), and a fork server's worker is a copy of the server's code.
/// A panic here ends the worker with status 3; its caller reports it as a worker that died.
pub(super) fn handshake_and_serve(
    socket: BorrowedFd<'_>,
    running: &SharedRunning,
    slot: usize,
    level: usize,
) -> ! {
    let served = catch_unwind(AssertUnwindSafe(|| {
        // A worker that cannot start does not answer the handshake.
        let started = match crate::failpoint::hit(crate::failpoint::Stage::WorkerStart) {
            Some(_) => Err(()),
            None => answer_handshake(socket),
        };
        match started {
            Ok(()) => {
                let functions = crate::registry::functions();
                serve(socket, running, slot, level, Some(&functions))
            }
            Err(()) => 2,
        }
    }));
    // A worker leaves through _exit: the program's atexit handlers are the caller's.
    leave(served.unwrap_or(3))
}

/// In a spawned (or fork server's) worker: receives the caller's registry fingerprint and says
/// whether ours matches.
pub(super) fn answer_handshake(socket: BorrowedFd<'_>) -> Result<(), ()> {
    let mut frame = Vec::new();
    if !recv_frame(socket, &mut frame, LIVENESS_PERIOD_MS, &|| true).unwrap_or(false) {
        return Err(());
    }
    let theirs = frame
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes);
    let matches = theirs == Some(crate::registry::fingerprint());
    let mut reply = vec![u8::from(matches)];
    if !matches {
        reply.extend_from_slice(crate::registry::names().join("\n").as_bytes());
    }
    send_frame(socket, &reply).map_err(|_| ())?;
    if matches { Ok(()) } else { Err(()) }
}
