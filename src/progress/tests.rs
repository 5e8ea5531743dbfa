//! Golden tests: fixed sequences of completions, with the lines computed by hand from the formulas
//! of joblib 1.6's verbose output (cross-checked once against joblib 1.6.0's `print_progress`).

use std::sync::{Arc, Mutex};

use super::verbose::{
    forced_to_threads_note, python_float_repr, short_format_time, verbosity_filter_prints,
};
use super::*;
use crate::config::BackendKind;

fn reporter(
    n_jobs: Option<i64>,
    verbose: i64,
    total: Option<usize>,
    pre_dispatch: usize,
) -> VerboseReporter {
    VerboseReporter::new(VerboseSettings {
        n_jobs_requested: n_jobs,
        verbose,
        total_tasks: total,
        pre_dispatch_tasks: pre_dispatch,
    })
}

/// joblib's counters at each completion of a parallel call whose batches hold one task, with a
/// lazy pre-dispatch of `pre_dispatch` tasks: every completion prints, then dispatches the next
/// task; the completion that finds the input empty marks it exhausted, so only later completions
/// see it. Entry `j - 1` is the snapshot at completion `j`.
fn lazy_one_task_batches(tasks: usize, pre_dispatch: usize) -> Vec<Snapshot> {
    let detected_at = (tasks + 1).saturating_sub(pre_dispatch).max(1);
    (1..=tasks)
        .map(|j| {
            let dispatched = (pre_dispatch + j - 1).min(tasks);
            let exhausted = j > detected_at;
            Snapshot {
                dispatched_batches: dispatched,
                dispatched_tasks: dispatched,
                completed_tasks: j,
                input_exhausted: exhausted,
                still_reading: !exhausted,
                aborting: false,
            }
        })
        .collect()
}

/// The counters at each completion with `pre_dispatch="all"`: everything is dispatched (one task
/// per batch) before the first completion.
fn all_dispatched_up_front(tasks: usize) -> Vec<Snapshot> {
    (1..=tasks)
        .map(|k| Snapshot {
            dispatched_batches: tasks,
            dispatched_tasks: tasks,
            completed_tasks: k,
            input_exhausted: true,
            still_reading: false,
            aborting: false,
        })
        .collect()
}

/// Runs the snapshots through the reporter, at `elapsed(k)` seconds for k completed tasks;
/// returns the printed lines.
fn printed(
    reporter: &VerboseReporter,
    snapshots: &[Snapshot],
    elapsed: impl Fn(usize) -> f64,
) -> Vec<String> {
    snapshots
        .iter()
        .filter_map(|s| reporter.progress(s, elapsed(s.completed_tasks)))
        .collect()
}

/// The completed-task counts at which lines were printed.
fn printed_at(reporter: &VerboseReporter, snapshots: &[Snapshot]) -> Vec<usize> {
    snapshots
        .iter()
        .filter(|s| reporter.progress(s, 1.0).is_some())
        .map(|s| s.completed_tasks)
        .collect()
}

// ----- the start line and the prefix --------------------------------------------------------------

#[test]
fn start_line_names_the_backend_and_the_workers() {
    let r = reporter(Some(2), 1, Some(10), 4);
    assert_eq!(
        r.start(BackendKind::Threads.joblib_class_name(), 2)
            .as_deref(),
        Some("[Parallel(n_jobs=2)]: Using backend ThreadingBackend with 2 concurrent workers.\n")
    );
    // The prefix shows the raw request, not the effective count.
    let r = reporter(Some(-1), 5, None, 16);
    assert_eq!(
        r.start(BackendKind::Processes.joblib_class_name(), 8)
            .as_deref(),
        Some("[Parallel(n_jobs=-1)]: Using backend LokyBackend with 8 concurrent workers.\n")
    );
    assert_eq!(
        BackendKind::Sequential.joblib_class_name(),
        "SequentialBackend"
    );
}

#[test]
fn no_start_line_for_a_sequential_call_or_when_silent() {
    assert_eq!(
        reporter(Some(1), 10, Some(3), 2).start("ThreadsBackend", 1),
        None
    );
    assert_eq!(
        reporter(Some(2), 0, Some(3), 4).start("ThreadsBackend", 2),
        None
    );
}

#[test]
fn unset_n_jobs_prints_as_one() {
    // joblib replaces an unset n_jobs by the backend's default (1) in its constructor.
    let r = reporter(None, 10, Some(5), 2);
    let first = Snapshot {
        dispatched_batches: 1,
        dispatched_tasks: 1,
        completed_tasks: 1,
        input_exhausted: false,
        still_reading: true,
        aborting: false,
    };
    assert_eq!(
        r.progress(&first, 0.1).as_deref(),
        Some("[Parallel(n_jobs=1)]: Done 1 out of 5 | elapsed:    0.1s\n")
    );
}

