//! pj side by side with its peers, on the same workloads, in one run on one machine.
//!
//! Run: `cargo bench --bench compare`. Columns: pj (threads, processes, sequential) through the C
//! ABI, a plain serial loop, rayon, OpenMP (benches/compare/omp.c, built here with
//! `gcc -O2 -fopenmp` into target/) and joblib (benches/compare/joblib_bench.py, run with python3);
//! for (a) also the C++ wrapper's `pj::Parallel::map` (benches/compare/cpp_map.cpp, built with
//! `g++ -O2 -std=c++17` against this build's libpj.so) and the Go wrapper's `pj.Map`
//! (`BenchmarkCompareMap` of bindings/go, run with `go test -bench`; bench runs only, as it needs
//! target/release/libpj.so). A column whose tool is missing is skipped with the reason. Workloads:
//!
//! - (a) 1,000,000 trivial tasks (x*2 on 8 bytes), through `pj_parallel_submit` and through
//!   `pj_parallel_map`; joblib gets 100,000 (it needs microseconds per item): ns per item;
//! - (b) 2,000 CPU-bound tasks of about 1 ms (a calibrated spin loop): wall time and speedup;
//! - (c) a 200 MB buffer, filled before the call, summed by 2 tasks of one half each: wall time;
//! - (d) cold first call: create an executor, run 2 trivial tasks, free it: wall time;
//! - (e) the data path (issue 17; `benches/data.rs` prints every row with GB/s): 200 MiB per call
//!   as 512 KiB and 4 MiB arguments and as 512 KiB results, one executor kept for 6 calls: ms per
//!   call over calls 2-6, beside memcpy, rayon and joblib passing numpy arrays.
//!
//! Each cell is the median of at least 5 runs with the min–max, and pj rows give pj/peer ratios
//! of the medians. The table (with the targets marked met or not) goes to stdout and, as
//! markdown, to target/compare.md. Asserts nothing about time (the machines are shared and noisy).
//!
//! Under `cargo test --benches` / `--all-targets` (no `--bench` argument) it runs a smoke version:
//! the same code paths on tiny inputs, 1 run each, written to target/compare-smoke.md.
//!
//! `cargo bench --bench compare -- a c` runs only workloads (a) and (c) (into
//! target/compare-partial.md), e.g. to profile one of them.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod support;

use pj::ffi::*;
use pj::task::TaskOutput;
use rayon::prelude::*;
use support::*;

// ---------------------------------------------------------------------------------------------
// Sizes

struct Plan {
    bench: bool,
    /// (a): items for pj, the serial loop, rayon and OpenMP; items for joblib; runs.
    trivial_items: u64,
    joblib_items: u64,
    trivial_runs: usize,
    /// (b): tasks of about 1 ms; runs.
    cpu_tasks: u64,
    cpu_runs: usize,
    /// (c): buffer size; runs.
    buffer_bytes: usize,
    buffer_runs: usize,
    /// (d): runs in process (pj, rayon) and runs of fresh processes (OpenMP, joblib).
    cold_runs: usize,
    cold_runs_joblib: usize,
    /// (e): bytes per call; calls of one executor (the first is not counted).
    data_bytes: usize,
    data_calls: usize,
}

