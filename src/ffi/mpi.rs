//! The MPI backend's boundary: the operations table a shim compiled with mpicc hands to pj
//! (`pj_mpi_attach` on rank 0, `pj_mpi_serve` on every other rank, `pj_mpi_detach` at exit).
//!
//! libpj never links MPI: the shim (`pj_mpi.c`, built only when MPI is found) wraps the few MPI
//! calls pj needs as C function pointers on pj's own communicator.

use std::ffi::{c_int, c_void};

use super::{Handle, borrow, borrow_opt, null_argument, pj_error_t, pj_status, run, run_value};
use crate::backend::mpi::{MpiOps, attach, detach, serve};

/// The MPI operations pj uses, on a communicator of the shim's (pj's own duplicate of
/// `MPI_COMM_WORLD`, so that pj's messages never mix with the program's). Supplied by the pj_mpi
/// shim; a program only calls `pj_mpi_main` (pj_mpi.h). Every function returns 0 on success and
/// a non-zero MPI error code otherwise, unless stated. pj calls them from one thread at a time
/// (rank 0: pj's dispatcher thread; other ranks: the thread in `pj_mpi_serve`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pj_mpi_ops_t {
    /// Passed back to every function; the shim's own state.
    pub context: *mut c_void,
    /// This process's rank in the communicator.
    pub rank: c_int,
    /// The number of ranks.
    pub size: c_int,
    /// Starts sending `len` bytes at `data` to rank `dest` with `tag` (non-blocking) and stores a
    /// handle in `*request`; pj keeps `data` unchanged until `test` reports completion.
    pub isend: Option<
        unsafe extern "C" fn(
            context: *mut c_void,
            dest: c_int,
            tag: c_int,
            data: *const u8,
            len: usize,
            request: *mut *mut c_void,
        ) -> c_int,
    >,
    /// Returns 1 when the send behind `request` has completed (the handle is then released), 0
    /// while it is pending, a negative value on error.
    pub test: Option<unsafe extern "C" fn(context: *mut c_void, request: *mut c_void) -> c_int>,
    /// Returns 1 when a message from any rank is waiting, and stores its source, tag and length in
    /// bytes; 0 when none is; a negative value on error. Never blocks.
    pub iprobe: Option<
        unsafe extern "C" fn(
            context: *mut c_void,
            source: *mut c_int,
            tag: *mut c_int,
            len: *mut usize,
        ) -> c_int,
    >,
    /// Receives the message `iprobe` announced (from `source`, with `tag`, `len` bytes) into
    /// `data`, which has room for `len` bytes.
    pub recv: Option<
        unsafe extern "C" fn(
            context: *mut c_void,
            source: c_int,
            tag: c_int,
            data: *mut u8,
            len: usize,
        ) -> c_int,
    >,
    /// The largest message `isend` takes, in bytes (MPI counts are ints: INT_MAX); 0: no limit.
    /// A batch whose arguments or results need more travels as several messages of at most this
    /// size, sent back to back (the receiver joins them; `iprobe` must take any tag).
    pub max_message: usize,
}

// SAFETY: C hands pj only tables it owns (the shim's), valid for the call that receives them.
unsafe impl Handle for pj_mpi_ops_t {
    const ARG: &'static str = "ops";
}

/// Rank 0 only (called by `pj_mpi_main`): makes `backend` "mpi" available in this process, with
/// the other ranks of `ops` as workers. The table is copied; its functions and context must stay
/// valid until `pj_mpi_detach` returns. pj's dispatcher thread starts now and waits (up to 30 s)
/// for every worker rank to report its registry; a call on backend "mpi" fails with
/// PJ_STATUS_IO when a rank registered other functions or never answered.
///
/// Returns PJ_STATUS_OK; PJ_STATUS_NULL_ARGUMENT when `ops` or one of its functions is NULL;
/// PJ_STATUS_INVALID_ARGUMENT when `ops->rank` is not 0 or `ops->size` < 1; PJ_STATUS_BUSY when
/// a table is already attached (a new one may be attached after `pj_mpi_detach`); PJ_STATUS_IO
/// when the dispatcher thread cannot start.
#[unsafe(no_mangle)]
pub extern "C" fn pj_mpi_attach(
    ops: *const pj_mpi_ops_t,
    error_out: *mut *mut pj_error_t,
) -> pj_status {
    run(error_out, || attach(checked(borrow(ops)?)?))
}

/// Every rank but 0 (called by `pj_mpi_main`): serves rank 0's batches with the functions this
/// process registered (`pj_register`, before this call), each batch in a child process so that a
/// crashing task is reported instead of ending the MPI job: a forked child, or, when the program
/// called `pj_worker_main_if_requested` before this call (as the Go binding's MPIMain does: Go code
/// cannot run in a forked child), a copy of the program spawned as a worker (start method "spawn";
/// it must then reach `pj_worker_main_if_requested` before it initializes MPI). The child is kept
/// across batches, and replaced when a task kills it. Returns the status the rank
/// should exit with, once rank 0 detaches: 0; 2 when `ops` is NULL or incomplete, an MPI
/// operation fails, or the registry differs from rank 0's (which rank 0 reports); 3 when rank 0
/// gave up another rank for silence, so that this rank must leave without MPI_Finalize (which
/// would wait for the dead rank forever); 4 when pj panicked (a bug).
#[unsafe(no_mangle)]
pub extern "C" fn pj_mpi_serve(ops: *const pj_mpi_ops_t) -> c_int {
    run_value(4, || {
        let Some(ops) = borrow_opt(ops) else {
            return 2;
        };
        match checked(ops) {
            Ok(ops) => serve(ops),
            Err(_) => 2,
        }
    })
}

/// Rank 0, at exit (the shim registers it with atexit, before `MPI_Finalize`): cancels what still
/// runs on the worker ranks, tells them to leave, and stops pj's dispatcher thread. Calls on
/// backend "mpi" fail with PJ_STATUS_UNSUPPORTED afterwards. Returns the number of worker ranks
/// given up for silence (see backend "mpi") or that could not be told to leave (their stop
/// message failed twice): when it is not 0, MPI_Finalize would wait for them
/// forever, so the shim leaves without it. Returns 0 when nothing is attached.
#[unsafe(no_mangle)]
pub extern "C" fn pj_mpi_detach() -> c_int {
    run_value(0, || c_int::try_from(detach()).unwrap_or(c_int::MAX))
}

/// The table as the core uses it, with every function present.
fn checked(ops: &pj_mpi_ops_t) -> crate::error::Result<MpiOps> {
    Ok(MpiOps {
        context: ops.context,
        rank: ops.rank,
        size: ops.size,
        isend: ops.isend.ok_or_else(|| null_argument("ops->isend"))?,
        test: ops.test.ok_or_else(|| null_argument("ops->test"))?,
        iprobe: ops.iprobe.ok_or_else(|| null_argument("ops->iprobe"))?,
        recv: ops.recv.ok_or_else(|| null_argument("ops->recv"))?,
        max_message: match ops.max_message {
            0 => usize::MAX,
            limit => limit,
        },
    })
}
