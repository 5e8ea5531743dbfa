//! Our worker children's lives, as the parent sees them: waiting for one (blocking or polling),
//! checking that one still runs without reaping it, and stopping one whose task overran. Every
//! function acts on one specific child of ours (never "any child").

use std::io;
use std::time::Duration;

use crate::task::Death;

/// How long a timed-out worker may take to leave after SIGTERM before it gets SIGKILL.
pub(super) const TERM_GRACE: Duration = Duration::from_millis(100);

/// Stops a worker whose task overran: SIGTERM (it may clean up), SIGKILL after [`TERM_GRACE`],
/// then reaps it.
pub(super) fn terminate(pid: libc::pid_t) {
    // SAFETY: `pid` is our own child, not yet reaped, so it cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + TERM_GRACE;
    while std::time::Instant::now() < deadline {
        if wait_for(pid, libc::WNOHANG).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // The child has not been reaped (the last poll found it running).
    kill_and_reap(pid);
}

/// SIGKILLs our child `pid` and reaps it (blocking until it is gone). `pid` must be a child of
/// ours that nobody has reaped yet, so that it cannot have been reused by another process.
pub(in crate::backend) fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: kill has no memory-safety preconditions; per the contract above, `pid` is our own
    // child, not yet reaped, so the signal cannot reach another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = wait_for(pid, 0);
}

/// Waits for our child `pid` (`flags` 0 blocks, WNOHANG polls). `Some(death)` once it has ended;
/// `None` while it runs. A child already reaped elsewhere (SIGCHLD ignored by the host) is
/// `Death::Unknown`.
pub(in crate::backend) fn wait_for(pid: libc::pid_t, flags: libc::c_int) -> Option<Death> {
    loop {
        let mut status = 0;
        // SAFETY: waits for one specific child of ours; `status` is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, flags) };
        if got == pid {
            return Some(if libc::WIFSIGNALED(status) {
                Death::Signal(libc::WTERMSIG(status))
            } else {
                Death::Exited(libc::WEXITSTATUS(status))
            });
        }
        if got == 0 {
            return None;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Some(Death::Unknown);
        }
    }
}

/// Whether our child `pid` is still running, without reaping it (the proxy reaps it afterwards to
/// learn how it died).
pub(in crate::backend) fn wait_for_peek(pid: libc::pid_t) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-buffer for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits (without blocking, without reaping) for one specific child of ours.
        let got = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if got == 0 {
            // SAFETY: waitid filled `info`; si_pid is 0 when the child has not changed state.
            return unsafe { info.si_pid() } == 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}
