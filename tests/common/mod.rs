//! Helpers for driving the C ABI from Rust tests: owned handles and small task callbacks.
#![allow(dead_code)]

use std::ffi::{CStr, CString, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use pj::ffi::*;
use pj::task::TaskOutput;

/// An error copied out of a `pj_error_t`.
#[derive(Debug, Clone, PartialEq)]
pub struct CError {
    pub status: pj_status,
    pub message: String,
    pub report: String,
    pub task_index: i64,
    pub code: i32,
    /// What the callback attached with pj_out_error, when it did.
    pub callback_message: Option<String>,
}

/// Takes ownership of `err` (may be NULL) and copies it.
pub fn take_error(status: pj_status, err: *mut pj_error_t) -> CError {
    assert!(
        !err.is_null(),
        "a failing call with error_out must produce an error (status {status:?})"
    );
    // SAFETY: err is a live error handle produced by pj; strings are NUL-terminated and owned by it.
    let copied = unsafe {
        CError {
            status: pj_error_status(err),
            message: CStr::from_ptr(pj_error_message(err))
                .to_string_lossy()
                .into_owned(),
            report: CStr::from_ptr(pj_error_report(err))
                .to_string_lossy()
                .into_owned(),
            task_index: pj_error_task_index(err),
            code: pj_error_callback_code(err),
            callback_message: {
                let raw = pj_error_callback_message(err);
                (!raw.is_null()).then(|| CStr::from_ptr(raw).to_string_lossy().into_owned())
            },
        }
    };
    pj_error_free(err);
    assert_eq!(
        copied.status, status,
        "error object status matches the returned status"
    );
    copied
}

/// Converts a status + error pair into a Result.
pub fn check(status: pj_status, err: *mut pj_error_t) -> Result<(), CError> {
    if status == pj_status::Ok {
        Ok(())
    } else {
        Err(take_error(status, err))
    }
}

/// An owned `pj_parallel_t`.
pub struct Par(pub *mut pj_parallel_t);

// SAFETY: pj_parallel_t is documented as usable from any thread (it serialises calls itself).
unsafe impl Send for Par {}
// SAFETY: as above; concurrent use yields PJ_STATUS_BUSY rather than data races.
unsafe impl Sync for Par {}

impl Drop for Par {
    fn drop(&mut self) {
        pj_parallel_free(self.0);
    }
}

/// Cancels the call in flight on `par` after `delay`, from another thread (`pj_parallel_cancel`,
/// checked to return OK). Join the handle before `par` is dropped.
pub fn cancel_after(par: &Par, delay: std::time::Duration) -> std::thread::JoinHandle<()> {
    let raw = par.0 as usize;
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        assert_eq!(
            pj_parallel_cancel(raw as *const pj_parallel_t),
            pj_status::Ok
        );
    })
}

/// Builds a config from string options.
pub fn config(options: &[(&str, &str)]) -> Result<*mut pj_config_t, CError> {
    let mut cfg = std::ptr::null_mut();
    assert_eq!(pj_config_new(&mut cfg), pj_status::Ok);
    for (key, value) in options {
        let (k, v) = (CString::new(*key).unwrap(), CString::new(*value).unwrap());
        let mut err = std::ptr::null_mut();
        if let Err(e) = check(pj_config_set(cfg, k.as_ptr(), v.as_ptr(), &mut err), err) {
            pj_config_free(cfg);
            return Err(e);
        }
    }
    Ok(cfg)
}

/// Creates an executor from string options.
pub fn parallel(options: &[(&str, &str)]) -> Result<Par, CError> {
    let cfg = config(options)?;
    let mut par = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let status = pj_parallel_new(cfg, &mut par, &mut err);
    pj_config_free(cfg);
    check(status, err)?;
    Ok(Par(par))
}

impl Par {
    pub fn submit(&self, f: pj_task_fn, userdata: *mut c_void, arg: &[u8]) -> Result<(), CError> {
        let mut err = std::ptr::null_mut();
        check(
            pj_parallel_submit(self.0, f, userdata, arg.as_ptr(), arg.len(), &mut err),
            err,
        )
    }

    pub fn collect(&self) -> Result<Vec<Vec<u8>>, CError> {
        let mut res = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        check(pj_parallel_collect(self.0, &mut res, &mut err), err)?;
        Ok(results_to_vec(res))
    }
}