impl Plan {
    fn new(bench: bool) -> Plan {
        if bench {
            Plan {
                bench,
                trivial_items: 1_000_000,
                joblib_items: 100_000,
                trivial_runs: 7,
                cpu_tasks: 2_000,
                cpu_runs: 5,
                buffer_bytes: 200_000_000,
                buffer_runs: 9,
                cold_runs: 21,
                cold_runs_joblib: 7,
                data_bytes: 200 << 20,
                data_calls: 6,
            }
        } else {
            Plan {
                bench,
                trivial_items: 2_000,
                joblib_items: 200,
                trivial_runs: 1,
                cpu_tasks: 10,
                cpu_runs: 1,
                buffer_bytes: 2_000_000,
                buffer_runs: 1,
                cold_runs: 1,
                cold_runs_joblib: 1,
                data_bytes: 8 << 20,
                data_calls: 2,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table

#[derive(Clone, Copy, PartialEq, Debug)]
enum Peer {
    Serial,
    Rayon,
    OpenMp,
    Joblib,
}

const PEERS: [(Peer, &str); 4] = [
    (Peer::Serial, "pj/serial"),
    (Peer::Rayon, "pj/rayon"),
    (Peer::OpenMp, "pj/OpenMP"),
    (Peer::Joblib, "pj/joblib"),
];

/// A target from issue 10, judged on a row's median.
#[derive(Clone, Copy)]
enum Target {
    /// The median is at most this many units.
    AtMost(f64),
    /// The ratio pj/peer is at most this.
    RatioAtMost(Peer, f64),
    /// The speedup over the serial loop is at least this.
    SpeedupAtLeast(f64),
}

#[derive(Default)]
struct Row {
    name: String,
    /// A pj row: gets pj/peer ratios (and maybe a target).
    pj: bool,
    /// The reference row of this peer in its section.
    peer: Option<Peer>,
    /// Samples, in the section's unit.
    samples: Vec<f64>,
    /// Why the row has no samples.
    skip: Option<String>,
    /// (b): the median of the serial baseline in the row's own language.
    speedup_base: Option<f64>,
    target: Option<Target>,
}

impl Row {
    fn pj(name: &str, samples: Vec<f64>) -> Row {
        Row {
            name: name.to_string(),
            pj: true,
            samples,
            ..Row::default()
        }
    }

    fn other(name: &str, result: Result<Vec<f64>, String>) -> Row {
        let (samples, skip) = match result {
            Ok(samples) => (samples, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        Row {
            name: name.to_string(),
            samples,
            skip,
            ..Row::default()
        }
    }

    /// A row of a language wrapper of pj (pj/peer ratios), or why it is skipped.
    fn wrapper(name: &str, result: Result<Vec<f64>, String>) -> Row {
        Row {
            pj: true,
            ..Row::other(name, result)
        }
    }

    fn peer(mut self, peer: Peer) -> Row {
        self.peer = Some(peer);
        self
    }

    fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    fn median(&self) -> Option<f64> {
        median(&self.samples).map(|m| m.0)
    }
}

struct Section {
    title: String,
    unit: &'static str,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Section {
    fn peer_median(&self, peer: Peer) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.peer == Some(peer))
            .and_then(Row::median)
    }
}

/// (median, min, max).
fn median(xs: &[f64]) -> Option<(f64, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    Some((xs[xs.len() / 2], xs[0], xs[xs.len() - 1]))
}

/// 1000000 as "1,000,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Three significant digits.
fn num(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.decimals$}")
}

struct Verdict {
    /// "≤ 100 ns/item: met".
    text: String,
    /// The measured figure, e.g. "152 ns/item".
    figure: String,
    met: bool,
}

fn judge(section: &Section, row: &Row) -> Option<Verdict> {
    let target = row.target?;
    let m = row.median()?;
    let (wanted, value, met) = match target {
        Target::AtMost(limit) => (
            format!("≤ {} {}", num(limit), section.unit),
            format!("{} {}", num(m), section.unit),
            m <= limit,
        ),
        Target::RatioAtMost(peer, limit) => {
            let r = m / section.peer_median(peer)?;
            let name = PEERS.iter().find(|p| p.0 == peer).unwrap().1;
            (
                format!("{name} ≤ {}", num(limit)),
                format!("{name} = {}", num(r)),
                r <= limit,
            )
        }
        Target::SpeedupAtLeast(limit) => {
            let s = row.speedup_base? / m;
            (
                format!("speedup ≥ {}x", num(limit)),
                format!("{}x", num(s)),
                s >= limit,
            )
        }
    };
    Some(Verdict {
        text: format!("{wanted}: {}", if met { "met" } else { "**not met**" }),
        figure: format!("{value}, target {wanted}"),
        met,
    })
}

fn render(sections: &[Section], header: &str) -> String {
    let mut md = String::new();
    md.push_str(header);
    md.push('\n');
    md.push_str("| workload / implementation | median | min–max | speedup |");
    for (_, name) in PEERS {
        let _ = write!(md, " {name} |");
    }
    md.push_str(" target |\n|---|--:|--:|--:|");
    for _ in PEERS {
        md.push_str("--:|");
    }
    md.push_str("---|\n");
    let mut verdicts = Vec::new();
    for section in sections {
        let _ = writeln!(
            md,
            "| **{}** ({}) | | | |{} |",
            section.title,
            section.unit,
            " |".repeat(PEERS.len())
        );
        for row in &section.rows {
            let Some((m, lo, hi)) = median(&row.samples) else {
                let _ = writeln!(
                    md,
                    "| {} | skipped: {} | | |{} |",
                    row.name,
                    row.skip.as_deref().unwrap_or("no samples"),
                    " |".repeat(PEERS.len())
                );
                continue;
            };
            let speedup = row
                .speedup_base
                .map(|b| format!("{}x", num(b / m)))
                .unwrap_or_default();
            let _ = write!(
                md,
                "| {} | {} | {}–{} | {} |",
                row.name,
                num(m),
                num(lo),
                num(hi),
                speedup
            );
            for (peer, _) in PEERS {
                let cell = match (row.pj, section.peer_median(peer)) {
                    (true, Some(p)) => num(m / p),
                    _ => String::new(),
                };
                let _ = write!(md, " {cell} |");
            }
            let verdict = judge(section, row);
            let _ = writeln!(
                md,
                " {} |",
                verdict.as_ref().map(|v| v.text.as_str()).unwrap_or("")
            );
            if let Some(v) = verdict {
                verdicts.push((format!("{}: {}", section.title, row.name), v));
            }
        }
    }
    let met = verdicts.iter().filter(|v| v.1.met).count();
    let _ = writeln!(md, "\nTargets met: {met} of {}.", verdicts.len());
    for (what, v) in &verdicts {
        if !v.met {
            let _ = writeln!(md, "- not met: {what}: {}", v.figure);
        }
    }
    md.push_str("\nNotes:\n");
    for section in sections {
        for note in &section.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}

// ---------------------------------------------------------------------------------------------
// pj through the C ABI

/// The pj configurations compared: (row label, options).
const PJ_BACKENDS: [(&str, &[(&str, &str)]); 3] = [
    ("threads", &[("backend", "threads"), ("n_jobs", "2")]),
    ("processes", &[("backend", "processes"), ("n_jobs", "2")]),
    ("sequential", &[("backend", "sequential")]),
];

fn with_options<'a>(
    base: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.iter().chain(extra).copied().collect()
}

/// (a) through `pj_parallel_for`: out[i] = 2 * input[i] for ranges of indices; the output is a
/// fresh Vec (threads, sequential) or a fresh `pj_shared_t` (processes) per run, as rayon's
/// collect allocates its Vec. Returns seconds.
fn pj_for_trivial(par: *mut pj_parallel_t, n: u64, shared_output: bool) -> f64 {
    struct Job {
        input: *const u64,
        output: *mut u64,
    }
    unsafe extern "C" fn double_range(
        userdata: *mut c_void,
        start: usize,
        end: usize,
        _: *mut TaskOutput,
    ) -> i32 {
        // SAFETY: userdata is a live Job over n items; ranges are disjoint and within 0..n.
        unsafe {
            let job = &*(userdata as *const Job);
            let input = std::slice::from_raw_parts(job.input.add(start), end - start);
            let output = std::slice::from_raw_parts_mut(job.output.add(start), end - start);
            for (o, &x) in output.iter_mut().zip(input) {
                *o = x * 2;
            }
        }
        0
    }
    let input: Vec<u64> = (0..n).collect();
    let n = n as usize;
    let start = Instant::now();
    let (mut vec_output, mut shared) = (Vec::new(), std::ptr::null_mut());
    let output: *mut u64 = if shared_output {
        let status = pj_shared_new(std::ptr::null(), n * 8, &mut shared, std::ptr::null_mut());
        assert_eq!(status, pj_status::Ok);
        pj_shared_data(shared).cast()
    } else {
        vec_output = Vec::<u64>::with_capacity(n);
        vec_output.as_mut_ptr()
    };
    let job = Job {
        input: input.as_ptr(),
        output,
    };
    let userdata = &job as *const Job as *mut c_void;
    let status = pj_parallel_for(par, n, Some(double_range), userdata, std::ptr::null_mut());
    assert_eq!(status, pj_status::Ok);
    if !shared_output {
        // SAFETY: every index below n was written by exactly one range.
        unsafe { vec_output.set_len(n) };
    }
    let elapsed = start.elapsed().as_secs_f64();
    // SAFETY: the output holds n u64, all written.
    let written = unsafe { std::slice::from_raw_parts(output, n) };
    assert!(written.iter().zip(&input).all(|(&o, &x)| o == 2 * x));
    pj_shared_free(shared);
    elapsed
}

/// The CPU-bound work: a chain of dependent multiply-adds (the same loop as omp.c and, in Python,
/// joblib_bench.py). The empty asm statement (omp.c has the same) keeps the compiler from
/// reassociating or vectorising the chain, so both compilers run one multiply-add per iteration.
#[inline(never)]
fn spin(iters: u64, seed: u64) -> u64 {
    let mut x = seed;
    for i in 0..iters {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        // SAFETY: an empty instruction sequence that claims to read and write `x` in a register;
        // it touches no memory, stack or flags.
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) x, options(nomem, nostack, preserves_flags))
        };
    }
    x
}

