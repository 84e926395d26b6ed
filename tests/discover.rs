//! `LBDiscover`: a balancer whose members follow a DNS name, with no reload. Real apache2,
//! a real dnsmasq (its own instance on 127.0.0.1) answering from a hosts file the test
//! rewrites, real backends on 127.0.0.2, 127.0.0.3, ... (one port, as a service's instances
//! have), under steady load:
//!
//! - scale out 2 -> 5, scale in 5 -> 3, an address replaced, the DNS server stopped for 30 s:
//!   no client request fails; a new address serves within its TTL + 1 s; a removed address
//!   gets no new request after TTL + 1 s, and what it had in flight completes;
//! - SRV records: weights are the shares, priorities the tiers, and a change of weights is
//!   followed;
//! - `byhash`: the keys of members that stay do not move when members come and go;
//! - the process that resolves is killed: another takes over;
//! - a graceful restart keeps the members, also when the name does not resolve then.

use lbrs_harness::dns::{Dnsmasq, Srv};
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, LoadOrder, Mpm, wait_for};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// TTL dnsmasq gives its answers (seconds).
const TTL: u64 = 1;

/// Backends named `app<last>` on 127.0.0.<last>, all on one port, each request taking `delay`.
struct Instances {
    port: u16,
    delay: Duration,
    running: HashMap<u8, Backend>,
}

impl Instances {
    fn new(delay: Duration) -> Instances {
        // A port free on every address used.
        let port = (0..100)
            .find_map(|_| {
                let probe = std::net::TcpListener::bind("127.0.0.2:0").ok()?;
                let port = probe.local_addr().ok()?.port();
                drop(probe);
                (2..=9)
                    .all(|last| std::net::TcpListener::bind(format!("127.0.0.{last}:{port}")).is_ok())
                    .then_some(port)
            })
            .expect("a port free on 127.0.0.2-9");
        Instances { port, delay, running: HashMap::new() }
    }

    fn start(&mut self, last: u8) {
        let addr: SocketAddr = format!("127.0.0.{last}:{}", self.port).parse().expect("address");
        let spec = BackendSpec::new(&format!("app{last}")).delay(self.delay);
        self.running.insert(last, Backend::start_on(addr, spec).expect("start backend"));
    }

    fn requests(&self, last: u8) -> u64 {
        self.running.get(&last).map_or(0, |b| b.stats().requests)
    }

    fn inflight(&self, last: u8) -> u64 {
        self.running.get(&last).map_or(0, |b| b.stats().inflight)
    }
}

fn hosts(name: &str, lasts: &[u8]) -> Vec<(String, String)> {
    lasts.iter().map(|last| (name.to_string(), format!("127.0.0.{last}"))).collect()
}

fn set_hosts(dns: &Dnsmasq, entries: &[(String, String)]) {
    let pairs: Vec<(&str, &str)> = entries.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
    dns.set_hosts(&pairs).expect("rewrite hosts");
}

/// A balancer `app` on `/` with one `LBDiscover` line.
fn apache(discover: &str, proxyset: &str, extra: &str, mpm: Mpm) -> Apache {
    let body = format!(
        "<Proxy \"balancer://app\">\n    LBDiscover {discover}\n    ProxySet {proxyset}\n{extra}</Proxy>\n\
         ProxyPass \"/\" \"balancer://app/\"\n"
    );
    let config = match mpm {
        Mpm::Prefork => ApacheConfig::new(&body).mpm(mpm).processes(6),
        _ => ApacheConfig::new(&body).mpm(mpm).processes(2).threads(16),
    };
    Apache::start(config).expect("start apache2")
}

/// Steady load: `clients` threads each asking `/` in turn until stopped (bounded: 10 minutes,
/// a million requests), recording every answer.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Answer>>>,
}

#[derive(Clone, Debug)]
struct Answer {
    at: Instant,
    status: u16,
    backend: String,
}

impl SteadyLoad {
    fn start(addr: SocketAddr, clients: usize, headers: Vec<(String, String)>) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let headers = headers.clone();
                thread::spawn(move || {
                    let started = Instant::now();
                    let mut answers = Vec::new();
                    let headers: Vec<(&str, &str)> =
                        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(600)
                        && answers.len() < 1_000_000
                    {
                        let response = lbrs_harness::client::request(addr, "GET", "/", &headers, b"");
                        let (status, backend) = match response {
                            Ok(r) => (r.status, r.header("X-Backend").unwrap_or("").to_string()),
                            Err(_) => (0, String::new()),
                        };
                        answers.push(Answer { at: Instant::now(), status, backend });
                    }
                    answers
                })
            })
            .collect();
        SteadyLoad { stop, threads }
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Answer> = std::mem::take(&mut self.threads)
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        all.sort_by_key(|a| a.at);
        all
    }
}

