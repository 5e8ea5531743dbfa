use super::*;
use crate::error::ErrorKind;
use std::num::NonZeroUsize;

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn set(key: &str, value: &str) -> Config {
    let mut config = Config::default();
    config
        .set(key, value)
        .unwrap_or_else(|e| panic!("{key}={value:?}: {e}"));
    config
}

/// Setting `value` fails with an invalid-argument error quoting it, and leaves the config unchanged.
fn rejects(key: &str, value: &str) -> String {
    let mut config = Config {
        verbose: Some(3),
        n_jobs: Some(2),
        ..Config::default()
    };
    let before = config.clone();
    let err = config
        .set(key, value)
        .expect_err(&format!("{key}={value:?} accepted"));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // As the message shows it: one line, control characters escaped.
    let quoted = crate::error::one_line(format!(
        "\"{}\"",
        value.trim_matches(|c: char| c.is_ascii_whitespace())
    ));
    assert!(
        err.message().contains(&quoted),
        "{key}={value:?}: {}",
        err.message()
    );
    assert_eq!(config, before, "{key}={value:?} changed the config");
    err.message().to_owned()
}

fn resolved(config: &Config) -> Resolved {
    config
        .resolve(4)
        .unwrap_or_else(|e| panic!("{config:?}: {e}"))
}

#[test]
fn unknown_key_lists_the_valid_ones() {
    let mut config = Config::default();
    let err = config.set("n_job", "2").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("\"n_job\""), "{}", err.message());
    for key in KEYS {
        assert!(
            err.message().contains(key),
            "{key} missing from {}",
            err.message()
        );
    }
    assert_eq!(config, Config::default());
    assert!(config.set("", "1").is_err());
    assert!(config.set("N_JOBS", "1").is_err());
}

#[test]
fn every_key_is_accepted_by_set() {
    let values = [
        "2",
        "threads",
        "threads",
        "sharedmem",
        "1",
        "5",
        "all",
        "auto",
        "/tmp",
        "1M",
        "r",
        "list",
    ];
    for (key, value) in KEYS.iter().zip(values) {
        set(key, value);
    }
}

#[test]
fn n_jobs_spellings() {
    assert_eq!(set("n_jobs", "4").n_jobs, Some(4));
    assert_eq!(set("n_jobs", "-1").n_jobs, Some(-1));
    assert_eq!(set("n_jobs", "+3").n_jobs, Some(3));
    assert_eq!(set("n_jobs", " 2 \t\n").n_jobs, Some(2));
    assert_eq!(set("n_jobs", "-9223372036854775808").n_jobs, Some(i64::MIN));
    assert_eq!(set("n_jobs", "65536").n_jobs, Some(MAX_N_JOBS));
    let mut config = set("n_jobs", "3");
    config.set("n_jobs", "none").unwrap();
    assert_eq!(config.n_jobs, None);
    config.set("n_jobs", "None").unwrap();
    assert_eq!(config.n_jobs, None);
}

#[test]
fn n_jobs_rejections_quote_the_value() {
    let msg = rejects("n_jobs", "0");
    assert!(msg.contains("n_jobs == 0 has no meaning"), "{msg}");
    assert!(rejects("n_jobs", "-0").contains("no meaning"));
    let msg = rejects("n_jobs", "abc");
    assert_eq!(
        msg,
        "invalid n_jobs \"abc\": expected a non-zero integer or \"none\""
    );
    for bad in [
        "",
        "2.7",
        "1e3",
        "0x10",
        "--1",
        "+-1",
        "1 2",
        "9223372036854775808",
        "NONE",
        "65537",
        "1_000",
    ] {
        rejects("n_jobs", bad);
    }
}

#[test]
fn set_n_jobs_checks_like_set() {
    let mut config = Config::default();
    config.set_n_jobs(-2).unwrap();
    assert_eq!(config.n_jobs, Some(-2));
    let err = config.set_n_jobs(0).unwrap_err();
    assert!(
        err.message().contains("\"0\"") && err.message().contains("no meaning"),
        "{}",
        err.message()
    );
    let err = config.set_n_jobs(MAX_N_JOBS + 1).unwrap_err();
    assert!(err.message().contains("\"65537\""), "{}", err.message());
    assert_eq!(config.n_jobs, Some(-2));
    config.set_n_jobs(i64::MIN).unwrap();
}

