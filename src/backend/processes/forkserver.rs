//! The `forkserver` start method: workers are forks of a small server process, itself a fork of
//! the caller made once, early (at the first `Parallel::new` with this start method, or at
//! `pj_forkserver_start`). Starting a worker then costs the same whatever memory the caller has
//! grown to since: the kernel copies the server's page tables, not the caller's.
//!
//! One server per process, started once and reused by every executor (as Python's). Workers see
//! memory as of the server's fork: tasks name registered functions (checked against the server's
//! registry by the same handshake as spawned workers) and take no userdata.
//!
//! Protocol, on a unix stream socket between the caller and the server, one request at a time
//! (under pj's fork lock): the caller sends "fork a worker" (its slot and nesting level) with the
//! worker's end of a fresh socket pair and the memfd of its shared page attached; the server
//! forks, and answers the worker's pid with two descriptors: a pidfd (signals reach that very
//! process, never a reused pid) and the read end of a status socket. The server is the workers'
//! parent: it polls their pidfds, reaps each one that ends and writes its [`Death`] on that
//! worker's status socket, so a crash report still says "killed by signal 9"
//! ([`super::child::Child`] reads it). A caller that stops waiting for an answer (its call was
//! cancelled, or failed meanwhile) leaves the server running: the answer it owes is read, and
//! the worker it started is killed, before the next request (`Server::owed`); only a server that
//! does not answer within the limit is replaced (with every worker it serves).
//!
//! Lifetime. The server is forked by a thread pj starts for that purpose, which lives as long as the
//! process: the server's PR_SET_PDEATHSIG (which fires when the forking *thread* ends) therefore
//! fires when the caller's process ends, and the end of its socket stream tells the same. Its
//! workers are tied to the server likewise (and to their proxies by their socket), so nothing
//! outlives the caller. The server ignores SIGINT, as workers do. A server that died (killed from
//! outside) is reaped and replaced at the next worker start.
//!
//! Fork safety. The server is forked under pj's fork lock, like any worker, and closes every
//! descriptor it inherited but stdin, stdout and stderr (it outlives anything the caller opens, so
//! it must not hold the caller's pipes or sockets open); so do its workers. It is single-threaded,
//! so its own forks are plain. A forked copy of the
//! caller (a fork worker, or the host's own `fork()`) inherits the record of the server but not
//! the server's thread: the record names the process that started it, and a copy starts its own.
//!
//! Hand-written on libc: `fork` (as in `start`).

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::retry_on_intr;
use rustix::process::{Pid, PidfdFlags, getpid, pidfd_open};

use super::child::{
    Child, Served, encode_death, is_running, kill_and_reap, lead_own_group, reap, try_reap,
};
use super::fds;
use super::page::SharedRunning;
use super::spawn::{ask_registry, handshake_and_serve};
use super::worker::{leave, tie_server_to_host, tie_to_parent};
use crate::backend::crash;
use crate::backend::wire::{LIVENESS_PERIOD_MS, recv_parts, send_parts};
use crate::fork::{FORK_LOCK, ResetLockGuard};
use crate::task::Death;

/// How long the server may take to answer a request (it forks a small process: milliseconds).
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// The caller's record of its server.
struct Server {
    pid: Pid,
    control: OwnedFd,
    /// Answers the server still owes to requests whose caller stopped waiting (its call was
    /// cancelled or failed meanwhile): read, and their workers killed, before the next request,
    /// so that the stream stays in step without killing the server and every worker it serves.
    owed: std::cell::Cell<usize>,
}

/// The thread that forks servers, and the process it lives in.
struct Forker {
    owner: Pid,
    requests: mpsc::Sender<(OwnedFd, mpsc::Sender<io::Result<Pid>>)>,
}

#[derive(Default)]
struct State {
    /// The server and the process that started it.
    server: Option<(Pid, Server)>,
    forker: Option<Forker>,
}

/// [`State`], only touched with [`FORK_LOCK`] held (which a fork's child handler resets, so a
/// forked copy never finds it locked).
struct Slot(UnsafeCell<Option<State>>);

// SAFETY: the cell is only accessed through `state`, which requires the fork lock's guard.
unsafe impl Sync for Slot {}

