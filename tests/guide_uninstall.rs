//! docs/install.md's uninstalling steps on the real Debian layout (this machine's /etc/apache2
//! as the apache2 package installed it, in a private mount namespace: harness/src/debian_box.rs)
//! with a site that holds every kind of line naming the module: the page's grep finds each one;
//! after the edits the page describes (the built-in method's module enabled first, as on a box
//! where none is) and the real `a2dismod`, `apachectl -t` passes without the module, and the
//! grep finds only the module's own files, which the last step deletes.

use lbrs_harness::debian_box::DebianBox;
use lbrs_harness::recipe::Recipe;

/// The site: every kind of line the page's table lists, one of each at least.
const SITE: &str = r#"LogLevel warn lbmethod_rs:debug

<Proxy "balancer://app">
    BalancerMember "http://127.0.0.1:9" loadfactor=2
    BalancerMember "http://127.0.0.1:10"
    LBSlowStart 30s
    LBMaxInflight 16 per-loadfactor
    LBQueue timeout=5s
    LBOutlierDetection on
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
const SITE_HITS: [&str; 14] = [
    "lbmethod_rs:debug",
    "LBSlowStart 30s",
    "LBMaxInflight 16 per-loadfactor",
    "LBQueue timeout=5s",
    "LBOutlierDetection on",
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

/// The page's grep, in the box: (file, line number, line) per hit.
fn grep(debian: &DebianBox) -> Vec<(String, usize, String)> {
    let command = Recipe::load("docs/install.md", "uninstall-grep");
    let output = debian.sh(command.text().trim()).unwrap();
    // grep: 0 found, 1 nothing found, 2 an error.
    assert!(output.status.code().is_some_and(|c| c < 2), "{}", String::from_utf8_lossy(&output.stderr));
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
    let Some(debian) = DebianBox::for_procedures("uninstall") else { return };
    debian.write("/etc/apache2/sites-available/app.conf", SITE).unwrap();
    debian.ok("a2enmod -q proxy_http proxy_balancer lbmethod_rs && a2ensite -q app && apachectl -t").unwrap();

    let hits = grep(&debian);
    for hit in &hits {
        eprintln!("{}:{}:{}", hit.0, hit.1, hit.2);
    }
    for wanted in SITE_HITS {
        assert!(hits.iter().any(|(_, _, line)| line.contains(wanted)), "the grep misses {wanted:?}");
    }
    assert!(!hits.iter().any(|(_, _, line)| line.contains("IfModule")), "an <IfModule> block may stay");

    // The edits of the page's table, on every line outside mods-available: first the built-in
    // methods' modules (none is enabled on a box the quick start set up).
    debian.ok("a2enmod -q lbmethod_byrequests lbmethod_bybusyness").unwrap();
    let mut by_file: std::collections::BTreeMap<String, Vec<(usize, String)>> = Default::default();
    for (file, number, line) in &hits {
        if !file.contains("/mods-available/") {
            by_file.entry(file.clone()).or_default().push((*number, line.clone()));
        }
    }
    let built_in = [
        ("byweight", "byrequests"),
        ("byhash", "byrequests"),
        ("byinflight", "bybusyness"),
        ("bylatency", "bybusyness"),
    ];
    for (file, edits) in by_file {
        let text = debian.read(&file).unwrap();
        let mut lines: Vec<Option<String>> = text.lines().map(|l| Some(l.to_string())).collect();
        for (number, line) in edits {
            let slot = &mut lines[number - 1];
            if let Some((ours, theirs)) =
                built_in.iter().find(|(m, _)| line.contains(&format!("lbmethod={m}")))
            {
                *slot = Some(line.replace(&format!("lbmethod={ours}"), &format!("lbmethod={theirs}")));
            } else if line.trim_start().starts_with("LogLevel") {
                let words: Vec<&str> =
                    line.split_whitespace().filter(|w| !w.starts_with("lbmethod_rs:")).collect();
                *slot = Some(words.join(" "));
            } else {
                *slot = None;
            }
        }
        let edited: String = lines.into_iter().flatten().map(|l| format!("{l}\n")).collect();
        debian.write(&file, &edited).unwrap();
    }

    // The page's next step, as written: the real a2dismod, then apachectl -t.
    debian.ok("a2dismod -p lbmethod_rs && apachectl -t").unwrap();
    assert!(debian.ok("ls /etc/apache2/mods-enabled").unwrap().lines().all(|l| !l.contains("lbmethod_rs")));
    let left = grep(&debian);
    assert!(
        left.iter().all(|(file, _, _)| file.starts_with("/etc/apache2/mods-available/lbmethod_rs.")),
        "only the module's own files are left: {left:?}"
    );
    // The last step deletes them; then the grep finds nothing, and the configuration passes.
    debian
        .ok("rm /etc/apache2/mods-available/lbmethod_rs.load /etc/apache2/mods-available/lbmethod_rs.conf \
             /usr/lib/apache2/modules/mod_lbmethod_rs.so && apachectl -t")
        .unwrap();
    assert!(grep(&debian).is_empty());
}
