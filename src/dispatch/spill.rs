//! Arguments above max_nbytes, for the process backend: written once to an unnamed file in the
//! temp folder and mapped by the workers, instead of travelling through every worker's socket.
//!
//! The file is created on the first argument that needs it (a call with nothing above max_nbytes
//! creates none), after resolving the temp folder for this call and checking it, so a bad folder
//! is an IO error naming it before the task that needed it runs. With mmap_mode "r" (the default)
//! and "c", the same content submitted many times is written once; with "r+" and "w+" each task
//! gets its own copy, so that one task's writes never reach another's argument.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::MmapMode;
use crate::error::{Error, ErrorKind, Result};
use crate::memmap::Spill;
use crate::memmap::folder::prepare_temp_folder;
use crate::task::{ArgRef, SpillFile};

/// Spill file ids: unique in the process, so a kept worker never confuses two calls' files.
static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// One call's spill: the files and their process-wide ids.
#[derive(Debug)]
pub struct CallSpill {
    spill: Spill,
    files: Vec<SpillFile>,
    dedupe: bool,
}

impl CallSpill {
    /// Resolves and checks the temp folder (`option` first), for an argument of `needed` bytes.
    pub fn create(option: Option<PathBuf>, mode: MmapMode, needed: usize) -> Result<Self> {
        let folder = prepare_temp_folder(option.as_deref(), needed as u64)?;
        Ok(CallSpill {
            spill: Spill::new(folder.path),
            files: Vec::new(),
            dedupe: matches!(mode, MmapMode::R | MmapMode::C),
        })
    }

    /// Writes `arg` (or finds it written already) and says where it lives.
    pub fn write(&mut self, arg: &[u8]) -> Result<(ArgRef, &SpillFile)> {
        let at = if self.dedupe {
            self.spill.get_or_write(arg)?
        } else {
            self.spill.write_new(arg)?
        };
        while self.files.len() <= at.file {
            let index = self.files.len();
            let file = self.spill.file(index).ok_or_else(|| {
                Error::new(ErrorKind::Panic, "pj internal error: a spill file vanished")
            })?;
            let fd = file.fd().as_fd().try_clone_to_owned().map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot share a spill file: {e}"))
            })?;
            self.files.push(SpillFile {
                id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
                fd: Arc::new(fd),
            });
        }
        let file = &self.files[at.file];
        let arg = ArgRef {
            file: file.id,
            offset: at.offset,
            len: at.len,
        };
        Ok((arg, file))
    }
}
