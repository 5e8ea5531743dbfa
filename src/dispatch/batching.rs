//! Batch sizing: a fixed size, or joblib's "auto" heuristic.
//!
//! joblib's rule (its `AutoBatchingMixin`), reproduced exactly: keep an exponential moving average
//! (0.8 old / 0.2 new) of the dispatch-to-completion time of batches of the current size; before each
//! dispatch, grow at most 2x while batches take less than 0.2 s, shrink when they take more than 2 s,
//! and reset the average whenever the size changes. Unlike joblib, pj applies it to threads too: a
//! tiny C task costs nanoseconds, so batching pays on every backend.
//!
//! pj also bounds a batch's bytes (joblib has no such cap): fast tasks with large arguments or
//! results would otherwise grow batches to hundreds of tasks, and the window (pre_dispatch
//! batches) would hold hundreds of times a result. "auto" keeps a smoothed estimate of a task's
//! argument plus result bytes and never lets a batch's estimated bytes exceed `batch_bytes`
//! (at least one task a batch).

use crate::config::{BatchSize, DEFAULT_BATCH_BYTES};
use crate::progress::SizeChange;

/// Batches shorter than this grow.
pub const MIN_IDEAL_BATCH_SECONDS: f64 = 0.2;
/// Batches longer than this shrink.
pub const MAX_IDEAL_BATCH_SECONDS: f64 = 2.0;
/// Growth stops here (joblib has no cap). For tasks of a few nanoseconds joblib's rule would grow a
/// batch to millions of tasks: the workers would then wait while the caller fills one batch, and a
/// streaming call would buffer that many results. 65,536 tasks already amortise a batch's fixed
/// cost (tens of microseconds) to under a nanosecond per task.
pub const MAX_BATCH_SIZE: usize = 1 << 16;

/// The batch size policy of one `Parallel` object; its statistics start afresh at each call
/// ([`Batching::reset`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Batching {
    auto: bool,
    size: usize,
    smoothed_seconds: f64,
    /// The most bytes (arguments and results) an auto batch should hold.
    max_bytes: usize,
    /// A task's argument bytes, smoothed (see [`Batching::record_arg_bytes`]); 0 until known.
    arg_bytes_per_task: f64,
    /// A task's result bytes, smoothed likewise; 0 until a batch reported.
    result_bytes_per_task: f64,
}

/// A bytes-per-task estimate updated with a batch's `bytes` over `tasks`: it follows a rise at
/// once and a fall slowly (0.8 old / 0.2 new), so that a batch of small tasks does not let the
/// next one take many large ones.
fn smooth_bytes(estimate: f64, tasks: usize, bytes: usize) -> f64 {
    if tasks == 0 {
        return estimate;
    }
    let sample = bytes as f64 / tasks as f64;
    sample.max(0.8 * estimate + 0.2 * sample)
}

impl Batching {
    /// Starts with size 1 for "auto", or the fixed size.
    pub fn new(setting: BatchSize) -> Self {
        match setting {
            BatchSize::Auto => Batching {
                auto: true,
                size: 1,
                smoothed_seconds: 0.0,
                max_bytes: DEFAULT_BATCH_BYTES,
                arg_bytes_per_task: 0.0,
                result_bytes_per_task: 0.0,
            },
            BatchSize::Fixed(n) => Batching {
                auto: false,
                size: n.get(),
                smoothed_seconds: 0.0,
                max_bytes: DEFAULT_BATCH_BYTES,
                arg_bytes_per_task: 0.0,
                result_bytes_per_task: 0.0,
            },
        }
    }

    #[cfg(test)]
    /// Starts "auto" at `size` (joblib's tables start some replays above 1).
    pub fn auto_from(size: usize) -> Self {
        Batching {
            auto: true,
            size: size.max(1),
            smoothed_seconds: 0.0,
            max_bytes: DEFAULT_BATCH_BYTES,
            arg_bytes_per_task: 0.0,
            result_bytes_per_task: 0.0,
        }
    }

    /// The same policy with auto batches capped at `max_bytes` of arguments and results (at least
    /// one task a batch; a fixed size ignores it).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// The cap on an auto batch's argument and result bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Forgets what earlier calls taught the auto heuristic, as joblib does at each call: "auto"
    /// starts again at size 1 with no smoothed duration (a call of slow tasks must not start with
    /// the big batches a call of tiny tasks grew); a fixed size stays as it is.
    pub fn reset(&mut self) {
        if self.auto {
            self.size = 1;
            self.smoothed_seconds = 0.0;
            self.arg_bytes_per_task = 0.0;
            self.result_bytes_per_task = 0.0;
        }
    }

