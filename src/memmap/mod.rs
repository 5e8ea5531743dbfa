//! Memory-mapped sharing, as joblib's memmapping reducer does it: the building blocks the process
//! backend uses to pass large arguments and results through files instead of pipes, and the explicit
//! shared buffer behind `pj_shared_t`.
//!
//! - [`folder`]: which temp folder a call uses (option > `PJ_TEMP_FOLDER` > `/dev/shm` with more
//!   than 2 GB free > `TMPDIR`/`TEMP`/`TMP` > `/tmp`, re-resolved at every call; a folder of the
//!   last three without room for a file gives way to the next) and the checks that make a missing,
//!   unwritable or full folder an I/O error before any task runs;
//! - [`backing`]: anonymous backing files (`O_TMPFILE`, else create-and-unlink) whose space is
//!   reserved up front;
//! - [`mapping`]: their mappings (`memmap2` maps), and how numpy's `mmap_mode` maps to `mmap`
//!   protections;
//! - [`hash`]: XXH64, the hash behind the spill's keys;
//! - [`spill`]: [`Spill`], which writes each distinct large argument once per call, into files
//!   (and mappings) that its executor keeps for its next calls;
//! - [`shared`]: [`SharedBuffer`], a zero-filled `MAP_SHARED` buffer that forked workers write in
//!   place.
//!
//! The invariant every part keeps: **nothing is left behind**. Files never have a name, or lose it
//! immediately after creation, so the temp folder holds no entry of pj's after any ending of a call,
//! including a SIGKILL of the parent; the kernel frees the space when the last descriptor and
//! mapping go.
//!
//! Only the process backend needs any of this: threads and the sequential backend pass pointers.
//!
//! # System calls
//!
//! Nothing here calls `libc` outside tests: mappings (and their `madvise`) are `memmap2`'s, file
//! system calls (`open`, `ftruncate`, `fallocate`, `fstat`, `pread`/`pwrite`, `unlink`, `faccessat`, `statvfs`) are
//! `rustix`'s, and the page size is `rustix::param::page_size()` (libc's value, kept since
//! start-up: no system call), the crate's one page-size source. [`Mapping::map`] and unmapping allocate nothing and take no lock
//! on success, as before. Only the test helpers below stay hand-written (`fork`/`waitpid`/`_exit`,
//! `mkdtemp`, `geteuid`, and the `setrlimit` and `kill` of two tests): they are test scaffolding,
//! not pj's data path.

pub mod backing;
pub mod folder;
pub mod hash;
pub mod mapping;
pub mod shared;
pub mod spill;

pub use backing::BackingFile;
pub use mapping::{MapAccess, Mapping};
pub use shared::SharedBuffer;
pub use spill::Spill;

/// Helpers for this module's tests: private temp directories and permission games.
#[cfg(test)]
pub(crate) mod testing {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    /// A fresh, private directory under `/tmp` (never `$TMPDIR`, so tests do not depend on the
    /// environment), removed with its contents on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            Self::new_in(Path::new("/tmp")).expect("a private directory under /tmp")
        }

        /// A fresh directory under `base`, or `None` when `base` does not allow one.
        pub fn new_in(base: &Path) -> Option<Self> {
            let mut template = base.as_os_str().as_bytes().to_vec();
            template.extend_from_slice(b"/pj-memmap-test-XXXXXX\0");
            // SAFETY: `template` is a writable NUL-terminated buffer ending in "XXXXXX", which
            // mkdtemp overwrites in place.
            let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
            if made.is_null() {
                return None;
            }
            template.pop();
            Some(TempDir(PathBuf::from(OsString::from_vec(template))))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// The names in the directory, sorted.
        pub fn entries(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Forks a child that runs `child` (which must not allocate or take locks, since other test
    /// threads may hold them at the fork) and `_exit`s with the code it returns; returns the
    /// child's wait status.
    pub fn in_forked_child(child: impl FnOnce() -> i32) -> libc::c_int {
        // SAFETY: the child only runs `child`, which does no allocation or locking, then leaves via _exit
        // without returning into the test harness or running destructors.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = child();
            // SAFETY: _exit is async-signal-safe and ends the child immediately.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child only; `status` is a writable c_int.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc == pid {
                return status;
            }
            assert_eq!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::Interrupted
            );
        }
    }

    pub fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A copy of bytes `offset..offset + len` of `file`, read through a read-only mapping.
    pub fn mapped(file: &super::BackingFile, offset: u64, len: usize) -> Vec<u8> {
        let map = super::Mapping::map(file.fd(), offset, len, super::MapAccess::ReadOnly).unwrap();
        // SAFETY: `map` is a live read-only mapping of `len` bytes that nothing writes meanwhile.
        unsafe { std::slice::from_raw_parts(map.as_ptr(), len) }.to_vec()
    }

    /// Whether the tests run with an effective uid of 0, where permission bits are bypassed.
    pub fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
