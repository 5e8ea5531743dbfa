//! Arguments above max_nbytes reach process workers through a memory-mapped file, not the socket,
//! with joblib's mmap_mode semantics, and nothing is ever left in the temp folder.

mod common;

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const CASE: &str = "PJ_MEMMAP_CASE";
const BIG: usize = 3 << 20;

/// A fresh, empty folder for one test's temp files.
fn fresh_folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pj-memmap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The line of /proc/self/maps whose range holds `address`.
fn mapping_of(address: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            usize::from_str_radix(start, 16).unwrap(),
            usize::from_str_radix(end, 16).unwrap(),
        );
        if (start..end).contains(&address) {
            return line.to_owned();
        }
    }
    String::new()
}

/// Task: returns [sum of the argument's bytes, argument address, 1 if the argument lives in a
/// mapping of a deleted file (a spill file), the argument's first byte]; with userdata non-NULL,
/// it then writes 0xEE into the argument's first byte (to probe mmap_mode).
unsafe extern "C" fn inspect(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`.
    let bytes = unsafe { std::slice::from_raw_parts(arg, len) };
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let mapping = mapping_of(arg as usize);
    let from_file = u64::from(mapping.contains("(deleted)") || mapping.contains(" /"));
    let first = u64::from(bytes[0]);
    if !userdata.is_null() {
        // SAFETY: deliberately writing through the argument, as a careless task would.
        unsafe { (arg as *mut u8).write_volatile(0xEE) };
    }
    let words = [sum, arg as u64, from_file, first];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

fn words(result: &[u8]) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (i, chunk) in result.chunks(8).enumerate() {
        w[i] = u64::from_ne_bytes(chunk.try_into().unwrap());
    }
    w
}

fn big_arg(seed: u8) -> Vec<u8> {
    (0..BIG).map(|i| (i as u8).wrapping_add(seed)).collect()
}

fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

fn executor(folder: &Path, extra: &[(&str, &str)]) -> Par {
    let mut options = vec![
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("temp_folder", folder.to_str().unwrap()),
    ];
    options.extend_from_slice(extra);
    parallel(&options).unwrap()
}

#[test]
fn a_big_argument_is_mapped_from_a_file_once_per_worker() {
    let folder = fresh_folder("once");
    let par = executor(&folder, &[("batch_size", "1")]);
    let arg = big_arg(3);
    for _ in 0..20 {
        par.submit(Some(inspect), std::ptr::null_mut(), &arg)
            .unwrap();
    }
    let small = 7u64.to_ne_bytes();
    par.submit(Some(inspect), std::ptr::null_mut(), &small)
        .unwrap();
    assert!(entries(&folder).is_empty(), "unnamed files only");
    let results = par.collect().unwrap();
    let mut addresses = std::collections::BTreeSet::new();
    for r in &results[..20] {
        let [sum, address, from_file, _] = words(r);
        assert_eq!(sum, byte_sum(&arg));
        assert_eq!(from_file, 1, "the argument is a file mapping in the worker");
        addresses.insert(address);
    }
    assert!(
        addresses.len() <= 2,
        "one mapping per worker for the same content: {addresses:x?}"
    );
    assert_eq!(
        words(&results[20])[2],
        0,
        "small arguments travel in the frame"
    );
    assert!(entries(&folder).is_empty());
}

#[test]
fn max_nbytes_none_and_threads_never_spill() {
    let folder = fresh_folder("never");
    let arg = big_arg(1);
    for extra in [&[("max_nbytes", "none")][..], &[("backend", "threads")][..]] {
        let par = executor(&folder, extra);
        par.submit(Some(inspect), std::ptr::null_mut(), &arg)
            .unwrap();
        let results = par.collect().unwrap();
        assert_eq!(words(&results[0])[0], byte_sum(&arg));
        assert_eq!(words(&results[0])[2], 0, "{extra:?}: copied, not mapped");
    }
    // A folder that does not exist is never looked at when nothing is spilled.
    let par = executor(Path::new("/nonexistent/pj"), &[]);
    par.submit(Some(inspect), std::ptr::null_mut(), &7u64.to_ne_bytes())
        .unwrap();
    assert_eq!(par.collect().unwrap().len(), 1);
}

/// mmap_mode "none" (joblib's `mmap_mode=None`): large arguments are loaded into the worker's own
/// memory instead of being mapped from a file, so the temp folder is never used and a task may
/// write to its copy.
#[test]
fn mmap_mode_none_loads_arguments_into_the_workers_memory() {
    for spelling in ["none", "None"] {
        let par = executor(
            Path::new("/nonexistent/pj-mmap-none"),
            &[("mmap_mode", spelling)],
        );
        let arg = big_arg(5);
        let mut write = 1u8;
        par.submit(Some(inspect), (&raw mut write).cast(), &arg)
            .unwrap();
        let results = par.collect().unwrap();
        let [sum, _, from_file, first] = words(&results[0]);
        assert_eq!(sum, byte_sum(&arg), "{spelling}");
        assert_eq!(first, u64::from(arg[0]));
        assert_eq!(from_file, 0, "{spelling}: copied into memory, not mapped");
        assert_eq!(arg[0], 5, "the caller's argument is untouched");
    }
}

#[test]
fn max_nbytes_sets_the_threshold() {
    let folder = fresh_folder("threshold");
    let par = executor(&folder, &[("max_nbytes", "4K")]);
    for len in [4096usize, 4097] {
        let arg = vec![1u8; len];
        par.submit(Some(inspect), std::ptr::null_mut(), &arg)
            .unwrap();
    }
    let results = par.collect().unwrap();
    assert_eq!(
        words(&results[0])[2],
        0,
        "exactly max_nbytes stays in the frame"
    );
    assert_eq!(
        words(&results[1])[2],
        1,
        "one byte more goes through a file"
    );
}

#[test]
fn a_missing_temp_folder_fails_the_call_with_io_naming_it() {
    let par = executor(Path::new("/nonexistent/pj-spill"), &[]);
    let err = par
        .submit(Some(inspect), std::ptr::null_mut(), &big_arg(0))
        .err()
        .or_else(|| par.collect().err())
        .expect("the call fails");
    assert_eq!(err.status, pj_status::Io, "{}", err.message);
    assert!(
        err.message.contains("/nonexistent/pj-spill"),
        "{}",
        err.message
    );
    let _ = par.collect();
    // The object works again once the arguments fit.
    par.submit(Some(inspect), std::ptr::null_mut(), &[1, 2, 3])
        .unwrap();
    assert_eq!(par.collect().unwrap().len(), 1);
}

#[test]
fn mmap_mode_r_makes_a_write_a_worker_death() {
    let folder = fresh_folder("readonly");
    let par = executor(&folder, &[]);
    let mut write = 1u8;
    par.submit(Some(inspect), (&raw mut write).cast(), &big_arg(0))
        .unwrap();
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::WorkerDied, "{}", err.message);
    assert!(
        err.message.contains("SIGSEGV") || err.message.contains("SIGBUS"),
        "{}",
        err.message
    );
    assert!(entries(&folder).is_empty());
}

#[test]
fn mmap_modes_c_and_r_plus_keep_each_tasks_writes_to_itself() {
    let folder = fresh_folder("private");
    let arg = big_arg(9);
    for mode in ["c", "r+", "w+"] {
        let par = executor(&folder, &[("mmap_mode", mode), ("batch_size", "1")]);
        let mut write = 1u8;
        for _ in 0..4 {
            par.submit(Some(inspect), (&raw mut write).cast(), &arg)
                .unwrap();
        }
        for r in par.collect().unwrap() {
            let [sum, _, from_file, first] = words(&r);
            assert_eq!(from_file, 1, "{mode}");
            assert_eq!(
                first,
                u64::from(arg[0]),
                "{mode}: no task sees another's write"
            );
            assert_eq!(sum, byte_sum(&arg), "{mode}");
        }
    }
    assert!(entries(&folder).is_empty());
}

/// Task for the kill scenario: sleeps long with a spilled argument mapped.
unsafe extern "C" fn sleep_on_it(
    _: *mut c_void,
    _: *const u8,
    _: usize,
    _: *mut TaskOutput,
) -> i32 {
    std::thread::sleep(Duration::from_secs(30));
    0
}

/// The re-executed scenario: a call with spilled arguments that the parent test SIGKILLs.
#[test]
#[ignore]
fn child_case() {
    let Ok(folder) = std::env::var(CASE) else {
        return;
    };
    println!();
    let par = executor(Path::new(&folder), &[("batch_size", "1")]);
    for seed in 0..4 {
        par.submit(Some(sleep_on_it), std::ptr::null_mut(), &big_arg(seed))
            .unwrap();
    }
    println!("SUBMITTED");
    let _ = par.collect();
}

#[test]
fn a_parent_killed_mid_call_leaves_nothing_in_the_temp_folder() {
    use std::io::{BufRead, BufReader};
    let folder = fresh_folder("killed");
    let mut child = child_case_command(CASE, &folder)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let submitted = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("SUBMITTED"));
    assert!(submitted);
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(entries(&folder).is_empty(), "{:?}", entries(&folder));
}

/// Task: returns `len` bytes (the argument, a u64) of a pattern seeded by the length.
unsafe extern "C" fn big_result(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments; pj_out_alloc gives `n` writable bytes.
    unsafe {
        let n = arg_u64(arg, len) as usize;
        let bytes = std::slice::from_raw_parts_mut(pj_out_alloc(out, n), n);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(n as u8);
        }
    }
    0
}

fn expected_result(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(n as u8))
        .collect()
}

#[test]
fn big_results_come_back_mapped_from_files_without_a_copy() {
    let folder = fresh_folder("results");
    // 20 results in one batch: more than one frame's worth of descriptors, so some stay inline.
    let sizes: Vec<usize> = (0..20)
        .map(|i| if i % 2 == 0 { BIG + i } else { 100 + i })
        .collect();
    for batch_size in ["1", "20"] {
        let par = executor(&folder, &[("batch_size", batch_size)]);
        for &n in &sizes {
            par.submit(
                Some(big_result),
                std::ptr::null_mut(),
                &(n as u64).to_ne_bytes(),
            )
            .unwrap();
        }
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
        let mut mapped = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let (mut data, mut len) = (std::ptr::null(), 0usize);
            assert_eq!(pj_results_get(res, i, &mut data, &mut len), pj_status::Ok);
            // SAFETY: a live view into res.
            let bytes = unsafe { std::slice::from_raw_parts(data, len) };
            assert!(
                bytes == expected_result(n).as_slice(),
                "batch {batch_size}: result {i}"
            );
            if mapping_of(data as usize).contains("(deleted)") {
                mapped += 1;
                assert!(n > 1 << 20, "only results above max_nbytes are mapped");
            }
        }
        assert_eq!(
            mapped, 10,
            "batch {batch_size}: every big result was mapped"
        );
        assert!(entries(&folder).is_empty());
        pj_results_free(res);
    }
    assert!(entries(&folder).is_empty());
}

#[test]
fn big_results_stream_through_next_too() {
    let folder = fresh_folder("stream");
    let par = executor(&folder, &[("return_as", "generator_unordered")]);
    for n in [BIG, 10, BIG + 1] {
        par.submit(
            Some(big_result),
            std::ptr::null_mut(),
            &(n as u64).to_ne_bytes(),
        )
        .unwrap();
    }
    let mut seen = 0;
    loop {
        let (mut index, mut data, mut len) = (0usize, std::ptr::null(), 0usize);
        let status = pj_parallel_next(par.0, &mut index, &mut data, &mut len, std::ptr::null_mut());
        if status == pj_status::Done {
            break;
        }
        assert_eq!(status, pj_status::Ok);
        let n = [BIG, 10, BIG + 1][index];
        // SAFETY: a view valid until the next use of par.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        assert!(bytes == expected_result(n).as_slice(), "result {index}");
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn a_big_result_with_a_missing_temp_folder_is_an_io_error_naming_it() {
    let par = executor(Path::new("/nonexistent/pj-results"), &[]);
    par.submit(
        Some(big_result),
        std::ptr::null_mut(),
        &(BIG as u64).to_ne_bytes(),
    )
    .unwrap();
    let err = par.collect().unwrap_err();
    assert_eq!(err.status, pj_status::Io, "{}", err.message);
    assert!(
        err.message.contains("/nonexistent/pj-results"),
        "{}",
        err.message
    );
}

/// The calling process's anonymous resident memory, in KiB (what a copy of an argument grows).
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Task: checksums its argument and returns [checksum, this worker's RssAnon in KiB].
unsafe extern "C" fn checksum_and_rss(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`.
    let bytes = unsafe { std::slice::from_raw_parts(arg, len) };
    // One byte per page: every page of the argument is touched, cheaply in a debug build.
    let sum = bytes
        .iter()
        .step_by(4096)
        .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)));
    let words = [sum, rss_anon_kib()];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