// ----- where lines go ----------------------------------------------------------------------------

#[test]
fn lines_go_to_stderr_below_50_and_to_stdout_from_50() {
    assert_eq!(Stream::for_verbose(1), Stream::Stderr);
    assert_eq!(Stream::for_verbose(10), Stream::Stderr);
    assert_eq!(Stream::for_verbose(49), Stream::Stderr);
    assert_eq!(Stream::for_verbose(50), Stream::Stdout);
    assert_eq!(Stream::for_verbose(100), Stream::Stdout);
    assert_eq!(reporter(Some(2), 49, None, 4).stream(), Stream::Stderr);
    assert_eq!(reporter(Some(2), 50, None, 4).stream(), Stream::Stdout);
}

#[test]
fn verbose_zero_prints_nothing() {
    let r = reporter(Some(2), 0, Some(10), 4);
    assert!(r.is_silent());
    assert!(printed(&r, &lazy_one_task_batches(10, 4), |_| 1.0).is_empty());
    let change = SizeChange {
        seconds: 0.01,
        size: 2,
        grew: true,
    };
    assert_eq!(r.batch_size_changed(&change), None);
}

// ----- time format -------------------------------------------------------------------------------

#[test]
fn short_format_time_in_seconds_then_minutes() {
    assert_eq!(short_format_time(0.0), "   0.0s");
    assert_eq!(short_format_time(0.05), "   0.1s");
    // Exact ties round to even, as Python's "%.1f".
    assert_eq!(short_format_time(0.25), "   0.2s");
    assert_eq!(short_format_time(0.75), "   0.8s");
    assert_eq!(short_format_time(9.96), "  10.0s");
    assert_eq!(short_format_time(59.96), "  60.0s");
    // Minutes only strictly above 60 s.
    assert_eq!(short_format_time(60.0), "  60.0s");
    assert_eq!(short_format_time(60.04), " 1.0min");
    assert_eq!(short_format_time(75.0), " 1.2min");
    assert_eq!(short_format_time(599.0), "10.0min");
    assert_eq!(short_format_time(7200.0), "120.0min");
}

#[test]
fn minutes_in_a_progress_line() {
    let r = reporter(Some(2), 50, Some(30), 4);
    let s = Snapshot {
        dispatched_batches: 17,
        dispatched_tasks: 17,
        completed_tasks: 14,
        input_exhausted: false,
        still_reading: true,
        aborting: false,
    };
    assert_eq!(
        r.progress(&s, 75.0).as_deref(),
        Some("[Parallel(n_jobs=2)]: Done 14 out of 30 | elapsed:  1.2min\n")
    );
}

// ----- the filter of shapes 1 and 2 -------------------------------------------------------------

/// The first `count` dispatched-batch counts at which shapes 1 and 2 print.
fn printing_batches(verbose: i64, count: usize) -> Vec<usize> {
    (0..)
        .filter(|&b| verbosity_filter_prints(b, verbose))
        .take(count)
        .collect()
}

#[test]
fn quadratic_filter_matches_the_spec_table() {
    assert_eq!(printing_batches(1, 5), [0, 49, 199, 449, 799]);
    assert_eq!(printing_batches(5, 5), [0, 17, 71, 161, 287]);
    assert_eq!(printing_batches(9, 6), [0, 1, 7, 17, 31, 49]);
    assert_eq!(printing_batches(10, 9), [0, 1, 4, 7, 12, 17, 24, 31, 40]);
    assert_eq!(printing_batches(11, 5), [0, 1, 2, 3, 4]);
    assert_eq!(printing_batches(100, 3), [0, 1, 2]);
    assert!(!verbosity_filter_prints(0, 0));
}

#[test]
fn quadratic_filter_prints_exactly_at_ceil_c_m_squared_minus_one() {
    // b prints iff b = 0 or b = ceil(c·m²) − 1 for an integer m >= 1, with c = (11 − v)² / 2; in
    // integers, ceil(c·m²) = ((11 − v)²·m² + 1) / 2.
    for verbose in 1..=10_i64 {
        let square = ((11 - verbose) * (11 - verbose)) as usize;
        let mut expected = vec![0];
        expected.extend(
            (1..)
                .map(|m: usize| (square * m * m).div_ceil(2) - 1)
                .take_while(|&b| b < 20_000),
        );
        // At verbose 10, m = 1 gives 0 again.
        expected.dedup();
        let actual: Vec<usize> = (0..20_000)
            .filter(|&b| verbosity_filter_prints(b, verbose))
            .collect();
        assert_eq!(actual, expected, "verbose={verbose}");
    }
}

