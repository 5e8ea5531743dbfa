//! Fault injection at the stages a task callback cannot reach: writing a spilled argument, sending
//! a batch, receiving it in the worker, mapping its arguments, encoding, sending, receiving and
//! decoding results, cleaning up after a task, starting a worker, the MPI exchange, and the body of
//! an exported function.
//!
//! Compiled in only with the cargo feature `failpoints` (tests build with it; release builds and
//! the libraries users link do not): without it [`hit`] is an empty inline function and nothing of
//! this module's state exists. With it, the environment variable `PJ_FAILPOINTS` arms stages:
//!
//! ```text
//! PJ_FAILPOINTS="stage=mode[@n][,stage=mode[@n]...]"
//! ```
//!
//! `mode` is `error` (the stage fails as an I/O error would), `truncate` (a frame or file is cut
//! short where the stage writes one; an error elsewhere), `panic`, `exit` (the process ends with
//! status 0, without cleanup, as `_exit(0)`), `segv` (the process raises SIGSEGV) or `hang` (the
//! thread sleeps forever). `@n` fires on the n-th pass through the stage only (counted from 1, per
//! process: a forked worker counts its own passes from what its parent had counted when it was
//! forked); without it the stage fires on every pass. The MPI stages are split by side, so that a
//! test knows which side fails: `mpi_send` / `mpi_receive` are rank 0's (its dispatcher thread),
//! `mpi_rank_send` / `mpi_rank_receive` the worker ranks'. Under mpirun each rank is a process,
//! so `@n` is the n-th pass of each rank; where worker ranks are threads of one process (the
//! in-process MPI fabric of the tests), they share the count, and `@n` fires on exactly one of
//! them. The variable is read once, when the first
//! executor is created (or at the first pass, whichever comes first); entries that do not parse
//! are reported on stderr and ignored.
//!
//! `PJ_FAILPOINTS_DIR`, when set, names a folder shared by every process of a test (the caller,
//! its workers, a fork server and its workers, whatever their start method): each firing appends
//! one line `stage pass pid` to its file `fired` (one `write` with `O_APPEND`, so lines from
//! several processes do not mix), and once its file `disarmed` exists no stage fires anywhere.
//! [`disarm`] creates that file, which reaches the processes a test cannot reach otherwise: a
//! spawned worker or a fork server that was started with the armed environment.

// Without the feature the stages are only named at their call sites, and nothing is injected.
#![cfg_attr(not(feature = "failpoints"), allow(dead_code))]

/// A place where a failure can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The caller writes an argument above max_nbytes to its file.
    SpillWrite,
    /// The caller (a process proxy) sends a batch to its worker.
    BatchSend,
    /// A worker process receives its next batch.
    BatchReceive,
    /// A worker maps the files of a batch's spilled arguments.
    ArgMap,
    /// A worker encodes a batch's outcome.
    ResultEncode,
    /// A worker sends a batch's outcome.
    ResultSend,
    /// The caller receives a batch's outcome.
    ResultReceive,
    /// The caller decodes a batch's outcome.
    ResultDecode,
    /// A worker cleans up after a batch (its arguments and outputs released).
    TaskCleanup,
    /// A worker process starts (after fork, or in a spawned copy before its handshake).
    WorkerStart,
    /// Rank 0 sends an MPI message (pj's dispatcher thread: a batch, a cancellation, a stop).
    MpiSend,
    /// Rank 0 receives an MPI message (a registry report, an outcome, a heartbeat).
    MpiReceive,
    /// A worker rank sends an MPI message (its registry report, an outcome, a heartbeat).
    MpiRankSend,
    /// A worker rank receives an MPI message (a batch, a cancellation, a stop).
    MpiRankReceive,
    /// The body of an exported function called outside any task.
    Export,
}

impl Stage {
    /// Every stage, in the order of [`Stage::name`]'s table.
    pub(crate) const ALL: [Stage; 15] = [
        Stage::SpillWrite,
        Stage::BatchSend,
        Stage::BatchReceive,
        Stage::ArgMap,
        Stage::ResultEncode,
        Stage::ResultSend,
        Stage::ResultReceive,
        Stage::ResultDecode,
        Stage::TaskCleanup,
        Stage::WorkerStart,
        Stage::MpiSend,
        Stage::MpiReceive,
        Stage::MpiRankSend,
        Stage::MpiRankReceive,
        Stage::Export,
    ];

