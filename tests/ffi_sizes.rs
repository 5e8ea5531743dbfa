//! Huge sizes through the C ABI: no value a caller passes may abort, panic or hang the host.
//! Limits are checked where a value enters; memory sized by a caller is allocated fallibly, and a
//! failed allocation is an error status.
//!
//! Before these checks, some of the cases aborted the process (an infallible allocation failing),
//! so they run in a child copy of this test binary (the `child_case` technique of
//! tests/processes.rs): a regression shows as a dead child, never as a dead test runner.

mod common;

use std::ffi::{CString, c_void};
use std::sync::Mutex;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const CASE: &str = "PJ_SIZES_CASE";

/// More than any machine that runs the tests can allocate (64 TiB), yet a valid size.
const HUGE: usize = 1 << 46;

fn set(cfg: *mut pj_config_t, key: &str, value: &str) -> pj_status {
    let (k, v) = (CString::new(key).unwrap(), CString::new(value).unwrap());
    let mut err = std::ptr::null_mut();
    let status = pj_config_set(cfg, k.as_ptr(), v.as_ptr(), &mut err);
    if status != pj_status::Ok {
        take_error(status, err);
    }
    status
}

#[test]
fn both_batch_size_setters_share_one_documented_limit() {
    let cfg = config(&[]).unwrap();
    // pj.h's documented maximum.
    let max = 1usize << 20;
    for (text, size, ok) in [
        ("1", 1usize, true),
        (&*max.to_string(), max, true),
        (&*(max + 1).to_string(), max + 1, false),
        ("4000000000", 4_000_000_000, false),
        (&*usize::MAX.to_string(), usize::MAX, false),
        ("0", 0, false),
    ] {
        let expected = if ok {
            pj_status::Ok
        } else {
            pj_status::InvalidArgument
        };
        assert_eq!(set(cfg, "batch_size", text), expected, "string {text}");
        let mut err = std::ptr::null_mut();
        let status = pj_config_set_batch_size(cfg, size, &mut err);
        if status != pj_status::Ok {
            let e = take_error(status, err);
            assert!(e.message.contains(&max.to_string()), "{}", e.message);
        }
        assert_eq!(status, expected, "typed {size}");
    }
    pj_config_free(cfg);
    // The largest batch works (preallocation is not sized by the setting).
    let par = parallel(&[
        ("backend", "threads"),
        ("n_jobs", "2"),
        ("batch_size", &max.to_string()),
    ])
    .unwrap();
    for i in 0..10u64 {
        par.submit(Some(double_task), std::ptr::null_mut(), &i.to_ne_bytes())
            .unwrap();
    }
    assert_eq!(
        as_u64s(&par.collect().unwrap()),
        (0..10).map(|i| 2 * i).collect::<Vec<_>>()
    );
}

/// Task: asks pj_out_alloc for the u64 its argument holds; reports whether it got NULL in
/// `userdata` (a Mutex<Vec<bool>>, threads only), writes 1 byte if it did not, returns 0 either
/// way (a careless callback).
unsafe extern "C" fn alloc_task(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments.
    let want = unsafe { arg_u64(arg, len) } as usize;
    let got = pj_out_alloc(out, want);
    if !userdata.is_null() {
        // SAFETY: tests pass a live Mutex<Vec<bool>>.
        let seen = unsafe { &*(userdata as *const Mutex<Vec<bool>>) };
        seen.lock().unwrap().push(got.is_null());
    }
    if !got.is_null() && want > 0 {
        // SAFETY: pj_out_alloc returned `want` writable bytes.
        unsafe { got.write(7) };
    }
    0
}

/// pj_out_alloc of `want` bytes on `options`: the call's error, and what the task saw.
fn out_alloc(options: &[(&str, &str)], want: usize) -> (Result<Vec<Vec<u8>>, CError>, Vec<bool>) {
    let par = parallel(options).unwrap();
    let seen = Mutex::new(Vec::new());
    let shared = options.iter().all(|(_, v)| *v != "processes");
    let userdata = if shared {
        (&seen as *const Mutex<Vec<bool>>).cast_mut().cast()
    } else {
        std::ptr::null_mut()
    };
    par.submit(Some(alloc_task), userdata, &(want as u64).to_ne_bytes())
        .unwrap();
    // With n_jobs 1 the first task already ran, so this submit may report its failure.
    let _ = par.submit(Some(alloc_task), userdata, &1u64.to_ne_bytes());
    let results = par.collect();
    (results, seen.into_inner().unwrap())
}

