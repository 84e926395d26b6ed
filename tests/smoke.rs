//! The integration smoke test: every method balances through the real httpd, the status page
//! answers in every format, and a graceful restart keeps the counters. It runs in the normal
//! suite against Debian's apache2, and scripts/compat.sh runs it against each httpd release
//! the main distributions ship, built from source (`LBRS_APACHE2`, `LBRS_MODULES_DIR` and
//! `LBRS_MODULE` point the harness there).

use lbrs_harness::{Apache, ApacheConfig, Load, backends, balancer_block, wait_for};
use std::time::Duration;

#[test]
fn every_method_the_status_page_and_a_graceful_restart() {
    let b = backends(&["a", "b"]);
    fn pair<'a>(
        b: &'a [lbrs_harness::Backend],
        params: [&'a str; 2],
    ) -> [(&'a lbrs_harness::Backend, &'a str); 2] {
        [(&b[0], params[0]), (&b[1], params[1])]
    }
    let mut body = String::new();
    body.push_str(&balancer_block(
        "w",
        "/w",
        &pair(&b, ["loadfactor=1", "loadfactor=2"]),
        "lbmethod=byweight",
    ));
    body.push_str(&balancer_block("i", "/i", &pair(&b, ["", ""]), "lbmethod=byinflight"));
    body.push_str(&balancer_block("l", "/l", &pair(&b, ["", ""]), "lbmethod=bylatency"));
    body.push_str(&balancer_block(
        "h",
        "/h",
        &pair(&b, ["", ""]),
        "lbmethod=byhash\n    LBHashKey \"%{HTTP:X-User}\"",
    ));
    let mut apache = Apache::start(ApacheConfig::new(&body)).unwrap();

    let report = Load::new("/w", 3, 300).run(apache.addr());
    assert_eq!((report.count_backend("a"), report.count_backend("b")), (100, 200), "byweight 1:2 exactly");
    for path in ["/i", "/l"] {
        let report = Load::new(path, 3, 100).run(apache.addr());
        assert_eq!(report.count_status(200), 100, "{path}: {:?}", report.per_status());
        assert!(report.count_backend("a") > 0 && report.count_backend("b") > 0, "{path} uses both members");
    }
    let report = Load::new("/h", 1, 50).header("X-User", "alice").run(apache.addr());
    assert_eq!(report.count_status(200), 50);
    assert!(
        report.count_backend("a") == 50 || report.count_backend("b") == 50,
        "one key, one member: {:?}",
        report.per_backend()
    );

    for format in ["", "?format=json"] {
        let page = apache.get(&format!("/lb-status{format}")).unwrap();
        assert_eq!(page.status, 200, "status page {format}");
        assert!(page.text().contains("balancer://w"));
    }
    let selected = |apache: &Apache| {
        apache
            .member_status("balancer://w", &b[1].url())
            .map(|m| m["selected"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    assert_eq!(selected(&apache), 200);

    apache.graceful().unwrap();
    let report = Load::new("/w", 3, 300).run(apache.addr());
    assert_eq!((report.count_backend("a"), report.count_backend("b")), (100, 200), "after the restart too");
    assert!(wait_for(Duration::from_secs(5), || selected(&apache) == 400), "the counters continue");
}

/// A module built against another httpd's headers refuses to start, with one line naming both
/// versions, instead of misreading memory. scripts/compat.sh runs this with
/// `LBRS_FOREIGN_MODULE` set: Debian's build loaded into an older httpd (its module magic number
/// is older than the headers'), and the oldest build loaded into Debian's apache2 (its shared
/// records are another size).
#[test]
fn a_module_built_for_another_httpd_refuses_to_start() {
    let Some(foreign) = std::env::var_os("LBRS_FOREIGN_MODULE") else {
        eprintln!("LBRS_FOREIGN_MODULE is not set: scripts/compat.sh runs this test");
        return;
    };
    let b = backends(&["a"]);
    let mut config = ApacheConfig::new(&balancer_block("w", "/w", &[(&b[0], "")], "lbmethod=byweight"));
    config.module = foreign.into();
    let error = match Apache::start(config) {
        Ok(apache) => panic!("started with a foreign module:\n{}", apache.error_log()),
        Err(error) => error,
    };
    assert!(error.contains("rebuild the module against this httpd"), "{error}");
    assert!(error.contains("was built for httpd 2.4.") && error.contains("runs in Apache/2.4."), "{error}");
    let line = error.lines().find(|l| l.contains("rebuild the module")).unwrap_or_default();
    assert!(line.contains("module magic number"), "one line says it all: {line}");
}
