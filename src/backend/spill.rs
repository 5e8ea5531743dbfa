//! The worker's side of memmapping: mapping the spilled arguments it receives (results above
//! max_nbytes go back through result slabs: `backend::slabs`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, ErrorKind, Result};
use crate::memmap::{MapAccess, Mapping};
use crate::task::Batch;

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
