//! Progress reporting for one call: joblib's verbose lines ([`verbose`]), pj's progress bar
//! ([`bar`]) and the user's progress callback, behind one [`Progress`] the dispatcher drives.
//!
//! Everything here is pure logic: time comes from an injected [`Clock`] and output goes to an
//! injected [`Sink`], so tests replay exact sequences. The real sink, [`StdStreams`], writes each
//! piece of text with one write on stdout or stderr ([`emit`]), so lines from concurrent calls
//! never interleave mid-line.
//!
//! The dispatcher reports its counters as a [`Snapshot`] (joblib's `n_dispatched_batches`,
//! `n_dispatched_tasks`, `n_completed_tasks` and the state of the input), because joblib's choice
//! of line and its filters depend on all of them.

pub mod bar;
pub mod verbose;

use std::io::{self, IsTerminal, Write};
use std::time::Instant;

pub use bar::{ProgressBar, Style, Unit};
pub use verbose::{VerboseReporter, VerboseSettings};

/// A change of batch size, for verbose reporting ("Batch computation too fast ...").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeChange {
    /// The smoothed batch duration that caused the change, in seconds.
    pub seconds: f64,
    /// The new batch size.
    pub size: usize,
    /// True when the size grew (batches were too fast).
    pub grew: bool,
}

/// The size of a call announced before it starts (`pj_parallel_expect`, and `pj_parallel_for`
/// for its ranges): `items` in all, each task covering `items_per_task` of them (the last one
/// fewer). joblib's `len(iterable)` when each task is one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Items in the call.
    pub items: usize,
    /// Items each task covers (the last task the rest).
    pub items_per_task: std::num::NonZeroUsize,
}

impl Expected {
    /// The number of tasks the call will have.
    pub fn tasks(&self) -> usize {
        self.items.div_ceil(self.items_per_task.get())
    }

    /// Whether progress counts items rather than tasks.
    fn counts_items(&self) -> bool {
        self.items_per_task.get() > 1
    }

    /// Items done once `tasks` tasks are: full tasks, capped at the total. Exact unless the short
    /// last task finished before others (then ahead by less than one task's items); it never
    /// reaches the total before every task is done, and it never goes back.
    fn items_done(&self, tasks: usize) -> usize {
        tasks
            .saturating_mul(self.items_per_task.get())
            .min(self.items)
    }
}

/// The dispatcher's counters when progress is evaluated, named after joblib's attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Batches handed to the backend so far; shapes 1 and 2 are filtered on it.
    pub dispatched_batches: usize,
    /// Tasks handed to the backend so far (D); shape 3's total.
    pub dispatched_tasks: usize,
    /// Tasks completed so far (k), counted a whole batch at a time.
    pub completed_tasks: usize,
    /// Completions no longer read input: it ran out, or `pre_dispatch="all"` reads it all up front
    /// (joblib's `_original_iterator is None`). Selects shape 3 over shapes 1 and 2.
    pub input_exhausted: bool,
    /// More tasks may still be read from the input (joblib's `_iterating`); the final line waits
    /// until it is false.
    pub still_reading: bool,
    /// The call is stopping early (a failure, a timeout, a cancellation): no final line.
    pub aborting: bool,
}

impl Snapshot {
    /// joblib's `_is_completed`: every dispatched task completed, no more input, no abort.
    pub fn is_completed(&self) -> bool {
        self.completed_tasks == self.dispatched_tasks && !self.still_reading && !self.aborting
    }
}

/// A standard stream of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

impl Stream {
    /// Where joblib writes its verbose lines: stderr below 50, stdout from 50.
    pub fn for_verbose(verbose: i64) -> Stream {
        if verbose >= 50 {
            Stream::Stdout
        } else {
            Stream::Stderr
        }
    }

    /// The width of the terminal the stream is, in columns: the window size the terminal
    /// reports, else `$COLUMNS`; `None` when neither says (not a terminal, a zero size).
    pub fn columns(self) -> Option<usize> {
        let size = match self {
            Stream::Stdout => rustix::termios::tcgetwinsize(io::stdout()),
            Stream::Stderr => rustix::termios::tcgetwinsize(io::stderr()),
        };
        if let Ok(size) = size
            && size.ws_col > 0
        {
            return Some(usize::from(size.ws_col));
        }
        std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .filter(|&c: &usize| c > 0)
    }

