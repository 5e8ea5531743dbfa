//! Byte buffers kept for reuse by one executor: the argument buffers of its batches and the
//! output arenas its tasks write their results into.
//!
//! A batch's argument bytes go back to its executor's [`BufferPool`] when the batch is dropped (on
//! whichever thread ran it), and the next batch of the same or a later call is filled into one of
//! them. An output arena ([`Arena`]) goes back when the last thing holding it is dropped: the
//! call's results (`pj_results_free`), or an outcome dropped unread (a failed or cancelled call),
//! and the next batch run by the executor writes its results into it. Either way the bytes are
//! copied once, into pages already mapped, instead of into fresh memory that the allocator zeroes
//! (or maps anew) for every batch and returns to the system when the batch ends.
//!
//! Arenas hold their pool weakly: results that outlive their executor stay valid, and their
//! memory is freed (not kept) when they go.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// At most this many buffers of each kind wait for reuse: room for the batches a call keeps in
/// flight and the pieces its tail is cut into (arguments), or for the batches of a call's results
/// (outputs), so that the next call finds one for each.
const KEPT: usize = 64;

/// At most this many bytes (of capacity) of each kind wait for reuse: what an idle executor keeps,
/// released when it is freed (process workers' result slabs are bounded alike).
pub const KEPT_BYTES: usize = 256 << 20;

/// An executor's free lists of byte buffers (cheap to clone: every clone is the same pool).
/// Taking and giving back never block on anything but one list's lock, taken once per batch
/// (never per task) for a scan of at most [`KEPT`] entries.
#[derive(Clone, Debug, Default)]
pub struct BufferPool(Arc<Shared>);

/// The executor's argument buffers: the pool's argument side ([`BufferPool::take`],
/// [`BufferPool::give`]).
pub type ArgBuffers = BufferPool;

#[derive(Debug)]
struct Shared {
    /// The fork generation the pool was made in: a forked child's copy of it is never used (a
    /// lock another thread of the parent held at the fork would stay held), its buffers are freed.
    born: u64,
    /// Argument buffers, emptied.
    args: Mutex<Kept>,
    /// Output arenas; each one's length is how many of its bytes are initialised.
    outputs: Mutex<Kept>,
    /// Output bytes per task that the executor's recent batches wrote: sizes a new arena.
    per_task: AtomicUsize,
    /// Arenas handed out that were not taken from `outputs` (a test's view of reuse).
    #[cfg(test)]
    fresh_outputs: AtomicUsize,
    /// Arenas of this pool that grew (reallocated) as their tasks wrote (a test's view of sizing).
    #[cfg(test)]
    grown_outputs: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            born: crate::fork::generation(),
            args: Mutex::default(),
            outputs: Mutex::default(),
            per_task: AtomicUsize::new(0),
            #[cfg(test)]
            fresh_outputs: AtomicUsize::new(0),
            #[cfg(test)]
            grown_outputs: AtomicUsize::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct Kept {
    buffers: Vec<Vec<u8>>,
    /// The capacity of `buffers`, in bytes.
    bytes: usize,
}

impl Kept {
    /// The kept buffer at `at`, removed.
    fn remove(&mut self, at: usize) -> Vec<u8> {
        let buffer = self.buffers.swap_remove(at);
        self.bytes -= buffer.capacity();
        buffer
    }

    /// Keeps `buffer` when the bounds allow; else hands it back to be freed.
    fn keep(&mut self, buffer: Vec<u8>) -> Option<Vec<u8>> {
        let size = buffer.capacity();
        if self.buffers.len() < KEPT && self.bytes.saturating_add(size) <= KEPT_BYTES {
            self.bytes += size;
            self.buffers.push(buffer);
            return None;
        }
        Some(buffer)
    }