// ----- golden sequences --------------------------------------------------------------------------

#[test]
fn list_of_50_tasks_at_verbose_10() {
    // Threads, n_jobs=2, pre_dispatch="2*n_jobs" (4 tasks), batches of one task. At completion j,
    // b = j + 3 batches were dispatched: lines at b = 4, 7, 12, 17, 24, 31, 40, 49, i.e.
    // j = 1, 4, 9, 14, 21, 28, 37, 46. The input is found exhausted at completion 47; completions 48
    // (cursor −1, frequency 6) and 49 (next to last) print nothing; 50 prints the final line.
    let r = reporter(Some(2), 10, Some(50), 4);
    let lines = printed(&r, &lazy_one_task_batches(50, 4), |k| k as f64 / 10.0);
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=2)]: Done  1 out of 50 | elapsed:    0.1s\n",
            "[Parallel(n_jobs=2)]: Done  4 out of 50 | elapsed:    0.4s\n",
            "[Parallel(n_jobs=2)]: Done  9 out of 50 | elapsed:    0.9s\n",
            "[Parallel(n_jobs=2)]: Done 14 out of 50 | elapsed:    1.4s\n",
            "[Parallel(n_jobs=2)]: Done 21 out of 50 | elapsed:    2.1s\n",
            "[Parallel(n_jobs=2)]: Done 28 out of 50 | elapsed:    2.8s\n",
            "[Parallel(n_jobs=2)]: Done 37 out of 50 | elapsed:    3.7s\n",
            "[Parallel(n_jobs=2)]: Done 46 out of 50 | elapsed:    4.6s\n",
            "[Parallel(n_jobs=2)]: Done 50 out of 50 | elapsed:    5.0s finished\n",
        ]
    );
}

#[test]
fn generator_of_12_tasks_at_verbose_10() {
    // Total unknown: width 3 and shape 1 while reading. b = j + 3 prints at 4, 7, 12 (j = 1, 4, 9).
    // Exhaustion is found at completion 9; completion 10 has cursor −1 with frequency 2, 11 is next
    // to last, 12 is the final line.
    let r = reporter(Some(-1), 10, None, 4);
    let lines = printed(&r, &lazy_one_task_batches(12, 4), |k| k as f64 * 0.5);
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=-1)]: Done   1 tasks      | elapsed:    0.5s\n",
            "[Parallel(n_jobs=-1)]: Done   4 tasks      | elapsed:    2.0s\n",
            "[Parallel(n_jobs=-1)]: Done   9 tasks      | elapsed:    4.5s\n",
            "[Parallel(n_jobs=-1)]: Done  12 out of  12 | elapsed:    6.0s finished\n",
        ]
    );
}

#[test]
fn shape_one_count_wider_than_the_width() {
    let r = reporter(Some(2), 11, None, 4);
    let s = Snapshot {
        dispatched_batches: 800,
        dispatched_tasks: 1590,
        completed_tasks: 1586,
        input_exhausted: false,
        still_reading: true,
        aborting: false,
    };
    assert_eq!(
        r.progress(&s, 12.34).as_deref(),
        Some("[Parallel(n_jobs=2)]: Done 1586 tasks      | elapsed:   12.3s\n")
    );
}

#[test]
fn pre_dispatch_all_prints_remaining_time() {
    // 12 tasks, all dispatched up front (P = 0): frequency 12 / 10 + 1 = 2, cursor 13 − k, so odd k
    // print, except 11 (next to last). remaining = elapsed / k × (12 − k).
    let r = reporter(Some(2), 10, Some(12), 0);
    let lines = printed(&r, &all_dispatched_up_front(12), |k| k as f64 * 0.5);
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=2)]: Done  1 out of 12 | elapsed:    0.5s remaining:    5.5s\n",
            "[Parallel(n_jobs=2)]: Done  3 out of 12 | elapsed:    1.5s remaining:    4.5s\n",
            "[Parallel(n_jobs=2)]: Done  5 out of 12 | elapsed:    2.5s remaining:    3.5s\n",
            "[Parallel(n_jobs=2)]: Done  7 out of 12 | elapsed:    3.5s remaining:    2.5s\n",
            "[Parallel(n_jobs=2)]: Done  9 out of 12 | elapsed:    4.5s remaining:    1.5s\n",
            "[Parallel(n_jobs=2)]: Done 12 out of 12 | elapsed:    6.0s finished\n",
        ]
    );
}

