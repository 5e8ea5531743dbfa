//! `pj_shared_t`: tasks of every backend write a shared buffer in place; nothing is left behind.

mod common;

use std::ffi::c_void;

use common::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// Task: writes (index + 1) * 3 as a u64 into slot `index` of the table `userdata` points to.
unsafe extern "C" fn fill_slot(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    _: *mut TaskOutput,
) -> i32 {
    // SAFETY: 8-byte arguments; userdata is the shared table, large enough for every index.
    unsafe {
        let index = arg_u64(arg, len) as usize;
        (userdata as *mut u64)
            .add(index)
            .write((index as u64 + 1) * 3);
    }
    0
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn tasks_fill_a_shared_table_on_every_backend_and_leave_no_file() {
    let dir = std::env::temp_dir().join(format!("pj-shared-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for backend in ["processes", "threads", "sequential"] {
        let n = 1_000usize;
        let folder = dir.to_str().unwrap();
        let cfg = config(&[
            ("backend", backend),
            ("n_jobs", "2"),
            ("temp_folder", folder),
        ])
        .unwrap();
        let mut shared = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        check(pj_shared_new(cfg, n * 8, &mut shared, &mut err), err).unwrap();
        assert_eq!(pj_shared_len(shared), n * 8);
        assert_eq!(entries(&dir), 0, "{backend}: the backing file has no name");
        let table = pj_shared_data(shared);
        let mut par = std::ptr::null_mut();
        assert_eq!(
            pj_parallel_new(cfg, &mut par, std::ptr::null_mut()),
            pj_status::Ok
        );
        pj_config_free(cfg);
        let par = Par(par);
        for i in 0..n as u64 {
            par.submit(Some(fill_slot), table.cast(), &i.to_ne_bytes())
                .unwrap();
        }
        par.collect().unwrap();
        // SAFETY: the buffer holds n u64 and lives until pj_shared_free.
        let values = unsafe { std::slice::from_raw_parts(table as *const u64, n) };
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, (i as u64 + 1) * 3, "{backend}: slot {i}");
        }
        drop(par);
        pj_shared_free(shared);
        assert_eq!(entries(&dir), 0, "{backend}");
    }
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn a_missing_folder_is_an_io_error_naming_it() {
    let cfg = config(&[("temp_folder", "/nonexistent/pj-folder")]).unwrap();
    let mut shared = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let e = check(pj_shared_new(cfg, 4096, &mut shared, &mut err), err).unwrap_err();
    pj_config_free(cfg);
    assert_eq!(e.status, pj_status::Io);
    assert!(
        e.message.contains("/nonexistent/pj-folder"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("No such file or directory"),
        "{}",
        e.message
    );
    assert!(shared.is_null(), "no output on failure");
}

#[test]
fn an_explicit_full_folder_is_an_io_error_naming_it() {
    // No folder has room for 2^50 bytes; a folder named by temp_folder is never replaced by
    // another, however full (issue 18 item 6).
    let dir = std::env::temp_dir().join(format!("pj-shared-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(&[("temp_folder", dir.to_str().unwrap())]).unwrap();
    let mut shared = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let e = check(pj_shared_new(cfg, 1 << 50, &mut shared, &mut err), err).unwrap_err();
    pj_config_free(cfg);
    std::fs::remove_dir(&dir).unwrap();
    assert_eq!(e.status, pj_status::Io);
    assert!(
        e.message.starts_with(&format!(
            "temp folder {}: No space left on device",
            dir.display()
        )),
        "{}",
        e.message
    );
    assert!(shared.is_null(), "no output on failure");
}
