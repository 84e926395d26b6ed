//! The guide's recipes, as the tests run them: a recipe's configuration is the fenced block that
//! follows a `<!-- test: NAME -->` marker in its page under docs/, so the test runs exactly
//! what the page shows. The page's example addresses (documentation ranges such as 192.0.2.x,
//! 10.0.0.x) are placeholders that the test replaces with its loopback ones.

use std::fs;
use std::path::{Path, PathBuf};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fenced block after `<!-- test: NAME -->` in `docs/PAGE` (blank lines may separate
/// them), without its fences. Panics, naming the page and the marker, when there is none.
pub fn doc_block(page: &str, name: &str) -> String {
    let path = repo_root().join("docs").join(page);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let marker = format!("<!-- test: {name} -->");
    let mut lines = text.lines().skip_while(|line| line.trim() != marker);
    assert!(lines.next().is_some(), "docs/{page} has no {marker}");
    let mut lines = lines.skip_while(|line| line.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(fence.trim_start().starts_with("```"), "docs/{page}: {marker} is not followed by a fenced block");
    let mut block = String::new();
    for line in lines {
        if line.trim() == "```" {
            return block;
        }
        block.push_str(line);
        block.push('\n');
    }
    panic!("docs/{page}: the block after {marker} is not closed");
}

/// `text` with each placeholder replaced; panics if one does not occur (the page changed and
/// the test would no longer run what it shows).
pub fn fill(text: &str, replacements: &[(&str, &str)]) -> String {
    let mut filled = text.to_string();
    for (placeholder, value) in replacements {
        assert!(filled.contains(placeholder), "{placeholder} is not in:\n{text}");
        filled = filled.replace(placeholder, value);
    }
    filled
}

/// The block without its `LoadModule` lines: the test configuration loads the modules itself,
/// from the machine's module directory.
pub fn without_load_module(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("LoadModule"))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// A scratch directory removed with everything in it when dropped (kept when the test fails,
/// for a look at what it holds).
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> std::io::Result<ScratchDir> {
        Ok(ScratchDir { path: crate::apache::scratch_dir()? })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- scratch directory kept: {} -----", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