const BACKENDS: [&[(&str, &str)]; 3] = [
    &[("n_jobs", "1")],
    &[("backend", "threads"), ("n_jobs", "2")],
    &[("backend", "processes"), ("n_jobs", "2")],
];

/// Runs the host-side cases of this file in a child process, printing what happened.
#[test]
#[ignore = "run by other tests in a child process"]
fn child_case() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    println!();
    match case.as_str() {
        "out_alloc" => {
            for (i, options) in BACKENDS.iter().enumerate() {
                for want in [usize::MAX, HUGE] {
                    let (results, seen) = out_alloc(options, want);
                    let err = results.unwrap_err();
                    println!("CASE {i} {want:x}");
                    println!("STATUS={:?}", err.status);
                    println!("INDEX={}", err.task_index);
                    println!("MESSAGE={}", err.message);
                    println!("SEEN_NULL={seen:?}");
                }
            }
        }
        "submit" => {
            // A readable region larger than the machine can copy: a read-only private anonymous
            // mapping costs no memory until it is read.
            // SAFETY: a fresh anonymous mapping, unmapped below.
            let region = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    HUGE,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(region, libc::MAP_FAILED);
            for options in BACKENDS {
                let par = parallel(options).unwrap();
                let mut err = std::ptr::null_mut();
                let status = pj_parallel_submit(
                    par.0,
                    Some(double_task),
                    std::ptr::null_mut(),
                    region.cast(),
                    HUGE,
                    &mut err,
                );
                let submitted = check(status, err);
                // collect ends the call either way (and reports the failure again).
                let collected = par.collect();
                let err = submitted.err().or(collected.err()).unwrap();
                println!("STATUS={:?} MESSAGE={}", err.status, err.message);
                // The object works afterwards.
                par.submit(Some(double_task), std::ptr::null_mut(), &4u64.to_ne_bytes())
                    .unwrap();
                assert_eq!(as_u64s(&par.collect().unwrap()), [8]);
            }
            // SAFETY: the mapping made above, no longer used.
            unsafe { libc::munmap(region, HUGE) };
        }
        "result_frame" => {
            // Results above max_nbytes would come back through files: "none" keeps them in the
            // socket, so the caller must allocate the frame.
            let par = parallel(&[
                ("backend", "processes"),
                ("n_jobs", "2"),
                ("max_nbytes", "none"),
            ])
            .unwrap();
            // Warm up: threads, allocator arenas and a worker exist before the limit is set.
            par.submit(Some(double_task), std::ptr::null_mut(), &1u64.to_ne_bytes())
                .unwrap();
            assert_eq!(as_u64s(&par.collect().unwrap()), [2]);
            // The caller may grow by 192 MiB; the worker lifts the limit for itself.
            let saved = limit_address_space(192 << 20);
            par.submit(Some(big_result), std::ptr::null_mut(), &[])
                .unwrap();
            let outcome = par.collect();
            restore_address_space(saved);
            let err = outcome.unwrap_err();
            println!("STATUS={:?} MESSAGE={}", err.status, err.message);
            par.submit(Some(double_task), std::ptr::null_mut(), &4u64.to_ne_bytes())
                .unwrap();
            assert_eq!(as_u64s(&par.collect().unwrap()), [8]);
        }
        "arg_frame" => {
            let par = parallel(&[
                ("backend", "processes"),
                ("n_jobs", "2"),
                ("max_nbytes", "none"),
            ])
            .unwrap();
            par.submit(Some(double_task), std::ptr::null_mut(), &1u64.to_ne_bytes())
                .unwrap();
            assert_eq!(as_u64s(&par.collect().unwrap()), [2]);
            let arg = vec![1u8; 256 << 20];
            // Room for one more copy of the argument (the batch's), not for two (the frame's).
            let saved = limit_address_space((256 + 96) << 20);
            let submitted = par.submit(Some(double_task), std::ptr::null_mut(), &arg);
            let collected = par.collect();
            restore_address_space(saved);
            let err = submitted.err().or(collected.err()).unwrap();
            println!("STATUS={:?} MESSAGE={}", err.status, err.message);
            par.submit(Some(double_task), std::ptr::null_mut(), &4u64.to_ne_bytes())
                .unwrap();
            assert_eq!(as_u64s(&par.collect().unwrap()), [8]);
        }
        _ => panic!("unknown case {case}"),
    }
}

