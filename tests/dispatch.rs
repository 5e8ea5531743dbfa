//! The dispatcher through the C ABI: the pre-dispatch window, streaming in both orders, bounded
//! buffers, abandonment, scoped defaults and nesting. Tests that watch tasks through shared memory
//! (an event log) use the thread backend; the others run on the default process backend.

mod common;

use std::ffi::c_void;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// A shared event log: producers append `+i`, tasks append `-i` when they finish.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<i64>>,
    next: Mutex<u64>,
    end: u64,
    buf: Mutex<[u8; 8]>,
    task_sleep_ms: u64,
}

impl Log {
    fn new(end: u64, task_sleep_ms: u64) -> Box<Log> {
        Box::new(Log {
            end,
            task_sleep_ms,
            ..Default::default()
        })
    }

    fn events(&self) -> Vec<i64> {
        self.events.lock().unwrap().clone()
    }

    /// Checks that produced − completed never exceeds `window`; returns the events.
    fn check_window(&self, window: i64) -> Vec<i64> {
        let events = self.events();
        let (mut produced, mut completed) = (0i64, 0i64);
        for e in &events {
            if *e >= 0 && e.signum() >= 0 && !completed_marker(*e) {
                produced += 1;
            } else {
                completed += 1;
            }
            assert!(
                produced - completed <= window,
                "window {window} exceeded: {events:?}"
            );
        }
        events
    }
}

/// Events: produce i is `i`, completion of i is `-(i + 1)`.
fn completed_marker(event: i64) -> bool {
    event < 0
}

unsafe extern "C" fn log_producer(
    userdata: *mut c_void,
    arg: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: tests pass a live Log and valid output pointers.
    let log = unsafe { &*(userdata as *const Log) };
    let mut next = log.next.lock().unwrap();
    if *next == log.end {
        return 0;
    }
    log.events.lock().unwrap().push(*next as i64);
    let mut buf = log.buf.lock().unwrap();
    *buf = next.to_ne_bytes();
    // SAFETY: valid output pointers; the buffer lives in the Log until the next producer call.
    unsafe {
        *arg = buf.as_ptr();
        *len = 8;
    }
    *next += 1;
    1
}

unsafe extern "C" fn log_task(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: tests pass a live Log and 8-byte arguments.
    let (log, x) = unsafe { (&*(userdata as *const Log), arg_u64(arg, len)) };
    std::thread::sleep(Duration::from_millis(log.task_sleep_ms + x % 3));
    log.events.lock().unwrap().push(-(x as i64) - 1);
    pj_out_set(out, arg, len);
    0
}

fn ud<T>(x: &T) -> *mut c_void {
    x as *const T as *mut c_void
}

fn map_log(par: &Par, log: &Log) -> Vec<u64> {
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_map(
        par.0,
        Some(log_task),
        ud(log),
        Some(log_producer),
        ud(log),
        &mut res,
        &mut err,
    );
    check(status, err).unwrap();
    results_to_vec(res)
        .iter()
        .map(|r| u64::from_ne_bytes(r.as_slice().try_into().unwrap()))
        .collect()
}

#[test]
fn the_seed_producer_example_reads_three_items_before_any_completion() {
    let par = parallel(&[
        ("backend", "threads"),
        ("n_jobs", "2"),
        ("pre_dispatch", "1.5*n_jobs"),
        ("batch_size", "1"),
    ])
    .unwrap();
    let log = Log::new(6, 20);
    assert_eq!(map_log(&par, &log), (0..6).collect::<Vec<_>>());
    let events = log.check_window(3);
    assert_eq!(
        &events[..3],
        &[0, 1, 2],
        "three items produced before any completion: {events:?}"
    );
    assert!(
        completed_marker(events[3]),
        "then production waits for a completion: {events:?}"
    );
    assert_eq!(events.len(), 12);
}