#[test]
fn backend_names_and_aliases() {
    for (name, kind) in [
        ("processes", BackendKind::Processes),
        ("loky", BackendKind::Processes),
        ("multiprocessing", BackendKind::Processes),
        ("threads", BackendKind::Threads),
        ("threading", BackendKind::Threads),
        ("sequential", BackendKind::Sequential),
    ] {
        assert_eq!(set("backend", name).backend, Some(kind), "{name}");
        let mut config = Config::default();
        config.set_backend(name).unwrap();
        assert_eq!(config.backend, Some(kind));
        assert_eq!(BackendKind::from_name(kind.name()), Some(kind));
    }
    assert_eq!(set("backend", "none").backend, None);
    let msg = rejects("backend", "bogus");
    for name in [
        "processes",
        "loky",
        "multiprocessing",
        "threads",
        "threading",
        "sequential",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    for bad in ["", "Threads", "dask", "thread"] {
        rejects("backend", bad);
    }
    let mut config = Config::default();
    let err = config.set_backend("bogus").unwrap_err();
    assert!(err.message().contains("\"bogus\""));
    assert_eq!(BackendKind::Threads.joblib_class_name(), "ThreadingBackend");
    assert_eq!(BackendKind::Processes.to_string(), "processes");
}

#[test]
fn the_start_line_names_the_backend_as_joblib_does() {
    let class = |config: &Config| resolved(config).backend_class_name;
    assert_eq!(
        class(&set("backend", "multiprocessing")),
        "MultiprocessingBackend"
    );
    assert_eq!(
        class(&set("backend", " multiprocessing ")),
        "MultiprocessingBackend"
    );
    assert_eq!(class(&set("backend", "loky")), "LokyBackend");
    assert_eq!(class(&set("backend", "processes")), "LokyBackend");
    assert_eq!(class(&set("backend", "threading")), "ThreadingBackend");
    assert_eq!(class(&Config::default()), "LokyBackend");
    let mut config = Config::default();
    config.set_backend("multiprocessing").unwrap();
    assert_eq!(class(&config), "MultiprocessingBackend");
    // Naming another backend afterwards forgets the spelling.
    config.set("backend", "processes").unwrap();
    assert_eq!(class(&config), "LokyBackend");
    // The spelling travels with the backend through scoped defaults, and only with it.
    let outer = set("backend", "multiprocessing");
    assert_eq!(
        class(&set("n_jobs", "2").layered_over(&outer)),
        "MultiprocessingBackend"
    );
    assert_eq!(
        class(&set("backend", "loky").layered_over(&outer)),
        "LokyBackend"
    );
    assert_eq!(
        class(&set("backend", "threads").layered_over(&outer)),
        "ThreadingBackend"
    );
    // require=sharedmem turns a scoped multiprocessing backend into threads: so does the name.
    assert_eq!(
        class(&set("require", "sharedmem").over_scopes(&outer)),
        "ThreadingBackend"
    );
}

#[test]
fn prefer_and_require() {
    assert_eq!(set("prefer", "processes").prefer, Some(Prefer::Processes));
    assert_eq!(set("prefer", "threads").prefer, Some(Prefer::Threads));
    assert_eq!(set("prefer", "none").prefer, None);
    assert_eq!(set("prefer", "None").prefer, None);
    assert_eq!(
        set("require", "sharedmem").require,
        Some(Require::SharedMem)
    );
    assert_eq!(set("require", "none").require, None);
    for bad in ["bogus", "loky", "threading", "", "Threads"] {
        rejects("prefer", bad);
    }
    for bad in ["bogus", "shared", ""] {
        rejects("require", bad);
    }
    let mut config = set("prefer", "threads");
    config.set("prefer", "none").unwrap();
    assert_eq!(config.prefer, None);
}

#[test]
fn verbose_levels() {
    assert_eq!(set("verbose", "0").verbose, Some(0));
    assert_eq!(set("verbose", "50").verbose, Some(50));
    assert_eq!(set("verbose", "none").verbose, None);
    for bad in ["-1", "1.5", "x", "", "99999999999999999999"] {
        rejects("verbose", bad);
    }
    let mut config = Config::default();
    config.set_verbose(10).unwrap();
    assert_eq!(config.verbose, Some(10));
    let err = config.set_verbose(-1).unwrap_err();
    assert!(err.message().contains("\"-1\""));
    assert_eq!(config.verbose, Some(10));
}

#[test]
fn timeout_values() {
    assert_eq!(
        set("timeout", "2.5").timeout,
        Some(Some(Duration::from_millis(2500)))
    );
    assert_eq!(
        set("timeout", "1e-3").timeout,
        Some(Some(Duration::from_millis(1)))
    );
    assert_eq!(
        set("timeout", "10").timeout,
        Some(Some(Duration::from_secs(10)))
    );
    for none in ["none", "None", "inf", "infinity", "Infinity", "+inf"] {
        assert_eq!(set("timeout", none).timeout, Some(None), "{none}");
    }
    for bad in [
        "0", "0.0", "-1", "-inf", "nan", "NaN", "abc", "", "1s", "0x10", "1_0",
    ] {
        rejects("timeout", bad);
    }
    // Too large for a float is +inf, which is "no limit".
    assert_eq!(set("timeout", "1e999999").timeout, Some(None));
    let mut config = Config::default();
    config.set_timeout(f64::INFINITY).unwrap();
    assert_eq!(config.timeout, Some(None));
    config.set_timeout(0.5).unwrap();
    assert_eq!(config.timeout, Some(Some(Duration::from_millis(500))));
    for bad in [0.0, -0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
        let err = config.set_timeout(bad).unwrap_err();
        assert!(
            err.message().contains(&format!("\"{bad}\"")),
            "{}",
            err.message()
        );
    }
    assert_eq!(config.timeout, Some(Some(Duration::from_millis(500))));
    config.set_timeout(1e300).unwrap();
    assert_eq!(
        config.timeout,
        Some(None),
        "beyond Duration's range means no limit"
    );
    config.set_timeout(1e-300).unwrap();
    assert_eq!(
        config.timeout,
        Some(Some(Duration::from_nanos(1))),
        "a positive limit never rounds to zero"
    );
}

#[test]
fn pre_dispatch_values() {
    assert_eq!(
        set("pre_dispatch", "all").pre_dispatch,
        Some(PreDispatch::All)
    );
    for text in [
        "n_jobs",
        "2*n_jobs",
        "1.5*n_jobs",
        "3",
        "2 * n_jobs",
        "(n_jobs+1)//2",
    ] {
        let config = set("pre_dispatch", text);
        match config.pre_dispatch {
            Some(PreDispatch::Expr(ref expr)) => assert_eq!(expr.source(), text),
            ref other => panic!("{text}: {other:?}"),
        }
    }
    // The surrounding whitespace is trimmed before parsing.
    assert_eq!(
        set("pre_dispatch", "  3 ")
            .pre_dispatch
            .unwrap()
            .to_string(),
        "3"
    );
    for bad in [
        "import os",
        "9**9**9",
        "1e7",
        "1/0",
        "0",
        "ALL",
        "none",
        "",
        "1+1+1+1+1+1+1+1+1+1+1+1+1+1+111",
    ] {
        rejects("pre_dispatch", bad);
    }
    let expr = PreDispatch::parse("1.5*n_jobs").unwrap();
    assert_eq!(expr.tasks(2).unwrap(), Some(3));
    assert_eq!(expr.tasks(3).unwrap(), Some(4));
    assert!(PreDispatch::parse("n_jobs/4").unwrap().tasks(2).is_err());
    assert_eq!(PreDispatch::All.tasks(7).unwrap(), None);
    assert_eq!(PreDispatch::default().to_string(), DEFAULT_PRE_DISPATCH);
    assert_eq!(PreDispatch::default().tasks(3).unwrap(), Some(6));
}

#[test]
fn batch_size_values() {
    assert_eq!(set("batch_size", "auto").batch_size, Some(BatchSize::Auto));
    assert_eq!(
        set("batch_size", "8").batch_size,
        Some(BatchSize::Fixed(nz(8)))
    );
    assert_eq!(
        set("batch_size", "1").batch_size,
        Some(BatchSize::Fixed(nz(1)))
    );
    let msg = rejects("batch_size", "0");
    assert_eq!(
        msg,
        "batch_size must be \"auto\" or an integer from 1 to 1048576, got \"0\""
    );
    for bad in [
        "-1",
        "1.5",
        "x",
        "",
        "Auto",
        "none",
        "++1",
        "99999999999999999999999",
    ] {
        rejects("batch_size", bad);
    }
    let mut config = Config::default();
    config.set_batch_size(5).unwrap();
    assert_eq!(config.batch_size, Some(BatchSize::Fixed(nz(5))));
    let err = config.set_batch_size(0).unwrap_err();
    assert!(err.message().contains("got \"0\""), "{}", err.message());
    assert_eq!(config.batch_size, Some(BatchSize::Fixed(nz(5))));
    assert_eq!(BatchSize::Auto.to_string(), "auto");
    // Both setters share one limit; resolution checks fields set directly.
    let max = MAX_FIXED_BATCH_SIZE;
    for size in [max + 1, 4_000_000_000, usize::MAX] {
        rejects("batch_size", &size.to_string());
        assert!(config.set_batch_size(size).is_err());
    }
    assert_eq!(
        set("batch_size", &max.to_string()).batch_size,
        Some(BatchSize::Fixed(nz(max)))
    );
    config.set_batch_size(max).unwrap();
    config.batch_size = Some(BatchSize::Fixed(nz(max + 1)));
    assert!(config.resolve(4).is_err());
}

#[test]
fn temp_folder_paths() {
    assert_eq!(
        set("temp_folder", "/var/tmp/x").temp_folder,
        Some(PathBuf::from("/var/tmp/x"))
    );
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        set("temp_folder", "rel/dir").temp_folder,
        Some(cwd.join("rel/dir"))
    );
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = std::path::absolute(PathBuf::from(home)).unwrap();
        assert_eq!(set("temp_folder", "~").temp_folder, Some(home.clone()));
        assert_eq!(
            set("temp_folder", "~/scratch").temp_folder,
            Some(home.join("scratch"))
        );
    }
    for bad in ["", "   ", "~bob/x", "a\0b"] {
        rejects("temp_folder", bad);
    }
}

