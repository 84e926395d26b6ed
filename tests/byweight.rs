//! `byweight` through real apache2: exact shares across processes under every MPM, live weight
//! changes from balancer-manager, loading before mod_proxy, graceful restarts under load,
//! several balancers and virtual hosts, and a backend dying mid-run.

use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, Load, LoadOrder, Mpm, backends, balancer_block,
    balancer_manager_set,
};
use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

fn one_two_three(b: &[Backend]) -> String {
    balancer_block(
        "app",
        "/",
        &[(&b[0], "loadfactor=1"), (&b[1], "loadfactor=2"), (&b[2], "loadfactor=3")],
        "lbmethod=byweight",
    )
}

/// Processes that logged a pick (needs `LogLevel lbmethod_rs:debug`).
fn picking_processes(apache: &Apache) -> BTreeSet<String> {
    apache
        .error_log()
        .lines()
        .filter(|line| line.contains("byweight: balancer://app: picked"))
        .filter_map(|line| line.split("[pid ").nth(1)?.split(':').next().map(str::to_string))
        .collect()
}

fn exact_shares_under(mpm: Mpm) {
    let b = backends(&["a", "b", "c"]);
    let config = ApacheConfig::new(&one_two_three(&b)).mpm(mpm).log_level("warn lbmethod_rs:debug");
    let apache = Apache::start(config).unwrap();
    let report = Load::new("/", 12, 6000).run(apache.addr());
    assert_eq!(
        report.count_status(200),
        6000,
        "statuses {:?} errors {:?}",
        report.per_status(),
        report.errors()
    );
    assert_eq!(
        (report.count_backend("a"), report.count_backend("b"), report.count_backend("c")),
        (1000, 2000, 3000)
    );
    let pickers = picking_processes(&apache);
    assert!(pickers.len() >= 2, "picks came from several processes: {pickers:?}");
}

#[test]
fn exact_shares_under_event() {
    exact_shares_under(Mpm::Event);
}

#[test]
fn exact_shares_under_worker() {
    exact_shares_under(Mpm::Worker);
}

#[test]
fn exact_shares_under_prefork() {
    exact_shares_under(Mpm::Prefork);
}

/// A loadfactor changed in balancer-manager reaches every child, each of which builds its new
/// cycle away from its requests (docs/byweight.md): within a few requests of each child, the
/// shares follow the new weights exactly.
#[test]
fn loadfactor_change_in_balancer_manager_applies_in_every_child() {
    let b = backends(&["a", "b"]);
    let body =
        balancer_block("app", "/", &[(&b[0], "loadfactor=1"), (&b[1], "loadfactor=1")], "lbmethod=byweight");
    let apache = Apache::start(ApacheConfig::new(&body).mpm(Mpm::Prefork)).unwrap();
    let report = Load::new("/", 6, 600).run(apache.addr());
    assert_eq!((report.count_backend("a"), report.count_backend("b")), (300, 300));

    balancer_manager_set(&apache, "app", &b[1].url(), &[("w_lf", "3")]).unwrap();
    let member = apache.member_status("balancer://app", &b[1].url()).unwrap();
    assert_eq!(member["loadfactor"], 3.0);
    // Every child notices the change at its first pick and picks from its previous cycle
    // until its new one is built: a request or two each.
    let children = apache.children().len() as u64;
    let report = Load::new("/", 6, 800).run(apache.addr());
    assert_eq!(report.count_status(200), 800);
    let b_share = report.count_backend("b");
    assert!(b_share.abs_diff(600) <= 2 * children, "b got {b_share} of 800 ({children} children)");
    let report = Load::new("/", 6, 800).run(apache.addr());
    assert_eq!((report.count_backend("a"), report.count_backend("b")), (200, 600), "then exactly 1:3");
}

#[test]
fn loads_before_mod_proxy() {
    let b = backends(&["a", "b", "c"]);
    let config = ApacheConfig::new(&one_two_three(&b)).load_order(LoadOrder::BeforeProxy);
    let apache = Apache::start(config).unwrap();
    let report = Load::new("/", 4, 600).run(apache.addr());
    assert_eq!(
        (report.count_backend("a"), report.count_backend("b"), report.count_backend("c")),
        (100, 200, 300)
    );
}

#[test]
fn graceful_restarts_under_load_lose_nothing() {
    let b: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| Backend::start(BackendSpec::new(n).delay(Duration::from_millis(2))).unwrap())
        .collect();
    let mut apache = Apache::start(ApacheConfig::new(&one_two_three(&b))).unwrap();
    let load = Load::new("/", 8, 6000).deadline(Duration::from_secs(90));
    let addr = apache.addr();
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(addr));
        thread::sleep(Duration::from_millis(500));
        apache.graceful().unwrap();
        thread::sleep(Duration::from_millis(500));
        apache.graceful().unwrap();
        running.join().unwrap()
    });
    assert_eq!(
        report.count_status(200),
        6000,
        "statuses {:?} errors {:?}",
        report.per_status(),
        report.errors()
    );
    // The segment survives the restarts, so the shares stay exact and so do the totals.
    assert_eq!(
        (report.count_backend("a"), report.count_backend("b"), report.count_backend("c")),
        (1000, 2000, 3000)
    );
    let status = apache.status().unwrap();
    let members = status["balancers"][0]["members"].as_array().unwrap().clone();
    let selected: Vec<u64> = members.iter().map(|m| m["selected"].as_u64().unwrap()).collect();
    assert_eq!(selected, vec![1000, 2000, 3000], "{members:?}");
    assert!(members.iter().all(|m| m["inflight"] == 0), "{members:?}");
}