/// Lets this process's address space grow by `headroom` bytes from now on; returns the previous
/// soft limit.
fn limit_address_space(headroom: u64) -> libc::rlim_t {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one valid rlimit; lowering a soft limit is
    // always allowed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_AS, &mut limit);
        let saved = limit.rlim_cur;
        limit.rlim_cur = vm_kib * 1024 + headroom;
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
        saved
    }
}

/// Puts back the soft limit `limit_address_space` returned.
fn restore_address_space(saved: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above; back up to the saved soft limit, within the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_AS, &mut limit);
        limit.rlim_cur = saved;
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
    }
}

/// An argument the caller can copy once (into its batch) but not twice (into the frame for the
/// worker) fails the call with PJ_STATUS_IO instead of aborting the caller.
#[test]
fn an_argument_whose_frame_cannot_be_allocated_fails_the_call() {
    let stdout = run_child("arg_frame");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("STATUS="))
        .unwrap_or_default();
    assert!(line.starts_with("STATUS=Io MESSAGE=task 0: "), "{stdout}");
    assert!(line.contains("bytes"), "{line}");
}

/// Task (in a worker process): lifts its own address-space limit, then returns 512 MiB.
unsafe extern "C" fn big_result(
    _: *mut c_void,
    _: *const u8,
    _: usize,
    out: *mut TaskOutput,
) -> i32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one valid rlimit; raising the soft limit up to
    // the hard one is always allowed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_AS, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_AS, &limit);
    }
    let len = 512 << 20;
    let data = pj_out_alloc(out, len);
    if data.is_null() {
        return 1;
    }
    // SAFETY: pj_out_alloc returned `len` writable bytes.
    unsafe { data.write_bytes(3, len) };
    0
}

/// A result the worker could allocate but the caller cannot receive fails the call with
/// PJ_STATUS_IO instead of aborting the caller.
#[test]
fn a_result_the_caller_cannot_receive_fails_the_call() {
    let stdout = run_child("result_frame");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("STATUS="))
        .unwrap_or_default();
    assert!(line.starts_with("STATUS=Io MESSAGE=task 0: "), "{stdout}");
    assert!(line.contains("bytes"), "{line}");
}

fn run_child(case: &str) -> String {
    let output = child_case_command(CASE, case).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the child died: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// pj_out_alloc of more than can be allocated returns NULL (no abort, no panic) and the task fails
/// with PJ_STATUS_IO naming the size, even though its callback returned 0; the object's other task
/// is unaffected. On every backend.
#[test]
fn pj_out_alloc_beyond_memory_returns_null_and_fails_the_task() {
    let stdout = run_child("out_alloc");
    let statuses: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("STATUS="))
        .collect();
    assert_eq!(statuses.len(), 6, "{stdout}");
    assert!(statuses.iter().all(|s| *s == "STATUS=Io"), "{stdout}");
    let messages: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("MESSAGE="))
        .collect();
    for (message, want) in messages.iter().zip([usize::MAX, HUGE].iter().cycle()) {
        assert!(
            message.contains(&format!("{want} bytes")) && message.contains("pj_out_alloc"),
            "{message}"
        );
    }
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("INDEX="))
            .all(|l| l == "INDEX=0"),
        "{stdout}"
    );
    // The callbacks that share the caller's memory saw NULL for the huge size (on two threads
    // the small task may have reported first: its `false` can come before).
    let seen: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("SEEN_NULL="))
        .collect();
    for line in &seen[..4] {
        assert!(
            line.starts_with("SEEN_NULL=[") && line.contains("true"),
            "{line}"
        );
    }
}

/// on_error=collect: the task whose output could not be allocated has its own PJ_STATUS_IO; the
/// others keep their results.
#[test]
fn a_failed_output_allocation_is_that_tasks_own_error_with_collect() {
    for options in BACKENDS {
        let mut options = options.to_vec();
        options.push(("on_error", "collect"));
        let par = parallel(&options).unwrap();
        for want in [1u64, usize::MAX as u64, 3] {
            par.submit(Some(alloc_task), std::ptr::null_mut(), &want.to_ne_bytes())
                .unwrap();
        }
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
        assert_eq!(pj_results_status(res, 0), pj_status::Ok, "{options:?}");
        assert_eq!(pj_results_status(res, 1), pj_status::Io, "{options:?}");
        assert_eq!(pj_results_status(res, 2), pj_status::Ok, "{options:?}");
        let results = results_to_vec(res);
        assert_eq!(results[0], [7]);
        assert!(results[1].is_empty());
        assert_eq!(results[2], [7, 0, 0]);
    }
}