#[test]
fn max_nbytes_sizes() {
    let bytes = |v: &str| set("max_nbytes", v).max_nbytes;
    assert_eq!(bytes("1M"), Some(MaxNbytes::Bytes(1_048_576)));
    assert_eq!(bytes("1m"), Some(MaxNbytes::Bytes(1_048_576)));
    assert_eq!(bytes("1.5M"), Some(MaxNbytes::Bytes(1_572_864)));
    assert_eq!(bytes("0.5K"), Some(MaxNbytes::Bytes(512)));
    assert_eq!(bytes("512k"), Some(MaxNbytes::Bytes(524_288)));
    assert_eq!(bytes("2G"), Some(MaxNbytes::Bytes(2 << 30)));
    assert_eq!(bytes("2g"), Some(MaxNbytes::Bytes(2 << 30)));
    assert_eq!(bytes(" 1M"), Some(MaxNbytes::Bytes(1_048_576)));
    assert_eq!(bytes("1.1K"), Some(MaxNbytes::Bytes(1126)));
    assert_eq!(bytes("1024"), Some(MaxNbytes::Bytes(1024)));
    assert_eq!(bytes("0"), Some(MaxNbytes::Bytes(0)));
    assert_eq!(bytes("none"), Some(MaxNbytes::Disabled));
    assert_eq!(bytes("None"), Some(MaxNbytes::Disabled));
    for bad in [
        "12Q",
        "fooG",
        "",
        "-1M",
        "1MB",
        "M",
        "-1",
        "1.5",
        "infK",
        "nanM",
        "1e400G",
        "+1M",
        "1 2M",
        "1..5M",
        "18446744073709551616",
        "99999999999G",
        "ÄM",
    ] {
        rejects("max_nbytes", bad);
    }
    assert_eq!(MaxNbytes::Disabled.to_string(), "none");
}

