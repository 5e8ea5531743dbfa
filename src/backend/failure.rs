//! What a failed task's error says: the one-line message and the context (index, backend, where it
//! ran, code, signal, timeout) of [`Backend::task_error`]. Here, not in the dispatcher, because
//! only the backend knows what its workers are (threads, processes, MPI ranks).

use super::Backend;
use crate::error::{Error, ErrorKind, TaskContext, signal_name};
use crate::task::{Death, TaskFailure};

impl Backend {
    /// The error of task `index`, which failed as `failure` on worker number `worker` (`pid`: the
    /// process that ran it, 0 for none): the one-line message and the task context that name the
    /// task, the backend and where it ran (thread, process, MPI rank), its code or signal.
    pub fn task_error(
        &self,
        index: usize,
        failure: &TaskFailure,
        worker: usize,
        pid: u32,
    ) -> Error {
        let backend = self;
        let rank = backend.mpi_rank(worker);
        // Where it ran: `worker` is `None` for the pid a dead worker reported itself.
        let place = |pid: i64, worker: Option<usize>| match (rank, pid, worker) {
            (Some(rank), 0, _) => format!("MPI rank {rank}"),
            (Some(rank), pid, _) => format!("process {pid} on MPI rank {rank}"),
            (None, 0, Some(worker)) => backend.describe_worker(worker),
            (None, pid, Some(worker)) => format!("process {pid} (worker {worker})"),
            (None, pid, None) => format!("process {pid}"),
        };
        let worker = place(i64::from(pid), Some(worker));
        let mut context = TaskContext {
            index,
            backend: backend.name(),
            worker,
            ..TaskContext::default()
        };
        let (kind, message) = match failure {
            TaskFailure::Returned { code, message } => {
                context.code = Some(*code);
                context.callback_message = message.clone();
                // An empty message adds nothing (no dangling colon); Error::new keeps it one line.
                let detail = message
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                (
                    ErrorKind::TaskFailed,
                    format!("task {index} failed with code {code}{detail}"),
                )
            }
            TaskFailure::Panicked(text) => (
                ErrorKind::Panic,
                format!("task {index}: pj panicked: {text}"),
            ),
            TaskFailure::Io(text) => (ErrorKind::Io, format!("task {index}: {text}")),
            TaskFailure::Died {
                pid,
                death,
                fault_address,
                backtrace,
            } => {
                context.worker = place(i64::from(*pid), None);
                context.fault_address = *fault_address;
                context.backtrace = backtrace.clone();
                let how = match *death {
                    Death::Signal(signal) => {
                        context.signal = Some(signal);
                        format!("was killed by {}", signal_name(signal))
                    }
                    Death::Exited(status) => {
                        context.exit_status = Some(status);
                        format!("exited with exit status {status}")
                    }
                    Death::Unknown => "disappeared".to_owned(),
                    Death::Silent(seconds) => format!("stopped answering for {seconds} s"),
                };
                let subject = match (*pid, rank) {
                    (0, Some(_)) => "the rank".to_owned(),
                    (0, None) => "the worker".to_owned(),
                    (pid, _) => format!("the worker process (pid {pid})"),
                };
                (
                    ErrorKind::WorkerDied,
                    format!("task {index}: {subject} {how} while running it"),
                )
            }
            TaskFailure::TimedOut { limit, elapsed } => {
                context.timeout = Some((*limit, *elapsed));
                (
                    ErrorKind::Timeout,
                    format!(
                        "task {index} timed out: it ran for {:.2} s, over the {} s limit (timeout)",
                        elapsed.as_secs_f64(),
                        limit.as_secs_f64()
                    ),
                )
            }
        };
        let message = match rank {
            Some(rank) => format!("{message} (MPI rank {rank})"),
            None => message,
        };
        Error::new(kind, message).with_task(context)
    }
}