    /// Whether the size adapts to batch durations ("auto").
    pub fn is_auto(&self) -> bool {
        self.auto
    }

    /// The size the next batch gets.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Records that a batch of `batch_size` tasks took `seconds` from dispatch to completion.
    /// Samples from batches of another size than the current one are ignored, as joblib does.
    pub fn record(&mut self, batch_size: usize, seconds: f64) {
        if !self.auto || batch_size != self.size {
            return;
        }
        self.smoothed_seconds = if self.smoothed_seconds == 0.0 {
            seconds
        } else {
            0.8 * self.smoothed_seconds + 0.2 * seconds
        };
    }

    /// Records that a batch of `tasks` tasks (any size) was cut with `bytes` of arguments.
    pub fn record_arg_bytes(&mut self, tasks: usize, bytes: usize) {
        if self.auto {
            self.arg_bytes_per_task = smooth_bytes(self.arg_bytes_per_task, tasks, bytes);
        }
    }

    /// Records that `tasks` tasks of a batch (any size) returned `bytes` of results.
    pub fn record_result_bytes(&mut self, tasks: usize, bytes: usize) {
        if self.auto {
            self.result_bytes_per_task = smooth_bytes(self.result_bytes_per_task, tasks, bytes);
        }
    }

    /// The most tasks a batch may hold for its estimated bytes to stay within the cap (at least 1).
    fn byte_limit(&self) -> usize {
        let per_task = self.arg_bytes_per_task + self.result_bytes_per_task;
        if per_task <= 0.0 {
            return usize::MAX;
        }
        // Float-to-int casts saturate.
        ((self.max_bytes as f64 / per_task) as usize).max(1)
    }