    /// Whether the stream is a terminal (for choosing the progress bar's behaviour).
    pub fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => io::stdout().is_terminal(),
            Stream::Stderr => io::stderr().is_terminal(),
        }
    }
}

/// Writes `text` to `stream` in one piece: one `write_all` of the whole buffer on the locked handle,
/// then a flush. stderr is unbuffered, so this is one write(2) (unless the kernel takes it in
/// parts); stdout is line-buffered, and a buffer ending with a newline goes straight through, after
/// whatever incomplete line Rust code in the process had buffered before it.
pub fn emit(text: &str, stream: Stream) -> io::Result<()> {
    match stream {
        Stream::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
        Stream::Stderr => {
            let mut err = io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()
        }
    }
}

/// Where [`Progress`] writes. Each call gets text to write in one piece.
pub trait Sink: Send {
    /// Writes `text` (one or more whole lines, or an in-place progress bar line) to `stream`.
    fn write(&mut self, stream: Stream, text: &str);
}

/// The process's real stdout and stderr, through [`emit`]. Write errors are ignored: reporting
/// progress must never fail a call (a closed stderr is the user's choice).
#[derive(Clone, Copy, Debug, Default)]
pub struct StdStreams;

impl Sink for StdStreams {
    fn write(&mut self, stream: Stream, text: &str) {
        let _ = emit(text, stream);
    }
}

/// The time since the call started.
pub trait Clock: Send {
    /// Seconds since the call started.
    fn elapsed_seconds(&self) -> f64;
}

/// The call started at this instant.
impl Clock for Instant {
    fn elapsed_seconds(&self) -> f64 {
        self.elapsed().as_secs_f64()
    }
}

/// The user's progress callback: `(completed tasks, total or -1 while unknown, elapsed seconds)`,
/// called once per completed task, on the thread that reports the completion.
pub type ProgressCallback = Box<dyn FnMut(u64, i64, f64) + Send>;

/// The bar and the stream it is drawn on.
struct BarOutput {
    bar: ProgressBar,
    stream: Stream,
}

/// All progress reporting of one call: verbose lines, the progress bar and the progress callback.
pub struct Progress {
    verbose: VerboseReporter,
    bar: Option<BarOutput>,
    callback: Option<ProgressCallback>,
    clock: Box<dyn Clock>,
    sink: Box<dyn Sink>,
    /// Tasks the callback has been told about.
    announced_tasks: usize,
    /// The latest counters: what the bar shows when redrawn after a verbose line, and at the end.
    last: Snapshot,
    /// joblib's sequential path: see [`Progress::sequential`].
    sequential: bool,
    /// The number of tasks, once the dispatcher knows no more will come ([`Progress::input_ended`]).
    input_total: Option<usize>,
    /// The call's size as announced before it started, if it was.
    expected: Option<Expected>,
}

impl Progress {
    /// Reporting for one call, verbose lines only (none at verbose 0).
    pub fn new(verbose: VerboseSettings, clock: Box<dyn Clock>, sink: Box<dyn Sink>) -> Self {
        Progress {
            verbose: VerboseReporter::new(verbose),
            bar: None,
            callback: None,
            clock,
            sink,
            announced_tasks: 0,
            last: Snapshot::default(),
            sequential: false,
            input_total: None,
            expected: None,
        }
    }

    /// The call's size is known before it starts: the callback and the bar show the total from
    /// the first completion, counting items when each task covers several. (The verbose lines'
    /// total, joblib's `len(iterable)`, comes with the [`VerboseSettings`].)
    pub fn with_expected(mut self, expected: Expected) -> Self {
        self.expected = Some(expected);
        if let Some(output) = self.bar.take() {
            self.bar = Some(BarOutput {
                bar: output.bar.with_style(self.bar_style(None)),
                ..output
            });
        }
        self
    }

    /// The bar's style for this call, `columns` wide.
    fn bar_style(&self, columns: Option<usize>) -> Style {
        let items = self.expected.is_some_and(|e| e.counts_items());
        Style {
            unit: if items { Unit::Items } else { Unit::Tasks },
            columns,
        }
    }

    /// Reports as joblib's sequential path (`n_jobs=1`) does, whatever the batches: its loop
    /// evaluates progress after every task, counting the task as a batch of its own and the input
    /// as still being read, so its lines depend only on the number of tasks done; the final line
    /// comes once, from [`Progress::loop_ended`]. joblib's sequential backend never auto-batches,
    /// so pj's batch size changes there (which keep its per-task cost low) are not reported.
    pub fn sequential(mut self) -> Self {
        self.sequential = true;
        self
    }

