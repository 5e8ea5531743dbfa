//! Writes `include/pj.h` from the Rust sources with the pinned cbindgen (only when it changed, so
//! the file's timestamp moves only with its content). The header is committed;
//! `tests/header_up_to_date.rs` fails when the committed copy is stale.

#[path = "tools/header.rs"]
mod header;

use std::path::PathBuf;

fn main() {
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=tools/header.rs");
    let text = match header::generate(&crate_dir) {
        Ok(text) => text,
        Err(e) => panic!("cbindgen failed to generate include/pj.h: {e}"),
    };
    let path = crate_dir.join("include").join("pj.h");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::create_dir_all(crate_dir.join("include")).expect("create include/");
        std::fs::write(&path, &text).expect("write include/pj.h");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("pj.h"), &text).expect("write $OUT_DIR/pj.h");
}
