//! The content-keyed spill of a call's large arguments: each distinct byte string is written once
//! per call to anonymous backing files, at page-aligned offsets that workers map directly.
//!
//! A spill outlives its call when its executor keeps it: [`Spill::clear`] forgets every entry but
//! keeps the files and the space reserved in them, so the next call writes its arguments at the
//! same offsets, into pages the file system has already allocated (and that kept workers still
//! map), instead of creating, reserving, faulting in and finally freeing fresh ones.
//!
//! The spill maps its files itself (shared, never inherited by a fork) and copies entries in
//! with `memcpy`; it finds earlier copies of the same content by a key that hashes a sample of
//! the bytes ([`sample_key`]), confirmed by comparing every byte, so a distinct argument costs
//! one copy and no pass over it besides.

use std::collections::HashMap;
use std::path::PathBuf;

use rustix::param::page_size;

use super::backing::{BackingFile, round_up};
use super::hash::content_hash;
use super::mapping::{MapAccess, Mapping};
use crate::error::{Error, Result};

/// Smallest file the spill creates: small entries share files (fewer descriptors), while the
/// unreserved tail of a file costs nothing, since files are sparse until reserved.
pub const DEFAULT_SEGMENT_BYTES: usize = 64 << 20;

/// Of the entries whose key equals an argument's, at most this many (the latest) are compared
/// with it: arguments that share their sampled bytes but differ elsewhere cost a bounded number
/// of comparisons each, never one per earlier entry (at worst a duplicate is written twice).
pub const MAX_CANDIDATES: usize = 4;

/// Up to this length, the key hashes every byte.
const FULLY_HASHED: usize = 64 << 10;

/// Bytes sampled from a longer argument: its first and last [`EDGE`] bytes and [`WINDOWS`]
/// windows of [`WINDOW`] bytes spread evenly between.
const EDGE: usize = 256;
const WINDOWS: usize = 64;
const WINDOW: usize = 64;

/// The key that finds candidates for reuse: XXH64 of `bytes` up to [`FULLY_HASHED`] bytes, of a
/// fixed sample of about 4.5 KiB beyond (so that keying a large argument costs next to nothing,
/// while arrays that differ in their values almost always differ in the sample too). Equal keys
/// are only candidates: [`Spill::get_or_write`] compares the bytes.
pub fn sample_key(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    if len <= FULLY_HASHED {
        return content_hash(bytes);
    }
    let mut sample = [0u8; 2 * EDGE + WINDOWS * WINDOW];
    sample[..EDGE].copy_from_slice(&bytes[..EDGE]);
    sample[EDGE..2 * EDGE].copy_from_slice(&bytes[len - EDGE..]);
    let stride = (len - WINDOW) / WINDOWS;
    for (i, window) in sample[2 * EDGE..].chunks_exact_mut(WINDOW).enumerate() {
        let at = i * stride;
        window.copy_from_slice(&bytes[at..at + WINDOW]);
    }
    content_hash(&sample)
}

/// Where a spilled byte string lives: file `file` of the [`Spill`], `len` bytes at `offset`.
/// `offset` is a multiple of the page size, so a worker can map the entry directly.
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
    /// All of `file`, shared and writable, in this process only (not inherited by forks):
    /// entries are copied in and compared through it, so an argument costs one `memcpy` into
    /// pages that stay mapped from call to call, with no system call.
    map: Mapping,
    /// Bytes handed out so far (page-aligned): the next entry starts here.
    used: usize,
    /// Bytes `0..reserved` are reserved (by this or an earlier call): writing there needs no
    /// `fallocate`.
    reserved: u64,
}

