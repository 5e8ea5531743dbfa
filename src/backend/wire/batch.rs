//! The encoding of a batch: its callbacks (function address and userdata address, valid in the
//! worker because it is a fork of the parent; or registry indices for a spawned worker), its
//! argument end offsets and argument bytes, the run flags, and the spill files it refers to.

use std::io;

use super::{Reader, malformed, out_of_memory, put};
use crate::memmap::MapAccess;
use crate::task::{ArgRef, Batch, Callback, RunSettings, TaskFailure, TaskFn};

/// How the worker runs a batch: the call's [`RunSettings`], and what a worker process needs
/// beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunFlags {
    /// The settings every worker runs the call's tasks with.
    pub settings: RunSettings,
    /// How spilled arguments are mapped (mmap_mode).
    pub access: MapAccess,
    /// Which call the batch belongs to: a kept worker drops the previous call's spill files when
    /// it changes.
    pub call: u64,
    /// Which spill files the batch's arguments are in ([`crate::backend::CallFiles::epoch`]): a
    /// worker keeps the files and mappings of one epoch, across calls, and drops them when it
    /// changes.
    pub spill_epoch: u64,
    /// Results longer than this many bytes go back through files (u64::MAX: never).
    pub results_above: u64,
}

impl Default for RunFlags {
    fn default() -> Self {
        RunFlags {
            settings: RunSettings::default(),
            access: MapAccess::ReadOnly,
            call: 0,
            spill_epoch: 0,
            results_above: u64::MAX,
        }
    }
}

impl RunFlags {
    fn bits(self) -> usize {
        let access = match self.access {
            MapAccess::ReadOnly => 0,
            MapAccess::Shared => 1,
            MapAccess::Private => 2,
        };
        usize::from(self.settings.timed) | usize::from(self.settings.collect) << 1 | access << 2
    }

    fn from_bits(bits: usize) -> io::Result<Self> {
        let access = match (bits >> 2) & 3 {
            0 => MapAccess::ReadOnly,
            1 => MapAccess::Shared,
            2 => MapAccess::Private,
            _ => return Err(malformed("batch")),
        };
        Ok(RunFlags {
            settings: RunSettings {
                timed: bits & 1 != 0,
                collect: bits & 2 != 0,
            },
            access,
            call: 0,
            spill_epoch: 0,
            results_above: u64::MAX,
        })
    }
}

/// Encodes `batch` into `out` (cleared first), its argument bytes last: [`encode_batch_meta`]
/// followed by the bytes (one buffer, for transports that send one message).
///
/// The frame is as large as the batch's arguments: when it cannot be allocated, this is an
/// [`io::ErrorKind::OutOfMemory`] error (never an abort).
#[cfg(test)]
pub fn encode_batch(
    batch: &Batch,
    flags: RunFlags,
    attached: &[u64],
    lent: &[LentSlab],
    results_folder: &[u8],
    by_index: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    encode_batch_meta(batch, flags, attached, lent, results_folder, by_index, out)?;
    let (_, args, _) = batch.parts();
    out.try_reserve_exact(args.len())
        .map_err(|e| out_of_memory(args.len(), &e))?;
    out.extend_from_slice(args);
    Ok(())
}

