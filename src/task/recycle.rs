//! Argument buffers kept for reuse: a batch's argument bytes go back to its executor's
//! [`ArgBuffers`] when the batch is dropped (on whichever thread ran it), and the next batch of the
//! same or a later call is filled into one of them. The bytes submitted are then copied once, into
//! pages already mapped, instead of into fresh memory that the allocator zeroes (or maps anew) for
//! every batch and returns to the system when the batch ends.

use std::sync::{Arc, Mutex, PoisonError};

/// At most this many buffers wait for reuse: room for the batches a call keeps in flight and the
/// pieces its tail is cut into, so that the next call finds one for each.
const KEPT: usize = 64;

/// At most this many bytes (of capacity) wait for reuse: what an idle executor keeps, released
/// when it is freed.
const KEPT_BYTES: usize = 256 << 20;

/// An executor's free list of argument buffers (cheap to clone: every clone is the same list).
/// Taking and giving back never block on anything but this list's lock, taken once per batch
/// (never per task) for a scan of at most [`KEPT`] entries.
#[derive(Clone, Debug, Default)]
pub struct ArgBuffers(Arc<Mutex<Kept>>);

#[derive(Debug, Default)]
struct Kept {
    buffers: Vec<Vec<u8>>,
    /// The capacity of `buffers`, in bytes.
    bytes: usize,
}

impl ArgBuffers {
    /// An empty buffer for `len` bytes (`None`: as many as will come): the smallest kept one that
    /// holds `len` bytes, else the largest kept one, else a new one.
    pub fn take(&self, len: Option<usize>) -> Vec<u8> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let capacities = kept.buffers.iter().map(Vec::capacity).enumerate();
        let best = match len {
            Some(len) => capacities
                .clone()
                .filter(|&(_, c)| c >= len)
                .min_by_key(|&(_, c)| c)
                .or_else(|| capacities.max_by_key(|&(_, c)| c)),
            None => capacities.max_by_key(|&(_, c)| c),
        };
        let Some((at, _)) = best else {
            return Vec::new();
        };
        let buffer = kept.buffers.swap_remove(at);
        kept.bytes -= buffer.capacity();
        buffer
    }

    /// Keeps `buffer` for a later [`ArgBuffers::take`] (emptied; its capacity stays), or frees it
    /// when enough are kept already. A buffer that never held anything is not worth keeping.
    pub fn give(&self, mut buffer: Vec<u8>) {
        let size = buffer.capacity();
        if size == 0 {
            return;
        }
        buffer.clear();
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.buffers.len() < KEPT && kept.bytes.saturating_add(size) <= KEPT_BYTES {
            kept.bytes += size;
            kept.buffers.push(buffer);
            return;
        }
        drop(kept);
        // Freed outside the lock (unmapping a large buffer is a system call).
        drop(buffer);
    }

    /// Number of buffers waiting for reuse.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buffers
            .len()
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
}
