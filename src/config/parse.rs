//! Parsing and checking of option values given as strings (`Config::set`): one parser per key,
//! and the range checks that the typed setters and resolution share, so a value is judged the same
//! way whichever way it came in. Every error quotes the key and the offending value.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    BackendKind, BatchSize, MAX_FIXED_BATCH_SIZE, MAX_N_JOBS, MAX_STACK_SIZE, MIN_STACK_SIZE,
    OnError, Prefer, ProgressMode, Require, ReturnAs, StartMethod, parse_max_nbytes,
};
use crate::error::{Error, Result};

fn invalid_value(key: &str, value: &str, detail: impl fmt::Display) -> Error {
    Error::invalid(format!("invalid {key} \"{value}\": {detail}"))
}

/// joblib's spelling of "unset" (Python's `None`).
fn is_none(value: &str) -> bool {
    value == "none" || value == "None"
}

/// An optionally signed decimal integer, nothing else (no spaces inside, no `_`, no float).
fn parse_integer(value: &str) -> Option<i64> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

pub(super) fn check_n_jobs(n: i64, shown: &str) -> Result<i64> {
    if n == 0 {
        return Err(invalid_value(
            "n_jobs",
            shown,
            "n_jobs == 0 has no meaning; use a positive number of workers, or -1 for all CPUs",
        ));
    }
    if n > MAX_N_JOBS {
        return Err(invalid_value(
            "n_jobs",
            shown,
            format!("at most {MAX_N_JOBS} workers are supported"),
        ));
    }
    Ok(n)
}

pub(super) fn parse_n_jobs(value: &str) -> Result<Option<i64>> {
    if is_none(value) {
        return Ok(None);
    }
    let n = parse_integer(value)
        .ok_or_else(|| invalid_value("n_jobs", value, "expected a non-zero integer or \"none\""))?;
    check_n_jobs(n, value).map(Some)
}

pub(super) fn parse_backend(value: &str) -> Result<Option<BackendKind>> {
    if is_none(value) {
        return Ok(None);
    }
    BackendKind::from_name(value).map(Some).ok_or_else(|| {
        invalid_value(
            "backend",
            value,
            "expected \"processes\" (or \"loky\", \"multiprocessing\"), \"threads\" (or \"threading\"), \
             \"sequential\", \"mpi\" or \"none\"",
        )
    })
}

pub(super) fn parse_prefer(value: &str) -> Result<Option<Prefer>> {
    match value {
        "processes" => Ok(Some(Prefer::Processes)),
        "threads" => Ok(Some(Prefer::Threads)),
        v if is_none(v) => Ok(None),
        _ => Err(invalid_value(
            "prefer",
            value,
            "not a valid backend hint, expected \"processes\", \"threads\" or \"none\"",
        )),
    }
}

pub(super) fn parse_require(value: &str) -> Result<Option<Require>> {
    match value {
        "sharedmem" => Ok(Some(Require::SharedMem)),
        v if is_none(v) => Ok(None),
        _ => Err(invalid_value(
            "require",
            value,
            "not a valid backend constraint, expected \"sharedmem\" or \"none\"",
        )),
    }
}

pub(super) fn check_verbose(level: i64, shown: &str) -> Result<i64> {
    if level < 0 {
        return Err(invalid_value("verbose", shown, "expected an integer >= 0"));
    }
    Ok(level)
}

pub(super) fn parse_verbose(value: &str) -> Result<Option<i64>> {
    if is_none(value) {
        return Ok(None);
    }
    let level = parse_integer(value)
        .ok_or_else(|| invalid_value("verbose", value, "expected an integer >= 0"))?;
    check_verbose(level, value).map(Some)
}

/// A timeout in seconds, checked and converted once, where it enters: `+inf` means no limit (so
/// C callers can express joblib's `None` with a double), and so does a limit beyond `Duration`'s
/// range (centuries); a positive limit too small to represent becomes the smallest one (1 ns)
/// rather than zero. 0, negative values and NaN are refused.
pub(super) fn check_timeout(seconds: f64, shown: &str) -> Result<Option<Duration>> {
    if seconds == f64::INFINITY {
        return Ok(None);
    }
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(timeout_error(shown));
    }
    Ok(Duration::try_from_secs_f64(seconds)
        .ok()
        .map(|limit| limit.max(Duration::from_nanos(1))))
}

/// A limit set directly in a `Config` (its fields are public) must be positive, as the setters'.
pub(super) fn check_timeout_limit(limit: Duration) -> Result<Duration> {
    if limit.is_zero() {
        return Err(timeout_error("0"));
    }
    Ok(limit)
}

