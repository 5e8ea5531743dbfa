//! Progress: the callback on every backend, joblib's verbose lines on the real streams, the bar.
//!
//! Output scenarios run in a re-executed copy of this test binary (as in tests/processes.rs), so
//! that their stdout and stderr can be captured whole.

mod common;

use std::ffi::c_void;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const CASE: &str = "PJ_PROGRESS_CASE";

/// What the progress callback saw: (completed, total, elapsed, on the caller's thread?).
#[derive(Default)]
struct Seen {
    caller: Option<std::thread::ThreadId>,
    calls: Mutex<Vec<(u64, i64, f64, bool)>>,
}

unsafe extern "C" fn record(userdata: *mut c_void, completed: u64, total: i64, elapsed: f64) {
    // SAFETY: userdata is a live Seen for the duration of the call.
    let seen = unsafe { &*(userdata as *const Seen) };
    let on_caller = seen.caller == Some(std::thread::current().id());
    seen.calls
        .lock()
        .unwrap()
        .push((completed, total, elapsed, on_caller));
}

unsafe extern "C" fn nap_1ms(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    std::thread::sleep(Duration::from_millis(1));
    // SAFETY: 8-byte arguments.
    let y = (2 * unsafe { arg_u64(arg, len) }).to_ne_bytes();
    pj_out_set(out, y.as_ptr(), 8);
    0
}

/// Producer: 0, 1, ..., 19 from the AtomicU64 `userdata` points to.
unsafe extern "C" fn count_to_20(
    userdata: *mut c_void,
    arg: *mut *const u8,
    len: *mut usize,
) -> i32 {
    thread_local! {
        static BUF: std::cell::Cell<[u8; 8]> = const { std::cell::Cell::new([0; 8]) };
    }
    // SAFETY: the child passes a live AtomicU64.
    let next = unsafe { &*(userdata as *const AtomicU64) };
    let i = next.fetch_add(1, Ordering::Relaxed);
    if i >= 20 {
        return 0;
    }
    BUF.with(|buf| {
        buf.set(i.to_ne_bytes());
        // SAFETY: valid output pointers; the thread-local buffer outlives the producer call (pj
        // copies the argument before calling the producer again).
        unsafe {
            *arg = buf.as_ptr().cast::<u8>();
            *len = 8;
        }
    });
    1
}

/// Builds an executor with a progress callback recording into `seen`.
fn with_callback(options: &[(&str, &str)], seen: &Seen) -> Par {
    let cfg = config(options).unwrap();
    assert_eq!(
        pj_config_set_progress(
            cfg,
            Some(record),
            (seen as *const Seen).cast_mut().cast(),
            std::ptr::null_mut()
        ),
        pj_status::Ok
    );
    let mut par = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_new(cfg, &mut par, &mut err);
    pj_config_free(cfg);
    check(status, err).unwrap();
    Par(par)
}

#[test]
fn the_callback_sees_every_task_on_every_backend_on_the_callers_thread() {
    for backend in ["processes", "threads", "sequential"] {
        for n_jobs in ["1", "2"] {
            let seen = Seen {
                caller: Some(std::thread::current().id()),
                ..Seen::default()
            };
            let par = with_callback(&[("backend", backend), ("n_jobs", n_jobs)], &seen);
            let n = 120u64;
            for i in 0..n {
                par.submit(Some(nap_1ms), std::ptr::null_mut(), &i.to_ne_bytes())
                    .unwrap();
            }
            assert_eq!(par.collect().unwrap().len(), n as usize);
            let calls = seen.calls.lock().unwrap();
            let case = format!("{backend} n_jobs={n_jobs}");
            let completed: Vec<u64> = calls.iter().map(|c| c.0).collect();
            assert_eq!(completed, (1..=n).collect::<Vec<_>>(), "{case}");
            assert!(
                calls.iter().all(|c| c.3),
                "{case}: always on the caller's thread"
            );
            assert!(
                calls.iter().all(|c| c.1 == -1 || c.1 == n as i64),
                "{case}: total is unknown or exact"
            );
            assert_eq!(
                calls.last().unwrap().1,
                n as i64,
                "{case}: known at the end"
            );
            assert!(
                calls.windows(2).all(|w| w[0].2 <= w[1].2),
                "{case}: elapsed never goes back"
            );
        }
    }
}

