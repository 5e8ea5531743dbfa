//! Batch sizing: a fixed size, or joblib's "auto" heuristic.
//!
//! joblib's rule (its `AutoBatchingMixin`), reproduced exactly: keep an exponential moving average
//! (0.8 old / 0.2 new) of the dispatch-to-completion time of batches of the current size; before each
//! dispatch, grow at most 2x while batches take less than 0.2 s, shrink when they take more than 2 s,
//! and reset the average whenever the size changes. Unlike joblib, pj applies it to threads too: a
//! tiny C task costs nanoseconds, so batching pays on every backend.

use crate::config::BatchSize;
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
}

impl Batching {
    /// Starts with size 1 for "auto", or the fixed size.
    pub fn new(setting: BatchSize) -> Self {
        match setting {
            BatchSize::Auto => Batching {
                auto: true,
                size: 1,
                smoothed_seconds: 0.0,
            },
            BatchSize::Fixed(n) => Batching {
                auto: false,
                size: n.get(),
                smoothed_seconds: 0.0,
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
        }
    }

    /// Forgets what earlier calls taught the auto heuristic, as joblib does at each call: "auto"
    /// starts again at size 1 with no smoothed duration (a call of slow tasks must not start with
    /// the big batches a call of tiny tasks grew); a fixed size stays as it is.
    pub fn reset(&mut self) {
        if self.auto {
            self.size = 1;
            self.smoothed_seconds = 0.0;
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

    /// Recomputes the size before a dispatch; returns the change, if any.
    pub fn adjust(&mut self) -> Option<SizeChange> {
        let (old, d) = (self.size, self.smoothed_seconds);
        if !self.auto {
            return None;
        }
        let new = if d > 0.0 && d < MIN_IDEAL_BATCH_SECONDS {
            // Float-to-int casts saturate, so a near-zero duration cannot overflow.
            let ideal = ((old as f64 * MIN_IDEAL_BATCH_SECONDS / d) as usize).saturating_mul(2);
            ideal
                .min(old.saturating_mul(2))
                .clamp(1, MAX_BATCH_SIZE.max(old))
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
}