#[test]
fn one_job_batch_one_alternates_produce_and_run() {
    let par = parallel(&[("n_jobs", "1"), ("batch_size", "1")]).unwrap();
    let log = Log::new(5, 0);
    map_log(&par, &log);
    assert_eq!(log.events(), vec![0, -1, 1, -2, 2, -3, 3, -4, 4, -5]);
}

#[test]
fn the_window_scales_with_the_batch_size() {
    let par = parallel(&[
        ("backend", "threads"),
        ("n_jobs", "2"),
        ("pre_dispatch", "2"),
        ("batch_size", "3"),
    ])
    .unwrap();
    let log = Log::new(40, 1);
    assert_eq!(map_log(&par, &log), (0..40).collect::<Vec<_>>());
    log.check_window(6);
}

#[test]
fn submit_blocks_while_the_window_is_full() {
    let par = parallel(&[
        ("backend", "threads"),
        ("n_jobs", "2"),
        ("pre_dispatch", "3"),
        ("batch_size", "1"),
    ])
    .unwrap();
    let log = Log::new(0, 10);
    for i in 0..12u64 {
        log.events.lock().unwrap().push(i as i64);
        par.submit(Some(log_task), ud(&*log), &i.to_ne_bytes())
            .unwrap();
    }
    assert_eq!(par.collect().unwrap().len(), 12);
    // The event is logged before submit returns, so one more than the window can show.
    log.check_window(4);
}

fn next(par: &Par) -> Result<Option<(usize, Vec<u8>)>, CError> {
    let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_next(par.0, &mut index, &mut data, &mut len, &mut err);
    if status == pj_status::Done {
        return Ok(None);
    }
    check(status, err)?;
    // SAFETY: pj_parallel_next returned a live view.
    Ok(Some((
        index,
        unsafe { std::slice::from_raw_parts(data, len) }.to_vec(),
    )))
}

fn imap(par: &Par, f: pj_task_fn, userdata: *mut c_void, log: &Log) {
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_imap(par.0, f, userdata, Some(log_producer), ud(log), &mut err),
        err,
    )
    .unwrap();
}

