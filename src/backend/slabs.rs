//! Result slabs: how a result above max_nbytes gets from a worker process to the caller without
//! crossing the socket, and without fresh pages on either side once an executor has served one.
//!
//! A slab is an unnamed file in the call's temp folder. The task writes its result straight into
//! the worker's shared mapping of it (`pj_out_alloc` hands out a window of the slab,
//! `pj_out_set` copies into one: [`WorkerSlabs`], the worker's [`LargeSink`]); the outcome names
//! the slab, and the caller reads the result in place through its own read-only mapping of the
//! file ([`SlabResult`]), kept with the slab. When the caller frees the results, the slab goes
//! back to its executor's [`ResultSlabs`] (at most [`KEPT_BYTES`] of them are kept, like the other
//! memory an executor keeps for reuse), and the next batches are lent kept slabs to write into:
//! pages that exist and that the caller has mapped already. A worker makes a new slab only when
//! no lent one is large enough; its descriptor goes to the caller with the outcome.
//!
//! Lifetimes: a lent slab is the worker's to write only while the batch it came with runs; the
//! proxy takes back what the outcome did not use (and everything, when the worker died or was
//! killed: a dead worker writes nothing). A slab holding a result is the caller's alone until the
//! results are freed. Results that outlive their executor hold their slab themselves: it is
//! unmapped and closed when they are freed. An executor's kept slabs go when it is freed. A
//! worker keeps the descriptors and mappings of the slabs lent with its last batch (a kept worker
//! then writes into pages it has mapped); it drops the others, and those it made, after each
//! batch.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::error::Result;
use crate::memmap::{BackingFile, MapAccess, Mapping};
use crate::task::{KEPT_BYTES, LargeOutput, LargeSink};

/// Slab ids: unique in the process, never 0 (what an outcome says for a slab the worker made).
static NEXT_SLAB_ID: AtomicU64 = AtomicU64::new(1);

/// A slab as the caller holds it: the file and the caller's read-only mapping of all of it.
#[derive(Debug)]
pub struct Slab {
    id: u64,
    fd: OwnedFd,
    map: Mapping,
}

impl Slab {
    /// A slab a worker made and sent: mapped read-only (kept out of workers forked later).
    pub fn adopt(fd: OwnedFd) -> Result<Slab> {
        let map = Mapping::map_whole(fd.as_fd(), MapAccess::ReadOnly)?;
        // Read in place by the caller: nothing may write through it (see `SlabResult::as_ref`).
        debug_assert_eq!(map.access(), MapAccess::ReadOnly);
        map.dont_fork()?;
        Ok(Slab {
            id: NEXT_SLAB_ID.fetch_add(1, Ordering::Relaxed),
            fd,
            map,
        })
    }

    /// Its id, as batches and outcomes name it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its size in bytes.
    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    /// The descriptor, to lend the slab to a worker.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An executor's kept result slabs (cheap to clone: every clone is the same space). One lock
/// per batch, and none while the space is empty (an executor whose results never exceeded
/// max_nbytes).
#[derive(Clone, Debug, Default)]
pub struct ResultSlabs(Arc<Space>);

#[derive(Debug, Default)]
struct Space {
    kept: Mutex<Kept>,
    /// How many slabs `kept` holds: read without the lock.
    count: AtomicUsize,
}

#[derive(Debug, Default)]
struct Kept {
    slabs: Vec<Slab>,
    /// Their capacity, in bytes.
    bytes: usize,
}

impl ResultSlabs {
    /// Up to `max` kept slabs for a batch of `max` tasks (each makes one result at most), the
    /// largest first; taken out of the space until given back.
    pub fn lend(&self, max: usize) -> Vec<Slab> {
        if max == 0 || self.0.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut kept = self.0.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.slabs.sort_unstable_by_key(Slab::capacity);
        let from = kept.slabs.len().saturating_sub(max);
        let lent: Vec<Slab> = kept.slabs.drain(from..).collect();
        kept.bytes -= lent.iter().map(Slab::capacity).sum::<usize>();
        self.0.count.store(kept.slabs.len(), Ordering::Relaxed);
        lent
    }

    /// Keeps `slabs` for later batches, as far as the bound allows; the rest are closed.
    pub fn give_back(&self, slabs: impl IntoIterator<Item = Slab>) {
        self.0.give_back(slabs);
    }

    /// The output of a result of `len` bytes at the start of `slab`, read in place; the slab
    /// comes back here when the output is dropped.
    pub fn output(&self, slab: Slab, len: usize) -> LargeOutput {
        LargeOutput::new(SlabResult {
            slab: Some(slab),
            len,
            home: Arc::downgrade(&self.0),
        })
    }

