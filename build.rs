//! Writes `include/pj.h` from the Rust sources with the pinned cbindgen (only when it changed, so
//! the file's timestamp moves only with its content). The header is committed;
//! `tests/header_up_to_date.rs` fails when the committed copy is stale.
//!
//! On ELF targets it also gives the cdylib the SONAME `libpj.so.<abi>` (Cargo.toml's
//! `[package.metadata.pj] abi`) and puts the link `libpj.so.<abi> -> libpj.so` beside it in the
//! profile's directory (target/release), where programs linked with `-lpj` look for it at run time.

#[path = "tools/header.rs"]
mod header;

use std::path::{Path, PathBuf};

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
    soname(&crate_dir, &out_dir);
}

/// The SONAME and its link in the build tree, on targets whose shared libraries are ELF.
fn soname(crate_dir: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed=Cargo.toml");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(os.as_str(), "macos" | "ios" | "windows") {
        return;
    }
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("read Cargo.toml");
    let abi =
        abi_number(&manifest).expect("Cargo.toml: [package.metadata.pj] needs `abi = <number>`");
    let soname = format!("libpj.so.{abi}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    // OUT_DIR is <profile dir>/build/pj-<hash>/out: the cdylib is written to the profile dir. The
    // link dangles until rustc writes libpj.so, moments later.
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        return;
    };
    let link = profile_dir.join(&soname);
    if std::fs::read_link(&link).ok().as_deref() != Some(Path::new("libpj.so")) {
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink("libpj.so", &link).expect("create the libpj.so.<abi> link");
    }
}

/// `abi = N` in the `[package.metadata.pj]` table of Cargo.toml's text.
fn abi_number(manifest: &str) -> Option<u32> {
    let mut in_table = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[package.metadata.pj]";
        } else if in_table {
            if let Some(value) = line.strip_prefix("abi") {
                return value.trim_start().strip_prefix('=')?.trim().parse().ok();
            }
        }
    }
    None
}