/// The large arguments of one call, written to anonymous files in the temp folder so workers can
/// map them instead of reading them through a pipe. Content-keyed: the same bytes submitted to
/// every task are written once ([`get_or_write`](Spill::get_or_write)). No file exists until the
/// first entry is written, and every file goes when the `Spill` and the workers' mappings do.
pub struct Spill {
    folder: PathBuf,
    segment_bytes: usize,
    segments: Vec<Segment>,
    /// The segment new entries go to; earlier ones are full (for this call).
    current: usize,
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
            current: 0,
            index: HashMap::new(),
        }
    }

    /// The folder the files are in.
    pub fn folder(&self) -> &std::path::Path {
        &self.folder
    }

    /// Forgets every entry (their bytes may be overwritten from now on) but keeps the files and
    /// the space reserved in them: the next entries are written from the first file's start
    /// again, without creating or reserving anything until they outgrow what earlier ones used.
    /// Only for when nobody reads the entries any more (every task of the call has ended).
    pub fn clear(&mut self) {
        self.index.clear();
        for segment in &mut self.segments {
            segment.used = 0;
        }
        self.current = 0;
    }

    /// Bytes reserved in the files (what the spill holds of the file system while it lives).
    pub fn reserved_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.reserved).sum()
    }

    /// Where `bytes` is stored, writing it only if identical content was stored before (equal
    /// [`sample_key`], length **and** bytes; of the entries with the same key, the last
    /// [`MAX_CANDIDATES`] are compared). Meant for read-only (`r`) and copy-on-write (`c`) arguments:
    /// an entry may be handed to many tasks, so a worker mapping it writable (`r+`, `w+`) would
    /// change what later tasks see; give those [`write_new`](Self::write_new).
    ///
    /// `bytes` must not be empty: an argument is spilled only when it is larger than
    /// `max_nbytes >= 0`. A full folder is an [`ErrorKind::Io`](crate::ErrorKind::Io) naming it;
    /// nothing is partially recorded then.
    pub fn get_or_write(&mut self, bytes: &[u8]) -> Result<SpillRef> {
        let key = (sample_key(bytes), bytes.len());
        if let Some(candidates) = self.index.get(&key) {
            for &entry in candidates.iter().rev().take(MAX_CANDIDATES) {
                let map = &self.segments[entry.file].map;
                // SAFETY: the entry's bytes lie inside the mapping and are reserved; in this mode
                // no worker writes them (read-only or private mappings), and this process writes
                // them only through `&mut self`.
                let stored = unsafe {
                    std::slice::from_raw_parts(map.as_ptr().add(entry.offset as usize), entry.len)
                };
                if stored == bytes {
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
        // The first file from the current one on with room (a later, larger one kept from an
        // earlier call may take an entry the current one cannot), else a new one.
        let fits = |s: &Segment| s.file.len() as usize - s.used >= bytes.len();
        let found = self.segments.iter().skip(self.current).position(fits);
        let file_index = match found {
            Some(skip) => self.current + skip,
            None => {
                let size = span.max(self.segment_bytes);
                let file = BackingFile::create_sparse(&self.folder, size as u64)?;
                let map = Mapping::map(file.fd(), 0, size, MapAccess::Shared)?;
                map.dont_fork()?;
                self.segments.push(Segment {
                    file,
                    map,
                    used: 0,
                    reserved: 0,
                });
                self.segments.len() - 1
            }
        };
        self.current = file_index;
        let segment = &mut self.segments[file_index];
        let offset = segment.used as u64;
        let end = offset + bytes.len() as u64;
        if end > segment.reserved {
            // From the end of what is reserved, gaps between entries included, so that bytes
            // `0..reserved` are all backed whatever the next call's entries look like.
            let from = segment.reserved;
            segment.file.reserve(from, end - from)?;
            segment.reserved = end;
            // One system call rather than a page fault per page of the copy below; later calls
            // find the pages mapped.
            segment
                .map
                .populate_write(from as usize, (end - from) as usize);
        }
        // SAFETY: `offset + bytes.len()` lies inside the file, hence the mapping, and is reserved
        // (so the store cannot SIGBUS); nobody else reads or writes the range yet: it was not
        // handed out in this call, and every task of earlier calls has ended.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                segment.map.as_ptr().add(offset as usize),
                bytes.len(),
            );
        }
        // The tail of the last page may be shorter than `span` when the file ends there; the
        // next entry would not fit anyway.
        segment.used = (segment.used + span).min(segment.file.len() as usize);
        Ok(SpillRef {
            file: file_index,
            offset,
            len: bytes.len(),
        })
    }

    /// File `id` (from a [`SpillRef`]), to pass to a worker or map with
    /// [`Mapping::map`](super::Mapping::map).
    pub fn file(&self, id: usize) -> Option<&BackingFile> {
        self.segments.get(id).map(|s| &s.file)
    }

    /// How many files exist (0 until the first entry).
    #[cfg(test)]
    pub fn file_count(&self) -> usize {
        self.segments.len()
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
    use crate::error::ErrorKind;
    use crate::memmap::testing::{TempDir, in_forked_child, mapped};
    use crate::memmap::{MapAccess, Mapping};

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

    #[test]
    fn arguments_equal_in_their_sample_but_not_elsewhere_are_kept_apart() {
        let dir = TempDir::new();
        let mut spill = Spill::new(dir.path());
        let base = vec![0u8; 1 << 20];
        // Bytes the sample skips (just after the first window), set in each variant.
        let variant = |i: usize| {
            let mut v = base.clone();
            v[EDGE + WINDOW + i] = 1 + i as u8;
            v
        };
        assert_eq!(sample_key(&variant(0)), sample_key(&base));
        let refs: Vec<SpillRef> = (0..MAX_CANDIDATES + 3)
            .map(|i| spill.get_or_write(&variant(i)).unwrap())
            .collect();
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(
                mapped(spill.file(r.file).unwrap(), r.offset, r.len),
                variant(i)
            );
        }
        let distinct: std::collections::HashSet<_> = refs.iter().collect();
        assert_eq!(distinct.len(), refs.len());
        // The latest of them is found again; an earlier one beyond the compared few is written
        // again (a lost reuse, never wrong bytes).
        let last = refs.len() - 1;
        assert_eq!(spill.get_or_write(&variant(last)).unwrap(), refs[last]);
        let again = spill.get_or_write(&variant(0)).unwrap();
        assert_eq!(
            mapped(spill.file(again.file).unwrap(), again.offset, again.len),
            variant(0)
        );
        // A change the sample sees makes another key.
        let mut seen = base.clone();
        seen[0] = 9;
        assert_ne!(sample_key(&seen), sample_key(&base));
        let mut tail = base.clone();
        tail[base.len() - 1] = 9;
        assert_ne!(sample_key(&tail), sample_key(&base));
    }

    #[test]
    fn spill_collisions_are_caught_by_comparing_bytes() {
        let dir = TempDir::new();
        let mut spill = Spill::new(dir.path());
        let a = vec![1u8; 5000];
        let b = vec![2u8; 5000];
        let ra = spill.get_or_write(&a).unwrap();
        // Forge a collision: file b's bytes under a's key, as if the hashes were equal.
        let key = (sample_key(&b), b.len());
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
    fn a_cleared_spill_writes_again_at_the_same_offsets_of_the_same_files() {
        let dir = TempDir::new();
        let page = page_size();
        let mut spill = Spill::with_segment_bytes(dir.path(), 4 * page);
        let a: Vec<u8> = (0..2 * page + 10).map(|i| (i % 253) as u8).collect();
        let b = vec![7u8; 3 * page];
        let first = [
            spill.get_or_write(&a).unwrap(),
            spill.get_or_write(&b).unwrap(),
        ];
        assert_eq!(spill.file_count(), 2);
        let reserved = spill.reserved_bytes();
        assert_eq!(reserved, (2 * page + 10 + 3 * page) as u64);
        let inode = |spill: &Spill, i: usize| {
            rustix::fs::fstat(spill.file(i).unwrap().fd())
                .unwrap()
                .st_ino
        };
        let inodes = [inode(&spill, 0), inode(&spill, 1)];

        spill.clear();
        // The same layout lands on the same bytes: no file made, nothing more reserved.
        let c: Vec<u8> = a.iter().map(|x| x ^ 0x5a).collect();
        let again = [
            spill.get_or_write(&c).unwrap(),
            spill.get_or_write(&b).unwrap(),
        ];
        assert_eq!(again, first);
        assert_eq!(spill.file_count(), 2);
        assert_eq!(spill.reserved_bytes(), reserved);
        assert_eq!([inode(&spill, 0), inode(&spill, 1)], inodes);
        assert_eq!(mapped(spill.file(0).unwrap(), 0, c.len()), c);
        // The index was forgotten: `a`, overwritten by `c`, is written anew, not found stale.
        let a_again = spill.get_or_write(&a).unwrap();
        assert_ne!(a_again, first[0]);
        assert_eq!(
            mapped(spill.file(a_again.file).unwrap(), a_again.offset, a.len()),
            a
        );
        assert_eq!(mapped(spill.file(0).unwrap(), 0, c.len()), c);

        // An entry larger than the files before it goes to a larger one kept from before.
        let big = vec![1u8; 10 * page];
        assert_eq!(
            spill.write_new(&big).unwrap(),
            SpillRef {
                file: 3,
                offset: 0,
                len: big.len()
            }
        );
        spill.clear();
        assert_eq!(spill.write_new(&[2; 100]).unwrap().file, 0);
        assert_eq!(
            spill.write_new(&big).unwrap(),
            SpillRef {
                file: 3,
                offset: 0,
                len: big.len()
            }
        );
        assert_eq!(spill.file_count(), 4);
        drop(spill);
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
}
