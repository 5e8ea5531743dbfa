//! How a call's task arguments reach its workers: copied into the batch, or, for process workers,
//! arguments above max_nbytes written once to an unnamed file in the temp folder and mapped by the
//! workers instead of travelling through every worker's socket.
//!
//! The dispatcher holds the call's [`Stager`] and hands it every argument without knowing what it
//! does with it; the call's [`CallFiles`] travel with its batches (in [`super::CallLink`]) to the
//! proxies that pass the files to their workers.
//!
//! A spill file is created on the first argument that needs it (a call with nothing above
//! max_nbytes creates none), after resolving the temp folder for this call and checking it, so a
//! bad folder is an IO error naming it before the task that needed it runs. With mmap_mode "r"
//! (the default) and "c", the same content submitted many times is written once; with "r+" and
//! "w+" each task gets its own copy, so that one task's writes never reach another's argument.
//! The files are unnamed: they go when the call's last descriptor and the workers' mappings do.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::MmapMode;
use crate::error::{Error, ErrorKind, Result};
use crate::memmap::folder::{prepare_temp_folder, resolve_temp_folder};
use crate::memmap::{MapAccess, Spill};
use crate::task::{ArgBuffers, ArgRef, Batch, Callback};

/// When and how a call spills large arguments to files (process backend only).
#[derive(Clone, Debug)]
pub struct SpillOptions {
    /// Arguments strictly larger than this go through a file.
    pub above: u64,
    /// How workers map them.
    pub mode: MmapMode,
    /// The temp_folder option, if set (resolved at the first spill).
    pub folder: Option<PathBuf>,
}

/// Spill file ids: unique in the process, so a kept worker never confuses two calls' files.
static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// A spill file's id and descriptor.
#[derive(Clone, Debug)]
struct SpillFile {
    /// Unique in this process.
    id: u64,
    /// The open, unnamed file.
    fd: Arc<OwnedFd>,
}

/// What a call shares with its process workers beyond each batch: how they map spilled
/// arguments, where they send large results, and the spill files written so far.
#[derive(Debug)]
pub struct CallFiles {
    /// How workers map spilled arguments (mmap_mode).
    pub access: MapAccess,
    /// Workers send results longer than this many bytes back through files in this folder (a
    /// path, as bytes).
    pub results: (u64, Vec<u8>),
    /// Appended by the dispatcher's thread as arguments spill, read by proxies for the batches
    /// that refer to them (only batches with spilled arguments take the lock).
    files: Mutex<Vec<SpillFile>>,
}

impl CallFiles {
    /// The files `batch` refers to that are not in `sent` (the ids a worker already has), each
    /// once, in the order the batch first refers to them: (id, descriptor).
    pub fn unsent(&self, batch: &Batch, sent: &[u64]) -> Vec<(u64, Arc<OwnedFd>)> {
        let mut unsent: Vec<(u64, Arc<OwnedFd>)> = Vec::new();
        if batch.spilled.is_empty() {
            return unsent;
        }
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, at) in &batch.spilled {
            if sent.contains(&at.file) || unsent.iter().any(|(id, _)| *id == at.file) {
                continue;
            }
            // A file the batch refers to was published before the batch was dispatched.
            if let Some(file) = files.iter().find(|f| f.id == at.file) {
                unsent.push((file.id, file.fd.clone()));
            }
        }
        unsent
    }
}

/// How a call adds each task's argument to its batch: [`Stager::push`].
#[derive(Debug, Default)]
pub struct Stager {
    /// `None`: every argument is copied into its batch.
    spill: Option<Spilling>,
    /// The executor's argument buffers, reused by every batch made through [`Stager::batch`].
    buffers: ArgBuffers,
}

/// A call whose large arguments go through files.
#[derive(Debug)]
struct Spilling {
    options: SpillOptions,
    /// The files, once the first argument was written.
    written: Option<Spill>,
    shared: Arc<CallFiles>,
}

impl Stager {
    /// A stager that spills arguments as `options` says (`None`: copies every argument).
    pub fn new(options: Option<SpillOptions>) -> Self {
        let spill = options.map(|options| {
            // Where workers write large results: resolved now (cheap, no file is created); the
            // worker reports a bad folder when it first needs it.
            let folder = resolve_temp_folder(options.folder.as_deref());
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(folder.path.as_os_str()).to_vec();
            let shared = Arc::new(CallFiles {
                access: options.mode.into(),
                results: (options.above, bytes),
                files: Mutex::new(Vec::new()),
            });
            Spilling {
                options,
                written: None,
                shared,
            }
        });
        Stager {
            spill,
            buffers: ArgBuffers::default(),
        }
    }

    /// A stager whose batches reuse `buffers` (kept by the executor across its calls).
    pub fn with_buffers(mut self, buffers: ArgBuffers) -> Self {
        self.buffers = buffers;
        self
    }

    /// An empty batch for tasks from index `first` on, room for `capacity` tasks
    /// ([`Batch::new`]), whose arguments go into a reused buffer.
    pub fn batch(&self, first: usize, capacity: usize) -> Batch {
        Batch::with_buffers(first, capacity, &self.buffers)
    }

    /// What the call's batches carry to its workers, when it spills.
    pub fn files(&self) -> Option<Arc<CallFiles>> {
        self.spill.as_ref().map(|s| s.shared.clone())
    }

    /// Appends a task to `batch`, with its argument copied into the batch or written to the
    /// call's spill file. An I/O error, with the batch unchanged, when the copy cannot be
    /// allocated or the file cannot be written (a full or bad temp folder: the error names it).
    #[inline]
    pub fn push(&mut self, batch: &mut Batch, callback: Callback, arg: &[u8]) -> Result<()> {
        match &mut self.spill {
            Some(spill) if arg.len() as u64 > spill.options.above => {
                let at = spill.write(arg)?;
                batch.push_spilled(callback, at);
                Ok(())
            }
            _ => batch.push(callback, arg),
        }
    }
}

impl Spilling {
    /// Writes `arg` (or finds it written already) and says where it lives; publishes a file
    /// created for it to the call's workers.
    #[cold]
    fn write(&mut self, arg: &[u8]) -> Result<ArgRef> {
        let spill = match &mut self.written {
            Some(spill) => spill,
            empty => {
                let folder = prepare_temp_folder(self.options.folder.as_deref(), arg.len() as u64)?;
                empty.insert(Spill::new(folder.path))
            }
        };
        let at = if matches!(self.options.mode, MmapMode::R | MmapMode::C) {
            spill.get_or_write(arg)?
        } else {
            spill.write_new(arg)?
        };
        let mut files = self
            .shared
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while files.len() <= at.file {
            let index = files.len();
            let file = spill.file(index).ok_or_else(|| {
                Error::new(ErrorKind::Panic, "pj internal error: a spill file vanished")
            })?;
            let fd = file.fd().as_fd().try_clone_to_owned().map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot share a spill file: {e}"))
            })?;
            files.push(SpillFile {
                id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
                fd: Arc::new(fd),
            });
        }
        Ok(ArgRef {
            file: files[at.file].id,
            offset: at.offset,
            len: at.len,
        })
    }
}
