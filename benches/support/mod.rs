//! Helpers shared by the benches: an executor from string options, the trivial x*2 task, its
//! producer, and timed runs of 0..n through submit/collect and through map.
#![allow(dead_code)] // each bench uses its own subset

pub mod data_path;

use std::ffi::{CString, c_void};
use std::time::Instant;

use pj::ffi::*;
use pj::task::TaskOutput;

/// An executor built from joblib-style string options; panics on any error.
pub fn new_parallel(options: &[(&str, &str)]) -> *mut pj_parallel_t {
    let mut cfg = std::ptr::null_mut();
    assert_eq!(pj_config_new(&mut cfg), pj_status::Ok);
    for (k, v) in options {
        let (k, v) = (CString::new(*k).unwrap(), CString::new(*v).unwrap());
        assert_eq!(
            pj_config_set(cfg, k.as_ptr(), v.as_ptr(), std::ptr::null_mut()),
            pj_status::Ok
        );
    }
    let mut par = std::ptr::null_mut();
    assert_eq!(
        pj_parallel_new(cfg, &mut par, std::ptr::null_mut()),
        pj_status::Ok
    );
    pj_config_free(cfg);
    par
}

pub fn read_u64(data: *const u8, len: usize) -> u64 {
    // SAFETY: callers pass a view of `len` readable bytes (a task argument or a result).
    u64::from_ne_bytes(
        unsafe { std::slice::from_raw_parts(data, len) }
            .try_into()
            .expect("8 bytes"),
    )
}

pub fn result_u64(res: *mut pj_results_t, index: usize) -> u64 {
    let (mut data, mut len) = (std::ptr::null(), 0);
    assert_eq!(
        pj_results_get(res, index, &mut data, &mut len),
        pj_status::Ok
    );
    read_u64(data, len)
}

pub fn set_u64(out: *mut TaskOutput, value: u64) {
    let bytes = value.to_ne_bytes();
    pj_out_set(out, bytes.as_ptr(), bytes.len());
}

/// Submits `task` on the 8-byte arguments `args` and collects the results.
pub fn submit_all(
    par: *mut pj_parallel_t,
    task: pj_task_fn,
    userdata: *mut c_void,
    args: impl Iterator<Item = u64>,
) -> *mut pj_results_t {
    for x in args {
        let arg = x.to_ne_bytes();
        let status = pj_parallel_submit(par, task, userdata, arg.as_ptr(), 8, std::ptr::null_mut());
        assert_eq!(status, pj_status::Ok);
    }
    let mut res = std::ptr::null_mut();
    assert_eq!(
        pj_parallel_collect(par, &mut res, std::ptr::null_mut()),
        pj_status::Ok
    );
    res
}

/// Task: 2 * x.
pub unsafe extern "C" fn double(
    _: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    set_u64(out, 2 * read_u64(arg, len));
    0
}

pub struct Counter {
    pub next: u64,
    pub end: u64,
    pub buf: [u8; 8],
}

/// Producer for `pj_parallel_map`: the arguments next..end.
pub unsafe extern "C" fn produce(
    userdata: *mut c_void,
    arg: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: userdata is a live Counter; pj passes valid output pointers.
    let (c, arg, len) = unsafe { (&mut *(userdata as *mut Counter), &mut *arg, &mut *len) };
    if c.next == c.end {
        return 0;
    }
    c.buf = c.next.to_ne_bytes();
    c.next += 1;
    *arg = c.buf.as_ptr();
    *len = 8;
    1
}

pub fn check_doubles(res: *mut pj_results_t, n: u64) {
    assert_eq!(pj_results_len(res), n as usize);
    assert_eq!(result_u64(res, (n - 1) as usize), 2 * (n - 1));
    pj_results_free(res);
}

/// Seconds to submit x*2 on 0..n and collect the checked results.
pub fn pj_submit_trivial(par: *mut pj_parallel_t, n: u64) -> f64 {
    let start = Instant::now();
    let res = submit_all(par, Some(double), std::ptr::null_mut(), 0..n);
    let seconds = start.elapsed().as_secs_f64();
    check_doubles(res, n);
    seconds
}

/// Seconds to run x*2 on 0..n through `pj_parallel_map` and a producer, results checked.
pub fn pj_map_trivial(par: *mut pj_parallel_t, n: u64) -> f64 {
    let mut counter = Counter {
        next: 0,
        end: n,
        buf: [0; 8],
    };
    let start = Instant::now();
    let mut res = std::ptr::null_mut();
    let status = pj_parallel_map(
        par,
        Some(double),
        std::ptr::null_mut(),
        Some(produce),
        &mut counter as *mut Counter as *mut c_void,
        &mut res,
        std::ptr::null_mut(),
    );
    assert_eq!(status, pj_status::Ok);
    let seconds = start.elapsed().as_secs_f64();
    check_doubles(res, n);
    seconds
}