/// Task: spin(*userdata iterations, seed x).
unsafe extern "C" fn spin_task(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: userdata is the bench's iteration count, alive for the call (and copied by fork).
    let iters = unsafe { *(userdata as *const u64) };
    set_u64(out, spin(iters, read_u64(arg, len)));
    0
}

/// Iterations of `spin` that take about 1 ms here (from the fastest of several measurements).
fn calibrate_spin() -> u64 {
    let mut iters = 1_000u64;
    while time(|| spin(iters, 1)) < 0.01 {
        iters *= 2;
    }
    let best = (0..5)
        .map(|_| time(|| spin(iters, 1)))
        .fold(f64::INFINITY, f64::min);
    ((iters as f64) * 1e-3 / best).max(1.0) as u64
}

struct Buffer {
    data: *const u8,
    len: usize,
}

/// The sum of the bytes, in 16-bit partial sums of 256 bytes (255 * 256 < 65536), which compilers
/// vectorise well (omp.c has the same loop), so the sum runs near memory speed.
fn sum_bytes(bytes: &[u8]) -> u64 {
    bytes
        .chunks(256)
        .map(|c| c.iter().map(|&b| b as u16).sum::<u16>() as u64)
        .sum()
}

fn halves(buf: &[u8]) -> (&[u8], &[u8]) {
    buf.split_at(buf.len() / 2)
}

/// Task: the sum of the bytes of half x (0 or 1) of the Buffer in userdata.
unsafe extern "C" fn sum_task(
    userdata: *mut c_void,
    arg: *const u8,
    len: usize,
    out: *mut TaskOutput,
) -> i32 {
    // SAFETY: userdata is the bench's Buffer, whose bytes live (and, in forked workers, are mapped
    // copy-on-write) for the whole call.
    let buf = unsafe {
        let b = &*(userdata as *const Buffer);
        std::slice::from_raw_parts(b.data, b.len)
    };
    let (lo, hi) = halves(buf);
    set_u64(
        out,
        sum_bytes(if read_u64(arg, len) == 0 { lo } else { hi }),
    );
    0
}

fn time<T>(f: impl FnOnce() -> T) -> f64 {
    let start = Instant::now();
    black_box(f());
    start.elapsed().as_secs_f64()
}

fn scaled(seconds: Vec<f64>, factor: f64) -> Vec<f64> {
    seconds.into_iter().map(|s| s * factor).collect()
}

// ---------------------------------------------------------------------------------------------
// The helper programs

struct Helpers {
    omp: Result<PathBuf, String>,
    joblib: Result<PathBuf, String>,
    cpp: Result<PathBuf, String>,
    go: Result<PathBuf, String>,
    manifest: PathBuf,
}

impl Helpers {
    fn find(target_dir: &Path, bench: bool) -> Helpers {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let omp = build_omp(&manifest.join("benches/compare/omp.c"), target_dir);
        if let Err(reason) = &omp {
            println!("OpenMP column skipped: {reason}");
        }
        let cpp = build_cpp(&manifest, target_dir);
        if let Err(reason) = &cpp {
            println!("C++ rows skipped: {reason}");
        }
        let go = find_go(&manifest, bench);
        if let Err(reason) = &go {
            println!("Go row skipped: {reason}");
        }
        let joblib = match Command::new("python3")
            .args(["-c", "import joblib"])
            .output()
        {
            Ok(o) if o.status.success() => Ok(manifest.join("benches/compare/joblib_bench.py")),
            Ok(_) => Err("joblib not installed: pip install joblib".to_string()),
            Err(_) => {
                Err("joblib not installed: pip install joblib (python3 not found)".to_string())
            }
        };
        if let Err(reason) = &joblib {
            println!("{reason}");
        }
        Helpers {
            omp,
            joblib,
            cpp,
            go,
            manifest,
        }
    }

    /// Runs the C++ program; gives its lines as (name, seconds of each run).
    fn cpp(&self, args: &[String]) -> Result<Output, String> {
        let bin = self.cpp.as_ref().map_err(Clone::clone)?;
        run_helper(Command::new(bin).args(args))
    }

