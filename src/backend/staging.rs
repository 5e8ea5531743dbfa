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
//! The files are unnamed: they go when the last descriptor and the workers' mappings do.
//!
//! The files outlive the call: its executor keeps them in its [`SpillSpace`] (up to
//! [`KEPT_SPILL_BYTES`] reserved), and its next call writes its arguments into them again, at the
//! same offsets, once every task of the previous call has ended ([`Stager::end_call`]). Kept
//! workers keep their descriptors and read-only mappings too, so in the steady state an argument
//! costs one copy into pages that exist and are mapped already: no file created, no space
//! reserved, no page fault, nothing unmapped or freed. The files and mappings a worker holds are
//! those of one *spill epoch*; a new epoch (the executor's first spilling call, a call that resolved
//! another temp folder, or space dropped for being too large) makes workers drop the old ones.

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

/// Spill file ids: unique in the process, so a kept worker never confuses two sets of files.
static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// A new spill file id, unique in the process.
pub fn next_spill_file_id() -> u64 {
    NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed)
}

/// Spill epochs: unique in the process, never 0 (what a call without spill files sends).
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// An executor keeps its spill files for its next call while they hold at most this many
/// reserved bytes (what an idle executor holds of its temp folder, released when it is freed);
/// larger ones go at the end of their call.
pub const KEPT_SPILL_BYTES: u64 = 256 << 20;

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
    /// The spill epoch of `files` (0 until the call has any): changed by the dispatcher's thread
    /// before it publishes the files of a new epoch, so a batch that refers to them, dispatched
    /// later, is sent with the new epoch.
    epoch: AtomicU64,
}

impl CallFiles {
    /// The spill epoch whose files the call's batches refer to: a worker that holds another
    /// epoch's files drops them and receives this one's.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// For a call whose arguments all travel inline but whose results above `above` bytes go
    /// back through result slabs in the temp folder resolved from the environment (an MPI worker
    /// rank's local pool).
    pub fn results_only(above: u64) -> Arc<CallFiles> {
        let folder = resolve_temp_folder(None);
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(folder.path.as_os_str()).to_vec();
        Arc::new(CallFiles {
            access: MapAccess::ReadOnly,
            results: (above, bytes),
            files: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
        })
    }

    /// Publishes `files` (id, descriptor) as the call's spill files, under a new epoch (workers
    /// drop the files and mappings of the previous one): an MPI worker rank's landing files.
    pub fn publish(&self, files: &[(u64, Arc<OwnedFd>)]) {
        let mut published = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        published.clear();
        published.extend(files.iter().map(|(id, fd)| SpillFile {
            id: *id,
            fd: Arc::clone(fd),
        }));
        self.epoch.store(
            NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            Ordering::Release,
        );
    }

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

/// An executor's spill files between its calls (cheap to clone: every clone is the same space).
/// Taken by a call's [`Stager`] when the call starts and given back when it ends; a lock per call,
/// never per task.
#[derive(Clone, Debug)]
pub struct SpillSpace {
    kept: Arc<Mutex<Option<Kept>>>,
    /// Files holding more reserved bytes than this are not kept ([`KEPT_SPILL_BYTES`]).
    limit: u64,
}

impl Default for SpillSpace {
    fn default() -> Self {
        SpillSpace {
            kept: Arc::default(),
            limit: KEPT_SPILL_BYTES,
        }
    }
}

/// Spill files with the ids and descriptors published to workers.
#[derive(Debug)]
struct Kept {
    spill: Spill,
    /// One per file of `spill`, in the same order.
    files: Vec<SpillFile>,
    epoch: u64,
}

impl SpillSpace {
    fn take(&self) -> Option<Kept> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Keeps `kept` (emptied) for the next call, unless it holds more than the limit.
    fn give(&self, mut kept: Kept) {
        if kept.spill.reserved_bytes() <= self.limit {
            kept.spill.clear();
            *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
        }
    }

    /// A space that keeps files of at most `limit` reserved bytes.
    #[cfg(test)]
    fn with_limit(limit: u64) -> Self {
        SpillSpace {
            limit,
            ..SpillSpace::default()
        }
    }

    /// The number of files kept (0 when none are).
    #[cfg(test)]
    pub fn kept_files(&self) -> usize {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |k| k.files.len())
    }
}