static SLOT: Slot = Slot(UnsafeCell::new(None));

/// The state, for as long as the fork lock is held (`&mut` of the guard: one borrow at a time).
fn state<'a>(_held: &'a mut ResetLockGuard<'_>) -> &'a mut State {
    // SAFETY: every access goes through here with FORK_LOCK held, and the exclusive borrow of the
    // guard makes this the only reference for its lifetime.
    unsafe { (*SLOT.0.get()).get_or_insert_with(State::default) }
}

/// Starts this process's fork server if it has none running: `start_method=forkserver` executors
/// call it when they are created, so that the server is a copy of the caller as it is then.
pub fn ensure_started() -> io::Result<()> {
    let mut held = FORK_LOCK.lock();
    server(&mut held).map(|_| ())
}

/// The running server of this process, started (or restarted) if needed.
fn server<'a>(held: &'a mut ResetLockGuard<'_>) -> io::Result<&'a Server> {
    let me = getpid();
    let state = state(held);
    if let Some((owner, server)) = state.server.take() {
        if owner != me {
            // Inherited through a fork: the server is our parent's child and its socket may
            // already be closed here (a fork worker closes pj's sockets): leave the number alone.
            std::mem::forget(server.control);
        } else if try_reap(server.pid).is_none() {
            state.server = Some((owner, server));
        } else {
            fds::forget(server.control.as_raw_fd());
        }
    }
    if state.server.is_none() {
        let server = start(state, me)?;
        state.server = Some((me, server));
    }
    match &state.server {
        Some((_, server)) => Ok(server),
        None => unreachable!("started above"),
    }
}

/// Forks a new server from the forker thread (started first if this process has none).
fn start(state: &mut State, me: Pid) -> io::Result<Server> {
    if state.forker.as_ref().is_none_or(|f| f.owner != me) {
        if let Some(inherited) = state.forker.take() {
            // Its thread did not survive the fork; the channel is only memory.
            std::mem::forget(inherited);
        }
        let (requests, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("pj-forkserver".into())
            // The server's workers run their tasks on a copy of this thread's stack.
            .stack_size(crate::config::default_stack_size())
            .spawn(move || forker(inbox))?;
        state.forker = Some(Forker {
            owner: me,
            requests,
        });
    }
    let Some(forker) = &state.forker else {
        unreachable!("set above")
    };
    // Once per process, before the first fork: the workers' crash-handler stack.
    crash::prepare();
    crate::fork::register_handlers();
    let (control, server_end) = UnixStream::pair()?;
    let (control, server_end): (OwnedFd, OwnedFd) = (control.into(), server_end.into());
    // The server closes every recorded pj socket but its own end, so also our end of this one.
    fds::remember(control.as_raw_fd());
    fds::remember(server_end.as_raw_fd());
    let (reply, answer) = mpsc::channel();
    let forked = forker
        .requests
        .send((server_end, reply))
        .map_err(|_| io::Error::other("the fork server's thread is gone"))
        .and_then(|()| {
            answer
                .recv()
                .map_err(|_| io::Error::other("the fork server's thread is gone"))?
        });
    match forked {
        Ok(pid) => Ok(Server {
            pid,
            control,
            owed: std::cell::Cell::new(0),
        }),
        Err(error) => {
            fds::forget(control.as_raw_fd());
            Err(error)
        }
    }
}

/// The forker thread: forks a server per request, then waits for the next one. It lives as long
/// as the process, so the servers' parent-death signal fires only when the process ends.
fn forker(inbox: mpsc::Receiver<(OwnedFd, mpsc::Sender<io::Result<Pid>>)>) {
    for (server_end, reply) in inbox {
        let host = getpid();
        // SAFETY: fork has no memory-safety preconditions; the child runs the server loop and
        // leaves through _exit, never returning into the parent's code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            server_main(server_end, host);
        }
        fds::forget(server_end.as_raw_fd());
        drop(server_end);
        let forked = Pid::from_raw(pid).ok_or_else(io::Error::last_os_error);
        let _ = reply.send(forked);
    }
}

/// What the caller needs of a worker the server started.
pub(super) struct Started {
    pub(super) pid: Pid,
    pub(super) child: Child,
}

