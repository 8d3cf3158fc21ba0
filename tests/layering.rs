//! The library's layers import only the layers below them
//! (docs/architecture.md, "Layers"): the rules in `core` know nothing of
//! disks, sockets or threads, and the simulator runs the shipped core,
//! executor and durable formats, never the threaded runtime. A `use` that
//! crosses a layer upwards fails here, naming the file and the line.

use std::path::{Path, PathBuf};

/// Each checked layer (a directory under `src/`) and the modules it may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("protocol", &["protocol"]),
    ("core", &["core", "protocol", "config", "error"]),
    ("io", &["io", "protocol", "error"]),
    ("durable", &["durable", "core", "protocol", "io", "config", "error"]),
    ("exec", &["exec", "core", "durable", "io", "protocol", "config", "error"]),
    ("sim", &["sim", "core", "durable", "exec", "io", "protocol", "config", "error"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The modules a line of code names as `crate::module` (comments skipped:
/// a doc link to a layer above is not a dependency).
fn named_modules(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let code = code.split(" //").next().unwrap_or(code);
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        // `crate::Error`, `crate::Result`: the crate root's re-exports of `error`.
        out.push(if name.is_empty() { "error".to_string() } else { name });
    }
    out
}

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut crossings = Vec::new();
    let mut lines_read = 0usize;
    for (layer, allowed) in ALLOWED {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "no source files under src/{layer}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            for (n, line) in text.lines().enumerate() {
                lines_read += 1;
                for module in named_modules(line) {
                    if !allowed.contains(&module.as_str()) {
                        let shown = file.strip_prefix(&src).unwrap_or(&file).display().to_string();
                        crossings.push(format!("src/{shown}:{}: {layer} names crate::{module}", n + 1));
                    }
                }
            }
        }
    }
    assert!(lines_read > 10_000, "read only {lines_read} lines: the layers moved?");
    assert!(crossings.is_empty(), "layers crossed upwards:\n{}", crossings.join("\n"));
}

#[test]
fn a_crossing_is_seen_and_a_comment_is_not() {
    assert_eq!(named_modules("use crate::runtime::mirror::MirrorState;"), ["runtime"]);
    assert_eq!(named_modules("    x.map_err(|e| crate::Error::io(a, e)) // crate::cluster"), ["error"]);
    assert!(named_modules("/// See [`crate::runtime::primary`].").is_empty());
    assert_eq!(named_modules("let a = crate::core::x(crate::io::y);"), ["core", "io"]);
}
