//! joblib's verbose lines, as joblib 1.6.0's `Parallel.print_progress`, `_verbosity_filter`,
//! `short_format_time` and the auto-batching messages write them. Which
//! lines a call prints depends on the dispatcher's counters at each completion; how those match
//! joblib's is described in the README (checked against joblib's real output by
//! tests/verbose_golden.rs).
//!
//! Every line is `[Parallel(n_jobs=<requested>)]: <message>\n`. The requested value is printed as
//! joblib prints it: the user's number after scoped defaults are applied (`-1` stays `-1`), and `1`
//! when nothing asked for one, because joblib replaces an unset `n_jobs` by the backend's default (1)
//! in the constructor, so its lines never say `None`.
//!
//! Progress lines come in four shapes, chosen from the dispatcher's counters ([`Snapshot`]):
//! 1. input still being read, total unknown: `Done {k:>w} tasks {pad}| elapsed: {t}`;
//! 2. input still being read, total known: `Done {k:>w} out of {N:>w} | elapsed: {t}`;
//! 3. input fully dispatched: `Done {k:>w} out of {D:>w} | elapsed: {t} remaining: {r}`;
//! 4. everything done: `Done {k:>w} out of {k:>w} | elapsed: {t} finished`.
//!
//! Shapes 1 and 2 are thinned by [`verbosity_filter_prints`] (on the number of dispatched
//! *batches*), shape 3 by its own rule in [`VerboseReporter::progress`].
//!
//! Backend names in the start line are joblib's class names
//! ([`crate::config::BackendKind::joblib_class_name`]: `LokyBackend` for pj's process pool,
//! `ThreadingBackend`; `MultiprocessingBackend` when the backend was given as `multiprocessing`,
//! see [`crate::config::Resolved::backend_class_name`]), so that the lines read as joblib's;
//! [`VerboseReporter::start`] prints whatever name it is given. A sequential call has no start
//! line.
//!
//! Times are formatted as on Unix: joblib subtracts 0.1 s on Windows only.

use super::SizeChange;

use super::{Snapshot, Stream};

/// Level from which joblib prints its notes: auto-batching changes and the forced-to-threads note.
pub const NOTES_FROM_VERBOSE: i64 = 10;

/// What a [`VerboseReporter`] needs to know about its call, fixed when the call starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerboseSettings {
    /// `n_jobs` as the user asked for it (after scoped defaults), `None` when unset (printed as 1).
    pub n_jobs_requested: Option<i64>,
    /// joblib's verbosity level; 0 (or less) is silent.
    pub verbose: i64,
    /// Number of tasks when known in advance (joblib's `len(iterable)`), `None` for a generator.
    /// It sets the width of the counts and the "out of N" of shape 2.
    pub total_tasks: Option<usize>,
    /// Tasks read before the first completion (joblib's `_pre_dispatch_amount`), 0 for
    /// `pre_dispatch="all"`. It shifts shape 3's filter.
    pub pre_dispatch_tasks: usize,
}

/// Produces joblib's verbose lines for one call. It holds no clock and writes nothing: each method
/// returns the whole line (with its newline) or `None` when joblib would print nothing, and the
/// caller writes it to [`VerboseReporter::stream`] in one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerboseReporter {
    settings: VerboseSettings,
    prefix: String,
    width: usize,
}