/// A call whose large arguments go through files.
#[derive(Debug)]
struct Spilling {
    options: SpillOptions,
    /// The files: kept from an earlier call, or made at this call's first spilled argument.
    written: Option<Kept>,
    /// Whether this call checked its temp folder (at its first spilled argument).
    checked: bool,
    shared: Arc<CallFiles>,
    /// Where `written` goes back when the call ends, if the executor keeps it.
    space: Option<SpillSpace>,
    /// Every task of the call has ended ([`Stager::end_call`]): `written` may serve the next.
    ended: bool,
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
                epoch: AtomicU64::new(0),
            });
            Spilling {
                options,
                written: None,
                checked: false,
                shared,
                space: None,
                ended: false,
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

    /// A stager whose spill files come from, and go back to, `space` (kept by the executor across
    /// its calls): the files it holds are taken now and published to this call's workers.
    pub fn with_spill_space(mut self, space: &SpillSpace) -> Self {
        if let Some(spill) = &mut self.spill {
            if let Some(kept) = space.take() {
                spill.shared.epoch.store(kept.epoch, Ordering::Release);
                *spill
                    .shared
                    .files
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = kept.files.clone();
                spill.written = Some(kept);
            }
            spill.space = Some(space.clone());
        }
        self
    }

    /// Says that every task of the call has ended (no worker reads or writes its spilled
    /// arguments any more): when the stager is dropped, its files go back to its executor's
    /// [`SpillSpace`] for the next call. A stager dropped without it closes its files instead.
    pub fn end_call(&mut self) {
        if let Some(spill) = &mut self.spill {
            spill.ended = true;
        }
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
        if !self.checked {
            // Once per call: this call's folder, resolved and checked; files kept from an
            // earlier call in another folder are dropped for new ones (a new epoch).
            let folder = prepare_temp_folder(self.options.folder.as_deref(), arg.len() as u64)?;
            if self
                .written
                .as_ref()
                .is_none_or(|kept| kept.spill.folder() != folder.path)
            {
                self.written = Some(Kept {
                    spill: Spill::new(folder.path),
                    files: Vec::new(),
                    epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
                });
            }
            self.checked = true;
        }
        let Some(kept) = self.written.as_mut() else {
            unreachable!("the spill was just ensured")
        };
        let stage = crate::failpoint::Stage::SpillWrite;
        if let Some(injected) = crate::failpoint::hit(stage) {
            // A short write of the file is the same failure here: the argument is not stored.
            let error = injected.io_error(stage);
            return Err(crate::Error::new(crate::ErrorKind::Io, error.to_string()));
        }
        let at = if matches!(self.options.mode, MmapMode::R | MmapMode::C) {
            kept.spill.get_or_write(arg)?
        } else {
            kept.spill.write_new(arg)?
        };
        if self.shared.epoch.load(Ordering::Relaxed) != kept.epoch {
            // Before the new epoch's files are published (see `CallFiles::epoch`).
            let mut files = self
                .shared
                .files
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            files.clear();
            self.shared.epoch.store(kept.epoch, Ordering::Release);
        }
        while kept.files.len() <= at.file {
            let index = kept.files.len();
            let file = kept.spill.file(index).ok_or_else(|| {
                Error::new(ErrorKind::Panic, "pj internal error: a spill file vanished")
            })?;
            let fd = file.fd().as_fd().try_clone_to_owned().map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot share a spill file: {e}"))
            })?;
            let file = SpillFile {
                id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
                fd: Arc::new(fd),
            };
            self.shared
                .files
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(file.clone());
            kept.files.push(file);
        }
        Ok(ArgRef {
            file: kept.files[at.file].id,
            offset: at.offset,
            len: at.len,
        })
    }
}

