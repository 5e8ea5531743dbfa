//! Our worker children's lives, as the parent sees them: waiting for one (blocking or polling),
//! checking that one still runs without reaping it, and stopping one whose task overran. Every
//! function acts on one specific child of ours (never "any child"), and every wait for or signal
//! to a worker goes through here. The calls are rustix's typed ones: `waitpid` takes
//! [`WaitOptions`], which has no NOWAIT (Linux refuses WNOHANG|WNOWAIT with waitpid), and the
//! non-reaping check is `waitid` with [`WaitIdOptions::NOWAIT`]. `signal` (ignoring SIGTTIN and
//! SIGTTOU in a new worker) stays on libc: rustix sets signal actions only in its unstable
//! `runtime` module.
//!
//! Process groups. A task may start processes of its own (a `sleep 1000`, a shell pipeline); they
//! must not outlive its worker. Each worker leads a process group of its own
//! ([`lead_own_group`], its first step after fork, before exec for a spawned one), which the
//! processes its tasks start inherit, and every way a worker ends here also SIGKILLs that group:
//! a worker that crashed or exited ([`reap`], [`try_reap`]), one killed by fail-fast, cancel or a
//! garbled outcome ([`kill_and_reap`]), one whose task overran ([`terminate`], which sends its
//! SIGTERM to the group as well), and one retired at the end of a call or by `pj_parallel_free`
//! (the proxy's retire ends in [`reap`]). The group is killed before the worker is reaped: until
//! then the worker's pid, which is the group's id, cannot be reused, so the signal reaches that
//! group only. A child reaped elsewhere (the host ignores SIGCHLD) has its group left alone: its
//! pid may name someone else's group by then. [`signal_group`] never signals the caller's own
//! group or the caller itself.
//!
//! Why process groups. A group outlives its leader: it reaches a task's descendants after the
//! worker itself crashed, and after they were reparented (to init or a subreaper). A child
//! subreaper (PR_SET_CHILD_SUBREAPER on the worker) keeps orphaned descendants in the worker's
//! tree only while the worker lives, so a crashed worker's descendants would escape it, and
//! walking /proc for the tree races with forks; cgroups need a delegated hierarchy that an
//! ordinary process rarely has. What a group does not reach: a process that leaves it
//! (`setsid`, as a daemon does, or `setpgid`) is out of reach by design. The workers of a process
//! pool that a task starts stay in the outer worker's group (see [`lead_own_group`]).
//!
//! Like loky's `kill_process_tree` (SIGKILL to a worker's descendants, then the worker), which
//! loky applies whenever it kills workers (a broken pool, terminate, shutdown with kill_workers),
//! pj kills the group whenever a worker is killed. Unlike loky's graceful shutdown, which leaves
//! a task's background processes running, pj kills the group on a graceful end too (the end of a
//! call, or `pj_parallel_free` with kept workers), so that nothing a call started outlives
//! `pj_parallel_free`.
//!
//! The terminal. A worker's group is not the terminal's foreground group: the terminal's SIGINT,
//! SIGQUIT and SIGTSTP go to the host only (workers already ignored SIGINT: the parent decides,
//! see `handle_sigint`). A background process that reads the terminal would be stopped by
//! SIGTTIN (and one that writes it, with `stty tostop`, by SIGTTOU), which would hang its call:
//! workers ignore both, so such a read fails with EIO and the write goes through. The processes
//! tasks start inherit those ignored dispositions, as they inherit the ignored SIGINT.
//!
//! A forkserver (a start method whose workers are not the caller's children) calls
//! [`lead_own_group`] in each worker it forks, and [`kill_group`] from the process that reaps
//! them.
//!
//! A worker of the fork server (`start_method=forkserver`) is not our child but the server's:
//! [`Child`] hides the difference. We signal such a worker through its pidfd (never a reused pid)
//! and learn how it ended from the server, which reaps it and writes its [`Death`] on a socket
//! made for that worker alone (see `forkserver`); the server kills the worker's group before it
//! reaps it, as [`reap`] does for ours.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::retry_on_intr;
use rustix::net::{RecvFlags, recv};
use rustix::process::{
    Pid, Signal, WaitId, WaitIdOptions, WaitOptions, WaitStatus, getpgrp, getpid, kill_process,
    kill_process_group, pidfd_send_signal, setpgid, waitid, waitpid,
};

use crate::task::Death;

/// How long a timed-out worker may take to leave after SIGTERM before it gets SIGKILL.
pub(super) const TERM_GRACE: Duration = Duration::from_millis(100);

/// Whether this process is a pj worker (set by its first step, [`mark_as_worker`]).
static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// A worker's first step (forked or spawned): marks this process as a worker, so that the
/// workers of a process pool its tasks start stay in its group.
pub(in crate::backend) fn mark_as_worker() {
    IN_WORKER.store(true, Ordering::Relaxed);
}

