//! `LBSlowStart` and `LBMaxInflight` through real apache2 and real backends.

use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, Load, LoadReport, Mpm, balancer_block, client, wait_for,
};
use std::thread;
use std::time::Duration;

fn backend(name: &str, slots: usize, millis: u64) -> Backend {
    Backend::start(BackendSpec::new(name).slots(slots).delay(Duration::from_millis(millis))).unwrap()
}

/// `name`'s share of the answers in each one-second window of the load.
fn shares_per_second(report: &LoadReport, name: &str) -> Vec<f64> {
    let seconds = report.elapsed.as_secs() as usize;
    (0..seconds)
        .map(|s| {
            let window: Vec<_> = report.outcomes.iter().filter(|o| o.at.as_secs() as usize == s).collect();
            let mine = window.iter().filter(|o| o.backend.as_deref() == Some(name)).count();
            mine as f64 / window.len().max(1) as f64
        })
        .collect()
}

#[test]
fn a_returning_member_ramps_up_to_its_full_share() {
    let mut b = [backend("a", 0, 3), backend("b", 0, 3)];
    let addr_b = b[1].addr();
    let mut body = balancer_block("app", "/", &[(&b[0], "retry=1"), (&b[1], "retry=1")], "lbmethod=byweight");
    body = body.replace("    ProxySet", "    LBSlowStart 4s\n    ProxySet");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();

    // Members usable from the start do not ramp: an even split right away.
    let report = Load::new("/", 1, 40).run(apache.addr());
    assert_eq!((report.count_backend("a"), report.count_backend("b")), (20, 20));

    b[1].stop();
    let report = Load::new("/", 1, 10).run(apache.addr());
    assert_eq!(report.count_backend("a"), 10, "b is down, a takes everything");
    b[1] = Backend::start_on(addr_b, BackendSpec::new("b").delay(Duration::from_millis(3))).unwrap();
    thread::sleep(Duration::from_millis(1100)); // b's retry time

    let load = Load::new("/", 2, 1_000_000).deadline(Duration::from_secs(7));
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        thread::sleep(Duration::from_millis(1500));
        let member = apache.member_status("balancer://app", &b[1].url()).unwrap();
        let progress = member["slow_start_progress"].as_f64().unwrap_or(-1.0);
        assert!((0.1..0.9).contains(&progress), "b is on its ramp: {member}");
        assert!(member["effective_weight"].as_f64().unwrap() < 1.0, "{member}");
        running.join().unwrap()
    });
    assert_eq!(report.count_status(200), report.outcomes.len() as u64, "{:?}", report.per_status());
    let shares = shares_per_second(&report, "b");
    eprintln!("b's share per second: {shares:.2?}");
    assert!(shares[0] < 0.25, "b starts near its floor: {shares:.2?}");
    assert!(shares.windows(2).all(|w| w[1] >= w[0] - 0.05), "b's share grows: {shares:.2?}");
    let last = shares[shares.len() - 1];
    assert!((0.45..=0.55).contains(&last), "b is back to an even split after the ramp: {shares:.2?}");
    let member = apache.member_status("balancer://app", &b[1].url()).unwrap();
    assert!(member["slow_start_progress"].is_null() && member["effective_weight"] == 1.0, "{member}");
}

