//! Calls through the C ABI: ordering, fail-fast, reuse, producers, one call at a time.

mod common;

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

fn counter(fail_at: u64) -> Box<Counter> {
    Box::new(Counter {
        runs: Default::default(),
        fail_at,
    })
}

fn ud(counter: &Counter) -> *mut c_void {
    counter as *const Counter as *mut c_void
}

#[test]
fn ten_thousand_submitted_tasks_come_back_in_order_on_threads() {
    let par = parallel(&[("n_jobs", "2"), ("backend", "threads")]).unwrap();
    for i in 0..10_000u64 {
        par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
            .unwrap();
    }
    let out = as_u64s(&par.collect().unwrap());
    assert_eq!(out, (0..10_000u64).map(|i| 2 * i).collect::<Vec<_>>());
}

#[test]
fn every_batch_size_and_backend_keeps_order() {
    for backend in ["threads", "sequential"] {
        for batch in ["auto", "1", "3", "1000"] {
            for n_jobs in ["1", "2", "3", "-1"] {
                let par = parallel(&[
                    ("n_jobs", n_jobs),
                    ("backend", backend),
                    ("batch_size", batch),
                ])
                .unwrap();
                for round in 0..2 {
                    let n: u64 = 257 + round;
                    for i in 0..n {
                        par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                            .unwrap();
                    }
                    let out = as_u64s(&par.collect().unwrap());
                    assert_eq!(
                        out,
                        (0..n).map(|i| 2 * i).collect::<Vec<_>>(),
                        "{backend} {batch} {n_jobs}"
                    );
                }
            }
        }
    }
}

#[test]
fn failure_at_537_names_the_task_and_stops_dispatch() {
    for backend in ["threads", "sequential"] {
        let par = parallel(&[("n_jobs", "2"), ("backend", backend)]).unwrap();
        let counter = counter(537);
        let mut first_refusal = None;
        for i in 0..10_000u64 {
            if let Err(e) = par.submit(Some(double_task), ud(&counter), &i.to_ne_bytes()) {
                assert_eq!(e.status, pj_status::TaskFailed);
                first_refusal.get_or_insert(i);
            }
        }
        let err = par.collect().unwrap_err();
        assert_eq!(err.status, pj_status::TaskFailed, "{backend}");
        assert_eq!(err.task_index, 537, "{backend}");
        assert_eq!(err.code, 7);
        assert!(
            err.message.contains("cannot handle this one"),
            "{}",
            err.message
        );
        assert!(err.report.contains("task index: 537"), "{}", err.report);
        let ran = counter.runs.load(Ordering::Relaxed);
        assert!(
            ran < 5_000,
            "{backend}: {ran} tasks ran after a failure at 537"
        );
        assert!(
            first_refusal.is_some(),
            "submit reports the failure so producers can stop"
        );

        // The object is reusable after an error.
        for i in 0..100u64 {
            par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
                .unwrap();
        }
        assert_eq!(as_u64s(&par.collect().unwrap()).len(), 100);
    }
}

#[test]
fn sequentially_the_first_failure_is_the_first_failing_task() {
    // Every task from 50 on fails; on one worker the first failure seen is task 50, and a batch
    // stops at its first failing task (none above it is run or named).
    unsafe extern "C" fn fail_from_50(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: 8-byte arguments.
        let x = unsafe { arg_u64(arg, len) };
        if x >= 50 {
            return 1;
        }
        pj_out_set(out, arg, len);
        0
    }
    let par = parallel(&[("n_jobs", "1")]).unwrap();
    for i in 0..200u64 {
        let _ = par.submit(Some(fail_from_50), std::ptr::null_mut(), &i.to_ne_bytes());
    }
    let err = par.collect().unwrap_err();
    assert_eq!(err.task_index, 50);
    assert_eq!(err.message, "task 50 failed with code 1");
}

#[test]
fn collect_without_a_call_is_empty_and_outputs_can_be_empty_or_large() {
    let par = parallel(&[("n_jobs", "2")]).unwrap();
    assert!(par.collect().unwrap().is_empty());

    unsafe extern "C" fn sized(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: 8-byte arguments.
        let n = unsafe { arg_u64(arg, len) } as usize;
        let buf = pj_out_alloc(out, n);
        // SAFETY: pj_out_alloc returned n writable bytes.
        unsafe { std::ptr::write_bytes(buf, (n % 251) as u8, n) };
        0
    }
    let sizes = [0usize, 1, 7, 0, 1 << 20, 3];
    for n in sizes {
        par.submit(Some(sized), std::ptr::null_mut(), &(n as u64).to_ne_bytes())
            .unwrap();
    }
    let out = par.collect().unwrap();
    assert_eq!(out.len(), sizes.len());
    for (bytes, n) in out.iter().zip(sizes) {
        assert_eq!(bytes.len(), n);
        assert!(bytes.iter().all(|&b| b == (n % 251) as u8));
    }
}