#[test]
fn mmap_mode_and_return_as() {
    for (text, mode) in [
        ("r", MmapMode::R),
        ("r+", MmapMode::RPlus),
        ("w+", MmapMode::WPlus),
        ("c", MmapMode::C),
        ("none", MmapMode::None),
    ] {
        assert_eq!(set("mmap_mode", text).mmap_mode, Some(mode));
        assert_eq!(mode.name(), text);
    }
    // joblib's None, in either spelling: no memmapping (not "restore the default").
    assert_eq!(set("mmap_mode", "None").mmap_mode, Some(MmapMode::None));
    assert_eq!(
        resolved(&set("mmap_mode", "none")).mmap_mode,
        MmapMode::None
    );
    for bad in ["x", "", "NONE", "null", "R", "w", "rw"] {
        rejects("mmap_mode", bad);
    }
    for (text, ret) in [
        ("list", ReturnAs::List),
        ("generator", ReturnAs::Generator),
        ("generator_unordered", ReturnAs::GeneratorUnordered),
    ] {
        assert_eq!(set("return_as", text).return_as, Some(ret));
        assert_eq!(ret.to_string(), text);
    }
    for bad in ["iterator", "", "List", "none"] {
        rejects("return_as", bad);
    }
}

#[test]
fn layering_prefers_inner_fields() {
    let mut outer = Config::default();
    outer.set("n_jobs", "3").unwrap();
    outer.set("backend", "threads").unwrap();
    outer.set("verbose", "5").unwrap();
    outer.set("timeout", "2").unwrap();
    outer.set("pre_dispatch", "all").unwrap();
    let mut inner = Config::default();
    inner.set("n_jobs", "2").unwrap();
    inner.set("timeout", "none").unwrap();
    inner.set("batch_size", "4").unwrap();
    let layered = inner.layered_over(&outer);
    assert_eq!(layered.n_jobs, Some(2));
    assert_eq!(layered.backend, Some(BackendKind::Threads));
    assert_eq!(layered.verbose, Some(5));
    assert_eq!(
        layered.timeout,
        Some(None),
        "an explicit 'no limit' wins over the outer limit"
    );
    assert_eq!(layered.pre_dispatch, Some(PreDispatch::All));
    assert_eq!(layered.batch_size, Some(BatchSize::Fixed(nz(4))));
    assert_eq!(Config::default().layered_over(&outer), outer);
    assert_eq!(outer.layered_over(&Config::default()), outer);
}