fn cap_holds(mpm: Mpm, cap_line: &str, loadfactors: [&str; 2], caps: [u64; 2]) {
    let b = [backend("a", 32, 300), backend("b", 32, 300)];
    let members = [(&b[0], loadfactors[0]), (&b[1], loadfactors[1])];
    let body = balancer_block("app", "/", &members, "lbmethod=byinflight")
        .replace("    ProxySet", &format!("    {cap_line}\n    ProxySet"));
    let clients = (caps[0] + caps[1]) as usize * 3;
    // Enough httpd workers for every client at once, so that what waits is only ever a
    // request at a member's cap (prefork: one client per process).
    let mut config = ApacheConfig::new(&body).mpm(mpm);
    if mpm == Mpm::Prefork {
        config = config.processes(clients as u32 + 2);
    }
    let apache = Apache::start(config).unwrap();

    let report = Load::new("/", clients, 300).deadline(Duration::from_secs(30)).run(apache.addr());
    let statuses = report.per_status();
    assert!(statuses.keys().all(|s| [200, 503].contains(s)), "nothing else fails: {statuses:?}");
    assert!(report.count_status(200) > 0 && report.count_status(503) > 0, "{statuses:?}");
    for (backend, cap) in b.iter().zip(caps) {
        let max = backend.stats().max_inflight;
        assert!(max <= cap, "{} saw {max} at once, cap {cap}", backend.name());
        assert_eq!(max, cap, "{} was used up to its cap", backend.name());
    }
    let shed: Vec<_> = report.outcomes.iter().filter(|o| o.status == 503).collect();
    assert!(shed.iter().all(|o| o.retry_after.as_deref() == Some("1")), "503s carry Retry-After");
    let mut latencies: Vec<Duration> = shed.iter().map(|o| o.latency).collect();
    let p99 = lbrs_harness::client::percentile(&mut latencies, 99.0);
    assert!(p99 < Duration::from_millis(100), "shed at once, without waiting for a backend: p99 {p99:?}");
    // A refused request counts as shed when it ends, just after its client has the 503.
    let counted = |apache: &Apache| apache.status().unwrap()["balancers"][0]["shed"].as_u64();
    assert!(wait_for(Duration::from_secs(5), || counted(&apache) == Some(shed.len() as u64)));
    let status = apache.status().unwrap();
    let page_caps: Vec<u64> = status["balancers"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["max_inflight"].as_u64().unwrap())
        .collect();
    assert_eq!(page_caps, caps.to_vec());
}

#[test]
fn no_member_ever_exceeds_its_cap_and_the_excess_is_shed_at_once() {
    cap_holds(Mpm::Event, "LBMaxInflight 3", ["", ""], [3, 3]);
}

#[test]
fn a_cap_per_loadfactor_holds_across_prefork_processes() {
    cap_holds(Mpm::Prefork, "LBMaxInflight 2 per-loadfactor", ["loadfactor=1", "loadfactor=2"], [2, 4]);
}

/// With a balancer `timeout=`, httpd asks again for a request every member refused, until one
/// has room: the request that is then served answers 200 without `Retry-After`, and is not
/// counted as shed; one that never finds room gets 503 with `Retry-After` and counts once.
#[test]
fn a_request_that_waits_and_is_served_is_not_shed() {
    let b = [backend("a", 4, 1500), backend("slow", 4, 3000)];
    let body = balancer_block("app", "/", &[(&b[0], "")], "lbmethod=byinflight timeout=5")
        .replace("    ProxySet", "    LBMaxInflight 1\n    ProxySet");
    let mut short = balancer_block("short", "/short", &[(&b[1], "")], "lbmethod=byinflight timeout=1");
    short = short.replace("    ProxySet", "    LBMaxInflight 1\n    ProxySet");
    // ProxyPass "/short" before ProxyPass "/": the first match wins.
    let apache = Apache::start(ApacheConfig::new(&format!("{short}{body}"))).unwrap();
    let addr = apache.addr();
    let (waited, refused) = thread::scope(|scope| {
        let first = scope.spawn(|| client::get(addr, "/").unwrap());
        thread::sleep(Duration::from_millis(300));
        // Waits for the first request's place (1.5 s), within the balancer's 5 s.
        let waited = scope.spawn(|| client::get(addr, "/").unwrap());
        assert_eq!(first.join().unwrap().status, 200);
        let waited = waited.join().unwrap();
        let busy = scope.spawn(|| client::get(addr, "/short").unwrap());
        thread::sleep(Duration::from_millis(300));
        // The member is busy for 3 s, longer than this balancer's 1 s.
        let refused = client::get(addr, "/short").unwrap();
        assert_eq!(busy.join().unwrap().status, 200);
        (waited, refused)
    });
    assert_eq!(waited.status, 200);
    assert_eq!(waited.header("retry-after"), None, "served: no Retry-After");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    let shed = |name: &str| {
        apache.status().unwrap()["balancers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| b["shed"].as_u64().unwrap_or(0))
    };
    assert!(
        wait_for(Duration::from_secs(5), || shed("balancer://short") == Some(1)),
        "{:?}",
        shed("balancer://short")
    );
    assert_eq!(shed("balancer://app"), Some(0), "the request that waited was served");
}