#[test]
fn generator_streams_in_input_order() {
    let par = parallel(&[("n_jobs", "2"), ("return_as", "generator")]).unwrap();
    let log = Log::new(50, 1);
    imap(&par, Some(log_task), ud(&*log), &log);
    let mut seen = Vec::new();
    while let Some((index, data)) = next(&par).unwrap() {
        assert_eq!(u64::from_ne_bytes(data.try_into().unwrap()), index as u64);
        seen.push(index);
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    assert_eq!(next(&par).unwrap(), None, "DONE again after the end");
}

#[test]
fn generator_unordered_streams_in_completion_order() {
    unsafe extern "C" fn slow_first(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: 8-byte arguments.
        let x = unsafe { arg_u64(arg, len) };
        std::thread::sleep(Duration::from_millis(if x == 0 { 300 } else { 1 }));
        pj_out_set(out, arg, len);
        0
    }
    let par = parallel(&[
        ("n_jobs", "2"),
        ("return_as", "generator_unordered"),
        ("batch_size", "1"),
    ])
    .unwrap();
    let log = Log::new(8, 0);
    imap(&par, Some(slow_first), std::ptr::null_mut(), &log);
    let mut seen = Vec::new();
    while let Some((index, data)) = next(&par).unwrap() {
        assert_eq!(u64::from_ne_bytes(data.try_into().unwrap()), index as u64);
        seen.push(index);
    }
    assert_ne!(
        seen[0], 0,
        "the slow task 0 does not hold the others back: {seen:?}"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, (0..8).collect::<Vec<_>>());
}

#[test]
fn a_slow_reader_pauses_production() {
    let par = parallel(&[("n_jobs", "2"), ("pre_dispatch", "4"), ("batch_size", "1")]).unwrap();
    let log = Log::new(40, 0);
    imap(&par, Some(log_task), ud(&*log), &log);
    let mut read = 0i64;
    while next(&par).unwrap().is_some() {
        read += 1;
        std::thread::sleep(Duration::from_millis(2));
        let produced = *log.next.lock().unwrap() as i64;
        assert!(produced - read <= 4, "produced {produced}, read {read}");
    }
    assert_eq!(read, 40);
}

#[test]
fn submit_some_read_some_on_one_thread() {
    let par = parallel(&[("n_jobs", "2"), ("pre_dispatch", "2"), ("batch_size", "1")]).unwrap();
    let mut expected = 0usize;
    for round in 0..5u64 {
        for i in 0..10u64 {
            par.submit(
                Some(double_task),
                std::ptr::null_mut(),
                &(round * 10 + i).to_ne_bytes(),
            )
            .unwrap();
        }
        for _ in 0..10 {
            let (index, data) = next(&par).unwrap().expect("a result");
            assert_eq!(index, expected % 10, "indices restart with each call");
            assert_eq!(
                u64::from_ne_bytes(data.try_into().unwrap()),
                2 * (round * 10 + index as u64)
            );
            expected += 1;
        }
        assert_eq!(
            next(&par).unwrap(),
            None,
            "every submitted result read: the call is over"
        );
    }
}

#[test]
fn a_failure_surfaces_in_next_and_ends_the_call() {
    let counter = Box::new(Counter {
        runs: Default::default(),
        fail_at: 5,
    });
    let par = parallel(&[("n_jobs", "2"), ("batch_size", "1")]).unwrap();
    let log = Log::new(1000, 0);
    imap(&par, Some(double_task), ud(&*counter), &log);
    let err = loop {
        match next(&par) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the failure was not reported"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.status, pj_status::TaskFailed);
    assert_eq!(err.task_index, 5);
    assert!(*log.next.lock().unwrap() < 100, "production stopped");
    assert_eq!(next(&par).unwrap(), None, "the call is over");
}

#[test]
fn abandoning_a_stream_stops_its_tasks() {
    for how in ["free", "new call"] {
        let log = Log::new(10_000, 2);
        let par =
            parallel(&[("backend", "threads"), ("n_jobs", "2"), ("batch_size", "1")]).unwrap();
        imap(&par, Some(log_task), ud(&*log), &log);
        assert!(next(&par).unwrap().is_some());
        if how == "free" {
            drop(par);
        } else {
            let other = Log::new(3, 0);
            assert_eq!(map_log(&par, &other), vec![0, 1, 2]);
        }
        let completed_then = log
            .events()
            .iter()
            .filter(|e| completed_marker(**e))
            .count();
        std::thread::sleep(Duration::from_millis(30));
        let completed_now = log
            .events()
            .iter()
            .filter(|e| completed_marker(**e))
            .count();
        assert_eq!(
            completed_then, completed_now,
            "{how}: no task of the abandoned call runs afterwards"
        );
        assert!(*log.next.lock().unwrap() < 100, "{how}: production stopped");
    }
}

#[test]
fn scoped_defaults_apply_on_this_thread_only() {
    let scoped = config(&[("n_jobs", "3"), ("verbose", "0")]).unwrap();
    assert_eq!(pj_config_push(scoped, std::ptr::null_mut()), pj_status::Ok);
    let own = config(&[]).unwrap();
    assert_eq!(pj_effective_n_jobs(own), 3, "the pushed n_jobs applies");
    let explicit = config(&[("n_jobs", "2")]).unwrap();
    assert_eq!(
        pj_effective_n_jobs(explicit),
        2,
        "the object's own option wins"
    );
    let other_thread = std::thread::spawn(|| pj_effective_n_jobs(std::ptr::null()))
        .join()
        .unwrap();
    assert_eq!(other_thread, 1, "other threads do not see the scope");
    let inner = config(&[("n_jobs", "-1")]).unwrap();
    assert_eq!(pj_config_push(inner, std::ptr::null_mut()), pj_status::Ok);
    assert_eq!(
        pj_effective_n_jobs(own),
        pj_cpu_count(),
        "the innermost scope wins"
    );
    assert_eq!(pj_config_pop(std::ptr::null_mut()), pj_status::Ok);
    assert_eq!(pj_effective_n_jobs(own), 3);
    assert_eq!(pj_config_pop(std::ptr::null_mut()), pj_status::Ok);
    assert_eq!(pj_effective_n_jobs(own), 1);
    let mut err = std::ptr::null_mut();
    assert_eq!(pj_config_pop(&mut err), pj_status::InvalidArgument);
    take_error(pj_status::InvalidArgument, err);
    assert_eq!(
        pj_config_push(std::ptr::null(), std::ptr::null_mut()),
        pj_status::NullArgument
    );
    for c in [scoped, own, explicit, inner] {
        pj_config_free(c);
    }
}

/// Task: reports its nesting level and, while `depth` > 0, runs a nested call of two tasks with
/// n_jobs=2 and the default backend; returns the sum of the levels seen below it, and the highest
/// thread count seen.
unsafe extern "C" fn nest(_: *mut c_void, arg: *const u8, len: usize, out: *mut TaskOutput) -> i32 {
    // SAFETY: 8-byte arguments.
    let depth = unsafe { arg_u64(arg, len) };
    let mut deepest = pj_nesting_level() as u64;
    let mut max_threads = threads_now();
    if depth > 0 {
        let inner = parallel(&[("n_jobs", "2")]).unwrap();
        for _ in 0..2 {
            inner
                .submit(Some(nest), std::ptr::null_mut(), &(depth - 1).to_ne_bytes())
                .unwrap();
        }
        for r in inner.collect().unwrap() {
            let (d, t) = (
                u64::from_ne_bytes(r[..8].try_into().unwrap()),
                u64::from_ne_bytes(r[8..].try_into().unwrap()),
            );
            deepest = deepest.max(d);
            max_threads = max_threads.max(t);
        }
    }
    let mut bytes = deepest.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&max_threads.to_ne_bytes());
    pj_out_set(out, bytes.as_ptr(), bytes.len());
    0
}

fn threads_now() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn nested_calls_use_threads_then_run_sequentially() {
    assert_eq!(pj_nesting_level(), 0);
    let before = threads_now();
    let par = parallel(&[("n_jobs", "2")]).unwrap();
    for _ in 0..2 {
        par.submit(Some(nest), std::ptr::null_mut(), &5u64.to_ne_bytes())
            .unwrap();
    }
    let results = par.collect().unwrap();
    for r in &results {
        let deepest = u64::from_ne_bytes(r[..8].try_into().unwrap());
        let max_threads = u64::from_ne_bytes(r[8..].try_into().unwrap());
        assert_eq!(deepest, 6, "levels 1..=6 were reached");
        // Outer pool 2 + two level-1 tasks with an inner pool of 2 each; deeper levels add none.
        // Other tests run concurrently in this process, so allow generous slack.
        assert!(
            max_threads <= before + 6 + 16,
            "threads stayed bounded: {max_threads} (before {before})"
        );
    }
}

#[test]
fn a_million_streamed_tasks_keep_memory_flat() {
    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }
    struct Count {
        next: u64,
        end: u64,
        buf: [u8; 8],
    }
    unsafe extern "C" fn produce(
        userdata: *mut c_void,
        arg: *mut *const u8,
        len: *mut usize,
    ) -> i32 {
        // SAFETY: a live Count and valid output pointers.
        let (c, arg, len) = unsafe { (&mut *(userdata as *mut Count), &mut *arg, &mut *len) };
        if c.next == c.end {
            return 0;
        }
        c.buf = c.next.to_ne_bytes();
        c.next += 1;
        *arg = c.buf.as_ptr();
        *len = 8;
        1
    }
    let par = parallel(&[("n_jobs", "2"), ("return_as", "generator")]).unwrap();
    let mut count = Count {
        next: 0,
        end: 1_000_000,
        buf: [0; 8],
    };
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_imap(
        par.0,
        Some(double_task),
        std::ptr::null_mut(),
        Some(produce),
        ud(&count),
        &mut err,
    );
    check(status, err).unwrap();
    let before = rss_bytes();
    let mut peak = before;
    let (mut n, mut index, mut data, mut len) = (0u64, 0usize, std::ptr::null(), 0usize);
    while pj_parallel_next(par.0, &mut index, &mut data, &mut len, std::ptr::null_mut())
        == pj_status::Ok
    {
        // SAFETY: a live 8-byte view.
        let value = unsafe { arg_u64(data, len) };
        assert_eq!((index as u64, value), (n, 2 * n));
        n += 1;
        if n % 10_000 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    assert_eq!(n, 1_000_000);
    let growth = peak.saturating_sub(before);
    assert!(growth < 64 << 20, "peak RSS grew by {} MiB", growth >> 20);
    let _ = &mut count;
}

/// Task: adds 1 to the AtomicUsize `userdata` points to (only seen by the caller when tasks share
/// its memory).
unsafe extern "C" fn count_in_caller(
    userdata: *mut c_void,
    _: *const u8,
    _: usize,
    _: *mut TaskOutput,
) -> i32 {
    // SAFETY: tests pass a live AtomicUsize.
    let counter = unsafe { &*(userdata as *const std::sync::atomic::AtomicUsize) };
    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    0
}

/// require="sharedmem" on the object, backend="processes" (and n_jobs) from a scope: joblib 1.6
/// switches to threads with n_jobs 1 ("the backend becomes thread-based even when parallel_config
/// asked otherwise"), also when one scope sets both; only the object's own config setting both
/// conflicts.
#[test]
fn require_sharedmem_turns_a_scoped_process_backend_into_threads() {
    let scoped = config(&[("backend", "processes"), ("n_jobs", "2")]).unwrap();
    assert_eq!(pj_config_push(scoped, std::ptr::null_mut()), pj_status::Ok);
    let created = parallel(&[("require", "sharedmem"), ("n_jobs", "2")]);
    let requiring = config(&[("require", "sharedmem")]).unwrap();
    let n_jobs_without_own = pj_effective_n_jobs(requiring);
    let same_config = parallel(&[("backend", "processes"), ("require", "sharedmem")]).err();
    assert_eq!(pj_config_pop(std::ptr::null_mut()), pj_status::Ok);
    pj_config_free(scoped);
    assert_eq!(
        n_jobs_without_own, 1,
        "the scope's n_jobs went with its backend"
    );
    let par = created.expect("a scoped backend yields to require=sharedmem");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..8 {
        par.submit(Some(count_in_caller), ud(&counter), &[])
            .unwrap();
    }
    assert_eq!(par.collect().unwrap().len(), 8);
    assert_eq!(
        counter.load(std::sync::atomic::Ordering::SeqCst),
        8,
        "the tasks ran in the caller's memory (threads)"
    );
    let err = same_config.expect("backend and require on one config conflict");
    assert_eq!(err.status, pj_status::InvalidArgument);
    assert!(
        err.message.contains("does not support shared memory"),
        "{}",
        err.message
    );
    // One pushed config asking for both: joblib switches too.
    let both = config(&[("backend", "processes"), ("require", "sharedmem")]).unwrap();
    assert_eq!(pj_config_push(both, std::ptr::null_mut()), pj_status::Ok);
    let created = parallel(&[("n_jobs", "2")]);
    assert_eq!(pj_config_pop(std::ptr::null_mut()), pj_status::Ok);
    pj_config_free(both);
    let par = created.expect("one scope with backend and require switches to threads");
    for _ in 0..8 {
        par.submit(Some(count_in_caller), ud(&counter), &[])
            .unwrap();
    }
    assert_eq!(par.collect().unwrap().len(), 8);
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 16);
    pj_config_free(requiring);
}