fn timeout_error(shown: &str) -> Error {
    invalid_value(
        "timeout",
        shown,
        "expected a number of seconds > 0, or \"none\" for no limit",
    )
}

fn idle_timeout_error(shown: &str) -> Error {
    invalid_value(
        "idle_worker_timeout",
        shown,
        "expected a number of seconds > 0, or \"none\" to keep idle workers",
    )
}

/// `idle_worker_timeout` in seconds, judged as `timeout` is: `+inf` (or a limit beyond
/// `Duration`'s range) means idle workers never exit; 0, negative values and NaN are refused.
pub(super) fn check_idle_worker_timeout(seconds: f64, shown: &str) -> Result<Option<Duration>> {
    check_timeout(seconds, shown).map_err(|_| idle_timeout_error(shown))
}

/// `idle_worker_timeout`: seconds, or `none` (idle workers never exit).
pub(super) fn parse_idle_worker_timeout(value: &str) -> Result<Option<Duration>> {
    if is_none(value) {
        return Ok(None);
    }
    let seconds: f64 = value.parse().map_err(|_| idle_timeout_error(value))?;
    check_idle_worker_timeout(seconds, value)
}

/// A limit set directly in a `Config` must be positive, as the setters'.
pub(super) fn check_idle_worker_timeout_limit(limit: Duration) -> Result<Duration> {
    if limit.is_zero() {
        return Err(idle_timeout_error("0"));
    }
    Ok(limit)
}

fn max_tasks_error(shown: &str) -> Error {
    invalid_value(
        "max_tasks_per_child",
        shown,
        "expected a number of tasks >= 1, or \"none\" for no limit",
    )
}

/// The one check of `max_tasks_per_child`, shared by both setters and resolution.
pub(super) fn check_max_tasks_per_child(tasks: u64, shown: &str) -> Result<NonZeroUsize> {
    usize::try_from(tasks)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| max_tasks_error(shown))
}

/// `max_tasks_per_child`: a positive integer, or `none` (workers are never replaced for it).
pub(super) fn parse_max_tasks_per_child(value: &str) -> Result<Option<NonZeroUsize>> {
    if is_none(value) {
        return Ok(None);
    }
    let tasks = parse_integer(value)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| max_tasks_error(value))?;
    check_max_tasks_per_child(tasks, value).map(Some)
}

fn memory_limit_error(shown: &str) -> Error {
    invalid_value(
        "worker_memory_limit",
        shown,
        "expected a positive number of bytes, a size like \"512M\", or \"none\" for no limit",
    )
}

/// The one check of `worker_memory_limit`: at least one byte.
pub(super) fn check_worker_memory_limit(bytes: u64, shown: &str) -> Result<u64> {
    if bytes == 0 {
        return Err(memory_limit_error(shown));
    }
    Ok(bytes)
}

/// `worker_memory_limit`: bytes, `"512M"`-style sizes (as `max_nbytes`), or `none`.
pub(super) fn parse_worker_memory_limit(value: &str) -> Result<Option<u64>> {
    let bytes = parse_max_nbytes(value).map_err(|_| memory_limit_error(value))?;
    bytes
        .map(|b| check_worker_memory_limit(b, value))
        .transpose()
}

pub(super) fn parse_timeout(value: &str) -> Result<Option<Duration>> {
    if is_none(value) {
        return Ok(None);
    }
    // Rust's float syntax: decimal, exponent, "inf"/"infinity" (any case); "nan" is refused below.
    let seconds: f64 = value.parse().map_err(|_| timeout_error(value))?;
    check_timeout(seconds, value)
}

fn batch_size_error(shown: &str) -> Error {
    Error::invalid(format!(
        "batch_size must be \"auto\" or an integer from 1 to {MAX_FIXED_BATCH_SIZE}, got \"{shown}\""
    ))
}

/// The one check of a fixed batch size, shared by both setters and resolution.
pub(super) fn check_batch_size(size: usize, shown: &str) -> Result<NonZeroUsize> {
    NonZeroUsize::new(size)
        .filter(|n| n.get() <= MAX_FIXED_BATCH_SIZE)
        .ok_or_else(|| batch_size_error(shown))
}

pub(super) fn parse_batch_size(value: &str) -> Result<BatchSize> {
    if value == "auto" {
        return Ok(BatchSize::Auto);
    }
    let size = parse_integer(value)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| batch_size_error(value))?;
    check_batch_size(size, value).map(BatchSize::Fixed)
}

