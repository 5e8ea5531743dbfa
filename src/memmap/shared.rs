//! [`SharedBuffer`]: memory that a call's tasks write in place, whatever backend runs them; the
//! Rust side of the C type `pj_shared_t` (joblib's documented pattern of a `w+` output array that
//! every task fills).
//!
//! Backing: an anonymous file from [`BackingFile`] in the resolved temp folder, mapped
//! `MAP_SHARED`, rather than `memfd_create` or `MAP_SHARED | MAP_ANONYMOUS`. Both alternatives would
//! work for sharing, but the file:
//! - honours `temp_folder`, so a user who points pj at a big disk gets the space from there;
//! - has its space reserved up front with `fallocate`, so a full folder is an
//!   [`ErrorKind::Io`](crate::ErrorKind) from `pj_shared_new`, never a SIGBUS in a task (a memfd or
//!   anonymous shared mapping is charged page by page on first touch, and a full `/dev/shm` or
//!   memory cgroup surfaces as SIGBUS or the OOM killer in the middle of a call);
//! - has a descriptor, so a worker forked *before* the buffer existed can still receive and map it
//!   (`SCM_RIGHTS`), which an anonymous mapping cannot offer.
//!
//! It has no name (see [`backing`](super::backing)), so nothing is left in the folder however the
//! process ends.

use std::path::Path;

use super::{BackingFile, MapAccess, Mapping};
use crate::error::Result;

/// A zero-filled buffer shared between the caller and every process forked after its creation:
/// a worker's writes are seen by the parent and by other workers, without copies.
///
/// Writes from several tasks to the same bytes are not synchronised; as joblib documents for its
/// `w+` arrays, each task should write its own slice.
#[derive(Debug)]
pub struct SharedBuffer {
    /// `None` for a zero-length buffer: no file is created. Kept open for the buffer's life (tests
    /// hand its descriptor to a worker forked before the buffer existed).
    #[cfg_attr(not(test), allow(dead_code))]
    file: Option<BackingFile>,
    map: Mapping,
}

impl SharedBuffer {
    /// A zero-filled shared buffer of `nbytes` bytes whose space comes from `folder` (a resolved
    /// temp folder). A folder that is missing, unwritable or too full is an
    /// [`ErrorKind::Io`](crate::ErrorKind) naming it and the errno.
    ///
    /// `nbytes == 0` creates no file and maps nothing: [`data`](Self::data) is then a non-null,
    /// 64-byte-aligned pointer that must not be dereferenced (so C code may keep the common
    /// "NULL means error" check, and a loop over zero bytes does the right thing).
    pub fn new(folder: &Path, nbytes: usize) -> Result<Self> {
        if nbytes == 0 {
            return Ok(SharedBuffer {
                file: None,
                map: Mapping::empty(MapAccess::Shared),
            });
        }
        let file = BackingFile::create(folder, nbytes as u64)?;
        let map = Mapping::map(file.fd(), 0, nbytes, MapAccess::Shared)?;
        Ok(SharedBuffer {
            file: Some(file),
            map,
        })
    }

    /// The first byte of the buffer: valid for reads and writes of [`len`](Self::len) bytes, in
    /// this process and in processes forked after the buffer was created, until it is dropped.
    /// Stable: the buffer never moves.
    pub fn data(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the buffer has no bytes.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The backing file's descriptor (close-on-exec), to hand to a worker that was forked before
    /// the buffer existed; `None` for a zero-length buffer.
    #[cfg(test)]
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.file.as_ref().map(BackingFile::fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::memmap::testing::{TempDir, in_forked_child};

    fn pattern(i: usize) -> u8 {
        (i * 31 % 253) as u8 + 1
    }

    #[test]
    fn writes_in_a_forked_child_are_seen_by_the_parent() {
        let dir = TempDir::new();
        let len = 3 * 4096 + 17;
        let buffer = SharedBuffer::new(dir.path(), len).unwrap();
        assert_eq!(buffer.len(), len);
        assert!(buffer.fd().is_some());
        // SAFETY: `data` is valid for `len` bytes while `buffer` lives; no other thread uses it.
        let view = unsafe { std::slice::from_raw_parts(buffer.data(), len) };
        assert!(view.iter().all(|&b| b == 0), "zero-filled");
        assert_eq!(dir.entries(), Vec::<String>::new(), "no entry while alive");

        let data = buffer.data();
        let status = in_forked_child(|| {
            for i in 0..len {
                // SAFETY: the child's copy of the shared mapping is valid for `len` bytes.
                unsafe { data.add(i).write(pattern(i)) };
            }
            0
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status}"
        );
        // SAFETY: as above; the child has exited, so nothing writes the buffer any more.
        let view = unsafe { std::slice::from_raw_parts(buffer.data(), len) };
        for (i, &b) in view.iter().enumerate() {
            assert_eq!(b, pattern(i), "byte {i}");
        }
        drop(buffer);
        assert_eq!(dir.entries(), Vec::<String>::new(), "no entry after drop");
    }

    #[test]
    fn parent_writes_before_the_fork_are_seen_by_the_child() {
        let dir = TempDir::new();
        let buffer = SharedBuffer::new(dir.path(), 8).unwrap();
        // SAFETY: valid for 8 bytes; this thread alone uses it.
        unsafe { buffer.data().write(42) };
        let data = buffer.data();
        let status = in_forked_child(|| {
            // SAFETY: the child's view of the shared mapping, valid for 8 bytes.
            unsafe { data.add(1).write(data.read() + 1) };
            0
        });
        assert!(libc::WIFEXITED(status), "{status}");
        // SAFETY: valid for 8 bytes; the child has exited.
        assert_eq!(unsafe { data.add(1).read() }, 43);
    }

    #[test]
    fn zero_bytes_creates_nothing() {
        let dir = TempDir::new();
        let buffer = SharedBuffer::new(dir.path(), 0).unwrap();
        assert!(buffer.is_empty());
        assert!(!buffer.data().is_null());
        assert_eq!(buffer.data() as usize % 64, 0);
        assert!(buffer.fd().is_none());
        // Even a missing folder is fine: no file is needed.
        assert!(SharedBuffer::new(Path::new("/nope/pj-missing"), 0).is_ok());
        assert_eq!(dir.entries(), Vec::<String>::new());
    }

    #[test]
    fn bad_folder_is_an_io_error() {
        let err = SharedBuffer::new(Path::new("/nope/pj-missing"), 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().starts_with("temp folder /nope/pj-missing: ")
                && err
                    .message()
                    .ends_with("No such file or directory (os error 2)"),
            "{}",
            err.message()
        );
    }
}
