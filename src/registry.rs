//! Task functions by name: the bridge to workers that do not share the caller's memory image.
//!
//! A forked worker can call the caller's function pointers, because it is a copy of the caller. A
//! worker started afresh from the same executable (the `spawn` start method; later, MPI ranks) has
//! the same functions at other addresses: the program registers each task function under a name,
//! in the same order, in every process (`pj_register`), and tasks travel as registry indices. A
//! fingerprint of the registered names, in order, lets a worker check that its registry is the
//! caller's before it runs anything.

use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::task::TaskFn;

/// The registered functions, in registration order.
static REGISTRY: RwLock<Vec<(String, TaskFn)>> = RwLock::new(Vec::new());

/// The registry held for writing across a fork ([`crate::fork`]): no other thread is inside it
/// when the child's copy is taken, so the child finds it whole and unlocked.
pub(crate) struct ForkHold(
    #[allow(dead_code)] std::sync::RwLockWriteGuard<'static, Vec<(String, TaskFn)>>,
);

/// Takes the registry for a fork (released when the hold is dropped, in the parent and the child).
pub(crate) fn hold_for_fork() -> ForkHold {
    ForkHold(REGISTRY.write().unwrap_or_else(|p| p.into_inner()))
}

/// Registers `func` under `name`. Registering the same name and function again is a no-op; the same
/// name for another function, or an empty name, is refused.
pub fn register(name: &str, func: TaskFn) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("a task function's name must not be empty"));
    }
    let mut registry = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    match registry.iter().find(|(n, _)| n == name) {
        Some((_, existing)) if std::ptr::fn_addr_eq(*existing, func) => Ok(()),
        Some(_) => Err(Error::invalid(format!(
            "the name \"{name}\" is already registered for another function"
        ))),
        None => {
            registry.push((name.to_owned(), func));
            Ok(())
        }
    }
}

/// The index of a registered function, found by address.
pub fn index_of(func: TaskFn) -> Option<u32> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry
        .iter()
        .position(|(_, f)| std::ptr::fn_addr_eq(*f, func))
        .and_then(|i| u32::try_from(i).ok())
}

/// The function registered under `name`.
pub fn lookup(name: &str) -> Option<TaskFn> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
}

/// Every registered function, by index (a worker's translation table).
pub fn functions() -> Vec<TaskFn> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry.iter().map(|(_, f)| *f).collect()
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
