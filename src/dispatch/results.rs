//! A call's results: outputs joined in input order from batch outcomes (each possibly read in part
//! by `next`), outputs the backend kept outside the batches' arenas, and the per-task errors of
//! on_error=collect.

use crate::error::{Error, ErrorKind};
use crate::task::{BatchOutcome, LargeOutput, TaskFailure};

/// The ordered results of a call: task `i`'s output is `data[ends[i-1]..ends[i]]`, or one the
/// backend kept outside its batch's arena ([`LargeOutput`]: results above max_nbytes, process
/// backend). With on_error=collect, failed tasks have
/// an empty output and an entry in `errors`.
#[derive(Debug, Default)]
pub struct Results {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// (task index, its error), sorted by index.
    errors: Vec<(usize, Error)>,
    /// (task index, its output kept outside `data`), sorted by index.
    large: Vec<(usize, LargeOutput)>,
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
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        Some(&self.data[start..end])
    }

    /// Every failed task's (index, error), by index (on_error=collect).
    pub fn errors(&self) -> &[(usize, Error)] {
        &self.errors
    }

    /// Joins batch outcomes (any order, each possibly read in part up to `skip`) into input order;
    /// `describe` turns a collected task failure into its error. An I/O error when the joined
    /// results cannot be allocated (their sizes are the tasks': never abort).
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
        if let [(only, 0)] = outcomes.as_mut_slice() {
            return Ok(Results {
                data: std::mem::take(&mut only.data),
                ends: std::mem::take(&mut only.ends),
                errors,
                large,
            });
        }
        let total_tasks: usize = outcomes.iter().map(|(o, skip)| o.ends.len() - skip).sum();
        let total_bytes: usize = outcomes
            .iter()
            .map(|(o, skip)| o.data.len() - if *skip == 0 { 0 } else { o.ends[skip - 1] })
            .fold(0, usize::saturating_add);
        let mut results = Results {
            data: Vec::new(),
            ends: Vec::new(),
            errors,
            large,
        };
        let reserved = results
            .data
            .try_reserve_exact(total_bytes)
            .and_then(|()| results.ends.try_reserve_exact(total_tasks));
        if let Err(error) = reserved {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot gather the call's results ({total_bytes} bytes): {error}"),
            ));
        }
        for (outcome, skip) in outcomes {
            let start = if skip == 0 { 0 } else { outcome.ends[skip - 1] };
            let base = results.data.len();
            results.data.extend_from_slice(&outcome.data[start..]);
            results
                .ends
                .extend(outcome.ends[skip..].iter().map(|end| base + end - start));
        }
        Ok(results)
    }
}
