//! The documentation's examples work: every ```apache block in README.md and docs/ passes
//! `apache2 -t` with the module loaded, and the README's minimal configuration balances real
//! traffic as the README says.

use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Load, config_test};
use std::fs;
use std::path::{Path, PathBuf};

/// Modules some examples use besides the ones every test configuration loads (mod_watchdog,
/// which mod_proxy_hcheck needs, is built into Debian's apache2).
const EXTRA_MODULES: [&str; 15] = [
    "headers",
    "proxy_hcheck",
    "reqtimeout",
    "setenvif",
    "status",
    "alias",
    "remoteip",
    "rewrite",
    "ssl",
    "http2",
    "evasive20",
    "auth_basic",
    "authn_core",
    "authn_file",
    "authz_user",
];

struct Example {
    /// "docs/byhash.md:42": where the block starts.
    origin: String,
    text: String,
}

fn documentation_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("a readable docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The ```apache blocks of one Markdown file, in order.
fn apache_blocks(path: &Path) -> Vec<Example> {
    let text = fs::read_to_string(path).expect("a readable documentation file");
    let name = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string();
    let mut examples = Vec::new();
    let mut current: Option<Example> = None;
    for (number, line) in text.lines().enumerate() {
        match current.as_mut() {
            None if line.trim() == "```apache" => {
                current = Some(Example { origin: format!("{name}:{}", number + 1), text: String::new() });
            }
            Some(_) if line.trim() == "```" => examples.extend(current.take()),
            Some(example) => {
                example.text.push_str(line);
                example.text.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "{name}: an ```apache block is not closed");
    examples
}

/// Files the examples name as the reader's own (certificates, keys), which `apache2 -t`
/// requires to exist: an existing file of the same kind stands in for each (Debian's
/// ssl-cert package makes these).
const STAND_INS: [(&str, &str); 3] = [
    ("/etc/letsencrypt/live/app.example.com/fullchain.pem", "/etc/ssl/certs/ssl-cert-snakeoil.pem"),
    ("/etc/letsencrypt/live/app.example.com/privkey.pem", "/etc/ssl/private/ssl-cert-snakeoil.key"),
    ("/etc/apache2/backend-ca.pem", "/etc/ssl/certs/ssl-cert-snakeoil.pem"),
];

/// The example as the test configuration's body: its own LoadModule lines go (the test
/// configuration loads the module under test and everything it needs).
fn body(example: &Example) -> String {
    let mut text = example
        .text
        .lines()
        .filter(|line| !line.trim_start().starts_with("LoadModule"))
        .collect::<Vec<_>>()
        .join("\n");
    for (theirs, ours) in STAND_INS {
        text = text.replace(theirs, ours);
    }
    // Debian's envvars defines it for apache2ctl; the test's apache2 runs without them.
    text.replace("${APACHE_LOG_DIR}", &std::env::temp_dir().display().to_string())
}

fn with_extra_modules(mut config: ApacheConfig) -> ApacheConfig {
    for module in EXTRA_MODULES {
        config = config.with_module(module);
    }
    config
}

#[test]
fn every_apache_example_in_the_documentation_passes_apachectl_t() {
    let examples: Vec<Example> = documentation_files().iter().flat_map(|path| apache_blocks(path)).collect();
    assert!(examples.len() >= 10, "too few ```apache examples found: {}", examples.len());
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|example| {
            let (ok, output) = config_test(&with_extra_modules(ApacheConfig::new(&body(example))));
            (!ok).then(|| format!("{}:\n{}\napache2 -t said:\n{output}", example.origin, example.text))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} examples fail:\n\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
}

#[test]
fn the_readme_configuration_balances_as_the_readme_says() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let example = apache_blocks(&readme).into_iter().next().expect("the README has a configuration");
    // The README's members, in order: two at work (the first at loadfactor 2) and a hot standby.
    let urls = ["http://10.0.0.11:8080", "http://10.0.0.12:8080", "http://10.0.0.13:8080"];
    let names = ["eleven", "twelve", "standby"];
    let backends: Vec<Backend> = names
        .iter()
        .map(|name| {
            let spec = BackendSpec::new(name).slots(8).delay(std::time::Duration::from_millis(20));
            Backend::start(spec).expect("start backend")
        })
        .collect();
    let mut text = body(&example);
    for (url, backend) in urls.iter().zip(&backends) {
        assert!(text.contains(url), "the README example no longer names {url}");
        text = text.replace(url, &backend.url());
    }
    let apache = Apache::start(ApacheConfig::new(&text)).expect("start apache2 with the README example");

    let report = Load::new("/", 9, 900).run(apache.addr());
    assert_eq!(report.count_status(200), 900, "{:?}", report.per_status());
    assert_eq!(report.count_backend("standby"), 0, "the hot standby served while the others were up");
    // "about twice as many requests in flight": with equal service times, twice the requests.
    let ratio = report.count_backend("eleven") as f64 / report.count_backend("twelve").max(1) as f64;
    assert!((1.6..=2.5).contains(&ratio), "eleven/twelve = {ratio:.2}: {:?}", report.per_backend());

    let status = apache.status().expect("the status page the README enables");
    let balancer = &status["balancers"][0];
    assert_eq!(balancer["name"], "balancer://app");
    assert_eq!(balancer["method"], "byinflight");
    let members = balancer["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["inflight"] == 0), "{members:?}");
}
