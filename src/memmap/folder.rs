//! Where memory-mapped files go: resolution of the temp folder, and the checks that make a bad
//! folder fail before any task runs.
//!
//! Resolution order (joblib's, with `PJ_TEMP_FOLDER` for `JOBLIB_TEMP_FOLDER`):
//! 1. the `temp_folder` option;
//! 2. the `PJ_TEMP_FOLDER` environment variable (joblib: `JOBLIB_TEMP_FOLDER`);
//! 3. `/dev/shm`, when it is a writable directory with more than 2e9 bytes free (joblib's threshold,
//!    `f_bavail × block size`): RAM-backed, so mapping its files costs no disk I/O;
//! 4. `TMPDIR`, `TEMP`, `TMP`, the first one set and non-empty (Python's `tempfile` order);
//! 5. `/tmp`.
//!
//! It is re-run at every call (joblib binds it once per executor, which misses a later change), so
//! a changed option or environment takes effect at the next call. `~` and `~/...` are expanded with `HOME`
//! and relative paths are made absolute, as joblib does.
//!
//! Unlike Python's `tempfile`, a `TMPDIR` naming a missing directory is not silently skipped: the
//! first candidate that is set is used, and [`check_folder`] then reports exactly what is wrong with
//! it. Only `/dev/shm` is probed, because it is pj's own guess rather than the user's setting.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// The environment variable that overrides the temp folder when no option is given.
pub const PJ_TEMP_FOLDER: &str = "PJ_TEMP_FOLDER";

/// The RAM-backed folder preferred when it has room.
pub const SHM_DIR: &str = "/dev/shm";

/// `/dev/shm` is used only with strictly more than this many bytes free (joblib's 2e9).
pub const SHM_MIN_FREE_BYTES: u64 = 2_000_000_000;

/// The generic temp-directory variables, in the order Python's `tempfile.gettempdir` reads them.
pub const TMP_VARS: [&str; 3] = ["TMPDIR", "TEMP", "TMP"];

/// The last resort.
pub const DEFAULT_DIR: &str = "/tmp";

/// Which rule chose the temp folder; useful in verbose output and error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolderSource {
    /// The `temp_folder` option.
    Option,
    /// The `PJ_TEMP_FOLDER` environment variable.
    PjTempFolder,
    /// `/dev/shm`, which had enough free space.
    DevShm,
    /// One of `TMPDIR`, `TEMP`, `TMP` (named).
    TmpVar(&'static str),
    /// `/tmp`.
    Default,
}

/// A resolved temp folder: an absolute path and the rule that chose it. Not yet checked: see
/// [`check_folder`] (or use [`prepare_temp_folder`], which does both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TempFolder {
    /// The folder, absolute, with `~` expanded.
    pub path: PathBuf,
    /// Which rule chose it.
    pub source: FolderSource,
}

/// What resolution reads from the outside world, so tests can inject an environment and a
/// `/dev/shm` of any size without touching the process's real state.
pub trait FolderProbe {
    /// The value of an environment variable, `None` when unset.
    fn var(&self, name: &str) -> Option<OsString>;

    /// Bytes available to unprivileged users in `dir`, or `None` when `dir` is not an existing,
    /// writable directory (or its free space cannot be read).
    fn usable_free_bytes(&self, dir: &Path) -> Option<u64>;
}

/// The real environment and file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemProbe;

impl FolderProbe for SystemProbe {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn usable_free_bytes(&self, dir: &Path) -> Option<u64> {
        if !std::fs::metadata(dir).ok()?.is_dir() || writable(dir).is_err() {
            return None;
        }
        free_bytes(dir).ok()
    }
}

/// Resolves the temp folder for one call from the real environment (see the module docs for the
/// order). `option` is the `temp_folder` option, if set.
pub fn resolve_temp_folder(option: Option<&Path>) -> TempFolder {
    resolve_temp_folder_with(option, &SystemProbe)
}