    /// [`Kept::keep`], making room by freeing smaller kept buffers first: the sizes recent
    /// batches need replace those of an earlier phase (many small arenas would otherwise keep
    /// every later, larger one out for good).
    fn keep_evicting(&mut self, buffer: Vec<u8>) -> Option<Vec<u8>> {
        let size = buffer.capacity();
        while !self.buffers.is_empty()
            && (self.buffers.len() >= KEPT || self.bytes.saturating_add(size) > KEPT_BYTES)
        {
            let (at, smallest) = self
                .buffers
                .iter()
                .map(Vec::capacity)
                .enumerate()
                .min_by_key(|&(_, c)| c)
                .unwrap_or_default();
            if smallest >= size {
                break;
            }
            drop(self.remove(at));
        }
        self.keep(buffer)
    }
}

fn lock(list: &Mutex<Kept>) -> std::sync::MutexGuard<'_, Kept> {
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BufferPool {
    /// An empty argument buffer for `len` bytes (`None`: as many as will come): the smallest kept
    /// one that holds `len` bytes, else the largest kept one, else a new one.
    pub fn take(&self, len: Option<usize>) -> Vec<u8> {
        let mut kept = lock(&self.0.args);
        let capacities = kept.buffers.iter().map(Vec::capacity).enumerate();
        let best = match len {
            Some(len) => capacities
                .clone()
                .filter(|&(_, c)| c >= len)
                .min_by_key(|&(_, c)| c)
                .or_else(|| capacities.max_by_key(|&(_, c)| c)),
            None => capacities.max_by_key(|&(_, c)| c),
        };
        match best {
            Some((at, _)) => kept.remove(at),
            None => Vec::new(),
        }
    }

    /// Keeps argument buffer `buffer` for a later [`BufferPool::take`] (emptied; its capacity
    /// stays), or frees it when enough are kept already. A buffer that never held anything is not
    /// worth keeping.
    pub fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 || !self.0.here() {
            return;
        }
        buffer.clear();
        // Smaller kept buffers make room for a larger one (a call of larger arguments after a
        // phase of smaller ones would otherwise copy into fresh memory every time).
        let refused = lock(&self.0.args).keep_evicting(buffer);
        // Freed outside the lock (unmapping a large buffer is a system call).
        drop(refused);
    }

    /// An empty output arena for a batch of `tasks` tasks: a kept one that holds what the
    /// executor's recent batches wrote for that many tasks (the smallest such), else a new one
    /// with that much room. Never fails: when the room cannot be had, the arena starts empty and
    /// grows as its tasks write.
    pub fn take_output(&self, tasks: usize) -> Arena {
        // Never more than could be kept: a larger batch grows as its tasks write.
        let per_task = self.0.per_task.load(Ordering::Relaxed);
        let want = per_task.saturating_mul(tasks).min(KEPT_BYTES);
        let reused = {
            let mut kept = lock(&self.0.outputs);
            let best = kept
                .buffers
                .iter()
                .map(Vec::capacity)
                .enumerate()
                .filter(|&(_, c)| c >= want)
                .min_by_key(|&(_, c)| c);
            best.map(|(at, _)| kept.remove(at))
        };
        let bytes = reused.unwrap_or_else(|| {
            #[cfg(test)]
            self.0.fresh_outputs.fetch_add(1, Ordering::Relaxed);
            let mut bytes = Vec::new();
            // A size hint only: an arena that cannot have it grows as its tasks write.
            let _ = bytes.try_reserve_exact(want);
            bytes
        });
        Arena {
            bytes,
            len: 0,
            home: Some(Arc::downgrade(&self.0)),
        }
    }

    /// An empty buffer from the output side for result bytes a backend receives (a process proxy
    /// reading an outcome frame): the largest kept arena's storage, emptied, so that the bytes
    /// land in pages already mapped; a new empty one when none is kept. Hand the filled buffer to
    /// [`BufferPool::received`].
    pub fn take_received(&self) -> Vec<u8> {
        let reused = {
            let mut kept = lock(&self.0.outputs);
            let best = kept
                .buffers
                .iter()
                .map(Vec::capacity)
                .enumerate()
                .max_by_key(|&(_, c)| c);
            best.map(|(at, _)| kept.remove(at))
        };
        let mut bytes = reused.unwrap_or_default();
        bytes.clear();
        bytes
    }

