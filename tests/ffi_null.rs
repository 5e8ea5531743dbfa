//! Every pointer parameter of every exported function, given NULL: a status (or the documented
//! neutral value), never a crash, and no output written.

mod common;

use std::ffi::c_void;
use std::ptr::{null, null_mut};

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

unsafe extern "C" fn noop(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
    0
}

unsafe extern "C" fn empty_producer(_: *mut c_void, _: *mut *const u8, _: *mut usize) -> i32 {
    0
}

/// A producer that hands out (NULL, 8): an item without bytes.
unsafe extern "C" fn null_item_producer(
    _: *mut c_void,
    arg: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: pj passes valid output pointers.
    unsafe {
        *arg = null();
        *len = 8;
    }
    1
}

const SENTINEL: usize = 0xdead_beef;

fn expect_null_argument(status: pj_status, err: *mut pj_error_t, what: &str) {
    assert_eq!(status, pj_status::NullArgument, "{what}");
    let e = take_error(status, err);
    assert!(e.message.contains("NULL"), "{what}: {}", e.message);
}

#[test]
fn config_functions() {
    assert_eq!(pj_config_new(null_mut()), pj_status::NullArgument);
    pj_config_free(null_mut());

    let cfg = config(&[]).unwrap();
    let mut err = null_mut();
    expect_null_argument(
        pj_config_set(null_mut(), c"n_jobs".as_ptr(), c"2".as_ptr(), &mut err),
        err,
        "set cfg",
    );
    let mut err = null_mut();
    expect_null_argument(
        pj_config_set(cfg, null(), c"2".as_ptr(), &mut err),
        err,
        "set key",
    );
    let mut err = null_mut();
    expect_null_argument(
        pj_config_set(cfg, c"n_jobs".as_ptr(), null(), &mut err),
        err,
        "set value",
    );
    // error_out itself may be NULL.
    assert_eq!(
        pj_config_set(cfg, null(), null(), null_mut()),
        pj_status::NullArgument
    );

    for status in [
        pj_config_set_n_jobs(null_mut(), 2, null_mut()),
        pj_config_set_backend(null_mut(), c"threads".as_ptr(), null_mut()),
        pj_config_set_backend(cfg, null(), null_mut()),
        pj_config_set_batch_size(null_mut(), 2, null_mut()),
        pj_config_set_verbose(null_mut(), 2, null_mut()),
        pj_config_set_timeout(null_mut(), 2.0, null_mut()),
        pj_config_set_stack_size(null_mut(), 1 << 20, null_mut()),
        pj_config_set_max_tasks_per_child(null_mut(), 10, null_mut()),
        pj_config_set_worker_memory_limit(null_mut(), 1 << 30, null_mut()),
        pj_config_set_idle_worker_timeout(null_mut(), 1.0, null_mut()),
    ] {
        assert_eq!(status, pj_status::NullArgument);
    }
    assert_eq!(pj_effective_n_jobs(null()), 1, "NULL config means defaults");
    pj_config_free(cfg);
}

#[test]
fn parallel_functions() {
    let mut par_out = SENTINEL as *mut pj_parallel_t;
    let mut err = null_mut();
    expect_null_argument(
        pj_parallel_new(null(), null_mut(), &mut err),
        err,
        "new out",
    );
    assert_eq!(
        pj_parallel_new(null(), &mut par_out, null_mut()),
        pj_status::Ok,
        "NULL config means defaults"
    );
    let par = Par(par_out);
    pj_parallel_free(null_mut());
    assert_eq!(pj_parallel_cancel(null()), pj_status::NullArgument);
    // The MPI entry points: a NULL table is refused; detaching without a table does nothing.
    let mut err = std::ptr::null_mut();
    assert_eq!(pj_mpi_attach(null(), &mut err), pj_status::NullArgument);
    pj_error_free(err);
    assert_eq!(pj_mpi_serve(null()), 2);
    assert_eq!(pj_mpi_detach(), 0);

    let mut err = null_mut();
    expect_null_argument(
        pj_parallel_submit(null_mut(), Some(noop), null_mut(), null(), 0, &mut err),
        err,
        "submit par",
    );
    let mut err = null_mut();
    expect_null_argument(
        pj_parallel_submit(par.0, None, null_mut(), null(), 0, &mut err),
        err,
        "submit fn",
    );
    let mut err = null_mut();
    expect_null_argument(
        pj_parallel_submit(par.0, Some(noop), null_mut(), null(), 8, &mut err),
        err,
        "submit arg",
    );
    // NULL userdata and (NULL, 0) arguments are fine.
    assert_eq!(
        pj_parallel_submit(par.0, Some(noop), null_mut(), null(), 0, null_mut()),
        pj_status::Ok
    );

    let mut res = SENTINEL as *mut pj_results_t;
    let mut err = null_mut();
    expect_null_argument(
        pj_parallel_collect(null_mut(), &mut res, &mut err),
        err,
        "collect par",
    );
    let mut err = null_mut();
    expect_null_argument(
        pj_parallel_collect(par.0, null_mut(), &mut err),
        err,
        "collect out",
    );
    assert_eq!(res as usize, SENTINEL, "no output on failure");
    assert_eq!(
        results_to_vec(unwrap_results(
            pj_parallel_collect(par.0, &mut res, null_mut()),
            res
        ))
        .len(),
        1
    );

    let mut res = SENTINEL as *mut pj_results_t;
    let cases: [(&str, pj_status); 4] = [
        (
            "map par",
            pj_parallel_map(
                null_mut(),
                Some(noop),
                null_mut(),
                Some(empty_producer),
                null_mut(),
                &mut res,
                null_mut(),
            ),
        ),
        (
            "map fn",
            pj_parallel_map(
                par.0,
                None,
                null_mut(),
                Some(empty_producer),
                null_mut(),
                &mut res,
                null_mut(),
            ),
        ),
        (
            "map producer",
            pj_parallel_map(
                par.0,
                Some(noop),
                null_mut(),
                None,
                null_mut(),
                &mut res,
                null_mut(),
            ),
        ),
        (
            "map out",
            pj_parallel_map(
                par.0,
                Some(noop),
                null_mut(),
                Some(empty_producer),
                null_mut(),
                null_mut(),
                null_mut(),
            ),
        ),
    ];
    for (what, status) in cases {
        assert_eq!(status, pj_status::NullArgument, "{what}");
    }
    let mut err = null_mut();
    let status = pj_parallel_map(
        par.0,
        Some(noop),
        null_mut(),
        Some(null_item_producer),
        null_mut(),
        &mut res,
        &mut err,
    );
    expect_null_argument(status, err, "producer item");
    assert_eq!(res as usize, SENTINEL, "no output on failure");
}