/// Distinct open files of this process that live in `folder` (unnamed files show as
/// "<folder>/#<inode> (deleted)" or similar).
fn open_files_in(folder: &Path) -> usize {
    let prefix = folder.to_string_lossy().into_owned();
    let mut inodes = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && target.to_string_lossy().starts_with(&prefix)
            && let Ok(meta) = std::fs::metadata(entry.path())
        {
            inodes.insert(std::os::unix::fs::MetadataExt::ino(&meta));
        }
    }
    inodes.len()
}

#[test]
fn a_512_mib_argument_to_8_tasks_is_written_once_and_never_copied_into_workers() {
    let folder = fresh_folder("512m");
    let mut arg = vec![0u8; 512 << 20];
    for (page, bytes) in arg.chunks_mut(4096).enumerate() {
        bytes.fill(page as u8);
    }
    let expected = arg
        .iter()
        .step_by(4096)
        .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)));
    let parent_rss = rss_anon_kib();
    let par = executor(&folder, &[("batch_size", "1")]);
    for _ in 0..8 {
        par.submit(Some(checksum_and_rss), std::ptr::null_mut(), &arg)
            .unwrap();
    }
    assert_eq!(
        open_files_in(&folder),
        1,
        "one file for the eight submissions"
    );
    let results = par.collect().unwrap();
    for r in &results {
        let [sum, worker_rss] =
            [0, 1].map(|i| u64::from_ne_bytes(r[i * 8..i * 8 + 8].try_into().unwrap()));
        assert_eq!(sum, expected);
        // The worker is a fork of this process (which holds the 512 MiB argument): a copy of the
        // argument would add 512 MiB of anonymous memory to it.
        let growth_mib = worker_rss.saturating_sub(parent_rss) / 1024;
        assert!(growth_mib < 32, "a worker grew by {growth_mib} MiB");
    }
    drop(par);
    assert_eq!(open_files_in(&folder), 0);
    assert!(entries(&folder).is_empty());
}