    /// The arena of result bytes a backend received into `bytes` (from
    /// [`BufferPool::take_received`] or anywhere): given back to this pool's output side when
    /// dropped, as the arenas its own batches write.
    pub fn received(&self, bytes: Vec<u8>) -> Arena {
        Arena {
            len: bytes.len(),
            bytes,
            home: Some(Arc::downgrade(&self.0)),
        }
    }

    /// Records that a batch of `tasks` tasks wrote `bytes` bytes of output, to size later arenas:
    /// the largest recent bytes per task, forgotten slowly (a quarter per smaller batch).
    pub fn note_output(&self, bytes: usize, tasks: usize) {
        if tasks == 0 {
            return;
        }
        let per_task = bytes.div_ceil(tasks);
        let old = self.0.per_task.load(Ordering::Relaxed);
        let new = per_task.max(old - old / 4);
        if new != old {
            // A lost race only loses one batch's sample.
            self.0.per_task.store(new, Ordering::Relaxed);
        }
    }

    /// Number of argument buffers waiting for reuse.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        lock(&self.0.args).buffers.len()
    }

    /// Number of output arenas waiting for reuse.
    #[cfg(test)]
    pub fn kept_outputs(&self) -> usize {
        lock(&self.0.outputs).buffers.len()
    }

    /// Whether the pool still exists (a test's view, that holds it weakly).
    #[cfg(test)]
    pub fn alive(&self) -> impl Fn() -> bool + use<> {
        let weak = Arc::downgrade(&self.0);
        move || weak.strong_count() > 0
    }

    /// Number of arenas handed out that were not reused.
    #[cfg(test)]
    pub fn fresh_outputs(&self) -> usize {
        self.0.fresh_outputs.load(Ordering::Relaxed)
    }

    /// Number of arenas of this pool that had to grow as their tasks wrote.
    #[cfg(test)]
    pub fn grown_outputs(&self) -> usize {
        self.0.grown_outputs.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Whether this process is the one the pool was made in (not a forked child).
    fn here(&self) -> bool {
        self.born == crate::fork::generation()
    }

    /// Keeps an arena's buffer (its initialised bytes with it), or frees it when enough are kept.
    fn give_output(&self, bytes: Vec<u8>) {
        if bytes.capacity() == 0 || !self.here() {
            return;
        }
        let refused = lock(&self.outputs).keep_evicting(bytes);
        // Freed outside the lock (unmapping a large buffer is a system call).
        drop(refused);
    }
}

/// A batch's output bytes: the results of its tasks, one after another. Taken from its executor's
/// pool ([`BufferPool::take_output`]) and given back to it when dropped, if the executor still
/// exists; from anywhere else (`From<Vec<u8>>`) it is plain memory, freed when dropped.
///
/// Reads see the bytes written (`Deref` to `[u8]`). Beyond them, a reused arena keeps the bytes an
/// earlier batch wrote, initialised: writing in place ([`Arena::grow`]) zeroes them again (a
/// memset over pages already mapped, not a page fault), and only bytes no batch ever wrote are
/// zeroed as they are initialised.
#[derive(Default)]
pub struct Arena {
    /// Initialised storage: its length is how many bytes have ever been initialised (`len` and
    /// beyond), never reduced while the arena lives.
    bytes: Vec<u8>,
    /// The output bytes: `bytes[..len]`.
    len: usize,
    /// Where the storage goes back when dropped.
    home: Option<Weak<Shared>>,
}