/// Expands `~` and `~/...` with `$HOME` and makes the path absolute against the current directory,
/// as joblib does, so that later changes of directory do not move the folder. Existence is checked
/// when a call needs the folder.
pub(super) fn parse_temp_folder(value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(invalid_value(
            "temp_folder",
            value,
            "expected a directory path",
        ));
    }
    if value.contains('\0') {
        return Err(invalid_value(
            "temp_folder",
            value,
            "a path cannot contain a NUL byte",
        ));
    }
    let path = if value == "~" || value.starts_with("~/") {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                invalid_value("temp_folder", value, "cannot expand \"~\": HOME is not set")
            })?;
        let mut path = PathBuf::from(home);
        if let Some(rest) = value.strip_prefix("~/") {
            path.push(rest.trim_start_matches('/'));
        }
        path
    } else if value.starts_with('~') {
        return Err(invalid_value(
            "temp_folder",
            value,
            "only \"~\" and \"~/...\" are expanded, not \"~user\"",
        ));
    } else {
        PathBuf::from(value)
    };
    std::path::absolute(Path::new(&path)).map_err(|e| {
        invalid_value(
            "temp_folder",
            value,
            format!("cannot make the path absolute: {e}"),
        )
    })
}

pub(super) fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "True" | "1" | "yes" => Ok(true),
        "false" | "False" | "0" | "no" => Ok(false),
        _ => Err(invalid_value(key, value, "expected \"true\" or \"false\"")),
    }
}

pub(super) fn check_stack_size(bytes: u64, shown: &str) -> Result<usize> {
    usize::try_from(bytes)
        .ok()
        .filter(|b| (MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(b))
        .ok_or_else(|| {
            invalid_value(
                "stack_size",
                shown,
                format!(
                    "expected a number of bytes from {MIN_STACK_SIZE} (64K) to {MAX_STACK_SIZE} \
                     (1G), or \"none\" for the caller's stack size"
                ),
            )
        })
}

/// Bytes, `"8M"`-style sizes (as `max_nbytes`), or `none` for the default.
pub(super) fn parse_stack_size(value: &str) -> Result<Option<usize>> {
    let bytes = parse_max_nbytes(value).map_err(|_| {
        invalid_value(
            "stack_size",
            value,
            "expected a number of bytes, a size like \"8M\", or \"none\"",
        )
    })?;
    bytes.map(|b| check_stack_size(b, value)).transpose()
}

/// `batch_bytes`: bytes (at least 1), `"32M"`-style sizes (as `max_nbytes`), or `none` for the
/// default.
pub(super) fn parse_batch_bytes(value: &str) -> Result<Option<usize>> {
    let invalid = || {
        invalid_value(
            "batch_bytes",
            value,
            "expected a positive number of bytes, a size like \"32M\", or \"none\"",
        )
    };
    match parse_max_nbytes(value).map_err(|_| invalid())? {
        None => Ok(None),
        Some(0) => Err(invalid()),
        Some(bytes) => Ok(Some(usize::try_from(bytes).unwrap_or(usize::MAX))),
    }
}

pub(super) fn parse_start_method(value: &str) -> Result<StartMethod> {
    match value {
        "fork" => Ok(StartMethod::Fork),
        "spawn" => Ok(StartMethod::Spawn),
        "forkserver" => Ok(StartMethod::ForkServer),
        v if is_none(v) => Ok(StartMethod::Fork),
        _ => Err(invalid_value(
            "start_method",
            value,
            "expected \"fork\", \"spawn\" or \"forkserver\"",
        )),
    }
}

pub(super) fn parse_progress(value: &str) -> Result<ProgressMode> {
    match value {
        "bar" => Ok(ProgressMode::Bar),
        v if is_none(v) => Ok(ProgressMode::None),
        _ => Err(invalid_value(
            "progress",
            value,
            "expected \"bar\" or \"none\"",
        )),
    }
}

pub(super) fn parse_on_error(value: &str) -> Result<OnError> {
    match value {
        "raise" => Ok(OnError::Raise),
        "collect" => Ok(OnError::Collect),
        v if is_none(v) => Ok(OnError::Raise),
        _ => Err(invalid_value(
            "on_error",
            value,
            "expected \"raise\" (stop at the first failure) or \"collect\" (run every task)",
        )),
    }
}

pub(super) fn parse_return_as(value: &str) -> Result<ReturnAs> {
    match value {
        "list" => Ok(ReturnAs::List),
        "generator" => Ok(ReturnAs::Generator),
        "generator_unordered" => Ok(ReturnAs::GeneratorUnordered),
        _ => Err(invalid_value(
            "return_as",
            value,
            "expected \"list\", \"generator\" or \"generator_unordered\"",
        )),
    }
}