    /// Number of slabs kept (a test's view).
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl Space {
    fn give_back(&self, slabs: impl IntoIterator<Item = Slab>) {
        let mut refused = Vec::new();
        {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            for slab in slabs {
                let size = slab.capacity();
                // Smaller kept slabs make room for a larger one (the sizes of recent results
                // replace those of an earlier phase, which would otherwise keep them out), when
                // that is enough.
                let smaller: usize = kept
                    .slabs
                    .iter()
                    .map(Slab::capacity)
                    .filter(|&c| c < size)
                    .sum();
                if (kept.bytes - smaller).saturating_add(size) > KEPT_BYTES {
                    refused.push(slab);
                    continue;
                }
                while kept.bytes.saturating_add(size) > KEPT_BYTES {
                    let smallest = (0..kept.slabs.len())
                        .min_by_key(|&at| kept.slabs[at].capacity())
                        .filter(|&at| kept.slabs[at].capacity() < size);
                    let Some(at) = smallest else { break };
                    let evicted = kept.slabs.swap_remove(at);
                    kept.bytes -= evicted.capacity();
                    refused.push(evicted);
                }
                if kept.bytes.saturating_add(size) <= KEPT_BYTES {
                    kept.bytes += size;
                    kept.slabs.push(slab);
                } else {
                    refused.push(slab);
                }
            }
            self.count.store(kept.slabs.len(), Ordering::Relaxed);
        }
        // Unmapped and closed outside the lock.
        drop(refused);
    }
}

/// A result in a slab: its first `len` bytes, read in place by the caller until its results are
/// freed; the slab then goes back to its executor, or is closed when the executor is gone.
struct SlabResult {
    slab: Option<Slab>,
    len: usize,
    home: Weak<Space>,
}

impl AsRef<[u8]> for SlabResult {
    fn as_ref(&self) -> &[u8] {
        match &self.slab {
            Some(slab) if self.len > 0 && !slab.map.is_empty() => {
                // SAFETY: a read-only mapping of at least `len` bytes (checked when the result
                // was received), unmapped only when the slab is dropped, which the borrow of
                // `self` prevents while the slice lives; no worker writes the slab until it is
                // lent again, after this result is dropped.
                unsafe { std::slice::from_raw_parts(slab.map.as_ptr(), self.len) }
            }
            _ => &[],
        }
    }
}

impl Drop for SlabResult {
    fn drop(&mut self) {
        if let (Some(slab), Some(home)) = (self.slab.take(), self.home.upgrade()) {
            home.give_back([slab]);
        }
    }
}

/// Where a worker's tasks write their outputs above max_nbytes: the slabs lent with the batch,
/// else slabs it makes (at most `max_made` per batch: their descriptors travel with the outcome;
/// later outputs stay in the arena).
#[derive(Default)]
pub struct WorkerSlabs {
    above: usize,
    max_made: usize,
    held: Vec<Held>,
    /// The running task's window: an index into `held`.
    current: Option<usize>,
    /// The outputs in slabs: (task index, length, index into `held`).
    results: Vec<(usize, usize, usize)>,
    made: usize,
    /// Why a slab could not be made (the first time), for the batch's failure.
    pub error: Option<String>,
    folder: std::path::PathBuf,
}

struct Held {
    /// The caller's id; 0 for a slab made here.
    id: u64,
    fd: OwnedFd,
    capacity: usize,
    /// The worker's writable mapping, made when a task first needs the slab.
    map: Option<Mapping>,
    used: bool,
    /// May hold bytes of an earlier output (zeroed again before `pj_out_alloc` hands it out).
    dirty: bool,
}

impl WorkerSlabs {
    /// Starts a batch whose outputs above `above` bytes go to slabs (`usize::MAX`: none): `lent`
    /// lists the slabs lent with it, as (id, capacity, descriptor if it came with this frame).
    /// Slabs held from an earlier batch and not lent now are dropped, as are those made earlier.
    pub fn begin(
        &mut self,
        above: usize,
        folder: &Path,
        max_made: usize,
        lent: Vec<(u64, usize, Option<OwnedFd>)>,
    ) {
        self.held
            .retain(|h| h.id != 0 && lent.iter().any(|(id, _, _)| *id == h.id));
        for (id, capacity, fd) in lent {
            if let Some(fd) = fd {
                self.held.retain(|h| h.id != id);
                self.held.push(Held {
                    id,
                    fd,
                    capacity,
                    map: None,
                    used: false,
                    dirty: true,
                });
            }
        }
        for held in &mut self.held {
            held.used = false;
        }
        self.above = above;
        self.max_made = max_made;
        self.current = None;
        self.results.clear();
        self.made = 0;
        self.error = None;
        if above != usize::MAX && folder != self.folder {
            self.folder = folder.to_path_buf();
        }
    }

    /// The outputs the batch wrote into slabs: (task index, length, slab id: 0 for one made here,
    /// whose descriptor is the next of [`WorkerSlabs::made_fds`]).
    pub fn listed(&self) -> Vec<crate::backend::wire::SlabResultRef> {
        self.results
            .iter()
            .map(|&(index, len, at)| (index, len, self.held[at].id))
            .collect()
    }

    /// The descriptors of the slabs made here that hold outputs, in the order of
    /// [`WorkerSlabs::listed`].
    pub fn made_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.results
            .iter()
            .map(|&(_, _, at)| &self.held[at])
            .filter(|h| h.id == 0)
            .map(|h| h.fd.as_fd())
            .collect()
    }