/// Encodes everything of `batch` but its argument bytes into `out` (cleared first): a socket
/// sends those from the batch's own buffer (`batch.parts().1`) right after it. Of `batch.forced`
/// only the indices travel: the worker skips those tasks, and the parent, which kept the batch,
/// merges their failures.
/// `attached` lists the ids of the spill files whose descriptors travel with this frame, in the
/// order of the descriptors; `lent`, the result slabs lent with the batch (the descriptors of
/// those `with_fd` follow the spill files'); `results_folder` is where the worker makes slabs for
/// results above `flags.results_above` when no lent one fits. `by_index`: the worker was spawned, not forked, so callbacks travel as
/// registry indices (the caller checked that every task's function is registered).
///
/// Its size is a few words per task: when it cannot be allocated, this is an
/// [`io::ErrorKind::OutOfMemory`] error (never an abort).
pub fn encode_batch_meta(
    batch: &Batch,
    flags: RunFlags,
    attached: &[u64],
    lent: &[LentSlab],
    results_folder: &[u8],
    by_index: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let (callbacks, _, arg_ends) = batch.parts();
    out.clear();
    // Everything written below (the argument bytes are not, only their length), so that nothing
    // reallocates.
    let len = 88
        + callbacks.len() * 24
        + results_folder.len()
        + batch.forced.len() * 8
        + batch.spilled.len() * 32
        + attached.len() * 8
        + lent.len() * 24;
    out.try_reserve_exact(len)
        .map_err(|e| out_of_memory(len, &e))?;
    put(out, batch.first);
    put(out, callbacks.len());
    put(out, batch.parts().1.len());
    put(out, flags.bits());
    out.extend_from_slice(&flags.call.to_ne_bytes());
    out.extend_from_slice(&flags.spill_epoch.to_ne_bytes());
    out.extend_from_slice(&flags.results_above.to_ne_bytes());
    put(out, results_folder.len());
    out.extend_from_slice(results_folder);
    put(out, batch.forced.len());
    for (index, _) in &batch.forced {
        put(out, *index);
    }
    put(out, batch.spilled.len());
    for (index, at) in &batch.spilled {
        put(out, *index);
        out.extend_from_slice(&at.file.to_ne_bytes());
        out.extend_from_slice(&at.offset.to_ne_bytes());
        put(out, at.len);
    }
    put(out, attached.len());
    for id in attached {
        out.extend_from_slice(&id.to_ne_bytes());
    }
    put(out, lent.len());
    for slab in lent {
        out.extend_from_slice(&slab.id.to_ne_bytes());
        put(out, slab.capacity);
        put(out, usize::from(slab.with_fd));
    }
    // Tasks of a batch usually share their function: look each one up once.
    let mut last: Option<(usize, usize)> = None;
    for callback in callbacks {
        let (mut func, userdata) = callback.to_raw();
        if by_index {
            func = match last {
                Some((address, index)) if address == func => index,
                _ => {
                    let index = crate::registry::index_of(callback.func())
                        .map_or(usize::MAX, |i| i as usize);
                    last = Some((func, index));
                    index
                }
            };
        }
        put(out, func);
        put(out, userdata);
    }
    for &end in arg_ends {
        put(out, end);
    }
    Ok(())
}

/// A result slab lent to the worker with a batch (see `backend::slabs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LentSlab {
    /// The caller's id of the slab.
    pub id: u64,
    /// Its size in bytes.
    pub capacity: usize,
    /// Its descriptor comes with this frame (else the worker holds it from its previous batch).
    pub with_fd: bool,
}

/// A batch as the worker receives it.
#[derive(Debug)]
pub struct DecodedBatch {
    /// The tasks.
    pub batch: Batch,
    /// How to run them.
    pub flags: RunFlags,
    /// The ids of the spill files whose descriptors came with the frame, in their order.
    pub attached: Vec<u64>,
    /// The result slabs lent with the batch; the descriptors of those `with_fd` follow the spill
    /// files' in the frame, in this order.
    pub lent: Vec<LentSlab>,
    /// Where to write results above `flags.results_above` (a path, as bytes).
    pub results_folder: Vec<u8>,
}

/// Decodes a batch encoded by [`encode_batch`] (its argument bytes are copied out of `buf`);
/// with `functions` (a spawned worker's registry), callbacks are registry indices into it.
///
/// # Safety
/// Without `functions`, `buf` must come from `encode_batch` in this process or the process this
/// one was forked from, so that its callback addresses are valid here.
#[cfg(test)]
pub unsafe fn decode_batch(buf: &[u8], functions: Option<&[TaskFn]>) -> io::Result<DecodedBatch> {
    let mut r = Reader { buf, what: "batch" };
    // SAFETY: forwarded from this function's contract.
    let head = unsafe { decode_head(&mut r, functions) }?;
    let bytes = r.bytes(head.args_len)?;
    let mut args = Vec::new();
    args.try_reserve_exact(bytes.len())
        .map_err(|e| out_of_memory(bytes.len(), &e))?;
    args.extend_from_slice(bytes);
    head.into_batch(args)
}