#[test]
fn several_balancers_and_virtual_hosts_keep_separate_exact_shares() {
    let b = backends(&["a", "b", "c", "d", "e", "f"]);
    let mut body = balancer_block(
        "one",
        "/one",
        &[(&b[0], "loadfactor=1"), (&b[1], "loadfactor=1")],
        "lbmethod=byweight",
    );
    body.push_str(&balancer_block(
        "two",
        "/two",
        &[(&b[2], "loadfactor=1"), (&b[3], "loadfactor=3")],
        "lbmethod=byweight",
    ));
    body.push_str(&format!(
        "<VirtualHost *:*>\n    ServerName v.test\n{}</VirtualHost>\n",
        balancer_block(
            "three",
            "/",
            &[(&b[4], "loadfactor=2"), (&b[5], "loadfactor=1")],
            "lbmethod=byweight"
        )
    ));
    // Requests for 127.0.0.1 land in this virtual host, which inherits the main server's
    // balancers (each virtual host gets its own copy with its own state, as in httpd itself).
    body.push_str("<VirtualHost *:*>\n    ServerName 127.0.0.1\n</VirtualHost>\n");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let one = Load::new("/one", 4, 400).run(apache.addr());
    let two = Load::new("/two", 4, 400).run(apache.addr());
    let three = Load::new("/", 4, 300).header("Host", "v.test").run(apache.addr());
    assert_eq!((one.count_backend("a"), one.count_backend("b")), (200, 200));
    assert_eq!((two.count_backend("c"), two.count_backend("d")), (100, 300));
    assert_eq!((three.count_backend("e"), three.count_backend("f")), (200, 100), "{:?}", three.per_status());

    let status = apache.status().unwrap();
    let names: BTreeSet<String> = status["balancers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains("balancer://one") && names.contains("balancer://three"), "{names:?}");
}

#[test]
fn a_backend_dying_mid_run_costs_at_most_its_requests_in_flight() {
    let mut b: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| Backend::start(BackendSpec::new(n).delay(Duration::from_millis(5))).unwrap())
        .collect();
    let apache = Apache::start(ApacheConfig::new(&one_two_three(&b))).unwrap();
    let concurrency = 8;
    let load = Load::new("/", concurrency, 3000).deadline(Duration::from_secs(90));
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        thread::sleep(Duration::from_millis(800));
        b[1].stop();
        running.join().unwrap()
    });
    let failed = report.outcomes.iter().filter(|o| o.status != 200).count();
    assert!(
        failed <= concurrency,
        "only requests in flight on the dying backend may fail: {failed} failed, {:?}",
        report.per_status()
    );
    assert!(report.count_backend("b") > 0 && report.count_backend("a") > 0);
    let b_status = apache.member_status("balancer://app", &b[1].url()).unwrap();
    assert_eq!(b_status["status"], "error");
}

/// Loopback ports nothing listens on (connections to them are refused at once).
fn refusing_ports(count: usize) -> Vec<u16> {
    let listening: BTreeSet<u16> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let local = line.split_whitespace().nth(1)?;
                    u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    (20_000..30_000).filter(|port| !listening.contains(port)).take(count).collect()
}

/// A thousand members of almost as many loadfactors, all but two refusing connections: each
/// failover changes the usable members, and none of that rebuilds the cycle, so requests are
/// answered as fast as httpd can fail over (before, each failover rebuilt a 65536-step cycle:
/// the first request took about a minute).
#[test]
fn a_thousand_members_with_all_but_two_down_answer_at_once() {
    let b = backends(&["a", "b"]);
    let mut body = String::from("<Proxy \"balancer://big\">\n");
    for (i, port) in refusing_ports(998).into_iter().enumerate() {
        body.push_str(&format!(
            "    BalancerMember \"http://127.0.0.1:{port}\" loadfactor={}.{:02}\n",
            1 + i / 100,
            i % 100
        ));
    }
    body.push_str(&format!("    BalancerMember \"{}\" loadfactor=7.77\n", b[0].url()));
    body.push_str(&format!("    BalancerMember \"{}\" loadfactor=3.33\n", b[1].url()));
    body.push_str("    ProxySet lbmethod=byweight\n</Proxy>\nProxyPass \"/\" \"balancer://big/\"\n");
    let apache = Apache::start(ApacheConfig::new(&body).processes(1)).unwrap();
    let started = std::time::Instant::now();
    let report = Load::new("/", 2, 40).deadline(Duration::from_secs(60)).run(apache.addr());
    let took = started.elapsed();
    eprintln!("40 requests in {took:?}: {:?}", report.per_backend());
    assert_eq!(report.count_status(200), 40, "{:?} {:?}", report.per_status(), report.errors());
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