impl VerboseReporter {
    /// A reporter for one call.
    pub fn new(settings: VerboseSettings) -> Self {
        let n_jobs = settings.n_jobs_requested.unwrap_or(1);
        VerboseReporter {
            settings,
            prefix: format!("[Parallel(n_jobs={n_jobs})]: "),
            width: count_width(settings.total_tasks),
        }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &VerboseSettings {
        &self.settings
    }

    /// True at verbose 0: no method returns a line.
    pub fn is_silent(&self) -> bool {
        self.settings.verbose <= 0
    }

    /// Where its lines go: stderr below 50, stdout from 50.
    pub fn stream(&self) -> Stream {
        Stream::for_verbose(self.settings.verbose)
    }

    /// `Using backend <name> with <workers> concurrent workers.`, printed once when a parallel call
    /// starts. A call that runs sequentially (one worker) has no start line: its absence is how
    /// joblib users notice that their call did not run in parallel.
    pub fn start(&self, backend_class_name: &str, workers: usize) -> Option<String> {
        if workers <= 1 {
            return None;
        }
        self.line(&format!(
            "Using backend {backend_class_name} with {workers} concurrent workers."
        ))
    }

    /// joblib's `print_progress`: the line to print after a completion (or when the sequential
    /// loop ends), given the counters at that moment and the seconds since the call started.
    pub fn progress(&self, snapshot: &Snapshot, elapsed_seconds: f64) -> Option<String> {
        if self.is_silent() {
            return None;
        }
        let verbose = self.settings.verbose;
        let w = self.width;
        let k = snapshot.completed_tasks;
        let elapsed = short_format_time(elapsed_seconds);

        if snapshot.is_completed() {
            return self.line(&format!(
                "Done {k:w$} out of {k:w$} | elapsed: {elapsed} finished"
            ));
        }

        if !snapshot.input_exhausted {
            if !verbosity_filter_prints(snapshot.dispatched_batches, verbose) {
                return None;
            }
            return match self.settings.total_tasks {
                Some(total) => self.line(&format!(
                    "Done {k:w$} out of {total:w$} | elapsed: {elapsed}"
                )),
                None => {
                    // Pads "tasks" to the length of "out of {N:w}", so the bars line up with
                    // shape 3's.
                    let pad = " ".repeat("out of ".len() + w - "tasks".len());
                    self.line(&format!("Done {k:w$} tasks {pad}| elapsed: {elapsed}"))
                }
            };
        }

        let dispatched = snapshot.dispatched_tasks;
        // joblib always prints when nothing has completed yet (only reachable when the first task
        // of a sequential call fails: "Done 0 out of 1 ... remaining").
        if k != 0 && !shape_three_prints(k, dispatched, self.settings.pre_dispatch_tasks, verbose) {
            return None;
        }
        // Same operations, in the same order, as joblib, so the rounding is the same.
        let remaining_seconds =
            (elapsed_seconds / k.max(1) as f64) * (dispatched as f64 - k as f64);
        let remaining = short_format_time(remaining_seconds);
        self.line(&format!(
            "Done {k:w$} out of {dispatched:w$} | elapsed: {elapsed} remaining: {remaining}"
        ))
    }

    /// The auto-batching report, from verbose 10: `Batch computation too fast (<s>s.) Setting
    /// batch_size=<n>.` (or `too slow`), with the smoothed duration as Python prints a float.
    pub fn batch_size_changed(&self, change: &SizeChange) -> Option<String> {
        if self.settings.verbose < NOTES_FROM_VERBOSE {
            return None;
        }
        let speed = if change.grew { "fast" } else { "slow" };
        self.line(&format!(
            "Batch computation too {speed} ({}s.) Setting batch_size={}.",
            python_float_repr(change.seconds),
            change.size
        ))
    }

    fn line(&self, message: &str) -> Option<String> {
        if self.is_silent() {
            return None;
        }
        Some(format!("{}{message}\n", self.prefix))
    }
}

/// joblib's note when `require="sharedmem"` replaced a backend the user named, from verbose 10:
/// `Using <replacement> as joblib backend instead of <replaced> as the latter does not provide
/// shared memory semantics.` joblib prints it with a bare `print`: no prefix, always on stdout.
pub fn forced_to_threads_note(verbose: i64, replaced: &str, replacement: &str) -> Option<String> {
    (verbose >= NOTES_FROM_VERBOSE).then(|| {
        format!(
            "Using {replacement} as joblib backend instead of {replaced} as the latter does not \
             provide shared memory semantics.\n"
        )
    })
}

/// joblib's `_verbosity_filter`, inverted to say when a line of shape 1 or 2 prints. Above 10,
/// always; otherwise when the number of dispatched batches `b` crosses `c·m²` for some integer m,
/// with `c = 0.5 × (11 − verbose)²`, so lines get quadratically rarer as the call goes on.
pub fn verbosity_filter_prints(dispatched_batches: usize, verbose: i64) -> bool {
    if verbose <= 0 {
        return false;
    }
    if verbose > 10 || dispatched_batches == 0 {
        return true;
    }
    // Float operations as in joblib (true division, sqrt, truncation), for identical decisions.
    let spacing = 0.5 * ((11 - verbose) as f64).powi(2);
    let scale = (dispatched_batches as f64 / spacing).sqrt();
    let next_scale = ((dispatched_batches + 1) as f64 / spacing).sqrt();
    next_scale.trunc() != scale.trunc()
}

/// Shape 3's filter, once the input is fully dispatched: print when `cursor mod f == 0`, with
/// `cursor = D − k + 1 − P` and `f = D / verbose + 1`, except for the next-to-last task.
fn shape_three_prints(
    completed: usize,
    dispatched: usize,
    pre_dispatch: usize,
    verbose: i64,
) -> bool {
    let is_next_to_last = completed + 1 == dispatched;
    // i128: the cursor goes negative when fewer tasks remain than were pre-dispatched.
    let cursor = dispatched as i128 - completed as i128 + 1 - pre_dispatch as i128;
    let frequency = dispatched as i128 / i128::from(verbose) + 1;
    !is_next_to_last && cursor.rem_euclid(frequency) == 0
}

/// Width of the counts: the digits of the total (joblib's `floor(log10(N)) + 1`, computed in
/// floating point as joblib does), or 3 when the total is unknown or zero.
fn count_width(total_tasks: Option<usize>) -> usize {
    match total_tasks {
        Some(total) if total > 0 => (total as f64).log10().floor() as usize + 1,
        _ => 3,
    }
}

/// joblib's `short_format_time`: `" %5.1fs"` up to 60 s, `"%4.1fmin"` above.
pub fn short_format_time(seconds: f64) -> String {
    if seconds > 60.0 {
        format!("{:4.1}min", seconds / 60.0)
    } else {
        format!(" {seconds:5.1}s")
    }
}

/// A float as Python's `repr` (and f-strings) print it: the shortest digits that read back to the
/// same value, with `.0` on whole numbers and an exponent (`1.5e-05`, `1e+16`) below 1e-4 or from
/// 1e16. Rust's `Display` picks the same digits but never uses an exponent and drops the `.0`.
pub fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        }
        .to_owned();
    }
    // `{:e}` gives the shortest round-trip digits as `d[.ddd]e<exp>`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    let sign = if value < 0.0 { "-" } else { "" };

    if !(-4..16).contains(&exponent) {
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        return format!(
            "{sign}{mantissa}e{exponent_sign}{:02}",
            exponent.unsigned_abs()
        );
    }
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if exponent < 0 {
        let zeros = "0".repeat((-exponent - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let integer_digits = exponent as usize + 1;
    if digits.len() <= integer_digits {
        let zeros = "0".repeat(integer_digits - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (integer, fraction) = digits.split_at(integer_digits);
        format!("{sign}{integer}.{fraction}")
    }
}
