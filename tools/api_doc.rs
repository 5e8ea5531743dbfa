//! Renders `docs/api.md`, the browsable API reference, from `include/pj.h`: the header stays the
//! only source (its comments come from the doc comments in `src/ffi/`). Used by `tests/api_doc.rs`,
//! which fails when the committed page differs from a fresh rendering, or when the header has an
//! undocumented declaration or a reference to a `pj_`/`PJ_` name it does not declare (the
//! counterpart of a documentation generator's warnings, treated as errors).
//!
//! The parser knows the shapes cbindgen writes (see `cbindgen.toml`): the block comment at the
//! top, then declarations each preceded by `//` comment lines: `#define`s, one enum with one
//! commented variant per line, opaque `typedef struct x x;`, callback typedefs, one struct of
//! commented fields, and function prototypes.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Names that pj.h's comments may cite although pj.h does not declare them (they live in
/// `bindings/mpi/pj_mpi.h`, the MPI shim's header).
const DECLARED_ELSEWHERE: &[&str] = &["pj_mpi_main"];

/// What a declaration is; decides its section and how it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Macro,
    Enum,
    Opaque,
    Struct,
    Callback,
    Function,
}

/// A member of the enum or the struct: its name, the rest of its line (value or type) and its doc.
#[derive(Debug)]
struct Member {
    name: String,
    code: String,
    doc: Vec<String>,
}

/// One declaration of the header.
#[derive(Debug)]
struct Item {
    kind: Kind,
    name: String,
    /// The declaration as the header writes it, without comments and preprocessor lines.
    code: String,
    doc: Vec<String>,
    members: Vec<Member>,
}

/// The parsed header: its overview (the top block comment) and its declarations in order.
struct Header {
    overview: Vec<String>,
    items: Vec<Item>,
}

/// `docs/api.md` for the header text `header`, or the list of problems found in it.
pub fn render(header: &str) -> Result<String, Vec<String>> {
    let parsed = parse(header)?;
    check(&parsed)?;
    Ok(write(&parsed))
}

fn parse(header: &str) -> Result<Header, Vec<String>> {
    let lines: Vec<&str> = header.lines().collect();
    let mut problems = Vec::new();
    let mut overview = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    let mut i = 0;
    // The overview: the first block comment.
    if lines.first().map(|l| l.trim()) == Some("/*") {
        i = 1;
        while i < lines.len() && lines[i].trim() != "*/" {
            let line = lines[i].trim_start();
            let text = line.strip_prefix('*').unwrap_or(line);
            overview.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
            i += 1;
        }
        i += 1;
    }
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        i += 1;
        if let Some(text) = trimmed.strip_prefix("//") {
            doc.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with("/*") {
            doc.clear();
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if name.starts_with("PJ_VERSION_") {
                let comment = lines[i - 2].trim();
                let doc = match comment
                    .strip_prefix("/*")
                    .and_then(|c| c.strip_suffix("*/"))
                {
                    Some(c) => vec![c.trim().to_owned()],
                    None => std::mem::take(&mut doc),
                };
                items.push(Item {
                    kind: Kind::Macro,
                    name: name.to_owned(),
                    code: trimmed.to_owned(),
                    doc,
                    members: Vec::new(),
                });
            }
            doc.clear();
            continue;
        }
        if trimmed.starts_with('#')
            || trimmed.starts_with("extern \"C\"")
            || trimmed.starts_with('}')
        {
            continue; // include guards, C/C++ conditionals, the extern "C" block
        }
        // A declaration: up to the `;` that closes it at brace depth 0.
        let mut code = vec![line.to_owned()];
        let mut members = Vec::new();
        let mut member_doc: Vec<String> = Vec::new();
        let mut depth = braces(line);
        let mut last = trimmed.to_owned();
        while !(depth == 0 && last.ends_with(';')) && i < lines.len() {
            let line = lines[i];
            let t = line.trim();
            i += 1;
            if let Some(text) = t.strip_prefix("//") {
                member_doc.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
                continue;
            }
            if t.starts_with('#') {
                continue;
            }
            depth += braces(line);
            if depth > 0 && !t.starts_with('{') && !t.is_empty() {
                if let Some(name) = member_name(t) {
                    members.push(Member {
                        name,
                        code: t.trim_end_matches(',').to_owned(),
                        doc: std::mem::take(&mut member_doc),
                    });
                }
            }
            code.push(line.to_owned());
            last = t.to_owned();
        }
        let code = code.join("\n");
        let (kind, name) = match classify(&code) {
            Some(found) => found,
            None => {
                problems.push(format!("cannot read this declaration of pj.h:\n{code}"));
                doc.clear();
                continue;
            }
        };
        // `typedef enum pj_status pj_status;` and the like: a C spelling of a declared name.
        if items.iter().any(|item| item.name == name) {
            doc.clear();
            continue;
        }
        let code = if kind == Kind::Enum {
            // The C++/C23 underlying-type clause sits between preprocessor lines: show plain C.
            let mut shown = format!("enum {name} {{\n");
            for m in &members {
                let _ = writeln!(shown, "  {},", m.code);
            }
            shown.push_str("};");
            shown
        } else {
            code
        };
        items.push(Item {
            kind,
            name,
            code,
            doc: std::mem::take(&mut doc),
            members,
        });
    }
    if problems.is_empty() {
        Ok(Header { overview, items })
    } else {
        Err(problems)
    }
}

