//! A call's results: outputs joined in input order from batch outcomes (each possibly read in part
//! by `next`), outputs the backend kept outside the batches' arenas, and the per-task errors of
//! on_error=collect.

use crate::error::{Error, ErrorKind};
use crate::task::{Arena, BatchOutcome, LargeOutput, TaskFailure};

/// The ordered results of a call: task `i`'s output lies in the arena of the batch that ran it
/// (kept as it came, never copied again, and given back to the executor for reuse when the
/// results are dropped), or was kept outside it by the backend ([`LargeOutput`]: results above
/// max_nbytes, process backend). With on_error=collect, failed tasks have an empty output and an
/// entry in `errors`.
#[derive(Debug, Default)]
pub struct Results {
    /// The batches' arenas, by the index of their first result here.
    parts: Vec<Part>,
    /// Task `i`'s output ends at `ends[i]` in its part's arena.
    ends: Vec<usize>,
    /// (task index, its error), sorted by index.
    errors: Vec<(usize, Error)>,
    /// (task index, its output kept outside `data`), sorted by index.
    large: Vec<(usize, LargeOutput)>,
}

/// One batch's outputs among a call's results.
#[derive(Debug)]
struct Part {
    /// Index (in the results) of its first output.
    first: usize,
    /// Where that output starts in `data` (after any results `next` handed out already).
    start: usize,
    data: Arena,
}

/// The output of task `index` if it was kept outside its batch's arena.
pub(super) fn find_large(large: &[(usize, LargeOutput)], index: usize) -> Option<&[u8]> {
    if large.is_empty() {
        return None;
    }
    let at = large.binary_search_by_key(&index, |(i, _)| *i).ok()?;
    Some(large[at].1.bytes())
}

impl Results {
    /// Number of results (one per task).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Task `index`'s output bytes.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        if let Some(bytes) = find_large(&self.large, index) {
            return Some(bytes);
        }
        let end = *self.ends.get(index)?;
        // Parts are sorted by `first` and the first one starts at 0: some part holds `index`.
        let part = match self.parts.as_slice() {
            [only] => only,
            parts => &parts[parts.partition_point(|p| p.first <= index) - 1],
        };
        let start = if index == part.first {
            part.start
        } else {
            self.ends[index - 1]
        };
        Some(&part.data[start..end])
    }

    /// Every failed task's (index, error), by index (on_error=collect).
    pub fn errors(&self) -> &[(usize, Error)] {
        &self.errors
    }

    /// Joins batch outcomes (any order, each possibly read in part up to `skip`) into input order,
    /// keeping each batch's arena as it is; `describe` turns a collected task failure into its
    /// error. An I/O error when the index of the joined results cannot be allocated (its size is
    /// the number of tasks: never abort).
    pub(super) fn from_outcomes(
        mut outcomes: Vec<(BatchOutcome, usize)>,
        describe: impl Fn(usize, &TaskFailure, &BatchOutcome) -> Error,
    ) -> Result<Results, Error> {
        outcomes.sort_unstable_by_key(|(o, skip)| o.first + skip);
        let mut large = Vec::new();
        for (outcome, skip) in &mut outcomes {
            let from = outcome.first + *skip;
            large.extend(
                std::mem::take(&mut outcome.large)
                    .into_iter()
                    .filter(|(index, _)| *index >= from),
            );
        }
        let mut errors = Vec::new();
        for (outcome, skip) in &outcomes {
            let from = outcome.first + skip;
            errors.extend(
                outcome
                    .errors
                    .iter()
                    .filter(|(index, _)| *index >= from)
                    .map(|(index, failure)| (*index, describe(*index, failure, outcome))),
            );
        }
        // Only batches with an output left to hand out become parts.
        outcomes.retain(|(o, skip)| o.ends.len() > *skip);
        if let [(only, 0)] = outcomes.as_mut_slice() {
            return Ok(Results {
                parts: vec![Part {
                    first: 0,
                    start: 0,
                    data: std::mem::take(&mut only.data),
                }],
                ends: std::mem::take(&mut only.ends),
                errors,
                large,
            });
        }
        let total_tasks: usize = outcomes.iter().map(|(o, skip)| o.ends.len() - skip).sum();
        let mut results = Results {
            parts: Vec::new(),
            ends: Vec::new(),
            errors,
            large,
        };
        let reserved = results
            .ends
            .try_reserve_exact(total_tasks)
            .and_then(|()| results.parts.try_reserve_exact(outcomes.len()));
        if let Err(error) = reserved {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot gather the call's results ({total_tasks} tasks): {error}"),
            ));
        }
        for (mut outcome, skip) in outcomes {
            results.parts.push(Part {
                first: results.ends.len(),
                start: if skip == 0 { 0 } else { outcome.ends[skip - 1] },
                data: std::mem::take(&mut outcome.data),
            });
            results.ends.extend_from_slice(&outcome.ends[skip..]);
        }
        Ok(results)
    }
}