impl Drop for SteadyLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn failed(answers: &[Answer]) -> Vec<&Answer> {
    answers.iter().filter(|a| a.status != 200).collect()
}

/// Waits until `last` has served a request through the balancer; how long that took.
fn serves_within(instances: &Instances, last: u8, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let before = instances.requests(last);
    wait_for(within, || instances.requests(last) > before).then(|| start.elapsed())
}

fn status_members(apache: &Apache) -> Vec<serde_json::Value> {
    let status = apache.status().expect("status page");
    status["balancers"][0]["members"].as_array().cloned().unwrap_or_default()
}

#[test]
fn members_follow_the_name_through_scaling_replacement_and_a_dns_outage() {
    let mut instances = Instances::new(Duration::from_millis(20));
    for last in 2..=7 {
        instances.start(last);
    }
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2, 3]));
    let discover = format!("http://app.test:{} resolver={} ttl-max=5s", instances.port, dns.addr());
    let apache = apache(&discover, "lbmethod=byinflight", "", Mpm::Event);
    let load = SteadyLoad::start(apache.addr(), 4, Vec::new());
    let limit = Duration::from_secs(TTL + 1);
    // Generous for the test's own polling; the report prints what was measured.
    let patience = limit + Duration::from_millis(900);

    assert!(wait_for(Duration::from_secs(5), || instances.requests(2) > 5 && instances.requests(3) > 5));
    assert_eq!(instances.requests(4) + instances.requests(5), 0, "only the name's addresses serve");

    // Scale out 2 -> 5.
    set_hosts(&dns, &hosts("app.test", &[2, 3, 4, 5, 6]));
    for last in [4, 5, 6] {
        let took = serves_within(&instances, last, patience);
        println!("scale out: 127.0.0.{last} served after {took:?}");
        assert!(took.is_some(), "127.0.0.{last} did not serve within {patience:?}");
    }

    // Scale in 5 -> 3: .5 and .6 leave; after TTL + 1 s they get nothing new, and what they
    // had in flight completed (no client saw a failure).
    set_hosts(&dns, &hosts("app.test", &[2, 3, 4]));
    thread::sleep(limit + Duration::from_millis(300));
    let (five, six) = (instances.requests(5), instances.requests(6));
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (instances.requests(5), instances.requests(6)),
        (five, six),
        "removed addresses got new requests"
    );
    assert_eq!(instances.inflight(5) + instances.inflight(6), 0);
    assert!(wait_for(Duration::from_secs(3), || status_members(&apache)
        .iter()
        .filter(|m| m["origin"]["standing"] == "removed")
        .count()
        == 2));

    // An address replaced: .4 goes, .7 comes.
    set_hosts(&dns, &hosts("app.test", &[2, 3, 7]));
    let took = serves_within(&instances, 7, patience);
    println!("replacement: 127.0.0.7 served after {took:?}");
    assert!(took.is_some());
    thread::sleep(limit + Duration::from_millis(300));
    let four = instances.requests(4);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(instances.requests(4), four, "the replaced address got new requests");

    // The DNS server stops for 30 s: the members stay.
    let mut dns = dns;
    dns.stop();
    let during = Instant::now();
    thread::sleep(Duration::from_secs(30));
    let served: Vec<u64> = [2, 3, 7].iter().map(|&l| instances.requests(l)).collect();
    thread::sleep(Duration::from_secs(1));
    for (i, &last) in [2u8, 3, 7].iter().enumerate() {
        assert!(instances.requests(last) > served[i], "127.0.0.{last} stopped serving while DNS was down");
    }
    let log = apache.error_log();
    assert_eq!(log.matches("lookup failed").count(), 1, "a failure is logged once:\n{log}");
    dns.start_again().expect("dnsmasq again");
    set_hosts(&dns, &hosts("app.test", &[2, 3, 7, 5]));
    let took = serves_within(&instances, 5, patience + Duration::from_secs(1));
    println!("after the outage ({:?}): 127.0.0.5 back after {took:?}", during.elapsed());
    assert!(took.is_some(), "a removed address that comes back serves again");

    let answers = load.finish();
    let bad = failed(&answers);
    let by_backend = answers.iter().fold(HashMap::<&str, usize>::new(), |mut m, a| {
        *m.entry(a.backend.as_str()).or_insert(0) += 1;
        m
    });
    println!("{} requests, {} failed; served by {by_backend:?}", answers.len(), bad.len());
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {:?}",
        bad.len(),
        answers.len(),
        &bad[..bad.len().min(5)]
    );
    let log = apache.error_log();
    for line in ["added", "draining", "removed", "is back", "resolves again"] {
        assert!(log.contains(line), "no notice with \"{line}\" in the error log:\n{log}");
    }
}