/// The change in brace depth over a line.
fn braces(line: &str) -> i32 {
    line.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// The name an enum variant (`PJ_X = 1,`) or a struct field (`int (*isend)(...);`, `int rank;`)
/// declares.
fn member_name(line: &str) -> Option<String> {
    if let Some(at) = line.find("(*") {
        let rest = &line[at + 2..];
        return Some(rest[..rest.find(')')?].to_owned());
    }
    let head = line.split(['=', ';', ',']).next()?.trim();
    let name = head.rsplit([' ', '*']).next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The kind and name of a declaration.
fn classify(code: &str) -> Option<(Kind, String)> {
    let flat = code.split_whitespace().collect::<Vec<_>>().join(" ");
    let ident = |s: &str| -> Option<String> {
        let s = s.trim();
        let start = s.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))? + 1;
        (start < s.len()).then(|| s[start..].to_owned())
    };
    if let Some(rest) = flat.strip_prefix("enum ") {
        return Some((Kind::Enum, rest.split_whitespace().next()?.to_owned()));
    }
    if flat.starts_with("typedef struct {") {
        return Some((Kind::Struct, ident(flat.strip_suffix(';')?)?));
    }
    if flat.starts_with("typedef struct ") || flat.starts_with("typedef enum ") {
        return Some((Kind::Opaque, ident(flat.strip_suffix(';')?)?));
    }
    if flat.starts_with("typedef ") {
        if let Some(at) = flat.find("(*") {
            let rest = &flat[at + 2..];
            return Some((Kind::Callback, rest[..rest.find(')')?].to_owned()));
        }
        return Some((Kind::Opaque, ident(flat.strip_suffix(';')?)?));
    }
    let open = flat.find('(')?;
    Some((Kind::Function, ident(&flat[..open])?))
}