/// joblib 1.6, measured: require="sharedmem" turns a backend without shared memory that the object
/// did not name itself into threads, n_jobs becoming the object's own or 1; only an object config
/// that sets both conflicts.
#[test]
fn require_sharedmem_turns_a_scoped_backend_into_threads() {
    let processes = set("backend", "processes");
    let mut scoped = processes.clone();
    scoped.set("n_jobs", "3").unwrap();
    let shared = set("require", "sharedmem");
    // The object requires, the scope names the backend (and n_jobs, meant for that backend).
    let layered = shared.over_scopes(&scoped);
    assert_eq!(layered.backend, Some(BackendKind::Threads));
    assert_eq!(layered.n_jobs, None);
    let r = resolved(&layered);
    assert_eq!((r.backend, r.n_jobs), (BackendKind::Threads, 1));
    assert_eq!(r.sharedmem_replaced, Some("LokyBackend"));
    assert_eq!(r.backend_class_name, "ThreadingBackend");
    // The object's own n_jobs stays.
    let mut shared_two = shared.clone();
    shared_two.set("n_jobs", "2").unwrap();
    let r = resolved(&shared_two.over_scopes(&scoped));
    assert_eq!((r.backend, r.n_jobs), (BackendKind::Threads, 2));
    // One scope that sets both (joblib's parallel_config(backend=..., require=...)) also switches.
    let mut both = scoped.clone();
    both.set("require", "sharedmem").unwrap();
    let r = resolved(&Config::default().over_scopes(&both));
    assert_eq!((r.backend, r.n_jobs), (BackendKind::Threads, 1));
    // The object names the backend, a scope requires: the constraint still holds.
    let r = resolved(&processes.over_scopes(&shared));
    assert_eq!(r.backend, BackendKind::Threads);
    // MPI has no shared memory either; its class name is the one announced as replaced.
    let mpi = set("backend", "mpi");
    assert_eq!(shared.over_scopes(&mpi).backend, Some(BackendKind::Threads));
    let multiprocessing = set("backend", "multiprocessing");
    assert_eq!(
        shared.over_scopes(&multiprocessing).sharedmem_replaced,
        Some("MultiprocessingBackend")
    );
    // Backends with shared memory are kept, and nothing is replaced.
    let sequential = set("backend", "sequential");
    let r = resolved(&shared.over_scopes(&sequential));
    assert_eq!(r.backend, BackendKind::Sequential);
    assert_eq!(r.sharedmem_replaced, None);
    // No require: the scoped backend stays.
    assert_eq!(
        resolved(&Config::default().over_scopes(&scoped)).backend,
        BackendKind::Processes
    );
    // The object config asking for both conflicts, whatever its scopes.
    let mut own_both = set("backend", "loky");
    own_both.set("require", "sharedmem").unwrap();
    for scopes in [Config::default(), sequential.clone(), scoped.clone()] {
        let err = own_both.over_scopes(&scopes).resolve(4).unwrap_err();
        assert!(
            err.message().contains("does not support shared memory"),
            "{}",
            err.message()
        );
    }
}

#[test]
fn resolve_defaults() {
    let r = resolved(&Config::default());
    assert_eq!(r.n_jobs_requested, None);
    assert_eq!(r.n_jobs, 1);
    assert_eq!(r.backend, DEFAULT_BACKEND);
    assert!(r.sequential);
    assert_eq!(r.verbose, 0);
    assert_eq!(r.timeout, None);
    assert_eq!(r.pre_dispatch, PreDispatch::default());
    assert_eq!(r.pre_dispatch.to_string(), "2*n_jobs");
    assert_eq!(r.pre_dispatch_tasks().unwrap(), Some(2));
    assert_eq!(r.batch_size, BatchSize::Auto);
    assert_eq!(r.temp_folder, None);
    assert_eq!(r.max_nbytes, MaxNbytes::Bytes(1 << 20));
    assert_eq!(r.mmap_mode, MmapMode::R);
    assert_eq!(r.return_as, ReturnAs::List);
}

