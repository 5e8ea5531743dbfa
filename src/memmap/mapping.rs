//! Memory mappings of part of a backing file ([`Mapping`], unmapped on drop) and how they may be
//! used ([`MapAccess`], numpy's `mmap_mode` in `mmap` terms).
//!
//! The mappings themselves are `memmap2`'s ([`MmapRaw`], whatever the access: a raw map exposes
//! only pointers, which is what pj hands to tasks); this module adds what pj needs on top: the
//! page-alignment and in-file bounds checks (so a touch past the end of the file can never be a
//! SIGBUS), pj's error kinds, and a non-null aligned pointer for zero-length mappings.
//!
//! Mapping and unmapping make no allocation and take no lock (`memmap2` caches the page size and
//! calls `mmap`/`munmap` directly), so a worker forked from a multi-threaded parent may map
//! through an inherited descriptor. The crash handler's alternate signal stack
//! (`backend/crash.rs`) stays a hand-written `mmap`: an anonymous `MAP_STACK | MAP_NORESERVE`
//! mapping with a `PROT_NONE` guard page, which `memmap2` cannot express (it offers no guard page
//! and no `mprotect`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};
use rustix::param::page_size;

use crate::config::MmapMode;
use crate::error::{Error, ErrorKind, Result};

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
    /// `None` for a zero-length mapping.
    map: Option<MmapRaw>,
    access: MapAccess,
}

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
        Mapping { map: None, access }
    }

    /// Maps bytes `offset..offset + len` of `fd`. `offset` must be a multiple of the page size
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
        let size = file_size(fd)?;
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size)
            && i64::try_from(offset).is_ok();
        if !fits {
            return Err(Error::invalid(format!(
                "cannot map bytes {offset}..+{len}: the file has only {size} bytes"
            )));
        }
        let mut options = MmapOptions::new();
        options.offset(offset).len(len);
        let raw = fd.as_raw_fd();
        let map = match access {
            MapAccess::ReadOnly => options.map_raw_read_only(raw),
            MapAccess::Shared => options.map_raw(raw),
            // SAFETY: `map_copy` is unsafe only because the `MmapMut` it returns derefs to a
            // slice whose bytes another process could change (through the file) while it is
            // borrowed. It becomes a raw map at once, before any slice exists, and a `Mapping`
            // exposes pointers only; the range was checked to lie inside the file.
            MapAccess::Private => unsafe { options.map_copy(raw) }.map(MmapRaw::from),
        };
        let map =
            map.map_err(|e| Error::new(ErrorKind::Io, format!("cannot map {len} bytes: {e}")))?;
        Ok(Mapping {
            map: Some(map),
            access,
        })
    }

    /// Maps all of `fd` (its size read now); an empty file maps nothing.
    pub fn map_whole(fd: BorrowedFd<'_>, access: MapAccess) -> Result<Self> {
        let size = file_size(fd)?;
        let len = usize::try_from(size)
            .map_err(|_| Error::invalid(format!("cannot map a file of {size} bytes")))?;
        Self::map(fd, 0, len, access)
    }

    /// Keeps the mapping out of processes forked from now on (`MADV_DONTFORK`): a worker forked
    /// later does not inherit it, so it neither sees nor holds the file through it.
    pub fn dont_fork(&self) -> Result<()> {
        match &self.map {
            Some(map) => map
                .advise(memmap2::Advice::DontFork)
                .map_err(|e| Error::new(ErrorKind::Io, format!("cannot advise a mapping: {e}"))),
            None => Ok(()),
        }
    }

    /// Maps the pages of bytes `offset..offset + len` of the mapping now, writable
    /// (`MADV_POPULATE_WRITE`), so that writing them takes no page fault. The pages must be
    /// reserved in the file. Best effort: a kernel without it (before 5.14) faults them in as
    /// they are written instead.
    pub fn populate_write(&self, offset: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let page = page_size();
        let start = offset / page * page;
        let end = offset.saturating_add(len).min(map.len());
        if end > start {
            let _ = map.advise_range(memmap2::Advice::PopulateWrite, start, end - start);
        }
    }

    /// Maps the pages of bytes `offset..offset + len` of the mapping now (`MADV_POPULATE_READ`),
    /// the way a read fault does: many pages per fault where the file system maps around the
    /// faulting one (shmem and tmpfs do). For a shared mapping of a file the kernel does not
    /// track writes to (tmpfs, `/dev/shm`) the pages come writable, so that writing them then
    /// takes no fault either; elsewhere a write still faults once per page. Best effort, as
    /// [`Mapping::populate_write`].
    pub fn populate_read(&self, offset: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let page = page_size();
        let start = offset / page * page;
        let end = offset.saturating_add(len).min(map.len());
        if end > start {
            let _ = map.advise_range(memmap2::Advice::PopulateRead, start, end - start);
        }
    }

    /// The first mapped byte; for an empty mapping, a non-null, 64-byte-aligned pointer that must
    /// not be dereferenced. Writing through it is allowed only for [`MapAccess::Shared`] and
    /// [`MapAccess::Private`] (a write to a read-only mapping is a SIGSEGV).
    pub fn as_ptr(&self) -> *mut u8 {
        match &self.map {
            Some(map) => map.as_mut_ptr(),
            None => dangling().as_ptr(),
        }
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, MmapRaw::len)
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How the mapping may be used.
    pub fn access(&self) -> MapAccess {
        self.access
    }
}

/// The size of the file behind `fd`.
fn file_size(fd: BorrowedFd<'_>) -> Result<u64> {
    let stat = rustix::fs::fstat(fd).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot map a file: {}", io::Error::from(e)),
        )
    })?;
    // A negative size (never reported for a regular file) fits nothing.
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::BackingFile;
    use crate::memmap::testing::{TempDir, mapped};

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
}
