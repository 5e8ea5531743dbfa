//! Backing files that never outlive their users, their mappings, and the content-keyed spill of
//! large arguments.
//!
//! # Leaving nothing behind
//!
//! A file is created **without a name** whenever possible: `open(folder, O_TMPFILE | O_EXCL |
//! O_RDWR | O_CLOEXEC, 0600)` makes an inode that no directory lists and that the kernel frees when
//! the last descriptor and mapping are gone, whatever way the process ends, SIGKILL included.
//! `O_EXCL` forbids ever linking it into the folder later (through `/proc/self/fd`). When the
//! folder's file system or the kernel lacks `O_TMPFILE` (`EOPNOTSUPP`, `EISDIR` on kernels older
//! than 3.11, `EINVAL`), pj falls back to `mkostemp` and unlinks the name at once; only a SIGKILL in
//! the few microseconds between those two calls could leave a `pj-<pid>-XXXXXX` entry behind.
//!
//! # Never a SIGBUS
//!
//! A file on a full tmpfs or disk can be mapped fine and then kill whoever touches a page the file
//! system cannot back, with SIGBUS. Every byte a mapping may touch is therefore reserved with
//! `posix_fallocate` before it is handed out, so a full folder is an [`ErrorKind::Io`] naming the
//! folder and the errno, at the moment the file is made.
//!
//! # Sharing with workers
//!
//! Every descriptor is close-on-exec (a user's `exec` never inherits it) but is inherited by
//! `fork`: a worker forked after the file was created can map it through the same descriptor number
//! ([`BackingFile::fd`]); one forked earlier must receive it over a Unix socket (`SCM_RIGHTS`). A
//! `MAP_SHARED` mapping made before a fork stays shared with the child, which is what
//! [`SharedBuffer`](super::SharedBuffer) relies on.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use super::folder::{c_path, folder_error};
use super::size::MmapMode;
use crate::error::{Error, ErrorKind, Result};

/// The size of a memory page (the alignment of every mapping offset).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// `n` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
fn round_up(n: usize, align: usize) -> Option<usize> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// How a backing file was created (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMethod {
    /// `O_TMPFILE`: the file never had a name.
    Unnamed,
    /// `mkostemp` then `unlink`: the fallback when `O_TMPFILE` is unsupported.
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
    method: CreateMethod,
}

