//! Argument buffers kept for reuse: a batch's argument bytes go back to its executor's
//! [`ArgBuffers`] when the batch is dropped (on whichever thread ran it), and the next batch of the
//! same or a later call is filled into one of them. The bytes submitted are then copied once, into
//! pages already mapped, instead of into fresh memory that the allocator zeroes (or maps anew) for
//! every batch and returns to the system when the batch ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};

/// At most this many buffers wait for reuse: room for the batches a call keeps in flight and the
/// pieces its tail is cut into, so that the next call finds one for each.
const KEPT: usize = 64;

/// At most this many bytes (of capacity) wait for reuse: what an idle executor keeps, released
/// when it is freed.
const KEPT_BYTES: usize = 256 << 20;

/// An executor's free list of argument buffers (cheap to clone: every clone is the same list).
/// Taking and giving back never block and never lock (a bounded lock-free queue).
#[derive(Clone, Debug)]
pub struct ArgBuffers(Arc<Kept>);

#[derive(Debug)]
struct Kept {
    give: Sender<Vec<u8>>,
    take: Receiver<Vec<u8>>,
    /// The capacity of the buffers in the queue, in bytes (counted before a buffer is queued
    /// and after it is taken out, so it never falls below what is queued).
    bytes: AtomicUsize,
}

impl Default for ArgBuffers {
    fn default() -> Self {
        let (give, take) = bounded(KEPT);
        ArgBuffers(Arc::new(Kept {
            give,
            take,
            bytes: AtomicUsize::new(0),
        }))
    }
}

impl ArgBuffers {
    /// An empty buffer, with the capacity of one given back earlier when there is one.
    pub fn take(&self) -> Vec<u8> {
        match self.0.take.try_recv() {
            Ok(buffer) => {
                self.0.bytes.fetch_sub(buffer.capacity(), Ordering::Relaxed);
                buffer
            }
            Err(_) => Vec::new(),
        }
    }

    /// Keeps `buffer` for a later [`ArgBuffers::take`] (emptied; its capacity stays), or frees it
    /// when enough are kept already. A buffer that never held anything is not worth keeping.
    pub fn give(&self, mut buffer: Vec<u8>) {
        let size = buffer.capacity();
        if size == 0 {
            return;
        }
        let before = self.0.bytes.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > KEPT_BYTES {
            self.0.bytes.fetch_sub(size, Ordering::Relaxed);
            return;
        }
        buffer.clear();
        if self.0.give.try_send(buffer).is_err() {
            self.0.bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Number of buffers waiting for reuse.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.0.take.len()
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
        let again = buffers.take();
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        assert!(again.capacity() >= 1 << 20);
        assert!(
            buffers.take().capacity() == 0,
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
        let _ = buffers.take();
        buffers.give(Vec::with_capacity(KEPT_BYTES / 2));
        assert_eq!(buffers.kept(), 2, "taking one makes room for one");
    }
}