/// Shares of `count` requests sent one after another (the `X-Backend` of each answer).
fn shares(addr: SocketAddr, count: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..count {
        let response = lbrs_harness::client::request(addr, "GET", "/", headers, b"").expect("request");
        assert_eq!(response.status, 200, "{}", response.text());
        *seen.entry(response.header("X-Backend").unwrap_or("").to_string()).or_insert(0) += 1;
    }
    seen
}

fn srv(target: &str, port: u16, priority: u16, weight: u16) -> Srv {
    Srv { name: "_http._tcp.app.test".into(), target: target.into(), port, priority, weight }
}

#[test]
fn srv_weights_are_the_shares_and_priorities_the_tiers_and_changes_are_followed() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3, 4] {
        instances.start(last);
    }
    let port = instances.port;
    let names: Vec<(&str, String)> = [2, 3, 4]
        .iter()
        .map(|l| (["a2.test", "a3.test", "a4.test"][*l as usize - 2], format!("127.0.0.{l}")))
        .collect();
    let host_pairs: Vec<(&str, &str)> = names.iter().map(|(n, a)| (*n, a.as_str())).collect();
    // a4 has a higher priority number: a standby tier, used only when the first has nobody.
    let records = [srv("a2.test", port, 0, 1), srv("a3.test", port, 0, 3), srv("a4.test", port, 1, 5)];
    let mut dns = Dnsmasq::start(&host_pairs, &records, TTL as u32).expect("dnsmasq");
    let discover = format!("srv+http://_http._tcp.app.test resolver={}", dns.addr());
    let apache = apache(&discover, "lbmethod=byweight", "", Mpm::Event);

    let seen = shares(apache.addr(), 400, &[]);
    println!("weights 1:3, standby 5: {seen:?}");
    assert_eq!((seen.get("app2"), seen.get("app3"), seen.get("app4")), (Some(&100), Some(&300), None));
    let member = apache.member_status("balancer://app", &format!("http://127.0.0.4:{port}")).expect("member");
    assert_eq!((member["lbset"].as_i64(), member["loadfactor"].as_f64()), (Some(1), Some(5.0)));

    // The weights change (a restart of the DNS server: it answers nothing for a moment).
    dns.restart_with(&[srv("a2.test", port, 0, 3), srv("a3.test", port, 0, 1), srv("a4.test", port, 1, 5)])
        .expect("dnsmasq with new weights");
    let followed = wait_for(Duration::from_secs(TTL + 3), || {
        apache
            .member_status("balancer://app", &format!("http://127.0.0.2:{port}"))
            .is_ok_and(|m| m["loadfactor"].as_f64() == Some(3.0))
    });
    assert!(followed, "the new weight did not arrive");
    // Every process has the new weights once it has seen the balancer change.
    thread::sleep(Duration::from_millis(300));
    let seen = shares(apache.addr(), 400, &[]);
    println!("weights 3:1: {seen:?}");
    // Exact over whole cycles; the change of tables in each process may cut one cycle short.
    let near = |name: &str, want: usize| seen.get(name).is_some_and(|&n| n.abs_diff(want) <= 2);
    assert!(near("app2", 300) && near("app3", 100) && !seen.contains_key("app4"), "{seen:?}");

    // The first tier's targets go: the standby tier serves.
    dns.restart_with(&[srv("a4.test", port, 1, 5)]).expect("dnsmasq with the standby alone");
    assert!(wait_for(Duration::from_secs(TTL + 4), || shares(apache.addr(), 1, &[]).contains_key("app4")));
    let seen = shares(apache.addr(), 50, &[]);
    assert_eq!(seen.get("app4"), Some(&50), "{seen:?}");
    let status = apache.status().expect("status");
    let line = &status["balancers"][0]["discovery"][0];
    println!("{}", serde_json::to_string_pretty(line).unwrap_or_default());
    assert_eq!(line["answer"], 1);
    assert_eq!(line["serving"], 1);
}