#[test]
fn generator_fully_dispatched_uses_the_dispatched_count() {
    // 30 tasks from a generator, pre_dispatch="all": width 3, "out of" the dispatched count.
    // Frequency 30 / 10 + 1 = 4, cursor 31 − k: k = 3, 7, ..., 27.
    let r = reporter(Some(4), 10, None, 0);
    let lines = printed(&r, &all_dispatched_up_front(30), |k| k as f64);
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=4)]: Done   3 out of  30 | elapsed:    3.0s remaining:   27.0s\n",
            "[Parallel(n_jobs=4)]: Done   7 out of  30 | elapsed:    7.0s remaining:   23.0s\n",
            "[Parallel(n_jobs=4)]: Done  11 out of  30 | elapsed:   11.0s remaining:   19.0s\n",
            "[Parallel(n_jobs=4)]: Done  15 out of  30 | elapsed:   15.0s remaining:   15.0s\n",
            "[Parallel(n_jobs=4)]: Done  19 out of  30 | elapsed:   19.0s remaining:   11.0s\n",
            "[Parallel(n_jobs=4)]: Done  23 out of  30 | elapsed:   23.0s remaining:    7.0s\n",
            "[Parallel(n_jobs=4)]: Done  27 out of  30 | elapsed:   27.0s remaining:    3.0s\n",
            "[Parallel(n_jobs=4)]: Done  30 out of  30 | elapsed:   30.0s finished\n",
        ]
    );
}

#[test]
fn shape_three_filter_matches_the_spec_examples() {
    // 100 tasks, pre_dispatch="all": k = 90, 79, ..., 2 at verbose 10; 50 at verbose 2; every third
    // task at verbose 50. The final line (k = 100) always prints.
    let snapshots = all_dispatched_up_front(100);
    let at_10 = printed_at(&reporter(Some(2), 10, Some(100), 0), &snapshots);
    assert_eq!(at_10, [2, 13, 24, 35, 46, 57, 68, 79, 90, 100]);
    let at_2 = printed_at(&reporter(Some(2), 2, Some(100), 0), &snapshots);
    assert_eq!(at_2, [50, 100]);
    let at_50 = printed_at(&reporter(Some(2), 50, Some(100), 0), &snapshots);
    let every_third: Vec<usize> = (2..=98).step_by(3).chain([100]).collect();
    assert_eq!(at_50, every_third);
}

#[test]
fn verbose_50_prints_every_batch_on_stdout() {
    // 5 tasks, pre_dispatch 4: completions 1 and 2 are shape 2 (every batch above verbose 10), the
    // input is found exhausted at completion 2, completion 3 is shape 3 (frequency 1), 4 is next to
    // last, 5 is final. Times 0.25 j exercise Python's round-half-even ("%.1f" % 0.75 == "0.8").
    let r = reporter(Some(2), 50, Some(5), 4);
    assert_eq!(r.stream(), Stream::Stdout);
    let lines = printed(&r, &lazy_one_task_batches(5, 4), |k| k as f64 * 0.25);
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=2)]: Done 1 out of 5 | elapsed:    0.2s\n",
            "[Parallel(n_jobs=2)]: Done 2 out of 5 | elapsed:    0.5s\n",
            "[Parallel(n_jobs=2)]: Done 3 out of 5 | elapsed:    0.8s remaining:    0.5s\n",
            "[Parallel(n_jobs=2)]: Done 5 out of 5 | elapsed:    1.2s finished\n",
        ]
    );
}

#[test]
fn verbose_11_prints_every_batch_while_reading() {
    let r = reporter(Some(2), 11, Some(20), 4);
    let snapshots = lazy_one_task_batches(20, 4);
    // Reading until completion 17 is found exhausting the input: every one of them prints.
    let at = printed_at(&r, &snapshots);
    assert_eq!(at[..17], (1..=17).collect::<Vec<_>>()[..]);
}

/// The sequential path: after each task one batch more was dispatched and completed.
fn sequential(tasks: usize) -> Vec<Snapshot> {
    (1..=tasks)
        .map(|j| Snapshot {
            dispatched_batches: j,
            dispatched_tasks: j,
            completed_tasks: j,
            input_exhausted: false,
            still_reading: true,
            aborting: false,
        })
        .collect()
}

/// The sequential path's cleanup: the input is dropped, the loop is over.
fn sequential_end(tasks_run: usize, completed: usize, aborting: bool) -> Snapshot {
    Snapshot {
        dispatched_batches: tasks_run,
        dispatched_tasks: tasks_run,
        completed_tasks: completed,
        input_exhausted: true,
        still_reading: false,
        aborting,
    }
}