/// [`resolve_temp_folder`] reading the environment and free space through `probe`.
pub fn resolve_temp_folder_with(option: Option<&Path>, probe: &dyn FolderProbe) -> TempFolder {
    let set = |name: &str| probe.var(name).filter(|v| !v.is_empty());
    let (path, source) = if let Some(path) = option.filter(|p| !p.as_os_str().is_empty()) {
        (path.to_path_buf(), FolderSource::Option)
    } else if let Some(path) = set(PJ_TEMP_FOLDER) {
        (PathBuf::from(path), FolderSource::PjTempFolder)
    } else if probe
        .usable_free_bytes(Path::new(SHM_DIR))
        .is_some_and(|free| free > SHM_MIN_FREE_BYTES)
    {
        (PathBuf::from(SHM_DIR), FolderSource::DevShm)
    } else if let Some((name, path)) = TMP_VARS
        .iter()
        .find_map(|&name| set(name).map(|path| (name, path)))
    {
        (PathBuf::from(path), FolderSource::TmpVar(name))
    } else {
        (PathBuf::from(DEFAULT_DIR), FolderSource::Default)
    };
    TempFolder {
        path: normalize(path, probe.var("HOME").filter(|h| !h.is_empty())),
        source,
    }
}

/// Resolves the temp folder (see [`resolve_temp_folder`]) and checks that it can take
/// `needed_bytes` (see [`check_folder`]).
pub fn prepare_temp_folder(option: Option<&Path>, needed_bytes: u64) -> Result<TempFolder> {
    let folder = resolve_temp_folder(option);
    check_folder(&folder.path, needed_bytes)?;
    Ok(folder)
}

/// Expands `~` and `~/...` with `home` and makes the path absolute against the current directory,
/// so that a later `chdir` does not move the folder. `~user` is left alone (as a relative path
/// would be), and so is a path that cannot be made absolute; [`check_folder`] reports either.
fn normalize(path: PathBuf, home: Option<OsString>) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let expanded = match (home, bytes) {
        (Some(home), b"~") => PathBuf::from(home),
        (Some(home), [b'~', b'/', rest @ ..]) => {
            let rest = Path::new(std::ffi::OsStr::from_bytes(rest));
            PathBuf::from(home).join(rest.strip_prefix("/").unwrap_or(rest))
        }
        _ => path,
    };
    std::path::absolute(&expanded).unwrap_or(expanded)
}

/// The error for `path`, in the one format every temp-folder failure uses:
/// `temp folder /nope: No such file or directory (os error 2)`.
pub(crate) fn folder_error(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("temp folder {}: {detail}", path.display()),
    )
}

pub(crate) fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::invalid(format!(
            "temp folder {}: a path cannot contain a NUL byte",
            path.display()
        ))
    })
}

/// Checks, before any task runs, that `path` is an existing directory this process may create
/// files in, with at least `needed_bytes` available (0: no space check). Every failure is an
/// [`ErrorKind::Io`] naming the path and the errno, e.g.
/// `temp folder /nope: No such file or directory (os error 2)`.
///
/// Free space can shrink between this check and the moment files are written; file creation
/// reserves its space (`fallocate`) and reports that failure the same way, so a full disk
/// is always an error and never a SIGBUS in a worker.
pub fn check_folder(path: &Path, needed_bytes: u64) -> Result<()> {
    let metadata = std::fs::metadata(path).map_err(|e| folder_error(path, e))?;
    if !metadata.is_dir() {
        return Err(folder_error(
            path,
            io::Error::from(rustix::io::Errno::NOTDIR),
        ));
    }
    writable(path).map_err(|e| folder_error(path, e))?;
    if needed_bytes > 0 {
        let free = free_bytes(path).map_err(|e| folder_error(path, e))?;
        if free < needed_bytes {
            return Err(folder_error(
                path,
                format_args!(
                    "{}: {needed_bytes} bytes needed, {free} available",
                    io::Error::from(rustix::io::Errno::NOSPC)
                ),
            ));
        }
    }
    Ok(())
}

