//! Golden test: pj's verbose lines against joblib 1.6's real output.
//!
//! The expected files in `tests/golden/verbose/` were written by `gen_joblib.py` (next to them,
//! which says how to run it) from joblib 1.6.0 running
//! `Parallel(n_jobs, batch_size, backend, verbose=V)(delayed(f)(i) for i in range(n))` for
//! verbose 1, 2, 5, 10, 11, 50, 100 and n = 1, 7, 10, 100, 1000. Each line is the stream joblib
//! wrote it to, `|`, and the line, with the elapsed and remaining figures replaced by `<t>`. This
//! test needs no Python: it runs the same configurations through pj's C ABI in a re-executed copy
//! of this binary (so that the real stdout and stderr can be captured whole), normalises them the
//! same way and compares:
//! - `n_jobs=1` (batch_size "auto"): the same sequence, through `pj_parallel_map`, submit and
//!   collect, and `pj_parallel_imap` / `pj_parallel_next`;
//! - `n_jobs=2`, `batch_size=1`, threads: the same sequence through `pj_parallel_map` and through
//!   submit and collect; see [`threads_batch_size_1_lines_are_joblibs`] for why that can be exact
//!   (imap/next differs by design: its window counts results not yet read);
//! - the `-list` files (joblib given a list, so it knows the number of tasks): the same calls
//!   after `pj_parallel_expect(par, n, 1)`;
//! - `n_jobs=2`, `batch_size=1`, processes (`loky`, `multiprocessing`): the start line, then
//!   joblib's threading lines, since joblib's own process runs vary from run to run (see
//!   `timing-dependent.txt`) and pj's do not.

mod common;

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use pj::ffi::*;

const CASE: &str = "PJ_VERBOSE_GOLDEN_CASE";
const VERBOSE: [i64; 7] = [1, 2, 5, 10, 11, 50, 100];
const SIZES: [u64; 5] = [1, 7, 10, 100, 1000];
/// Written to both streams before each configuration's call, to split the captured output.
const MARK: &str = "@@ pj-golden ";
/// Written after the last call.
const END: &str = "end";

/// The pj options of each configuration named in the expected files.
/// `sequential+batch7` is `sequential` with batches of 7 tasks, compared with the same files.
fn options(config: &str) -> &'static [(&'static str, &'static str)] {
    match config {
        "sequential" | "sequential-list" => &[("n_jobs", "1")],
        "sequential+batch7" => &[("n_jobs", "1"), ("batch_size", "7")],
        "threading" | "threading-list" => {
            &[("backend", "threads"), ("n_jobs", "2"), ("batch_size", "1")]
        }
        "loky" => &[("backend", "loky"), ("n_jobs", "2"), ("batch_size", "1")],
        "multiprocessing" => &[
            ("backend", "multiprocessing"),
            ("n_jobs", "2"),
            ("batch_size", "1"),
        ],
        other => panic!("unknown configuration {other}"),
    }
}

/// The (verbose, n) pairs recorded for a configuration.
fn matrix(config: &str) -> Vec<(i64, u64)> {
    if config == "multiprocessing" {
        return vec![(10, 10)];
    }
    VERBOSE
        .iter()
        .flat_map(|&v| SIZES.iter().map(move |&n| (v, n)))
        .collect()
}

fn name(config: &str, verbose: i64, n: u64) -> String {
    format!("{config}-v{verbose}-n{n}")
}

/// The expected lines of one configuration, as committed.
fn expected(name: &str) -> Vec<String> {
    let name = name.replace("+batch7", "");
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "golden",
        "verbose",
        &format!("{name}.txt"),
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (see gen_joblib.py)", path.display()));
    text.lines().map(str::to_owned).collect()
}

/// Replaces the figure after each `elapsed: ` and `remaining: ` by `<t>`, as gen_joblib.py does;
/// the figure must be joblib's short_format_time, 7 characters (`   0.0s`, ` 1.2min`).
fn normalise(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let found = ["elapsed: ", "remaining: "]
            .iter()
            .filter_map(|key| rest.find(key).map(|at| (at, key.len())))
            .min();
        let Some((at, key_len)) = found else {
            out.push_str(rest);
            return out;
        };
        let start = at + key_len;
        out.push_str(&rest[..start]);
        let figure = rest.get(start..start + 7).unwrap_or("");
        let number = figure
            .trim_start_matches(' ')
            .trim_end_matches("min")
            .trim_end_matches('s');
        let is_time = figure.len() == 7
            && (figure.ends_with('s') || figure.ends_with("min"))
            && number.split_once('.').is_some_and(|(int, frac)| {
                !int.is_empty()
                    && frac.len() == 1
                    && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            });
        assert!(
            is_time,
            "a time figure that is not 7 characters wide: {line:?}"
        );
        out.push_str("<t>");
        rest = &rest[start + 7..];
    }
}