#[test]
fn sequential_list_of_5_tasks_at_verbose_10() {
    // b = j: lines at 1 and 4; the final line comes from the loop's cleanup. No start line.
    let r = reporter(None, 10, Some(5), 2);
    assert_eq!(
        r.start(BackendKind::Sequential.joblib_class_name(), 1),
        None
    );
    let mut lines = printed(&r, &sequential(5), |k| k as f64 / 10.0);
    lines.extend(r.progress(&sequential_end(5, 5, false), 0.5));
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=1)]: Done 1 out of 5 | elapsed:    0.1s\n",
            "[Parallel(n_jobs=1)]: Done 4 out of 5 | elapsed:    0.4s\n",
            "[Parallel(n_jobs=1)]: Done 5 out of 5 | elapsed:    0.5s finished\n",
        ]
    );
}

#[test]
fn sequential_generator_at_verbose_10() {
    let r = reporter(Some(1), 10, None, 2);
    let mut lines = printed(&r, &sequential(5), |k| k as f64);
    lines.extend(r.progress(&sequential_end(5, 5, false), 5.0));
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=1)]: Done   1 tasks      | elapsed:    1.0s\n",
            "[Parallel(n_jobs=1)]: Done   4 tasks      | elapsed:    4.0s\n",
            "[Parallel(n_jobs=1)]: Done   5 out of   5 | elapsed:    5.0s finished\n",
        ]
    );
}

#[test]
fn sequential_failure_of_the_first_task_prints_done_0() {
    // joblib always prints when nothing completed: "Done 0 out of 1", remaining = elapsed × 1.
    let r = reporter(None, 10, None, 2);
    assert_eq!(
        r.progress(&sequential_end(1, 0, true), 0.2).as_deref(),
        Some("[Parallel(n_jobs=1)]: Done   0 out of   1 | elapsed:    0.2s remaining:    0.2s\n")
    );
    // A later failure leaves the failed task as the next to last: nothing.
    let r = reporter(None, 10, Some(5), 2);
    assert_eq!(r.progress(&sequential_end(3, 2, true), 0.3), None);
}

#[test]
fn aborting_suppresses_the_final_line() {
    let aborted = Snapshot {
        dispatched_batches: 10,
        dispatched_tasks: 10,
        completed_tasks: 10,
        input_exhausted: true,
        still_reading: false,
        aborting: true,
    };
    // Shape 3 instead, filtered: cursor 10 − 10 + 1 − 4 = −3; frequency 2 at verbose 10 ...
    assert_eq!(
        reporter(Some(2), 10, Some(10), 4).progress(&aborted, 1.0),
        None
    );
    // ... and 1 at verbose 11, where it prints with nothing remaining.
    assert_eq!(
        reporter(Some(2), 11, Some(10), 4)
            .progress(&aborted, 1.0)
            .as_deref(),
        Some("[Parallel(n_jobs=2)]: Done 10 out of 10 | elapsed:    1.0s remaining:    0.0s\n")
    );
}

#[test]
fn no_final_line_while_input_may_still_come() {
    // A one-task generator on two workers: the only completion happens before the input is found
    // exhausted, so joblib prints shape 1, never "finished".
    let r = reporter(Some(2), 10, None, 4);
    let only = Snapshot {
        dispatched_batches: 1,
        dispatched_tasks: 1,
        completed_tasks: 1,
        input_exhausted: false,
        still_reading: true,
        aborting: false,
    };
    assert_eq!(
        r.progress(&only, 0.1).as_deref(),
        Some("[Parallel(n_jobs=2)]: Done   1 tasks      | elapsed:    0.1s\n")
    );
}

#[test]
fn width_is_the_number_of_digits_of_the_total() {
    let line = |total: usize| {
        let s = Snapshot {
            dispatched_batches: 1,
            dispatched_tasks: 1,
            completed_tasks: 1,
            input_exhausted: false,
            still_reading: true,
            aborting: false,
        };
        reporter(Some(2), 11, Some(total), 4)
            .progress(&s, 0.0)
            .unwrap()
    };
    assert!(line(9).contains("Done 1 out of 9 |"));
    assert!(line(10).contains("Done  1 out of 10 |"));
    assert!(line(999).contains("Done   1 out of 999 |"));
    assert!(line(1000).contains("Done    1 out of 1000 |"));
    // An empty list has no digits to count: 3, as an unknown total.
    assert!(line(0).contains("Done   1 out of   0 |"));
}

// ----- other verbose output ----------------------------------------------------------------------