/// Decodes a batch sent as two parts: `meta` from [`encode_batch_meta`] and the argument bytes,
/// `args`, which become the batch's own (moved, not copied: the worker takes them back with
/// [`Batch::into_args`] for the next frame).
///
/// # Safety
/// As for [`decode_batch`], with `meta` for `buf`.
pub unsafe fn decode_batch_parts(
    meta: &[u8],
    args: Vec<u8>,
    functions: Option<&[TaskFn]>,
) -> io::Result<DecodedBatch> {
    // SAFETY: forwarded from this function's contract.
    let head = unsafe { decode_meta(meta, functions) }?;
    if args.len() != head.args_len {
        return Err(malformed("batch"));
    }
    head.into_batch(args)
}

/// Decodes a batch whose argument bytes, `args`, lie in spill file `file` from offset 0 (an MPI
/// worker rank received the batch's message there): arguments longer than `above` bytes stay
/// there (spilled, for the worker process to map), the others are copied into the batch.
///
/// # Safety
/// As for [`decode_batch_parts`].
pub unsafe fn decode_batch_landed(
    meta: &[u8],
    args: &[u8],
    file: u64,
    above: usize,
    functions: Option<&[TaskFn]>,
) -> io::Result<DecodedBatch> {
    // SAFETY: forwarded from this function's contract.
    let head = unsafe { decode_meta(meta, functions) }?;
    let Head {
        first,
        callbacks,
        arg_ends,
        args_len,
        forced,
        spilled,
        mut decoded,
    } = head;
    if args.len() != args_len
        || !spilled.is_empty()
        || arg_ends.windows(2).any(|w| w[0] > w[1])
        || arg_ends.last().is_some_and(|&end| end != args_len)
    {
        return Err(malformed("batch"));
    }
    let mut batch = Batch::new(first, callbacks.len());
    let mut start = 0;
    for (callback, end) in callbacks.into_iter().zip(arg_ends) {
        let arg = &args[start..end];
        if arg.len() > above {
            let offset = start as u64;
            batch.push_spilled(
                callback,
                ArgRef {
                    file,
                    offset,
                    len: arg.len(),
                },
            );
        } else {
            batch
                .push(callback, arg)
                .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.message().to_owned()))?;
        }
        start = end;
    }
    batch.forced = forced
        .into_iter()
        .map(|index| (index, TaskFailure::Io(String::new())))
        .collect();
    decoded.batch = batch;
    Ok(decoded)
}

/// The index of the first task and the number of tasks of a batch whose meta part
/// ([`encode_batch_meta`]) is `meta`: enough to answer a frame whose arguments could not be had.
pub fn batch_span(meta: &[u8]) -> io::Result<(usize, usize)> {
    let mut r = Reader {
        buf: meta,
        what: "batch",
    };
    Ok((r.word()?, r.word()?))
}

/// Everything of a decoded batch but its argument bytes.
struct Head {
    first: usize,
    callbacks: Vec<Callback>,
    arg_ends: Vec<usize>,
    args_len: usize,
    forced: Vec<usize>,
    spilled: Vec<(usize, ArgRef)>,
    decoded: DecodedBatch,
}

