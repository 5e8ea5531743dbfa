//! What a failed task's error says: the one-line message and the context (index, backend, where it
//! ran, code, signal, timeout) of [`Backend::task_error`]. Here, not in the dispatcher, because
//! only the backend knows what its failures mean; the worker that ran the task
//! ([`WorkerId`]) names itself.

use super::Backend;
use crate::error::{Error, ErrorKind, TaskContext, signal_name};
use crate::task::{Death, TaskFailure, WorkerId};

impl Backend {
    /// The error of task `index`, which failed as `failure` on `worker`: the one-line message
    /// and the task context that name the task, the backend and where it ran (thread, process,
    /// MPI rank), its code or signal.
    pub fn task_error(&self, index: usize, failure: &TaskFailure, worker: WorkerId) -> Error {
        let rank = worker.mpi_rank();
        let mut context = TaskContext {
            index,
            backend: self.name(),
            worker: worker.to_string(),
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
                context.worker = worker.process(*pid);
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
            TaskFailure::Stalled { limit, elapsed } => {
                context.timeout = Some((*limit, *elapsed));
                (
                    ErrorKind::Timeout,
                    format!(
                        "task {index}: its batch's worker was stuck outside any task for {:.2} s \
                         (receiving, mapping or returning the batch), over the {} s limit \
                         (timeout), and was stopped",
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
