//! The worker's side of memmapping: mapping spilled arguments it receives, and sending results
//! above max_nbytes back through files instead of the socket.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::memmap::{BackingFile, MapAccess, Mapping};
use crate::task::{Batch, BatchOutcome, TaskFailure};

/// A worker's view of spilled arguments: the files it received and its mappings of them, for
/// one spill epoch (kept across the calls of a kept worker while the epoch lasts).
#[derive(Default)]
pub struct SpillMaps {
    /// The spill epoch these files belong to.
    pub epoch: u64,
    pub files: HashMap<u64, OwnedFd>,
    /// Read-only mappings of whole files, kept for the epoch: an argument is a view into one, so
    /// "the same big array to every task" is mapped once per worker, and the next call's
    /// arguments, written into the same pages, need neither a mapping nor a page fault.
    whole: HashMap<u64, Mapping>,
    /// Writable mappings (mmap_mode r+, w+, c): one per task, dropped after the batch, so that
    /// a task's private writes never reach another task.
    private: Vec<Mapping>,
}

impl SpillMaps {
    /// Empty, for the batches of spill epoch `epoch`.
    pub fn for_epoch(epoch: u64) -> Self {
        SpillMaps {
            epoch,
            ..SpillMaps::default()
        }
    }

    /// Maps every spilled argument of `batch`; returns (task index, bytes) sorted by index.
    pub fn map_batch(&mut self, batch: &Batch, access: MapAccess) -> Result<Vec<(usize, &[u8])>> {
        if batch.spilled.is_empty() {
            return Ok(Vec::new());
        }
        let mut private_at = Vec::new();
        for (_, at) in &batch.spilled {
            let fd = self
                .files
                .get(&at.file)
                .ok_or_else(|| Error::new(ErrorKind::Io, "a spill file was never received"))?;
            if access == MapAccess::ReadOnly {
                let mapping = match self.whole.entry(at.file) {
                    Entry::Occupied(slot) => slot.into_mut(),
                    Entry::Vacant(slot) => slot.insert(Mapping::map_whole(fd.as_fd(), access)?),
                };
                let fits = (at.offset as usize)
                    .checked_add(at.len)
                    .is_some_and(|end| end <= mapping.len());
                if !fits {
                    return Err(Error::new(
                        ErrorKind::Io,
                        "a spilled argument lies outside its file",
                    ));
                }
            } else {
                private_at.push(self.private.len());
                self.private
                    .push(Mapping::map(fd.as_fd(), at.offset, at.len, access)?);
            }
        }
        let mut private = private_at.into_iter();
        let views = batch
            .spilled
            .iter()
            .map(|(index, at)| {
                let start = if access == MapAccess::ReadOnly {
                    // In bounds: checked above.
                    self.whole[&at.file]
                        .as_ptr()
                        .wrapping_add(at.offset as usize)
                } else {
                    self.private[private.next().unwrap_or_default()].as_ptr()
                };
                // SAFETY: `start` begins `at.len` mapped bytes (checked above, or a mapping of
                // that length), which outlive the views: the worker drops them before
                // `end_batch` unmaps private mappings, and whole-file ones live for the epoch.
                let bytes = unsafe { std::slice::from_raw_parts(start, at.len) };
                (*index, bytes)
            })
            .collect();
        Ok(views)
    }

    /// Drops the per-task writable mappings of the batch that just ran.
    pub fn end_batch(&mut self) {
        self.private.clear();
    }
}

/// A result written to a file by the worker: its task, length, and the file (sent to the parent).
#[derive(Debug)]
pub struct SpilledResult {
    /// The task's index.
    pub index: usize,
    /// The result's length in bytes.
    pub len: usize,
    /// The unnamed file holding it.
    pub fd: OwnedFd,
}

/// Moves every result longer than `above` bytes (at most `max` of them; later ones stay inline)
/// out of `outcome` into its own unnamed file in `folder` (its entry in `outcome.ends` becomes
/// empty), so that it travels as a descriptor.
///
/// A result that cannot be written to a file (a full, missing or unwritable folder) fails its own
/// task, never another: with on_error=collect (`collect`) that task joins `outcome.errors` with
/// an empty output and the rest of the batch comes back; otherwise it becomes the batch's failure
/// and the results after it are dropped (the call ends there, as when that task itself failed).
pub fn spill_results(
    outcome: &mut BatchOutcome,
    above: u64,
    folder: &Path,
    max: usize,
    collect: bool,
) -> Vec<SpilledResult> {
    let mut spilled = Vec::new();
    // Offsets (in `ends`) of the results that leave the arena: spilled, or failed.
    let (mut moved, mut moved_bytes) = (Vec::new(), 0);
    let mut start = 0;
    for offset in 0..outcome.ends.len() {
        let end = outcome.ends[offset];
        let len = end - start;
        let index = outcome.first + offset;
        if len as u64 > above && spilled.len() < max {
            match write_result(folder, &outcome.data[start..end]) {
                Ok(fd) => spilled.push(SpilledResult { index, len, fd }),
                Err(error) => {
                    let failure = TaskFailure::Io(format!(
                        "cannot return a result through a file: {}",
                        error.message()
                    ));
                    if !collect {
                        outcome.failure = Some((index, failure));
                        outcome.ends.truncate(offset);
                        outcome.data.truncate(start);
                        break;
                    }
                    let at = outcome.errors.partition_point(|(i, _)| *i < index);
                    outcome.errors.insert(at, (index, failure));
                }
            }
            moved.push(offset);
            moved_bytes += len;
        }
        start = end;
    }
    if moved.is_empty() {
        return spilled;
    }
    // Rebuild the arena without the results that left it.
    let mut data = Vec::with_capacity(outcome.data.len() - moved_bytes);
    let mut ends = Vec::with_capacity(outcome.ends.len());
    let (mut start, mut next) = (0, moved.iter().peekable());
    for (offset, &end) in outcome.ends.iter().enumerate() {
        if next.next_if(|&&m| m == offset).is_none() {
            data.extend_from_slice(&outcome.data[start..end]);
        }
        ends.push(data.len());
        start = end;
    }
    outcome.data = data.into();
    outcome.ends = ends;
    spilled
}

/// `bytes` in a new unnamed file in `folder`, its space reserved first.
fn write_result(folder: &Path, bytes: &[u8]) -> Result<OwnedFd> {
    let file = BackingFile::create(folder, bytes.len() as u64)?;
    file.write_all_at(0, bytes).map_err(|error| {
        Error::new(
            ErrorKind::Io,
            format!("cannot write a result file: {error}"),
        )
    })?;
    Ok(file.into_fd())
}

/// In the parent: maps the results a worker sent through files, read-only.
pub fn map_results(files: Vec<(usize, usize)>, fds: Vec<OwnedFd>) -> Result<Vec<(usize, Mapping)>> {
    if files.len() != fds.len() {
        return Err(Error::new(
            ErrorKind::Io,
            "a worker sent result files that do not match its outcome",
        ));
    }
    files
        .into_iter()
        .zip(fds)
        .map(|((index, len), fd)| {
            Ok((
                index,
                Mapping::map(fd.as_fd(), 0, len, MapAccess::ReadOnly)?,
            ))
        })
        .collect()
}
