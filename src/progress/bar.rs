//! A one-line progress bar, pj's addition to joblib's verbose lines: tasks done, percentage, rate,
//! elapsed time and ETA.
//!
//! ```text
//! [#######.............]  37/100  37% | 12.3 tasks/s | elapsed 00:03 | ETA 00:05
//! 37 tasks | 12.3 tasks/s | elapsed 00:03                    (total not known yet)
//! [###.................]  15/100  15% | 7.5 tasks/s | elapsed 00:02 | stopped   (a failed call)
//! ```
//!
//! It counts tasks, or items for calls whose tasks cover several ([`Unit`]), and fits the
//! terminal's width ([`Style::columns`]).
//!
//! Pure: it is given the counts and the elapsed time and returns the text to write; it never reads
//! a clock or writes. On a terminal the line is redrawn in place (`\r`, then `ESC [K` to clear what
//! a longer previous line left) at most every [`TERMINAL_REDRAW_SECONDS`], so millions of tiny
//! tasks do not turn into millions of writes. Anywhere else (a log file, a pipe) in-place redraws
//! would pile up as garbage, so it writes a plain full line at most every [`PLAIN_LINE_SECONDS`].
//! [`ProgressBar::finish`] always writes the final state, ending the line.

/// Moves to the start of the line and clears it: how an in-place line is redrawn or removed.
pub const CLEAR_LINE: &str = "\r\x1b[K";

/// Minimum time between two redraws on a terminal (the first update always draws).
pub const TERMINAL_REDRAW_SECONDS: f64 = 0.1;

/// Minimum time between two full lines when the stream is not a terminal; the first comes after
/// this long, so a short call writes only its final line.
pub const PLAIN_LINE_SECONDS: f64 = 2.0;

/// Cells of the bar itself, when the line has room for them.
const BAR_CELLS: usize = 20;

/// The fewest cells worth drawing when a narrow terminal shrinks the bar.
const MIN_BAR_CELLS: usize = 5;

/// What the bar counts: pj's tasks, or the items of a call whose tasks each cover several
/// (`pj_parallel_for`'s ranges, the wrappers' chunks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unit {
    /// One per task.
    #[default]
    Tasks,
    /// One per input item.
    Items,
}

impl Unit {
    fn word(self, count: usize) -> &'static str {
        match (self, count) {
            (Unit::Tasks, 1) => "task",
            (Unit::Tasks, _) => "tasks",
            (Unit::Items, 1) => "item",
            (Unit::Items, _) => "items",
        }
    }
}

/// How the bar's line is laid out: its unit, and the terminal's width when known (a line wider
/// than the terminal would wrap, and every redraw would leave a line behind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// What is counted.
    pub unit: Unit,
    /// The terminal's columns; `None`: no limit.
    pub columns: Option<usize>,
}

/// The progress bar of one call.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressBar {
    terminal: bool,
    style: Style,
    next_line_at: f64,
    on_screen: bool,
}

impl ProgressBar {
    /// A bar for a stream that is (or is not) a terminal.
    pub fn new(is_terminal: bool) -> Self {
        ProgressBar {
            terminal: is_terminal,
            style: Style::default(),
            next_line_at: if is_terminal { 0.0 } else { PLAIN_LINE_SECONDS },
            on_screen: false,
        }
    }

    /// The same bar, laid out with `style`.
    pub fn with_style(mut self, style: Style) -> Self {
        self.style = style;
        self
    }

    /// True when an unfinished in-place line is on the terminal: anything else written to that
    /// stream must clear it first ([`CLEAR_LINE`]) and redraw it after ([`ProgressBar::redraw`]).
    pub fn has_line_on_screen(&self) -> bool {
        self.on_screen
    }

    /// The text to write after progress was made, or `None` when the rate limit says not yet.
    pub fn update(
        &mut self,
        done: usize,
        total: Option<usize>,
        elapsed_seconds: f64,
    ) -> Option<String> {
        if elapsed_seconds < self.next_line_at {
            return None;
        }
        let interval = if self.terminal {
            TERMINAL_REDRAW_SECONDS
        } else {
            PLAIN_LINE_SECONDS
        };
        self.next_line_at = elapsed_seconds + interval;
        Some(self.draw(done, total, elapsed_seconds))
    }