/// Asks the server (started if needed) for a worker on `socket` (the worker's end) sharing the
/// page behind `page`. With the fork lock held, `held`, as the socket's creation requires.
pub(super) fn fork_worker(
    held: &mut ResetLockGuard<'_>,
    socket: BorrowedFd<'_>,
    page: BorrowedFd<'_>,
    slot: usize,
    level: usize,
    give_up: &dyn Fn() -> bool,
) -> io::Result<Started> {
    match request(server(held)?, socket, page, slot, level, give_up) {
        Err(Failure::Broken(_)) => {
            // The server died, or its stream is out of step (it did not answer in time): it is
            // replaced (its workers die with it) and asked once more.
            discard_server(state(held));
            request(server(held)?, socket, page, slot, level, give_up).map_err(Failure::into_error)
        }
        answer => answer.map_err(Failure::into_error),
    }
}

/// Why a request failed.
enum Failure {
    /// The server answered that it could not fork (the stream stays usable).
    Refused(io::Error),
    /// No answer: the server is dead or out of step.
    Broken(io::Error),
    /// The caller gave up waiting (`give_up`); the server owes the answer (the stream stays
    /// usable: [`Server::owed`]).
    Abandoned(io::Error),
}

impl Failure {
    fn into_error(self) -> io::Error {
        match self {
            Failure::Refused(error) | Failure::Broken(error) | Failure::Abandoned(error) => error,
        }
    }
}

/// Kills (if need be) and reaps this process's server, and forgets it.
fn discard_server(state: &mut State) {
    if let Some((owner, server)) = state.server.take() {
        if owner == getpid() {
            // Our own child, not yet reaped (`server` reaps the dead ones it finds).
            kill_and_reap(server.pid);
            fds::forget(server.control.as_raw_fd());
        } else {
            std::mem::forget(server.control);
        }
    }
}

fn request(
    server: &Server,
    socket: BorrowedFd<'_>,
    page: BorrowedFd<'_>,
    slot: usize,
    level: usize,
    give_up: &dyn Fn() -> bool,
) -> Result<Started, Failure> {
    settle_owed(server, give_up)?;
    let mut frame = [0u8; 16];
    frame[..8].copy_from_slice(&(slot as u64).to_ne_bytes());
    frame[8..].copy_from_slice(&(level as u64).to_ne_bytes());
    let control = server.control.as_fd();
    send_parts(control, &frame, &[], &[socket, page]).map_err(Failure::Broken)?;
    let answered = answer(server, give_up);
    if matches!(answered, Err(Failure::Broken(_))) && give_up() {
        server.owed.set(server.owed.get() + 1);
        return Err(Failure::Abandoned(gave_up()));
    }
    answered
}

/// The error of a worker start the caller gave up (its call ended meanwhile).
pub(super) fn gave_up() -> io::Error {
    io::Error::new(
        io::ErrorKind::Interrupted,
        "the call ended while its worker started",
    )
}

/// Reads the answers owed to abandoned requests (see [`Server::owed`]) and kills the workers
/// they started (this caller may give up waiting for them too).
fn settle_owed(server: &Server, give_up: &dyn Fn() -> bool) -> Result<(), Failure> {
    while server.owed.get() > 0 {
        match answer(server, give_up) {
            Ok(started) => started.child.kill_and_reap(),
            Err(Failure::Refused(_)) => {}
            Err(Failure::Broken(_)) if give_up() => return Err(Failure::Abandoned(gave_up())),
            Err(broken) => return Err(broken),
        }
        server.owed.set(server.owed.get() - 1);
    }
    Ok(())
}