impl Arena {
    /// Makes room for `additional` more bytes without reallocating later. False when the memory
    /// cannot be had (nothing changed).
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        let Some(needed) = self.len.checked_add(additional) else {
            return false;
        };
        match needed.checked_sub(self.bytes.len()) {
            None | Some(0) => true,
            Some(more) => {
                #[cfg(test)]
                if needed > self.bytes.capacity()
                    && let Some(shared) = self.home.as_ref().and_then(Weak::upgrade)
                {
                    shared.grown_outputs.fetch_add(1, Ordering::Relaxed);
                }
                self.bytes.try_reserve(more).is_ok()
            }
        }
    }

    /// Drops the output bytes from `len` on (nothing when there are fewer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends a copy of `data`.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let start = self.len;
        let end = start + data.len();
        let overlap = end.min(self.bytes.len());
        if overlap > start {
            let (over, rest) = data.split_at(overlap - start);
            self.bytes[start..overlap].copy_from_slice(over);
            self.bytes.extend_from_slice(rest);
        } else {
            self.bytes.extend_from_slice(data);
        }
        self.len = end;
    }

    /// Appends `len` zeroed bytes and returns them for writing in place. Bytes an earlier output
    /// left in a reused arena are zeroed again (`pj_out_alloc` promises zeroes: no task sees
    /// another's output); storage never written is zeroed once, as it is initialised. Reused
    /// storage costs a memset, not a page fault.
    pub fn grow(&mut self, len: usize) -> &mut [u8] {
        let start = self.len;
        let end = start + len;
        let reused_end = end.min(self.bytes.len());
        if start < reused_end {
            self.bytes[start..reused_end].fill(0);
        }
        if end > self.bytes.len() {
            self.bytes.resize(end, 0);
        }
        self.len = end;
        &mut self.bytes[start..end]
    }

    /// The output bytes as a plain vector (no copy), taken from the arena: they no longer go
    /// back to the executor's pool.
    pub fn into_vec(mut self) -> Vec<u8> {
        self.home = None;
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.truncate(self.len);
        bytes
    }

    /// Where `data` lies in the arena's storage (written now or by an earlier output), if it
    /// lies there whole: its offset.
    pub fn offset_of(&self, data: &[u8]) -> Option<usize> {
        let from = (data.as_ptr() as usize).wrapping_sub(self.bytes.as_ptr() as usize);
        (from <= self.bytes.len() && data.len() <= self.bytes.len() - from).then_some(from)
    }

    /// Makes the bytes at `from` (an [`Arena::offset_of`] range) the output from `to` on: moved
    /// within the storage (ranges may overlap), the output ending after them. False, with nothing
    /// moved and the output ending at `to`, when the room cannot be had.
    pub fn move_within(&mut self, from: std::ops::Range<usize>, to: usize) -> bool {
        let end = to + from.len();
        self.len = to;
        if end > self.bytes.len() {
            if !self.try_reserve(from.len()) {
                return false;
            }
            // Room was reserved: this cannot allocate.
            self.bytes.resize(end, 0);
        }
        self.bytes.copy_within(from, to);
        self.len = end;
        true
    }
}

