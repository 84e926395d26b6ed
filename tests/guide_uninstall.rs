//! docs/install.md's uninstalling steps on a copy of Debian's /etc/apache2 layout (real files in
//! mods-available and sites-available, symlinks in -enabled) that holds every kind of line
//! naming the module: the page's grep finds each one; after the edits the page describes and
//! the real a2dismod, `apache2 -t` passes without the module, and the grep finds only the
//! module's own files, which the last step deletes.

use lbrs_harness::apache::ScratchDir;
use lbrs_harness::apache::{apache2_binary, module_under_test, modules_dir};
use lbrs_harness::recipe::{Recipe, workspace_root};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// The site: every kind of line the page's table lists, one of each at least.
const SITE: &str = r#"LogLevel warn lbmethod_rs:debug

<Proxy "balancer://app">
    BalancerMember "http://127.0.0.1:9" loadfactor=2
    BalancerMember "http://127.0.0.1:10"
    LBSlowStart 30s
    LBMaxInflight 16 per-loadfactor
    ProxySet lbmethod=byinflight
</Proxy>
<Proxy "balancer://cache">
    BalancerMember "http://127.0.0.1:11"
    LBHashKey "%{REQUEST_URI}"
    LBHashBalanceFactor 2
    ProxySet lbmethod=byhash
</Proxy>
<Proxy "balancer://fast">
    BalancerMember "http://127.0.0.1:12"
    LBLatencyDecay 500ms
</Proxy>
<Proxy "balancer://even">
    BalancerMember "http://127.0.0.1:13"
</Proxy>
ProxySet "balancer://even" lbmethod=byweight
<IfModule lbmethod_rs_module>
    <Location "/module-only">
        Require local
    </Location>
</IfModule>

ProxyPass "/status" "!"
ProxyPass "/fast/" "balancer://fast/" lbmethod=bylatency
ProxyPass "/static/" "balancer://cache/static/"
ProxyPass "/even/" "balancer://even/"
ProxyPass "/" "balancer://app/"
<Location "/status">
    SetHandler lbmethod-rs-status
    Require local
</Location>
"#;

/// What the grep must list in the site (each as a substring of one listed line).
const SITE_HITS: [&str; 12] = [
    "lbmethod_rs:debug",
    "LBSlowStart 30s",
    "LBMaxInflight 16 per-loadfactor",
    "ProxySet lbmethod=byinflight",
    "LBHashKey",
    "LBHashBalanceFactor 2",
    "ProxySet lbmethod=byhash",
    "LBLatencyDecay 500ms",
    "ProxySet \"balancer://even\" lbmethod=byweight",
    "lbmethod=bylatency",
    "SetHandler lbmethod-rs-status",
    // The module's own file.
    "LoadModule lbmethod_rs_module",
];