    /// Adds the user's callback, called once per completed task.
    pub fn with_callback(mut self, callback: ProgressCallback) -> Self {
        self.callback = Some(callback);
        self
    }

    /// Adds a progress bar on `stream`, redrawn in place when `is_terminal` (see
    /// [`Stream::is_terminal`]), else written as occasional full lines. Verbose lines written to
    /// the same stream are kept apart from an in-place bar; on two streams that share a terminal
    /// they are not, so put the bar on [`VerboseReporter::stream`] when both are wanted.
    /// `columns` is the terminal's width when known: the bar's line fits in it.
    pub fn with_bar(mut self, stream: Stream, is_terminal: bool, columns: Option<usize>) -> Self {
        self.bar = Some(BarOutput {
            bar: ProgressBar::new(is_terminal).with_style(self.bar_style(columns)),
            stream,
        });
        self
    }

    /// A parallel call starts on `workers` workers of the backend called `backend_class_name`
    /// (joblib's class name, `Resolved::backend_class_name`); prints nothing for one worker.
    pub fn start(&mut self, backend_class_name: &str, workers: usize) {
        if let Some(line) = self.verbose.start(backend_class_name, workers) {
            self.write_verbose(line);
        }
    }

    /// No more input will come: the call has `total` tasks. The callback and the bar show that
    /// total from now on, even where joblib's counters (and so the verbose lines) have not seen
    /// the end of the input yet.
    pub fn input_ended(&mut self, total: usize) {
        self.input_total = Some(total);
    }

    /// The auto-batching policy changed the batch size (not reported on the sequential path).
    pub fn batch_size_changed(&mut self, change: &SizeChange) {
        if self.sequential {
            return;
        }
        if let Some(line) = self.verbose.batch_size_changed(change) {
            self.write_verbose(line);
        }
    }

    /// A batch completed (on the sequential path: a task); `snapshot` already counts it. Calls the
    /// callback once per newly completed task, then writes the verbose line and the bar if due.
    pub fn completed(&mut self, snapshot: &Snapshot) {
        let elapsed = self.clock.elapsed_seconds();
        self.announce_tasks(snapshot, elapsed);
        if !self.sequential {
            self.report(snapshot, elapsed);
            return;
        }
        for done in self.last.completed_tasks + 1..=snapshot.completed_tasks {
            let task = Snapshot {
                dispatched_batches: done,
                dispatched_tasks: done,
                completed_tasks: done,
                input_exhausted: false,
                still_reading: true,
                aborting: false,
            };
            self.report(&task, elapsed);
        }
    }

    /// The sequential path's loop ended (every task ran, or one failed): joblib evaluates its
    /// progress once more there, with the input closed, which is where a sequential call's final
    /// line comes from. `snapshot` is the dispatcher's, with every completion already reported.
    pub fn loop_ended(&mut self, snapshot: &Snapshot) {
        if !self.sequential {
            self.completed(snapshot);
            return;
        }
        let end = Snapshot {
            dispatched_batches: snapshot.dispatched_tasks,
            input_exhausted: true,
            still_reading: false,
            ..*snapshot
        };
        let elapsed = self.clock.elapsed_seconds();
        self.announce_tasks(&end, elapsed);
        self.report(&end, elapsed);
    }

    /// No more input will come and every task completed, as a completion that just came
    /// reported (or none ran): joblib's parallel path reports the call complete now; its
    /// sequential path does it once its loop ends ([`Progress::ended`]).
    pub fn input_closed(&mut self, snapshot: &Snapshot) {
        if !self.sequential {
            self.completed(snapshot);
        }
    }

    /// The call is over (`snapshot`: the dispatcher's final counters): the sequential path's last
    /// evaluation unless the call failed ([`Progress::loop_ended`]), then the bar's final line.
    pub fn ended(mut self, snapshot: &Snapshot) {
        if self.sequential && !snapshot.aborting {
            self.loop_ended(snapshot);
        }
        self.finish(snapshot);
    }

