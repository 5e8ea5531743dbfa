//! Anonymous backing files that never outlive their users: no name in the temp folder, every byte
//! they may hold reserved up front, descriptors close-on-exec.
//!
//! # Leaving nothing behind
//!
//! A file is created **without a name** whenever possible: `open(folder, O_TMPFILE | O_EXCL |
//! O_RDWR | O_CLOEXEC, 0600)` makes an inode that no directory lists and that the kernel frees when
//! the last descriptor and mapping are gone, whatever way the process ends, SIGKILL included.
//! `O_EXCL` forbids ever linking it into the folder later (through `/proc/self/fd`). When the
//! folder's file system or the kernel lacks `O_TMPFILE` (`EOPNOTSUPP`, `EISDIR` on kernels older
//! than 3.11, `EINVAL`), pj falls back to a fresh name opened with `O_CREAT | O_EXCL` (as `mkostemp`
//! does) and unlinks it at once; only a SIGKILL in the few microseconds between those two calls could
//! leave a `pj-<pid>-XXXXXX` entry behind.
//!
//! # Never a SIGBUS
//!
//! A file on a full tmpfs or disk can be mapped fine and then kill whoever touches a page the file
//! system cannot back, with SIGBUS. Every byte a mapping may touch is therefore reserved with
//! `fallocate` (where the file system lacks it, by writing into every block, as glibc's
//! `posix_fallocate` does) before it is handed out, so a full folder is an
//! [`ErrorKind::Io`](crate::ErrorKind::Io) naming the folder and the errno, at the moment the file
//! is made.
//!
//! # Sharing with workers
//!
//! Every descriptor is close-on-exec (a user's `exec` never inherits it) but is inherited by
//! `fork`: a worker forked after the file was created can map it through the same descriptor number
//! ([`BackingFile::fd`]); one forked earlier must receive it over a Unix socket (`SCM_RIGHTS`). A
//! `MAP_SHARED` mapping made before a fork stays shared with the child, which is what
//! [`SharedBuffer`](super::SharedBuffer) relies on.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::folder::{c_path, folder_error};
use super::hash::content_hash;
use crate::error::{Error, Result};

/// `n` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(super) fn round_up(n: usize, align: usize) -> Option<usize> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

/// How a backing file was created (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMethod {
    /// `O_TMPFILE`: the file never had a name.
    Unnamed,
    /// `O_CREAT | O_EXCL` under a fresh name, then `unlink`: the fallback when `O_TMPFILE` is
    /// unsupported.
    Unlinked,
}

/// An anonymous file in a temp folder: no directory entry, space reserved, descriptor
/// close-on-exec. Dropping it closes the descriptor; the kernel frees the space once every mapping
/// of it (in this process or in forked workers) is gone too.
#[derive(Debug)]
pub struct BackingFile {
    fd: OwnedFd,
    len: u64,
    folder: PathBuf,
    /// Read by tests, which check which way the file was made.
    #[cfg_attr(not(test), allow(dead_code))]
    method: CreateMethod,
}

impl BackingFile {
    /// A zero-filled file of `len` bytes in `folder`, all of it reserved: a full folder fails here
    /// with an [`ErrorKind::Io`](crate::ErrorKind::Io) naming the folder and the errno.
    pub fn create(folder: &Path, len: u64) -> Result<Self> {
        let file = Self::create_sparse(folder, len)?;
        file.reserve(0, len)?;
        Ok(file)
    }

    /// A zero-filled file of `len` bytes in `folder` whose space is **not** reserved yet: call
    /// [`reserve`](Self::reserve) on each range before writing it or handing it out.
    pub fn create_sparse(folder: &Path, len: u64) -> Result<Self> {
        Self::create_with(folder, len, true)
    }

    /// [`create_sparse`](Self::create_sparse), optionally skipping `O_TMPFILE` so tests reach the
    /// fallback on any file system.
    pub(crate) fn create_with(folder: &Path, len: u64, try_unnamed: bool) -> Result<Self> {
        let (fd, method) = create_anonymous(folder, try_unnamed)?;
        if i64::try_from(len).is_err() {
            return Err(Error::invalid(format!(
                "temp folder {}: a file of {len} bytes is too large",
                folder.display()
            )));
        }
        rustix::fs::ftruncate(&fd, len).map_err(|e| {
            folder_error(
                folder,
                format_args!("cannot size a file to {len} bytes: {}", io::Error::from(e)),
            )
        })?;
        Ok(BackingFile {
            fd,
            len,
            folder: folder.to_path_buf(),
            method,
        })
    }