impl Head {
    /// The batch, with `args` (`args_len` bytes) for its argument bytes.
    fn into_batch(self, args: Vec<u8>) -> io::Result<DecodedBatch> {
        let Head {
            first,
            callbacks,
            arg_ends,
            args_len,
            forced,
            spilled,
            mut decoded,
        } = self;
        if args.len() != args_len
            || arg_ends.windows(2).any(|w| w[0] > w[1])
            || arg_ends.last().is_some_and(|&end| end != args_len)
        {
            return Err(malformed("batch"));
        }
        let mut batch = Batch::from_parts(first, callbacks, args, arg_ends);
        // The worker only needs to know which tasks to skip; the failures themselves stay with
        // the parent.
        batch.forced = forced
            .into_iter()
            .map(|index| (index, TaskFailure::Io(String::new())))
            .collect();
        batch.spilled = spilled;
        decoded.batch = batch;
        Ok(decoded)
    }
}

/// Reads a whole meta part (what [`encode_batch_meta`] wrote, nothing after it).
///
/// # Safety
/// As for [`decode_batch`].
unsafe fn decode_meta(meta: &[u8], functions: Option<&[TaskFn]>) -> io::Result<Head> {
    let mut r = Reader {
        buf: meta,
        what: "batch",
    };
    // SAFETY: forwarded from this function's contract.
    let head = unsafe { decode_head(&mut r, functions) }?;
    if !r.buf.is_empty() {
        return Err(malformed("batch"));
    }
    Ok(head)
}

/// Reads what [`encode_batch_meta`] wrote.
///
/// # Safety
/// As for [`decode_batch`].
unsafe fn decode_head(r: &mut Reader<'_>, functions: Option<&[TaskFn]>) -> io::Result<Head> {
    let (first, count, args_len) = (r.word()?, r.word()?, r.word()?);
    let mut flags = RunFlags::from_bits(r.word()?)?;
    flags.call = r.word()? as u64;
    flags.spill_epoch = r.word()? as u64;
    flags.results_above = r.word()? as u64;
    let folder_len = r.word()?;
    let results_folder = r.bytes(folder_len)?.to_vec();
    let forced_count = r.word()?;
    if forced_count > count {
        return Err(malformed("batch"));
    }
    let forced = r.words(forced_count)?;
    let spilled_count = r.word()?;
    if spilled_count > count {
        return Err(malformed("batch"));
    }
    let mut spilled = Vec::with_capacity(spilled_count);
    for _ in 0..spilled_count {
        let index = r.word()?;
        let (file, offset) = (r.word()? as u64, r.word()? as u64);
        let len = r.word()?;
        spilled.push((index, ArgRef { file, offset, len }));
    }
    let attached_count = r.word()?;
    let attached = r
        .words(attached_count)?
        .into_iter()
        .map(|id| id as u64)
        .collect();
    let lent_count = r.word()?;
    if lent_count > count {
        return Err(malformed("batch"));
    }
    let mut lent = Vec::with_capacity(lent_count);
    for _ in 0..lent_count {
        let id = r.word()? as u64;
        let (capacity, with_fd) = (r.word()?, r.word()? != 0);
        lent.push(LentSlab {
            id,
            capacity,
            with_fd,
        });
    }
    let raw = r.words(count.checked_mul(2).ok_or_else(|| malformed("batch"))?)?;
    let callbacks = match functions {
        Some(functions) => raw
            .chunks_exact(2)
            .map(|pair| {
                let func = *functions.get(pair[0]).ok_or_else(|| malformed("batch"))?;
                // SAFETY: a function this process registered, called without userdata, as the
                // spawn start method documents.
                Ok(unsafe { Callback::new(func, std::ptr::null_mut()) })
            })
            .collect::<io::Result<Vec<_>>>()?,
        // SAFETY: the caller guarantees the addresses came from `to_raw` in this address space
        // image.
        None => raw
            .chunks_exact(2)
            .map(|pair| unsafe { Callback::from_raw((pair[0], pair[1])) })
            .collect(),
    };
    let arg_ends = r.words(count)?;
    Ok(Head {
        first,
        callbacks,
        arg_ends,
        args_len,
        forced,
        spilled,
        decoded: DecodedBatch {
            batch: Batch::new(first, 0),
            flags,
            attached,
            lent,
            results_folder,
        },
    })
}