/// Task: writes its output in place with a generous bound, then keeps only what it produced:
/// argument 0 truncates the window, 1 passes part of the window back to pj_out_set (overlapping
/// the output's start), 2 asks for
/// more than the window (refused, output unchanged), then an empty output.
unsafe extern "C" fn written_in_place(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let how = unsafe { arg_u64(arg, len) };
    let bound = 1000;
    let buf = pj_out_alloc(out, bound);
    // SAFETY: pj_out_alloc returned `bound` writable bytes.
    let window = unsafe { std::slice::from_raw_parts_mut(buf, bound) };
    window[..6].copy_from_slice(b"header");
    window[6..11].copy_from_slice(b"hello");
    let ok = match how {
        0 => pj_out_truncate(out, 11) == pj_status::Ok,
        // SAFETY: 8 bytes of the window (overlapping where they go), which pj_out_set may be
        // handed back.
        1 => pj_out_set(out, unsafe { buf.add(3) }, 8) == pj_status::Ok,
        _ => {
            let refused = pj_out_truncate(out, bound + 1) == pj_status::InvalidArgument;
            let kept = pj_out_truncate(out, bound) == pj_status::Ok;
            let emptied = pj_out_truncate(out, 0) == pj_status::Ok;
            refused && kept && emptied
        }
    };
    if ok { 0 } else { 1 }
}

#[test]
fn an_output_written_in_place_can_be_shortened_or_passed_back() {
    for backend in ["threads", "processes", "sequential"] {
        let par = parallel(&[("n_jobs", "2"), ("backend", backend), ("batch_size", "2")]).unwrap();
        for how in [0u64, 1, 2, 0, 1] {
            par.submit(
                Some(written_in_place),
                std::ptr::null_mut(),
                &how.to_ne_bytes(),
            )
            .unwrap();
        }
        let out = par.collect().unwrap();
        let want: [&[u8]; 5] = [
            b"headerhello",
            b"derhello",
            b"",
            b"headerhello",
            b"derhello",
        ];
        assert_eq!(out, want.map(<[u8]>::to_vec), "{backend}");
    }
}

struct Range {
    next: u64,
    end: u64,
    buf: [u8; 8],
    fail_at: Option<u64>,
}

unsafe extern "C" fn range_producer(
    userdata: *mut c_void,
    arg_out: *mut *const u8,
    len_out: *mut usize,
) -> i32 {
    // SAFETY: tests pass a live Range and valid output pointers.
    let (range, arg_out, len_out) =
        unsafe { (&mut *(userdata as *mut Range), &mut *arg_out, &mut *len_out) };
    if Some(range.next) == range.fail_at {
        return -5;
    }
    if range.next == range.end {
        return 0;
    }
    range.buf = range.next.to_ne_bytes();
    range.next += 1;
    *arg_out = range.buf.as_ptr();
    *len_out = 8;
    1
}

fn map(
    par: &Par,
    range: &mut Range,
    f: pj_task_fn,
    userdata: *mut c_void,
) -> Result<Vec<Vec<u8>>, CError> {
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_map(
        par.0,
        f,
        userdata,
        Some(range_producer),
        range as *mut Range as *mut c_void,
        &mut res,
        &mut err,
    );
    check(status, err)?;
    Ok(results_to_vec(res))
}

#[test]
fn map_pulls_from_a_reused_producer_buffer_in_order() {
    for n_jobs in ["1", "2", "4"] {
        let par = parallel(&[("n_jobs", n_jobs)]).unwrap();
        let mut range = Range {
            next: 0,
            end: 5_000,
            buf: [0; 8],
            fail_at: None,
        };
        let out = as_u64s(&map(&par, &mut range, Some(double_task), std::ptr::null_mut()).unwrap());
        assert_eq!(out, (0..5_000u64).map(|i| 2 * i).collect::<Vec<_>>());
    }
}