impl std::ops::Deref for Arena {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl AsRef<[u8]> for Arena {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Arena {
    fn from(bytes: Vec<u8>) -> Self {
        Arena {
            len: bytes.len(),
            bytes,
            home: None,
        }
    }
}

impl PartialEq for Arena {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} bytes)", self.len)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Some(shared) = self.home.take().and_then(|home| home.upgrade()) {
            shared.give_output(std::mem::take(&mut self.bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_with_its_capacity_and_empty() {
        let buffers = ArgBuffers::default();
        let mut buffer = Vec::with_capacity(1 << 20);
        buffer.extend_from_slice(&[7; 100]);
        let at = buffer.as_ptr();
        buffers.give(buffer);
        assert_eq!(buffers.kept(), 1);
        let again = buffers.take(None);
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        assert!(again.capacity() >= 1 << 20);
        assert!(
            buffers.take(None).capacity() == 0,
            "none is left: a new, empty one"
        );
    }

    #[test]
    fn what_is_kept_is_bounded_in_count_and_bytes() {
        let buffers = ArgBuffers::default();
        for _ in 0..KEPT + 5 {
            buffers.give(Vec::with_capacity(16));
        }
        assert_eq!(buffers.kept(), KEPT);
        let buffers = ArgBuffers::default();
        buffers.give(Vec::with_capacity(KEPT_BYTES / 2));
        buffers.give(Vec::with_capacity(KEPT_BYTES / 2));
        buffers.give(Vec::with_capacity(KEPT_BYTES / 2));
        assert_eq!(buffers.kept(), 2);
        let _ = buffers.take(None);
        buffers.give(Vec::with_capacity(KEPT_BYTES / 2));
        assert_eq!(buffers.kept(), 2, "taking one makes room for one");
    }

    #[test]
    fn a_larger_argument_buffer_replaces_smaller_ones_when_the_bytes_are_full() {
        let buffers = ArgBuffers::default();
        for _ in 0..3 {
            buffers.give(Vec::with_capacity(KEPT_BYTES / 4));
        }
        buffers.give(Vec::with_capacity(KEPT_BYTES / 2));
        assert_eq!(buffers.kept(), 3, "one smaller buffer freed for it");
        assert!(
            buffers.take(Some(KEPT_BYTES / 2)).capacity() >= KEPT_BYTES / 2,
            "the next call of large arguments finds it"
        );
        buffers.give(Vec::with_capacity(KEPT_BYTES / 4));
        buffers.give(Vec::with_capacity(KEPT_BYTES));
        assert_eq!(buffers.kept(), 1, "the smaller ones made room");
        buffers.give(Vec::with_capacity(KEPT_BYTES / 4));
        assert_eq!(buffers.kept(), 1, "no room, and nothing smaller to free");
    }

    #[test]
    fn a_known_size_takes_the_smallest_that_fits_and_an_unknown_one_the_largest() {
        let buffers = ArgBuffers::default();
        for capacity in [4096, 1 << 20, 64 << 10] {
            buffers.give(Vec::with_capacity(capacity));
        }
        assert_eq!(buffers.take(Some(5000)).capacity(), 64 << 10);
        assert_eq!(buffers.take(None).capacity(), 1 << 20);
        assert_eq!(
            buffers.take(Some(1 << 30)).capacity(),
            4096,
            "none fits: the largest"
        );
    }

    #[test]
    fn an_arena_dropped_goes_back_and_the_next_one_reuses_its_memory_zeroed() {
        let pool = BufferPool::default();
        let mut arena = pool.take_output(4);
        arena.extend_from_slice(b"first");
        arena.grow(3).copy_from_slice(b"!!!");
        assert_eq!(&*arena, b"first!!!");
        let at = arena.as_ptr();
        drop(arena);
        assert_eq!((pool.kept_outputs(), pool.fresh_outputs()), (1, 1));
        let mut again = pool.take_output(4);
        assert_eq!(
            (again.as_ptr(), again.len()),
            (at, 0),
            "the same memory, empty"
        );
        assert_eq!(pool.fresh_outputs(), 1);
        assert_eq!(
            again.grow(5),
            b"\0\0\0\0\0",
            "written before: zeroed again, never shown to the next output"
        );
        again.truncate(2);
        again.extend_from_slice(b"0123");
        assert_eq!(&*again, [0, 0, b'0', b'1', b'2', b'3']);
        assert_eq!(
            again.grow(4),
            b"\0\0\0\0",
            "what an earlier output wrote, then never-written bytes: all zeroes"
        );
        assert_eq!(&*again, [0, 0, b'0', b'1', b'2', b'3', 0, 0, 0, 0]);
    }

    #[test]
    fn arenas_are_kept_within_the_bounds_and_sized_from_recent_batches() {
        let pool = BufferPool::default();
        pool.note_output(4000, 4);
        let arena = pool.take_output(8);
        assert!(arena.bytes.capacity() >= 8000, "room for 8 tasks of 1000");
        drop(arena);
        let larger = pool.take_output(16);
        assert!(
            larger.bytes.capacity() >= 16000,
            "too small a kept arena is not taken"
        );
        assert_eq!((pool.kept_outputs(), pool.fresh_outputs()), (1, 2));
        drop(larger);
        pool.note_output(0, 4);
        assert_eq!(
            pool.0.per_task.load(Ordering::Relaxed),
            750,
            "forgotten slowly"
        );
        let pool = BufferPool::default();
        let arenas: Vec<Arena> = (0..KEPT + 5)
            .map(|_| {
                let mut arena = pool.take_output(1);
                arena.extend_from_slice(b"x");
                arena
            })
            .collect();
        drop(arenas);
        assert_eq!(pool.kept_outputs(), KEPT);
    }

    #[test]
    fn an_arena_outliving_its_pool_stays_readable_and_is_freed_alone() {
        let pool = BufferPool::default();
        let mut arena = pool.take_output(1);
        arena.extend_from_slice(b"kept");
        let weak = Arc::downgrade(&pool.0);
        drop(pool);
        assert!(weak.upgrade().is_none(), "the arena does not keep its pool");
        assert_eq!(&*arena, b"kept");
        drop(arena);
        let plain = Arena::from(b"plain".to_vec());
        assert_eq!(&*plain, b"plain");
    }

    #[test]
    fn a_forked_child_frees_what_it_drops_without_the_lock_its_parent_may_hold() {
        crate::fork::register_handlers();
        let pool = BufferPool::default();
        let mut arena = pool.take_output(1);
        arena.extend_from_slice(b"inherited");
        let mut args = pool.take(None);
        args.extend_from_slice(b"inherited too");
        // Another thread of the parent inside the lists at the fork: held forever in the child.
        let held = (lock(&pool.0.outputs), lock(&pool.0.args));
        // SAFETY: the child only drops buffers (no lock it may wait for) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(arena);
            pool.give(args);
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork failed");
        drop(held);
        let mut status = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // SAFETY: waits for our own child, with a valid status pointer.
        while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
            if std::time::Instant::now() > deadline {
                // SAFETY: our own child, hung: killed and reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                panic!("the child blocked on a lock its parent held at the fork");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(&*arena, b"inherited");
    }

    #[test]
    fn larger_arenas_replace_smaller_ones_when_the_pool_is_full() {
        let pool = BufferPool::default();
        let small: Vec<Arena> = (0..KEPT)
            .map(|_| {
                let mut arena = pool.take_output(1);
                arena.extend_from_slice(b"x");
                arena
            })
            .collect();
        drop(small);
        assert_eq!(pool.kept_outputs(), KEPT);
        pool.note_output(1 << 20, 1);
        let mut large = pool.take_output(1);
        large.extend_from_slice(&[1; 1 << 20]);
        let at = large.as_ptr();
        drop(large);
        assert_eq!(pool.kept_outputs(), KEPT, "one small arena freed for it");
        let fresh = pool.fresh_outputs();
        let again = pool.take_output(1);
        assert_eq!(
            (pool.fresh_outputs(), again.as_ptr()),
            (fresh, at),
            "and it is reused"
        );
    }

    #[test]
    fn bytes_moved_within_the_storage_may_lie_anywhere_in_it_and_overlap() {
        let mut arena = Arena::default();
        arena.extend_from_slice(b"0123456789");
        arena.truncate(2);
        let stale = &arena.bytes[4..9];
        let from = arena.offset_of(stale).unwrap();
        assert!(arena.move_within(from..from + 5, 3));
        assert_eq!(
            &*arena, b"01245678",
            "moved to 3, after the byte left there"
        );
        assert_eq!(arena.offset_of(b"elsewhere"), None);
        let end = arena.bytes.len();
        assert!(
            arena.move_within(0..end, end - 2),
            "beyond what was ever written"
        );
        assert_eq!(arena.len(), 2 * end - 2);
        assert_eq!(&arena[end - 2..], b"0124567889");
    }
}