/// Task: pj_out_set with a length no buffer can have.
unsafe extern "C" fn set_huge(_: *mut c_void, _: *const u8, _: usize, out: *mut TaskOutput) -> i32 {
    let byte = 1u8;
    let status = pj_out_set(out, &byte, usize::MAX);
    i32::from(status != pj_status::InvalidArgument) * 100 + status as i32
}

#[test]
fn lengths_beyond_any_buffer_are_invalid_arguments() {
    // pj_out_set: refused before anything is read or allocated; the callback sees the status.
    let par = parallel(&[("backend", "threads"), ("n_jobs", "2")]).unwrap();
    par.submit(Some(set_huge), std::ptr::null_mut(), &[])
        .unwrap();
    let err = par.collect().unwrap_err();
    assert_eq!(
        err.code,
        pj_status::InvalidArgument as i32,
        "{}",
        err.message
    );
    // pj_parallel_submit: likewise, and the object still works.
    let byte = 1u8;
    let mut e = std::ptr::null_mut();
    let status = pj_parallel_submit(
        par.0,
        Some(double_task),
        std::ptr::null_mut(),
        &byte,
        usize::MAX,
        &mut e,
    );
    let error = take_error(status, e);
    assert_eq!(
        error.status,
        pj_status::InvalidArgument,
        "{}",
        error.message
    );
    assert!(error.message.contains("arg_len"), "{}", error.message);
    let _ = par.collect();
    par.submit(Some(double_task), std::ptr::null_mut(), &5u64.to_ne_bytes())
        .unwrap();
    assert_eq!(as_u64s(&par.collect().unwrap()), [10]);
}

/// An argument larger than memory fails the call with PJ_STATUS_IO instead of aborting the host.
#[test]
fn an_argument_that_cannot_be_copied_fails_the_call() {
    let stdout = run_child("submit");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("STATUS="))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in lines {
        assert!(line.starts_with("STATUS=Io MESSAGE="), "{line}");
        assert!(line.contains(&HUGE.to_string()), "{line}");
    }
}

/// Range callback: counts ranges and checks they tile 0..n in order.
unsafe extern "C" fn tile(
    userdata: *mut c_void,
    start: usize,
    end: usize,
    _: *mut TaskOutput,
) -> i32 {
    // SAFETY: tests pass a live Mutex<Vec<(usize, usize)>>.
    let seen = unsafe { &*(userdata as *const Mutex<Vec<(usize, usize)>>) };
    seen.lock().unwrap().push((start, end));
    0
}

/// pj_parallel_for with n = SIZE_MAX: the last range ends at SIZE_MAX (no overflow, no endless
/// loop), and the ranges tile 0..n.
#[test]
fn parallel_for_covers_the_whole_size_range() {
    for options in [
        &[("backend", "threads"), ("n_jobs", "2")][..],
        &[("n_jobs", "1")][..],
    ] {
        let par = parallel(options).unwrap();
        let seen = Mutex::new(Vec::<(usize, usize)>::new());
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_for(
            par.0,
            usize::MAX,
            Some(tile),
            (&seen as *const Mutex<Vec<(usize, usize)>>)
                .cast_mut()
                .cast(),
            &mut err,
        );
        check(status, err).unwrap();
        let mut ranges = seen.into_inner().unwrap();
        ranges.sort_unstable();
        assert!(!ranges.is_empty() && ranges.len() <= 64, "{}", ranges.len());
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges.last().unwrap().1, usize::MAX);
        assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "{ranges:?}");
    }
}

/// Shared buffers larger than any folder can hold fail with an error status (no panic, no abort).
#[test]
fn a_shared_buffer_beyond_any_folder_is_an_error() {
    for nbytes in [usize::MAX, usize::MAX / 2 + 1, HUGE] {
        let mut shared = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let status = pj_shared_new(std::ptr::null(), nbytes, &mut shared, &mut err);
        let error = take_error(status, err);
        assert!(
            matches!(error.status, pj_status::Io | pj_status::InvalidArgument),
            "{nbytes}: {error:?}"
        );
        assert!(shared.is_null());
    }
}