    /// Runs `BenchmarkCompareMap` of bindings/go `runs` times (one map of `n` inputs each); gives
    /// nanoseconds per input of each run.
    fn go_map(&self, n: u64, runs: usize) -> Result<Vec<f64>, String> {
        let dir = self.go.as_ref().map_err(Clone::clone)?;
        let out = Command::new("go")
            .args([
                "test",
                "-run",
                "^$",
                "-bench",
                "^BenchmarkCompareMap$",
                "-benchtime=1x",
            ])
            .arg(format!("-count={runs}"))
            .env("GOTOOLCHAIN", "local")
            .env("PJ_COMPARE_ITEMS", n.to_string())
            .current_dir(dir)
            .output()
            .map_err(|e| format!("go test: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stdout.lines().chain(stderr.lines()).next().unwrap_or("");
            return Err(format!("go test -bench failed ({}): {first}", out.status));
        }
        // "BenchmarkCompareMap-2   1   5123456 ns/op   5.123 ns/item"
        let per_item: Vec<f64> = stdout
            .lines()
            .filter(|l| l.starts_with("BenchmarkCompareMap"))
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "ns/item")?;
                words.get(at.checked_sub(1)?)?.parse::<f64>().ok()
            })
            .collect();
        if per_item.is_empty() {
            return Err("no 'ns/item' line in go test's output".to_string());
        }
        Ok(per_item)
    }

    /// Runs the OpenMP program; gives its lines as (name, seconds of each run).
    fn omp(&self, args: &[String]) -> Result<Output, String> {
        let bin = self.omp.as_ref().map_err(Clone::clone)?;
        run_helper(Command::new(bin).args(args))
    }

    fn joblib(&self, args: &[String]) -> Result<Output, String> {
        let script = self.joblib.as_ref().map_err(Clone::clone)?;
        run_helper(
            Command::new("python3")
                .arg(script)
                .args(args)
                .current_dir(&self.manifest),
        )
    }
}

fn build_omp(source: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    if Command::new("gcc").arg("--version").output().is_err() {
        return Err("gcc not found (apt-get install gcc)".to_string());
    }
    let bin = target_dir.join("compare-omp");
    let out = Command::new("gcc")
        .args(["-O2", "-fopenmp", "-o"])
        .arg(&bin)
        .arg(source)
        .output()
        .map_err(|e| format!("gcc: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| l.contains("error")).unwrap_or("");
        return Err(format!(
            "gcc -O2 -fopenmp failed (is libgomp installed? apt-get install libgomp1 libgcc-12-dev): {first}"
        ));
    }
    Ok(bin)
}

/// Builds benches/compare/cpp_map.cpp against pj.hpp and the libpj.so of this build (the profile
/// directory this program runs from, else target/release).
fn build_cpp(manifest: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    if Command::new("g++").arg("--version").output().is_err() {
        return Err("g++ not found (apt-get install g++)".to_string());
    }
    // This build's profile directory (a bench build has libpj.so there), else the release one
    // (a test build of this program has none of its own).
    let profile = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(2).map(Path::to_path_buf));
    let lib_dir = profile
        .into_iter()
        .chain([target_dir.join("release")])
        .find(|dir| dir.join("libpj.so").exists())
        .ok_or("no libpj.so in target/ (cargo build --release)")?;
    let bin = target_dir.join("compare-cpp-map");
    let out = Command::new("g++")
        .args(["-O2", "-std=c++17", "-o"])
        .arg(&bin)
        .arg(manifest.join("benches/compare/cpp_map.cpp"))
        .arg(format!("-I{}", manifest.join("include").display()))
        .arg(format!(
            "-I{}",
            manifest.join("bindings/cpp/include").display()
        ))
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lpj")
        .output()
        .map_err(|e| format!("g++: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| l.contains("error")).unwrap_or("");
        return Err(format!("g++ -O2 -std=c++17 failed: {first}"));
    }
    Ok(bin)
}

/// The Go module, when `go` is installed and this is a bench run (the Go package links
/// target/release/libpj.so, and compiling it would slow the smoke run down).
fn find_go(manifest: &Path, bench: bool) -> Result<PathBuf, String> {
    if !bench {
        return Err("smoke run".to_string());
    }
    if Command::new("go").arg("version").output().is_err() {
        return Err("go not found".to_string());
    }
    Ok(manifest.join("bindings/go"))
}

/// A helper's output: "NAME T1 T2 ..." lines, plus "note NAME TEXT" and "skip NAME REASON".
#[derive(Default)]
struct Output {
    times: Vec<(String, Vec<f64>)>,
    notes: Vec<(String, String)>,
    skips: Vec<(String, String)>,
}

impl Output {
    fn seconds(&self, name: &str) -> Result<Vec<f64>, String> {
        if let Some((_, reason)) = self.skips.iter().find(|s| s.0 == name) {
            return Err(reason.clone());
        }
        self.times
            .iter()
            .find(|t| t.0 == name)
            .map(|t| t.1.clone())
            .ok_or_else(|| format!("no '{name}' line in the helper's output"))
    }

    fn note(&self, name: &str) -> Option<&str> {
        self.notes
            .iter()
            .find(|n| n.0 == name)
            .map(|n| n.1.as_str())
    }
}

fn run_helper(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut parsed = Output::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(first), Some(second)) = (words.next(), words.next()) else {
            continue;
        };
        let rest = words.next().unwrap_or("").to_string();
        match first {
            "note" => parsed.notes.push((second.to_string(), rest)),
            "skip" => parsed.skips.push((second.to_string(), rest)),
            name => {
                let times: Result<Vec<f64>, _> =
                    line.split(' ').skip(1).map(str::parse::<f64>).collect();
                let times = times.map_err(|e| format!("bad helper line '{line}': {e}"))?;
                parsed.times.push((name.to_string(), times));
            }
        }
    }
    Ok(parsed)
}

fn seconds_of(output: &Result<Output, String>, name: &str) -> Result<Vec<f64>, String> {
    output.as_ref().map_err(Clone::clone)?.seconds(name)
}

fn with_factor(result: Result<Vec<f64>, String>, factor: f64) -> Result<Vec<f64>, String> {
    result.map(|s| scaled(s, factor))
}

// ---------------------------------------------------------------------------------------------
// Workloads