    /// The stage's name in `PJ_FAILPOINTS` and in the errors it causes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stage::SpillWrite => "spill_write",
            Stage::BatchSend => "batch_send",
            Stage::BatchReceive => "batch_receive",
            Stage::ArgMap => "arg_map",
            Stage::ResultEncode => "result_encode",
            Stage::ResultSend => "result_send",
            Stage::ResultReceive => "result_receive",
            Stage::ResultDecode => "result_decode",
            Stage::TaskCleanup => "task_cleanup",
            Stage::WorkerStart => "worker_start",
            Stage::MpiSend => "mpi_send",
            Stage::MpiReceive => "mpi_receive",
            Stage::MpiRankSend => "mpi_rank_send",
            Stage::MpiRankReceive => "mpi_rank_receive",
            Stage::Export => "export",
        }
    }
}

/// What an armed stage asks of the code that reached it (the modes that end the process, panic or
/// hang act inside [`hit`] and never return).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Fail as the stage's I/O would.
    Error,
    /// Write a short frame or file where the stage writes one; else fail as [`Injected::Error`].
    Truncate,
}

impl Injected {
    /// The I/O error an injected failure stands for: its message names the stage.
    pub(crate) fn io_error(self, stage: Stage) -> std::io::Error {
        std::io::Error::other(format!("failpoint {} injected an error", stage.name()))
    }
}

/// Passes through `stage`: `None` unless the stage is armed for this pass (always, without the
/// `failpoints` feature).
#[inline(always)]
pub(crate) fn hit(stage: Stage) -> Option<Injected> {
    #[cfg(feature = "failpoints")]
    {
        armed::hit(stage)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = stage;
        None
    }
}

/// Disarms every stage in this process and in the workers it starts from now on (forked workers
/// inherit it; spawned ones no longer find `PJ_FAILPOINTS`), and, with `PJ_FAILPOINTS_DIR`, in
/// every process of the test, running or not (see the module doc): lets a test check that an
/// executor works again after an injected failure. Test-only (feature `failpoints`): it removes
/// the environment variable, which is sound only while no other thread reads the environment.
#[cfg(feature = "failpoints")]
pub fn disarm() {
    armed::disarm();
}