/// pj's output for every configuration of `config` through `api`, split per configuration: name
/// → `stream|line` lines (each stream in order; one verbose level writes to one stream only).
fn pj_output(api: &str, config: &str) -> Vec<(String, Vec<String>)> {
    let output = child_case_command(CASE, format!("{api}:{config}"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "{api}:{config}: {}\n{stdout}\n{stderr}",
        output.status
    );
    let split = |text: &str, stream: &str| -> Vec<(String, Vec<String>)> {
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        let mut ended = false;
        for line in text.lines() {
            match line.strip_prefix(MARK) {
                Some(END) => ended = true,
                Some(name) => sections.push((name.to_owned(), Vec::new())),
                // Before the first mark and after the end come the harness's own lines.
                None if ended => {}
                None => {
                    if let Some((_, lines)) = sections.last_mut() {
                        lines.push(format!("{stream}|{}", normalise(line)));
                    }
                }
            }
        }
        assert!(ended, "{api}:{config}: the child did not finish: {text}");
        sections
    };
    let out = split(&stdout, "stdout");
    let err = split(&stderr, "stderr");
    assert_eq!(
        out.len(),
        err.len(),
        "{api}:{config}: markers on both streams"
    );
    out.into_iter()
        .zip(err)
        .map(|((name, mut lines), (other, err_lines))| {
            assert_eq!(name, other);
            assert!(
                lines.is_empty() || err_lines.is_empty(),
                "{name}: lines on both streams: {lines:?} {err_lines:?}"
            );
            lines.extend(err_lines);
            (name, lines)
        })
        .collect()
}

/// Checks that pj printed exactly joblib's lines for every configuration of `config` through `api`.
fn assert_identical(api: &str, config: &str) {
    let sections = pj_output(api, config);
    assert_eq!(sections.len(), matrix(config).len(), "{api}:{config}");
    let mut differ = Vec::new();
    for (name, lines) in &sections {
        let expected = expected(name);
        if *lines != expected {
            differ.push(format!(
                "{name} ({api}):\n  joblib: {expected:#?}\n  pj:     {lines:#?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} configurations differ from joblib:\n{}",
        differ.len(),
        sections.len(),
        differ.join("\n")
    );
}

#[test]
fn sequential_lines_are_joblibs_through_map() {
    assert_identical("map", "sequential");
}

#[test]
fn sequential_lines_are_joblibs_through_submit_and_collect() {
    assert_identical("submit", "sequential");
}

#[test]
fn sequential_lines_are_joblibs_through_imap_and_next() {
    assert_identical("imap", "sequential");
}

/// joblib's sequential loop counts every task as a batch of its own, whatever batch_size says.
#[test]
fn sequential_lines_do_not_depend_on_the_batch_size() {
    assert_identical("map", "sequential+batch7");
    assert_identical("submit", "sequential+batch7");
}

/// With batches of one task, pj's caller thread evaluates progress after each completion it takes
/// in, then reads one more input: the counters joblib's filters depend on (batches dispatched,
/// tasks completed, input exhausted) are then the same at each line as in joblib's idealised
/// schedule, where the first completion is seen after the whole pre-dispatch window was sent,
/// which is what joblib's threading runs print (they did not vary in 5 runs of each
/// configuration).
#[test]
fn threads_batch_size_1_lines_are_joblibs() {
    assert_identical("map", "threading");
}

/// The same lines through submits and collect: collect closes the input, and the end is noticed
/// at the next completion, after reporting it, as joblib notices the end of its generator.
#[test]
fn threads_batch_size_1_lines_are_joblibs_through_submit_and_collect() {
    assert_identical("submit", "threading");
}

/// The same lines when tasks take uneven times and complete out of order: they do not depend on
/// scheduling.
#[test]
fn threads_batch_size_1_lines_do_not_depend_on_task_durations() {
    assert_identical("map-jitter", "threading");
}

/// joblib given a list knows its length: the counts are as wide as n and the lines say "Done k
/// out of n"; pj prints the same after `pj_parallel_expect(par, n, 1)`, through every call style.
#[test]
fn with_an_announced_total_the_lines_are_joblibs_for_a_list() {
    for api in ["map", "submit", "imap"] {
        assert_identical(api, "sequential-list");
    }
    for api in ["map", "submit"] {
        assert_identical(api, "threading-list");
    }
}

/// joblib's process runs are timing-dependent (its callback thread races its own dispatching: a
/// "finished" line can even appear mid-run; see `timing-dependent.txt`). pj's lines do not depend
/// on timing with a fixed batch size, so its process pool prints what joblib's threading runs
/// print, under the process backend's own start line (`LokyBackend`, or `MultiprocessingBackend`
/// when the backend was given as `multiprocessing`).
#[test]
fn processes_batch_size_1_lines_are_joblibs_threading_lines_under_their_start_line() {
    for config in ["loky", "multiprocessing"] {
        let mut differ = Vec::new();
        for (name, lines) in pj_output("map", config) {
            let joblib = expected(&name);
            assert_eq!(lines.first(), joblib.first(), "{name}: start line");
            let threading = expected(&name.replacen(config, "threading", 1));
            if lines[1..] != threading[1..] {
                differ.push(format!(
                    "{name}:\n  joblib: {threading:#?}\n  pj: {lines:#?}"
                ));
            }
        }
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }
}

/// State of [`counting_producer`]: yields 0, 1, ..., end - 1.
struct Counting {
    next: AtomicU64,
    end: u64,
    buf: std::sync::Mutex<[u8; 8]>,
}

unsafe extern "C" fn counting_producer(
    userdata: *mut c_void,
    arg: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: the child passes a live Counting and valid output pointers.
    let state = unsafe { &*(userdata as *const Counting) };
    let i = state.next.fetch_add(1, Ordering::Relaxed);
    if i >= state.end {
        return 0;
    }
    let mut buf = state.buf.lock().unwrap();
    *buf = i.to_ne_bytes();
    // SAFETY: valid output pointers; the buffer lives in `state` until the next producer call.
    unsafe {
        *arg = buf.as_ptr();
        *len = 8;
    }
    1
}

/// Task: as `double_task`, after sleeping 0 to 300 µs depending on the argument, so that
/// completions come in another order than dispatches and at uneven times.
unsafe extern "C" fn jittered_task(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut pj::task::TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let x = unsafe { arg_u64(arg, len) };
    std::thread::sleep(std::time::Duration::from_micros(x * 7919 % 7 * 50));
    // SAFETY: as for double_task, which this forwards to.
    unsafe { double_task(userdata, arg, len, out) }
}

/// Runs one call of `n` tasks through `api` (`map`, `submit`, `imap`; `map-jitter`: `map` with
/// [`jittered_task`] instead of trivial tasks).
fn run_call(api: &str, par: &Par, n: u64) {
    let (api, task): (&str, pj_task_fn) = match api.strip_suffix("-jitter") {
        Some(api) => (api, Some(jittered_task)),
        None => (api, Some(double_task)),
    };
    let state = Counting {
        next: AtomicU64::new(0),
        end: n,
        buf: std::sync::Mutex::new([0; 8]),
    };
    let state_ptr = (&state as *const Counting).cast_mut().cast();
    let mut err = std::ptr::null_mut();
    match api {
        "map" => {
            let mut res = std::ptr::null_mut();
            let status = pj_parallel_map(
                par.0,
                task,
                std::ptr::null_mut(),
                Some(counting_producer),
                state_ptr,
                &mut res,
                &mut err,
            );
            check(status, err).unwrap();
            assert_eq!(results_to_vec(res).len() as u64, n);
        }
        "submit" => {
            for i in 0..n {
                par.submit(task, std::ptr::null_mut(), &i.to_ne_bytes())
                    .unwrap();
            }
            assert_eq!(par.collect().unwrap().len() as u64, n);
        }
        "imap" => {
            let status = pj_parallel_imap(
                par.0,
                task,
                std::ptr::null_mut(),
                Some(counting_producer),
                state_ptr,
                &mut err,
            );
            check(status, err).unwrap();
            let mut read = 0;
            loop {
                let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
                let status = pj_parallel_next(par.0, &mut index, &mut data, &mut len, &mut err);
                if status == pj_status::Done {
                    break;
                }
                check(status, err).unwrap();
                read += 1;
            }
            assert_eq!(read, n);
        }
        other => panic!("unknown api {other}"),
    }
}

/// The re-executed child: runs every configuration of one `api:config` pair. Ignored in normal
/// runs.
#[test]
#[ignore]
fn child_case() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    let (api, config) = case.split_once(':').unwrap();
    // The harness prints "test child_case ... " without a newline: start on a fresh line.
    println!();
    for (verbose, n) in matrix(config) {
        let name = name(config, verbose, n);
        println!("{MARK}{name}");
        eprintln!("{MARK}{name}");
        let verbose = verbose.to_string();
        let mut opts = options(config).to_vec();
        opts.push(("verbose", &verbose));
        let par = parallel(&opts).unwrap();
        if config.ends_with("-list") {
            // joblib was given a list: it knew len(iterable).
            let mut err = std::ptr::null_mut();
            check(pj_parallel_expect(par.0, n as usize, 1, &mut err), err).unwrap();
        }
        run_call(api, &par, n);
    }
    println!("{MARK}{END}");
    eprintln!("{MARK}{END}");
}

#[test]
fn the_normaliser_is_gen_joblibs() {
    assert_eq!(
        normalise("[Parallel(n_jobs=1)]: Done   7 out of   7 | elapsed:    0.0s finished"),
        "[Parallel(n_jobs=1)]: Done   7 out of   7 | elapsed: <t> finished"
    );
    assert_eq!(
        normalise("x | elapsed:   12.5s remaining:  1.2min"),
        "x | elapsed: <t> remaining: <t>"
    );
    assert_eq!(
        normalise("Batch computation too fast"),
        "Batch computation too fast"
    );
    for bad in ["elapsed: 0.0s", "elapsed:  0.0s x", "elapsed:    x.0s"] {
        assert!(
            std::panic::catch_unwind(|| normalise(bad)).is_err(),
            "{bad}"
        );
    }
}
