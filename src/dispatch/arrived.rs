//! Completed batches whose results `next` has not handed out yet: kept in the order `next` hands
//! them out (input order, or completion order), with the batch being read and how far.

use std::collections::{BTreeMap, VecDeque};

use super::results::find_large;
use crate::config::ReturnAs;
use crate::task::{BatchOutcome, TaskFailure, WorkerId};

/// Completed batches waiting to be handed back.
#[derive(Debug)]
enum Queue {
    /// Input order: keyed by the batch's first task index.
    Ordered(BTreeMap<usize, BatchOutcome>),
    /// Completion order.
    Unordered(VecDeque<BatchOutcome>),
}

/// What `next` has yet to hand out.
#[derive(Debug)]
pub(super) struct Arrived {
    queue: Queue,
    /// The batch `next` is reading and how many of its results were handed out.
    reading: Option<(BatchOutcome, usize)>,
    /// Results arrived and not handed out yet.
    unread: usize,
    /// The index `next` hands out next, in input order.
    next_index: usize,
}

/// One result as `next` hands it out: the task's index, its output, and its failure (with the
/// worker that saw it) when it failed under on_error=collect.
pub(super) type Read<'a> = (usize, &'a [u8], Option<(&'a TaskFailure, WorkerId)>);

impl Arrived {
    /// Nothing arrived yet; results are handed out in `order`.
    pub(super) fn new(order: ReturnAs) -> Self {
        let queue = match order {
            ReturnAs::GeneratorUnordered => Queue::Unordered(VecDeque::new()),
            ReturnAs::List | ReturnAs::Generator => Queue::Ordered(BTreeMap::new()),
        };
        Arrived {
            queue,
            reading: None,
            unread: 0,
            next_index: 0,
        }
    }

    /// Results arrived and not handed out yet.
    pub(super) fn unread(&self) -> usize {
        self.unread
    }

    /// Keeps a completed batch (with at least one result) until `next` reads it.
    pub(super) fn push(&mut self, outcome: BatchOutcome) {
        self.unread += outcome.completed();
        match &mut self.queue {
            Queue::Ordered(map) => {
                map.insert(outcome.first, outcome);
            }
            Queue::Unordered(queue) => queue.push_back(outcome),
        }
    }

    /// Lets go of the batch being read once every result of it was handed out.
    pub(super) fn release_read(&mut self) {
        if let Some((outcome, read)) = &self.reading
            && *read == outcome.ends.len()
        {
            self.reading = None;
        }
    }

    /// Whether a result can be handed out now: a batch is being read, or the next one in order
    /// has arrived (it then becomes the one being read).
    pub(super) fn ready(&mut self) -> bool {
        if self.reading.is_none() {
            let next = match &mut self.queue {
                Queue::Ordered(map) => map
                    .first_entry()
                    .filter(|entry| *entry.key() == self.next_index)
                    .map(|entry| entry.remove()),
                Queue::Unordered(queue) => queue.pop_front(),
            };
            self.reading = next.map(|outcome| (outcome, 0));
        }
        self.reading.is_some()
    }

    /// Hands out the next result; only after [`Arrived::ready`] said one is there.
    pub(super) fn read(&mut self) -> Read<'_> {
        let Some((outcome, read)) = self.reading.as_mut() else {
            unreachable!("read only after ready")
        };
        let start = if *read == 0 {
            0
        } else {
            outcome.ends[*read - 1]
        };
        let index = outcome.first + *read;
        let data =
            find_large(&outcome.large, index).unwrap_or(&outcome.data[start..outcome.ends[*read]]);
        *read += 1;
        self.unread -= 1;
        self.next_index = index + 1;
        let failure = if outcome.errors.is_empty() {
            None
        } else {
            outcome
                .errors
                .binary_search_by_key(&index, |(i, _)| *i)
                .ok()
                .map(|at| (&outcome.errors[at].1, outcome.worker))
        };
        (index, data, failure)
    }

    /// Everything not handed out yet: each batch with how many of its results were.
    pub(super) fn take_all(&mut self) -> Vec<(BatchOutcome, usize)> {
        let mut outcomes: Vec<(BatchOutcome, usize)> = self.reading.take().into_iter().collect();
        match std::mem::replace(&mut self.queue, Queue::Unordered(VecDeque::new())) {
            Queue::Ordered(map) => outcomes.extend(map.into_values().map(|o| (o, 0))),
            Queue::Unordered(queue) => outcomes.extend(queue.into_iter().map(|o| (o, 0))),
        }
        self.unread = 0;
        outcomes
    }
}