/// Whether this process (effective ids, as `open` would use) may create entries in `dir`: write
/// and search permission, on a file system not mounted read-only (EROFS).
fn writable(dir: &Path) -> io::Result<()> {
    use rustix::fs::{Access, AtFlags, CWD};
    rustix::fs::accessat(
        CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .map_err(io::Error::from)
}

/// Bytes available to unprivileged users on the file system holding `dir` (`f_bavail` blocks of
/// `f_frsize` bytes, the unit POSIX defines them in).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    let block = if stats.f_frsize > 0 {
        stats.f_frsize
    } else {
        stats.f_bsize
    };
    Ok(stats.f_bavail.saturating_mul(block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An injected environment: variables and the free bytes of `/dev/shm` (`None`: unusable).
    struct FakeProbe {
        vars: HashMap<&'static str, &'static str>,
        shm_free: Option<u64>,
    }

    impl FakeProbe {
        fn new(vars: &[(&'static str, &'static str)], shm_free: Option<u64>) -> Self {
            FakeProbe {
                vars: vars.iter().copied().collect(),
                shm_free,
            }
        }
    }

    impl FolderProbe for FakeProbe {
        fn var(&self, name: &str) -> Option<OsString> {
            self.vars.get(name).map(OsString::from)
        }

        fn usable_free_bytes(&self, dir: &Path) -> Option<u64> {
            assert_eq!(dir, Path::new(SHM_DIR), "only /dev/shm is probed");
            self.shm_free
        }
    }

    fn resolve(option: Option<&str>, probe: &FakeProbe) -> (PathBuf, FolderSource) {
        let folder = resolve_temp_folder_with(option.map(Path::new), probe);
        (folder.path, folder.source)
    }

    const BIG: Option<u64> = Some(SHM_MIN_FREE_BYTES + 1);

    #[test]
    fn resolution_order() {
        let all = [
            (PJ_TEMP_FOLDER, "/pj"),
            ("TMPDIR", "/tmpdir"),
            ("TEMP", "/temp"),
            ("TMP", "/tmp2"),
        ];
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            resolve(Some("/opt"), &FakeProbe::new(&all, BIG)),
            (p("/opt"), FolderSource::Option)
        );
        assert_eq!(
            resolve(None, &FakeProbe::new(&all, BIG)),
            (p("/pj"), FolderSource::PjTempFolder)
        );
        assert_eq!(
            resolve(None, &FakeProbe::new(&all[1..], BIG)),
            (p(SHM_DIR), FolderSource::DevShm)
        );
        assert_eq!(
            resolve(None, &FakeProbe::new(&all[1..], None)),
            (p("/tmpdir"), FolderSource::TmpVar("TMPDIR"))
        );
        assert_eq!(
            resolve(None, &FakeProbe::new(&all[2..], None)),
            (p("/temp"), FolderSource::TmpVar("TEMP"))
        );
        assert_eq!(
            resolve(None, &FakeProbe::new(&all[3..], None)),
            (p("/tmp2"), FolderSource::TmpVar("TMP"))
        );
        assert_eq!(
            resolve(None, &FakeProbe::new(&[], None)),
            (p(DEFAULT_DIR), FolderSource::Default)
        );
    }

    #[test]
    fn dev_shm_needs_strictly_more_than_2e9_free() {
        let tmp = [("TMPDIR", "/tmpdir")];
        for (free, expect_shm) in [
            (Some(SHM_MIN_FREE_BYTES + 1), true),
            (Some(u64::MAX), true),
            (Some(SHM_MIN_FREE_BYTES), false),
            (Some(64 << 20), false), // Docker's default /dev/shm
            (Some(0), false),
            (None, false),
        ] {
            let (_, source) = resolve(None, &FakeProbe::new(&tmp, free));
            assert_eq!(source == FolderSource::DevShm, expect_shm, "{free:?}");
        }
    }

    #[test]
    fn empty_values_count_as_unset() {
        let probe = FakeProbe::new(
            &[(PJ_TEMP_FOLDER, ""), ("TMPDIR", ""), ("TEMP", "/t")],
            None,
        );
        assert_eq!(
            resolve(Some(""), &probe),
            (PathBuf::from("/t"), FolderSource::TmpVar("TEMP"))
        );
    }

    #[test]
    fn paths_are_expanded_and_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let home = [("HOME", "/home/u")];
        let with = |vars: &[(&'static str, &'static str)]| {
            let mut all = vars.to_vec();
            all.extend_from_slice(&home);
            FakeProbe::new(&all, None)
        };
        assert_eq!(resolve(Some("rel/x"), &with(&[])).0, cwd.join("rel/x"));
        assert_eq!(resolve(Some("~"), &with(&[])).0, PathBuf::from("/home/u"));
        assert_eq!(
            resolve(Some("~/a//b"), &with(&[])).0,
            PathBuf::from("/home/u/a/b")
        );
        assert_eq!(
            resolve(None, &with(&[(PJ_TEMP_FOLDER, "~/scratch")])).0,
            PathBuf::from("/home/u/scratch")
        );
        assert_eq!(resolve(None, &with(&[("TMPDIR", "t")])).0, cwd.join("t"));
        // `~user` is not expanded: it stays a (relative) name, which check_folder will reject.
        assert_eq!(resolve(Some("~bob"), &with(&[])).0, cwd.join("~bob"));
        // Without HOME, `~` cannot be expanded either.
        assert_eq!(
            resolve(Some("~"), &FakeProbe::new(&[], None)).0,
            cwd.join("~")
        );
    }

    #[test]
    fn resolution_rereads_the_environment() {
        // Each call asks the probe again: nothing is cached between calls.
        let first = FakeProbe::new(&[(PJ_TEMP_FOLDER, "/a")], None);
        let second = FakeProbe::new(&[(PJ_TEMP_FOLDER, "/b")], None);
        assert_eq!(resolve(None, &first).0, PathBuf::from("/a"));
        assert_eq!(resolve(None, &second).0, PathBuf::from("/b"));
    }

    #[test]
    fn the_real_system_resolves_to_an_absolute_path() {
        let folder = resolve_temp_folder(None);
        assert!(folder.path.is_absolute(), "{folder:?}");
        let explicit = resolve_temp_folder(Some(Path::new("/var/tmp")));
        assert_eq!(explicit.source, FolderSource::Option);
    }

    #[test]
    fn check_accepts_a_writable_directory() {
        let dir = crate::memmap::testing::TempDir::new();
        check_folder(dir.path(), 0).unwrap();
        check_folder(dir.path(), 1).unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }

    #[test]
    fn check_rejects_a_missing_folder_naming_path_and_errno() {
        let err = check_folder(Path::new("/nope/pj-missing"), 0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(
            err.message(),
            "temp folder /nope/pj-missing: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn check_rejects_a_file() {
        let dir = crate::memmap::testing::TempDir::new();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = check_folder(&file, 0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().contains(&*file.to_string_lossy()),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("Not a directory (os error 20)"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn check_rejects_a_folder_too_full() {
        let dir = crate::memmap::testing::TempDir::new();
        let err = check_folder(dir.path(), u64::MAX).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().contains(
                "No space left on device (os error 28): 18446744073709551615 bytes needed"
            ),
            "{}",
            err.message()
        );
        assert!(err.message().contains(&*dir.path().to_string_lossy()));
    }

    #[test]
    fn check_rejects_a_read_only_folder() {
        let dir = crate::memmap::testing::TempDir::new();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        crate::memmap::testing::chmod(&ro, 0o500);
        let result = check_folder(&ro, 0);
        crate::memmap::testing::chmod(&ro, 0o700);
        // root bypasses permission bits (CAP_DAC_OVERRIDE), so there the folder *is* writable and
        // the assertion would be wrong; the rest of the test still runs.
        if crate::memmap::testing::is_root() {
            assert!(result.is_ok());
            return;
        }
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().contains("Permission denied (os error 13)"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn check_rejects_a_nul_in_the_path() {
        use std::os::unix::ffi::OsStringExt;
        let path = PathBuf::from(OsString::from_vec(b"/tmp/a\0b".to_vec()));
        assert!(check_folder(&path, 0).is_err());
    }
}
