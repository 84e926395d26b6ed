//! The guide's chapters have no configuration that no test runs: every ```apache block of
//! these pages is a recipe (`<!-- recipe: NAME -->` right before it) or says why it is not one
//! (`<!-- not a recipe: WHY -->`, for a configuration shown as what not to do), and every
//! recipe is loaded by name in the test file of its page (the file whose `DOC` is that page),
//! or by its page and name in another test (tests/debian_procedures.rs runs recipes of several
//! pages on the real Debian tree).

use lbrs_harness::recipe::{marker, recipe_blocks, workspace_root};
use std::fs;

const CHAPTERS: [&str; 9] = [
    "docs/quick-start.md",
    "docs/routing.md",
    "docs/health-checks.md",
    "docs/sessions.md",
    "docs/tls.md",
    "docs/behind-a-load-balancer.md",
    "docs/security.md",
    "docs/sizing.md",
    "docs/runbook.md",
];

#[test]
fn every_configuration_of_the_guide_is_a_recipe_that_a_test_runs() {
    let root = workspace_root();
    let all_tests: Vec<(String, String)> = fs::read_dir(root.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rs"))
        .map(|p| (p.display().to_string(), fs::read_to_string(&p).unwrap()))
        .collect();
    let tests: Vec<&(String, String)> = all_tests
        .iter()
        .filter(|(path, _)| path.rsplit('/').next().is_some_and(|f| f.starts_with("guide_")))
        .collect();
    let mut problems = Vec::new();
    for chapter in CHAPTERS {
        let text = fs::read_to_string(root.join(chapter)).unwrap_or_else(|e| panic!("{chapter}: {e}"));
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let explained = i > 0 && lines[i - 1].trim().starts_with("<!-- not a recipe:");
            if line.trim() == "```apache" && !explained && (i == 0 || marker(lines[i - 1]).is_none()) {
                problems.push(format!("{chapter}:{}: an ```apache block without a recipe marker", i + 1));
            }
        }
        let recipes = recipe_blocks(&text);
        if recipes.is_empty() {
            problems.push(format!("{chapter}: no recipe"));
        }
        let declaration = format!("const DOC: &str = \"{chapter}\";");
        let runners: Vec<&&(String, String)> =
            tests.iter().filter(|(_, src)| src.contains(&declaration)).collect();
        for (name, _) in recipes {
            let call = format!("Recipe::load(DOC, \"{name}\")");
            let by_path = format!("Recipe::load(\"{chapter}\", \"{name}\")");
            if !runners.iter().any(|(_, src)| src.contains(&call))
                && !all_tests.iter().any(|(_, src)| src.contains(&by_path))
            {
                problems.push(format!("{chapter}: recipe {name:?} is loaded by no test"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
