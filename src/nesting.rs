//! How deep the current thread is in nested parallel calls.
//!
//! Level 0 is the user's own code. A task runs one level below the call that runs it: worker
//! threads of a pool created at level L run at L + 1, and a task run inline (sequential backend)
//! raises its caller's level for its duration. joblib's policy follows from it (see
//! `Parallel::new`): a call made at level 1 uses threads, deeper calls run sequentially, unless the
//! call names its backend.

use std::cell::Cell;

thread_local! {
    static LEVEL: Cell<usize> = const { Cell::new(0) };
}

/// The current thread's nesting level (0 outside any pj task).
pub fn level() -> usize {
    LEVEL.with(Cell::get)
}

/// Sets the level of a worker thread for its whole life.
pub fn set_level(level: usize) {
    LEVEL.with(|cell| cell.set(level));
}

/// Raises the current thread's level by one until dropped (a task running inline).
pub struct Deeper {
    previous: usize,
}

impl Deeper {
    /// Enters a task on this thread.
    pub fn enter() -> Self {
        let previous = level();
        set_level(previous + 1);
        Deeper { previous }
    }
}

impl Drop for Deeper {
    fn drop(&mut self) {
        set_level(self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeper_restores_the_level() {
        assert_eq!(level(), 0);
        {
            let _one = Deeper::enter();
            assert_eq!(level(), 1);
            let _two = Deeper::enter();
            assert_eq!(level(), 2);
        }
        assert_eq!(level(), 0);
    }
}