/// Reads the server's answer to a request, for at most [`ANSWER_LIMIT`] and while `give_up`
/// says no.
fn answer(server: &Server, give_up: &dyn Fn() -> bool) -> Result<Started, Failure> {
    let control = server.control.as_fd();
    let deadline = Instant::now() + ANSWER_LIMIT;
    let alive = || Instant::now() < deadline && !give_up() && is_running(server.pid);
    let (mut reply, mut fds) = (Vec::new(), Vec::new());
    match recv_parts(
        control,
        &mut reply,
        &mut Vec::new(),
        &mut fds,
        LIVENESS_PERIOD_MS,
        &alive,
    ) {
        Ok(true) => {}
        Ok(false) => {
            let closed = io::Error::other("the fork server closed its connection");
            return Err(Failure::Broken(closed));
        }
        Err(error) => return Err(Failure::Broken(error)),
    }
    let pid = reply
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .and_then(Pid::from_raw);
    match (pid, fds.pop(), fds.pop(), fds.is_empty()) {
        (Some(pid), Some(status), Some(pidfd), true) => Ok(Started {
            pid,
            child: Child::Served(Served::new(pidfd, status)),
        }),
        (Some(_), ..) => Err(Failure::Broken(io::Error::other(
            "the fork server sent a malformed answer",
        ))),
        (None, ..) => {
            let why = String::from_utf8_lossy(reply.get(4..).unwrap_or_default()).into_owned();
            Err(Failure::Refused(io::Error::other(format!(
                "the fork server could not start a worker: {why}"
            ))))
        }
    }
}

/// In the caller: checks that the server's worker `pid` knows the same task functions as this
/// process (the server's registry is the caller's as of its fork). On failure the worker is gone.
pub(super) fn handshake(
    socket: BorrowedFd<'_>,
    pid: Pid,
    child: &Child,
    give_up: &dyn Fn() -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + ANSWER_LIMIT;
    let alive = || Instant::now() < deadline && !give_up() && child.is_running();
    let answer = ask_registry(socket, &alive);
    if !matches!(answer, Ok(None)) {
        child.kill_and_reap();
    }
    if answer.is_err() && give_up() {
        return Err(gave_up());
    }
    match answer {
        Ok(None) => Ok(()),
        Ok(Some(theirs)) => Err(io::Error::other(format!(
            "the fork server's worker registered other task functions than the caller: caller \
             [{}], worker [{}]; the fork server is a copy of the caller as of its start, so \
             register every task function before the first executor with start_method \
             \"forkserver\" (or pj_forkserver_start)",
            crate::registry::names().join(", "),
            theirs.replace('\n', ", ")
        ))),
        Err(()) => {
            let how = match child.try_reap() {
                Some(Death::Signal(signal)) => {
                    format!("was killed by {}", crate::error::signal_name(signal))
                }
                Some(Death::Exited(code)) => format!("exited with status {code}"),
                _ => "did not answer".to_owned(),
            };
            Err(io::Error::other(format!(
                "the fork server's worker (pid {pid}) {how} before answering pj's handshake"
            )))
        }
    }
}

/// The server process: serves requests until the caller's stream ends. Never returns.
fn server_main(control: OwnedFd, host: Pid) -> ! {
    // The caller's end of this socket and of every worker socket: closed, so they see EOF.
    fds::close_all_except(control.as_raw_fd());
    // Every other descriptor of the caller's but stdin, stdout and stderr: the server lives as
    // long as the caller, and must not keep its pipes, sockets or files open.
    let keep = control.as_raw_fd() as libc::c_uint;
    for (first, last) in [(3, keep.saturating_sub(1)), (keep + 1, libc::c_uint::MAX)] {
        if first <= last {
            // SAFETY: close_range closes descriptors only; this single-threaded process owns them
            // all, and none but `control` is used again (their owners in the caller's copied
            // memory are never dropped here: the server leaves through _exit).
            unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        }
    }
    tie_server_to_host(host);
    let code = catch_unwind(AssertUnwindSafe(|| serve_requests(control.as_fd()))).unwrap_or(4);
    leave(code)
}

/// A worker as its server sees it.
struct Kid {
    pid: Pid,
    pidfd: OwnedFd,
    status: OwnedFd,
}

