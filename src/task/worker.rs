//! Which worker ran a batch: [`WorkerId`], filled in by the backend, named in error reports.

/// Which worker ran a batch, filled in by the backend that ran it; its `Display` is the "worker"
/// that error reports print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerId {
    /// The caller's own thread (the sequential backend).
    Caller,
    /// Worker thread number `n` of a thread pool.
    Thread(usize),
    /// Worker process slot `slot` of a process pool; `pid` is the process that ran the batch, 0
    /// when none did (the batch never reached a live worker).
    Process {
        /// The slot's number in its pool.
        slot: usize,
        /// The worker process's id, or 0.
        pid: u32,
    },
    /// MPI worker rank `rank` (1 and up); `pid` is the process of the rank's own pool that ran
    /// the batch, 0 when unknown.
    Rank {
        /// The rank.
        rank: usize,
        /// The process on that rank, or 0.
        pid: u32,
    },
    /// No MPI rank took the batch: rank 0 failed it before sending it.
    NoRank,
}

impl WorkerId {
    /// The MPI rank that ran the batch, if any.
    pub fn mpi_rank(self) -> Option<usize> {
        match self {
            WorkerId::Rank { rank, .. } => Some(rank),
            _ => None,
        }
    }

    /// The id of the process that ran the batch, or 0.
    pub fn pid(self) -> u32 {
        match self {
            WorkerId::Process { pid, .. } | WorkerId::Rank { pid, .. } => pid,
            WorkerId::Caller | WorkerId::Thread(_) | WorkerId::NoRank => 0,
        }
    }

    /// Where process `pid` (a worker that died and named itself) ran: on this worker's MPI rank,
    /// if it has one.
    pub fn process(self, pid: i32) -> String {
        match (self.mpi_rank(), pid) {
            (Some(rank), 0) => format!("MPI rank {rank}"),
            (Some(rank), pid) => format!("process {pid} on MPI rank {rank}"),
            (None, pid) => format!("process {pid}"),
        }
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WorkerId::Caller => f.write_str("caller thread"),
            WorkerId::Thread(n) => write!(f, "thread {n}"),
            WorkerId::Process { slot, pid: 0 } => write!(f, "worker process {slot}"),
            WorkerId::Process { slot, pid } => write!(f, "process {pid} (worker {slot})"),
            WorkerId::Rank { rank, pid: 0 } => write!(f, "MPI rank {rank}"),
            WorkerId::Rank { rank, pid } => write!(f, "process {pid} on MPI rank {rank}"),
            WorkerId::NoRank => f.write_str("rank 0 (no rank took the batch)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_read_as_error_reports_print_them() {
        let cases = [
            (WorkerId::Caller, "caller thread"),
            (WorkerId::Thread(3), "thread 3"),
            (WorkerId::Process { slot: 1, pid: 0 }, "worker process 1"),
            (
                WorkerId::Process { slot: 1, pid: 77 },
                "process 77 (worker 1)",
            ),
            (WorkerId::Rank { rank: 2, pid: 0 }, "MPI rank 2"),
            (
                WorkerId::Rank { rank: 2, pid: 77 },
                "process 77 on MPI rank 2",
            ),
            (WorkerId::NoRank, "rank 0 (no rank took the batch)"),
        ];
        for (worker, text) in cases {
            assert_eq!(worker.to_string(), text);
        }
        assert_eq!(
            WorkerId::Rank { rank: 2, pid: 5 }.process(9),
            "process 9 on MPI rank 2"
        );
        assert_eq!(WorkerId::Rank { rank: 2, pid: 5 }.process(0), "MPI rank 2");
        assert_eq!(
            WorkerId::Process { slot: 0, pid: 5 }.process(9),
            "process 9"
        );
        assert_eq!(WorkerId::NoRank.mpi_rank(), None);
    }
}
