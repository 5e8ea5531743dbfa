//! The shim's table of MPI operations ([`MpiOps`]) and what pj builds on it: non-blocking sends
//! whose bytes live until MPI is done with them, probes and receives.

use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::spin::Backoff;

/// The shim's MPI operations (see `pj_mpi_ops_t` in the header for each function's contract).
#[derive(Clone, Copy, Debug)]
pub struct MpiOps {
    pub context: *mut c_void,
    pub rank: c_int,
    pub size: c_int,
    pub isend: unsafe extern "C" fn(
        *mut c_void,
        c_int,
        c_int,
        *const u8,
        usize,
        *mut *mut c_void,
    ) -> c_int,
    pub test: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
    pub iprobe: unsafe extern "C" fn(*mut c_void, *mut c_int, *mut c_int, *mut usize) -> c_int,
    pub recv: unsafe extern "C" fn(*mut c_void, c_int, c_int, *mut u8, usize) -> c_int,
    /// The largest message the transport carries, in bytes.
    pub max_message: usize,
}

// SAFETY: the table is plain function pointers and the shim's context, which the shim keeps valid
// for the program's life; pj calls it from one thread at a time (the dispatcher, or the serving
// thread), as the header documents.
unsafe impl Send for MpiOps {}

fn mpi_error(what: &str, code: c_int) -> Error {
    Error::new(ErrorKind::Io, format!("MPI {what} failed (error {code})"))
}

/// A send in progress: its request and the bytes MPI reads until it completes.
pub(super) struct PendingSend {
    request: *mut c_void,
    bytes: Vec<u8>,
    completed: bool,
}

impl Drop for PendingSend {
    fn drop(&mut self) {
        if !self.completed {
            // MPI may still read the bytes (a send abandoned at shutdown or after an error):
            // they are leaked, never freed under it.
            std::mem::forget(std::mem::take(&mut self.bytes));
        }
    }
}

impl MpiOps {
    /// Starts sending `bytes` (kept alive in the returned value until the send completes).
    pub(super) fn start_send(
        &self,
        dest: c_int,
        tag: c_int,
        bytes: Vec<u8>,
    ) -> Result<PendingSend> {
        let mut request = std::ptr::null_mut();
        // SAFETY: the shim's isend with its own context; `bytes` stays alive and unchanged in the
        // returned PendingSend until `test` reports completion.
        let code = unsafe {
            (self.isend)(
                self.context,
                dest,
                tag,
                bytes.as_ptr(),
                bytes.len(),
                &mut request,
            )
        };
        if code != 0 {
            return Err(mpi_error("send", code));
        }
        Ok(PendingSend {
            request,
            bytes,
            completed: false,
        })
    }

    /// Whether `send` has completed (its request is then released by the shim).
    pub(super) fn sent(&self, send: &mut PendingSend) -> Result<bool> {
        if send.completed {
            return Ok(true);
        }
        // SAFETY: a request isend returned and test has not yet reported complete.
        match unsafe { (self.test)(self.context, send.request) } {
            1 => {
                send.completed = true;
                Ok(true)
            }
            0 => Ok(false),
            code => Err(mpi_error("test", code)),
        }
    }

    /// Drops the completed sends of `sends`; whether there were any.
    pub(super) fn complete(&self, sends: &mut Vec<PendingSend>) -> Result<bool> {
        let before = sends.len();
        let mut i = 0;
        while i < sends.len() {
            if self.sent(&mut sends[i])? {
                sends.swap_remove(i);
            } else {
                i += 1;
            }
        }
        Ok(sends.len() < before)
    }

    /// Sends `bytes` and waits (polling, backing off) until the send completes or `limit` passes.
    pub(super) fn send_and_wait(
        &self,
        dest: c_int,
        tag: c_int,
        bytes: Vec<u8>,
        limit: Duration,
    ) -> Result<()> {
        let mut send = self.start_send(dest, tag, bytes)?;
        let deadline = Instant::now() + limit;
        let mut backoff = Backoff::default();
        while !self.sent(&mut send)? {
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("MPI rank {dest} did not take a message within {limit:?}"),
                ));
            }
            backoff.pause();
        }
        Ok(())
    }

    /// A waiting message's (source, tag, length), if any.
    pub(super) fn probe(&self) -> Result<Option<(c_int, c_int, usize)>> {
        let (mut source, mut tag, mut len) = (0, 0, 0usize);
        // SAFETY: the shim's iprobe writes the three out-parameters, which are valid locals.
        match unsafe { (self.iprobe)(self.context, &mut source, &mut tag, &mut len) } {
            1 => Ok(Some((source, tag, len))),
            0 => Ok(None),
            code => Err(mpi_error("probe", code)),
        }
    }

    /// Receives the message `probe` announced into `buf` (resized to its length).
    pub(super) fn receive(
        &self,
        source: c_int,
        tag: c_int,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        buf.clear();
        buf.resize(len, 0);
        // SAFETY: `buf` has room for `len` bytes, the length iprobe announced for this message.
        let code = unsafe { (self.recv)(self.context, source, tag, buf.as_mut_ptr(), len) };
        if code != 0 {
            return Err(mpi_error("receive", code));
        }
        Ok(())
    }
}
