//! An executor's spill files serve all its calls: the next call writes its arguments above
//! max_nbytes into the same files (and kept workers read them through the mappings they already
//! have), whatever ended the call before, and the files go when the executor is freed.

mod common;

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

const BIG: usize = 3 << 20;

/// A fresh, empty folder for one test's temp files.
fn fresh_folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pj-reuse-{name}-{}", std::process::id()));
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

/// Distinct files of this process open in `folder` (unnamed files show as "<folder>/#<inode>
/// (deleted)" or similar).
fn open_files_in(folder: &Path) -> usize {
    let prefix = folder.to_string_lossy().into_owned();
    let mut inodes = BTreeSet::new();
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

/// The inode of the file mapped at `address` in this process (0: not a file mapping).
fn inode_at(address: usize) -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = fields[0].split_once('-').unwrap();
        let (start, end) = (
            usize::from_str_radix(start, 16).unwrap(),
            usize::from_str_radix(end, 16).unwrap(),
        );
        if (start..end).contains(&address) {
            return fields[4].parse().unwrap();
        }
    }
    0
}

/// Task, by the argument's first byte: 1 aborts the worker, 2 sleeps (until the worker is
/// killed), anything else returns [sum of the bytes, inode of the file the argument is mapped
/// from].
unsafe extern "C" fn probe(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`.
    let bytes = unsafe { std::slice::from_raw_parts(arg, len) };
    match bytes[0] {
        1 => std::process::abort(),
        2 => loop {
            std::thread::sleep(Duration::from_millis(10));
        },
        _ => {}
    }
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let words = [sum, inode_at(arg as usize)];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

/// Argument `index` of call `seed`: different content in every call and every task.
fn arg(seed: u8, index: u8) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..BIG)
        .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(index))
        .collect();
    bytes[0] = 0;
    bytes
}

/// A call of 6 big arguments (the caller's buffer overwritten after each submit, as the
/// snapshot contract allows), checked; returns the inodes the workers read them from.
fn good_call(par: &Par, seed: u8) -> BTreeSet<u64> {
    let mut buffer = vec![0u8; BIG];
    let mut expected = Vec::new();
    for index in 0..6 {
        buffer.copy_from_slice(&arg(seed, index));
        expected.push(buffer.iter().map(|&b| u64::from(b)).sum::<u64>());
        par.submit(Some(probe), std::ptr::null_mut(), &buffer)
            .unwrap();
        buffer.fill(0xAB);
    }
    let results = par.collect().unwrap();
    let mut inodes = BTreeSet::new();
    for (result, expected) in results.iter().zip(&expected) {
        let sum = u64::from_ne_bytes(result[..8].try_into().unwrap());
        let inode = u64::from_ne_bytes(result[8..16].try_into().unwrap());
        assert_eq!(sum, *expected, "call {seed}");
        assert_ne!(inode, 0, "the argument is a file mapping in the worker");
        inodes.insert(inode);
    }
    inodes
}

/// A call whose task 3 has `first` as its first byte (the others are good), which must fail with
/// `status`.
fn failing_call(par: &Par, first: u8, status: pj_status) {
    for index in 0..6 {
        let mut bytes = arg(9, index);
        if index == 3 {
            bytes[0] = first;
        }
        let _ = par.submit(Some(probe), std::ptr::null_mut(), &bytes);
    }
    assert_eq!(par.collect().unwrap_err().status, status);
}

fn executor(folder: &Path, extra: &[(&str, &str)]) -> Par {
    let mut options = vec![
        ("backend", "processes"),
        ("n_jobs", "2"),
        ("batch_size", "1"),
        ("keep_workers", "true"),
        ("temp_folder", folder.to_str().unwrap()),
    ];
    options.extend_from_slice(extra);
    parallel(&options).unwrap()
}

#[test]
fn the_next_call_reads_its_arguments_from_the_same_files() {
    let folder = fresh_folder("calls");
    let par = executor(&folder, &[]);
    let first = good_call(&par, 1);
    for seed in 2..5 {
        assert_eq!(good_call(&par, seed), first, "call {seed} made new files");
    }
    assert_eq!(open_files_in(&folder), first.len(), "kept between calls");
    drop(par);
    assert_eq!(open_files_in(&folder), 0);
    assert!(entries(&folder).is_empty());
}

#[test]
fn a_crash_a_timeout_or_a_cancel_leaves_the_next_call_right() {
    let folder = fresh_folder("endings");
    // A generous limit: only the sleeping task reaches it.
    let par = std::sync::Arc::new(executor(&folder, &[("timeout", "5")]));
    let files = good_call(&par, 1);
    failing_call(&par, 1, pj_status::WorkerDied);
    assert_eq!(good_call(&par, 2), files, "after a worker crash");
    failing_call(&par, 2, pj_status::Timeout);
    assert_eq!(good_call(&par, 3), files, "after a timeout");
    let canceller = {
        let par = par.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            pj_parallel_cancel(par.0);
        })
    };
    failing_call(&par, 2, pj_status::Cancelled);
    canceller.join().unwrap();
    assert_eq!(good_call(&par, 4), files, "after a cancel");
    drop(par);
    assert_eq!(open_files_in(&folder), 0);
    assert!(entries(&folder).is_empty());
}

/// The address ranges of this process's mappings of files in `folder`.
fn mappings_in(folder: &Path) -> Vec<(usize, usize)> {
    let prefix = folder.to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|line| line.contains(&prefix))
        .map(|line| {
            let (start, end) = line
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            (
                usize::from_str_radix(start, 16).unwrap(),
                usize::from_str_radix(end, 16).unwrap(),
            )
        })
        .collect()
}

/// A fork of the caller does not inherit the executor's kept spill mappings, so freeing the
/// executor's copy there must not unmap their addresses, which the child may have reused.
#[test]
fn freeing_an_inherited_executor_leaves_the_childs_mappings_alone() {
    let folder = fresh_folder("fork");
    let par = executor(&folder, &[]);
    good_call(&par, 1);
    let kept = mappings_in(&folder);
    assert!(!kept.is_empty(), "the executor maps its kept files");
    let handle = par.0;
    // SAFETY: the child maps memory, frees the executor's copy (pj's C API, fork-safe with
    // glibc) and leaves through _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            if !mappings_in(&folder).is_empty() {
                return 2;
            }
            // The child's own memory where the parent's spill mappings are.
            let mut ours = Vec::new();
            for &(start, end) in &kept {
                // SAFETY: the range is unmapped in this process (checked above); MAP_FIXED puts
                // fresh anonymous memory there.
                let at = unsafe {
                    libc::mmap(
                        start as *mut c_void,
                        end - start,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if at as usize != start {
                    return 3;
                }
                // SAFETY: just mapped, readable and writable.
                unsafe { (at as *mut u8).write_volatile(42) };
                ours.push(at as *mut u8);
            }
            drop(Par(handle));
            // A SIGSEGV here (an unmapped page) fails the test.
            // SAFETY: still mapped, unless freeing the copy unmapped it.
            let intact = ours.iter().all(|&p| unsafe { p.read_volatile() } == 42);
            if intact { 0 } else { 4 }
        })
        .unwrap_or(101);
        // SAFETY: leaving the child without running the harness's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // SAFETY: polls our own child; `status` is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
        if std::time::Instant::now() > deadline {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child failed: {status:#x}"
    );
    // The parent's executor still works, with the same files.
    assert_eq!(good_call(&par, 2).len(), 1);
    drop(par);
    assert_eq!(open_files_in(&folder), 0);
    assert!(entries(&folder).is_empty());
}

/// With on_error=collect, a crash mid-call costs only its task: the batch runs again on a fresh
/// worker, which receives the kept files anew, and every other task reads the right bytes, in
/// this call and the next.
#[test]
fn on_error_collect_survives_a_crash_with_the_same_files() {
    let folder = fresh_folder("collect");
    let par = executor(&folder, &[("on_error", "collect")]);
    let files = good_call(&par, 1);
    let mut expected = Vec::new();
    for index in 0..6 {
        let mut bytes = arg(5, index);
        if index == 3 {
            bytes[0] = 1;
        }
        expected.push(bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
        par.submit(Some(probe), std::ptr::null_mut(), &bytes)
            .unwrap();
    }
    let mut res = std::ptr::null_mut();
    assert_eq!(
        pj_parallel_collect(par.0, &mut res, std::ptr::null_mut()),
        pj_status::Ok
    );
    for (index, expected) in expected.iter().enumerate() {
        let status = pj_results_status(res, index);
        if index == 3 {
            assert_eq!(status, pj_status::WorkerDied);
            continue;
        }
        assert_eq!(status, pj_status::Ok, "task {index}");
        let (mut data, mut len) = (std::ptr::null(), 0usize);
        assert_eq!(
            pj_results_get(res, index, &mut data, &mut len),
            pj_status::Ok
        );
        // SAFETY: pj_results_get gave `len` readable bytes, valid until pj_results_free.
        let result = unsafe { std::slice::from_raw_parts(data, len) };
        assert_eq!(
            u64::from_ne_bytes(result[..8].try_into().unwrap()),
            *expected
        );
        let inode = u64::from_ne_bytes(result[8..16].try_into().unwrap());
        assert!(files.contains(&inode), "task {index} read another file");
    }
    pj_results_free(res);
    assert_eq!(good_call(&par, 6), files, "after the crash");
    drop(par);
    assert_eq!(open_files_in(&folder), 0);
    assert!(entries(&folder).is_empty());
}