#[test]
fn batch_size_changes_from_verbose_10() {
    let fast = SizeChange {
        seconds: 0.0013494491577148438,
        size: 16,
        grew: true,
    };
    let slow = SizeChange {
        seconds: 6.4,
        size: 4,
        grew: false,
    };
    assert_eq!(
        reporter(Some(2), 9, None, 4).batch_size_changed(&fast),
        None
    );
    assert_eq!(
        reporter(Some(2), 10, None, 4)
            .batch_size_changed(&fast)
            .as_deref(),
        Some(
            "[Parallel(n_jobs=2)]: Batch computation too fast (0.0013494491577148438s.) \
             Setting batch_size=16.\n"
        )
    );
    assert_eq!(
        reporter(Some(-2), 50, None, 4)
            .batch_size_changed(&slow)
            .as_deref(),
        Some("[Parallel(n_jobs=-2)]: Batch computation too slow (6.4s.) Setting batch_size=4.\n")
    );
}

#[test]
fn floats_print_as_python_repr() {
    let cases = [
        (0.0013494491577148438, "0.0013494491577148438"),
        (6.4, "6.4"),
        (2.0, "2.0"),
        (0.1, "0.1"),
        (100.0, "100.0"),
        (0.0001, "0.0001"),
        (0.00012, "0.00012"),
        (1.5e-5, "1.5e-05"),
        (1e-5, "1e-05"),
        (2.5e-300, "2.5e-300"),
        (1e15, "1000000000000000.0"),
        (123456789012345.6, "123456789012345.6"),
        (1e16, "1e+16"),
        (1.2345e17, "1.2345e+17"),
        (-2.5, "-2.5"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (f64::INFINITY, "inf"),
        (f64::NAN, "nan"),
    ];
    for (value, repr) in cases {
        assert_eq!(python_float_repr(value), repr, "{value:e}");
    }
}

#[test]
fn forced_to_threads_note_is_unprefixed() {
    assert_eq!(
        forced_to_threads_note(10, "ProcessesBackend", "ThreadsBackend").as_deref(),
        Some(
            "Using ThreadsBackend as joblib backend instead of ProcessesBackend as the latter \
             does not provide shared memory semantics.\n"
        )
    );
    assert_eq!(
        forced_to_threads_note(9, "ProcessesBackend", "ThreadsBackend"),
        None
    );
}

// ----- the facade --------------------------------------------------------------------------------

/// A clock the test moves by hand.
#[derive(Clone, Default)]
struct ManualClock(Arc<Mutex<f64>>);

impl ManualClock {
    fn set(&self, seconds: f64) {
        *self.0.lock().unwrap() = seconds;
    }
}

impl Clock for ManualClock {
    fn elapsed_seconds(&self) -> f64 {
        *self.0.lock().unwrap()
    }
}

/// Records every write.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Stream, String)>>>);

impl Recorder {
    fn take(&self) -> Vec<(Stream, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Sink for Recorder {
    fn write(&mut self, stream: Stream, text: &str) {
        self.0.lock().unwrap().push((stream, text.to_owned()));
    }
}

type Calls = Arc<Mutex<Vec<(u64, i64, f64)>>>;

fn recording_callback() -> (ProgressCallback, Calls) {
    let calls: Calls = Arc::default();
    let sink = Arc::clone(&calls);
    let callback: ProgressCallback = Box::new(move |done, total, elapsed| {
        sink.lock().unwrap().push((done, total, elapsed));
    });
    (callback, calls)
}

fn settings(verbose: i64, total: Option<usize>) -> VerboseSettings {
    VerboseSettings {
        n_jobs_requested: Some(2),
        verbose,
        total_tasks: total,
        pre_dispatch_tasks: 4,
    }
}

fn batch_done(dispatched: usize, completed: usize, exhausted: bool) -> Snapshot {
    Snapshot {
        dispatched_batches: dispatched,
        dispatched_tasks: dispatched,
        completed_tasks: completed,
        input_exhausted: exhausted,
        still_reading: !exhausted,
        aborting: false,
    }
}

#[test]
fn progress_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Progress>();
}

#[test]
fn callback_fires_once_per_task_even_when_silent() {
    let clock = ManualClock::default();
    let out = Recorder::default();
    let (callback, calls) = recording_callback();
    let mut progress = Progress::new(
        settings(0, Some(5)),
        Box::new(clock.clone()),
        Box::new(out.clone()),
    )
    .with_callback(callback);
    clock.set(0.5);
    progress.completed(&batch_done(5, 3, true));
    clock.set(0.75);
    progress.completed(&batch_done(5, 5, true));
    progress.finish(&batch_done(5, 5, true));
    assert_eq!(
        *calls.lock().unwrap(),
        [
            (1, 5, 0.5),
            (2, 5, 0.5),
            (3, 5, 0.5),
            (4, 5, 0.75),
            (5, 5, 0.75)
        ]
    );
    assert!(out.take().is_empty());
}

#[test]
fn callback_total_is_minus_one_until_the_input_is_read_to_its_end() {
    let clock = ManualClock::default();
    let (callback, calls) = recording_callback();
    let mut progress = Progress::new(
        settings(0, None),
        Box::new(clock),
        Box::new(Recorder::default()),
    )
    .with_callback(callback);
    progress.completed(&batch_done(4, 1, false));
    progress.completed(&batch_done(6, 2, true));
    // Reported again without progress: no new call.
    progress.completed(&batch_done(6, 2, true));
    let totals: Vec<(u64, i64)> = calls.lock().unwrap().iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(totals, [(1, -1), (2, 6)]);
}

#[test]
fn verbose_lines_reach_their_stream_as_whole_lines() {
    let clock = ManualClock::default();
    let out = Recorder::default();
    // Verbose 11: every batch prints.
    let mut progress = Progress::new(
        settings(11, Some(2)),
        Box::new(clock.clone()),
        Box::new(out.clone()),
    );
    progress.start("ThreadsBackend", 2);
    progress.batch_size_changed(&SizeChange {
        seconds: 0.05,
        size: 2,
        grew: true,
    });
    clock.set(0.1);
    progress.completed(&batch_done(2, 1, false));
    clock.set(0.2);
    progress.completed(&batch_done(2, 2, true));
    progress.finish(&batch_done(2, 2, true));
    assert_eq!(
        out.take(),
        [
            (
                Stream::Stderr,
                "[Parallel(n_jobs=2)]: Using backend ThreadsBackend with 2 concurrent workers.\n"
                    .to_owned()
            ),
            (
                Stream::Stderr,
                "[Parallel(n_jobs=2)]: Batch computation too fast (0.05s.) Setting batch_size=2.\n"
                    .to_owned()
            ),
            (
                Stream::Stderr,
                "[Parallel(n_jobs=2)]: Done 1 out of 2 | elapsed:    0.1s\n".to_owned()
            ),
            (
                Stream::Stderr,
                "[Parallel(n_jobs=2)]: Done 2 out of 2 | elapsed:    0.2s finished\n".to_owned()
            ),
        ]
    );
}

#[test]
fn sequential_loop_end_gives_the_final_line() {
    let clock = ManualClock::default();
    let out = Recorder::default();
    let mut progress = Progress::new(
        settings(10, Some(5)),
        Box::new(clock.clone()),
        Box::new(out.clone()),
    );
    for (j, s) in sequential(5).iter().enumerate() {
        clock.set((j + 1) as f64 / 10.0);
        progress.completed(s);
    }
    progress.loop_ended(&sequential_end(5, 5, false));
    let lines: Vec<String> = out.take().into_iter().map(|(_, line)| line).collect();
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=2)]: Done 1 out of 5 | elapsed:    0.1s\n",
            "[Parallel(n_jobs=2)]: Done 4 out of 5 | elapsed:    0.4s\n",
            "[Parallel(n_jobs=2)]: Done 5 out of 5 | elapsed:    0.5s finished\n",
        ]
    );
}

