//! Memory mappings of part of a backing file ([`Mapping`], unmapped on drop) and how they may be
//! used ([`MapAccess`], numpy's `mmap_mode` in `mmap` terms).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use super::backing::page_size;
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
