//! The one error type of pj.
//!
//! An [`Error`] carries a kind (mapped to exactly one C `pj_status` by `ffi`), a one-line message, and
//! for task failures the task index, the callback's return code and where it ran. The multi-line
//! [`Error::report`] is pj's counterpart of joblib's remote traceback.

use std::fmt;

/// What went wrong, coarsely. Each kind maps to one C status (see `ffi::status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A required pointer was NULL.
    NullArgument,
    /// A value was out of range, malformed, or an option key was unknown.
    InvalidArgument,
    /// The object is in use by a call on another thread (or a re-entrant call).
    Busy,
    /// The request is valid but not (yet) supported by this build.
    Unsupported,
    /// A task callback returned a non-zero code.
    TaskFailed,
    /// A task ran longer than the configured timeout.
    Timeout,
    /// A worker process died while running a task.
    WorkerDied,
    /// The call was cancelled.
    Cancelled,
    /// An operating-system call failed.
    Io,
    /// A Rust panic was caught at the C boundary.
    Panic,
}

impl ErrorKind {
    /// A short lowercase name, used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NullArgument => "null argument",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Busy => "busy",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::TaskFailed => "task failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::WorkerDied => "worker died",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Io => "i/o error",
            ErrorKind::Panic => "panic",
        }
    }
}

/// Where a failed task ran: filled in by the dispatcher for task-level errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskContext {
    /// Zero-based index of the task in submission order.
    pub index: usize,
    /// The callback's non-zero return code, when it returned one.
    pub code: Option<i32>,
    /// The message the callback attached with `pj_out_error`, as it gave it.
    pub callback_message: Option<String>,
    /// Backend name ("threads", "sequential", ...).
    pub backend: &'static str,
    /// Human description of the worker ("thread 2", "pid 1234").
    pub worker: String,
    /// For a worker process killed by a signal: the signal number.
    pub signal: Option<i32>,
    /// For a worker process killed by SIGSEGV or SIGBUS: the address whose access faulted.
    pub fault_address: Option<u64>,
    /// For a worker process killed by a crash signal: the crashing thread's stack, as its crash
    /// handler recorded it (one frame per line, innermost first).
    pub backtrace: Option<String>,
    /// For a worker process that exited while running the task: its exit status.
    pub exit_status: Option<i32>,
    /// For a timed-out task: the limit and how long the task had run when it was stopped.
    pub timeout: Option<(std::time::Duration, std::time::Duration)>,
}

/// An error from pj: a kind, a one-line message and, for task errors, the task's context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    /// Boxed: errors travel in every `Result` of the crate, and most are not about a task.
    task: Option<Box<TaskContext>>,
}

impl Error {
    /// A new error of `kind` with `message`, kept to one line: control characters in it (a
    /// callback's newlines, an OS message's tab) are escaped as `\n`, `\t`, `\u{1b}`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: one_line(message.into()),
            task: None,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// Attaches the task context (index, code, backend, worker).
    pub fn with_task(mut self, task: TaskContext) -> Self {
        self.task = Some(Box::new(task));
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The task context, for task-level errors.
    pub fn task(&self) -> Option<&TaskContext> {
        self.task.as_deref()
    }

    /// The index of the failed task, for task-level errors.
    pub fn task_index(&self) -> Option<usize> {
        self.task.as_ref().map(|t| t.index)
    }

    /// A multi-line report: what failed, where, and how.
    pub fn report(&self) -> String {
        let mut out = format!("pj error: {}\n", self.kind.name());
        if let Some(task) = &self.task {
            out.push_str(&format!("  task index: {}\n", task.index));
            out.push_str(&format!("  backend: {}\n", task.backend));
            if !task.worker.is_empty() {
                out.push_str(&format!("  worker: {}\n", task.worker));
            }
            if let Some(code) = task.code {
                out.push_str(&format!("  callback returned: {code}\n"));
            }
            if let Some(signal) = task.signal {
                out.push_str(&format!(
                    "  killed by signal: {} ({signal})\n",
                    signal_name(signal)
                ));
            }
            if let Some(address) = task.fault_address {
                out.push_str(&format!("  fault address: 0x{address:x}\n"));
            }
            if let Some(backtrace) = &task.backtrace {
                out.push_str("  backtrace:\n");
                for frame in backtrace.lines() {
                    out.push_str(&format!("    {frame}\n"));
                }
            }
            if let Some(status) = task.exit_status {
                out.push_str(&format!("  worker exited: exit status {status}\n"));
            }
            if let Some((limit, elapsed)) = task.timeout {
                out.push_str(&format!(
                    "  timeout: {} s, stopped after {:.3} s\n",
                    limit.as_secs_f64(),
                    elapsed.as_secs_f64()
                ));
            }
        }
        out.push_str(&format!("  message: {}\n", self.message));
        // The message escapes a callback's control characters; the report shows its text as given,
        // one indented line per line, when it spans several.
        if let Some(text) = self.task().and_then(|t| t.callback_message.as_deref())
            && text.contains(['\n', '\r'])
        {
            out.push_str("  callback message:\n");
            for line in text.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `text` with its control characters escaped (Rust's debug escapes: `\n`, `\r`, `\t`, `\u{1b}`),
/// so that it prints as one line; unchanged, without copying, when it has none.
pub(crate) fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// The conventional name of a signal ("SIGSEGV"), or "signal N" for others.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_task_code_and_message() {
        let err = Error::new(
            ErrorKind::TaskFailed,
            "task 5 failed with code 3: bad input",
        )
        .with_task(TaskContext {
            index: 5,
            code: Some(3),
            backend: "threads",
            worker: "thread 1".into(),
            ..TaskContext::default()
        });
        let report = err.report();
        assert!(report.contains("task index: 5"), "{report}");
        assert!(report.contains("callback returned: 3"), "{report}");
        assert!(report.contains("worker: thread 1"), "{report}");
        assert!(report.contains("bad input"), "{report}");
        assert_eq!(err.task_index(), Some(5));
    }

    #[test]
    fn report_of_a_crash_shows_the_signal_the_address_and_the_frames() {
        let err = Error::new(ErrorKind::WorkerDied, "task 2: the worker process died").with_task(
            TaskContext {
                index: 2,
                backend: "processes",
                worker: "process 42".into(),
                signal: Some(libc::SIGSEGV),
                fault_address: Some(0x10),
                backtrace: Some("#0 0x1 crash_here at crash.c:3\n#1 0x2 task at crash.c:9".into()),
                ..TaskContext::default()
            },
        );
        let report = err.report();
        let expected = "  killed by signal: SIGSEGV (11)\n  fault address: 0x10\n  backtrace:\n    \
                        #0 0x1 crash_here at crash.c:3\n    #1 0x2 task at crash.c:9\n  message: ";
        assert!(report.contains(expected), "{report}");
    }
}