fn trivial_section(plan: &Plan, helpers: &Helpers) -> Section {
    let n = plan.trivial_items;
    let runs = plan.trivial_runs;
    let per_item = 1e9 / n as f64;
    let mut rows = Vec::new();
    for (label, options) in PJ_BACKENDS {
        let par = new_parallel(options);
        // Warm: the pool is up and auto batching has settled, as in a long-lived object.
        pj_submit_trivial(par, n);
        pj_map_trivial(par, n);
        let submit: Vec<f64> = (0..runs).map(|_| pj_submit_trivial(par, n)).collect();
        let map: Vec<f64> = (0..runs).map(|_| pj_map_trivial(par, n)).collect();
        let shared_output = label == "processes";
        pj_for_trivial(par, n, shared_output);
        let ranges: Vec<f64> = (0..runs)
            .map(|_| pj_for_trivial(par, n, shared_output))
            .collect();
        pj_parallel_free(par);
        let mut ranges_row = Row::pj(
            &format!("pj {label}, pj_parallel_for (ranges)"),
            scaled(ranges, per_item),
        );
        let mut submit_row = Row::pj(
            &format!("pj {label}, submit + collect"),
            scaled(submit, per_item),
        );
        let mut map_row = Row::pj(
            &format!("pj {label}, map (producer)"),
            scaled(map, per_item),
        );
        match label {
            "threads" => {
                submit_row = submit_row.target(Target::AtMost(100.0));
                // Map-style input in C is a loop over indices: pj_parallel_for, one callback per
                // range (OpenMP's parallel for). pj_parallel_map calls a producer per item.
                ranges_row = ranges_row.target(Target::RatioAtMost(Peer::Rayon, 2.0));
            }
            "processes" => {
                submit_row = submit_row.target(Target::AtMost(200.0));
                map_row = map_row.target(Target::AtMost(200.0));
            }
            _ => {}
        }
        rows.push(submit_row);
        rows.push(map_row);
        rows.push(ranges_row);
    }

    let input: Vec<u64> = (0..n).collect();
    let serial: Vec<f64> = (0..runs)
        .map(|_| time(|| input.iter().map(|&x| x * 2).collect::<Vec<u64>>()))
        .collect();
    rows.push(
        Row::other(
            "serial loop (Rust, collect into a Vec)",
            Ok(scaled(serial, per_item)),
        )
        .peer(Peer::Serial),
    );
    input.par_iter().map(|&x| x * 2).collect::<Vec<u64>>();
    let rayon: Vec<f64> = (0..runs)
        .map(|_| time(|| input.par_iter().map(|&x| x * 2).collect::<Vec<u64>>()))
        .collect();
    rows.push(
        Row::other(
            "rayon par_iter().map().collect()",
            Ok(scaled(rayon, per_item)),
        )
        .peer(Peer::Rayon),
    );

    // The wrappers' maps of a sized input, n_jobs=2 (C++ over a std::vector<long>, Go over []int).
    let cpp = helpers.cpp(&["trivial".into(), n.to_string(), runs.to_string()]);
    for (name, label) in [
        ("threads", "pj C++ threads, pj::Parallel::map (chunks)"),
        ("processes", "pj C++ processes, pj::Parallel::map (chunks)"),
        (
            "sequential",
            "pj C++ sequential, pj::Parallel::map (chunks)",
        ),
        (
            "threads-chunk1",
            "pj C++ threads, pj::Parallel::map, chunk_size(1)",
        ),
    ] {
        rows.push(Row::wrapper(
            label,
            with_factor(seconds_of(&cpp, name), per_item),
        ));
    }
    rows.push(Row::wrapper(
        "pj Go threads, pj.Map (chunks)",
        helpers.go_map(n, runs),
    ));

    let omp = helpers.omp(&["trivial".into(), n.to_string(), runs.to_string()]);
    rows.push(
        Row::other(
            "OpenMP parallel for (C)",
            with_factor(seconds_of(&omp, "omp"), per_item),
        )
        .peer(Peer::OpenMp),
    );
    rows.push(Row::other(
        "serial loop (C)",
        with_factor(seconds_of(&omp, "serial"), per_item),
    ));

    let jn = plan.joblib_items;
    let per_joblib_item = 1e9 / jn as f64;
    let joblib = helpers.joblib(&["trivial".into(), jn.to_string(), runs.to_string()]);
    rows.push(
        Row::other(
            &format!("joblib Parallel(n_jobs=2), {} items", thousands(jn)),
            with_factor(seconds_of(&joblib, "joblib"), per_joblib_item),
        )
        .peer(Peer::Joblib),
    );
    rows.push(Row::other(
        &format!("Python list comprehension, {} items", thousands(jn)),
        with_factor(seconds_of(&joblib, "serial"), per_joblib_item),
    ));
    Section {
        title: format!("(a) {} trivial tasks, x*2 on 8 bytes", thousands(n)),
        unit: "ns/item",
        rows,
        notes: vec![format!(
            "(a): pj, the loops, rayon and OpenMP handle {} items per run, joblib {} (it needs microseconds per item; all figures are per item); \
                 n_jobs=2 / 2 threads everywhere; pj objects are warmed by one untimed call, as are rayon's pool, \
                 OpenMP's team and joblib's workers.",
            thousands(n),
            thousands(jn)
        )],
    }
}