#[test]
fn byhash_keys_of_members_that_stay_do_not_move() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3, 4, 5] {
        instances.start(last);
    }
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2, 3, 4]));
    let discover = format!("http://app.test:{} resolver={}", instances.port, dns.addr());
    let apache = apache(
        &discover,
        "lbmethod=byhash",
        "    LBHashKey \"%{HTTP:X-Key}\"\n    LBHashBalanceFactor off\n",
        Mpm::Event,
    );
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let map = |apache: &Apache| -> Vec<String> {
        keys.iter()
            .map(|key| {
                let r = lbrs_harness::client::request(apache.addr(), "GET", "/", &[("X-Key", key)], b"")
                    .expect("request");
                r.header("X-Backend").unwrap_or("").to_string()
            })
            .collect()
    };
    let before = map(&apache);
    assert!(before.iter().all(|b| ["app2", "app3", "app4"].contains(&b.as_str())));

    // Scale out: a key keeps its member or moves to the new one.
    set_hosts(&dns, &hosts("app.test", &[2, 3, 4, 5]));
    assert!(
        serves_within(&instances, 5, Duration::from_secs(TTL + 3)).is_some()
            || wait_for(Duration::from_secs(3), || map(&apache).iter().any(|b| b == "app5"))
    );
    // Each process builds its new table in the background: wait until the answers settle.
    let settled = |apache: &Apache| {
        let mut last = map(apache);
        for _ in 0..20 {
            thread::sleep(Duration::from_millis(200));
            let now = map(apache);
            if now == last {
                return now;
            }
            last = now;
        }
        last
    };
    let after = settled(&apache);
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| after[i] != before[i]).collect();
    let between: Vec<usize> = moved.iter().copied().filter(|&i| after[i] != "app5").collect();
    println!(
        "scale out 3 -> 4: {} of {} keys moved, {} of them between members that stayed",
        moved.len(),
        keys.len(),
        between.len()
    );
    // Maglev's table, rebuilt with one more member, moves a few keys between the others too
    // (the paper's "minimal disruption" is not zero): a few percent at most.
    assert!(
        between.len() * 100 <= keys.len() * 4,
        "{} keys moved between members that stayed",
        between.len()
    );
    assert!(moved.len() > between.len() && moved.len() < keys.len() / 2, "{} keys moved", moved.len());

    // Scale in: the keys of the members that stay do not move.
    set_hosts(&dns, &hosts("app.test", &[2, 4, 5]));
    assert!(wait_for(Duration::from_secs(TTL + 4), || !map(&apache).iter().any(|b| b == "app3")));
    let last = settled(&apache);
    for i in 0..keys.len() {
        if after[i] != "app3" {
            assert_eq!(last[i], after[i], "key {} moved from a member that stayed", keys[i]);
        }
    }
}

/// The pid that resolves now, from the status page.
fn resolver_pid(apache: &Apache) -> Option<u32> {
    let status = apache.status().ok()?;
    status["balancers"][0]["discovery"][0]["resolver_pid"].as_u64().map(|p| p as u32)
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid}");
}

#[test]
fn another_process_resolves_when_the_resolver_is_killed_or_hangs() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3, 4, 5] {
        instances.start(last);
    }
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2]));
    let discover = format!("http://app.test:{} resolver={}", instances.port, dns.addr());
    let apache = apache(&discover, "lbmethod=byinflight", "", Mpm::Prefork);
    assert!(wait_for(Duration::from_secs(5), || resolver_pid(&apache).is_some()));

    // Killed: the next process takes over at once (the holder is gone).
    let first = resolver_pid(&apache).expect("a resolver");
    signal(first, "KILL");
    set_hosts(&dns, &hosts("app.test", &[2, 3]));
    let started = Instant::now();
    assert!(wait_for(Duration::from_secs(TTL + 4), || shares(apache.addr(), 4, &[]).contains_key("app3")));
    println!("resolver {first} killed: 127.0.0.3 served after {:?}", started.elapsed());
    let second = resolver_pid(&apache).expect("a resolver");
    assert_ne!(second, first);

    // Hung (stopped, still alive): another takes over when its lease runs out (5 s).
    signal(second, "STOP");
    let resumed = scopeguard(second);
    set_hosts(&dns, &hosts("app.test", &[2, 3, 4]));
    let started = Instant::now();
    assert!(
        wait_for(Duration::from_secs(12), || shares(apache.addr(), 4, &[]).contains_key("app4")),
        "nobody resolved while the holder was stopped"
    );
    println!("resolver {second} stopped: 127.0.0.4 served after {:?}", started.elapsed());
    drop(resumed);
    // Resumed, the old holder does not take the lease back.
    thread::sleep(Duration::from_secs(2));
    let third = resolver_pid(&apache).expect("a resolver");
    assert_ne!(third, second, "the resumed process took the lease back");
    set_hosts(&dns, &hosts("app.test", &[2, 3, 4, 5]));
    assert!(wait_for(Duration::from_secs(TTL + 4), || shares(apache.addr(), 6, &[]).contains_key("app5")));
}

/// Sends SIGCONT to `pid` when dropped (a test that fails leaves no stopped process).
fn scopeguard(pid: u32) -> impl Drop {
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
        }
    }
    Resume(pid)
}

#[test]
fn a_graceful_restart_keeps_the_members_also_when_the_name_does_not_resolve() {
    for mpm in [Mpm::Event, Mpm::Prefork] {
        graceful_restart_keeps_the_members(mpm);
    }
}

