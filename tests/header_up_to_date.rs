//! The committed `include/pj.h` must equal a fresh generation with the pinned cbindgen.
//!
//! `build.rs` rewrites the working-tree header on every build, so the comparison that matters is with
//! the copy committed in git (when this is a git checkout); the working-tree copy is checked too.

#[path = "../tools/header.rs"]
mod header;

use std::path::Path;
use std::process::Command;

const FIX: &str = "run `cargo build` (build.rs regenerates include/pj.h with the pinned cbindgen) and commit include/pj.h";

#[test]
fn committed_header_matches_fresh_generation() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fresh = header::generate(crate_dir).expect("cbindgen generates the header");
    let on_disk =
        std::fs::read_to_string(crate_dir.join("include/pj.h")).expect("include/pj.h exists");
    assert!(on_disk == fresh, "include/pj.h is stale: {FIX}");
    let committed = Command::new("git")
        .args(["show", "HEAD:include/pj.h"])
        .current_dir(crate_dir)
        .output();
    match committed {
        Ok(out) if out.status.success() => {
            let committed = String::from_utf8_lossy(&out.stdout);
            assert!(
                committed == fresh,
                "the committed include/pj.h differs from a fresh generation: {FIX}"
            );
        }
        _ => eprintln!(
            "note: not a git checkout with a committed include/pj.h; checked the working tree only"
        ),
    }
}

#[test]
fn version_macros_match_the_crate_version() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/pj.h"))
        .unwrap();
    let mut parts = env!("CARGO_PKG_VERSION").split('.');
    for name in ["MAJOR", "MINOR", "PATCH"] {
        let expected = format!("#define PJ_VERSION_{name} {}", parts.next().unwrap());
        assert!(text.contains(&expected), "pj.h lacks `{expected}`");
    }
    // SAFETY: pj_version returns a static NUL-terminated string.
    let runtime = unsafe { std::ffi::CStr::from_ptr(pj::ffi::pj_version()) };
    assert_eq!(runtime.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