fn cpu_section(plan: &Plan, helpers: &Helpers) -> Section {
    let tasks = plan.cpu_tasks;
    let runs = plan.cpu_runs;
    let mut iters = calibrate_spin();
    let serial_once: Vec<u64> = (0..tasks).map(|t| spin(iters, t)).collect();
    let check = *serial_once.last().unwrap();
    let mut rows = Vec::new();

    for (label, options) in PJ_BACKENDS {
        let samples: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let par = new_parallel(options);
                let res = submit_all(
                    par,
                    Some(spin_task),
                    &mut iters as *mut u64 as *mut c_void,
                    0..tasks,
                );
                pj_parallel_free(par);
                let seconds = start.elapsed().as_secs_f64();
                assert_eq!(result_u64(res, (tasks - 1) as usize), check);
                pj_results_free(res);
                seconds
            })
            .collect();
        let mut row = Row::pj(&format!("pj {label}"), samples);
        if label != "sequential" {
            row = row.target(Target::SpeedupAtLeast(1.95));
        }
        rows.push(row);
    }
    let serial: Vec<f64> = (0..runs)
        .map(|_| time(|| (0..tasks).map(|t| spin(iters, t)).collect::<Vec<u64>>()))
        .collect();
    let rust_serial = median(&serial).unwrap().0;
    rows.push(Row::other("serial loop (Rust)", Ok(serial)).peer(Peer::Serial));
    let rayon: Vec<f64> = (0..runs)
        .map(|_| {
            time(|| {
                let out: Vec<u64> = (0..tasks).into_par_iter().map(|t| spin(iters, t)).collect();
                assert_eq!(out[out.len() - 1], check);
            })
        })
        .collect();
    rows.push(Row::other("rayon into_par_iter().map().collect()", Ok(rayon)).peer(Peer::Rayon));
    for row in &mut rows {
        row.speedup_base = Some(rust_serial);
    }

    let omp = helpers.omp(&[
        "cpu".into(),
        tasks.to_string(),
        iters.to_string(),
        runs.to_string(),
    ]);
    let c_serial = seconds_of(&omp, "serial")
        .ok()
        .and_then(|s| median(&s))
        .map(|m| m.0);
    let mut row = Row::other(
        "OpenMP parallel for schedule(dynamic,1) (C)",
        seconds_of(&omp, "omp"),
    )
    .peer(Peer::OpenMp);
    row.speedup_base = c_serial;
    rows.push(row);
    let mut row = Row::other("serial loop (C)", seconds_of(&omp, "serial"));
    row.speedup_base = c_serial;
    rows.push(row);

    let joblib = helpers.joblib(&["cpu".into(), tasks.to_string(), runs.to_string()]);
    let py_serial = seconds_of(&joblib, "serial")
        .ok()
        .and_then(|s| median(&s))
        .map(|m| m.0);
    let mut row = Row::other(
        "joblib Parallel(n_jobs=2), fresh per run",
        seconds_of(&joblib, "joblib"),
    )
    .peer(Peer::Joblib);
    row.speedup_base = py_serial;
    rows.push(row);
    let mut row = Row::other("serial loop (Python)", seconds_of(&joblib, "serial"));
    row.speedup_base = py_serial;
    rows.push(row);

    let mut notes = vec![format!(
        "(b): each task runs {iters} iterations of a dependent multiply-add chain (calibrated here to about 1 ms); \
         the speedup is over the serial loop in the row's own language (Rust for pj and rayon); \
         a pj run includes creating and freeing the executor (fresh per run, as joblib's Parallel)."
    )];
    if let Some(note) = joblib.as_ref().ok().and_then(|o| o.note("joblib")) {
        notes.push(format!(
            "(b): joblib's task: the same loop in Python, {note}."
        ));
    }
    Section {
        title: format!("(b) {} CPU-bound tasks of about 1 ms", thousands(tasks)),
        unit: "s",
        rows,
        notes,
    }
}

/// Milliseconds of each of `runs` pj calls (after a warm-up call) that sum `data` in 2 tasks.
fn pj_buffer_runs(options: &[(&str, &str)], data: &[u8], expected: u64, runs: usize) -> Vec<f64> {
    let mut view = Buffer {
        data: data.as_ptr(),
        len: data.len(),
    };
    let par = new_parallel(&with_options(options, &[("batch_size", "1")]));
    let mut once = || {
        let start = Instant::now();
        let res = submit_all(
            par,
            Some(sum_task),
            &mut view as *mut Buffer as *mut c_void,
            0..2,
        );
        let seconds = start.elapsed().as_secs_f64();
        assert_eq!(result_u64(res, 0) + result_u64(res, 1), expected);
        pj_results_free(res);
        seconds * 1e3
    };
    once();
    let samples = (0..runs).map(|_| once()).collect();
    pj_parallel_free(par);
    samples
}

/// An anonymous private mapping with madvise(MADV_HUGEPAGE), 2 MiB aligned: the same bytes as the
/// Vec of (c), in transparent huge pages when the kernel grants them.
struct HugeBuffer {
    map: *mut c_void,
    map_len: usize,
    data: *mut u8,
    len: usize,
}

impl HugeBuffer {
    fn new(len: usize) -> Option<HugeBuffer> {
        const ALIGN: usize = 2 << 20;
        let map_len = len + ALIGN;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let offset = (ALIGN - (map as usize) % ALIGN) % ALIGN;
        // SAFETY: offset < ALIGN, so data..data+len lies inside the mapping.
        let data = unsafe { (map as *mut u8).add(offset) };
        // SAFETY: advice on a range of our own mapping (ALIGN-aligned; len rounded down to pages).
        unsafe { libc::madvise(data as *mut c_void, len & !4095, libc::MADV_HUGEPAGE) };
        // SAFETY: data..data+len is inside the mapping, readable and writable, and only ours.
        let bytes = unsafe { std::slice::from_raw_parts_mut(data, len) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31);
        }
        Some(HugeBuffer {
            map,
            map_len,
            data,
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: filled in new(); lives until drop.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl Drop for HugeBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), no longer borrowed.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// AnonHugePages of this process, in MB (from /proc/self/smaps_rollup).
fn anon_huge_mb() -> Option<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1000)
}

