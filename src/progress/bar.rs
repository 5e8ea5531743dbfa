//! A one-line progress bar, pj's addition to joblib's verbose lines: tasks done, percentage, rate,
//! elapsed time and ETA.
//!
//! ```text
//! [#######.............]  37/100  37% | 12.3 tasks/s | elapsed 00:03 | ETA 00:05
//! 37 tasks | 12.3 tasks/s | elapsed 00:03                    (total not known yet)
//! ```
//!
//! Pure: it is given the counts and the elapsed time and returns the text to write; it never reads
//! a clock or writes. On a terminal the line is redrawn in place (`\r`, then `ESC [K` to clear what
//! a longer previous line left) at most every [`TERMINAL_REDRAW_SECONDS`], so millions of tiny
//! tasks do not turn into millions of writes. Anywhere else (a log file, a pipe) in-place redraws
//! would pile up as garbage, so it writes a plain full line at most every [`PLAIN_LINE_SECONDS`].
//! [`ProgressBar::finish`] always writes the final state, ending the line.

use std::fmt::Write as _;

/// Moves to the start of the line and clears it: how an in-place line is redrawn or removed.
pub const CLEAR_LINE: &str = "\r\x1b[K";

/// Minimum time between two redraws on a terminal (the first update always draws).
pub const TERMINAL_REDRAW_SECONDS: f64 = 0.1;

/// Minimum time between two full lines when the stream is not a terminal; the first comes after
/// this long, so a short call writes only its final line.
pub const PLAIN_LINE_SECONDS: f64 = 2.0;

/// Cells of the bar itself.
const BAR_CELLS: usize = 20;

/// The progress bar of one call.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressBar {
    terminal: bool,
    next_line_at: f64,
    on_screen: bool,
}

impl ProgressBar {
    /// A bar for a stream that is (or is not) a terminal.
    pub fn new(is_terminal: bool) -> Self {
        ProgressBar {
            terminal: is_terminal,
            next_line_at: if is_terminal { 0.0 } else { PLAIN_LINE_SECONDS },
            on_screen: false,
        }
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
    /// terminal.
    pub fn finish(self, done: usize, total: Option<usize>, elapsed_seconds: f64) -> String {
        let content = render(done, total, elapsed_seconds);
        if self.terminal {
            format!("{CLEAR_LINE}{content}\n")
        } else {
            format!("{content}\n")
        }
    }

    fn draw(&mut self, done: usize, total: Option<usize>, elapsed_seconds: f64) -> String {
        let content = render(done, total, elapsed_seconds);
        if self.terminal {
            self.on_screen = true;
            format!("{CLEAR_LINE}{content}")
        } else {
            format!("{content}\n")
        }
    }
}

/// The bar's content for a state, without any cursor movement or newline.
pub fn render(done: usize, total: Option<usize>, elapsed_seconds: f64) -> String {
    let rate = format_rate(done, elapsed_seconds);
    let elapsed = format_clock(elapsed_seconds);
    let Some(total) = total else {
        return format!("{done} tasks | {rate} | elapsed {elapsed}");
    };
    let shown = done.min(total);
    let (filled, percent) = if total == 0 {
        (BAR_CELLS, 100)
    } else {
        // u128: no overflow whatever the counts; floors, so 100% means really done.
        let filled = shown as u128 * BAR_CELLS as u128 / total as u128;
        let percent = shown as u128 * 100 / total as u128;
        (filled as usize, percent as usize)
    };
    let mut text = String::with_capacity(96);
    text.push('[');
    text.push_str(&"#".repeat(filled));
    text.push_str(&".".repeat(BAR_CELLS - filled));
    // Counts padded to the total's width, so the line does not shift as they grow.
    let width = total.to_string().len();
    let eta = format_eta(done, total, elapsed_seconds);
    let _ = write!(
        text,
        "] {done:>width$}/{total} {percent:>3}% | {rate} | elapsed {elapsed} | ETA {eta}"
    );
    text
}

/// Tasks per second, with fewer decimals as it grows: `0.25`, `12.3`, `4521`.
fn format_rate(done: usize, elapsed_seconds: f64) -> String {
    if !has_elapsed(elapsed_seconds) {
        return "? tasks/s".to_owned();
    }
    let rate = done as f64 / elapsed_seconds;
    if rate >= 100.0 {
        format!("{rate:.0} tasks/s")
    } else if rate >= 1.0 {
        format!("{rate:.1} tasks/s")
    } else {
        format!("{rate:.2} tasks/s")
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
        assert_eq!(format_rate(1, 4.0), "0.25 tasks/s");
        assert_eq!(format_rate(45_210, 10.0), "4521 tasks/s");
        assert_eq!(format_rate(5, -1.0), "? tasks/s");
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
        let last = bar.finish(4, Some(4), 1.0);
        assert_eq!(last, format!("{CLEAR_LINE}{}\n", render(4, Some(4), 1.0)));

        // Not a terminal: the final line comes even when the rate limit would hold it back.
        let mut bar = ProgressBar::new(false);
        assert_eq!(bar.update(1, None, 0.5), None);
        let last = bar.finish(2, None, 1.0);
        assert_eq!(last, "2 tasks | 2.0 tasks/s | elapsed 00:01\n");
        assert!(last.ends_with('\n'));
    }
}