/// Reads `PJ_FAILPOINTS` now (from `pj_parallel_new`, so that no worker is forked while another
/// thread is reading it).
#[inline(always)]
pub(crate) fn init() {
    #[cfg(feature = "failpoints")]
    armed::init();
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use once_cell::sync::Lazy;

    use super::{Injected, Stage};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Mode {
        Error,
        Truncate,
        Panic,
        Exit,
        Segv,
        Hang,
    }

    /// One armed stage: its mode and the pass it fires on (every pass when `None`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct Armed {
        stage: Stage,
        mode: Mode,
        pass: Option<u64>,
    }

    static ARMED: Lazy<Vec<Armed>> = Lazy::new(|| {
        let spec = std::env::var("PJ_FAILPOINTS").unwrap_or_default();
        let (armed, bad) = parse(&spec);
        for entry in bad {
            eprintln!("pj: PJ_FAILPOINTS: ignoring \"{entry}\" (expected stage=mode[@n])");
        }
        armed
    });

    /// `PJ_FAILPOINTS_DIR`: where firings are logged and a disarm is seen by every process.
    static SHARED_DIR: Lazy<Option<std::path::PathBuf>> =
        Lazy::new(|| std::env::var_os("PJ_FAILPOINTS_DIR").map(std::path::PathBuf::from));

    /// Passes through each stage so far, in this process.
    static PASSES: [AtomicU64; Stage::ALL.len()] = [const { AtomicU64::new(0) }; Stage::ALL.len()];

    /// Set by [`super::disarm`]: no stage fires any more.
    static DISARMED: AtomicBool = AtomicBool::new(false);

    pub(super) fn init() {
        Lazy::force(&ARMED);
    }

    pub(super) fn disarm() {
        DISARMED.store(true, Ordering::SeqCst);
        if let Some(dir) = &*SHARED_DIR {
            let _ = std::fs::write(dir.join("disarmed"), b"");
        }
        // SAFETY: test-only; the caller guarantees no other thread reads the environment now.
        unsafe { std::env::remove_var("PJ_FAILPOINTS") };
    }

    /// The armed entries of `spec`, and the entries that do not parse.
    pub(super) fn parse(spec: &str) -> (Vec<Armed>, Vec<String>) {
        let mut armed = Vec::new();
        let mut bad = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_entry(entry) {
                Some(a) => armed.push(a),
                None => bad.push(entry.to_string()),
            }
        }
        (armed, bad)
    }

    fn parse_entry(entry: &str) -> Option<Armed> {
        let (stage, rest) = entry.split_once('=')?;
        let stage = Stage::ALL.into_iter().find(|s| s.name() == stage.trim())?;
        let (mode, pass) = match rest.split_once('@') {
            Some((mode, n)) => (mode, Some(n.trim().parse::<u64>().ok().filter(|&n| n > 0)?)),
            None => (rest, None),
        };
        let mode = match mode.trim() {
            "error" => Mode::Error,
            "truncate" => Mode::Truncate,
            "panic" => Mode::Panic,
            "exit" => Mode::Exit,
            "segv" => Mode::Segv,
            "hang" => Mode::Hang,
            _ => return None,
        };
        Some(Armed { stage, mode, pass })
    }

    pub(super) fn hit(stage: Stage) -> Option<Injected> {
        let armed = &*ARMED;
        if armed.is_empty() || DISARMED.load(Ordering::Relaxed) {
            return None;
        }
        let slot = Stage::ALL.iter().position(|&s| s == stage)?;
        let pass = PASSES[slot].fetch_add(1, Ordering::Relaxed) + 1;
        let entry = armed
            .iter()
            .find(|a| a.stage == stage && a.pass.is_none_or(|n| n == pass))?;
        if let Some(dir) = &*SHARED_DIR {
            if dir.join("disarmed").exists() {
                DISARMED.store(true, Ordering::Relaxed);
                return None;
            }
            log_firing(dir, stage, pass);
        }
        match entry.mode {
            Mode::Error => Some(Injected::Error),
            Mode::Truncate => Some(Injected::Truncate),
            Mode::Panic => panic!("failpoint {} injected a panic", stage.name()),
            // SAFETY: _exit ends the process at once; it takes no lock and runs no handler.
            Mode::Exit => unsafe { libc::_exit(0) },
            Mode::Segv => {
                // SAFETY: raise only sends this thread a signal; the default or pj's crash
                // handler then ends the process.
                unsafe { libc::raise(libc::SIGSEGV) };
                // A handler that returned (Rust's own, which expects a fault to recur): the
                // default action now, as a real fault would end up with.
                // SAFETY: as above; the disposition changes only in a process that must end.
                unsafe {
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    libc::raise(libc::SIGSEGV);
                }
                None
            }
            Mode::Hang => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
        }
    }

    /// Appends `stage pass pid` to the shared folder's `fired` file, in one write.
    fn log_firing(dir: &std::path::Path, stage: Stage, pass: u64) {
        use std::io::Write;
        let line = format!("{} {pass} {}\n", stage.name(), std::process::id());
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("fired"));
        if let Ok(mut file) = file {
            let _ = file.write_all(line.as_bytes());
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn specs_parse_and_bad_entries_are_named() {
            let (armed, bad) =
                parse("batch_send=error@3, result_decode=panic,nope=error,arg_map=x");
            assert_eq!(
                armed,
                vec![
                    Armed {
                        stage: Stage::BatchSend,
                        mode: Mode::Error,
                        pass: Some(3)
                    },
                    Armed {
                        stage: Stage::ResultDecode,
                        mode: Mode::Panic,
                        pass: None
                    },
                ]
            );
            assert_eq!(bad, vec!["nope=error", "arg_map=x"]);
            assert_eq!(parse("spill_write=error@0").1, vec!["spill_write=error@0"]);
            assert!(parse("").0.is_empty());
        }
    }
}