/// Task: fails on argument byte 1, sleeps forever on 2, returns otherwise.
unsafe extern "C" fn ending(_: *mut c_void, arg: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    // SAFETY: arguments are at least one byte long.
    match unsafe { *arg } {
        1 => 3,
        2 => loop {
            std::thread::sleep(Duration::from_millis(10));
        },
        _ => 0,
    }
}

#[test]
fn no_ending_leaves_a_file_behind() {
    let folder = fresh_folder("endings");
    let arg_with = |first: u8| {
        let mut a = vec![5u8; BIG];
        a[0] = first;
        a
    };
    // A task error, a timeout and a cancellation, each with spilled arguments in flight.
    for (case, first, extra) in [
        ("error", 1u8, &[][..]),
        ("timeout", 2, &[("timeout", "0.3")][..]),
    ] {
        let par = executor(&folder, extra);
        for i in 0..4u8 {
            let _ = par.submit(
                Some(ending),
                std::ptr::null_mut(),
                &arg_with(if i == 2 { first } else { 0 }),
            );
        }
        assert!(par.collect().is_err(), "{case}");
        drop(par);
        assert!(
            entries(&folder).is_empty(),
            "{case}: {:?}",
            entries(&folder)
        );
    }
    let par = std::sync::Arc::new(executor(&folder, &[]));
    let canceller = {
        let par = par.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            pj_parallel_cancel(par.0);
        })
    };
    for _ in 0..4 {
        let _ = par.submit(Some(ending), std::ptr::null_mut(), &arg_with(2));
    }
    assert_eq!(par.collect().unwrap_err().status, pj_status::Cancelled);
    canceller.join().unwrap();
    drop(par);
    assert!(
        entries(&folder).is_empty(),
        "cancel: {:?}",
        entries(&folder)
    );
}

