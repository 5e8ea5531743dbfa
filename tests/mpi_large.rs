//! Large results on the MPI backend (issue 17): a worker rank's child writes each result above
//! 1 MiB into a result slab, and the rank sends it to rank 0 from there, one message of its own
//! after the outcome's, which rank 0 receives into the memory the caller reads. Over the
//! in-process fabric (ranks as threads): results intact and in order beside small ones and
//! beyond the transport's message limit, slabs reused (and zeroed) across calls, a task that
//! crashes with a slab in hand reported naming its rank and index, and nothing (file, mapping,
//! descriptor) left once the job ends.
//!
//! A test process of its own: an attachment is process-wide.

mod common;
#[path = "common/mpi_fabric.rs"]
mod mpi_fabric;

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use common::*;
use mpi_fabric::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// The byte at `at` of the pattern of seed `seed`.
fn pattern(seed: u64, at: usize) -> u8 {
    (at as u64).wrapping_mul(29).wrapping_add(seed * 11) as u8
}

/// Task: the argument is (seed, length, crash) as three u64: `length` bytes of `pattern(seed)`
/// written in place with pj_out_alloc (failing with 7 when the window was not all zeroes); a
/// non-zero `crash` aborts after writing.
unsafe extern "C" fn fill(_: *mut c_void, arg: *const u8, len: usize, out: *mut TaskOutput) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`.
    let arg = unsafe { std::slice::from_raw_parts(arg, len) };
    let word = |i: usize| u64::from_ne_bytes(arg[i * 8..i * 8 + 8].try_into().unwrap());
    let (seed, n, crash) = (word(0), word(1) as usize, word(2));
    let dst = pj_out_alloc(out, n);
    if dst.is_null() {
        return 8;
    }
    // SAFETY: pj_out_alloc returned `n` writable bytes.
    let window = unsafe { std::slice::from_raw_parts_mut(dst, n) };
    if window.iter().any(|&b| b != 0) {
        return 7;
    }
    for (at, b) in window.iter_mut().enumerate() {
        *b = pattern(seed, at);
    }
    if crash != 0 {
        std::process::abort();
    }
    0
}

/// Task: returns [sum of the argument's bytes, 1 if the argument lies in a mapping of a file
/// (a landing file the worker rank received the batch into), its length] as three u64.
unsafe extern "C" fn inspect(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`.
    let bytes = unsafe { std::slice::from_raw_parts(arg, len) };
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let in_file = maps.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some((start, end)) = fields.first().and_then(|r| r.split_once('-')) else {
            return false;
        };
        let (start, end) = (
            usize::from_str_radix(start, 16).unwrap_or(0),
            usize::from_str_radix(end, 16).unwrap_or(0),
        );
        (start..end).contains(&(arg as usize)) && fields.get(4).is_some_and(|inode| *inode != "0")
    });
    let words = [sum, u64::from(in_file), len as u64];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

fn submit(par: &Par, seed: u64, n: usize, crash: bool) {
    let words = [seed, n as u64, u64::from(crash)];
    let arg: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_submit_named(par.0, c"fill".as_ptr(), arg.as_ptr(), arg.len(), &mut err),
        err,
    )
    .unwrap();
}