fn buffer_section(plan: &Plan, helpers: &Helpers) -> Section {
    let bytes = plan.buffer_bytes;
    let runs = plan.buffer_runs;
    let buf: Vec<u8> = (0..bytes).map(|i| (i as u8).wrapping_mul(31)).collect();
    let expected = sum_bytes(&buf);
    let mut rows = Vec::new();
    for (label, options) in PJ_BACKENDS {
        let samples = pj_buffer_runs(options, &buf, expected, runs);
        let mut row = Row::pj(&format!("pj {label}"), samples);
        if label != "sequential" {
            row = row.target(Target::AtMost(15.0));
        }
        rows.push(row);
    }
    // Workers kept across calls: forked once (by the untimed warm-up call, after the buffer was
    // filled), so a call pays no fork, whose page-table copy grows with the caller's memory.
    let kept = pj_buffer_runs(
        &[
            ("backend", "processes"),
            ("n_jobs", "2"),
            ("keep_workers", "true"),
        ],
        &buf,
        expected,
        runs,
    );
    rows.push(
        Row::pj("pj processes, keep_workers (forked once)", kept).target(Target::AtMost(15.0)),
    );
    let serial: Vec<f64> = (0..runs).map(|_| time(|| sum_bytes(&buf)) * 1e3).collect();
    rows.push(Row::other("serial loop (Rust)", Ok(serial)).peer(Peer::Serial));
    let rayon: Vec<f64> = (0..runs)
        .map(|_| {
            1e3 * time(|| {
                let (lo, hi) = halves(&buf);
                let (a, b) = rayon::join(|| sum_bytes(lo), || sum_bytes(hi));
                assert_eq!(a + b, expected);
            })
        })
        .collect();
    rows.push(Row::other("rayon::join over the 2 halves", Ok(rayon)).peer(Peer::Rayon));

    // The same sums over a buffer in transparent huge pages: how much of (c) is the page size.
    let huge_before = anon_huge_mb().unwrap_or(0);
    let mut huge_note = "(c): the huge-page rows could not map their buffer.".to_string();
    if let Some(huge) = HugeBuffer::new(bytes) {
        let huge_mb = anon_huge_mb().unwrap_or(0).saturating_sub(huge_before);
        huge_note = format!(
            "(c): huge-page rows: the same bytes in an mmap with madvise(MADV_HUGEPAGE), of which the kernel \
             gave {huge_mb} MB in huge pages (AnonHugePages); they are context, without ratios or targets."
        );
        let serial: Vec<f64> = (0..runs)
            .map(|_| time(|| assert_eq!(sum_bytes(huge.bytes()), expected)) * 1e3)
            .collect();
        rows.push(Row::other("serial loop (Rust), huge pages", Ok(serial)));
        for (label, options) in &PJ_BACKENDS[..2] {
            let samples = pj_buffer_runs(options, huge.bytes(), expected, runs);
            rows.push(Row::other(&format!("pj {label}, huge pages"), Ok(samples)));
        }
    }

    let omp = helpers.omp(&["buffer".into(), bytes.to_string(), runs.to_string()]);
    rows.push(
        Row::other(
            "OpenMP parallel for, 2 halves (C)",
            with_factor(seconds_of(&omp, "omp"), 1e3),
        )
        .peer(Peer::OpenMp),
    );
    rows.push(Row::other(
        "serial loop (C)",
        with_factor(seconds_of(&omp, "serial"), 1e3),
    ));

    let joblib = helpers.joblib(&["buffer".into(), bytes.to_string(), runs.to_string()]);
    rows.push(
        Row::other(
            "joblib, np.memmap dumped before the call",
            with_factor(seconds_of(&joblib, "joblib_memmap"), 1e3),
        )
        .peer(Peer::Joblib),
    );
    rows.push(Row::other(
        "joblib, ndarray argument (memmapped by joblib per call)",
        with_factor(seconds_of(&joblib, "joblib"), 1e3),
    ));
    rows.push(Row::other(
        "numpy sum, serial (Python)",
        with_factor(seconds_of(&joblib, "serial"), 1e3),
    ));
    drop(buf);
    Section {
        title: format!("(c) {} MB buffer summed by 2 tasks", bytes / 1_000_000),
        unit: "ms",
        rows,
        notes: vec![
            format!(
                "(c): the buffer is filled before the call; pj tasks reach it through userdata (shared by threads, \
             copy-on-write in the worker processes forked at the call's start); batch_size 1 (one half per task); \
             sums are checked; the processes figure includes forking 2 workers; joblib's column is the pre-dumped \
             np.memmap (its best case)."
            ),
            huge_note,
        ],
    }
}

/// A workload: runs its rows and gives its section of the table.
type Workload = fn(&Plan, &Helpers) -> Section;

fn cold_call(options: &[(&str, &str)]) -> f64 {
    let start = Instant::now();
    let par = new_parallel(options);
    let res = submit_all(par, Some(double), std::ptr::null_mut(), 0..2);
    check_doubles(res, 2);
    pj_parallel_free(par);
    start.elapsed().as_secs_f64() * 1e3
}

fn cold_section(plan: &Plan, helpers: &Helpers) -> Section {
    let runs = plan.cold_runs;
    let mut rows = Vec::new();
    for (label, options) in &PJ_BACKENDS[..2] {
        let samples: Vec<f64> = (0..runs).map(|_| cold_call(options)).collect();
        let mut row = Row::pj(&format!("pj {label}"), samples);
        if *label == "processes" {
            row = row.target(Target::AtMost(2.0));
        }
        rows.push(row);
    }
    let rayon: Vec<f64> = (0..runs)
        .map(|_| {
            1e3 * time(|| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap();
                let out: Vec<u64> =
                    pool.install(|| (0..2u64).into_par_iter().map(|x| x * 2).collect());
                assert_eq!(out, [0, 2]);
            })
        })
        .collect();
    rows.push(Row::other("rayon: new 2-thread pool, 2 tasks, drop", Ok(rayon)).peer(Peer::Rayon));
    let omp: Result<Vec<f64>, String> = (0..runs)
        .map(|_| {
            helpers
                .omp(&["cold".into()])
                .and_then(|o| o.seconds("cold"))
        })
        .collect::<Result<Vec<Vec<f64>>, String>>()
        .map(|v| v.concat());
    rows.push(
        Row::other(
            "OpenMP: first parallel region of a process (C)",
            with_factor(omp, 1e3),
        )
        .peer(Peer::OpenMp),
    );
    let joblib = helpers.joblib(&["cold".into(), plan.cold_runs_joblib.to_string()]);
    rows.push(
        Row::other(
            "joblib: fresh Parallel, no live loky worker",
            with_factor(seconds_of(&joblib, "cold"), 1e3),
        )
        .peer(Peer::Joblib),
    );
    rows.push(Row::other(
        "joblib: fresh Parallel, loky workers alive",
        with_factor(seconds_of(&joblib, "warm"), 1e3),
    ));
    Section {
        title: "(d) cold first call, 2 trivial tasks".to_string(),
        unit: "ms",
        rows,
        notes: vec![
            "(d): pj: pj_parallel_new (n_jobs=2) + 2 submits + collect + pj_parallel_free, joining the workers; \
             rayon's pool drop does not wait for its threads; OpenMP: a fresh process per run, timing its \
             first region (process start-up excluded)."
                .to_string(),
        ],
    }
}

