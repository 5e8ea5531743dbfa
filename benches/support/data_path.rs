//! The data path's workload (issue 17), shared by `benches/data.rs` (every row, GB/s) and the
//! data section of `benches/compare.rs`: 200 MiB passed as 512 KiB and 4 MiB arguments, read
//! through userdata, and returned as 512 KiB results, on one executor kept for several calls;
//! beside memcpy, rayon and joblib (benches/compare/joblib_bench.py `data`).

use std::ffi::c_void;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;

use super::*;
use pj::ffi::*;
use pj::task::TaskOutput;

/// The caller's bytes, cut in chunks of `chunk` bytes (tasks reach them through userdata).
pub struct Source {
    pub bytes: Vec<u8>,
    pub chunk: usize,
}

impl Source {
    pub fn part(&self, index: usize) -> &[u8] {
        &self.bytes[index * self.chunk..(index + 1) * self.chunk]
    }
}

/// The task work: one byte in 64 read and summed.
pub fn sum64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .step_by(64)
        .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)))
}

/// Task: the sum of one byte in 64 of its chunk, as 8 bytes. The chunk is the argument itself when
/// userdata is NULL, or chunk number `arg` of the `Source` in userdata.
unsafe extern "C" fn read_chunk(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: pj passes `len` readable bytes at `arg`; a non-NULL userdata is a live Source.
    let bytes = unsafe {
        if userdata.is_null() {
            std::slice::from_raw_parts(arg, len)
        } else {
            (*(userdata as *const Source)).part(read_u64(arg, len) as usize)
        }
    };
    set_u64(out, sum64(bytes));
    0
}

/// Task: returns chunk number `arg` of the `Source` in userdata as its result (written in place).
unsafe extern "C" fn return_chunk(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: userdata is a live Source; pj passes 8 readable bytes at `arg`.
    let part = unsafe { (*(userdata as *const Source)).part(read_u64(arg, len) as usize) };
    let dst = pj_out_alloc(out, part.len());
    if dst.is_null() {
        return 1;
    }
    // SAFETY: pj_out_alloc returned `part.len()` writable bytes, apart from `part`.
    unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len()) };
    0
}

/// How a row feeds its tasks.
#[derive(Clone, Copy)]
pub enum Feed {
    /// Each chunk is an argument (copied by pj at submit).
    Args,
    /// Each argument is a chunk number; the task reads the chunk through userdata.
    Userdata,
    /// Each argument is a chunk number; the task returns the chunk as its result.
    Results,
}

/// One call: every chunk submitted, collected and checked; returns the seconds from the first
/// submit to the end of collect (checking and `pj_results_free` are not timed).
pub fn one_call(par: *mut pj_parallel_t, source: &Source, feed: Feed, expected: u64) -> f64 {
    let n = source.bytes.len() / source.chunk;
    let userdata = source as *const Source as *mut c_void;
    let start = Instant::now();
    for i in 0..n {
        let index = (i as u64).to_ne_bytes();
        let (task, userdata, arg): (pj_task_fn, _, &[u8]) = match feed {
            Feed::Args => (Some(read_chunk), std::ptr::null_mut(), source.part(i)),
            Feed::Userdata => (Some(read_chunk), userdata, &index),
            Feed::Results => (Some(return_chunk), userdata, &index),
        };
        let status = pj_parallel_submit(
            par,
            task,
            userdata,
            arg.as_ptr(),
            arg.len(),
            std::ptr::null_mut(),
        );
        assert_eq!(status, pj_status::Ok);
    }
    let mut res = std::ptr::null_mut();
    let status = pj_parallel_collect(par, &mut res, std::ptr::null_mut());
    assert_eq!(status, pj_status::Ok);
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(pj_results_len(res), n);
    match feed {
        Feed::Args | Feed::Userdata => {
            let total = (0..n).fold(0u64, |acc, i| acc.wrapping_add(result_u64(res, i)));
            assert_eq!(total, expected);
        }
        Feed::Results => {
            for i in 0..n {
                let (mut data, mut len) = (std::ptr::null(), 0);
                assert_eq!(pj_results_get(res, i, &mut data, &mut len), pj_status::Ok);
                // SAFETY: pj_results_get gave `len` readable bytes, valid until pj_results_free.
                let got = unsafe { std::slice::from_raw_parts(data, len) };
                assert_eq!(sum64(got), sum64(source.part(i)));
            }
        }
    }
    pj_results_free(res);
    seconds
}

/// The byte pattern of a call's 200 MiB (byte i is i mod 251), so that a wrong chunk or a stale
/// result changes the sums; joblib_bench.py builds the same.
pub fn pattern(total: usize) -> Vec<u8> {
    (0..total).map(|i| (i % 251) as u8).collect()
}

/// A row's name and its seconds per call (call 1 first), or why it has none.
pub type Timed = (String, Result<Vec<f64>, String>);