fn graceful_restart_keeps_the_members(mpm: Mpm) {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3, 4] {
        instances.start(last);
    }
    let mut dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2]));
    let discover = format!("http://app.test:{} resolver={} startup=refuse", instances.port, dns.addr());
    let mut apache = apache(&discover, "lbmethod=byinflight", "", mpm);
    // .3 arrives at run time, in a growth slot.
    set_hosts(&dns, &hosts("app.test", &[2, 3]));
    assert!(wait_for(Duration::from_secs(TTL + 3), || shares(apache.addr(), 4, &[]).contains_key("app3")));
    let before: u64 = status_members(&apache).iter().map(|m| m["selected"].as_u64().unwrap_or(0)).sum();

    apache.graceful().expect("graceful restart");
    let seen = shares(apache.addr(), 40, &[]);
    let both_serve = |seen: &HashMap<String, usize>| seen.len() == 2 && seen.values().all(|&n| n >= 10);
    assert!(both_serve(&seen), "both found again: {seen:?}");
    let members = status_members(&apache);
    let after: u64 = members.iter().map(|m| m["selected"].as_u64().unwrap_or(0)).sum();
    assert!(after >= before + 40, "counters went back across the restart: {before} then {after}");
    assert!(members.iter().all(|m| m["origin"]["standing"] == "serving"), "{members:?}");

    // The name does not resolve at the next restart: the last good members stay, even with
    // startup=refuse (they are an answer).
    dns.stop();
    apache.graceful().expect("graceful restart with DNS down");
    let seen = shares(apache.addr(), 40, &[]);
    assert!(both_serve(&seen), "kept: {seen:?}");
    let log = apache.error_log();
    assert!(log.contains("starting with 2 member(s) from its last good answer"), "{log}");
    dns.start_again().expect("dnsmasq again");
    set_hosts(&dns, &hosts("app.test", &[2, 3, 4]));
    assert!(wait_for(Duration::from_secs(TTL + 4), || shares(apache.addr(), 6, &[]).contains_key("app4")));
}

#[test]
fn with_slow_start_a_member_that_joins_or_comes_back_ramps_up() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3] {
        instances.start(last);
    }
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2]));
    let discover = format!("http://app.test:{} resolver={}", instances.port, dns.addr());
    let apache = apache(&discover, "lbmethod=byinflight", "    LBSlowStart 30s\n", Mpm::Event);
    let url = format!("http://127.0.0.3:{}", instances.port);
    let progress = |standing: &str| {
        let member = apache.member_status("balancer://app", &url).ok()?;
        (member["origin"]["standing"] == standing).then(|| member["slow_start_progress"].as_f64()).flatten()
    };
    set_hosts(&dns, &hosts("app.test", &[2, 3]));
    assert!(
        wait_for(Duration::from_secs(TTL + 3), || progress("serving").is_some()),
        "no ramp for a new member"
    );
    assert!(progress("serving").is_some_and(|p| p < 0.5));
    // Gone, then back: a new ramp.
    set_hosts(&dns, &hosts("app.test", &[2]));
    assert!(wait_for(Duration::from_secs(TTL + 3), || apache
        .member_status("balancer://app", &url)
        .is_ok_and(|m| m["origin"]["standing"] == "removed")));
    set_hosts(&dns, &hosts("app.test", &[2, 3]));
    assert!(wait_for(Duration::from_secs(TTL + 3), || progress("serving").is_some_and(|p| p < 0.2)));
}

#[test]
fn mod_proxy_hcheck_checks_members_added_at_run_time() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3] {
        instances.start(last);
    }
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2]));
    let discover = format!(
        "http://app.test:{} resolver={} hcmethod=GET hcuri=/health hcinterval=1s hcfails=1 hcpasses=1",
        instances.port,
        dns.addr()
    );
    let body = format!(
        "<Proxy \"balancer://app\">\n    LBDiscover {discover}\n    ProxySet lbmethod=byinflight\n</Proxy>\n\
         ProxyPass \"/\" \"balancer://app/\"\n"
    );
    let apache = Apache::start(ApacheConfig::new(&body).with_module("proxy_hcheck")).expect("apache2");
    set_hosts(&dns, &hosts("app.test", &[2, 3]));
    let url = format!("http://127.0.0.3:{}", instances.port);
    let state = || {
        apache.member_status("balancer://app", &url).map(|m| m["state"].as_str().unwrap_or("").to_string())
    };
    assert!(wait_for(Duration::from_secs(TTL + 3), || state().is_ok_and(|s| s == "ok")));
    instances.running[&3].set_healthy(false);
    assert!(
        wait_for(Duration::from_secs(6), || state().is_ok_and(|s| s == "hcheck-failed")),
        "the added member was not health-checked: {:?}",
        state()
    );
    instances.running[&3].set_healthy(true);
    assert!(wait_for(Duration::from_secs(6), || state().is_ok_and(|s| s == "ok")));
    // A member defined at startup is checked too, and so is an address where nothing listens.
    let first = format!("http://127.0.0.2:{}", instances.port);
    instances.running[&2].set_healthy(false);
    assert!(
        wait_for(Duration::from_secs(6), || apache
            .member_status("balancer://app", &first)
            .is_ok_and(|m| m["state"] == "hcheck-failed")),
        "the startup member was not health-checked"
    );
    set_hosts(&dns, &hosts("app.test", &[2, 3, 9]));
    let dead = format!("http://127.0.0.9:{}", instances.port);
    assert!(
        wait_for(Duration::from_secs(TTL + 6), || apache
            .member_status("balancer://app", &dead)
            .is_ok_and(|m| m["state"] == "hcheck-failed")),
        "an address where nothing listens was not found out: {:?}",
        apache.member_status("balancer://app", &dead)
    );
}

