//! Counts that no vhost layout can skew, through the real apache2: a sticky-session request is
//! counted on the copy of the balancer that routed it, whichever virtual host it came through
//! and however many balancers the server has.

use lbrs_harness::{Apache, ApacheConfig, Backend, Load, app_server, wait_for};
use serde_json::Value;
use std::thread;
use std::time::Duration;

/// Every copy of `balancer` on the status page (one per virtual host that has its own).
fn copies(apache: &Apache, balancer: &str) -> Vec<Value> {
    let status = apache.status().unwrap();
    status["balancers"].as_array().unwrap().iter().filter(|b| b["name"] == balancer).cloned().collect()
}

/// `field` of member `url` in each copy of `balancer`, by the copy's server.
fn member_field(apache: &Apache, balancer: &str, url: &str, field: &str) -> Vec<(String, u64)> {
    copies(apache, balancer)
        .iter()
        .map(|b| {
            let member = b["members"].as_array().unwrap().iter().find(|m| m["name"] == url).cloned();
            let value = member.and_then(|m| m[field].as_u64()).unwrap_or(u64::MAX);
            (b["server"].as_str().unwrap_or_default().to_string(), value)
        })
        .collect()
}

/// Two sticky requests held at the backend (300 ms each) while the status page is read.
fn hold_two_sticky(apache: &Apache, path: &str, check: impl FnOnce() -> bool) -> bool {
    let load = Load::new(path, 2, 2).header("Cookie", "ROUTEID=x.rb");
    thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        let seen = check();
        let report = running.join().unwrap();
        assert_eq!(report.count_status(200), 2, "{:?}", report.per_status());
        seen
    })
}

/// A virtual host with a mod_proxy directive of its own has its own copy of the main server's
/// balancer (httpd merges it in). Its sticky requests count on that copy, the one that routed
/// them, not on the main server's copy that the member was first defined in.
#[test]
fn sticky_requests_through_a_virtual_host_count_on_its_own_copy() {
    let b = [app_server("a", 0, 300), app_server("b", 0, 300)];
    let body = format!(
        "<Proxy \"balancer://app\">\n    BalancerMember \"{}\" route=ra\n    BalancerMember \"{}\" route=rb\n\
         \x20   ProxySet lbmethod=byinflight stickysession=ROUTEID\n</Proxy>\n\
         ProxyPass \"/\" \"balancer://app/\"\n\
         <VirtualHost *:*>\n    ServerName vhost.test\n    ProxyPass /lb-status !\n</VirtualHost>\n",
        b[0].url(),
        b[1].url()
    );
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let servers: Vec<String> =
        copies(&apache, "balancer://app").iter().map(|b| b["server"].to_string()).collect();
    assert_eq!(servers.len(), 2, "the main server's copy and the virtual host's: {servers:?}");

    let url = b[1].url();
    let mut seen = Vec::new();
    let counted = hold_two_sticky(&apache, "/", || {
        wait_for(Duration::from_secs(5), || {
            seen = member_field(&apache, "balancer://app", &url, "inflight");
            seen.iter().any(|(server, n)| server.starts_with("vhost.test") && *n == 2)
        })
    });
    assert!(counted, "in flight on b, by copy: {seen:?}");
    assert!(
        seen.iter().all(|(server, n)| server.starts_with("vhost.test") || *n == 0),
        "nothing on the main server's copy: {seen:?}"
    );
    assert!(wait_for(Duration::from_secs(5), || member_field(&apache, "balancer://app", &url, "inflight")
        .iter()
        .all(|(_, n)| *n == 0)));
    let selected = member_field(&apache, "balancer://app", &url, "selected");
    assert!(
        selected.iter().all(|(server, n)| *n == if server.starts_with("vhost.test") { 2 } else { 0 }),
        "{selected:?}"
    );
}

/// httpd keeps a server's balancers in an array with room for ten, and moves it when an
/// eleventh is defined: the members' pointer back to their balancer then points at the old
/// copy. A sticky request to the eleventh balancer, whose method is set on its `ProxyPass`
/// line, is counted all the same.
#[test]
fn sticky_requests_count_with_eleven_balancers() {
    let backends: Vec<[Backend; 2]> =
        (0..11).map(|_| [app_server("a", 0, 300), app_server("b", 0, 300)]).collect();
    // Every balancer is defined before its method is set, as in a configuration that keeps
    // its <Proxy> sections together and its ProxyPass lines together.
    let mut body = String::new();
    for (i, pair) in backends.iter().enumerate() {
        body.push_str(&format!(
            "<Proxy \"balancer://b{i}\">\n    BalancerMember \"{}\" route=ra\n    BalancerMember \"{}\" route=rb\n</Proxy>\n",
            pair[0].url(),
            pair[1].url()
        ));
    }
    for i in 0..backends.len() {
        body.push_str(&format!(
            "ProxyPass \"/b{i}/\" \"balancer://b{i}/\" lbmethod=byinflight stickysession=ROUTEID\n"
        ));
    }
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    for i in [0usize, 10] {
        let name = format!("balancer://b{i}");
        let url = backends[i][1].url();
        let mut seen = Vec::new();
        let counted = hold_two_sticky(&apache, &format!("/b{i}/"), || {
            wait_for(Duration::from_secs(5), || {
                seen = member_field(&apache, &name, &url, "inflight");
                seen == [("127.0.0.1".to_string(), 2)]
            })
        });
        assert!(counted, "{name}: in flight on b: {seen:?}");
        assert!(wait_for(Duration::from_secs(5), || member_field(&apache, &name, &url, "inflight")
            == [("127.0.0.1".to_string(), 0)]));
        assert_eq!(member_field(&apache, &name, &url, "selected"), [("127.0.0.1".to_string(), 2)], "{name}");
    }
}
