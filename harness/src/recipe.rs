//! The guide's recipes, taken from the documentation itself so that a test runs exactly the
//! configuration (or command, or HAProxy file) a reader pastes. A recipe is the fenced block
//! right after a line `<!-- recipe: NAME -->` in a Markdown file (blank lines may separate
//! them). Its example addresses, ports and paths are replaced with the test's own by
//! [`Recipe::replace`] or [`fill`], which fail when the text to replace is not there, so a doc
//! that changes its addresses cannot silently stop being tested.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (where README.md and docs/ are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One recipe's configuration text.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// "docs/routing.md: by-path", for messages.
    pub origin: String,
    pub text: String,
}

impl Recipe {
    /// The recipe `name` of `doc` (a path from the workspace root, e.g. "docs/routing.md").
    /// Panics when the file, the marker or its block is missing.
    pub fn load(doc: &str, name: &str) -> Recipe {
        let path = workspace_root().join(doc);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {doc}: {e}"));
        let origin = format!("{doc}: {name}");
        let block = recipe_blocks(&text)
            .into_iter()
            .find(|(found, _)| found == name)
            .unwrap_or_else(|| panic!("{origin}: no `<!-- recipe: {name} -->` before an ```apache block"))
            .1;
        Recipe { origin, text: block }
    }

    /// Replaces every occurrence of `from` with `to`; panics if there is none.
    pub fn replace(self, from: &str, to: &str) -> Recipe {
        self.fill(&[(from, to)])
    }

    /// [`Recipe::replace`] for each pair.
    pub fn fill(mut self, replacements: &[(&str, &str)]) -> Recipe {
        self.text = fill_text(&self.origin, &self.text, replacements);
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `text` with each (placeholder, value) replaced; panics if a placeholder does not occur.
pub fn fill(text: &str, replacements: &[(&str, &str)]) -> String {
    fill_text("a recipe", text, replacements)
}

fn fill_text(origin: &str, text: &str, replacements: &[(&str, &str)]) -> String {
    let mut filled = text.to_string();
    for (from, to) in replacements {
        assert!(filled.contains(from), "{origin}: the recipe no longer contains {from:?}:\n{text}");
        filled = filled.replace(from, to);
    }
    filled
}

/// Every (name, block) of a Markdown text: the fenced block that follows each
/// `<!-- recipe: NAME -->` line (after blank lines, if any), without its fences.
pub fn recipe_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut recipes = Vec::new();
    let mut lines = markdown.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = marker(line) else { continue };
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        if !lines.next().is_some_and(|l| l.trim_start().starts_with("```")) {
            panic!("`<!-- recipe: {name} -->` is not followed by a fenced block");
        }
        let mut block = String::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            block.push_str(line);
            block.push('\n');
        }
        recipes.push((name.to_string(), block));
    }
    recipes
}

/// The name in a `<!-- recipe: NAME -->` line.
pub fn marker(line: &str) -> Option<&str> {
    line.trim().strip_prefix("<!-- recipe:")?.strip_suffix("-->").map(str::trim)
}