    /// On a terminal, the in-place line for the current state whatever the rate limit (to put the
    /// bar back after another line was written); `None` elsewhere, where nothing needs restoring.
    pub fn redraw(
        &mut self,
        done: usize,
        total: Option<usize>,
        elapsed_seconds: f64,
    ) -> Option<String> {
        self.terminal
            .then(|| self.draw(done, total, elapsed_seconds))
    }

    /// The final state as a complete line (ending with `\n`), replacing the in-place line on a
    /// terminal. A call that `stopped` early (a failure, a cancellation) says so where the ETA was,
    /// so its last line does not read like a slow success.
    pub fn finish(
        self,
        done: usize,
        total: Option<usize>,
        elapsed_seconds: f64,
        stopped: bool,
    ) -> String {
        let content = self.content(done, total, elapsed_seconds, stopped);
        if self.terminal {
            format!("{CLEAR_LINE}{content}\n")
        } else {
            format!("{content}\n")
        }
    }

    fn draw(&mut self, done: usize, total: Option<usize>, elapsed_seconds: f64) -> String {
        let content = self.content(done, total, elapsed_seconds, false);
        if self.terminal {
            self.on_screen = true;
            format!("{CLEAR_LINE}{content}")
        } else {
            format!("{content}\n")
        }
    }

    fn content(&self, done: usize, total: Option<usize>, elapsed: f64, stopped: bool) -> String {
        let style = Style {
            // Only a terminal has a width; a log file keeps whole lines.
            columns: self.style.columns.filter(|_| self.terminal),
            ..self.style
        };
        render_with(done, total, elapsed, style, stopped)
    }
}

/// The bar's content for a state, counting tasks, without any cursor movement or newline.
#[cfg(test)]
pub fn render(done: usize, total: Option<usize>, elapsed_seconds: f64) -> String {
    render_with(done, total, elapsed_seconds, Style::default(), false)
}

