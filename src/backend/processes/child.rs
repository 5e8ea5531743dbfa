//! Our worker children's lives, as the parent sees them: waiting for one (blocking or polling),
//! checking that one still runs without reaping it, and stopping one whose task overran. Every
//! function acts on one specific child of ours (never "any child"), and every wait for or signal
//! to a worker goes through here. The calls are rustix's typed ones: `waitpid` takes
//! [`WaitOptions`], which has no NOWAIT (Linux refuses WNOHANG|WNOWAIT with waitpid), and the
//! non-reaping check is `waitid` with [`WaitIdOptions::NOWAIT`].
//!
//! A worker of the fork server (`start_method=forkserver`) is not our child but the server's:
//! [`Child`] hides the difference. We signal such a worker through its pidfd (never a reused pid)
//! and learn how it ended from the server, which reaps it and writes its [`Death`] on a socket
//! made for that worker alone (see `forkserver`).

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::retry_on_intr;
use rustix::net::{RecvFlags, recv};
use rustix::process::{
    Pid, Signal, WaitId, WaitIdOptions, WaitOptions, WaitStatus, kill_process, pidfd_send_signal,
    waitid, waitpid,
};

use crate::task::Death;

/// How long a timed-out worker may take to leave after SIGTERM before it gets SIGKILL.
pub(super) const TERM_GRACE: Duration = Duration::from_millis(100);

/// Stops a worker whose task overran: SIGTERM (it may clean up), SIGKILL after [`TERM_GRACE`],
/// then reaps it.
pub(super) fn terminate(pid: Pid) {
    // `pid` is our own child, not yet reaped, so it cannot have been reused. A failure means it
    // is gone already: the waits below notice.
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

/// SIGKILLs our child `pid` and reaps it (blocking until it is gone). `pid` must be a child of
/// ours that nobody has reaped yet, so that it cannot have been reused by another process.
pub(in crate::backend) fn kill_and_reap(pid: Pid) {
    // Per the contract above the signal cannot reach another process; a failure means the child
    // is a zombie already, which the wait reaps.
    let _ = kill_process(pid, Signal::KILL);
    let _ = reap(pid);
}

/// Waits (blocking) for our child `pid` to end and reaps it. A child already reaped elsewhere
/// (SIGCHLD ignored by the host) is `Death::Unknown`.
pub(in crate::backend) fn reap(pid: Pid) -> Death {
    wait(pid, WaitOptions::empty()).unwrap_or(Death::Unknown)
}

/// Reaps our child `pid` if it has ended (`Some(death)`), without blocking; `None` while it runs.
/// A child already reaped elsewhere is `Some(Death::Unknown)`.
pub(in crate::backend) fn try_reap(pid: Pid) -> Option<Death> {
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