impl Drop for Spilling {
    /// Gives the files back to the executor for its next call, emptied, when every task of this
    /// call has ended and they are not too large; else closes them (they go when the workers'
    /// mappings do).
    fn drop(&mut self) {
        if let (true, Some(space), Some(kept)) =
            (self.ended, self.space.as_ref(), self.written.take())
        {
            space.give(kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::testing::TempDir;
    use crate::task::TaskOutput;
    use std::ffi::c_void;

    unsafe extern "C" fn nothing(
        _: *mut c_void,
        _: *const u8,
        _: usize,
        _: *mut TaskOutput,
    ) -> i32 {
        0
    }

    fn stager(dir: &TempDir, space: &SpillSpace) -> Stager {
        Stager::new(Some(SpillOptions {
            above: 1000,
            mode: MmapMode::R,
            folder: Some(dir.path().to_path_buf()),
        }))
        .with_spill_space(space)
    }

    /// Pushes `args` as one call's tasks; returns where each went and the call's published
    /// (epoch, file ids).
    fn call(stager: &mut Stager, args: &[&[u8]]) -> (Vec<ArgRef>, (u64, Vec<u64>)) {
        // SAFETY: a plain function that ignores its (null) userdata.
        let callback = unsafe { Callback::new(nothing, std::ptr::null_mut()) };
        let mut batch = stager.batch(0, args.len());
        for arg in args {
            stager.push(&mut batch, callback, arg).unwrap();
        }
        let files = stager.files().unwrap();
        let ids = files.files.lock().unwrap().iter().map(|f| f.id).collect();
        let refs = batch.spilled.iter().map(|(_, at)| *at).collect();
        (refs, (files.epoch(), ids))
    }

    #[test]
    fn a_call_reuses_the_files_of_the_previous_one_once_it_ended() {
        let dir = TempDir::new();
        let space = SpillSpace::default();
        let (a, b, c) = (vec![1u8; 5000], vec![2u8; 5000], vec![3u8; 5000]);

        let mut first = stager(&dir, &space);
        assert_eq!(first.files().unwrap().epoch(), 0, "no files yet");
        let (refs, published) = call(&mut first, &[&a, &b, &a]);
        assert_eq!(refs[0], refs[2], "the same content once");
        assert_ne!(published.0, 0);
        assert_eq!(published.1.len(), 1);
        first.end_call();
        drop(first);
        assert_eq!(space.kept_files(), 1);

        // The next call starts with the kept files published, under the same epoch, and writes
        // at the same places: `c` where `a` was (the index was forgotten, so `a` is written anew).
        let mut second = stager(&dir, &space);
        assert_eq!(space.kept_files(), 0, "taken by the call");
        assert_eq!(second.files().unwrap().epoch(), published.0);
        let (again, republished) = call(&mut second, &[&c, &b, &a]);
        assert_eq!(republished, published);
        assert_eq!(&again[..2], &[refs[0], refs[1]]);
        assert_ne!(again[2], refs[0]);
        // Dropped before every task ended (say, a panic unwound the call): the files are closed,
        // not reused, and the next call has a new epoch.
        drop(second);
        assert_eq!(space.kept_files(), 0);
        let mut third = stager(&dir, &space);
        assert_eq!(third.files().unwrap().epoch(), 0);
        let (_, fresh) = call(&mut third, &[&a]);
        assert_ne!(fresh.0, published.0);
        assert_ne!(fresh.1, published.1);

        // Another temp folder: new files, new epoch.
        third.end_call();
        drop(third);
        let other = TempDir::new();
        let mut fourth = stager(&other, &space);
        assert_eq!(fourth.files().unwrap().epoch(), fresh.0);
        let (_, moved) = call(&mut fourth, &[&a]);
        assert_ne!(moved.0, fresh.0);
        assert_ne!(moved.1, fresh.1);
        assert_eq!(
            moved.1.len(),
            1,
            "the old folder's files are no longer published"
        );
        drop(fourth);
        assert_eq!(dir.entries(), Vec::<String>::new());
        assert_eq!(other.entries(), Vec::<String>::new());
    }

    #[test]
    fn files_too_large_to_keep_are_closed_at_the_end_of_their_call() {
        let dir = TempDir::new();
        let space = SpillSpace::with_limit(8192);
        for (len, kept) in [(8192, 1), (8193, 0)] {
            let mut stager = stager(&dir, &space);
            call(&mut stager, &[&vec![9u8; len]]);
            stager.end_call();
            drop(stager);
            assert_eq!(space.kept_files(), kept, "{len} bytes");
        }
        assert_eq!(SpillSpace::default().limit, KEPT_SPILL_BYTES);
    }
}