    /// The call is over (`snapshot`: the dispatcher's final counters): writes the bar's final
    /// line, which says "stopped" when the call is stopping early.
    pub fn finish(mut self, snapshot: &Snapshot) {
        if let Some(BarOutput { bar, stream }) = self.bar.take() {
            let elapsed = self.clock.elapsed_seconds();
            let done = snapshot.completed_tasks.max(self.last.completed_tasks);
            let total = self.known_total(snapshot);
            let text = bar.finish(self.units(done), total, elapsed, snapshot.aborting);
            self.sink.write(stream, &text);
        }
    }

    /// The total the callback and the bar report: announced before the call, or known once the
    /// input has ended (the real count then wins over an announced one), or once it has been read
    /// to its end; in items when the call counts items.
    fn known_total(&self, snapshot: &Snapshot) -> Option<usize> {
        if let Some(expected) = self.expected.filter(Expected::counts_items) {
            return Some(expected.items);
        }
        let read_to_end = snapshot.input_exhausted && !snapshot.still_reading;
        self.input_total
            .or(self.expected.map(|e| e.items))
            .or(self.verbose.settings().total_tasks)
            .or(read_to_end.then_some(snapshot.dispatched_tasks))
    }

    /// What `tasks` completed tasks count as for the callback and the bar.
    fn units(&self, tasks: usize) -> usize {
        match self.expected.filter(Expected::counts_items) {
            Some(expected) => expected.items_done(tasks),
            None => tasks,
        }
    }

    fn announce_tasks(&mut self, snapshot: &Snapshot, elapsed: f64) {
        let total = self
            .known_total(snapshot)
            .map_or(-1, |total| i64::try_from(total).unwrap_or(i64::MAX));
        let Some(callback) = self.callback.as_mut() else {
            return;
        };
        for done in self.announced_tasks + 1..=snapshot.completed_tasks {
            let units = match self.expected.filter(Expected::counts_items) {
                Some(expected) => expected.items_done(done),
                None => done,
            };
            callback(units as u64, total, elapsed);
        }
        self.announced_tasks = self.announced_tasks.max(snapshot.completed_tasks);
    }

    fn report(&mut self, snapshot: &Snapshot, elapsed: f64) {
        self.last = *snapshot;
        let line = self.verbose.progress(snapshot, elapsed);
        let total = self.known_total(snapshot);
        let verbose_stream = self.verbose.stream();
        let done = self.units(snapshot.completed_tasks);
        let Some(output) = self.bar.as_mut() else {
            if let Some(line) = line {
                self.sink.write(verbose_stream, &line);
            }
            return;
        };
        match line {
            Some(line) if output.stream == verbose_stream => {
                // One write: the verbose line (over the bar's line), then the bar.
                let bar_was_on_screen = output.bar.has_line_on_screen();
                let bar_text = if bar_was_on_screen {
                    output.bar.redraw(done, total, elapsed)
                } else {
                    output.bar.update(done, total, elapsed)
                };
                let text = shared_stream_text(bar_was_on_screen, &line, bar_text.as_deref());
                self.sink.write(verbose_stream, &text);
            }
            line => {
                if let Some(line) = line {
                    self.sink.write(verbose_stream, &line);
                }
                if let Some(text) = output.bar.update(done, total, elapsed) {
                    self.sink.write(output.stream, &text);
                }
            }
        }
    }

    /// Writes a verbose line outside a completion (start, batch size), keeping the bar intact.
    fn write_verbose(&mut self, line: String) {
        let stream = self.verbose.stream();
        let last = self.last;
        let total = self.known_total(&last);
        let done = self.units(last.completed_tasks);
        match self.bar.as_mut() {
            Some(output) if output.stream == stream && output.bar.has_line_on_screen() => {
                let elapsed = self.clock.elapsed_seconds();
                let bar_text = output.bar.redraw(done, total, elapsed);
                let text = shared_stream_text(true, &line, bar_text.as_deref());
                self.sink.write(stream, &text);
            }
            _ => self.sink.write(stream, &line),
        }
    }
}

/// A verbose line and the bar on one stream, as one piece of text: an in-place bar line already on
/// screen is cleared before the verbose line, and the bar is drawn again after it.
fn shared_stream_text(clear_bar_first: bool, line: &str, bar_text: Option<&str>) -> String {
    let mut text = String::with_capacity(line.len() + bar_text.map_or(0, str::len) + 4);
    if clear_bar_first {
        text.push_str(bar::CLEAR_LINE);
    }
    text.push_str(line);
    if let Some(bar_text) = bar_text {
        text.push_str(bar_text);
    }
    text
}

#[cfg(test)]
mod tests;