#[test]
fn sequential_progress_counts_tasks_not_batches_and_ends_once() {
    // The dispatcher's own counters for 7 tasks run as a batch of 3 then a batch of 4 (the second
    // taken in after the input ended, which alone would print "finished"), then the loop's end:
    // joblib's sequential lines for 7 tasks at verbose 10, the final one once.
    let clock = ManualClock::default();
    let out = Recorder::default();
    let (callback, calls) = recording_callback();
    let mut progress = Progress::new(
        VerboseSettings {
            n_jobs_requested: Some(1),
            verbose: 10,
            total_tasks: None,
            pre_dispatch_tasks: 2,
        },
        Box::new(clock.clone()),
        Box::new(out.clone()),
    )
    .with_callback(callback)
    .sequential();
    // pj's own batching on the sequential path is not joblib's to report.
    progress.batch_size_changed(&SizeChange {
        seconds: 0.001,
        size: 2,
        grew: true,
    });
    clock.set(0.3);
    progress.completed(&Snapshot {
        dispatched_batches: 1,
        dispatched_tasks: 3,
        completed_tasks: 3,
        input_exhausted: false,
        still_reading: true,
        aborting: false,
    });
    clock.set(0.7);
    let end = Snapshot {
        dispatched_batches: 2,
        dispatched_tasks: 7,
        completed_tasks: 7,
        input_exhausted: true,
        still_reading: false,
        aborting: false,
    };
    progress.completed(&end);
    progress.loop_ended(&end);
    progress.finish(&end);
    let lines: Vec<String> = out.take().into_iter().map(|(_, line)| line).collect();
    assert_eq!(
        lines,
        [
            "[Parallel(n_jobs=1)]: Done   1 tasks      | elapsed:    0.3s\n",
            "[Parallel(n_jobs=1)]: Done   4 tasks      | elapsed:    0.7s\n",
            "[Parallel(n_jobs=1)]: Done   7 tasks      | elapsed:    0.7s\n",
            "[Parallel(n_jobs=1)]: Done   7 out of   7 | elapsed:    0.7s finished\n",
        ]
    );
    let done: Vec<u64> = calls.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(done, (1..=7).collect::<Vec<_>>(), "one callback per task");
}