fn serve_requests(control: BorrowedFd<'_>) -> i32 {
    let mut kids: Vec<Kid> = Vec::new();
    let (mut frame, mut received) = (Vec::new(), Vec::new());
    let mut ready = Vec::new();
    loop {
        ready.clear();
        let control_ready = {
            let mut polls = Vec::with_capacity(kids.len() + 1);
            polls.push(PollFd::new(&control, PollFlags::IN));
            polls.extend(kids.iter().map(|k| PollFd::new(&k.pidfd, PollFlags::IN)));
            if retry_on_intr(|| poll(&mut polls, None)).is_err() {
                continue;
            }
            ready.extend(
                polls[1..]
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.revents().is_empty())
                    .map(|(i, _)| i),
            );
            !polls[0].revents().is_empty()
        };
        // Ended workers: reaped, and their death told to the caller (from the last, so the
        // indices stay valid).
        for &i in ready.iter().rev() {
            let kid = kids.swap_remove(i);
            let death = reap(kid.pid);
            let _ = rustix::net::send(
                &kid.status,
                &encode_death(death),
                rustix::net::SendFlags::NOSIGNAL,
            );
        }
        if !control_ready {
            continue;
        }
        received.clear();
        match recv_parts(
            control,
            &mut frame,
            &mut Vec::new(),
            &mut received,
            LIVENESS_PERIOD_MS,
            &|| true,
        ) {
            Ok(true) => {}
            // The caller is gone: so are we (the workers follow, PR_SET_PDEATHSIG).
            _ => break,
        }
        let answer = fork_one(control, &frame, &mut received, &kids);
        let sent = match answer {
            Ok((kid, status)) => {
                let pid = kid.pid.as_raw_pid().to_ne_bytes();
                let sent = send_parts(control, &pid, &[], &[kid.pidfd.as_fd(), status.as_fd()]);
                kids.push(kid);
                sent
            }
            Err(error) => {
                let mut reply = 0i32.to_ne_bytes().to_vec();
                reply.extend_from_slice(error.to_string().as_bytes());
                send_parts(control, &reply, &[], &[])
            }
        };
        if sent.is_err() {
            break;
        }
    }
    for kid in &kids {
        kill_and_reap(kid.pid);
    }
    0
}

/// Forks the worker a request asks for; its pid and pidfd, and the caller's end of its status
/// socket.
fn fork_one(
    control: BorrowedFd<'_>,
    frame: &[u8],
    received: &mut Vec<OwnedFd>,
    kids: &[Kid],
) -> io::Result<(Kid, OwnedFd)> {
    let word = |at: usize| {
        frame
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
            .and_then(|w| usize::try_from(w).ok())
    };
    let (Some(slot), Some(level), 2) = (word(0), word(8), received.len()) else {
        return Err(io::Error::other("a malformed request"));
    };
    let page = received.pop().expect("two descriptors");
    let socket = received.pop().expect("two descriptors");
    // The caller reads the worker's death from `theirs`; the server writes it on `ours`.
    let (theirs, ours) = UnixStream::pair()?;
    let (theirs, ours): (OwnedFd, OwnedFd) = (theirs.into(), ours.into());
    let me = getpid();
    // SAFETY: fork has no memory-safety preconditions; this process has a single thread, and the
    // child runs the worker and leaves through _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The server's descriptors are not the worker's.
        let mut close: Vec<RawFd> = vec![control.as_raw_fd(), theirs.as_raw_fd(), ours.as_raw_fd()];
        close.extend(
            kids.iter()
                .flat_map(|k| [k.pidfd.as_raw_fd(), k.status.as_raw_fd()]),
        );
        for fd in close {
            // SAFETY: closing descriptors of the server's that this process never uses again
            // (their owners are never dropped here: the worker leaves through _exit).
            unsafe { libc::close(fd) };
        }
        served_worker(socket, page, me, slot, level);
    }
    let pid = Pid::from_raw(pid).ok_or_else(io::Error::last_os_error)?;
    drop((socket, page));
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => Ok((
            Kid {
                pid,
                pidfd,
                status: ours,
            },
            theirs,
        )),
        Err(error) => {
            // Our own child, not yet reaped.
            kill_and_reap(pid);
            Err(error.into())
        }
    }
}

/// A worker forked by the server: ties itself to the server, maps the page it shares with its
/// proxy, answers the registry handshake and serves batches. Never returns.
fn served_worker(socket: OwnedFd, page: OwnedFd, server: Pid, slot: usize, level: usize) -> ! {
    // First, before anything a task may start: the worker's own process group, which the server
    // kills when it reaps the worker (`child::reap`), as the caller does for its own children.
    lead_own_group();
    tie_to_parent(server);
    let Ok(running) = SharedRunning::from_fd(page) else {
        leave(6)
    };
    crash::install(running.crash());
    handshake_and_serve(socket.as_fd(), &running, slot, level)
}