/// The bar's content laid out with `style`: within `style.columns - 1` characters (the last
/// column is left free, as a character there makes some terminals wrap), shrinking the bar, then
/// dropping the ETA, the elapsed time and the bar, in that order, before cutting the line.
pub fn render_with(
    done: usize,
    total: Option<usize>,
    elapsed_seconds: f64,
    style: Style,
    stopped: bool,
) -> String {
    let rate = format_rate(done, elapsed_seconds, style.unit);
    let elapsed = format!(" | elapsed {}", format_clock(elapsed_seconds));
    let last = match (stopped, total) {
        (true, _) => " | stopped".to_owned(),
        (false, Some(total)) => format!(" | ETA {}", format_eta(done, total, elapsed_seconds)),
        (false, None) => String::new(),
    };
    let Some(total) = total else {
        let counts = format!("{done} {}", style.unit.word(done));
        return fit(
            &[&counts, &format!(" | {rate}"), &elapsed, &last],
            style.columns,
        );
    };
    let shown = done.min(total);
    // Counts padded to the total's width, so the line does not shift as they grow.
    let width = total.to_string().len();
    let percent = if total == 0 {
        100
    } else {
        // u128: no overflow whatever the counts; floors, so 100% means really done.
        (shown as u128 * 100 / total as u128) as usize
    };
    let counts = format!("{done:>width$}/{total} {percent:>3}%");
    let parts = [counts, format!(" | {rate}"), elapsed, last];
    let Some(limit) = style.columns.map(|c| c.saturating_sub(1)) else {
        return with_bar(shown, total, BAR_CELLS, &parts);
    };
    // The bar (at least MIN_BAR_CELLS) before the ETA and the elapsed time: shed those first.
    for kept in tails(&parts) {
        let text_len: usize = kept.iter().map(|p| p.len()).sum();
        let cells = limit.saturating_sub(3 + text_len).min(BAR_CELLS);
        if cells >= MIN_BAR_CELLS {
            return with_bar(shown, total, cells, &kept);
        }
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    fit(&parts, style.columns)
}

/// The parts to try, fullest first: everything, then without the last part (ETA or "stopped"
/// goes after the elapsed time when stopped), then the counts and the rate, then the counts.
fn tails(parts: &[String; 4]) -> Vec<Vec<&str>> {
    let [counts, rate, elapsed, last] = parts.each_ref().map(String::as_str);
    let stopped = last.starts_with(" | stopped");
    let mut options = vec![vec![counts, rate, elapsed, last]];
    options.push(if stopped {
        vec![counts, rate, last]
    } else {
        vec![counts, rate, elapsed]
    });
    options.push(vec![counts, rate]);
    options.push(vec![counts]);
    options
}

/// `[###...] ` then the parts, with `cells` cells, `shown` of `total` filled (floored).
fn with_bar<S: AsRef<str>>(shown: usize, total: usize, cells: usize, parts: &[S]) -> String {
    let filled = if total == 0 {
        cells
    } else {
        (shown as u128 * cells as u128 / total as u128) as usize
    };
    let mut text = String::with_capacity(96);
    text.push('[');
    text.push_str(&"#".repeat(filled));
    text.push_str(&".".repeat(cells - filled));
    text.push_str("] ");
    for part in parts {
        text.push_str(part.as_ref());
    }
    text
}

/// Joins the first part and as many of the others as fit in `columns - 1` characters, dropping
/// from the end (the ETA or "stopped" last, though "stopped" is kept over the elapsed time);
/// the first part alone is cut to fit.
fn fit(parts: &[&str], columns: Option<usize>) -> String {
    let Some(limit) = columns.map(|c| c.saturating_sub(1)) else {
        return parts.concat();
    };
    let mut kept: Vec<&str> = parts.to_vec();
    while kept.len() > 1 && kept.iter().map(|p| p.len()).sum::<usize>() > limit {
        // Drop the least useful part that is left: the ETA, then the elapsed time, then the rate;
        // a "stopped" mark (always last) stays as long as anything but the counts does.
        let at = if kept.last().is_some_and(|p| p.starts_with(" | stopped")) && kept.len() > 2 {
            kept.len() - 2
        } else {
            kept.len() - 1
        };
        kept.remove(at);
    }
    let mut text = kept.concat();
    text.truncate(limit.min(text.len()));
    text
}

/// Tasks (or items) per second, with fewer decimals as it grows: `0.25`, `12.3`, `4521`.
fn format_rate(done: usize, elapsed_seconds: f64, unit: Unit) -> String {
    let per = unit.word(0);
    if !has_elapsed(elapsed_seconds) {
        return format!("? {per}/s");
    }
    let rate = done as f64 / elapsed_seconds;
    if rate >= 100.0 {
        format!("{rate:.0} {per}/s")
    } else if rate >= 1.0 {
        format!("{rate:.1} {per}/s")
    } else {
        format!("{rate:.2} {per}/s")
    }
}

/// Whether a rate can be computed: some time has passed (not zero, negative or NaN).
fn has_elapsed(seconds: f64) -> bool {
    seconds > 0.0
}

/// Time left at the average rate so far; `--:--` until a task has completed.
fn format_eta(done: usize, total: usize, elapsed_seconds: f64) -> String {
    if done >= total {
        return format_clock(0.0);
    }
    if done == 0 || !has_elapsed(elapsed_seconds) {
        return "--:--".to_owned();
    }
    let left = elapsed_seconds / done as f64 * (total - done) as f64;
    format_clock(left)
}

/// `MM:SS` below an hour, `H:MM:SS` from there; whole seconds, rounded down.
fn format_clock(seconds: f64) -> String {
    // `as` saturates: NaN and negative times show as 0.
    let whole = seconds as u64;
    let (hours, minutes, secs) = (whole / 3600, whole / 60 % 60, whole % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{secs:02}")
    } else {
        format!("{minutes:02}:{secs:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_total() {
        assert_eq!(
            render(37, Some(100), 3.0),
            "[#######.............]  37/100  37% | 12.3 tasks/s | elapsed 00:03 | ETA 00:05"
        );
        assert_eq!(
            render(0, Some(8), 0.0),
            "[....................] 0/8   0% | ? tasks/s | elapsed 00:00 | ETA --:--"
        );
        assert_eq!(
            render(8, Some(8), 4.0),
            "[####################] 8/8 100% | 2.0 tasks/s | elapsed 00:04 | ETA 00:00"
        );
    }

    #[test]
    fn percentage_and_bar_round_down() {
        // 199/200 is 99.5%: never shown as done before it is.
        assert!(render(199, Some(200), 1.0).contains(" 99% "));
        assert!(render(199, Some(200), 1.0).starts_with("[###################.]"));
    }

    #[test]
    fn renders_unknown_total() {
        assert_eq!(
            render(37, None, 3.0),
            "37 tasks | 12.3 tasks/s | elapsed 00:03"
        );
        assert_eq!(render(0, None, 0.0), "0 tasks | ? tasks/s | elapsed 00:00");
    }

    #[test]
    fn empty_call_is_complete() {
        assert_eq!(
            render(0, Some(0), 0.5),
            "[####################] 0/0 100% | 0.00 tasks/s | elapsed 00:00 | ETA 00:00"
        );
    }

    #[test]
    fn rates_and_clocks() {
        assert_eq!(format_rate(1, 4.0, Unit::Tasks), "0.25 tasks/s");
        assert_eq!(format_rate(45_210, 10.0, Unit::Tasks), "4521 tasks/s");
        assert_eq!(format_rate(5, -1.0, Unit::Tasks), "? tasks/s");
        assert_eq!(format_clock(59.99), "00:59");
        assert_eq!(format_clock(61.0), "01:01");
        assert_eq!(format_clock(3723.0), "1:02:03");
        assert_eq!(format_clock(f64::NAN), "00:00");
        // 10 done in 5 s, 30 left: 15 s.
        assert_eq!(format_eta(10, 40, 5.0), "00:15");
    }

    #[test]
    fn terminal_redraws_in_place_at_most_every_tenth_of_a_second() {
        let mut bar = ProgressBar::new(true);
        assert!(!bar.has_line_on_screen());
        let first = bar
            .update(1, Some(10), 0.01)
            .expect("the first update draws");
        assert_eq!(first, format!("{CLEAR_LINE}{}", render(1, Some(10), 0.01)));
        assert!(!first.contains('\n'));
        assert!(bar.has_line_on_screen());
        assert_eq!(bar.update(2, Some(10), 0.05), None);
        assert_eq!(bar.update(3, Some(10), 0.10), None);
        assert!(bar.update(4, Some(10), 0.11).is_some());
        // A redraw ignores the rate limit.
        assert_eq!(
            bar.redraw(4, Some(10), 0.12),
            Some(format!("{CLEAR_LINE}{}", render(4, Some(10), 0.12)))
        );
    }

    #[test]
    fn plain_stream_gets_a_full_line_every_two_seconds() {
        let mut bar = ProgressBar::new(false);
        let lines: Vec<(f64, String)> = [0.1, 1.0, 1.99, 2.0, 3.5, 3.99, 4.0, 4.1, 7.0]
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| bar.update(i + 1, None, t).map(|line| (t, line)))
            .collect();
        let times: Vec<f64> = lines.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [2.0, 4.0, 7.0]);
        assert_eq!(lines[0].1, format!("{}\n", render(4, None, 2.0)));
        assert!(lines.iter().all(|(_, line)| !line.contains('\r')));
        assert!(!bar.has_line_on_screen());
        assert_eq!(bar.redraw(9, None, 7.0), None);
    }

    #[test]
    fn finish_ends_the_line() {
        let mut bar = ProgressBar::new(true);
        bar.update(3, Some(4), 0.5);
        let last = bar.finish(4, Some(4), 1.0, false);
        assert_eq!(last, format!("{CLEAR_LINE}{}\n", render(4, Some(4), 1.0)));

        // Not a terminal: the final line comes even when the rate limit would hold it back.
        let mut bar = ProgressBar::new(false);
        assert_eq!(bar.update(1, None, 0.5), None);
        let last = bar.finish(2, None, 1.0, false);
        assert_eq!(last, "2 tasks | 2.0 tasks/s | elapsed 00:01\n");
        assert!(last.ends_with('\n'));
    }

    #[test]
    fn one_task_or_item_is_singular() {
        assert_eq!(
            render(1, None, 2.0),
            "1 task | 0.50 tasks/s | elapsed 00:02"
        );
        let items = Style {
            unit: Unit::Items,
            columns: None,
        };
        assert_eq!(
            render_with(1, None, 2.0, items, false),
            "1 item | 0.50 items/s | elapsed 00:02"
        );
        assert_eq!(
            render_with(40, Some(100), 2.0, items, false),
            "[########............]  40/100  40% | 20.0 items/s | elapsed 00:02 | ETA 00:03"
        );
    }

    #[test]
    fn a_stopped_call_says_so_instead_of_an_eta() {
        assert_eq!(
            render_with(15, Some(100), 2.0, Style::default(), true),
            "[###.................]  15/100  15% | 7.5 tasks/s | elapsed 00:02 | stopped"
        );
        assert_eq!(
            render_with(0, None, 2.0, Style::default(), true),
            "0 tasks | 0.00 tasks/s | elapsed 00:02 | stopped"
        );
        let bar = ProgressBar::new(false);
        assert_eq!(
            bar.finish(3, Some(10), 1.0, true),
            format!(
                "{}\n",
                render_with(3, Some(10), 1.0, Style::default(), true)
            )
        );
    }

    #[test]
    fn the_line_fits_the_terminal() {
        let full = render(37, Some(100), 3.0);
        for columns in [200, full.len() + 1] {
            let style = Style {
                columns: Some(columns),
                ..Style::default()
            };
            assert_eq!(render_with(37, Some(100), 3.0, style, false), full);
        }
        for columns in [1, 2, 10, 30, 45, 60, full.len()] {
            let style = Style {
                columns: Some(columns),
                ..Style::default()
            };
            let line = render_with(37, Some(100), 3.0, style, false);
            assert!(line.len() < columns.max(2), "{columns}: {line:?}");
            assert!(
                line.len() + 12 >= columns.min(full.len()) || columns < 20,
                "{columns}: {line:?}"
            );
            if columns >= 45 {
                assert!(
                    line.starts_with('[') && line.contains(" 37/100  37%"),
                    "{line:?}"
                );
            }
        }
        // The ETA and the elapsed time go before the bar does.
        let style = |columns| Style {
            columns: Some(columns),
            ..Style::default()
        };
        let line = render_with(37, Some(100), 3.0, style(60), false);
        assert_eq!(line.len(), 59, "{line:?}");
        assert!(
            line.starts_with("[####....")
                && line.ends_with(
                    "] 37/100  37% | 12.3 tasks/s | elapsed 00:03".trim_start_matches(']')
                ),
            "{line:?}"
        );
        assert!(!line.contains("ETA"));
        let line = render_with(37, Some(100), 3.0, style(40), false);
        assert_eq!(line.len(), 39, "{line:?}");
        assert!(
            line.starts_with("[#") && line.ends_with("]  37/100  37% | 12.3 tasks/s"),
            "{line:?}"
        );
        assert_eq!(
            render_with(37, Some(100), 3.0, style(30), false),
            "[#####.........]  37/100  37%"
        );
        // Too narrow for a bar: the counts, cut if they must be.
        assert_eq!(
            render_with(37, Some(100), 3.0, style(16), false),
            " 37/100  37%"
        );
        assert_eq!(render_with(37, Some(100), 3.0, style(8), false), " 37/100");
        let style = style(30);
        // A bar on a terminal is fitted; the same bar writing to a file is not.
        let styled = |terminal| ProgressBar::new(terminal).with_style(style);
        assert!(styled(true).finish(1, Some(100), 1.0, false).len() <= 30 + CLEAR_LINE.len() + 1);
        assert_eq!(
            styled(false).finish(1, Some(100), 1.0, false),
            format!("{}\n", render(1, Some(100), 1.0))
        );
    }
}