#[test]
fn bar_on_the_verbose_terminal_is_cleared_and_redrawn_around_each_line() {
    use super::bar::{CLEAR_LINE, render};

    let clock = ManualClock::default();
    let out = Recorder::default();
    let mut progress = Progress::new(
        settings(10, Some(8)),
        Box::new(clock.clone()),
        Box::new(out.clone()),
    )
    .with_bar(Stream::Stderr, true, None);

    // b = 4: a verbose line, and the bar's first drawing, in one write.
    clock.set(0.5);
    progress.completed(&batch_done(4, 1, false));
    let verbose_1 = "[Parallel(n_jobs=2)]: Done 1 out of 8 | elapsed:    0.5s\n";
    assert_eq!(
        out.take(),
        [(
            Stream::Stderr,
            format!("{verbose_1}{CLEAR_LINE}{}", render(1, Some(8), 0.5))
        )]
    );

    // b = 5: no verbose line; the bar alone, in place.
    clock.set(1.0);
    progress.completed(&batch_done(5, 2, false));
    assert_eq!(
        out.take(),
        [(
            Stream::Stderr,
            format!("{CLEAR_LINE}{}", render(2, Some(8), 1.0))
        )]
    );

    // b = 7: the bar on screen is cleared first, then redrawn after the line.
    clock.set(1.02);
    progress.completed(&batch_done(7, 4, false));
    let verbose_4 = "[Parallel(n_jobs=2)]: Done 4 out of 8 | elapsed:    1.0s\n";
    assert_eq!(
        out.take(),
        [(
            Stream::Stderr,
            format!(
                "{CLEAR_LINE}{verbose_4}{CLEAR_LINE}{}",
                render(4, Some(8), 1.02)
            )
        )]
    );

    // The end: the final line, then the bar's final line ends its line.
    clock.set(2.0);
    progress.completed(&batch_done(8, 8, true));
    let written = out.take();
    assert_eq!(written.len(), 1);
    assert!(written[0].1.starts_with(&format!(
        "{CLEAR_LINE}[Parallel(n_jobs=2)]: Done 8 out of 8 | elapsed:    2.0s finished\n"
    )));
    progress.finish(&batch_done(8, 8, true));
    assert_eq!(
        out.take(),
        [(
            Stream::Stderr,
            format!("{CLEAR_LINE}{}\n", render(8, Some(8), 2.0))
        )]
    );
}

#[test]
fn bar_on_another_stream_is_written_separately() {
    let clock = ManualClock::default();
    let out = Recorder::default();
    let mut progress = Progress::new(
        settings(50, None),
        Box::new(clock.clone()),
        Box::new(out.clone()),
    )
    .with_bar(Stream::Stderr, false, None);
    clock.set(2.5);
    progress.completed(&batch_done(4, 1, false));
    assert_eq!(
        out.take(),
        [
            (
                Stream::Stdout,
                "[Parallel(n_jobs=2)]: Done   1 tasks      | elapsed:    2.5s\n".to_owned()
            ),
            (
                Stream::Stderr,
                "1 task | 0.40 tasks/s | elapsed 00:02\n".to_owned()
            ),
        ]
    );
    clock.set(3.0);
    progress.finish(&batch_done(4, 1, false));
    assert_eq!(
        out.take(),
        [(
            Stream::Stderr,
            "1 task | 0.33 tasks/s | elapsed 00:03\n".to_owned()
        )]
    );
}

#[test]
fn emit_writes_to_both_streams() {
    // Empty text: exercises the path without cluttering the test output (the harness does not
    // capture direct writes to the standard streams).
    assert!(emit("", Stream::Stdout).is_ok());
    assert!(emit("", Stream::Stderr).is_ok());
}