/// The baselines: the bytes copied once into memory touched before (reused) and into a fresh
/// allocation, and rayon summing the 512 KiB chunks on 2 threads.
pub fn baseline_rows(source: &Source, calls: usize) -> Vec<Timed> {
    let total = source.bytes.len();
    let mut dst = vec![0u8; total];
    let reused: Vec<f64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(&source.bytes);
            std::hint::black_box(&dst);
            start.elapsed().as_secs_f64()
        })
        .collect();
    drop(dst);
    let fresh: Vec<f64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            let copy = std::hint::black_box(source.bytes.to_vec());
            let seconds = start.elapsed().as_secs_f64();
            drop(copy);
            seconds
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let expected512 = source.bytes.chunks(512 << 10).map(sum64).sum::<u64>();
    let rayon: Vec<f64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            let sum: u64 = pool.install(|| source.bytes.par_chunks(512 << 10).map(sum64).sum());
            let seconds = start.elapsed().as_secs_f64();
            assert_eq!(sum, expected512);
            seconds
        })
        .collect();
    vec![
        ("memcpy into a reused buffer".into(), Ok(reused)),
        ("memcpy into a fresh allocation".into(), Ok(fresh)),
        ("rayon, 2 threads, 512 KiB chunks".into(), Ok(rayon)),
    ]
}

/// The backends of the pj rows, with their options.
pub const BACKENDS: [(&str, &[(&str, &str)]); 3] = [
    ("threads", &[("backend", "threads"), ("n_jobs", "2")]),
    ("sequential", &[("backend", "sequential")]),
    ("processes", &[("backend", "processes"), ("n_jobs", "2")]),
];

/// The pj rows of `backend`: each case on one executor (keep_workers) for `calls` calls.
/// `with_userdata` adds the userdata row (the same bytes, no copy).
pub fn pj_rows(
    source: &mut Source,
    calls: usize,
    backend: &str,
    options: &[(&str, &str)],
    with_userdata: bool,
) -> Vec<Timed> {
    let mut cases = vec![
        ("512 KiB args", 512 << 10, Feed::Args),
        ("4 MiB args", 4 << 20, Feed::Args),
        ("userdata, 512 KiB chunks", 512 << 10, Feed::Userdata),
        ("512 KiB results", 512 << 10, Feed::Results),
    ];
    if !with_userdata {
        cases.remove(2);
    }
    let mut rows = Vec::new();
    for (what, chunk, feed) in cases {
        source.chunk = chunk;
        let expected = source.bytes.chunks(chunk).map(sum64).sum::<u64>();
        let par = new_parallel(&[options, &[("keep_workers", "true")]].concat());
        let seconds: Vec<f64> = (0..calls)
            .map(|_| one_call(par, source, feed, expected))
            .collect();
        pj_parallel_free(par);
        let how = match (backend, chunk, feed) {
            ("processes", c, Feed::Args) if c > 1 << 20 => ", memmapped (above max_nbytes)",
            ("processes", _, Feed::Args | Feed::Results) => ", socket (below max_nbytes)",
            _ => "",
        };
        rows.push((format!("{backend}, {what}{how}"), Ok(seconds)));
    }
    rows
}

/// joblib's rows: the variant's name in joblib_bench.py's output, and the row's name.
pub const JOBLIB_ROWS: [(&str, &str); 4] = [
    ("args512", "joblib, 512 KiB ndarray args (pickled)"),
    (
        "args4m",
        "joblib, 4 MiB ndarray args, memmapped (max_nbytes 1M)",
    ),
    (
        "args4m_nomemmap",
        "joblib, 4 MiB ndarray args, memmapping off (pickled)",
    ),
    ("results512", "joblib, 512 KiB ndarray results (pickled)"),
];

/// joblib's rows: joblib_bench.py `data` run by `python` (n_jobs=2, numpy arrays, one Parallel
/// kept for the calls of each row). Every row says why when joblib or numpy is missing.
pub fn joblib_rows(python: &str, script: &Path, total: usize, calls: usize) -> Vec<Timed> {
    let output = Command::new(python)
        .arg(script)
        .args(["data", &total.to_string(), &calls.to_string()])
        .output();
    let stdout = match &output {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{python} {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(format!("{python}: {e}")),
    };
    JOBLIB_ROWS
        .iter()
        .map(|&(key, name)| {
            let seconds = stdout.clone().and_then(|out| {
                let line = out
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some(key))
                    .or_else(|| out.lines().find(|l| l.starts_with(&format!("skip {key} "))));
                match line {
                    Some(l) if l.starts_with("skip ") => Err(l[5 + key.len()..].trim().to_string()),
                    Some(l) => l
                        .split_whitespace()
                        .skip(1)
                        .map(|t| t.parse::<f64>().map_err(|e| e.to_string()))
                        .collect(),
                    None => Err(format!("no {key} line from joblib_bench.py")),
                }
            });
            (name.to_string(), seconds)
        })
        .collect()
}