#[test]
fn the_guides_recipe_follows_the_name_and_logs_each_change() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3] {
        instances.start(last);
    }
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.internal", &[2]));
    let recipe = lbrs_harness::Recipe::load("docs/containers-and-autoscaling.md", "discover-basic").fill(&[
        ("app.internal:8080", &format!("app.internal:{}", instances.port)),
        ("ttl-max=10s", &format!("ttl-max=10s resolver={}", dns.addr())),
        // A ramp the test can wait out: byinflight sends nothing to a member at a tenth of its
        // weight while requests come one at a time.
        ("LBSlowStart 30s", "LBSlowStart 1s"),
    ]);
    let config = ApacheConfig::new(&recipe.text).log_level("warn lbmethod_rs:notice");
    let apache = Apache::start(config).expect("apache2 with the recipe");
    assert_eq!(shares(apache.addr(), 4, &[]).get("app2"), Some(&4));
    set_hosts(&dns, &hosts("app.internal", &[2, 3]));
    assert!(wait_for(Duration::from_secs(TTL + 4), || shares(apache.addr(), 8, &[]).contains_key("app3")));
    set_hosts(&dns, &hosts("app.internal", &[3]));
    let removed = wait_for(Duration::from_secs(TTL + 4), || apache.error_log().contains("removed (disabled"));
    assert!(removed, "{:?}\n{}", apache.status().map(|s| s["balancers"][0].clone()), apache.error_log());
    let log = apache.error_log();
    assert!(log.contains(&format!("member http://127.0.0.3:{} added", instances.port)), "{log}");
    assert!(log.contains("is gone from the answer: draining"), "{log}");
}

#[test]
fn a_long_answer_comes_over_tcp_and_every_address_is_a_member() {
    let port = 9; // nothing listens: only the list of members is looked at
    let many: Vec<(String, String)> =
        (10..70).map(|last| ("big.test".to_string(), format!("127.0.0.{last}"))).collect();
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &many);
    let discover = format!("http://big.test:{port} resolver={} slots=8", dns.addr());
    let apache = apache(&discover, "lbmethod=byinflight", "", Mpm::Event);
    let members = status_members(&apache);
    // 60 A records do not fit in 512 bytes of UDP: the answer came over TCP, whole.
    assert_eq!(members.len(), 60, "{members:?}");
    let status = apache.status().expect("status");
    assert_eq!(status["balancers"][0]["discovery"][0]["answer"], 60);
    assert_eq!(status["balancers"][0]["discovery"][0]["free_slots"], 8);
}

#[test]
fn members_on_the_schemes_default_port_are_followed() {
    // Port 80 on 127.0.0.x: in a network namespace of the test's own, where nothing else
    // listens.
    let ns = lbrs_harness::netns::Netns::create(&lbrs_harness::netns::name("disc", "a")).expect("netns");
    let outcome = ns.run(|| {
        let _two = Backend::start_on("127.0.0.2:80".parse().expect("addr"), BackendSpec::new("app2"))
            .expect("backend");
        let _three = Backend::start_on("127.0.0.3:80".parse().expect("addr"), BackendSpec::new("app3"))
            .expect("backend");
        let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
        set_hosts(&dns, &hosts("app.test", &[2]));
        let apache = apache(
            &format!("http://app.test resolver={}", dns.addr()),
            "lbmethod=byinflight",
            "",
            Mpm::Event,
        );
        thread::sleep(Duration::from_secs(TTL + 1));
        let names: Vec<String> =
            status_members(&apache).iter().map(|m| m["name"].as_str().unwrap_or("").to_string()).collect();
        // httpd names the member without the default port; the name's member is that one.
        assert_eq!(names, vec!["http://127.0.0.2".to_string()], "one member, named as httpd names it");
        set_hosts(&dns, &hosts("app.test", &[3]));
        assert!(
            wait_for(Duration::from_secs(TTL + 3), || {
                let seen = shares(apache.addr(), 6, &[]);
                seen.get("app3") == Some(&6)
            }),
            "127.0.0.2 left the name but still serves"
        );
    });
    outcome.expect("the test in its namespace");
}