    /// Forgets the batch's outputs (the batch failed as a whole: none is sent).
    pub fn discard(&mut self) {
        self.results.clear();
    }

    /// After the outcome was sent: the slabs made for it are the caller's now.
    pub fn end_batch(&mut self) {
        self.held.retain(|h| h.id != 0);
        self.results.clear();
        self.current = None;
    }

    /// A slab of at least `len` bytes, free in this batch: the smallest lent one, else a new one.
    fn free_slab(&mut self, len: usize) -> Option<usize> {
        let lent = self
            .held
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.used && h.capacity >= len)
            .min_by_key(|(_, h)| h.capacity)
            .map(|(at, _)| at);
        if lent.is_some() {
            return lent;
        }
        if self.made >= self.max_made || self.error.is_some() {
            return None;
        }
        let page = rustix::param::page_size();
        let capacity = len.checked_add(page - 1)? / page * page;
        match BackingFile::create(&self.folder, capacity as u64) {
            Ok(file) => {
                self.made += 1;
                self.held.push(Held {
                    id: 0,
                    fd: file.into_fd(),
                    capacity,
                    map: None,
                    used: false,
                    dirty: false,
                });
                Some(self.held.len() - 1)
            }
            Err(error) => {
                self.error = Some(error.message().to_owned());
                None
            }
        }
    }
}

impl LargeSink for WorkerSlabs {
    fn above(&self) -> usize {
        self.above
    }

    fn window(&mut self, len: usize, zeroed: bool) -> Option<NonNull<u8>> {
        self.release();
        let at = self.free_slab(len)?;
        let held = &mut self.held[at];
        if held.map.is_none() {
            let map = Mapping::map_whole(held.fd.as_fd(), MapAccess::Shared).ok()?;
            // The pages the output needs, mapped at once rather than faulted in one by one.
            map.populate_read(0, len);
            held.map = Some(map);
        }
        let map = held.map.as_ref()?;
        if map.len() < len {
            return None;
        }
        let start = NonNull::new(map.as_ptr())?;
        if zeroed && held.dirty {
            // SAFETY: `len` bytes of a writable shared mapping of at least that size.
            unsafe { std::ptr::write_bytes(start.as_ptr(), 0, len) };
        }
        held.dirty = true;
        held.used = true;
        self.current = Some(at);
        Some(start)
    }

    fn release(&mut self) {
        if let Some(at) = self.current.take() {
            self.held[at].used = false;
        }
    }

    fn commit(&mut self, index: usize, len: usize) {
        if let Some(at) = self.current.take() {
            self.results.push((index, len, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::testing::TempDir;

    const MIB: usize = 1 << 20;

    /// A slab of `mib` MiB, sparse: no memory behind it.
    fn slab(dir: &TempDir, mib: usize) -> Slab {
        let file = BackingFile::create_sparse(dir.path(), (mib * MIB) as u64).unwrap();
        Slab::adopt(file.into_fd()).unwrap()
    }

    fn capacities(slabs: &[Slab]) -> Vec<usize> {
        slabs.iter().map(|s| s.capacity() / MIB).collect()
    }

    #[test]
    fn kept_slabs_are_bounded_and_larger_ones_replace_smaller_ones() {
        let dir = TempDir::new();
        let space = ResultSlabs::default();
        assert!(space.lend(4).is_empty(), "nothing kept: nothing lent");
        space.give_back([slab(&dir, 16), slab(&dir, 64), slab(&dir, 100)]);
        assert_eq!(space.kept(), 3);
        // 150 MiB do not fit beside 180 MiB: smaller ones go, smallest first, until they do.
        space.give_back([slab(&dir, 150)]);
        assert_eq!(space.kept(), 2);
        let lent = space.lend(1);
        assert_eq!(capacities(&lent), [150], "the largest first");
        let rest = space.lend(8);
        assert_eq!(capacities(&rest), [100]);
        space.give_back(lent);
        space.give_back(rest);
        // Nothing smaller to make room with, or too large for the bound at all: not kept, and
        // nothing kept is dropped for it.
        space.give_back([slab(&dir, 100)]);
        assert_eq!(space.kept(), 2);
        space.give_back([slab(&dir, KEPT_BYTES / MIB + 1)]);
        assert_eq!(space.kept(), 2);
        let all = space.lend(8);
        assert_eq!(capacities(&all), [100, 150]);
        drop(all);
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    #[test]
    fn a_result_gives_its_slab_back_when_dropped_unless_the_executor_is_gone() {
        let dir = TempDir::new();
        let space = ResultSlabs::default();
        let output = space.output(slab(&dir, 1), 10);
        assert_eq!(output.bytes(), [0; 10]);
        assert_eq!(space.kept(), 0, "the result holds it");
        drop(output);
        assert_eq!(space.kept(), 1);
        let orphan = space.output(space.lend(1).pop().unwrap(), 5);
        drop(space);
        assert_eq!(
            orphan.bytes().len(),
            5,
            "readable after its executor is gone"
        );
        drop(orphan);
    }
}