#[test]
fn map_reports_producer_and_task_failures() {
    let par = parallel(&[("n_jobs", "2")]).unwrap();
    let mut range = Range {
        next: 0,
        end: 100,
        buf: [0; 8],
        fail_at: Some(40),
    };
    let err = map(&par, &mut range, Some(double_task), std::ptr::null_mut()).unwrap_err();
    assert_eq!(err.status, pj_status::TaskFailed);
    assert!(
        err.message.contains("-5") && err.message.contains("40 items"),
        "{}",
        err.message
    );
    assert_eq!(err.task_index, -1);

    let counter = counter(30);
    let mut range = Range {
        next: 0,
        end: 100_000,
        buf: [0; 8],
        fail_at: None,
    };
    let err = map(&par, &mut range, Some(double_task), ud(&counter)).unwrap_err();
    assert_eq!(err.task_index, 30);
    assert!(
        range.next < 100_000,
        "the producer is not drained after a failure"
    );

    // Reusable afterwards.
    let mut range = Range {
        next: 0,
        end: 10,
        buf: [0; 8],
        fail_at: None,
    };
    assert_eq!(
        map(&par, &mut range, Some(double_task), std::ptr::null_mut())
            .unwrap()
            .len(),
        10
    );
}

unsafe extern "C" fn sleepy(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    std::thread::sleep(Duration::from_millis(2));
    pj_out_set(out, arg, len);
    0
}

#[test]
fn two_threads_on_one_object_one_gets_busy() {
    for _ in 0..20 {
        let par = Arc::new(parallel(&[("n_jobs", "2")]).unwrap());
        let started = Arc::new(Barrier::new(2));
        let tried = Arc::new(Barrier::new(2));
        let worker = |par: Arc<Par>, started: Arc<Barrier>, tried: Arc<Barrier>| {
            move || {
                started.wait();
                let first = par.submit(Some(sleepy), std::ptr::null_mut(), &0u64.to_ne_bytes());
                tried.wait();
                match first {
                    Ok(()) => {
                        for i in 1..50u64 {
                            par.submit(Some(sleepy), std::ptr::null_mut(), &i.to_ne_bytes())
                                .unwrap();
                        }
                        tried.wait();
                        let out = as_u64s(&par.collect().unwrap());
                        assert_eq!(out, (0..50u64).collect::<Vec<_>>());
                        true
                    }
                    Err(e) => {
                        assert_eq!(e.status, pj_status::Busy);
                        // While the other thread's call is in flight, everything else is BUSY too.
                        assert_eq!(par.collect().unwrap_err().status, pj_status::Busy);
                        let mut range = Range {
                            next: 0,
                            end: 3,
                            buf: [0; 8],
                            fail_at: None,
                        };
                        let busy =
                            map(&par, &mut range, Some(sleepy), std::ptr::null_mut()).unwrap_err();
                        assert_eq!(busy.status, pj_status::Busy);
                        tried.wait();
                        false
                    }
                }
            }
        };
        let a = std::thread::spawn(worker(par.clone(), started.clone(), tried.clone()));
        let b = std::thread::spawn(worker(par.clone(), started, tried));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a ^ b, "exactly one thread owns the call");
    }
}

#[test]
fn a_task_using_its_own_parallel_gets_busy() {
    unsafe extern "C" fn reenter(
        userdata: *mut c_void,
        _: *const u8,
        _: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_submit(
            userdata as *mut pj_parallel_t,
            Some(reenter),
            userdata,
            std::ptr::null(),
            0,
            &mut err,
        );
        pj_error_free(err);
        let code = status as u32 as u8;
        pj_out_set(out, &code, 1);
        0
    }
    for n_jobs in ["1", "2"] {
        let par = parallel(&[("n_jobs", n_jobs)]).unwrap();
        par.submit(Some(reenter), par.0 as *mut c_void, &[])
            .unwrap();
        let out = par.collect().unwrap();
        assert_eq!(
            out,
            vec![vec![pj_status::Busy as u32 as u8]],
            "n_jobs={n_jobs}"
        );
    }
}