impl BackingFile {
    /// A zero-filled file of `len` bytes in `folder`, all of it reserved: a full folder fails here
    /// with an [`ErrorKind::Io`] naming the folder and the errno.
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
        let size = libc::off_t::try_from(len).map_err(|_| {
            Error::invalid(format!(
                "temp folder {}: a file of {len} bytes is too large",
                folder.display()
            ))
        })?;
        // SAFETY: `fd` is an open, writable descriptor owned by this function.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(folder_error(
                folder,
                format_args!(
                    "cannot size a file to {len} bytes: {}",
                    io::Error::last_os_error()
                ),
            ));
        }
        Ok(BackingFile {
            fd,
            len,
            folder: folder.to_path_buf(),
            method,
        })
    }

    /// Reserves the file system space behind bytes `offset..offset + len`, so that writing or
    /// mapping them can never fail later for lack of space. A full folder is an
    /// [`ErrorKind::Io`] naming the folder and the errno. The range must lie inside the file.
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

    /// The descriptor: close-on-exec, inherited by `fork`, mappable with [`Mapping::map`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The folder the file's space comes from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Whether `O_TMPFILE` or the unlink fallback made the file.
    pub fn method(&self) -> CreateMethod {
        self.method
    }

    /// Writes all of `bytes` at `offset` (which must have been reserved).
    fn write_all_at(&self, mut offset: u64, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a readable buffer of `bytes.len()` bytes; the fd is open.
            let n = unsafe {
                libc::pwrite(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    offset as libc::off_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(errno(libc::EIO));
            }
            bytes = &bytes[n as usize..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Whether the file holds exactly `bytes` at `offset`. Reads through the kernel (`pread`)
    /// rather than a mapping, so a worker writing the same file concurrently is never a data race
    /// in this process, and the parent's resident size does not grow with spilled data.
    fn holds_at(&self, mut offset: u64, mut bytes: &[u8]) -> io::Result<bool> {
        const CHUNK: usize = 256 << 10;
        let mut buffer = vec![0u8; CHUNK.min(bytes.len())];
        while !bytes.is_empty() {
            let want = buffer.len().min(bytes.len());
            // SAFETY: `buffer` is writable for `want <= buffer.len()` bytes; the fd is open.
            let n = unsafe {
                libc::pread(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    want,
                    offset as libc::off_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n == 0 || buffer[..n] != bytes[..n] {
                return Ok(false);
            }
            bytes = &bytes[n..];
            offset += n as u64;
        }
        Ok(true)
    }
}

/// Opens an anonymous file in `folder`: `O_TMPFILE` when `try_unnamed` and supported, else a
/// `mkostemp` name unlinked at once. Both are mode 0600 and close-on-exec.
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
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) => {}
            Err(e) => return Err(cannot_create(e)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = try_unnamed;
    open_unlinked(&c_folder)
        .map(|fd| (fd, CreateMethod::Unlinked))
        .map_err(cannot_create)
}

#[cfg(target_os = "linux")]
fn open_unnamed(folder: &CString) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `folder` is a valid NUL-terminated path; the mode argument is required by
        // O_TMPFILE and passed as the variadic c_uint open expects.
        let fd = unsafe {
            libc::open(
                folder.as_ptr(),
                libc::O_TMPFILE | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `mkostemp` in `folder`, then `unlink`: the file exists by name only between the two calls.
fn open_unlinked(folder: &CString) -> io::Result<OwnedFd> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut template = folder.as_bytes().to_vec();
    template.extend_from_slice(format!("/pj-{pid}-XXXXXX").as_bytes());
    let template = CString::new(template).map_err(|_| errno(libc::EINVAL))?;
    let mut template = template.into_bytes_with_nul();
    let raw = mkstemp_cloexec(&mut template)?;
    // SAFETY: `raw` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `template` now holds the NUL-terminated name mkostemp created.
    if unsafe { libc::unlink(template.as_ptr().cast()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(target_os = "linux")]
fn mkstemp_cloexec(template: &mut [u8]) -> io::Result<libc::c_int> {
    // SAFETY: `template` is a writable NUL-terminated buffer ending in "XXXXXX" before the NUL,
    // which mkostemp overwrites in place.
    let fd = unsafe { libc::mkostemp(template.as_mut_ptr().cast(), libc::O_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

#[cfg(not(target_os = "linux"))]
fn mkstemp_cloexec(template: &mut [u8]) -> io::Result<libc::c_int> {
    // SAFETY: `template` is a writable NUL-terminated buffer ending in "XXXXXX" before the NUL,
    // which mkstemp overwrites in place.
    let fd = unsafe { libc::mkstemp(template.as_mut_ptr().cast()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Not atomic with the open (a fork from another thread in between inherits it); mkostemp
    // closes that window where it exists.
    // SAFETY: `fd` is open; F_SETFD with FD_CLOEXEC only changes its flags.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// Reserves bytes `offset..offset + len` (`len > 0`) of `fd`.
fn reserve_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(errno(libc::EFBIG));
    };
    #[cfg(target_os = "linux")]
    loop {
        // SAFETY: `fd` is an open descriptor; posix_fallocate reads no memory of ours.
        match unsafe { libc::posix_fallocate(fd.as_raw_fd(), off, n) } {
            0 => return Ok(()),
            libc::EINTR => continue,
            // The file system cannot preallocate (glibc emulates this itself; musl does not).
            libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL => break,
            code => return Err(errno(code)),
        }
    }
    touch_blocks(fd, off, n)
}

/// Reserves a range by writing a zero into every block of it that does not already hold data,
/// as glibc's `posix_fallocate` emulation does: the file system must allocate each block now.
fn touch_blocks(fd: BorrowedFd<'_>, offset: libc::off_t, len: libc::off_t) -> io::Result<()> {
    // SAFETY: stat is plain old data; all-zero is a valid value for it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` a writable stat the call fills.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let block = libc::off_t::from(st.st_blksize).clamp(512, 1 << 20);
    let end = offset.checked_add(len).ok_or_else(|| errno(libc::EFBIG))?;
    let mut at = offset;
    while at < end {
        let mut byte = 0u8;
        // SAFETY: `byte` is a writable 1-byte buffer; `fd` is open.
        let got = unsafe { libc::pread(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, at) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == 0 || byte == 0 {
            // SAFETY: a 1-byte readable buffer; `fd` is open.
            let put = unsafe { libc::pwrite(fd.as_raw_fd(), [0u8].as_ptr().cast(), 1, at) };
            if put < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
        }
        // The next block boundary, so every block the range touches gets one write.
        at = (at / block + 1) * block;
    }
    Ok(())
}

/// How a [`Mapping`] may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapAccess {
    /// `PROT_READ`, `MAP_SHARED`: a write is a SIGSEGV, never silent corruption.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`, `MAP_SHARED`: writes reach the file and every other mapping.
    Shared,
    /// `PROT_READ | PROT_WRITE`, `MAP_PRIVATE`: copy-on-write, writes stay in this process.
    Private,
}

impl From<MmapMode> for MapAccess {
    /// numpy's modes: `r` is read-only, `r+` and `w+` shared (a worker reopens `w+` as `r+`, as
    /// joblib does, since truncating would zero the data), `c` copy-on-write. `none` maps nothing
    /// (calls with it never spill); were it asked, a private copy is the closest meaning.
    fn from(mode: MmapMode) -> Self {
        match mode {
            MmapMode::R => MapAccess::ReadOnly,
            MmapMode::RPlus | MmapMode::WPlus => MapAccess::Shared,
            MmapMode::C | MmapMode::None => MapAccess::Private,
        }
    }
}

/// A memory mapping of part of a file, unmapped on drop. A zero-length mapping maps nothing; its
/// pointer is dangling (see [`Mapping::as_ptr`]).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    access: MapAccess,
}

// SAFETY: a Mapping owns its address range exclusively (nothing else unmaps it) and exposes it only
// as a raw pointer; moving or sharing the handle between threads is as safe as moving the range.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` gives out only the pointer and the length.
unsafe impl Sync for Mapping {}

/// Alignment of the dangling pointer of empty mappings and buffers: enough for any scalar or
/// SIMD type a C caller may cast it to.
#[repr(C, align(64))]
struct Aligned64([u8; 64]);

/// A non-null, 64-byte-aligned pointer that must never be dereferenced (zero-length regions).
pub(crate) fn dangling() -> NonNull<u8> {
    NonNull::<Aligned64>::dangling().cast()
}

impl Mapping {
    /// A mapping of nothing, with a dangling pointer (for zero-length buffers).
    pub(crate) fn empty(access: MapAccess) -> Self {
        Mapping {
            ptr: dangling(),
            len: 0,
            access,
        }
    }

    /// Maps bytes `offset..offset + len` of `fd`. `offset` must be a multiple of [`page_size`]
    /// and the range must lie inside the file (so a touch past the end can never be a SIGBUS);
    /// both are [`ErrorKind::InvalidArgument`]. `len == 0` maps nothing.
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: usize, access: MapAccess) -> Result<Self> {
        if len == 0 {
            return Ok(Mapping::empty(access));
        }
        if offset % page_size() as u64 != 0 {
            return Err(Error::invalid(format!(
                "cannot map at offset {offset}: not a multiple of the page size ({})",
                page_size()
            )));
        }
        // SAFETY: stat is plain old data; all-zero is a valid value for it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` a writable stat the call fills.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot map a file: {}", io::Error::last_os_error()),
            ));
        }
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= st.st_size as u64);
        let off = libc::off_t::try_from(offset).ok().filter(|_| fits);
        let Some(off) = off else {
            return Err(Error::invalid(format!(
                "cannot map bytes {offset}..+{len}: the file has only {} bytes",
                st.st_size
            )));
        };
        let (prot, flags) = match access {
            MapAccess::ReadOnly => (libc::PROT_READ, libc::MAP_SHARED),
            MapAccess::Shared => (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED),
            MapAccess::Private => (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE),
        };
        // SAFETY: a fresh mapping chosen by the kernel (null hint) overlaps nothing of ours; `fd`
        // is open and the range was checked to lie inside the file and to be page-aligned.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), off) };
        if ptr == libc::MAP_FAILED {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot map {len} bytes: {}", io::Error::last_os_error()),
            ));
        }
        Ok(Mapping {
            // mmap never returns null on success (MAP_FIXED was not used); MAP_FAILED is -1.
            ptr: NonNull::new(ptr.cast())
                .ok_or_else(|| Error::new(ErrorKind::Io, "mmap returned NULL"))?,
            len,
            access,
        })
    }

    /// The first mapped byte; for an empty mapping, a non-null, 64-byte-aligned pointer that must
    /// not be dereferenced. Writing through it is allowed only for [`MapAccess::Shared`] and
    /// [`MapAccess::Private`] (a write to a read-only mapping is a SIGSEGV).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How the mapping may be used.
    pub fn access(&self) -> MapAccess {
        self.access
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the range was mapped by Mapping::map, is owned by `self` and is unmapped
            // exactly once, here. Failure (impossible for a valid range) would only leak it.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Content hash

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn xxh_round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh_merge(acc: u64, lane: u64) -> u64 {
    (acc ^ xxh_round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 (seed 0) of `bytes`: a fast (several GB/s, four independent lanes), well-distributed,
/// **non-cryptographic** 64-bit hash. It only picks candidates for reuse; equal hashes are always
/// confirmed by comparing lengths and bytes, so a collision (accidental or crafted) costs a
/// comparison, never wrong data. Written here (60 lines) rather than pulled in as a dependency;
/// checked against the reference implementation's outputs in the tests.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let len = bytes.len() as u64;
    let mut rest = bytes;
    let mut h = if bytes.len() >= 32 {
        let mut v = [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)];
        let mut stripes = rest.chunks_exact(32);
        for stripe in &mut stripes {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = xxh_round(*acc, read_u64(&stripe[i * 8..]));
            }
        }
        rest = stripes.remainder();
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = xxh_merge(h, lane);
        }
        h
    } else {
        P5
    };
    h = h.wrapping_add(len);
    let mut words = rest.chunks_exact(8);
    for word in &mut words {
        h ^= xxh_round(0, read_u64(word));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    rest = words.remainder();
    if rest.len() >= 4 {
        let word = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        h ^= u64::from(word).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h ^= u64::from(byte).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

// ---------------------------------------------------------------------------------------------
// Spill

/// Smallest file the spill creates: small entries share files (fewer descriptors), while the
/// unreserved tail of a file costs nothing, since files are sparse until reserved.
pub const DEFAULT_SEGMENT_BYTES: usize = 64 << 20;

/// Where a spilled byte string lives: file `file` of the [`Spill`], `len` bytes at `offset`.
/// `offset` is a multiple of [`page_size`], so a worker can map the entry directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpillRef {
    /// Index of the file, for [`Spill::file`].
    pub file: usize,
    /// Byte offset in the file (page-aligned).
    pub offset: u64,
    /// Length in bytes (never 0).
    pub len: usize,
}

struct Segment {
    file: BackingFile,
    /// Bytes handed out so far (page-aligned): the next entry starts here.
    used: usize,
}

/// The large arguments of one call, written to anonymous files in the temp folder so workers can
/// map them instead of reading them through a pipe. Content-keyed: the same bytes submitted to
/// every task are written once ([`get_or_write`](Spill::get_or_write)). No file exists until the
/// first entry is written, and every file goes when the `Spill` and the workers' mappings do.
pub struct Spill {
    folder: PathBuf,
    segment_bytes: usize,
    segments: Vec<Segment>,
    /// (hash, length) -> entries with that key; almost always one.
    index: HashMap<(u64, usize), Vec<SpillRef>>,
}

impl Spill {
    /// An empty spill that will put its files in `folder` (already resolved and checked).
    pub fn new(folder: impl Into<PathBuf>) -> Self {
        Self::with_segment_bytes(folder, DEFAULT_SEGMENT_BYTES)
    }

    /// An empty spill whose files are at least `segment_bytes` long (rounded up to a page).
    pub fn with_segment_bytes(folder: impl Into<PathBuf>, segment_bytes: usize) -> Self {
        Spill {
            folder: folder.into(),
            segment_bytes: round_up(segment_bytes.max(1), page_size()).unwrap_or(usize::MAX),
            segments: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Where `bytes` is stored, writing it only if no identical content was stored before (equal
    /// hash, length **and** bytes). Meant for read-only (`r`) and copy-on-write (`c`) arguments:
    /// an entry may be handed to many tasks, so a worker mapping it writable (`r+`, `w+`) would
    /// change what later tasks see; give those [`write_new`](Self::write_new).
    ///
    /// `bytes` must not be empty: an argument is spilled only when it is larger than
    /// `max_nbytes >= 0`. A full folder is an [`ErrorKind::Io`] naming it; nothing is partially
    /// recorded then.
    pub fn get_or_write(&mut self, bytes: &[u8]) -> Result<SpillRef> {
        let key = (content_hash(bytes), bytes.len());
        if let Some(candidates) = self.index.get(&key) {
            for &entry in candidates {
                let file = &self.segments[entry.file].file;
                let same = file.holds_at(entry.offset, bytes).map_err(|e| {
                    folder_error(
                        &self.folder,
                        format_args!("cannot read back a spilled argument: {e}"),
                    )
                })?;
                if same {
                    return Ok(entry);
                }
            }
        }
        let entry = self.write_new(bytes)?;
        self.index.entry(key).or_default().push(entry);
        Ok(entry)
    }

    /// Writes `bytes` to a new entry, even if the same content is stored already (for arguments
    /// that workers map writable). Same rules as [`get_or_write`](Self::get_or_write).
    pub fn write_new(&mut self, bytes: &[u8]) -> Result<SpillRef> {
        if bytes.is_empty() {
            return Err(Error::invalid(
                "cannot spill an empty argument (only arguments above max_nbytes are spilled)",
            ));
        }
        let page = page_size();
        let span = round_up(bytes.len(), page).ok_or_else(|| {
            Error::invalid(format!("an argument of {} bytes is too large", bytes.len()))
        })?;
        let fits_last = self
            .segments
            .last()
            .is_some_and(|s| s.file.len() as usize - s.used >= bytes.len());
        if !fits_last {
            let size = span.max(self.segment_bytes);
            let file = BackingFile::create_sparse(&self.folder, size as u64)?;
            self.segments.push(Segment { file, used: 0 });
        }
        let file_index = self.segments.len() - 1;
        let segment = self
            .segments
            .last_mut()
            .expect("a segment was just ensured");
        let offset = segment.used as u64;
        segment.file.reserve(offset, bytes.len() as u64)?;
        segment.file.write_all_at(offset, bytes).map_err(|e| {
            folder_error(
                &self.folder,
                format_args!("cannot write a spilled argument: {e}"),
            )
        })?;
        // The tail of the last page may be shorter than `span` when the file ends there; the
        // next entry would not fit anyway.
        segment.used = (segment.used + span).min(segment.file.len() as usize);
        Ok(SpillRef {
            file: file_index,
            offset,
            len: bytes.len(),
        })
    }

    /// File `id` (from a [`SpillRef`]), to pass to a worker or map with [`Mapping::map`].
    pub fn file(&self, id: usize) -> Option<&BackingFile> {
        self.segments.get(id).map(|s| &s.file)
    }

    /// How many files exist (0 until the first entry).
    pub fn file_count(&self) -> usize {
        self.segments.len()
    }

    /// The folder the files are in.
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("folder", &self.folder)
            .field("files", &self.segments.len())
            .field("entries", &self.index.values().map(Vec::len).sum::<usize>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::testing::{TempDir, chmod, in_forked_child, is_root};

    fn mapped(file: &BackingFile, offset: u64, len: usize) -> Vec<u8> {
        let map = Mapping::map(file.fd(), offset, len, MapAccess::ReadOnly).unwrap();
        // SAFETY: `map` is a live read-only mapping of `len` bytes that nothing writes meanwhile.
        unsafe { std::slice::from_raw_parts(map.as_ptr(), len) }.to_vec()
    }

    fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
        // SAFETY: F_GETFD on an open descriptor only reads its flags.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn xxh64_matches_the_reference() {
        // Outputs of the reference implementation (python-xxhash 3.x, xxh64, seed 0).
        assert_eq!(content_hash(b""), 0xef46_db37_51d8_e999);
        assert_eq!(content_hash(b"a"), 0xd24e_c4f1_a98c_6e5b);
        assert_eq!(content_hash(b"abc"), 0x44bc_2cf5_ad77_0999);
        assert_eq!(
            content_hash(b"0123456789abcdef0123456789abcdef0"),
            0xe876_84f0_8d6d_0816
        );
        let mut long: Vec<u8> = (0..=255u8).cycle().take(768).collect();
        long.extend_from_slice(b"xyz");
        assert_eq!(content_hash(&long), 0xe921_a1b4_5bd7_79f8);
    }

    #[test]
    fn hash_sees_every_byte_and_the_length() {
        let base = vec![0u8; 100];
        let h = content_hash(&base);
        for i in 0..base.len() {
            let mut flipped = base.clone();
            flipped[i] ^= 1;
            assert_ne!(content_hash(&flipped), h, "byte {i}");
        }
        for n in 0..100 {
            assert_ne!(
                content_hash(&base[..n]),
                content_hash(&base[..n + 1]),
                "{n}"
            );
        }
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
    fn zero_length_file_and_mapping() {
        let dir = TempDir::new();
        let file = BackingFile::create(dir.path(), 0).unwrap();
        assert!(file.is_empty());
        let map = Mapping::map(file.fd(), 0, 0, MapAccess::ReadOnly).unwrap();
        assert!(map.is_empty());
        assert!(!map.as_ptr().is_null());
        assert_eq!(map.as_ptr() as usize % 64, 0);
        drop((map, file));
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
        // SAFETY: stat is plain old data; all-zero is a valid value for it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open and `st` a writable stat.
        assert_eq!(unsafe { libc::fstat(file.fd().as_raw_fd(), &mut st) }, 0);
        assert!(st.st_blocks * 512 >= 64 << 10, "{} blocks", st.st_blocks);
        let data = mapped(&file, 0, 64 << 10);
        assert_eq!(&data[5000..5004], b"keep");
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 4);
    }

    #[test]
    fn mapping_checks_offset_and_bounds() {
        let dir = TempDir::new();
        let file = BackingFile::create(dir.path(), 8192).unwrap();
        let e = Mapping::map(file.fd(), 1, 10, MapAccess::ReadOnly).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = Mapping::map(file.fd(), 4096, 8192, MapAccess::ReadOnly).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.message());
        assert!(Mapping::map(file.fd(), 4096, 4096, MapAccess::ReadOnly).is_ok());
    }

    #[test]
    fn private_mapping_writes_stay_private() {
        let dir = TempDir::new();
        let file = BackingFile::create(dir.path(), 4096).unwrap();
        let private = Mapping::map(file.fd(), 0, 4096, MapAccess::from(MmapMode::C)).unwrap();
        // SAFETY: a live private writable mapping of 4096 bytes, used by this thread only.
        unsafe { private.as_ptr().write(9) };
        assert_eq!(mapped(&file, 0, 1), [0]);
        assert_eq!(MapAccess::from(MmapMode::R), MapAccess::ReadOnly);
        assert_eq!(MapAccess::from(MmapMode::WPlus), MapAccess::Shared);
    }

    #[test]
    fn spill_writes_the_same_content_once() {
        let dir = TempDir::new();
        let mut spill = Spill::new(dir.path());
        assert_eq!(spill.file_count(), 0, "no file before the first entry");
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let first = spill.get_or_write(&big).unwrap();
        // A different allocation with the same content, as a caller rebuilding its array would.
        for _ in 0..5 {
            assert_eq!(spill.get_or_write(&big.clone()).unwrap(), first);
        }
        assert_eq!(spill.file_count(), 1);
        assert_eq!(first.offset % page_size() as u64, 0);
        assert_eq!(
            mapped(spill.file(first.file).unwrap(), first.offset, first.len),
            big
        );
        assert_eq!(dir.entries(), Vec::<String>::new());

        // Different content (one byte, or one byte shorter) is written again.
        let mut other = big.clone();
        other[1_234_567] ^= 0xff;
        let second = spill.get_or_write(&other).unwrap();
        assert_ne!(second, first);
        let shorter = spill.get_or_write(&big[..big.len() - 1]).unwrap();
        assert_ne!(shorter, first);
        assert_eq!(
            mapped(spill.file(second.file).unwrap(), second.offset, second.len),
            other
        );
        assert_eq!(
            mapped(spill.file(first.file).unwrap(), first.offset, first.len),
            big
        );
        // write_new never reuses.
        assert_ne!(spill.write_new(&big).unwrap(), first);
        drop(spill);
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    #[test]
    fn forked_worker_maps_a_spilled_argument_through_the_inherited_fd() {
        let dir = TempDir::new();
        let mut spill = Spill::new(dir.path());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let entry = spill.get_or_write(&data).unwrap();
        let fd = spill.file(entry.file).unwrap().fd();
        // The worker maps read-only (mmap_mode "r") and checks the content without allocating.
        let status = in_forked_child(|| {
            let Ok(map) = Mapping::map(fd, entry.offset, entry.len, MapAccess::ReadOnly) else {
                return 2;
            };
            for i in 0..entry.len {
                // SAFETY: `map` is a live read-only mapping of `entry.len` bytes.
                if unsafe { map.as_ptr().add(i).read() } != (i % 241) as u8 {
                    return 3;
                }
            }
            0
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status}"
        );

        // A write through a read-only view kills the worker with SIGSEGV: never silent corruption.
        let status = in_forked_child(|| {
            let Ok(map) = Mapping::map(fd, entry.offset, entry.len, MapAccess::ReadOnly) else {
                return 2;
            };
            // SAFETY: deliberately not safe: a store to a PROT_READ page, which the kernel turns
            // into SIGSEGV; it ends this forked child only (the default action after Rust's stack
            // overflow handler declines the fault).
            unsafe { std::ptr::write_volatile(map.as_ptr(), 1) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "{status}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
        assert_eq!(
            mapped(spill.file(entry.file).unwrap(), entry.offset, entry.len),
            data
        );
        drop(spill);
        assert_eq!(dir.entries(), Vec::<String>::new());
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
                "memmap::file::tests::fsize_helper",
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

    #[test]
    fn spill_collisions_are_caught_by_comparing_bytes() {
        let dir = TempDir::new();
        let mut spill = Spill::new(dir.path());
        let a = vec![1u8; 5000];
        let b = vec![2u8; 5000];
        let ra = spill.get_or_write(&a).unwrap();
        // Forge a collision: file b's bytes under a's key, as if the hashes were equal.
        let key = (content_hash(&b), b.len());
        spill.index.insert(key, vec![ra]);
        let rb = spill.get_or_write(&b).unwrap();
        assert_ne!(ra, rb);
        assert_eq!(mapped(spill.file(rb.file).unwrap(), rb.offset, rb.len), b);
        assert_eq!(spill.index[&key].len(), 2);
    }

    #[test]
    fn spill_packs_small_entries_and_grows_for_big_ones() {
        let dir = TempDir::new();
        let page = page_size();
        let mut spill = Spill::with_segment_bytes(dir.path(), 4 * page);
        let refs: Vec<_> = (0..4u8)
            .map(|i| spill.write_new(&[i; 100]).unwrap())
            .collect();
        assert_eq!(spill.file_count(), 1);
        let offsets: Vec<u64> = refs.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, page as u64, 2 * page as u64, 3 * page as u64]);
        let next = spill.write_new(&[9; 100]).unwrap();
        assert_eq!((next.file, next.offset), (1, 0));
        let big = vec![5u8; 10 * page + 1];
        let r = spill.write_new(&big).unwrap();
        assert_eq!((r.file, r.offset), (2, 0));
        assert_eq!(spill.file(2).unwrap().len(), 11 * page as u64);
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(
                mapped(spill.file(r.file).unwrap(), r.offset, r.len),
                [i as u8; 100]
            );
        }
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    #[test]
    fn spill_errors() {
        let mut spill = Spill::new("/nope/pj-missing");
        assert_eq!(
            spill.get_or_write(&[]).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let err = spill.get_or_write(b"data").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().starts_with("temp folder /nope/pj-missing: "),
            "{}",
            err.message()
        );
        assert_eq!(spill.file_count(), 0);
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
                "memmap::file::tests::sigkill_helper",
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
