//! Handles and out-pointers: the few pointer operations every export repeats, done in one place.
//!
//! An opaque `pj_*_t` is a Rust value C only sees behind a pointer. [`Handle`] says which types those
//! are and what their parameter is called; [`Owned`] marks those pj boxes for C and C frees with a
//! `_free`. Exports borrow handles with [`borrow`] / [`borrow_mut`] (NULL is a NullArgument error
//! naming the parameter) or [`borrow_opt`] / [`borrow_mut_opt`] (NULL is `None`, for functions with a
//! documented NULL answer), free them with [`free_box`], and check an output pointer with
//! [`out_arg`] before doing any work, writing it with [`Out::write`] / [`Out::give`] only on
//! success. Exports stay plain `extern "C"` functions with their own panic boundary (`run*`).

use std::ptr::NonNull;

use super::null_argument;
use crate::error::Error;

/// A type C passes to pj by pointer.
///
/// # Safety
/// Implementing it promises that pj.h documents, for every pointer of this type C may pass, that it
/// is NULL or points to a live value of the type for the whole call: a handle pj created (an
/// [`Owned`] one, alive until its `_free`), one pj lent (alive for the documented time), or a table
/// the caller fills in. [`borrow`] and its siblings dereference non-NULL pointers on that promise;
/// keeping it (no use after free, no concurrent writer) is C's side of each export's contract.
pub(crate) unsafe trait Handle {
    /// The name every export gives a parameter of this type, quoted by NULL-argument errors.
    const ARG: &'static str;
}

/// A [`Handle`] that pj creates with [`Out::give`] (a `Box` turned into a raw pointer) and C frees
/// once with the type's `_free`, which calls [`free_box`].
pub(crate) trait Owned: Handle {}

/// Borrows the handle `ptr` points to; NULL is a NullArgument error naming [`Handle::ARG`].
pub(crate) fn borrow<'a, H: Handle>(ptr: *const H) -> Result<&'a H, Error> {
    borrow_opt(ptr).ok_or_else(|| null_argument(H::ARG))
}

/// Borrows the handle `ptr` points to mutably; NULL is a NullArgument error naming [`Handle::ARG`].
pub(crate) fn borrow_mut<'a, H: Handle>(ptr: *mut H) -> Result<&'a mut H, Error> {
    borrow_mut_opt(ptr).ok_or_else(|| null_argument(H::ARG))
}

/// Borrows the handle `ptr` points to, or `None` for NULL. Builds no error (allocates nothing).
pub(crate) fn borrow_opt<'a, H: Handle>(ptr: *const H) -> Option<&'a H> {
    // SAFETY: a non-NULL pointer of a `Handle` type points to a live value (the trait's promise),
    // which the caller keeps alive and unchanged for the call (the export's documented contract).
    unsafe { ptr.as_ref() }
}

/// Borrows the handle `ptr` points to mutably, or `None` for NULL.
pub(crate) fn borrow_mut_opt<'a, H: Handle>(ptr: *mut H) -> Option<&'a mut H> {
    // SAFETY: as in `borrow_opt`; the documented contract of every export taking a non-const handle
    // excludes any other use of it during the call.
    unsafe { ptr.as_mut() }
}

/// Frees a handle [`Out::give`] handed to C. NULL is a no-op.
pub(crate) fn free_box<H: Owned>(ptr: *mut H) {
    if !ptr.is_null() {
        // SAFETY: a non-NULL `Owned` handle came from `Box::into_raw` in `Out::give` and is freed
        // once (a double free is excluded by the documented contract of every `_free`).
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// An output pointer checked non-NULL: written at most once, after the work succeeded.
pub(crate) struct Out<T>(NonNull<T>);

/// Checks the output pointer `ptr` (the parameter `name`): NULL is a NullArgument error naming it.
/// Check every output before doing any work, so that a NULL one leaves everything untouched.
pub(crate) fn out_arg<T>(ptr: *mut T, name: &str) -> Result<Out<T>, Error> {
    NonNull::new(ptr)
        .map(Out)
        .ok_or_else(|| null_argument(name))
}

/// The output pointer `ptr` when it is not NULL, for optional outputs (`error_out`).
pub(crate) fn out_opt<T>(ptr: *mut T) -> Option<Out<T>> {
    NonNull::new(ptr).map(Out)
}

impl<T> Out<T> {
    /// Stores `value` in the caller's storage.
    pub(crate) fn write(self, value: T) {
        // SAFETY: non-NULL (checked by `out_arg`), and the export's documented contract makes it
        // point to writable storage for one `T`.
        unsafe { self.0.as_ptr().write(value) };
    }
}

impl<H: Owned> Out<*mut H> {
    /// Boxes `handle` and stores the pointer: the caller now owns it and frees it with its `_free`.
    pub(crate) fn give(self, handle: H) {
        self.write(Box::into_raw(Box::new(handle)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    struct Thing(u32);

    // SAFETY: the test only passes pointers `Out::give` made, before `free_box`, or NULL.
    unsafe impl Handle for Thing {
        const ARG: &'static str = "thing";
    }

    impl Owned for Thing {}

    #[test]
    fn a_given_handle_is_borrowed_changed_and_freed() {
        let mut slot: *mut Thing = std::ptr::null_mut();
        out_arg(&mut slot, "thing_out").unwrap().give(Thing(7));
        assert!(!slot.is_null());
        assert_eq!(borrow(slot).unwrap().0, 7);
        borrow_mut(slot).unwrap().0 = 8;
        assert_eq!(borrow_opt(slot).map(|t| t.0), Some(8));
        assert_eq!(borrow_mut_opt(slot).map(|t| t.0), Some(8));
        free_box(slot);
    }

    #[test]
    fn null_pointers_name_their_parameter_and_free_is_a_no_op() {
        let error = borrow::<Thing>(std::ptr::null()).err().unwrap();
        assert_eq!(error.kind(), ErrorKind::NullArgument);
        assert_eq!(error.message(), "argument `thing` is NULL");
        let error = borrow_mut::<Thing>(std::ptr::null_mut()).err().unwrap();
        assert_eq!(error.message(), "argument `thing` is NULL");
        assert!(borrow_opt::<Thing>(std::ptr::null()).is_none());
        assert!(borrow_mut_opt::<Thing>(std::ptr::null_mut()).is_none());
        let error = out_arg::<usize>(std::ptr::null_mut(), "len_out")
            .err()
            .unwrap();
        assert_eq!(error.kind(), ErrorKind::NullArgument);
        assert_eq!(error.message(), "argument `len_out` is NULL");
        assert!(out_opt::<usize>(std::ptr::null_mut()).is_none());
        free_box::<Thing>(std::ptr::null_mut());
    }

    #[test]
    fn an_output_is_written_only_when_asked() {
        let mut len = 5usize;
        let out = out_arg(&mut len, "len_out").unwrap();
        out.write(9);
        assert_eq!(len, 9);
        let mut untouched = 3usize;
        let _checked = out_opt(&mut untouched).unwrap();
        assert_eq!(untouched, 3);
    }
}
