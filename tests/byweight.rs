//! `byweight` through real apache2: exact shares across processes, eligibility rules, live
//! weight changes.

use lbrs_harness::{Apache, ApacheConfig, Load, Mpm, backends, balancer_block};
use std::time::Duration;

fn exact_shares_under(mpm: Mpm) {
    let b = backends(&["a", "b", "c"]);
    let body = balancer_block(
        "app",
        "/",
        &[
            (&b[0], "loadfactor=1"),
            (&b[1], "loadfactor=2"),
            (&b[2], "loadfactor=3"),
        ],
        "lbmethod=byweight",
    );
    let apache = Apache::start(ApacheConfig::new(&body).mpm(mpm)).unwrap();
    let report = Load::new("/", 12, 6000)
        .deadline(Duration::from_secs(60))
        .run(apache.addr());
    assert_eq!(
        report.count_status(200),
        6000,
        "statuses {:?} errors {:?}",
        report.per_status(),
        report.errors()
    );
    assert_eq!(report.count_backend("a"), 1000);
    assert_eq!(report.count_backend("b"), 2000);
    assert_eq!(report.count_backend("c"), 3000);
    assert!(
        apache.children().len() >= 3,
        "several children served: {:?}",
        apache.children()
    );
}

#[test]
fn exact_shares_under_event() {
    exact_shares_under(Mpm::Event);
}

#[test]
fn exact_shares_under_prefork() {
    exact_shares_under(Mpm::Prefork);
}
