//! The source tree's layers import only downward (docs/architecture.md):
//!
//! ```text
//!     ffi  <-  httpd  <-  apache  ->  config, discover, methods, shm, status
//! ```
//!
//! `ffi` imports nothing of the crate; `httpd` (the safe wrappers) only `ffi`; `apache` (the
//! glue) anything; the plain-Rust folders only each other, without a cycle, and `shm` never
//! `methods`. This test reads every `crate::` path in `src/` (outside comments and unit-test
//! modules) and fails with the list of imports that go the wrong way.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const PLAIN: [&str; 5] = ["config", "discover", "methods", "shm", "status"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Ffi,
    Httpd,
    Glue,
    Plain,
    Root,
}

fn layer(room: &str) -> Layer {
    match room {
        "ffi" => Layer::Ffi,
        "httpd" => Layer::Httpd,
        "apache" => Layer::Glue,
        "lib" => Layer::Root,
        room if PLAIN.contains(&room) => Layer::Plain,
        other => {
            panic!("src/{other} is in no layer: put it in one of the folders docs/architecture.md lists")
        }
    }
}

fn may_import(from: Layer, to: Layer) -> bool {
    match from {
        Layer::Ffi => false,
        Layer::Httpd => to == Layer::Ffi,
        Layer::Plain => to == Layer::Plain,
        Layer::Glue | Layer::Root => to != Layer::Root,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src/").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its unit-test module (tests may use
/// anything); test-only files (`testing.rs`) are checked like the rest.
fn code(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if !trimmed.starts_with("//") {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// The crate rooms a piece of code names: `crate::x` gives `x`.
fn imports(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$'))
        .map(|(at, _)| {
            code[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>()
        })
        .filter(|room| !room.is_empty())
        .collect()
}

#[test]
fn every_import_goes_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 10, "found the sources");

    let mut wrong = Vec::new();
    let mut plain_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy();
        let room = first.trim_end_matches(".rs").to_string();
        let text = fs::read_to_string(file).expect("read a source file");
        for other in imports(&code(&text)) {
            if other == room {
                continue;
            }
            let (from, to) = (layer(&room), layer(&other));
            if !may_import(from, to) || (room == "shm" && other == "methods") {
                wrong.push(format!(
                    "src/{} imports crate::{other} ({from:?} may not import {to:?})",
                    relative.display()
                ));
            }
            if from == Layer::Plain && to == Layer::Plain {
                plain_edges.entry(room.clone()).or_default().insert(other);
            }
        }
    }
    // No cycle among the plain folders: none reaches itself.
    for start in plain_edges.keys() {
        let mut seen = BTreeSet::new();
        let mut next: Vec<&String> = plain_edges[start].iter().collect();
        while let Some(room) = next.pop() {
            if room == start {
                wrong.push(format!("the plain folders import each other in a cycle through {start}"));
                break;
            }
            if seen.insert(room.clone()) {
                next.extend(plain_edges.get(room).into_iter().flatten());
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering (docs/architecture.md):\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_a_wrong_way_import() {
    let text = "use crate::ffi;\n// use crate::apache;\nfn f() { crate::methods::x(); }\n#[cfg(test)]\nmod tests {\n    use crate::apache;\n}\n";
    assert_eq!(imports(&code(text)), BTreeSet::from(["ffi".to_string(), "methods".to_string()]));
    assert!(!may_import(Layer::Httpd, Layer::Glue));
    assert!(!may_import(Layer::Plain, Layer::Httpd));
    assert!(may_import(Layer::Glue, Layer::Plain));
}