/// Every declaration and member is documented, and every `pj_`/`PJ_` name a comment cites in
/// backquotes is declared.
fn check(header: &Header) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let known = names(header);
    for item in &header.items {
        // The version macros are written by tools/header.rs, and explained by the overview.
        if item.kind != Kind::Macro && item.doc.iter().all(|l| l.trim().is_empty()) {
            problems.push(format!("`{}` has no doc comment", item.name));
        }
        for m in &item.members {
            if m.doc.iter().all(|l| l.trim().is_empty()) {
                problems.push(format!(
                    "`{}` in `{}` has no doc comment",
                    m.name, item.name
                ));
            }
        }
    }
    let mut texts: Vec<(&str, &Vec<String>)> = vec![("the overview", &header.overview)];
    for item in &header.items {
        texts.push((&item.name, &item.doc));
        for m in &item.members {
            texts.push((&m.name, &m.doc));
        }
    }
    for (whose, doc) in texts {
        for cited in cited_names(&doc.join("\n")) {
            if !known.contains(cited) && !DECLARED_ELSEWHERE.contains(&cited) {
                problems.push(format!(
                    "the comment of `{whose}` cites `{cited}`, which pj.h does not declare"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Every name the header declares, members included.
fn names(header: &Header) -> BTreeSet<&str> {
    let mut known = BTreeSet::new();
    for item in &header.items {
        known.insert(item.name.as_str());
        for m in &item.members {
            known.insert(m.name.as_str());
        }
    }
    known
}

/// The `pj_...` and `PJ_...` identifiers a text quotes alone in backquotes (`pj_parallel_new`).
fn cited_names(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            (span.starts_with("pj_") || span.starts_with("PJ_"))
                && span.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .collect()
}

/// The page's section for a declaration.
fn section(item: &Item) -> &'static str {
    let n = item.name.as_str();
    match item.kind {
        Kind::Macro => "Version",
        Kind::Enum => "Statuses",
        Kind::Opaque | Kind::Struct => "Types",
        Kind::Callback => "Callback types",
        Kind::Function => {
            if n.starts_with("pj_config_") || n == "pj_effective_n_jobs" || n == "pj_cpu_count" {
                "Configuration"
            } else if (n.starts_with("pj_parallel_") && n != "pj_parallel_submit_named")
                || n == "pj_nesting_level"
            {
                "Executors and calls"
            } else if n.starts_with("pj_out_") {
                "Inside a task"
            } else if n.starts_with("pj_results_") {
                "Results"
            } else if n.starts_with("pj_error_") {
                "Errors"
            } else if n.starts_with("pj_shared_") {
                "Shared buffers"
            } else if n == "pj_status_str" {
                "Statuses"
            } else if n == "pj_register"
                || n == "pj_worker_main_if_requested"
                || n == "pj_parallel_submit_named"
            {
                "Named tasks and spawned workers"
            } else if n.starts_with("pj_mpi_") {
                "MPI (used by the pj_mpi shim)"
            } else {
                "Version"
            }
        }
    }
}

const SECTIONS: &[&str] = &[
    "Version",
    "Statuses",
    "Types",
    "Callback types",
    "Configuration",
    "Executors and calls",
    "Inside a task",
    "Results",
    "Errors",
    "Shared buffers",
    "Named tasks and spawned workers",
    "MPI (used by the pj_mpi shim)",
];

/// GitHub's anchor for a heading: lower case, spaces to dashes, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c),
            _ => None,
        })
        .collect()
}

fn write(header: &Header) -> String {
    let headed: BTreeSet<&str> = header
        .items
        .iter()
        .filter(|i| i.kind != Kind::Macro)
        .map(|i| i.name.as_str())
        .collect();
    let mut out = String::new();
    out.push_str("# pj C API reference\n\n");
    out.push_str(
        "<!-- Generated from include/pj.h by tests/api_doc.rs (tools/api_doc.rs): do not edit. \
         Regenerate with `PJ_WRITE_API_DOC=1 cargo test --test api_doc`. -->\n\n",
    );
    out.push_str(
        "Every declaration of `include/pj.h`, with its comment. The header is the source: this page \
         is rendered from it, and a test fails when the two differ. The examples in `examples/` \
         show each feature in a complete program.\n\n",
    );
    out.push_str("## Contents\n\n- [Overview](#overview)\n");
    for s in SECTIONS {
        let items: Vec<&Item> = header.items.iter().filter(|i| section(i) == *s).collect();
        if items.is_empty() {
            continue;
        }
        let _ = write!(out, "- [{s}](#{}):", anchor(s));
        for (n, item) in items.iter().filter(|i| i.kind != Kind::Macro).enumerate() {
            let _ = write!(
                out,
                "{} [`{}`](#{})",
                if n == 0 { "" } else { "," },
                item.name,
                anchor(&item.name)
            );
        }
        if items.iter().all(|i| i.kind == Kind::Macro) {
            out.push_str(" `PJ_VERSION_*`");
        }
        out.push('\n');
    }
    out.push_str("\n## Overview\n\n");
    out.push_str(&overview_markdown(&header.overview, &headed));
    for s in SECTIONS {
        let items: Vec<&Item> = header.items.iter().filter(|i| section(i) == *s).collect();
        if items.is_empty() {
            continue;
        }
        let _ = write!(out, "\n## {s}\n");
        let macros: Vec<&&Item> = items.iter().filter(|i| i.kind == Kind::Macro).collect();
        if !macros.is_empty() {
            out.push_str("\n```c\n");
            for m in &macros {
                let _ = writeln!(out, "{}", m.code);
            }
            out.push_str("```\n\n");
            for m in macros.iter().filter(|m| !m.doc.is_empty()) {
                let _ = writeln!(out, "- `{}`: {}", m.name, prose(&m.doc, &headed).trim_end());
            }
        }
        for item in items.iter().filter(|i| i.kind != Kind::Macro) {
            let _ = write!(out, "\n### {}\n\n```c\n{}\n```\n\n", item.name, item.code);
            out.push_str(&prose(&item.doc, &headed));
            if !item.members.is_empty() {
                let what = if item.kind == Kind::Enum {
                    "Value"
                } else {
                    "Field"
                };
                let _ = write!(out, "\n| {what} | |\n|---|---|\n");
                for m in &item.members {
                    let text = prose(&m.doc, &headed)
                        .trim_end()
                        .replace('\n', " ")
                        .replace('|', "\\|");
                    let _ = writeln!(out, "| `{}` | {} |", m.code.trim_end_matches(';'), text);
                }
            }
        }
    }
    out
}

/// A block of a comment.
enum Block {
    Paragraph(String),
    ListItem(String),
    Code(Vec<String>),
}

/// A comment as Markdown: paragraphs and `- ` list items joined into single lines (so a wrapped
/// line never starts a Markdown construct by accident), lines indented by 4 spaces kept as code,
/// text outside backquotes escaped, and quoted names of declarations linked to their entries.
fn prose(doc: &[String], headed: &BTreeSet<&str>) -> String {
    let mut blocks: Vec<Block> = Vec::new();
    let mut open = false; // the last block takes more lines
    for line in doc {
        if let Some(code) = line.strip_prefix("    ") {
            match blocks.last_mut() {
                Some(Block::Code(lines)) => lines.push(code.to_owned()),
                _ => blocks.push(Block::Code(vec![code.to_owned()])),
            }
            open = false;
            continue;
        }
        let t = line.trim();
        if t.is_empty() {
            open = false;
        } else if let Some(item) = t.strip_prefix("- ") {
            blocks.push(Block::ListItem(item.to_owned()));
            open = true;
        } else if open {
            if let Some(Block::Paragraph(text) | Block::ListItem(text)) = blocks.last_mut() {
                text.push(' ');
                text.push_str(t);
            }
        } else {
            blocks.push(Block::Paragraph(t.to_owned()));
            open = true;
        }
    }
    let mut out = String::new();
    for (n, block) in blocks.iter().enumerate() {
        let after_item = n > 0 && matches!(blocks[n - 1], Block::ListItem(_));
        match block {
            Block::ListItem(text) => {
                if n > 0 && !after_item {
                    out.push('\n');
                }
                let _ = writeln!(out, "- {}", inline(text, headed));
            }
            Block::Paragraph(text) => {
                if n > 0 {
                    out.push('\n');
                }
                let _ = writeln!(out, "{}", inline(text, headed));
            }
            Block::Code(lines) => {
                if n > 0 {
                    out.push('\n');
                }
                let _ = writeln!(out, "```c\n{}\n```", lines.join("\n"));
            }
        }
    }
    out
}

/// One line of text: Markdown-significant characters outside backquotes escaped, names of
/// declarations in backquotes linked.
fn inline(text: &str, headed: &BTreeSet<&str>) -> String {
    if text.split('`').count() % 2 == 0 {
        // An unpaired backquote: escape it rather than guess.
        return escape(text).replace('`', "\\`");
    }
    let mut out = String::new();
    for (n, span) in text.split('`').enumerate() {
        if n % 2 == 0 {
            out.push_str(&escape(span));
        } else if headed.contains(span) {
            let _ = write!(out, "[`{span}`](#{})", anchor(span));
        } else {
            let _ = write!(out, "`{span}`");
        }
    }
    out
}

/// Text with the characters Markdown could take for markup escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '<' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The overview comment as Markdown: short lines standing alone become subheadings.
fn overview_markdown(lines: &[String], headed: &BTreeSet<&str>) -> String {
    let mut out = String::new();
    let mut block: Vec<String> = Vec::new();
    let flush = |block: &mut Vec<String>, out: &mut String| {
        if !block.is_empty() {
            out.push_str(&prose(block, headed));
            out.push('\n');
            block.clear();
        }
    };
    for (n, line) in lines.iter().enumerate() {
        let alone = (n == 0 || lines[n - 1].trim().is_empty())
            && lines.get(n + 1).is_some_and(|l| l.trim().is_empty());
        let t = line.trim();
        if n > 0
            && alone
            && !t.is_empty()
            && t.len() < 40
            && !t.ends_with('.')
            && !line.starts_with(' ')
        {
            flush(&mut block, &mut out);
            let _ = write!(out, "### {t}\n\n");
        } else {
            block.push(line.clone());
        }
    }
    flush(&mut block, &mut out);
    out
}