#[test]
fn resolve_n_jobs() {
    let config = set("n_jobs", "-1");
    let r = config.resolve(4).unwrap();
    assert_eq!(
        (r.n_jobs_requested, r.n_jobs, r.sequential),
        (Some(-1), 4, false)
    );
    assert_eq!(r.pre_dispatch_tasks().unwrap(), Some(8));
    let r = config.resolve(1).unwrap();
    assert_eq!((r.n_jobs, r.sequential), (1, true));
    // Positive values are never capped at the CPU count.
    let r = set("n_jobs", "6").resolve(2).unwrap();
    assert_eq!((r.n_jobs, r.sequential), (6, false));
    // The sequential backend reports one worker.
    let mut config = set("n_jobs", "4");
    config.set("backend", "sequential").unwrap();
    let r = resolved(&config);
    assert_eq!(
        (r.backend, r.n_jobs, r.sequential),
        (BackendKind::Sequential, 1, true)
    );
    // n_jobs == 1 keeps the chosen backend but runs sequentially.
    let mut config = set("n_jobs", "1");
    config.set("backend", "threads").unwrap();
    let r = resolved(&config);
    assert_eq!(
        (r.backend, r.n_jobs, r.sequential),
        (BackendKind::Threads, 1, true)
    );
}

#[test]
fn resolve_rechecks_public_fields() {
    for config in [
        Config {
            n_jobs: Some(0),
            ..Config::default()
        },
        Config {
            n_jobs: Some(MAX_N_JOBS + 1),
            ..Config::default()
        },
        Config {
            verbose: Some(-1),
            ..Config::default()
        },
        Config {
            timeout: Some(Some(Duration::ZERO)),
            ..Config::default()
        },
    ] {
        let err = config.resolve(4).expect_err(&format!("{config:?}"));
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    let r = resolved(&Config {
        timeout: Some(Some(Duration::from_nanos(1))),
        ..Config::default()
    });
    assert_eq!(r.timeout, Some(Duration::from_nanos(1)));
    let r = resolved(&set("timeout", "1e300"));
    assert_eq!(r.timeout, None, "beyond Duration's range means no limit");
    let r = resolved(&set("timeout", "1.5"));
    assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
}

#[test]
fn resolve_checks_pre_dispatch_with_the_effective_n_jobs() {
    let mut config = set("n_jobs", "2");
    config.set("pre_dispatch", "n_jobs/4").unwrap();
    let err = config.resolve(4).unwrap_err();
    assert!(err.message().contains("\"n_jobs/4\""), "{}", err.message());
    config.set("n_jobs", "8").unwrap();
    assert_eq!(
        config.resolve(4).unwrap().pre_dispatch_tasks().unwrap(),
        Some(2)
    );
    config.set("n_jobs", "-1").unwrap();
    assert!(config.resolve(4).is_ok());
    assert!(config.resolve(2).is_err());
    config.set("pre_dispatch", "1.5*n_jobs").unwrap();
    assert_eq!(
        config.resolve(3).unwrap().pre_dispatch_tasks().unwrap(),
        Some(4)
    );
    config.set("pre_dispatch", "all").unwrap();
    assert_eq!(
        config.resolve(3).unwrap().pre_dispatch_tasks().unwrap(),
        None
    );
}

/// joblib's backend/prefer/require rules, rows that apply without contexts (n_jobs = 2).
#[test]
fn resolve_backend_table() {
    let with = |pairs: &[(&str, &str)]| {
        let mut config = set("n_jobs", "2");
        for (key, value) in pairs {
            config.set(key, value).unwrap();
        }
        config.resolve(4)
    };
    let backend = |pairs: &[(&str, &str)]| with(pairs).unwrap().backend;
    assert_eq!(backend(&[]), DEFAULT_BACKEND);
    assert_eq!(backend(&[("prefer", "threads")]), BackendKind::Threads);
    assert_eq!(backend(&[("prefer", "processes")]), BackendKind::Processes);
    assert_eq!(backend(&[("require", "sharedmem")]), BackendKind::Threads);
    assert_eq!(
        backend(&[("prefer", "threads"), ("require", "sharedmem")]),
        BackendKind::Threads
    );
    // An explicit backend wins over the hint.
    assert_eq!(
        backend(&[("backend", "loky"), ("prefer", "threads")]),
        BackendKind::Processes
    );
    assert_eq!(
        backend(&[("backend", "threading"), ("prefer", "processes")]),
        BackendKind::Threads
    );
    assert_eq!(
        backend(&[("backend", "threads"), ("require", "sharedmem")]),
        BackendKind::Threads
    );
    assert_eq!(
        backend(&[("backend", "sequential"), ("require", "sharedmem")]),
        BackendKind::Sequential
    );
    // The hard constraint is checked against an explicit backend.
    let err = with(&[("backend", "loky"), ("require", "sharedmem")]).unwrap_err();
    assert!(
        err.message().contains("does not support shared memory"),
        "{}",
        err.message()
    );
    let err = with(&[("prefer", "processes"), ("require", "sharedmem")]).unwrap_err();
    assert!(
        err.message().contains("inconsistent settings"),
        "{}",
        err.message()
    );
    let err = with(&[
        ("backend", "threads"),
        ("prefer", "processes"),
        ("require", "sharedmem"),
    ])
    .unwrap_err();
    assert!(
        err.message().contains("inconsistent settings"),
        "{}",
        err.message()
    );
}

#[test]
fn effective_n_jobs_as_joblib() {
    assert_eq!(effective_n_jobs(Some(-1), 2).unwrap(), 2);
    assert_eq!(effective_n_jobs(Some(-2), 2).unwrap(), 1);
    assert_eq!(effective_n_jobs(Some(-3), 2).unwrap(), 1);
    assert_eq!(effective_n_jobs(Some(-100), 2).unwrap(), 1);
    assert_eq!(effective_n_jobs(Some(i64::MIN), 2).unwrap(), 1);
    assert_eq!(effective_n_jobs(Some(-1), 0).unwrap(), 1);
    assert_eq!(effective_n_jobs(Some(-1), usize::MAX).unwrap(), usize::MAX);
    assert_eq!(effective_n_jobs(Some(-2), 8).unwrap(), 7);
    assert_eq!(effective_n_jobs(None, 2).unwrap(), 1);
    assert_eq!(effective_n_jobs(None, 64).unwrap(), 1);
    assert_eq!(effective_n_jobs(Some(5), 2).unwrap(), 5);
    assert_eq!(effective_n_jobs(Some(1), 2).unwrap(), 1);
    let err = effective_n_jobs(Some(0), 2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.message().contains("n_jobs == 0 has no meaning"),
        "{}",
        err.message()
    );
    assert!(effective_n_jobs(Some(MAX_N_JOBS + 1), 2).is_err());
}

#[test]
fn stack_size_is_validated_and_defaults_to_the_callers_stack() {
    assert_eq!(set("stack_size", "8M").stack_size, Some(8 << 20));
    assert_eq!(set("stack_size", "65536").stack_size, Some(MIN_STACK_SIZE));
    assert_eq!(set("stack_size", "1G").stack_size, Some(MAX_STACK_SIZE));
    assert_eq!(set("stack_size", "none").stack_size, None);
    for bad in [
        "0",
        "65535",
        "1025M",
        "-1",
        "big",
        "",
        "18446744073709551615",
    ] {
        rejects("stack_size", bad);
    }
    let mut config = Config::default();
    assert!(config.set_stack_size(MIN_STACK_SIZE - 1).is_err());
    assert!(config.set_stack_size(MAX_STACK_SIZE + 1).is_err());
    assert!(config.set_stack_size(usize::MAX).is_err());
    assert_eq!(config.stack_size, None, "refused values change nothing");
    config.set_stack_size(3 << 20).unwrap();
    assert_eq!(resolved(&config).stack_size, 3 << 20);
    // Unset: the caller's RLIMIT_STACK, within Rust's 2 MiB and MAX_STACK_SIZE.
    let default = resolved(&Config::default()).stack_size;
    assert_eq!(default, default_stack_size());
    assert!((2 << 20..=MAX_STACK_SIZE).contains(&default), "{default}");
    // A field set directly, bypassing the setters, is checked at resolution.
    let direct = Config {
        stack_size: Some(1),
        ..Config::default()
    };
    assert!(direct.resolve(4).is_err());
}

#[test]
fn batch_bytes_takes_sizes_and_defaults_to_16m() {
    assert_eq!(set("batch_bytes", "8M").batch_bytes, Some(8 << 20));
    assert_eq!(set("batch_bytes", "1").batch_bytes, Some(1));
    assert_eq!(set("batch_bytes", " 1.5k ").batch_bytes, Some(1536));
    assert_eq!(set("batch_bytes", "none").batch_bytes, None);
    for bad in ["0", "-1", "big", "", "1.5", "12Q"] {
        rejects("batch_bytes", bad);
    }
    assert_eq!(
        resolved(&Config::default()).batch_bytes,
        DEFAULT_BATCH_BYTES
    );
    assert_eq!(DEFAULT_BATCH_BYTES, 16 << 20);
    assert_eq!(resolved(&set("batch_bytes", "4M")).batch_bytes, 4 << 20);
    let inner = set("batch_bytes", "2M");
    assert_eq!(
        inner.layered_over(&set("batch_bytes", "4M")).batch_bytes,
        Some(2 << 20)
    );
    assert_eq!(
        Config::default()
            .layered_over(&set("batch_bytes", "4M"))
            .batch_bytes,
        Some(4 << 20)
    );
}

#[test]
fn recycling_defaults_are_loky_s() {
    let r = resolved(&Config::default());
    assert_eq!(
        r.recycling,
        Recycling {
            max_tasks_per_child: None,
            worker_memory_limit: None,
            idle_worker_timeout: Some(Duration::from_secs(300)),
        }
    );
}

#[test]
fn max_tasks_per_child_values() {
    assert_eq!(
        set("max_tasks_per_child", "10").max_tasks_per_child,
        Some(Some(nz(10)))
    );
    assert_eq!(
        set("max_tasks_per_child", " 1 ").max_tasks_per_child,
        Some(Some(nz(1)))
    );
    for none in ["none", "None"] {
        assert_eq!(
            set("max_tasks_per_child", none).max_tasks_per_child,
            Some(None)
        );
    }
    for bad in [
        "0",
        "-1",
        "1.5",
        "ten",
        "",
        "1e3",
        "99999999999999999999999",
    ] {
        let message = rejects("max_tasks_per_child", bad);
        assert!(message.contains("max_tasks_per_child"), "{message}");
    }
    let mut config = Config::default();
    assert_eq!(
        config.set_max_tasks_per_child(0).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    config.set_max_tasks_per_child(3).unwrap();
    assert_eq!(resolved(&config).recycling.max_tasks_per_child, Some(nz(3)));
}

#[test]
fn worker_memory_limit_values() {
    assert_eq!(
        set("worker_memory_limit", "512M").worker_memory_limit,
        Some(Some(512 << 20))
    );
    assert_eq!(
        set("worker_memory_limit", "1.5G").worker_memory_limit,
        Some(Some(3 << 29))
    );
    assert_eq!(
        set("worker_memory_limit", "4096").worker_memory_limit,
        Some(Some(4096))
    );
    assert_eq!(
        set("worker_memory_limit", "none").worker_memory_limit,
        Some(None)
    );
    for bad in ["0", "0M", "-1M", "lots", "", "1X"] {
        let message = rejects("worker_memory_limit", bad);
        assert!(message.contains("worker_memory_limit"), "{message}");
    }
    let mut config = Config::default();
    assert_eq!(
        config.set_worker_memory_limit(0).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    config.set_worker_memory_limit(1 << 30).unwrap();
    assert_eq!(
        resolved(&config).recycling.worker_memory_limit,
        Some(1 << 30)
    );
    // Set directly in the field (public), a zero is refused at resolution.
    let direct = Config {
        worker_memory_limit: Some(Some(0)),
        ..Config::default()
    };
    assert!(direct.resolve(4).is_err());
}

#[test]
fn idle_worker_timeout_values() {
    assert_eq!(
        set("idle_worker_timeout", "1").idle_worker_timeout,
        Some(Some(Duration::from_secs(1)))
    );
    assert_eq!(
        set("idle_worker_timeout", "0.25").idle_worker_timeout,
        Some(Some(Duration::from_millis(250)))
    );
    for never in ["none", "None", "inf"] {
        assert_eq!(
            set("idle_worker_timeout", never).idle_worker_timeout,
            Some(None),
            "{never}"
        );
        assert_eq!(
            resolved(&set("idle_worker_timeout", never))
                .recycling
                .idle_worker_timeout,
            None
        );
    }
    for bad in ["0", "-1", "nan", "soon", ""] {
        let message = rejects("idle_worker_timeout", bad);
        assert!(message.contains("idle_worker_timeout"), "{message}");
    }
    let mut config = Config::default();
    for bad in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
        assert_eq!(
            config.set_idle_worker_timeout(bad).unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{bad}"
        );
    }
    assert_eq!(
        config.idle_worker_timeout, None,
        "a refused value sets nothing"
    );
    config.set_idle_worker_timeout(f64::INFINITY).unwrap();
    assert_eq!(resolved(&config).recycling.idle_worker_timeout, None);
    let direct = Config {
        idle_worker_timeout: Some(Some(Duration::ZERO)),
        ..Config::default()
    };
    assert!(direct.resolve(4).is_err());
}

#[test]
fn recycling_options_layer_and_an_explicit_none_wins_over_a_scope() {
    let outer = Config {
        max_tasks_per_child: Some(Some(nz(5))),
        worker_memory_limit: Some(Some(1 << 20)),
        idle_worker_timeout: Some(Some(Duration::from_secs(2))),
        ..Config::default()
    };
    let inherited = resolved(&Config::default().layered_over(&outer)).recycling;
    assert_eq!(inherited.max_tasks_per_child, Some(nz(5)));
    assert_eq!(inherited.worker_memory_limit, Some(1 << 20));
    assert_eq!(inherited.idle_worker_timeout, Some(Duration::from_secs(2)));
    let mut own = Config::default();
    own.set("max_tasks_per_child", "none").unwrap();
    own.set("worker_memory_limit", "none").unwrap();
    own.set("idle_worker_timeout", "none").unwrap();
    assert_eq!(
        resolved(&own.layered_over(&outer)).recycling,
        Recycling::NEVER
    );
}
