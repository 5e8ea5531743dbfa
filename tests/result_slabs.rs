//! Results above max_nbytes on processes (issue 17): the task writes them straight into a result
//! slab (a file in the temp folder) that the caller reads in place, and the executor keeps the
//! slab once the results are freed, so that the next call's large result goes into the same
//! pages instead of a fresh file. `pj_out_alloc` still hands out zeroed bytes, `pj_out_set`,
//! `pj_out_truncate` and a later smaller output behave as for any output, and nothing (file,
//! mapping, descriptor, process) is left once the executor and the results are freed, also
//! after a task crashed with a slab in hand.

mod common;

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// The tests count descriptors and mappings of the process: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Above the default max_nbytes (1 MiB): a result that goes to a slab.
const BIG: usize = 3 << 20;

fn fresh_folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pj-slabs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn executor(folder: &Path, extra: &[(&str, &str)]) -> Par {
    let mut options = vec![
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("max_nbytes", "1M"),
        ("temp_folder", folder.to_str().unwrap()),
    ];
    options.extend_from_slice(extra);
    parallel(&options).unwrap()
}

/// The byte at `at` of the pattern of seed `seed`.
fn pattern(seed: u64, at: usize) -> u8 {
    (at as u64).wrapping_mul(131).wrapping_add(seed * 7) as u8
}