/// A Debian-like tree under `root` with the module enabled and the site enabled.
fn debian_tree(root: &Path) {
    let modules = modules_dir();
    for dir in ["mods-available", "mods-enabled", "sites-available", "sites-enabled", "state"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    let mut loads: Vec<(String, String)> = Vec::new();
    for name in
        ["mpm_event", "authz_core", "authz_host", "proxy", "proxy_http", "proxy_balancer", "slotmem_shm"]
    {
        loads.push((
            name.to_string(),
            format!("LoadModule {name}_module {}/mod_{name}.so\n", modules.display()),
        ));
    }
    if modules.join("mod_unixd.so").is_file() {
        loads.push(("unixd".into(), format!("LoadModule unixd_module {}/mod_unixd.so\n", modules.display())));
    }
    // lbmethod_byrequests is what the edits fall back on.
    loads.push((
        "lbmethod_byrequests".into(),
        format!("LoadModule lbmethod_byrequests_module {}/mod_lbmethod_byrequests.so\n", modules.display()),
    ));
    let ours = fs::read_to_string(workspace_root().join("httpd-conf/lbmethod_rs.load")).unwrap();
    let ours = ours
        .replace("/usr/lib/apache2/modules/mod_lbmethod_rs.so", &module_under_test().display().to_string());
    loads.push(("lbmethod_rs".into(), ours));
    for (name, text) in &loads {
        fs::write(root.join(format!("mods-available/{name}.load")), text).unwrap();
        symlink(format!("../mods-available/{name}.load"), root.join(format!("mods-enabled/{name}.load")))
            .unwrap();
    }
    fs::copy(
        workspace_root().join("httpd-conf/lbmethod_rs.conf"),
        root.join("mods-available/lbmethod_rs.conf"),
    )
    .unwrap();
    symlink("../mods-available/lbmethod_rs.conf", root.join("mods-enabled/lbmethod_rs.conf")).unwrap();
    fs::write(root.join("sites-available/app.conf"), SITE).unwrap();
    symlink("../sites-available/app.conf", root.join("sites-enabled/app.conf")).unwrap();
    fs::write(
        root.join("apache2.conf"),
        format!(
            "ServerRoot {r}\nDefaultRuntimeDir {r}\nPidFile {r}/httpd.pid\nErrorLog {r}/error.log\n\
             ServerName 127.0.0.1\nListen 127.0.0.1:1\nIncludeOptional mods-enabled/*.load\n\
             IncludeOptional mods-enabled/*.conf\nIncludeOptional sites-enabled/*.conf\n",
            r = root.display()
        ),
    )
    .unwrap();
}

fn apache2_t(root: &Path) -> (bool, String) {
    let output =
        Command::new(apache2_binary()).arg("-t").arg("-f").arg(root.join("apache2.conf")).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The page's grep on `root` instead of /etc/apache2: (file, line number, line) per hit.
fn grep(root: &Path) -> Vec<(String, usize, String)> {
    let command = Recipe::load("docs/install.md", "uninstall-grep").text;
    assert!(command.contains("/etc/apache2"));
    let command = command.trim().replace("/etc/apache2", &root.display().to_string());
    let output = Command::new("bash").arg("-c").arg(&command).output().unwrap();
    // grep: 0 found, 1 nothing found, 2 an error.
    assert!(
        output.status.code().is_some_and(|c| c < 2),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let file = parts.next().unwrap().to_string();
            let number = parts.next().unwrap().parse().unwrap();
            (file, number, parts.next().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn the_grep_finds_every_line_and_the_configuration_passes_without_the_module() {
    let dir = ScratchDir::new().unwrap();
    let root = dir.path().join("etc-apache2");
    debian_tree(&root);
    let (ok, output) = apache2_t(&root);
    assert!(ok, "the tree passes apache2 -t with the module: {output}");

    let hits = grep(&root);
    for hit in &hits {
        eprintln!("{}:{}:{}", hit.0, hit.1, hit.2);
    }
    for wanted in SITE_HITS {
        assert!(hits.iter().any(|(_, _, line)| line.contains(wanted)), "the grep misses {wanted:?}");
    }
    assert!(!hits.iter().any(|(_, _, line)| line.contains("IfModule")), "an <IfModule> block may stay");
    assert!(!hits.iter().any(|(_, _, line)| line.contains("lbmethod_byrequests")));

    // The edits of the page's table, on every line outside mods-available.
    let methods = ["byweight", "byinflight", "bylatency", "byhash"];
    let mut by_file: std::collections::BTreeMap<String, Vec<(usize, String)>> = Default::default();
    for (file, number, line) in &hits {
        if !file.contains("/mods-available/") {
            by_file.entry(file.clone()).or_default().push((*number, line.clone()));
        }
    }
    for (file, edits) in by_file {
        let text = fs::read_to_string(&file).unwrap();
        let mut lines: Vec<Option<String>> = text.lines().map(|l| Some(l.to_string())).collect();
        for (number, line) in edits {
            let slot = &mut lines[number - 1];
            if let Some(method) = methods.iter().find(|m| line.contains(&format!("lbmethod={m}"))) {
                *slot = Some(line.replace(&format!("lbmethod={method}"), "lbmethod=byrequests"));
            } else if line.trim_start().starts_with("LogLevel") {
                let words: Vec<&str> =
                    line.split_whitespace().filter(|w| !w.starts_with("lbmethod_rs:")).collect();
                *slot = Some(words.join(" "));
            } else {
                *slot = None;
            }
        }
        let edited: String = lines.into_iter().flatten().map(|l| format!("{l}\n")).collect();
        fs::write(&file, edited).unwrap();
    }

    // The real a2dismod, on this tree.
    let root_text = root.display().to_string();
    let state = root.join("state").display().to_string();
    let output = Command::new("a2dismod")
        .args(["-q", "lbmethod_rs"])
        .env("APACHE_CONFDIR", &root_text)
        .env("APACHE_STATE_DIRECTORY", &state)
        .output()
        .expect("a2dismod (Debian's apache2 package)");
    assert!(output.status.success(), "a2dismod: {}", String::from_utf8_lossy(&output.stderr));
    assert!(!root.join("mods-enabled/lbmethod_rs.load").exists());

    let (ok, output) = apache2_t(&root);
    assert!(ok, "apache2 -t without the module: {output}");
    let left = grep(&root);
    assert!(
        left.iter().all(|(file, _, _)| file.contains("/mods-available/lbmethod_rs.")),
        "only the module's own files are left: {left:?}"
    );
    // The last step deletes them; then the grep finds nothing.
    for name in ["lbmethod_rs.load", "lbmethod_rs.conf"] {
        fs::remove_file(root.join("mods-available").join(name)).unwrap();
    }
    assert!(grep(&root).is_empty());
    assert!(apache2_t(&root).0);
}