/// Task: like `big_result`, but with a non-NULL `userdata` (a NUL-terminated folder path) task 1
/// of the call (its argument's length is odd: `BIG + 1`) first removes that folder, so that its
/// result (above max_nbytes) cannot be written to a file there.
unsafe extern "C" fn big_result_after_removing(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments; userdata is a live C string in the forked worker's copy.
    unsafe {
        let n = arg_u64(arg, len) as usize;
        if n % 2 == 1 {
            let folder = std::ffi::CStr::from_ptr(userdata as *const std::ffi::c_char);
            std::fs::remove_dir(folder.to_str().unwrap()).unwrap();
        }
        big_result(std::ptr::null_mut(), arg, len, out)
    }
}

#[test]
fn a_result_that_cannot_go_through_a_file_is_blamed_on_its_own_task() {
    // One batch of four tasks: 10 bytes, BIG + 1 (whose task removes the temp folder first, so
    // that its result file cannot be created), 12, 14. The failure is that task's, not its
    // batch's first task's; with on_error=collect every result comes back.
    let sizes = [10usize, BIG + 1, 12, 14];
    for on_error in ["raise", "collect"] {
        let folder = fresh_folder(&format!("unreturnable-{on_error}"));
        let path = std::ffi::CString::new(folder.to_str().unwrap()).unwrap();
        let par = executor(&folder, &[("batch_size", "4"), ("on_error", on_error)]);
        for &n in &sizes {
            par.submit(
                Some(big_result_after_removing),
                path.as_ptr() as *mut c_void,
                &(n as u64).to_ne_bytes(),
            )
            .unwrap();
        }
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let status = pj_parallel_collect(par.0, &mut res, &mut err);
        if on_error == "raise" {
            let err = take_error(status, err);
            assert_eq!(err.status, pj_status::Io, "{}", err.message);
            assert_eq!(err.task_index, 1, "{}", err.message);
            assert!(
                err.message
                    .contains("cannot return a result through a file"),
                "{}",
                err.message
            );
            continue;
        }
        // With on_error=collect, the result that could not get a file comes back inline: nothing
        // is lost.
        check(status, err).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(pj_results_status(res, i), pj_status::Ok, "result {i}");
            let (mut data, mut len) = (std::ptr::null(), 0usize);
            assert_eq!(pj_results_get(res, i, &mut data, &mut len), pj_status::Ok);
            // SAFETY: a live view into res.
            let bytes = unsafe { std::slice::from_raw_parts(data, len) };
            assert!(bytes == expected_result(n).as_slice(), "result {i}");
        }
        pj_results_free(res);
    }
}