const CASE: &str = "PJ_TEST_DISPATCH_CASE";

/// At verbose >= 10, the switch is announced with joblib's line, on stdout (a plain print there).
#[test]
fn the_sharedmem_switch_is_announced_at_verbose_10() {
    let run = |verbose: &str| {
        let output = child_case_command(CASE, verbose).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let line = "Using ThreadingBackend as joblib backend instead of MultiprocessingBackend as the \
                latter does not provide shared memory semantics.\n";
    let loud = run("10");
    assert!(loud.contains(line), "{loud}");
    assert_eq!(loud.matches("Using ThreadingBackend").count(), 1, "{loud}");
    let quiet = run("9");
    assert!(!quiet.contains("Using ThreadingBackend"), "{quiet}");
}

/// Makes an executor whose scoped backend gives way to require=sharedmem, at the verbose level
/// given in the environment (run by the test above in a fresh copy of this binary).
#[test]
#[ignore = "run by other tests in a child process"]
fn child_case() {
    let Ok(verbose) = std::env::var(CASE) else {
        return;
    };
    let scoped = config(&[("backend", "multiprocessing"), ("n_jobs", "3")]).unwrap();
    assert_eq!(pj_config_push(scoped, std::ptr::null_mut()), pj_status::Ok);
    let par = parallel(&[("require", "sharedmem"), ("verbose", &verbose)]).unwrap();
    assert_eq!(pj_config_pop(std::ptr::null_mut()), pj_status::Ok);
    pj_config_free(scoped);
    drop(par);
}

/// Task for the batching test: raises the AtomicBool `userdata` points to.
unsafe extern "C" fn raise_flag(
    userdata: *mut c_void,
    _: *const u8,
    _: usize,
    _: *mut TaskOutput,
) -> i32 {
    // SAFETY: tests pass a live AtomicBool.
    let flag = unsafe { &*(userdata as *const std::sync::atomic::AtomicBool) };
    flag.store(true, std::sync::atomic::Ordering::SeqCst);
    0
}

/// Producer of `end` empty arguments, counting in the u64 `userdata` points to.
unsafe extern "C" fn empty_producer(
    userdata: *mut c_void,
    arg: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: tests pass a live [u64; 2] (produced, end) and valid output pointers.
    let state = unsafe { &mut *(userdata as *mut [u64; 2]) };
    if state[0] == state[1] {
        return 0;
    }
    state[0] += 1;
    // SAFETY: valid output pointers; a zero-length argument needs no bytes.
    unsafe {
        *arg = std::ptr::null();
        *len = 0;
    }
    1
}

unsafe extern "C" fn nothing(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    0
}

/// Auto batching starts afresh at each call, as joblib resets its statistics: after a call of
/// tiny tasks has grown the batches, the next call's first task is dispatched (and runs) as soon as
/// it is submitted, in a batch of one, instead of waiting for a batch of hundreds to fill.
#[test]
fn auto_batching_starts_afresh_at_each_call() {
    let par = parallel(&[("backend", "threads"), ("n_jobs", "2")]).unwrap();
    let mut state = [0u64, 200_000];
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_map(
        par.0,
        Some(nothing),
        std::ptr::null_mut(),
        Some(empty_producer),
        (&raw mut state).cast(),
        &mut res,
        &mut err,
    );
    check(status, err).unwrap();
    assert_eq!(pj_results_len(res), 200_000);
    pj_results_free(res);
    let ran = std::sync::atomic::AtomicBool::new(false);
    par.submit(Some(raise_flag), ud(&ran), &[]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ran.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ran_before_collect = ran.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(par.collect().unwrap().len(), 1);
    assert!(
        ran_before_collect,
        "the second call's first task waited for a batch sized by the first call"
    );
}