#[test]
fn two_names_that_share_an_address_share_one_member() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3, 4] {
        instances.start(last);
    }
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    let both = |a: &[u8], b: &[u8]| {
        let mut entries = hosts("a.test", a);
        entries.extend(hosts("b.test", b));
        set_hosts(&dns, &entries);
    };
    both(&[2], &[3]);
    let port = instances.port;
    let lines = format!(
        "http://a.test:{port} resolver={0}\n    LBDiscover http://b.test:{port} resolver={0} loadfactor=5",
        dns.addr()
    );
    let apache = apache(&lines, "lbmethod=byweight", "", Mpm::Event);
    both(&[2, 4], &[3]);
    let four = format!("http://127.0.0.4:{port}");
    assert!(wait_for(Duration::from_secs(TTL + 3), || apache.member_status("balancer://app", &four).is_ok()));
    both(&[2, 4], &[3, 4]);
    let count =
        |apache: &Apache| status_members(apache).iter().filter(|m| m["name"] == four.as_str()).count();
    assert!(wait_for(Duration::from_secs(TTL + 3), || count(&apache) == 1));
    thread::sleep(Duration::from_secs(TTL + 1));
    assert_eq!(count(&apache), 1, "one member for the address both names have");
    // Its settings stay those of the name that gave it first (loadfactor 1, not b's 5).
    let member = apache.member_status("balancer://app", &four).expect("member");
    assert_eq!(member["loadfactor"].as_f64(), Some(1.0), "{member}");
    assert!(apache.error_log().contains("is shared with another name"));
    // b.test drops it, a.test keeps it: it serves on.
    both(&[2, 4], &[3]);
    thread::sleep(Duration::from_secs(TTL + 2));
    let member = apache.member_status("balancer://app", &four).expect("member");
    assert_eq!(member["state"], "ok", "{member}");
    assert!(shares(apache.addr(), 30, &[]).contains_key("app4"));
    // b has it again, then a lets go of it: it takes b's settings (loadfactor 5).
    both(&[2, 4], &[3, 4]);
    thread::sleep(Duration::from_secs(TTL + 1));
    both(&[2], &[3, 4]);
    assert!(
        wait_for(Duration::from_secs(TTL + 3), || apache
            .member_status("balancer://app", &four)
            .is_ok_and(|m| m["loadfactor"].as_f64() == Some(5.0) && m["state"] == "ok")),
        "{:?}",
        apache.member_status("balancer://app", &four)
    );
    // Both drop it: drained and removed.
    both(&[2], &[3]);
    assert!(wait_for(Duration::from_secs(TTL + 3), || apache
        .member_status("balancer://app", &four)
        .is_ok_and(|m| m["state"] == "disabled")));
}

#[test]
fn a_name_whose_server_does_not_answer_holds_up_no_other_name() {
    let mut instances = Instances::new(Duration::ZERO);
    for last in [2, 3, 4] {
        instances.start(last);
    }
    // A "name server" that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2]));
    let port = instances.port;
    let lines = format!(
        "http://dead.test:{port} resolver={} dns-timeout=8s\n    LBDiscover http://app.test:{port} resolver={}",
        silent.local_addr().expect("addr"),
        dns.addr()
    );
    let apache = apache(&lines, "lbmethod=byinflight", "", Mpm::Prefork);
    let mut resolvers = std::collections::BTreeSet::new();
    for (round, lasts) in [&[2u8, 3][..], &[2, 4], &[3, 4], &[2, 3, 4]].into_iter().enumerate() {
        set_hosts(&dns, &hosts("app.test", lasts));
        let started = Instant::now();
        let followed = wait_for(Duration::from_secs(TTL + 3), || {
            let serving: Vec<u8> = status_members(&apache)
                .iter()
                .filter(|m| m["origin"]["standing"] == "serving")
                .filter_map(|m| m["name"].as_str()?.split("127.0.0.").nth(1)?.split(':').next()?.parse().ok())
                .collect();
            let mut serving = serving;
            serving.sort();
            serving == lasts
        });
        println!("round {round}: {lasts:?} followed after {:?}", started.elapsed());
        assert!(followed, "round {round}: {lasts:?} not followed while the other name's server is silent");
        resolvers.extend(resolver_pid(&apache));
    }
    let names: Vec<String> =
        status_members(&apache).iter().map(|m| m["name"].as_str().unwrap_or("").to_string()).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "duplicate members: {names:?}");
    assert_eq!(resolvers.len(), 1, "several processes resolved: {resolvers:?}");
    let log = apache.error_log();
    let changers: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains(" added") || l.contains("draining") || l.contains("is back"))
        .filter_map(|l| l.split("[pid ").nth(1)?.split(':').next())
        .collect();
    assert_eq!(changers.len(), 1, "several processes changed the balancer: {changers:?}");
}