/// In a new worker, its first step after fork (async-signal-safe: raw system calls and an atomic
/// load only): leads a process group of its own, which the processes its tasks start inherit, so
/// that [`kill_group`] reaches them; ignores SIGTTIN and SIGTTOU, so that touching the terminal
/// from outside its foreground group fails or goes through instead of stopping the worker.
///
/// A worker forked by a worker (a process pool started by a task) stays in its parent's group
/// instead: whatever ends the outer worker then kills the inner workers' tasks' descendants too
/// (an inner worker's own death leaves its tasks' descendants to the outer worker's end).
pub(in crate::backend) fn lead_own_group() {
    // Fails only for a session leader, which a forked child is not; the worker then stays in the
    // caller's group, and the group kills find no group of its pid (never the caller's group).
    if !IN_WORKER.load(Ordering::Relaxed) {
        let _ = setpgid(None, None);
    }
    for signal in [libc::SIGTTIN, libc::SIGTTOU] {
        // SAFETY: signal is async-signal-safe; ignoring these affects this process only.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// Whether `pgid` may be signalled as a group from here: not this process's own group, not this
/// process's pid, not pid 1 (init's), and never 0 (which `kill` reads as "my group").
fn may_signal_group(pgid: Pid) -> bool {
    pgid != getpgrp() && pgid != getpid() && pgid.as_raw_pid() > 1
}

/// Sends `signal` to the process group `pgid` unless [`may_signal_group`] refuses it; whether it
/// was sent (ESRCH: no such group, e.g. every member is gone).
pub(in crate::backend) fn signal_group(pgid: Pid, signal: Signal) -> bool {
    may_signal_group(pgid) && kill_process_group(pgid, signal).is_ok()
}

/// SIGKILLs the process group our child `pid` leads: the worker, if it still runs, and every
/// process its tasks started that stayed in the group. `pid` must be our child, not yet reaped
/// (a zombie is fine): then the group's id cannot have been reused. A forkserver calls it from the
/// process that reaps its workers.
pub(in crate::backend) fn kill_group(pid: Pid) {
    let _ = signal_group(pid, Signal::KILL);
}

/// Stops a worker whose task overran: SIGTERM to it and its group (they may clean up), SIGKILL
/// to both after [`TERM_GRACE`], then reaps it.
pub(super) fn terminate(pid: Pid) {
    // `pid` is our own child, not yet reaped, so it cannot have been reused. A failure means it
    // is gone already: the waits below notice.
    let _ = signal_group(pid, Signal::TERM);
    let _ = kill_process(pid, Signal::TERM);
    let deadline = std::time::Instant::now() + TERM_GRACE;
    while std::time::Instant::now() < deadline {
        if try_reap(pid).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // The child has not been reaped (the last poll found it running).
    kill_and_reap(pid);
}

/// SIGKILLs our child `pid` and its group, and reaps it (blocking until it is gone). `pid` must be
/// a child of ours that nobody has reaped yet, so that it cannot have been reused by another
/// process.
pub(in crate::backend) fn kill_and_reap(pid: Pid) {
    // Per the contract above the signals cannot reach another process; a failure means the child
    // is a zombie already, which the wait reaps (after killing its group again).
    kill_group(pid);
    let _ = kill_process(pid, Signal::KILL);
    let _ = reap(pid);
}

/// Waits (blocking) for our child `pid` to end, kills its group (what its tasks left running),
/// and reaps it. A child already reaped elsewhere (SIGCHLD ignored by the host) is
/// `Death::Unknown`, and its group is left alone.
pub(in crate::backend) fn reap(pid: Pid) -> Death {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    if let Ok(Some(_)) = retry_on_intr(|| waitid(WaitId::Pid(pid), options)) {
        // Ended, not reaped: its pid, the group's id, is still ours.
        kill_group(pid);
    }
    wait(pid, WaitOptions::empty()).unwrap_or(Death::Unknown)
}

/// Reaps our child `pid` if it has ended (`Some(death)`), after killing its group, without
/// blocking; `None` while it runs. A child already reaped elsewhere is `Some(Death::Unknown)`.
pub(in crate::backend) fn try_reap(pid: Pid) -> Option<Death> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match retry_on_intr(|| waitid(WaitId::Pid(pid), options)) {
        Ok(None) => return None,
        // Ended, not reaped: its pid, the group's id, is still ours.
        Ok(Some(_)) => kill_group(pid),
        // Reaped elsewhere: the wait below says so.
        Err(_) => {}
    }
    wait(pid, WaitOptions::NOHANG)
}

fn wait(pid: Pid, options: WaitOptions) -> Option<Death> {
    match retry_on_intr(|| waitpid(Some(pid), options)) {
        Ok(Some((_, status))) => Some(death_of(status)),
        // Only with NOHANG: the child runs.
        Ok(None) => None,
        Err(_) => Some(Death::Unknown),
    }
}

/// How a child that was waited for ended (without WUNTRACED or WCONTINUED, a status reports an
/// exit or a killing signal).
fn death_of(status: WaitStatus) -> Death {
    match (status.terminating_signal(), status.exit_status()) {
        (Some(signal), _) => Death::Signal(signal),
        (None, Some(code)) => Death::Exited(code),
        (None, None) => Death::Unknown,
    }
}

/// Whether our child `pid` is still running, without reaping it (the proxy reaps it afterwards to
/// learn how it died).
pub(in crate::backend) fn is_running(pid: Pid) -> bool {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    // `None`: the child has not changed state. An error (ECHILD: reaped elsewhere) is "not
    // running".
    matches!(
        retry_on_intr(|| waitid(WaitId::Pid(pid), options)),
        Ok(None)
    )
}

/// One worker process as the parent sees it: our own child (fork, spawn), or a child of the fork
/// server. Every wait for, or signal to, a worker of the proxies goes through it.
pub(super) enum Child {
    Own(Pid),
    Served(Served),
}

/// A worker of the fork server, from the parent's side.
pub(super) struct Served {
    /// Signals go through it: it names this very process even once the server has reaped it.
    pidfd: OwnedFd,
    /// The server writes the worker's [`Death`] here once it reaped it ([`encode_death`]), then
    /// closes it; the end of the stream without a status: the server itself is gone.
    status: OwnedFd,
    /// The death, once read.
    ended: Cell<Option<Death>>,
}

impl Served {
    pub(super) fn new(pidfd: OwnedFd, status: OwnedFd) -> Self {
        Served {
            pidfd,
            status,
            ended: Cell::new(None),
        }
    }

    /// How the worker ended, once the server said so; `None` while it runs. `wait`: block until
    /// it is known.
    fn death(&self, wait: bool) -> Option<Death> {
        if let Some(death) = self.ended.get() {
            return Some(death);
        }
        let mut fds = [PollFd::new(&self.status, PollFlags::IN)];
        let timeout = (!wait).then_some(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        match retry_on_intr(|| poll(&mut fds, timeout.as_ref())) {
            Ok(0) => return None,
            Ok(_) => {}
            // poll fails only for lack of memory: read, blocking.
            Err(_) if !wait => return None,
            Err(_) => {}
        }
        let mut bytes = [0u8; 5];
        let death = match retry_on_intr(|| recv(&self.status, &mut bytes, RecvFlags::WAITALL)) {
            Ok((5, _)) => decode_death(bytes),
            // The server went away without saying: the worker died with it (PR_SET_PDEATHSIG).
            _ => Death::Unknown,
        };
        self.ended.set(Some(death));
        Some(death)
    }
}

impl Child {
    fn signal(&self, signal: Signal) {
        // A failure means the process is gone already: the waits notice.
        let _ = match self {
            // Our own child, not yet reaped: its pid cannot have been reused.
            Child::Own(pid) => kill_process(*pid, signal),
            Child::Served(served) => pidfd_send_signal(&served.pidfd, signal),
        };
    }

    /// Whether the worker still runs (without reaping our own child).
    pub(super) fn is_running(&self) -> bool {
        match self {
            Child::Own(pid) => is_running(*pid),
            Child::Served(served) => served.death(false).is_none(),
        }
    }

    /// How the worker ended, if it has; `None` while it runs.
    pub(super) fn try_reap(&self) -> Option<Death> {
        match self {
            Child::Own(pid) => try_reap(*pid),
            Child::Served(served) => served.death(false),
        }
    }

    /// Waits (blocking) for the worker to end; how it did.
    pub(super) fn reap(&self) -> Death {
        match self {
            Child::Own(pid) => reap(*pid),
            Child::Served(served) => served.death(true).unwrap_or(Death::Unknown),
        }
    }

    /// SIGKILLs the worker and waits until it is gone.
    pub(super) fn kill_and_reap(&self) {
        self.signal(Signal::KILL);
        let _ = self.reap();
    }

    /// Stops a worker whose task overran: SIGTERM, SIGKILL after [`TERM_GRACE`], then waits
    /// until it is gone.
    pub(super) fn terminate(&self) {
        if let Child::Own(pid) = self {
            return terminate(*pid);
        }
        self.signal(Signal::TERM);
        let deadline = std::time::Instant::now() + TERM_GRACE;
        while std::time::Instant::now() < deadline {
            if self.try_reap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.kill_and_reap();
    }
}

/// A [`Death`] as the fork server sends it: a tag, then the signal or exit status.
pub(super) fn encode_death(death: Death) -> [u8; 5] {
    let (tag, value) = match death {
        Death::Signal(signal) => (1, signal),
        Death::Exited(code) => (2, code),
        Death::Unknown | Death::Silent(_) => (0, 0),
    };
    let mut bytes = [tag; 5];
    bytes[1..].copy_from_slice(&value.to_ne_bytes());
    bytes
}

fn decode_death(bytes: [u8; 5]) -> Death {
    let value = i32::from_ne_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    match bytes[0] {
        1 => Death::Signal(value),
        2 => Death::Exited(value),
        _ => Death::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    /// A child of this test process that sleeps until it is signalled (a `sleep` that never
    /// ends on its own).
    fn sleeper() -> Pid {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let pid = Pid::from_child(&child);
        // The Child handle is not waited on: this module's functions reap it.
        std::mem::forget(child);
        pid
    }

    #[test]
    fn a_running_child_is_seen_running_and_not_reaped_until_it_ends() {
        let pid = sleeper();
        assert!(is_running(pid));
        assert!(try_reap(pid).is_none());
        kill_process(pid, Signal::KILL).unwrap();
        // The peek must not reap: after it, the blocking wait still finds the child's status.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while is_running(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGKILL did not end the child"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(matches!(reap(pid), Death::Signal(9)));
        // Reaped: no such child any more.
        assert!(!is_running(pid));
        assert!(matches!(try_reap(pid), Some(Death::Unknown)));
        assert_eq!(
            waitpid(Some(pid), WaitOptions::NOHANG).unwrap_err(),
            Errno::CHILD
        );
    }

    /// A child that leads its own group (as a worker does) and starts a grandchild in it, which
    /// it does not wait for; returns the child and the grandchild's pid.
    fn group_leader_with_a_grandchild() -> (Pid, Pid) {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 & echo $!; exec sleep 1000"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let grandchild = Pid::from_raw(line.trim().parse().unwrap()).unwrap();
        let pid = Pid::from_child(&child);
        std::mem::forget(child);
        (pid, grandchild)
    }

    /// Whether `pid` is gone or a zombie (dead; its reaper, init or a subreaper, may be slow).
    fn dead_soon(pid: Pid) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_pid()))
                .ok()
                .and_then(|s| s.rfind(')').and_then(|end| s[end + 2..].chars().next()));
            if matches!(state, None | Some('Z' | 'X')) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                let _ = kill_process(pid, Signal::KILL);
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn every_end_of_a_group_leader_kills_its_group() {
        // Killed (fail fast, cancel), overran (terminate), ended by itself (reap, try_reap).
        type End = (&'static str, fn(Pid));
        let ends: [End; 4] = [
            ("kill_and_reap", kill_and_reap),
            ("terminate", terminate),
            ("reap", |pid| {
                kill_process(pid, Signal::KILL).unwrap();
                assert!(matches!(reap(pid), Death::Signal(9)));
            }),
            ("try_reap", |pid| {
                kill_process(pid, Signal::KILL).unwrap();
                while try_reap(pid).is_none() {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }),
        ];
        for (name, end) in ends {
            let (pid, grandchild) = group_leader_with_a_grandchild();
            end(pid);
            assert!(dead_soon(grandchild), "{name} left the grandchild running");
            assert_eq!(
                waitpid(Some(pid), WaitOptions::NOHANG).unwrap_err(),
                Errno::CHILD,
                "{name} did not reap"
            );
        }
    }

    #[test]
    fn the_callers_own_group_and_pid_are_never_signalled_as_a_group() {
        assert!(!may_signal_group(getpgrp()));
        assert!(!may_signal_group(getpid()));
        assert!(!may_signal_group(Pid::INIT));
        // A child that leads no group: no such group, nothing sent.
        let pid = sleeper();
        assert!(may_signal_group(pid));
        assert!(!signal_group(pid, Signal::KILL));
        assert!(is_running(pid));
        kill_and_reap(pid);
    }

    #[test]
    fn a_death_survives_the_fork_servers_encoding() {
        for death in [
            Death::Signal(9),
            Death::Exited(0),
            Death::Exited(-1),
            Death::Unknown,
        ] {
            assert_eq!(decode_death(encode_death(death)), death);
        }
        assert_eq!(decode_death(encode_death(Death::Silent(3))), Death::Unknown);
    }

    #[test]
    fn terminate_ends_a_child_with_sigterm_and_an_exit_is_its_status() {
        let pid = sleeper();
        terminate(pid);
        assert!(matches!(try_reap(pid), Some(Death::Unknown)));
        let exits = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = Pid::from_child(&exits);
        std::mem::forget(exits);
        assert!(matches!(reap(pid), Death::Exited(7)));
    }
}
