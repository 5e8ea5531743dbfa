//! Generates `include/pj.h` with the pinned cbindgen. Shared by `build.rs` (which writes the file)
//! and `tests/header_up_to_date.rs` (which checks that the committed file is current).

use std::path::Path;

/// The header text for the crate at `crate_dir`, or cbindgen's error.
pub fn generate(crate_dir: &Path) -> Result<String, String> {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))?;
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version
        .split('.')
        .map(|p| p.split(['-', '+']).next().unwrap_or("0").to_owned());
    let (major, minor, patch) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut config = config;
    config.after_includes = Some(format!(
        "\n#define PJ_VERSION_MAJOR {major}\n#define PJ_VERSION_MINOR {minor}\n#define PJ_VERSION_PATCH {patch}\n\
         /* (MAJOR << 16) | (MINOR << 8) | PATCH */\n\
         #define PJ_VERSION_NUMBER (((PJ_VERSION_MAJOR) << 16) | ((PJ_VERSION_MINOR) << 8) | (PJ_VERSION_PATCH))\n"
    ));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_crate(crate_dir)
        .generate()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).map_err(|e| e.to_string())
}