#[test]
fn freeing_mid_call_waits_for_running_tasks_and_skips_queued_ones() {
    let counter = counter(u64::MAX);
    unsafe extern "C" fn slow_count(
        userdata: *mut c_void,
        _: *const u8,
        _: usize,
        _: *mut TaskOutput,
    ) -> i32 {
        std::thread::sleep(Duration::from_millis(5));
        // SAFETY: userdata is a live Counter for the whole test (free waits for running tasks).
        unsafe { &*(userdata as *const Counter) }
            .runs
            .fetch_add(1, Ordering::SeqCst);
        0
    }
    let par = parallel(&[("backend", "threads"), ("n_jobs", "2"), ("batch_size", "1")]).unwrap();
    for _ in 0..1_000 {
        par.submit(Some(slow_count), ud(&counter), &[]).unwrap();
    }
    let start = Instant::now();
    drop(par);
    let after_free = counter.runs.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        counter.runs.load(Ordering::SeqCst),
        after_free,
        "no task runs after free returns"
    );
    assert!(after_free < 1_000, "queued tasks were skipped");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn invalid_options_quote_the_value() {
    let cases = [
        ("pre_dispatch", "import os"),
        ("max_nbytes", "12Q"),
        ("n_jobs", "0"),
        ("mmap_mode", "x"),
        ("backend", "nope"),
        ("batch_size", "0"),
    ];
    for (key, value) in cases {
        let err = config(&[(key, value)])
            .err()
            .unwrap_or_else(|| panic!("{key}={value} accepted"));
        assert_eq!(err.status, pj_status::InvalidArgument);
        assert!(err.message.contains(value), "{key}: {}", err.message);
    }
    let err = config(&[("no_such_key", "1")]).err().unwrap();
    assert_eq!(err.status, pj_status::InvalidArgument);
    assert!(err.message.contains("no_such_key"), "{}", err.message);
}