fn unwrap_results(status: pj_status, res: *mut pj_results_t) -> *mut pj_results_t {
    assert_eq!(status, pj_status::Ok);
    res
}

#[test]
fn output_functions() {
    assert_eq!(pj_out_set(null_mut(), null(), 0), pj_status::NullArgument);
    assert!(pj_out_alloc(null_mut(), 8).is_null());
    assert_eq!(pj_out_truncate(null_mut(), 0), pj_status::NullArgument);
    assert_eq!(
        pj_out_error(null_mut(), c"x".as_ptr()),
        pj_status::NullArgument
    );

    unsafe extern "C" fn misuse(
        _: *mut c_void,
        _: *const u8,
        _: usize,
        out: *mut TaskOutput,
    ) -> i32 {
        let a = pj_out_set(out, null(), 4) == pj_status::NullArgument;
        let b = pj_out_error(out, null()) == pj_status::NullArgument;
        let c = pj_out_set(out, null(), 0) == pj_status::Ok;
        let d = !pj_out_alloc(out, 0).is_null();
        let ok = [a as u8, b as u8, c as u8, d as u8];
        pj_out_set(out, ok.as_ptr(), ok.len());
        0
    }
    let par = parallel(&[("n_jobs", "2")]).unwrap();
    par.submit(Some(misuse), null_mut(), &[]).unwrap();
    assert_eq!(par.collect().unwrap(), vec![vec![1, 1, 1, 1]]);
}

#[test]
fn results_and_error_functions() {
    assert_eq!(pj_results_len(null()), 0);
    let (mut data, mut len) = (SENTINEL as *const u8, SENTINEL);
    assert_eq!(
        pj_results_get(null(), 0, &mut data, &mut len),
        pj_status::NullArgument
    );
    pj_results_free(null_mut());

    let par = parallel(&[]).unwrap();
    par.submit(Some(noop), null_mut(), &[]).unwrap();
    let mut res = null_mut();
    assert_eq!(
        pj_parallel_collect(par.0, &mut res, null_mut()),
        pj_status::Ok
    );
    assert_eq!(
        pj_results_get(res, 0, null_mut(), &mut len),
        pj_status::NullArgument
    );
    assert_eq!(
        pj_results_get(res, 0, &mut data, null_mut()),
        pj_status::NullArgument
    );
    assert_eq!(
        pj_results_get(res, 1, &mut data, &mut len),
        pj_status::InvalidArgument
    );
    assert_eq!(
        (data as usize, len),
        (SENTINEL, SENTINEL),
        "no output on failure"
    );
    assert_eq!(pj_results_get(res, 0, &mut data, &mut len), pj_status::Ok);
    assert_eq!(len, 0);
    assert!(!data.is_null());
    assert_eq!(pj_results_status(res, 0), pj_status::Ok);
    assert_eq!(pj_results_status(res, 1), pj_status::InvalidArgument);
    assert_eq!(pj_results_status(null(), 0), pj_status::NullArgument);
    assert!(pj_results_error(res, 0).is_null());
    assert!(pj_results_error(null(), 0).is_null());
    assert_eq!(pj_results_error_count(res), 0);
    assert_eq!(pj_results_error_count(null()), 0);
    pj_results_free(res);

    assert_eq!(pj_error_status(null()), pj_status::NullArgument);
    // SAFETY: the NULL-error getters return static empty strings.
    unsafe {
        assert_eq!(*pj_error_message(null()), 0);
        assert_eq!(*pj_error_report(null()), 0);
    }
    assert_eq!(pj_error_task_index(null()), -1);
    assert_eq!(pj_error_callback_code(null()), 0);
    assert!(pj_error_callback_message(null()).is_null());
    pj_error_free(null_mut());
}

#[test]
fn shared_buffer_functions() {
    let mut err = null_mut();
    expect_null_argument(
        pj_shared_new(null(), 16, null_mut(), &mut err),
        err,
        "shared_out",
    );
    assert!(pj_shared_data(null()).is_null());
    assert_eq!(pj_shared_len(null()), 0);
    pj_shared_free(null_mut());
    let mut shared = null_mut();
    assert_eq!(
        pj_shared_new(null(), 0, &mut shared, null_mut()),
        pj_status::Ok
    );
    assert!(!pj_shared_data(shared).is_null());
    assert_eq!(pj_shared_len(shared), 0);
    pj_shared_free(shared);
}