/// Copies and frees a results object.
pub fn results_to_vec(res: *mut pj_results_t) -> Vec<Vec<u8>> {
    let n = pj_results_len(res);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (mut data, mut len) = (std::ptr::null(), 0usize);
        assert_eq!(pj_results_get(res, i, &mut data, &mut len), pj_status::Ok);
        // SAFETY: pj_results_get returned a live (data, len) view into res.
        out.push(unsafe { std::slice::from_raw_parts(data, len) }.to_vec());
    }
    pj_results_free(res);
    out
}

/// Reads a task argument as a u64.
///
/// # Safety
/// `arg` must point to `len` readable bytes.
pub unsafe fn arg_u64(arg: *const u8, len: usize) -> u64 {
    // SAFETY: per this function's contract.
    let bytes = unsafe { std::slice::from_raw_parts(arg, len) };
    u64::from_ne_bytes(bytes.try_into().expect("8-byte argument"))
}

/// Task: writes 2*x; counts runs in the AtomicUsize `userdata` points to (if any); fails with code 7
/// and a message when x equals the `FAIL_AT` value stored after the counter.
pub struct Counter {
    pub runs: AtomicUsize,
    pub fail_at: u64,
}

pub unsafe extern "C" fn double_task(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: tests pass 8-byte arguments.
    let x = unsafe { arg_u64(arg, len) };
    if !userdata.is_null() {
        // SAFETY: tests pass a live Counter as userdata.
        let counter = unsafe { &*(userdata as *const Counter) };
        counter.runs.fetch_add(1, Ordering::Relaxed);
        if x == counter.fail_at {
            pj_out_error(out, c"cannot handle this one".as_ptr());
            return 7;
        }
    }
    let y = (2 * x).to_ne_bytes();
    pj_out_set(out, y.as_ptr(), y.len());
    0
}

/// Decodes results of `double_task`.
pub fn as_u64s(results: &[Vec<u8>]) -> Vec<u64> {
    results
        .iter()
        .map(|r| u64::from_ne_bytes(r.as_slice().try_into().unwrap()))
        .collect()
}

/// A command that re-runs this test binary's ignored `child_case` test alone, with `key=value` in
/// its environment naming the scenario (rayon's technique for tests that crash or get killed: the
/// scenario runs in its own process, so it can never take the test runner down).
pub fn child_case_command(key: &str, value: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_case",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(key, value);
    command
}

/// Pids of this process's children (what `pj` forked and has not reaped).
pub fn children() -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// A range function for `pj_parallel_for_named` (register it as "doubles"): returns the words
/// [start, end, the sum of 2 * i over the range, this process's pid]; fails (code 3, "bad range")
/// on a range holding item 123,456.
pub unsafe extern "C" fn doubles_range(
    _: *mut std::ffi::c_void,
    start: usize,
    end: usize,
    out: *mut pj::task::TaskOutput,
) -> i32 {
    if (start..end).contains(&123_456) {
        pj_out_error(out, c"bad range".as_ptr());
        return 3;
    }
    let sum: u64 = (start as u64..end as u64).map(|i| 2 * i).sum();
    let words = [start as u64, end as u64, sum, u64::from(std::process::id())];
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    pj_out_set(out, raw.as_ptr(), raw.len());
    0
}

/// Registers `doubles_range` as "doubles" (idempotent).
pub fn register_doubles() {
    let mut err = std::ptr::null_mut();
    check(
        pj_register_range(c"doubles".as_ptr(), Some(doubles_range), &mut err),
        err,
    )
    .unwrap();
}

/// Runs "doubles" over 0..n with `pj_parallel_for_named`; checks that the ranges' results cover
/// 0..n once, in order, with the right sums; returns the pids the ranges ran in.
pub fn for_named_doubles(par: &Par, n: usize) -> Result<Vec<u64>, CError> {
    let mut res = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    check(
        pj_parallel_for_named(par.0, c"doubles".as_ptr(), n, &mut res, &mut err),
        err,
    )?;
    let mut next = 0u64;
    let mut pids = Vec::new();
    for result in results_to_vec(res) {
        let words: Vec<u64> = result
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words.len(), 4);
        assert_eq!(words[0], next, "the ranges are not contiguous and in order");
        assert_eq!(words[2], (words[0]..words[1]).map(|i| 2 * i).sum::<u64>());
        next = words[1];
        pids.push(words[3]);
    }
    assert_eq!(next, n as u64, "the ranges do not cover 0..n");
    Ok(pids)
}

/// The state letter and start time (fields 3 and 22) of /proc/<pid>/stat; `None` when there is no
/// such process.
pub fn process_state(pid: i32) -> Option<(char, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after its end.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((fields.first()?.chars().next()?, fields.get(19)?.to_string()))
}