fn mappings_of(folder: &std::path::Path) -> usize {
    let folder = folder.to_str().unwrap();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| line.contains(folder))
        .count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn large_results_go_from_the_ranks_slabs_to_the_callers_memory() {
    let folder = std::env::temp_dir().join(format!("pj-mpi-large-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap();
    // SAFETY: set before any thread of this test process reads the environment (the worker
    // rank resolves its temp folder when it starts serving, below).
    unsafe { std::env::set_var("PJ_TEMP_FOLDER", &folder) };
    assert_eq!(
        pj_register(c"fill".as_ptr(), Some(fill), std::ptr::null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_register(c"inspect".as_ptr(), Some(inspect), std::ptr::null_mut()),
        pj_status::Ok
    );
    let fds = open_fds();
    let workers = start_job(2, None);
    let par = parallel(&[("backend", "mpi"), ("batch_size", "5")]).unwrap();
    // One batch: small results around large ones, one beyond the fabric's 16 MiB message limit.
    let sizes = [100, 20 << 20, 40, 3 << 20, 5 << 20];
    for round in 0..3u64 {
        for (i, &n) in sizes.iter().enumerate() {
            submit(&par, round * 10 + i as u64, n, false);
        }
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        check(pj_parallel_collect(par.0, &mut res, &mut err), err).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            let (mut data, mut len) = (std::ptr::null(), 0usize);
            assert_eq!(pj_results_get(res, i, &mut data, &mut len), pj_status::Ok);
            assert_eq!(len, n, "round {round}, result {i}");
            // SAFETY: a view into `res`, valid until pj_results_free.
            let bytes = unsafe { std::slice::from_raw_parts(data, len) };
            let seed = round * 10 + i as u64;
            assert!(
                bytes
                    .iter()
                    .enumerate()
                    .all(|(at, &b)| b == pattern(seed, at)),
                "round {round}: result {i} differs"
            );
            if i == 4 {
                // The 5 MiB result came in a message of its own, received where the caller
                // reads it.
                assert_eq!(
                    data as usize,
                    LARGE_RECEIVE_AT_RANK_0.load(Ordering::Relaxed),
                    "round {round}: rank 0 copied the result after MPI received it"
                );
            }
        }
        pj_results_free(res);
    }

    // A task that dies with its slab window written: reported with its rank and index; the next
    // call gets the slabs back, zeroed.
    submit(&par, 1, 3 << 20, false);
    submit(&par, 2, 4 << 20, true);
    let error = par.collect().unwrap_err();
    assert_eq!(error.status, pj_status::WorkerDied, "{}", error.message);
    assert_eq!(error.task_index, 1);
    assert!(
        error.message.contains("SIGABRT") && error.message.contains("(MPI rank 1"),
        "{}",
        error.message
    );
    for seed in 0..3 {
        submit(&par, seed, 4 << 20, false);
    }
    let results = par.collect().unwrap();
    for (seed, result) in results.iter().enumerate() {
        assert_eq!(result.len(), 4 << 20);
        assert!(
            result
                .iter()
                .enumerate()
                .all(|(at, &b)| b == pattern(seed as u64, at)),
            "after the crash: result {seed} differs"
        );
    }

    // Large arguments: the worker rank receives the batch into a landing file, and its child
    // reads them there; small ones travel in the batch. Batches of one and of four, twice.
    for batch_size in ["1", "4"] {
        let args = parallel(&[("backend", "mpi"), ("batch_size", batch_size)]).unwrap();
        for round in 0..2u64 {
            let sizes = [6 << 20, 1000, 3 << 20, 2 << 20];
            let inputs: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|b| pattern(round + i as u64, b)).collect())
                .collect();
            for input in &inputs {
                let mut err = std::ptr::null_mut();
                let name = c"inspect".as_ptr();
                let status =
                    pj_parallel_submit_named(args.0, name, input.as_ptr(), input.len(), &mut err);
                check(status, err).unwrap();
            }
            let results = args.collect().unwrap();
            for (i, (input, result)) in inputs.iter().zip(&results).enumerate() {
                let words: Vec<u64> = result
                    .chunks(8)
                    .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
                    .collect();
                let sum: u64 = input.iter().map(|&b| u64::from(b)).sum();
                let what = format!("batch_size {batch_size}, round {round}, argument {i}");
                assert_eq!(
                    words,
                    [sum, u64::from(input.len() > 1 << 20), input.len() as u64],
                    "{what}"
                );
            }
        }
    }
    drop(par);
    assert_eq!(end_job(workers), vec![0], "the worker rank leaves cleanly");
    assert_eq!(mappings_of(&folder), 0, "result slabs left mapped");
    assert_eq!(open_fds(), fds, "descriptors left open");
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
    std::fs::remove_dir_all(&folder).unwrap();
}
