//! Every mod_proxy_balancer rule holds under `byweight`: lbset tiers, hot standbys (+H), hot
//! spares (+R), drain (+N), disabled (+D), members in error and their retry timer, health-check
//! failures, sticky sessions, maxattempts failover, 503 when no member is usable, and members
//! added at run time in balancer-manager (`growth=`).
//! Real apache2, real backends.

use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, Load, backends, balancer_block, balancer_manager_set,
    wait_for,
};
use std::time::Duration;

fn start(body: &str) -> Apache {
    Apache::start(ApacheConfig::new(body)).unwrap()
}

/// Sends `n` requests one after another and counts answers per backend; every answer must be 200.
fn sequential(apache: &Apache, n: u64) -> lbrs_harness::LoadReport {
    let report = Load::new("/", 1, n).run(apache.addr());
    assert_eq!(
        report.count_status(200),
        n,
        "statuses {:?} errors {:?}",
        report.per_status(),
        report.errors()
    );
    report
}

fn member_status(apache: &Apache, backend: &Backend) -> String {
    apache.member_status("balancer://app", &backend.url()).unwrap()["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn lbset_tiers_are_used_in_order() {
    let mut b = backends(&["a", "b", "c"]);
    let body = balancer_block(
        "app",
        "/",
        &[(&b[0], "lbset=0"), (&b[1], "lbset=0"), (&b[2], "lbset=1")],
        "lbmethod=byweight",
    );
    let apache = start(&body);
    let report = sequential(&apache, 60);
    assert_eq!(
        (report.count_backend("a"), report.count_backend("b"), report.count_backend("c")),
        (30, 30, 0)
    );

    // Tier 0 goes away: tier 1 takes over, and failover hides the dead members from clients.
    b[0].stop();
    b[1].stop();
    let report = sequential(&apache, 30);
    assert_eq!(report.count_backend("c"), 30);
    assert_eq!(member_status(&apache, &b[0]), "error");
    assert_eq!(member_status(&apache, &b[1]), "error");
}

#[test]
fn hot_standby_serves_only_when_nothing_else_can() {
    let b = backends(&["a", "b", "h"]);
    let body =
        balancer_block("app", "/", &[(&b[0], ""), (&b[1], ""), (&b[2], "status=+H")], "lbmethod=byweight");
    let apache = start(&body);
    let report = sequential(&apache, 40);
    assert_eq!(report.count_backend("h"), 0);

    for member in [&b[0], &b[1]] {
        balancer_manager_set(&apache, "app", &member.url(), &[("w_status_D", "1")]).unwrap();
    }
    let report = sequential(&apache, 20);
    assert_eq!(report.count_backend("h"), 20, "{:?}", report.per_backend());

    balancer_manager_set(&apache, "app", &b[0].url(), &[("w_status_D", "0")]).unwrap();
    let report = sequential(&apache, 20);
    assert_eq!(report.count_backend("a"), 20, "{:?}", report.per_backend());
}

#[test]
fn hot_spare_replaces_an_unusable_member_one_for_one() {
    let mut b = backends(&["a", "b", "r"]);
    let body =
        balancer_block("app", "/", &[(&b[0], ""), (&b[1], ""), (&b[2], "status=+R")], "lbmethod=byweight");
    let apache = start(&body);
    let report = sequential(&apache, 40);
    assert_eq!(report.count_backend("r"), 0);

    b[0].stop();
    sequential(&apache, 4); // a fails once and goes into error
    let report = sequential(&apache, 100);
    assert_eq!((report.count_backend("b"), report.count_backend("r")), (50, 50));
}

#[test]
fn draining_and_disabled_members_get_no_new_requests() {
    let b = backends(&["a", "n", "d"]);
    let body = balancer_block(
        "app",
        "/",
        &[(&b[0], ""), (&b[1], "status=+N"), (&b[2], "status=+D")],
        "lbmethod=byweight",
    );
    let apache = start(&body);
    let report = sequential(&apache, 30);
    assert_eq!(report.count_backend("a"), 30);
    assert_eq!(member_status(&apache, &b[1]), "draining");
    assert_eq!(member_status(&apache, &b[2]), "disabled");
}

#[test]
fn a_member_in_error_returns_after_its_retry_time() {
    let mut b = backends(&["a", "b"]);
    let addr_b = b[1].addr();
    let body = balancer_block("app", "/", &[(&b[0], "retry=1"), (&b[1], "retry=1")], "lbmethod=byweight");
    let apache = start(&body);

    b[1].stop();
    let report = sequential(&apache, 20);
    assert_eq!(report.count_backend("a"), 20, "failover hides the dead member");
    assert_eq!(member_status(&apache, &b[1]), "error");

    b[1] = Backend::start_on(addr_b, BackendSpec::new("b")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let report = sequential(&apache, 40);
    assert_eq!((report.count_backend("a"), report.count_backend("b")), (20, 20));
    assert_eq!(member_status(&apache, &b[1]), "ok");
}

#[test]
fn health_check_failures_take_a_member_out_and_back() {
    let b = backends(&["a", "b"]);
    let checks = "hcmethod=GET hcuri=/health hcinterval=2 hcfails=1 hcpasses=1";
    let body = balancer_block("app", "/", &[(&b[0], checks), (&b[1], checks)], "lbmethod=byweight");
    let apache = Apache::start(ApacheConfig::new(&body).with_module("proxy_hcheck")).unwrap();

    b[1].set_healthy(false);
    assert!(
        wait_for(Duration::from_secs(15), || member_status(&apache, &b[1]) == "hcheck-failed"),
        "health check never failed: {}",
        member_status(&apache, &b[1])
    );
    let report = sequential(&apache, 30);
    assert_eq!(report.count_backend("a"), 30);

    b[1].set_healthy(true);
    assert!(wait_for(Duration::from_secs(15), || member_status(&apache, &b[1]) == "ok"));
    let report = sequential(&apache, 30);
    assert_eq!(report.count_backend("b"), 15);
}

#[test]
fn sticky_sessions_bypass_the_method() {
    let b = backends(&["a", "b"]);
    let body = balancer_block(
        "app",
        "/",
        &[(&b[0], "route=ra"), (&b[1], "route=rb")],
        "lbmethod=byweight stickysession=ROUTEID",
    );
    let apache = start(&body);
    let report = Load::new("/", 2, 40).header("Cookie", "ROUTEID=session.rb").run(apache.addr());
    assert_eq!(report.count_backend("b"), 40, "{:?}", report.per_backend());
    let report = sequential(&apache, 40);
    assert_eq!((report.count_backend("a"), report.count_backend("b")), (20, 20));
}

#[test]
fn no_usable_member_means_503() {
    let b = backends(&["a", "b"]);
    let body = balancer_block("app", "/", &[(&b[0], "status=+D"), (&b[1], "status=+D")], "lbmethod=byweight");
    let apache = start(&body);
    let response = apache.get("/").unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(b[0].stats().requests + b[1].stats().requests, 0);
}

#[test]
fn failover_hides_a_member_that_is_down_from_the_start() {
    let mut b = backends(&["a", "b", "c"]);
    b[2].stop();
    let body = balancer_block("app", "/", &[(&b[0], ""), (&b[1], ""), (&b[2], "")], "lbmethod=byweight");
    let apache = start(&body);
    let report = Load::new("/", 6, 300).run(apache.addr());
    assert_eq!(report.count_status(200), 300, "{:?} {:?}", report.per_status(), report.errors());
    assert_eq!(report.count_backend("c"), 0);
    let c = apache.member_status("balancer://app", &b[2].url()).unwrap();
    assert!(c["failed"].as_u64().unwrap_or(0) >= 1, "the failed attempt is counted: {c}");
}

#[test]
fn a_member_added_in_balancer_manager_is_balanced_and_counted() {
    let b = backends(&["a", "b", "new"]);
    let body = balancer_block("app", "/", &[(&b[0], ""), (&b[1], "")], "lbmethod=byweight growth=2");
    let apache = Apache::start(ApacheConfig::new(&body).processes(2)).unwrap();
    sequential(&apache, 20);
    // balancer-manager adds members disabled; enable it next, as an admin would.
    balancer_manager_set(&apache, "app", "", &[("b_wyes", "1"), ("b_nwrkr", &b[2].url())]).unwrap();
    balancer_manager_set(&apache, "app", &b[2].url(), &[("w_status_D", "0")]).unwrap();
    // Whichever process answers, the status page lists it at once (before any process has
    // picked since).
    for _ in 0..20 {
        assert!(apache.member_status("balancer://app", &b[2].url()).is_ok(), "a process does not list it");
    }
    // Every child syncs the new member at its next pick, and builds its new cycle away from
    // its requests: until it is built (a request or two), the child picks from the old one.
    let report = Load::new("/", 4, 600).run(apache.addr());
    assert_eq!(report.count_status(200), 600, "{:?}", report.per_status());
    let new = report.count_backend("new");
    assert!(new.abs_diff(200) <= 4, "a third, give or take the first picks: {:?}", report.per_backend());
    let member = apache.member_status("balancer://app", &b[2].url()).unwrap();
    assert_eq!(member["selected"], new, "{member}");
    let report = Load::new("/", 4, 600).run(apache.addr());
    assert_eq!(report.count_backend("new"), 200, "then exactly a third: {:?}", report.per_backend());
    assert!(wait_for(Duration::from_secs(5), || {
        apache.member_status("balancer://app", &b[2].url()).unwrap()["inflight"] == 0
    }));
}

/// A member added at run time into a slot where a member added in an earlier generation was
/// starts afresh: it inherits neither the name, the totals nor the latency estimate. The
/// restart makes a new segment (the old generation's children may still count in that slot)
/// and carries the configured members' totals over.
#[test]
fn a_member_added_where_an_earlier_one_was_starts_afresh() {
    let b = backends(&["a", "x", "y"]);
    let body = balancer_block("app", "/", &[(&b[0], "")], "lbmethod=byinflight growth=1");
    let mut apache = Apache::start(ApacheConfig::new(&body).processes(1)).unwrap();
    let add = |apache: &Apache, backend: &Backend| {
        balancer_manager_set(apache, "app", "", &[("b_wyes", "1"), ("b_nwrkr", &backend.url())]).unwrap();
        balancer_manager_set(apache, "app", &backend.url(), &[("w_status_D", "0")]).unwrap();
    };
    add(&apache, &b[1]);
    let report = Load::new("/", 2, 40).run(apache.addr());
    assert!(report.count_backend("x") > 0, "{:?}", report.per_backend());
    let served = |m: &serde_json::Value| m["selected"].as_u64().unwrap_or(u64::MAX);
    let a_before = served(&apache.member_status("balancer://app", &b[0].url()).unwrap());
    // The same configuration again: the member added at run time is gone until someone adds
    // one again, and its slot with it.
    apache.graceful().unwrap();
    assert_eq!(apache.error_log().matches("new shared segment").count(), 2, "{}", apache.error_log());
    add(&apache, &b[2]);
    sequential(&apache, 4);
    let y = apache.member_status("balancer://app", &b[2].url()).unwrap();
    let a = apache.member_status("balancer://app", &b[0].url()).unwrap();
    assert!(served(&y) <= 4, "y only has what it served since it was added: {y}");
    assert!(y["latency_samples"].as_u64() <= Some(4), "and only its own latency samples: {y}");
    assert!(served(&a) >= a_before, "a keeps its totals ({a_before} before the restart): {a}");
    assert_eq!(y["failed"], 0, "{y}");
}