    /// Reserves the file system space behind bytes `offset..offset + len`, so that writing or
    /// mapping them can never fail later for lack of space. A full folder is an
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) naming the folder and the errno. The range must lie
    /// inside the file.
    pub fn reserve(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset.checked_add(len).filter(|&end| end <= self.len);
        if end.is_none() {
            return Err(Error::invalid(format!(
                "cannot reserve bytes {offset}..+{len} of a {}-byte file",
                self.len
            )));
        }
        reserve_range(self.fd.as_fd(), offset, len).map_err(|e| {
            folder_error(
                &self.folder,
                format_args!("cannot reserve {len} bytes: {e}"),
            )
        })
    }

    /// The descriptor: close-on-exec, inherited by `fork`, mappable with
    /// [`Mapping::map`](super::Mapping::map).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The descriptor, owned: the file lives on as long as it (or a mapping of it) does.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file has no bytes.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `O_TMPFILE` or the unlink fallback made the file.
    #[cfg(test)]
    pub fn method(&self) -> CreateMethod {
        self.method
    }

    /// Writes all of `bytes` at `offset` (which must have been reserved).
    #[cfg(test)]
    pub(crate) fn write_all_at(&self, mut offset: u64, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match rustix::io::pwrite(&self.fd, bytes, offset) {
                Ok(0) => return Err(Errno::IO.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    offset += n as u64;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Mode 0600: the files are the creating user's only (before the umask, as `mkstemp`'s are).
const OWNER_RW: Mode = Mode::RUSR.union(Mode::WUSR);

/// Opens an anonymous file in `folder`: `O_TMPFILE` when `try_unnamed` and supported, else a
/// fresh name unlinked at once. Both are mode 0600 and close-on-exec.
fn create_anonymous(folder: &Path, try_unnamed: bool) -> Result<(OwnedFd, CreateMethod)> {
    let c_folder = c_path(folder)?;
    let cannot_create =
        |e: io::Error| folder_error(folder, format_args!("cannot create a file: {e}"));
    #[cfg(target_os = "linux")]
    if try_unnamed {
        match open_unnamed(&c_folder) {
            Ok(fd) => return Ok((fd, CreateMethod::Unnamed)),
            // The kernel (EISDIR: O_TMPFILE is read as O_DIRECTORY) or the file system
            // (EOPNOTSUPP) lacks O_TMPFILE: use a name, briefly.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
            Err(e) => return Err(cannot_create(e.into())),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = try_unnamed;
    open_unlinked(&c_folder)
        .map(|fd| (fd, CreateMethod::Unlinked))
        .map_err(cannot_create)
}

#[cfg(target_os = "linux")]
fn open_unnamed(folder: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::TMPFILE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC;
    loop {
        match rustix::fs::open(folder, flags, OWNER_RW) {
            Err(Errno::INTR) => {}
            opened => return opened,
        }
    }
}

/// How many fresh names [`open_unlinked`] tries before giving up (`EEXIST`), as `mkstemp` does.
const NAME_ATTEMPTS: usize = 100;

/// A new file `pj-<pid>-XXXXXX` in `folder` (`O_CREAT | O_EXCL | O_CLOEXEC`, mode 0600: what
/// `mkostemp` does, the six characters picked afresh after a clash), then `unlink`: the file
/// exists by name only between the two calls.
fn open_unlinked(folder: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC;
    let pid = std::process::id();
    let mut path = folder.to_bytes().to_vec();
    path.extend_from_slice(format!("/pj-{pid}-").as_bytes());
    let stem = path.len();
    for _ in 0..NAME_ATTEMPTS {
        path.truncate(stem);
        path.extend_from_slice(&name_suffix());
        let name = Path::new(std::ffi::OsStr::from_bytes(&path));
        match rustix::fs::open(name, flags, OWNER_RW) {
            Ok(fd) => {
                rustix::fs::unlink(name)?;
                return Ok(fd);
            }
            Err(Errno::EXIST | Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Errno::EXIST.into())
}

/// Six letters or digits that differ from call to call and from process to process (a clock
/// reading, a counter and the pid, hashed): unpredictable enough to make clashes rare, which is
/// all `O_EXCL` needs.
fn name_suffix() -> [u8; 6] {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut seed = [0u8; 20];
    seed[..8].copy_from_slice(&nanos.to_ne_bytes());
    seed[8..16].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_ne_bytes());
    seed[16..].copy_from_slice(&std::process::id().to_ne_bytes());
    let mut bits = content_hash(&seed);
    std::array::from_fn(|_| {
        let c = ALPHABET[(bits % 62) as usize];
        bits /= 62;
        c
    })
}

/// Reserves bytes `offset..offset + len` (`len > 0`) of `fd`.
fn reserve_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(Errno::FBIG.into());
    }
    #[cfg(target_os = "linux")]
    loop {
        match rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), offset, len) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => {}
            // The file system cannot preallocate: reserve block by block below.
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    touch_blocks(fd, offset, len)
}

/// Reserves a range by writing a zero into every block of it that does not already hold data,
/// as glibc's `posix_fallocate` emulation does: the file system must allocate each block now.
fn touch_blocks(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let block = u64::try_from(st.st_blksize)
        .unwrap_or(0)
        .clamp(512, 1 << 20);
    let end = offset
        .checked_add(len)
        .ok_or_else(|| io::Error::from(Errno::FBIG))?;
    let mut at = offset;
    while at < end {
        let mut byte = [0u8];
        let got = match rustix::io::pread(fd, &mut byte, at) {
            Ok(got) => got,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if got == 0 || byte[0] == 0 {
            match rustix::io::pwrite(fd, &[0], at) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // The next block boundary, so every block the range touches gets one write.
        at = (at / block + 1) * block;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::memmap::testing::{TempDir, chmod, is_root, mapped};
    use crate::memmap::{MapAccess, Mapping, Spill};

    fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
        rustix::io::fcntl_getfd(fd).is_ok_and(|flags| flags.contains(rustix::io::FdFlags::CLOEXEC))
    }

    #[test]
    fn unnamed_file_leaves_no_entry() {
        let dir = TempDir::new();
        let file = BackingFile::create(dir.path(), 3 * 4096 + 5).unwrap();
        assert_eq!(dir.entries(), Vec::<String>::new(), "visible while open");
        assert_eq!(file.len(), 3 * 4096 + 5);
        assert!(is_cloexec(file.fd()));
        // /tmp here is a regular file system that supports O_TMPFILE (ext4, xfs, btrfs, tmpfs).
        eprintln!("created with {:?}", file.method());
        let map = Mapping::map(file.fd(), 0, 3 * 4096 + 5, MapAccess::Shared).unwrap();
        // SAFETY: `map` is a live shared writable mapping of that length; only this thread uses it.
        let view = unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), map.len()) };
        assert!(view.iter().all(|&b| b == 0), "zero-filled");
        view[3 * 4096 + 4] = 7;
        assert_eq!(mapped(&file, 3 * 4096, 5), [0, 0, 0, 0, 7]);
        drop(file); // the mapping keeps the inode alive
        assert_eq!(view[3 * 4096 + 4], 7);
        drop(map);
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    #[test]
    fn unnamed_file_on_dev_shm() {
        // tmpfs, where pj's files usually go; skipped where /dev/shm is missing or read-only.
        let Some(dir) = TempDir::new_in(Path::new(crate::memmap::folder::SHM_DIR)) else {
            return;
        };
        let file = BackingFile::create(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            file.method(),
            CreateMethod::Unnamed,
            "tmpfs supports O_TMPFILE"
        );
        assert_eq!(dir.entries(), Vec::<String>::new());
        drop(file);
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    #[test]
    fn fallback_file_leaves_no_entry() {
        let dir = TempDir::new();
        let file = BackingFile::create_with(dir.path(), 10_000, false).unwrap();
        file.reserve(0, 10_000).unwrap();
        assert_eq!(file.method(), CreateMethod::Unlinked);
        assert!(is_cloexec(file.fd()));
        assert_eq!(dir.entries(), Vec::<String>::new(), "visible while open");
        file.write_all_at(9_000, b"hello").unwrap();
        assert_eq!(&mapped(&file, 8192, 1808)[808..813], b"hello");
        drop(file);
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    #[test]
    fn missing_folder_is_an_io_error_naming_it() {
        for try_unnamed in [true, false] {
            let err = BackingFile::create_with(Path::new("/nope/pj-missing"), 10, try_unnamed)
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Io);
            assert_eq!(
                err.message(),
                "temp folder /nope/pj-missing: cannot create a file: No such file or directory (os error 2)"
            );
        }
    }

    #[test]
    fn read_only_folder_is_an_io_error() {
        let dir = TempDir::new();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        chmod(&ro, 0o500);
        let results: Vec<_> = [true, false]
            .map(|unnamed| BackingFile::create_with(&ro, 10, unnamed))
            .into_iter()
            .collect();
        chmod(&ro, 0o700);
        // root bypasses permission bits (CAP_DAC_OVERRIDE), so there the files are created and
        // this assertion is skipped; what matters then is that they left no entry.
        if is_root() {
            drop(results);
            assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
            return;
        }
        for result in results {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Io);
            assert!(
                err.message().contains(&*ro.to_string_lossy()),
                "{}",
                err.message()
            );
            assert!(
                err.message().contains("Permission denied (os error 13)"),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn reserve_rejects_ranges_outside_the_file() {
        let dir = TempDir::new();
        let file = BackingFile::create_sparse(dir.path(), 100).unwrap();
        assert!(file.reserve(50, 50).is_ok());
        assert_eq!(
            file.reserve(50, 51).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            file.reserve(u64::MAX, 2).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn block_touching_reserves_and_keeps_data() {
        let dir = TempDir::new();
        let file = BackingFile::create_sparse(dir.path(), 64 << 10).unwrap();
        file.write_all_at(5000, b"keep").unwrap();
        touch_blocks(file.fd(), 0, 64 << 10).unwrap();
        let st = rustix::fs::fstat(file.fd()).unwrap();
        assert!(st.st_blocks * 512 >= 64 << 10, "{} blocks", st.st_blocks);
        let data = mapped(&file, 0, 64 << 10);
        assert_eq!(&data[5000..5004], b"keep");
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 4);
    }

    /// Run in a child process by [`file_size_limit_is_an_io_error`]: with `RLIMIT_FSIZE` at 1 MiB
    /// a 4 MiB file cannot be made, and that must be an error naming the folder and the errno (the
    /// closest stand-in for a full disk that needs no privileges). A no-op in a normal test run.
    #[test]
    fn fsize_helper() {
        let Some(dir) = std::env::var_os("PJ_MEMMAP_FSIZE_DIR") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let limit = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        // SAFETY: `limit` is a valid rlimit; SIG_IGN for SIGXFSZ turns the signal into EFBIG.
        unsafe {
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        for unnamed in [true, false] {
            let err = BackingFile::create_with(&dir, 4 << 20, unnamed).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Io);
            let expected = format!(
                "temp folder {}: cannot size a file to 4194304 bytes: File too large (os error 27)",
                dir.display()
            );
            assert_eq!(err.message(), expected);
        }
        let err = crate::memmap::SharedBuffer::new(&dir, 4 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().contains("File too large"),
            "{}",
            err.message()
        );
        // Tells the parent test that the checks above really ran.
        println!("PJ_FSIZE_CHECKED");
    }

    #[test]
    fn file_size_limit_is_an_io_error() {
        let dir = TempDir::new();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "memmap::backing::tests::fsize_helper",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("PJ_MEMMAP_FSIZE_DIR", dir.path())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&status.stdout);
        assert!(status.status.success(), "{out}");
        assert!(out.contains("PJ_FSIZE_CHECKED"), "{out}");
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    /// Run in a child process by [`sigkilled_process_leaves_nothing`]: creates files in the folder
    /// named by the environment, then SIGKILLs itself. A no-op in a normal test run.
    #[test]
    fn sigkill_helper() {
        let Some(dir) = std::env::var_os("PJ_MEMMAP_SIGKILL_DIR") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let _unnamed = BackingFile::create(&dir, 1 << 20).unwrap();
        let _unlinked = BackingFile::create_with(&dir, 1 << 20, false).unwrap();
        let mut spill = Spill::new(&dir);
        spill.get_or_write(&[3u8; 100_000]).unwrap();
        let _shared = crate::memmap::SharedBuffer::new(&dir, 4096).unwrap();
        // SAFETY: kill and getpid have no preconditions; this process ends here.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL did not end the process");
    }

    #[test]
    fn sigkilled_process_leaves_nothing() {
        use std::os::unix::process::ExitStatusExt;
        let dir = TempDir::new();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "memmap::backing::tests::sigkill_helper",
                "--test-threads=1",
            ])
            .env("PJ_MEMMAP_SIGKILL_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert_eq!(dir.entries(), Vec::<String>::new());
    }
}