fn data_section(plan: &Plan, helpers: &Helpers) -> Section {
    use support::data_path::*;
    // Calls 2.. of a row, in ms (call 1 warms the executor and its buffers up).
    let steady = |seconds: Result<Vec<f64>, String>| -> Result<Vec<f64>, String> {
        seconds.map(|s| s.iter().skip(1).map(|t| t * 1e3).collect())
    };
    let mut source = Source {
        bytes: pattern(plan.data_bytes),
        chunk: 1,
    };
    let mut rows = Vec::new();
    for (name, seconds) in baseline_rows(&source, plan.data_calls) {
        let row = Row::other(&name, steady(seconds));
        rows.push(match name.as_str() {
            "memcpy into a reused buffer" => row.peer(Peer::Serial),
            n if n.starts_with("rayon") => row.peer(Peer::Rayon),
            _ => row,
        });
    }
    for (backend, options) in BACKENDS {
        for (name, seconds) in pj_rows(&mut source, plan.data_calls, backend, options, false) {
            let row = Row::pj(&name, steady(seconds).unwrap_or_default());
            rows.push(match backend {
                _ if name.contains("memmapped") => row,
                "processes" => row.target(Target::RatioAtMost(Peer::Serial, 4.0)),
                _ => row.target(Target::RatioAtMost(Peer::Serial, 2.0)),
            });
        }
    }
    drop(source);
    let joblib = match &helpers.joblib {
        Ok(script) => joblib_rows("python3", script, plan.data_bytes, plan.data_calls),
        Err(why) => JOBLIB_ROWS
            .iter()
            .map(|(_, name)| (name.to_string(), Err(why.clone())))
            .collect(),
    };
    for (name, seconds) in joblib {
        let row = Row::other(&name, steady(seconds));
        rows.push(if name.contains("memmapped") {
            row.peer(Peer::Joblib)
        } else {
            row
        });
    }
    Section {
        title: format!(
            "(e) the data path: {} MiB per call, one executor kept for {} calls",
            plan.data_bytes >> 20,
            plan.data_calls
        ),
        unit: "ms",
        rows,
        notes: vec![format!(
            "(e): ms per call (submit to collect), calls 2-{} of one executor (keep_workers; one Parallel kept for \
             joblib); tasks read one byte in 64 of their argument, or return a 512 KiB chunk of the caller's \
             buffer; the pj/serial ratio is against the memcpy of the same bytes into a reused buffer (issue 17's \
             targets: threads and sequential ≤ 2x, processes by socket ≤ 4x; memmapped arguments are judged \
             against the userdata row in `cargo bench --bench data`); pj/joblib is against joblib's memmapped \
             4 MiB arrays; joblib's tasks get numpy arrays (n_jobs=2).",
            plan.data_calls
        )],
    }
}

// ---------------------------------------------------------------------------------------------

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {} cores, Linux {}", pj_cpu_count(), kernel.trim())
}

fn rayon_version(manifest: &Path) -> String {
    let lock = std::fs::read_to_string(manifest.join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"rayon\"" {
            if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
                return v.trim_matches('"').to_string();
            }
        }
    }
    "?".to_string()
}

/// target/ of this build: the bench runs as target/<profile>/deps/compare-<hash>.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this as a smoke test.
    let plan = Plan::new(std::env::args().any(|a| a == "--bench"));
    let started = Instant::now();
    let load_before = loadavg();
    let target = target_dir();
    let _ = std::fs::create_dir_all(&target);
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global()
        .expect("rayon's global pool");
    let helpers = Helpers::find(&target, plan.bench);
    println!(
        "pj compare ({}): {}",
        if plan.bench {
            "bench"
        } else {
            "smoke run: tiny inputs, 1 run each"
        },
        machine()
    );

    // Optional workload letters (`cargo bench --bench compare -- a c`) run only those sections.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| matches!(a.as_str(), "a" | "b" | "c" | "d" | "e"))
        .collect();
    let workloads: [(&str, Workload); 5] = [
        ("a", trivial_section),
        ("b", cpu_section),
        ("c", buffer_section),
        ("d", cold_section),
        ("e", data_section),
    ];
    let sections: Vec<Section> = workloads
        .iter()
        .filter(|(letter, _)| only.is_empty() || only.iter().any(|o| o == letter))
        .map(|(_, run)| run(&plan, &helpers))
        .collect();

    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let python = first_line(
        "python3",
        &[
            "-c",
            "import sys, joblib; print('Python', sys.version.split()[0], '+ joblib', joblib.__version__)",
        ],
    );
    let header = format!(
        "Machine: {}. {date}, load average {load_before} before and {} after ({:.0} s).\n\
         Tools: {}; rayon {}; {}; {}. Command: `cargo bench --bench compare{}`.\n",
        machine(),
        loadavg(),
        started.elapsed().as_secs_f64(),
        first_line("rustc", &["--version"]),
        rayon_version(&helpers.manifest),
        first_line("gcc", &["--version"]),
        python,
        if only.is_empty() {
            String::new()
        } else {
            format!(" -- {}", only.join(" "))
        },
    );
    let header = if plan.bench {
        header
    } else {
        format!(
            "Smoke run (tiny inputs, 1 run each, usually a debug build): the figures and verdicts mean \
             nothing; `cargo bench --bench compare` gives the real table.\n{header}"
        )
    };
    let md = render(&sections, &header);
    println!("\n{md}");
    let path = target.join(match (plan.bench, only.is_empty()) {
        (true, true) => "compare.md",
        (true, false) => "compare-partial.md",
        (false, _) => "compare-smoke.md",
    });
    match std::fs::write(&path, &md) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
}