    /// Recomputes the size before a dispatch; returns the change, if any. A shrink for bytes
    /// alone (the batches were fast) is made but not returned: joblib has no line for it.
    pub fn adjust(&mut self) -> Option<SizeChange> {
        let (old, d) = (self.size, self.smoothed_seconds);
        if !self.auto {
            return None;
        }
        let limit = self.byte_limit();
        if old > limit {
            self.size = limit;
            self.smoothed_seconds = 0.0;
            return None;
        }
        let new = if d > 0.0 && d < MIN_IDEAL_BATCH_SECONDS {
            // Float-to-int casts saturate, so a near-zero duration cannot overflow.
            let ideal = ((old as f64 * MIN_IDEAL_BATCH_SECONDS / d) as usize).saturating_mul(2);
            ideal
                .min(old.saturating_mul(2))
                .clamp(1, MAX_BATCH_SIZE.max(old))
                .min(limit)
        } else if d > MAX_IDEAL_BATCH_SECONDS && old >= 2 {
            ((old as f64 * MIN_IDEAL_BATCH_SECONDS / d) as usize)
                .saturating_mul(2)
                .max(1)
        } else {
            old
        };
        if new == old {
            return None;
        }
        self.size = new;
        self.smoothed_seconds = 0.0;
        Some(SizeChange {
            seconds: d,
            size: new,
            grew: new > old,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays joblib's deterministic table: every batch of the current size takes
    /// `size * per_task` seconds; returns the successive sizes.
    fn replay(mut batching: Batching, per_task: f64, steps: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        for _ in 0..steps {
            let size = batching.size();
            sizes.push(size);
            batching.record(size, size as f64 * per_task);
            batching.adjust();
        }
        sizes
    }

    #[test]
    fn one_millisecond_tasks_double_up_to_256() {
        let sizes = replay(Batching::new(BatchSize::Auto), 0.001, 11);
        assert_eq!(sizes, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
    }

    #[test]
    fn fifty_millisecond_tasks_settle_at_4() {
        let sizes = replay(Batching::new(BatchSize::Auto), 0.05, 6);
        assert_eq!(sizes, vec![1, 2, 4, 4, 4, 4]);
    }

    #[test]
    fn hundred_millisecond_tasks_from_64_shrink_to_4() {
        let sizes = replay(Batching::auto_from(64), 0.1, 4);
        assert_eq!(sizes, vec![64, 4, 4, 4]);
    }

    #[test]
    fn samples_of_another_size_are_ignored_and_fixed_never_changes() {
        let mut batching = Batching::new(BatchSize::Auto);
        batching.record(7, 0.001);
        assert_eq!(batching.adjust(), None);
        let mut fixed = Batching::new(BatchSize::Fixed(std::num::NonZeroUsize::new(5).unwrap()));
        fixed.record(5, 0.000_001);
        assert_eq!(fixed.adjust(), None);
        assert_eq!(fixed.size(), 5);
    }

    #[test]
    fn reset_forgets_auto_statistics_and_keeps_a_fixed_size() {
        let mut batching = Batching::new(BatchSize::Auto);
        for _ in 0..10 {
            let size = batching.size();
            batching.record(size, 0.000_001);
            batching.adjust();
        }
        assert!(batching.size() > 1);
        batching.reset();
        assert_eq!(batching, Batching::new(BatchSize::Auto));
        let mut fixed = Batching::new(BatchSize::Fixed(std::num::NonZeroUsize::new(5).unwrap()));
        fixed.reset();
        assert_eq!(fixed.size(), 5);
    }

    #[test]
    fn tiny_durations_do_not_overflow() {
        let mut batching = Batching::auto_from(usize::MAX / 2);
        batching.record(usize::MAX / 2, 1e-300);
        let change = batching.adjust();
        assert!(change.is_none() || change.unwrap().size >= 1);
    }

    #[test]
    fn growth_stops_where_a_batch_would_exceed_its_bytes() {
        let mut batching = Batching::new(BatchSize::Auto).with_max_bytes(32 << 20);
        let mut sizes = Vec::new();
        for _ in 0..12 {
            let size = batching.size();
            sizes.push(size);
            // Each task returns 1 MiB and takes 10 microseconds: time alone would double on.
            batching.record_result_bytes(size, size << 20);
            batching.record(size, size as f64 * 0.000_01);
            batching.adjust();
        }
        assert_eq!(sizes, vec![1, 2, 4, 8, 16, 32, 32, 32, 32, 32, 32, 32]);
    }

    #[test]
    fn argument_and_result_bytes_add_up() {
        let mut batching = Batching::auto_from(1).with_max_bytes(1000);
        batching.record_arg_bytes(10, 10 * 60);
        batching.record_result_bytes(10, 10 * 40);
        batching.record(1, 0.000_001);
        batching.adjust();
        assert_eq!(batching.size(), 2);
        let mut big = Batching::auto_from(1000).with_max_bytes(1000);
        big.record_arg_bytes(10, 10 * 60);
        big.record_result_bytes(10, 10 * 40);
        assert_eq!(big.adjust(), None, "a shrink for bytes has no joblib line");
        assert_eq!(big.size(), 10);
    }

    #[test]
    fn larger_tasks_shrink_at_once_and_smaller_ones_grow_back_slowly() {
        let mut batching = Batching::auto_from(64).with_max_bytes(64 << 20);
        batching.record_result_bytes(4, 4 << 20);
        assert_eq!(batching.adjust(), None);
        assert_eq!(batching.size(), 64);
        batching.record_result_bytes(1, 8 << 20);
        batching.adjust();
        assert_eq!(batching.size(), 8);
        // One batch of tiny results only lowers the estimate by a fifth.
        batching.record_result_bytes(8, 0);
        batching.record(8, 0.000_001);
        batching.adjust();
        assert_eq!(batching.size(), 10);
    }

    #[test]
    fn a_fixed_size_and_a_tiny_cap_keep_at_least_their_size_or_one_task() {
        let fixed = std::num::NonZeroUsize::new(500).unwrap();
        let mut fixed = Batching::new(BatchSize::Fixed(fixed)).with_max_bytes(1);
        fixed.record_result_bytes(500, 500 << 20);
        assert_eq!(fixed.adjust(), None);
        assert_eq!(fixed.size(), 500);
        let mut tiny = Batching::auto_from(4).with_max_bytes(0);
        assert_eq!(tiny.max_bytes(), 1);
        tiny.record_result_bytes(4, usize::MAX);
        tiny.adjust();
        assert_eq!(tiny.size(), 1);
        tiny.reset();
        tiny.record(1, 0.000_001);
        tiny.adjust();
        assert_eq!(tiny.size(), 2, "reset forgets the byte estimate");
    }
}
