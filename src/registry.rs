//! Task functions by name: the bridge to workers that do not share the caller's memory image.
//!
//! A forked worker can call the caller's function pointers, because it is a copy of the caller. A
//! worker started afresh from the same executable (the `spawn` start method; later, MPI ranks) has
//! the same functions at other addresses: the program registers each task function under a name,
//! in the same order, in every process (`pj_register`), and tasks travel as registry indices. A
//! fingerprint of the registered names, in order, lets a worker check that its registry is the
//! caller's before it runs anything.
//!
//! Range functions (`pj_register_range`, for `pj_parallel_for_named`) share the registry and its
//! indices: each entry carries the task function that runs it (`ffi`'s range runner, which finds
//! the range function by the index in its argument), so workers translate indices as for tasks.

use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::task::{RangeFn, TaskFn};

/// A registered function.
#[derive(Clone, Copy)]
enum Entry {
    Task(TaskFn),
    /// A range function and the task function that runs it.
    Range {
        func: RangeFn,
        runner: TaskFn,
    },
}

impl Entry {
    /// The task function workers call for this entry's index.
    fn task(self) -> TaskFn {
        match self {
            Entry::Task(func) | Entry::Range { runner: func, .. } => func,
        }
    }

    fn same(self, other: Entry) -> bool {
        match (self, other) {
            (Entry::Task(a), Entry::Task(b)) => std::ptr::fn_addr_eq(a, b),
            (Entry::Range { func: a, .. }, Entry::Range { func: b, .. }) => {
                std::ptr::fn_addr_eq(a, b)
            }
            _ => false,
        }
    }
}

type Registry = Vec<(String, Entry)>;

/// The registered functions, in registration order.
static REGISTRY: RwLock<Registry> = RwLock::new(Vec::new());

/// The registry held for writing across a fork ([`crate::fork`]): no other thread is inside it
/// when the child's copy is taken, so the child finds it whole and unlocked.
pub(crate) struct ForkHold(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, Registry>);

/// Takes the registry for a fork (released when the hold is dropped, in the parent and the child).
pub(crate) fn hold_for_fork() -> ForkHold {
    ForkHold(REGISTRY.write().unwrap_or_else(|p| p.into_inner()))
}

/// Registers `func` under `name`. Registering the same name and function again is a no-op; the same
/// name for another function, or an empty name, is refused.
pub fn register(name: &str, func: TaskFn) -> Result<()> {
    register_entry(name, Entry::Task(func))
}

/// Registers the range function `func` under `name`, run by the task function `runner` (which
/// takes the range and this entry's index in its argument: see [`range_at`]). As [`register`].
pub fn register_range(name: &str, func: RangeFn, runner: TaskFn) -> Result<()> {
    register_entry(name, Entry::Range { func, runner })
}

fn register_entry(name: &str, entry: Entry) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("a task function's name must not be empty"));
    }
    let mut registry = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    match registry.iter().find(|(n, _)| n == name) {
        Some((_, existing)) if existing.same(entry) => Ok(()),
        Some(_) => Err(Error::invalid(format!(
            "the name \"{name}\" is already registered for another function"
        ))),
        None => {
            registry.push((name.to_owned(), entry));
            Ok(())
        }
    }
}

/// The index of a registered function, found by address (for a range runner: the first range
/// entry's index; the runner finds its range function by the index in its argument).
pub fn index_of(func: TaskFn) -> Option<u32> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry
        .iter()
        .position(|(_, e)| std::ptr::fn_addr_eq(e.task(), func))
        .and_then(|i| u32::try_from(i).ok())
}

/// The task function registered under `name` (not a range function).
pub fn lookup(name: &str) -> Option<TaskFn> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry.iter().find_map(|(n, e)| match e {
        Entry::Task(func) if n == name => Some(*func),
        _ => None,
    })
}

/// The index of the range function registered under `name`.
pub fn lookup_range(name: &str) -> Option<u32> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry
        .iter()
        .position(|(n, e)| n == name && matches!(e, Entry::Range { .. }))
        .and_then(|i| u32::try_from(i).ok())
}

/// The range function registered at `index`.
pub fn range_at(index: u32) -> Option<RangeFn> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    match registry.get(usize::try_from(index).ok()?)?.1 {
        Entry::Range { func, .. } => Some(func),
        Entry::Task(_) => None,
    }
}

/// Every registered entry's task function, by index (a worker's translation table).
pub fn functions() -> Vec<TaskFn> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry.iter().map(|(_, e)| e.task()).collect()
}

/// A fingerprint of the registered names in order (FNV-1a over the names and their lengths).
pub fn fingerprint() -> u64 {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, _) in registry.iter() {
        for byte in (name.len() as u64)
            .to_le_bytes()
            .iter()
            .chain(name.as_bytes())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// The registered names, in order (for error messages about a mismatch).
pub fn names() -> Vec<String> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry.iter().map(|(n, _)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskOutput;
    use std::ffi::c_void;

    unsafe extern "C" fn one(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
        1
    }
    unsafe extern "C" fn two(_: *mut c_void, _: *const u8, _: usize, _: *mut TaskOutput) -> i32 {
        2
    }

    #[test]
    fn names_are_unique_and_the_fingerprint_follows_them() {
        let before = fingerprint();
        register("registry-test-one", one).unwrap();
        register("registry-test-one", one).unwrap();
        assert!(register("registry-test-one", two).is_err());
        assert!(register("", two).is_err());
        assert_ne!(fingerprint(), before);
        assert!(index_of(one).is_some());
        assert!(lookup("registry-test-one").is_some());
        assert!(lookup("registry-test-missing").is_none());
        assert!(names().contains(&"registry-test-one".to_owned()));
    }
}
