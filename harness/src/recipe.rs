//! The guide's recipes, taken from the documentation itself so that a test runs exactly the
//! configuration a reader pastes. A recipe is the ```apache block right after a line
//! `<!-- recipe: NAME -->` in a Markdown file. Its example addresses, ports and paths are
//! replaced with the test's own by [`Recipe::replace`], which fails when the text to replace is
//! not there, so a doc that changes its addresses cannot silently stop being tested.

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
    pub fn replace(mut self, from: &str, to: &str) -> Recipe {
        assert!(
            self.text.contains(from),
            "{}: the recipe no longer contains {from:?}:\n{}",
            self.origin,
            self.text
        );
        self.text = self.text.replace(from, to);
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Every (name, block) of a Markdown text: the ```apache block that directly follows each
/// `<!-- recipe: NAME -->` line.
pub fn recipe_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut recipes = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(name) = marker(line) else { continue };
        if lines.next().map(str::trim) != Some("```apache") {
            panic!("`<!-- recipe: {name} -->` is not directly followed by an ```apache block");
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
