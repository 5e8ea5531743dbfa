//! Scoped defaults, joblib's `parallel_config`: a per-thread stack of configs.
//!
//! `push` copies a config onto the current thread's stack; `pop` removes the innermost one. A new
//! `Parallel` layers its own config over the stack (innermost first), so precedence is: an option
//! set on the object's config > the innermost pushed config that sets it > joblib's default. As in
//! joblib, the stack is per thread: threads started inside a scope (pj's workers included) do not
//! see it.

use std::cell::RefCell;

use super::Config;

thread_local! {
    static STACK: RefCell<Vec<Config>> = const { RefCell::new(Vec::new()) };
}

/// Pushes a copy of `config` as the current thread's innermost scoped default.
pub fn push(config: &Config) {
    STACK.with(|stack| stack.borrow_mut().push(config.clone()));
}

/// Removes the innermost scoped default; false when the stack was empty.
pub fn pop() -> bool {
    STACK.with(|stack| stack.borrow_mut().pop().is_some())
}

/// Number of scoped defaults pushed on this thread.
#[cfg(test)]
pub fn depth() -> usize {
    STACK.with(|stack| stack.borrow().len())
}

/// `config` (an object's own) over every scoped default of this thread: the scopes layer among
/// themselves (innermost first), then the object meets them ([`Config::over_scopes`]).
pub fn with_scopes(config: &Config) -> Config {
    STACK.with(|stack| {
        let scopes = stack
            .borrow()
            .iter()
            .rev()
            .fold(Config::default(), |layered, outer| {
                layered.layered_over(outer)
            });
        config.over_scopes(&scopes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_scope_wins_and_object_config_wins_over_all() {
        let mut outer = Config::default();
        outer.set("n_jobs", "3").unwrap();
        outer.set("verbose", "5").unwrap();
        let mut inner = Config::default();
        inner.set("n_jobs", "4").unwrap();
        push(&outer);
        push(&inner);
        let mut own = Config::default();
        assert_eq!(with_scopes(&own).n_jobs, Some(4));
        assert_eq!(with_scopes(&own).verbose, Some(5));
        own.set("n_jobs", "2").unwrap();
        assert_eq!(with_scopes(&own).n_jobs, Some(2));
        assert!(pop());
        assert_eq!(with_scopes(&Config::default()).n_jobs, Some(3));
        assert!(pop());
        assert!(!pop());
        assert_eq!(with_scopes(&Config::default()).n_jobs, None);
        assert_eq!(depth(), 0);
    }

    #[test]
    fn other_threads_do_not_see_the_scope() {
        let mut outer = Config::default();
        outer.set("n_jobs", "3").unwrap();
        push(&outer);
        let seen = std::thread::spawn(|| with_scopes(&Config::default()).n_jobs)
            .join()
            .unwrap();
        assert_eq!(seen, None);
        assert!(pop());
    }
}