#[test]
fn graceful_restarts_in_quick_succession_crash_no_child() {
    let mut instances = Instances::new(Duration::ZERO);
    instances.start(2);
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2]));
    let discover = format!("http://app.test:{} resolver={}", instances.port, dns.addr());
    // Loaded before mod_proxy, as Debian's a2enmod orders it (lbmethod_rs.load sorts first):
    // this module's child_init then must not run before mod_proxy_balancer's.
    let body = format!(
        "<Proxy \"balancer://app\">\n    LBDiscover {discover}\n    ProxySet lbmethod=byinflight\n</Proxy>\n\
         ProxyPass \"/\" \"balancer://app/\"\n"
    );
    let config =
        ApacheConfig::new(&body).mpm(Mpm::Event).processes(2).threads(16).load_order(LoadOrder::BeforeProxy);
    let mut apache = Apache::start(config).expect("apache2");
    for round in 0..16u64 {
        apache.graceful().expect("graceful restart");
        assert_eq!(shares(apache.addr(), 4, &[]).get("app2"), Some(&4), "round {round}");
        thread::sleep(Duration::from_millis(700 + (round * 397) % 1800));
    }
    thread::sleep(Duration::from_secs(2));
    let log = apache.error_log();
    assert!(!log.contains("Segmentation fault") && !log.contains("exit signal"), "{log}");
}

#[test]
fn startup_refuse_fails_the_start_where_the_admin_sees_it() {
    let dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    let body = format!(
        "<Proxy \"balancer://app\">\n    LBDiscover http://nothere.test:8080 resolver={} startup=refuse\n    \
         ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n",
        dns.addr()
    );
    let dir = lbrs_harness::apache::ScratchDir::new().expect("scratch");
    let port = lbrs_harness::apache::free_port().expect("port");
    let conf = dir.path().join("httpd.conf");
    std::fs::write(&conf, ApacheConfig::new(&body).render(dir.path(), port)).expect("config");
    let apache2 = lbrs_harness::apache::apache2_binary();
    // Whatever happens, no daemon is left behind.
    struct Stop(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new(&self.0).arg("-f").arg(&self.1).args(["-k", "stop"]).output();
        }
    }
    let _stop = Stop(apache2.clone(), conf.clone());
    // `apachectl -t` asks no name server: the syntax is fine.
    let test =
        std::process::Command::new(&apache2).arg("-f").arg(&conf).arg("-t").output().expect("apache2 -t");
    assert!(test.status.success(), "{}", String::from_utf8_lossy(&test.stderr));
    // A start as a daemon (what apachectl start does) fails, on the terminal, with a status.
    let start = std::process::Command::new(&apache2)
        .arg("-f")
        .arg(&conf)
        .args(["-k", "start"])
        .output()
        .expect("apache2");
    let said = String::from_utf8_lossy(&start.stderr);
    assert!(!start.status.success(), "started: {said}");
    assert!(
        said.contains("LBDiscover http://nothere.test:8080") && said.contains("startup=refuse"),
        "{said}"
    );
}

#[test]
fn with_startup_refuse_a_dns_outage_blocks_no_reload_stop_or_dump() {
    let mut instances = Instances::new(Duration::ZERO);
    instances.start(2);
    let mut dns = Dnsmasq::start(&[], &[], TTL as u32).expect("dnsmasq");
    set_hosts(&dns, &hosts("app.test", &[2]));
    let discover = format!("http://app.test:{} resolver={} startup=refuse", instances.port, dns.addr());
    let apache = apache(&discover, "lbmethod=byinflight", "", Mpm::Event);
    dns.stop();
    let conf = apache.dir().join("httpd.conf");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(lbrs_harness::apache::apache2_binary())
            .arg("-f")
            .arg(&conf)
            .args(args)
            .output()
            .expect("apache2");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for args in [&["-M"][..], &["-S"], &["-t", "-D", "DUMP_RUN_CFG"], &["-k", "graceful"]] {
        let (ok, said) = run(args);
        assert!(ok && !said.contains("startup=refuse"), "apache2 {args:?}: {said}");
    }
    // The graceful restart happened, with the last good member.
    assert!(wait_for(Duration::from_secs(10), || shares(apache.addr(), 2, &[]).get("app2") == Some(&2)));
    let (ok, said) = run(&["-k", "stop"]);
    assert!(ok, "apache2 -k stop: {said}");
}