/// Task: the argument is (seed, mode) as two u64. Writes BIG bytes of `pattern(seed, ..)` with
/// pj_out_alloc (failing with 7 when the window it got was not all zeroes), then:
/// mode 0: keeps them; 1: pj_out_set of its own bytes from offset 7 on; 2: pj_out_truncate to
/// half, then checks that growing back is refused; 3: pj_out_set of its first 5 bytes (a small
/// output after a large one); 4: pj_out_set of a heap copy of them; 5: fails (returns 9);
/// 6: aborts (a crash with the window in hand).
unsafe extern "C" fn large(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`.
    let arg = unsafe { std::slice::from_raw_parts(arg, len) };
    let seed = u64::from_ne_bytes(arg[..8].try_into().unwrap());
    let mode = u64::from_ne_bytes(arg[8..16].try_into().unwrap());
    let dst = pj_out_alloc(out, BIG);
    if dst.is_null() {
        return 8;
    }
    // SAFETY: pj_out_alloc returned BIG writable bytes, valid until the next pj_out_* call.
    let window = unsafe { std::slice::from_raw_parts_mut(dst, BIG) };
    if window.iter().any(|&b| b != 0) {
        return 7;
    }
    for (at, b) in window.iter_mut().enumerate() {
        *b = pattern(seed, at);
    }
    match mode {
        1 => {
            // SAFETY: the window's bytes from 7 on, still valid.
            let status = pj_out_set(out, unsafe { dst.add(7) }, BIG - 7);
            (status != pj_status::Ok) as i32
        }
        2 => {
            let shrunk = pj_out_truncate(out, BIG / 2);
            let regrown = pj_out_truncate(out, BIG);
            (shrunk != pj_status::Ok || regrown != pj_status::InvalidArgument) as i32
        }
        3 => (pj_out_set(out, dst, 5) != pj_status::Ok) as i32,
        4 => {
            let copy = window.to_vec();
            (pj_out_set(out, copy.as_ptr(), copy.len()) != pj_status::Ok) as i32
        }
        5 => 9,
        6 => std::process::abort(),
        _ => 0,
    }
}

/// What task `large` returns for (seed, mode) when it succeeds.
fn expected(seed: u64, mode: u64) -> Vec<u8> {
    let full: Vec<u8> = (0..BIG).map(|at| pattern(seed, at)).collect();
    match mode {
        1 => full[7..].to_vec(),
        2 => full[..BIG / 2].to_vec(),
        3 => full[..5].to_vec(),
        _ => full,
    }
}

fn spec(seed: u64, mode: u64) -> [u8; 16] {
    let mut arg = [0u8; 16];
    arg[..8].copy_from_slice(&seed.to_ne_bytes());
    arg[8..].copy_from_slice(&mode.to_ne_bytes());
    arg
}

/// Runs one call of tasks (seed, mode) and returns its results handle.
fn call(par: &Par, tasks: &[(u64, u64)]) -> Result<*mut pj_results_t, CError> {
    for &(seed, mode) in tasks {
        par.submit(Some(large), std::ptr::null_mut(), &spec(seed, mode))?;
    }
    let (mut res, mut err) = (std::ptr::null_mut(), std::ptr::null_mut());
    check(pj_parallel_collect(par.0, &mut res, &mut err), err)?;
    Ok(res)
}

fn result(res: *mut pj_results_t, index: usize) -> &'static [u8] {
    let (mut data, mut len) = (std::ptr::null(), 0usize);
    assert_eq!(
        pj_results_get(res, index, &mut data, &mut len),
        pj_status::Ok
    );
    if len == 0 {
        return &[];
    }
    // SAFETY: a view into `res`, read before the caller frees it.
    unsafe { std::slice::from_raw_parts(data, len) }
}

/// The (device, inode) of the file mapped at `address`, from /proc/self/maps (None: anonymous
/// memory, or no mapping).
fn mapped_file(address: usize) -> Option<(String, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = fields[0].split_once('-').unwrap();
        let range =
            usize::from_str_radix(start, 16).unwrap()..usize::from_str_radix(end, 16).unwrap();
        if range.contains(&address) {
            let inode: u64 = fields[4].parse().unwrap();
            return (inode != 0).then(|| (fields[3].to_owned(), inode));
        }
    }
    None
}

/// Mappings of this process of files in `folder`.
fn mappings_of(folder: &Path) -> usize {
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

fn entries(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_next_calls_large_result_is_written_into_the_slab_the_previous_one_freed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for keep in ["false", "true"] {
        let folder = fresh_folder(&format!("reuse-{keep}"));
        let par = executor(&folder, &[("keep_workers", keep)]);
        let mut files = Vec::new();
        for seed in 1..=4 {
            // Each call writes a new pattern over the previous one: the task checks that its
            // window was zeroed first.
            let res = call(&par, &[(seed, 0)]).unwrap();
            let bytes = result(res, 0);
            assert!(
                bytes == expected(seed, 0).as_slice(),
                "keep_workers={keep}, call {seed}"
            );
            let file = mapped_file(bytes.as_ptr() as usize);
            assert!(
                file.is_some(),
                "a result above max_nbytes is read in place from a file"
            );
            files.push(file);
            pj_results_free(res);
            // Freed, the slab stays mapped by the executor, for the next call (a fresh file per
            // result would be gone now, and the inode number could come back for the next).
            assert_eq!(mappings_of(&folder), 1, "keep_workers={keep}, call {seed}");
        }
        assert!(
            files.windows(2).all(|w| w[0] == w[1]),
            "keep_workers={keep}: every call's result lies in the same file: {files:?}"
        );
        drop(par);
        assert_eq!(mappings_of(&folder), 0);
        assert!(entries(&folder).is_empty());
    }
}

#[test]
fn set_truncate_and_smaller_rewrites_of_a_large_output_behave_as_in_the_arena() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let folder = fresh_folder("rewrites");
    for batch_size in ["1", "5"] {
        let par = executor(
            &folder,
            &[("batch_size", batch_size), ("on_error", "collect")],
        );
        // Twice: the second call's tasks write into slabs the first one's results held.
        for round in 0..2u64 {
            let tasks: Vec<(u64, u64)> = (0..10u64).map(|i| (round * 10 + i, i % 6)).collect();
            let res = call(&par, &tasks).unwrap();
            for (index, &(seed, mode)) in tasks.iter().enumerate() {
                let what = format!("batch_size {batch_size}, round {round}, task {index}");
                if mode == 5 {
                    assert_eq!(
                        pj_results_status(res, index),
                        pj_status::TaskFailed,
                        "{what}"
                    );
                    assert!(result(res, index).is_empty(), "{what}");
                    continue;
                }
                assert_eq!(pj_results_status(res, index), pj_status::Ok, "{what}");
                assert!(
                    result(res, index) == expected(seed, mode).as_slice(),
                    "{what}"
                );
            }
            pj_results_free(res);
        }
    }
    assert!(entries(&folder).is_empty());
}

#[test]
fn nothing_is_left_once_freed_even_after_a_task_crashed_with_a_slab_in_hand() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let folder = fresh_folder("crash");
    let (fds, kids) = (open_fds(), children().len());
    let held = {
        let par = executor(&folder, &[("keep_workers", "true")]);
        let res = call(&par, &[(1, 0), (2, 0)]).unwrap();
        pj_results_free(res);
        // The kept slabs are lent to this call; its second task dies writing into one.
        let err = call(&par, &[(3, 0), (4, 6), (5, 0)]).unwrap_err();
        assert_eq!(err.task_index, 1, "{}", err.report);
        assert!(err.report.contains("task 1"), "{}", err.report);
        // The next call runs on a fresh worker, with the slabs back and zeroed for its tasks.
        let res = call(&par, &[(6, 0), (7, 0), (8, 1)]).unwrap();
        for (index, (seed, mode)) in [(6, 0), (7, 0), (8, 1)].into_iter().enumerate() {
            assert!(
                result(res, index) == expected(seed, mode).as_slice(),
                "task {index}"
            );
        }
        pj_results_free(res);
        // Results kept past the executor's end stay readable, and hold their slab alone.
        call(&par, &[(9, 0)]).unwrap()
    };
    assert!(result(held, 0) == expected(9, 0).as_slice());
    assert_eq!(
        mappings_of(&folder),
        1,
        "only the held result's slab is mapped"
    );
    pj_results_free(held);
    assert_eq!(mappings_of(&folder), 0);
    assert_eq!(open_fds(), fds, "descriptors left open");
    assert!(entries(&folder).is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while children().len() > kids && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(children().len(), kids, "worker processes left");
}