/// A call of fewer tasks than pre_dispatch: joblib's lines do not see the end of its input before
/// its first completion, but the callback is told the total by the last task.
#[test]
fn the_callback_knows_the_total_of_a_short_call_at_its_last_task() {
    for backend in ["threads", "processes", "sequential"] {
        for n in [1u64, 3] {
            let seen = Seen::default();
            let par = with_callback(&[("backend", backend), ("n_jobs", "2")], &seen);
            for i in 0..n {
                par.submit(Some(nap_1ms), std::ptr::null_mut(), &i.to_ne_bytes())
                    .unwrap();
            }
            assert_eq!(par.collect().unwrap().len(), n as usize);
            let calls = seen.calls.lock().unwrap();
            let last = calls.last().unwrap();
            assert_eq!((last.0, last.1), (n, n as i64), "{backend} n={n}");
        }
    }
}

/// Announces `n_items` (`items_per_task` each task) for the next call of `par`.
fn expect(par: &Par, n_items: usize, items_per_task: usize) -> Result<(), CError> {
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_expect(par.0, n_items, items_per_task, &mut err),
        err,
    )
}

#[test]
fn an_announced_total_is_known_from_the_first_completion_on_every_backend() {
    for backend in ["processes", "threads", "sequential"] {
        let seen = Seen::default();
        let par = with_callback(&[("backend", backend), ("n_jobs", "2")], &seen);
        let n = 60u64;
        expect(&par, n as usize, 1).unwrap();
        for i in 0..n {
            par.submit(Some(nap_1ms), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
        assert_eq!(par.collect().unwrap().len(), n as usize);
        let calls = std::mem::take(&mut *seen.calls.lock().unwrap());
        let done: Vec<u64> = calls.iter().map(|c| c.0).collect();
        assert_eq!(done, (1..=n).collect::<Vec<_>>(), "{backend}");
        assert!(
            calls.iter().all(|c| c.1 == n as i64),
            "{backend}: {calls:?}"
        );

        // The announcement was for that call only: the next one learns its total at its end.
        for i in 0..n {
            par.submit(Some(nap_1ms), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
        par.collect().unwrap();
        let calls = seen.calls.lock().unwrap();
        assert_eq!(calls.first().unwrap().1, -1, "{backend}: not announced");

        // Through map, with a producer (a generator, for joblib).
        drop(calls);
        seen.calls.lock().unwrap().clear();
        expect(&par, 20, 1).unwrap();
        let next = AtomicU64::new(0);
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_map(
            par.0,
            Some(nap_1ms),
            std::ptr::null_mut(),
            Some(count_to_20),
            (&next as *const AtomicU64).cast_mut().cast(),
            &mut res,
            &mut err,
        );
        check(status, err).unwrap();
        pj_results_free(res);
        let calls = seen.calls.lock().unwrap();
        assert_eq!(calls.len(), 20);
        assert!(calls.iter().all(|c| c.1 == 20), "{backend}: {calls:?}");
    }
}

/// A range callback that does nothing.
unsafe extern "C" fn idle_range(_: *mut c_void, _: usize, _: usize, _: *mut TaskOutput) -> i32 {
    0
}

#[test]
fn a_parallel_for_reports_items_not_ranges() {
    for (backend, n) in [
        ("threads", 100usize),
        ("processes", 103),
        ("sequential", 1000),
    ] {
        let seen = Seen::default();
        let par = with_callback(&[("backend", backend), ("n_jobs", "2")], &seen);
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_for(par.0, n, Some(idle_range), std::ptr::null_mut(), &mut err);
        check(status, err).unwrap();
        let calls = seen.calls.lock().unwrap();
        let case = format!("{backend} n={n}");
        // One call per range (2 workers x 16 ranges at most), each saying items out of n.
        assert!(
            calls.len() > 1 && calls.len() <= 32,
            "{case}: {}",
            calls.len()
        );
        assert!(calls.iter().all(|c| c.1 == n as i64), "{case}: {calls:?}");
        assert!(
            calls.windows(2).all(|w| w[0].0 < w[1].0),
            "{case}: {calls:?}"
        );
        assert!(calls.iter().all(|c| c.0 <= n as u64), "{case}: {calls:?}");
        assert_eq!(calls.last().unwrap().0, n as u64, "{case}");
        // Every call but the last is short of n: the total is reached only at the end.
        assert!(
            calls[..calls.len() - 1].iter().all(|c| c.0 < n as u64),
            "{case}"
        );
    }
}

#[test]
fn expect_refuses_what_it_cannot_honour() {
    assert_eq!(
        pj_parallel_expect(std::ptr::null_mut(), 1, 1, std::ptr::null_mut()),
        pj_status::NullArgument
    );
    let par = parallel(&[("backend", "threads"), ("n_jobs", "2")]).unwrap();
    let err = expect(&par, 10, 0).unwrap_err();
    assert_eq!(err.status, pj_status::InvalidArgument);
    assert!(err.message.contains("items_per_task"), "{}", err.message);
    par.submit(Some(nap_1ms), std::ptr::null_mut(), &1u64.to_ne_bytes())
        .unwrap();
    let err = expect(&par, 10, 1).unwrap_err();
    assert_eq!(err.status, pj_status::InvalidArgument);
    assert!(err.message.contains("in flight"), "{}", err.message);
    assert_eq!(par.collect().unwrap().len(), 1);
    // Once the call is over, the next one may be announced; n 0 is a valid (empty) call.
    expect(&par, 0, 1).unwrap();
    expect(&par, usize::MAX, usize::MAX).unwrap();
}

#[test]
fn the_callback_can_be_cleared_and_config_checks_progress_values() {
    let seen = Seen::default();
    let cfg = config(&[("backend", "threads")]).unwrap();
    let userdata = (&seen as *const Seen).cast_mut().cast();
    assert_eq!(
        pj_config_set_progress(cfg, Some(record), userdata, std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_config_set_progress(cfg, None, std::ptr::null_mut(), std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_config_set_progress(
            std::ptr::null_mut(),
            Some(record),
            userdata,
            std::ptr::null_mut()
        ),
        pj_status::NullArgument
    );
    let mut par = std::ptr::null_mut();
    assert_eq!(
        pj_parallel_new(cfg, &mut par, std::ptr::null_mut()),
        pj_status::Ok
    );
    pj_config_free(cfg);
    let par = Par(par);
    par.submit(Some(nap_1ms), std::ptr::null_mut(), &1u64.to_ne_bytes())
        .unwrap();
    par.collect().unwrap();
    assert!(seen.calls.lock().unwrap().is_empty());

    for bad in ["Bar", "yes", ""] {
        let err = config(&[("progress", bad)]).unwrap_err();
        assert_eq!(err.status, pj_status::InvalidArgument, "{bad}");
    }
    for good in ["bar", "none"] {
        pj_config_free(config(&[("progress", good)]).unwrap());
    }
}

/// Runs `child_case` for `case`; returns (stdout, stderr).
fn run_case(case: &str, extra_env: &[(&str, &str)]) -> (String, String) {
    let output = child_case_command(CASE, case)
        .envs(extra_env.iter().copied())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "case {case}: {}\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// Lines of `text` that pj wrote with the given prefix.
fn pj_lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The re-executed scenarios. Ignored in normal runs.
#[test]
#[ignore]
fn child_case() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    // The harness prints "test child_case ... " without a newline: start on a fresh line.
    println!();
    let run = |options: &[(&str, &str)], n: u64| {
        let par = parallel(options).unwrap();
        for i in 0..n {
            par.submit(Some(nap_1ms), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
        assert_eq!(par.collect().unwrap().len(), n as usize);
    };
    match case.as_str() {
        "verbose10" => run(
            &[("backend", "processes"), ("n_jobs", "2"), ("verbose", "10")],
            100,
        ),
        "verbose100" => run(
            &[
                ("backend", "threads"),
                ("n_jobs", "2"),
                ("verbose", "100"),
                ("batch_size", "1"),
            ],
            400,
        ),
        "sequential" => run(&[("n_jobs", "1"), ("verbose", "10")], 20),
        "stream_imap" | "stream_submit" => {
            for n_jobs in ["1", "2"] {
                let par = parallel(&[
                    ("backend", "threads"),
                    ("n_jobs", n_jobs),
                    ("verbose", "10"),
                ])
                .unwrap();
                let n: u64 = 20;
                let next = AtomicU64::new(0);
                if case == "stream_imap" {
                    let mut err = std::ptr::null_mut();
                    let status = pj_parallel_imap(
                        par.0,
                        Some(nap_1ms),
                        std::ptr::null_mut(),
                        Some(count_to_20),
                        (&next as *const AtomicU64).cast_mut().cast(),
                        &mut err,
                    );
                    check(status, err).unwrap();
                } else {
                    for i in 0..n {
                        par.submit(Some(nap_1ms), std::ptr::null_mut(), &i.to_ne_bytes())
                            .unwrap();
                    }
                }
                let mut read = 0;
                loop {
                    let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
                    let mut err = std::ptr::null_mut();
                    let status = pj_parallel_next(par.0, &mut index, &mut data, &mut len, &mut err);
                    if status == pj_status::Done {
                        break;
                    }
                    check(status, err).unwrap();
                    read += 1;
                }
                assert_eq!(read, n);
            }
        }
        "bar" => run(
            &[
                ("backend", "threads"),
                ("n_jobs", "2"),
                ("progress", "bar"),
                ("batch_size", "1"),
            ],
            300,
        ),
        "bar_failed" => {
            let par = parallel(&[
                ("backend", "threads"),
                ("n_jobs", "2"),
                ("progress", "bar"),
                ("batch_size", "1"),
            ])
            .unwrap();
            for i in 0..40u64 {
                par.submit(Some(fail_at_30), std::ptr::null_mut(), &i.to_ne_bytes())
                    .ok();
            }
            assert!(par.collect().is_err());
        }
        "bar_for" => {
            let par =
                parallel(&[("backend", "threads"), ("n_jobs", "2"), ("progress", "bar")]).unwrap();
            let mut err = std::ptr::null_mut();
            let status = pj_parallel_for(
                par.0,
                1000,
                Some(idle_range),
                std::ptr::null_mut(),
                &mut err,
            );
            check(status, err).unwrap();
        }
        other => panic!("unknown case {other}"),
    }
}

/// Task: fails at argument 30, after a short nap otherwise.
unsafe extern "C" fn fail_at_30(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    if unsafe { arg_u64(arg, len) } == 30 {
        return 7;
    }
    // SAFETY: forwarded as received.
    unsafe { nap_1ms(userdata, arg, len, out) }
}

#[test]
fn verbose_lines_go_to_stderr_with_joblibs_shapes() {
    let (stdout, stderr) = run_case("verbose10", &[]);
    let prefix = "[Parallel(n_jobs=2)]: ";
    assert!(
        pj_lines(&stdout, prefix).is_empty(),
        "nothing on stdout below 50: {stdout}"
    );
    let lines = pj_lines(&stderr, prefix);
    assert_eq!(
        lines.first().copied(),
        Some("[Parallel(n_jobs=2)]: Using backend LokyBackend with 2 concurrent workers."),
        "{stderr}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("[Parallel(n_jobs=2)]: Done 100 out of 100 | elapsed:")
            && last.ends_with("finished"),
        "{stderr}"
    );
    // Every line is one of joblib's progress shapes or an auto-batching note, whole.
    for line in &lines[1..] {
        let body = &line[prefix.len()..];
        let progress = body.starts_with("Done ") && body.contains("| elapsed:");
        let batching = body.starts_with("Batch computation too ") && body.contains("batch_size=");
        assert!(progress || batching, "{line}");
    }
}

#[test]
fn verbose_100_goes_to_stdout_one_whole_line_at_a_time() {
    let (stdout, stderr) = run_case("verbose100", &[]);
    let prefix = "[Parallel(n_jobs=2)]: ";
    assert!(
        pj_lines(&stderr, prefix).is_empty(),
        "nothing on stderr from 50: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("[Parallel")).collect();
    // At verbose > 10 every batch prints (400 batches of one task), but for the few that joblib's
    // "remaining" filter drops near the end.
    assert!(lines.len() >= 390, "{} lines", lines.len());
    assert!(lines.last().unwrap().ends_with("finished"), "{stdout}");
    for line in &lines {
        // A line interleaved with another would hold two prefixes or start mid-way.
        assert!(line.starts_with(prefix), "{line:?}");
        assert_eq!(line.matches("[Parallel").count(), 1, "{line:?}");
    }
}

#[test]
fn a_sequential_call_prints_its_final_line() {
    let (_, stderr) = run_case("sequential", &[]);
    let lines = pj_lines(&stderr, "[Parallel(n_jobs=1)]: ");
    assert!(
        !lines.iter().any(|l| l.contains("Using backend")),
        "a sequential call has no backend line: {stderr}"
    );
    let last = lines.last().unwrap_or_else(|| panic!("no line: {stderr}"));
    assert!(
        last.starts_with("[Parallel(n_jobs=1)]: Done  20 out of  20 | elapsed:")
            && last.ends_with("finished"),
        "{stderr}"
    );
}

/// A streamed call (imap/next, or submits read with next) ends with joblib's final line, once.
#[test]
fn a_streamed_call_prints_its_final_line_once() {
    for case in ["stream_imap", "stream_submit"] {
        let (_, stderr) = run_case(case, &[]);
        for n_jobs in [1, 2] {
            let prefix = format!("[Parallel(n_jobs={n_jobs})]: ");
            let lines = pj_lines(&stderr, &prefix);
            let finished: Vec<&&str> = lines.iter().filter(|l| l.ends_with("finished")).collect();
            assert_eq!(finished.len(), 1, "{case} n_jobs={n_jobs}: {stderr}");
            let last = lines.last().unwrap();
            assert!(
                last.starts_with(&format!("{prefix}Done  20 out of  20 | elapsed:"))
                    && last.ends_with("finished"),
                "{case} n_jobs={n_jobs}: {stderr}"
            );
        }
    }
}

#[test]
fn the_bar_prints_plain_lines_when_stderr_is_not_a_terminal() {
    let (_, stderr) = run_case("bar", &[]);
    assert!(
        !stderr.contains('\r'),
        "no in-place redraw on a pipe: {stderr:?}"
    );
    let last = stderr
        .lines()
        .rfind(|l| l.contains("300/300"))
        .unwrap_or_else(|| panic!("the final line shows the total: {stderr:?}"));
    assert!(last.contains("100%"), "{last}");
    assert!(stderr.ends_with('\n'));
}

#[test]
fn a_failed_calls_bar_ends_saying_it_stopped() {
    let (_, stderr) = run_case("bar_failed", &[]);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.ends_with("| stopped"), "{stderr:?}");
    assert!(!last.contains("ETA"), "{last}");
}

#[test]
fn a_parallel_for_bar_counts_items() {
    let (_, stderr) = run_case("bar_for", &[]);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("1000/1000 100%") && last.contains("items/s"),
        "{stderr:?}"
    );
}

/// Runs the `case` child on a pseudo-terminal (`script`), returning what it wrote there, or
/// `None` when `script` is not installed.
fn on_a_terminal(case: &str, env: &str) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let command = format!(
        "{env} {CASE}={case} {} --exact child_case --ignored --nocapture --test-threads=1",
        exe.display()
    );
    let output = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}");
    Some(text)
}

#[test]
fn the_bar_fits_a_narrow_terminal() {
    // script's pseudo-terminal has no size of its own here, so $COLUMNS gives the width (with
    // a size, the terminal's own wins; then the check below still holds for that width).
    let Some(text) = on_a_terminal("bar", "COLUMNS=40") else {
        return;
    };
    let columns = 40;
    let drawings: Vec<&str> = text.split("\r\x1b[K").skip(1).collect();
    assert!(drawings.len() >= 2, "{text:?}");
    for drawing in &drawings {
        let line = drawing.split(['\r', '\n']).next().unwrap();
        assert!(line.len() < columns, "{} columns: {line:?}", line.len());
    }
    let last = drawings.last().unwrap();
    assert!(last.contains("300/300 100%"), "{last:?}");
}

#[test]
fn the_bar_redraws_in_place_on_a_terminal() {
    let Some(text) = on_a_terminal("bar", "") else {
        return;
    };
    let redraws = text.matches("\r\x1b[K").count();
    assert!(redraws >= 2, "the bar is redrawn in place: {text:?}");
    let tail = &text[text.rfind("\r\x1b[K").unwrap()..];
    assert!(
        tail.contains("300/300") && tail.contains("100%"),
        "{tail:?}"
    );
    // The bar's last drawing ends its line (the pty turns "\n" into "\r\n").
    let after_bar = &tail[tail.find("100%").unwrap()..];
    assert!(after_bar.contains('\n'), "{tail:?}");
}
