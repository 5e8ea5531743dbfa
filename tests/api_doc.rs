//! `docs/api.md`, the API reference, must be the rendering of the current `include/pj.h`
//! (`tools/api_doc.rs`), and the header must give the renderer nothing to complain about: every
//! declaration documented, every `pj_` name its comments cite declared.
//!
//! After changing a doc comment in `src/ffi/`: `cargo build` (regenerates pj.h), then
//! `PJ_WRITE_API_DOC=1 cargo test --test api_doc`, and commit both files.

#[path = "../tools/api_doc.rs"]
mod api_doc;

use std::path::Path;

const FIX: &str = "run `PJ_WRITE_API_DOC=1 cargo test --test api_doc` and commit docs/api.md";

fn render_or_panic(header: &str) -> String {
    match api_doc::render(header) {
        Ok(page) => page,
        Err(problems) => panic!(
            "include/pj.h cannot be documented as it is:\n- {}",
            problems.join("\n- ")
        ),
    }
}

#[test]
fn docs_api_md_is_the_rendering_of_pj_h() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/pj.h")).expect("include/pj.h exists");
    let page = render_or_panic(&header);
    let path = root.join("docs/api.md");
    if std::env::var_os("PJ_WRITE_API_DOC").is_some() {
        std::fs::write(&path, &page).expect("docs/api.md is writable");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(on_disk == page, "docs/api.md is stale: {FIX}");
}

#[test]
fn every_function_of_pj_h_has_an_entry_with_its_prototype() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/pj.h")).unwrap();
    let page = render_or_panic(&header);
    let mut functions = 0;
    for line in header.lines() {
        // Prototypes start at column 0 with a return type and a `pj_` name before the `(`.
        let Some(open) = line.find('(') else { continue };
        let head = &line[..open];
        if line.starts_with(' ')
            || line.starts_with('/')
            || line.starts_with("typedef")
            || line.starts_with('#')
        {
            continue;
        }
        let Some(name) = head
            .rsplit([' ', '*'])
            .next()
            .filter(|n| n.starts_with("pj_"))
        else {
            continue;
        };
        functions += 1;
        assert!(
            page.contains(&format!("\n### {name}\n")),
            "no entry for {name}"
        );
        assert!(
            page.contains(line),
            "the entry of {name} lacks its prototype line `{line}`"
        );
    }
    assert!(functions > 50, "found only {functions} functions in pj.h");
    for status in ["PJ_STATUS_OK = 0", "PJ_STATUS_PANIC = 11"] {
        assert!(
            page.contains(&format!("| `{status}` |")),
            "no row for {status}"
        );
    }
}

/// A small header in pj.h's shape, with one problem spliced in by each case.
fn header_with(extra: &str) -> String {
    format!(
        "/*\n * Overview.\n */\n\n#include <stdint.h>\n\n\
         // A thing.\ntypedef struct pj_thing_t pj_thing_t;\n\n\
         // Makes a thing; see `pj_thing_free`.\nint pj_thing_new(pj_thing_t **out);\n\n\
         // Frees a thing.\nvoid pj_thing_free(pj_thing_t *thing);\n{extra}"
    )
}

#[test]
fn a_well_formed_header_renders_with_links() {
    let page = api_doc::render(&header_with("")).unwrap();
    assert!(
        page.contains("\n### pj_thing_new\n\n```c\nint pj_thing_new(pj_thing_t **out);\n```\n")
    );
    assert!(page.contains("Makes a thing; see [`pj_thing_free`](#pj_thing_free)."));
}

#[test]
fn an_undocumented_declaration_is_an_error() {
    let problems = api_doc::render(&header_with(
        "\nint pj_thing_size(const pj_thing_t *thing);\n",
    ))
    .unwrap_err();
    assert_eq!(problems, ["`pj_thing_size` has no doc comment"]);
}

#[test]
fn a_comment_citing_an_undeclared_name_is_an_error() {
    let problems = api_doc::render(&header_with(
        "\n// Like `pj_thing_neww`.\nint pj_thing_size(const pj_thing_t *thing);\n",
    ))
    .unwrap_err();
    assert_eq!(
        problems,
        ["the comment of `pj_thing_size` cites `pj_thing_neww`, which pj.h does not declare"]
    );
}

#[test]
fn an_undocumented_enum_value_is_an_error() {
    let extra =
        "\n// Statuses.\nenum pj_code {\n  // Fine.\n  PJ_CODE_OK = 0,\n  PJ_CODE_BAD = 1,\n};\n";
    let problems = api_doc::render(&header_with(extra)).unwrap_err();
    assert_eq!(problems, ["`PJ_CODE_BAD` in `pj_code` has no doc comment"]);
}