#[test]
fn typed_setters_and_effective_n_jobs() {
    let mut cfg = std::ptr::null_mut();
    assert_eq!(pj_config_new(&mut cfg), pj_status::Ok);
    assert_eq!(pj_effective_n_jobs(cfg), 1, "unset n_jobs means 1");
    let mut err = std::ptr::null_mut();
    assert_eq!(
        pj_config_set_n_jobs(cfg, 0, &mut err),
        pj_status::InvalidArgument
    );
    let e = take_error(pj_status::InvalidArgument, err);
    assert!(e.message.contains('0'));
    assert_eq!(
        pj_config_set_n_jobs(cfg, -1, std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(pj_effective_n_jobs(cfg), pj_cpu_count());
    assert_eq!(
        pj_config_set_n_jobs(cfg, 3, std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(pj_effective_n_jobs(cfg), 3);
    assert_eq!(
        pj_config_set_backend(cfg, c"sequential".as_ptr(), std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(pj_effective_n_jobs(cfg), 1);
    assert_eq!(
        pj_config_set_batch_size(cfg, 0, std::ptr::null_mut()),
        pj_status::InvalidArgument
    );
    assert_eq!(
        pj_config_set_batch_size(cfg, 16, std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_config_set_verbose(cfg, -1, std::ptr::null_mut()),
        pj_status::InvalidArgument
    );
    assert_eq!(
        pj_config_set_verbose(cfg, 10, std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_config_set_timeout(cfg, 0.0, std::ptr::null_mut()),
        pj_status::InvalidArgument
    );
    assert_eq!(
        pj_config_set_timeout(cfg, f64::NAN, std::ptr::null_mut()),
        pj_status::InvalidArgument
    );
    assert_eq!(
        pj_config_set_timeout(cfg, f64::INFINITY, std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_config_set_timeout(cfg, 2.5, std::ptr::null_mut()),
        pj_status::Ok
    );
    pj_config_free(cfg);
    assert!(pj_cpu_count() >= 1);
}

#[test]
fn status_strings_are_stable() {
    assert_eq!(pj_status::Ok as u32, 0);
    assert_eq!(pj_status::Panic as u32, 11);
    for raw in 0..12u32 {
        // SAFETY: pj_status_str returns static NUL-terminated strings.
        let text = unsafe { std::ffi::CStr::from_ptr(pj_status_str(raw)) }
            .to_str()
            .unwrap();
        assert!(text.starts_with("PJ_STATUS_"), "{text}");
    }
    // SAFETY: as above.
    let unknown = unsafe { std::ffi::CStr::from_ptr(pj_status_str(999)) }
        .to_str()
        .unwrap();
    assert_eq!(unknown, "unknown pj_status");
}

#[test]
fn backend_mpi_without_pj_mpi_main_is_unsupported_and_says_why() {
    let Err(error) = parallel(&[("backend", "mpi")]) else {
        panic!("no MPI is attached in a test");
    };
    assert_eq!(error.status, pj_status::Unsupported);
    assert!(error.message.contains("pj_mpi_main"), "{}", error.message);
    // The ops table is checked before anything is attached.
    let mut err = std::ptr::null_mut();
    let status = pj::ffi::pj_mpi_attach(std::ptr::null(), &mut err);
    assert_eq!(take_error(status, err).status, pj_status::NullArgument);
}

#[test]
fn submit_and_collect_report_the_same_failure() {
    // Task 900 fails at once; task 100 fails a second later, after 900's failure stopped the submit
    // loop. The call has one failure, the first one seen: submit and collect both name task 900.
    unsafe extern "C" fn late_low_early_high(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: 8-byte arguments.
        let x = unsafe { arg_u64(arg, len) };
        match x {
            100 => {
                std::thread::sleep(Duration::from_secs(1));
                2
            }
            900 => 1,
            _ => {
                pj_out_set(out, arg, len);
                0
            }
        }
    }
    let par = parallel(&[("n_jobs", "2"), ("backend", "threads"), ("batch_size", "1")]).unwrap();
    let mut refused = None;
    for i in 0..1000u64 {
        if let Err(e) = par.submit(
            Some(late_low_early_high),
            std::ptr::null_mut(),
            &i.to_ne_bytes(),
        ) {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("a submit is refused once a task failed");
    let collected = par.collect().unwrap_err();
    assert_eq!(
        collected.task_index, refused.task_index,
        "{collected:?} vs {refused:?}"
    );
    assert_eq!(collected.message, refused.message);
    assert_eq!(collected.status, refused.status);
}

#[test]
fn the_message_is_one_line_and_the_report_keeps_the_callbacks_text() {
    unsafe extern "C" fn multi_line(
        _: *mut c_void,
        arg: *const u8,
        len: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: 8-byte arguments.
        match unsafe { arg_u64(arg, len) } {
            3 => {
                pj_out_error(out, c"first line\nsecond\tline\r\x1b[1m".as_ptr());
                7
            }
            5 => {
                pj_out_error(out, c"".as_ptr());
                7
            }
            _ => 0,
        }
    }
    let par = parallel(&[("n_jobs", "1"), ("on_error", "collect")]).unwrap();
    for i in 0..6u64 {
        par.submit(Some(multi_line), std::ptr::null_mut(), &i.to_ne_bytes())
            .unwrap();
    }
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
    let text = |s: *const std::ffi::c_char| {
        (!s.is_null()).then(|| {
            // SAFETY: a NUL-terminated string owned by the results, alive until pj_results_free.
            unsafe { std::ffi::CStr::from_ptr(s) }
                .to_string_lossy()
                .into_owned()
        })
    };
    let error_of = |index: usize| {
        let e = pj_results_error(res, index);
        assert!(!e.is_null(), "task {index} failed");
        CError {
            status: pj_error_status(e),
            message: text(pj_error_message(e)).unwrap_or_default(),
            report: text(pj_error_report(e)).unwrap_or_default(),
            task_index: pj_error_task_index(e),
            code: pj_error_callback_code(e),
            callback_message: text(pj_error_callback_message(e)),
        }
    };
    let three = error_of(3);
    assert!(
        !three.message.chars().any(char::is_control),
        "{:?}",
        three.message
    );
    assert_eq!(
        three.message,
        "task 3 failed with code 7: first line\\nsecond\\tline\\r\\u{1b}[1m"
    );
    assert_eq!(
        three.callback_message.as_deref(),
        Some("first line\nsecond\tline\r\x1b[1m")
    );
    assert!(three.report.contains("first line\n"), "{}", three.report);
    let five = error_of(5);
    assert_eq!(five.message, "task 5 failed with code 7");
    pj_results_free(res);
}

#[test]
fn collect_without_results_out_keeps_the_call_open() {
    // pj.h: NULL_ARGUMENT returns before touching the call, which a second collect then ends.
    let par = parallel(&[("n_jobs", "2"), ("backend", "threads")]).unwrap();
    for i in 0..3u64 {
        par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
            .unwrap();
    }
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_collect(par.0, std::ptr::null_mut(), &mut err);
    assert_eq!(take_error(status, err).status, pj_status::NullArgument);
    assert_eq!(as_u64s(&par.collect().unwrap()), vec![0, 2, 4]);
}
