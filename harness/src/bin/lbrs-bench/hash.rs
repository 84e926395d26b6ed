//! `hash`: `byhash` against HAProxy and nginx consistent hashing of a request header, one key
//! at a time: how evenly keys spread over equal members, how many keys move when a member is
//! removed from the configuration, and the throughput with a new key per request.
//!
//! Spread and disruption are what consistent hashing is chosen for; probing one key at a time
//! keeps the bounded-load rules of `byhash` and HAProxy out of it (`hash-load` measures them
//! under concurrency).

use crate::common::{
    Options, Peers, RUN_DEADLINE, Server, check_interrupted, measured_load, run_load, start_backends,
    warm_up_load,
};
use lbrs_harness::client::{self, percentile};
use lbrs_harness::{
    Apache, ApacheConfig, Backend, HaproxyConfig, Mpm, NginxConfig, PeerProxy, balancer_block, ms,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The members, all at weight 1; the last one leaves in the second half of a run.
const HASH_MEMBERS: [&str; 4] = ["h1", "h2", "h3", "h4"];
/// The keys probed one by one to find which member each lands on. With 20,000 keys a
/// member's count of keys has a sampling noise of 1.2% of its ideal 5,000 (one standard
/// deviation), so the farthest of four members is typically 2% off even for a perfect table;
/// spreads much wider than that come from the method.
const HASH_KEYS: u32 = 20_000;
const REQUESTS: u64 = 20_000;
const CONCURRENCY: usize = 8;
/// The header whose value is the key.
pub const HASH_HEADER: &str = "X-User";
/// Every backend serves 64 requests at once, each in 1 ms (as in `shares`): no member queues,
/// so the hash alone decides the split.
const BACKEND_SLOTS: usize = 64;
const SERVICE_TIME: Duration = Duration::from_millis(1);

/// What hashes the `hash` and `hash-load` loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hasher {
    /// apache2 (event MPM), `lbmethod=byhash`, `LBHashKey "%{HTTP:X-User}"`.
    ByHash,
    /// HAProxy, `balance hdr(X-User)`, `hash-type consistent`, `hash-balance-factor 125`.
    Haproxy,
    /// HAProxy as above without `hash-balance-factor`: no load bound, HAProxy's default
    /// (`hash-load` only).
    HaproxyUnbounded,
    /// nginx, `hash $http_x_user consistent` with a shared `zone`.
    Nginx,
}

impl Hasher {
    pub fn label(self) -> &'static str {
        match self {
            Hasher::ByHash => "byhash",
            Hasher::Haproxy => "haproxy consistent",
            Hasher::HaproxyUnbounded => "haproxy unbounded",
            Hasher::Nginx => "nginx consistent",
        }
    }
}

pub fn start_hasher(hasher: Hasher, backends: &[Backend], peers: &Peers) -> Result<Server, String> {
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    match hasher {
        Hasher::ByHash => {
            let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, "")).collect();
            let body = format!(
                "MaxKeepAliveRequests 0\n{}",
                balancer_block("app", "/", &members, "lbmethod=byhash").replace(
                    "    ProxySet",
                    &format!("    LBHashKey \"%{{HTTP:{HASH_HEADER}}}\"\n    ProxySet")
                )
            );
            Ok(Server::Apache(Apache::start(ApacheConfig::new(&body).mpm(Mpm::Event))?))
        }
        Hasher::Haproxy | Hasher::HaproxyUnbounded => {
            let binary = peers.haproxy.as_deref().ok_or("haproxy is not installed")?;
            let mut config = HaproxyConfig::new(&format!("hdr({HASH_HEADER})"), &addrs)
                .threads(2)
                .backend_line("hash-type consistent");
            if hasher == Hasher::Haproxy {
                config = config.backend_line("hash-balance-factor 125");
            }
            Ok(Server::Peer(PeerProxy::haproxy(binary, &config)?))
        }
        Hasher::Nginx => {
            let binary = peers.nginx.as_deref().ok_or("nginx is not installed")?;
            let method =
                format!("hash $http_{} consistent", HASH_HEADER.to_ascii_lowercase().replace('-', "_"));
            let config = NginxConfig::new(&method, &addrs).worker_processes(2).zone(true);
            Ok(Server::Peer(PeerProxy::nginx(binary, &config)?))
        }
    }
}

/// Which member answers each key: one request per key, one at a time (with several at once,
/// the bounded-load rules of byhash and HAProxy would divert some keys while another probe is
/// in flight, which would count as keys moving), each on its own connection, so that no
/// connection reuse can decide the member.
fn probe_owners(addr: SocketAddr) -> Result<BTreeMap<u32, String>, String> {
    (0..HASH_KEYS)
        .map(|key| {
            check_interrupted()?;
            let value = format!("user-{key}");
            let response = client::request(addr, "GET", "/", &[(HASH_HEADER, &value)], b"")
                .map_err(|e| format!("key {value}: {e}"))?;
            match response.header("x-backend") {
                Some(owner) if response.status == 200 => Ok((key, owner.to_string())),
                _ => Err(format!("key {value}: status {}", response.status)),
            }
        })
        .collect()
}

/// What one hasher gave.
struct HashRun {
    hasher: Hasher,
    /// Keys per member with all members, in `HASH_MEMBERS` order.
    keys_per_member: Vec<u64>,
    /// Keys whose member changed when the last member left.
    moved: u64,
    /// Of those, keys that were not on the member that left (ideally none).
    moved_elsewhere: u64,
    /// Keys the member that left had.
    leaving_keys: u64,
    /// The distinct-key load with all members: requests answered 200, other outcomes, seconds,
    /// latencies.
    ok: u64,
    errors: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

fn measure_hash(
    options: &Options,
    backends: &[Backend],
    peers: &Peers,
    hasher: Hasher,
) -> Result<HashRun, String> {
    let all = start_hasher(hasher, backends, peers)?;
    let before = probe_owners(all.addr())?;
    let concurrency = options.concurrency(CONCURRENCY);
    // Every request its own key: the spread of a large population of keys.
    let key = "user-{n}";
    run_load(&warm_up_load(concurrency).header(HASH_HEADER, key), all.addr(), all.pid())?;
    let load = measured_load(concurrency, options.requests(REQUESTS)).header(HASH_HEADER, key);
    let report = run_load(&load, all.addr(), all.pid())?;
    drop(all);
    let (leaving, staying) = backends.split_last().ok_or("no backends")?;
    let without_last = start_hasher(hasher, staying, peers)?;
    let after = probe_owners(without_last.addr())?;
    drop(without_last);
    let leaving_name = leaving.name();
    let moved: Vec<u32> =
        before.iter().filter(|&(key, owner)| after.get(key) != Some(owner)).map(|(&k, _)| k).collect();
    let moved_elsewhere = moved.iter().filter(|key| before[key] != leaving_name).count() as u64;
    let ok = report.count_status(200);
    Ok(HashRun {
        hasher,
        keys_per_member: HASH_MEMBERS
            .iter()
            .map(|name| before.values().filter(|owner| owner.as_str() == *name).count() as u64)
            .collect(),
        moved: moved.len() as u64,
        moved_elsewhere,
        leaving_keys: before.values().filter(|owner| owner.as_str() == leaving_name).count() as u64,
        ok,
        errors: report.outcomes.len() as u64 - ok,
        seconds: report.elapsed.as_secs_f64(),
        latencies: report.outcomes.iter().filter(|o| o.status == 200).map(|o| o.latency).collect(),
    })
}

fn print_hash_table(runs: &[HashRun]) {
    let ideal = HASH_KEYS as f64 / HASH_MEMBERS.len() as f64;
    println!(
        "{:<19} {:>23} {:>9} {:>7} {:>14} {:>7} {:>8} {:>6} {:>9}",
        "method", "keys per member", "spread", "moved", "not from h4", "req/s", "p99", "errors", "requests"
    );
    for run in runs {
        let keys: Vec<String> = run.keys_per_member.iter().map(u64::to_string).collect();
        let (low, high) = run.keys_per_member.iter().fold((u64::MAX, 0), |(l, h), &n| (l.min(n), h.max(n)));
        // The farthest member from the ideal share, as a fraction of the ideal.
        let spread = (high as f64 - ideal).abs().max((ideal - low as f64).abs()) / ideal;
        println!(
            "{:<19} {:>23} {:>8.1}% {:>6.1}% {:>14} {:>7.0} {:>5.1} ms {:>6} {:>9}",
            run.hasher.label(),
            keys.join(" "),
            spread * 100.0,
            run.moved as f64 * 100.0 / HASH_KEYS as f64,
            run.moved_elsewhere,
            run.ok as f64 / run.seconds.max(1e-9),
            ms(percentile(&mut run.latencies.clone(), 99.0)),
            run.errors,
            run.ok + run.errors,
        );
    }
    for run in runs {
        println!(
            "{}: h4 had {} keys ({:.1}%), {} keys moved when it left, {} of them from another member",
            run.hasher.label(),
            run.leaving_keys,
            run.leaving_keys as f64 * 100.0 / HASH_KEYS as f64,
            run.moved,
            run.moved_elsewhere,
        );
    }
    if let Some(mine) = runs.iter().find(|r| r.hasher == Hasher::ByHash) {
        let mine_rate = mine.ok as f64 / mine.seconds.max(1e-9);
        let ratios: Vec<String> = runs
            .iter()
            .filter(|r| r.hasher != Hasher::ByHash)
            .map(|r| {
                format!("byhash/{} {:.2}", r.hasher.label(), mine_rate / (r.ok as f64 / r.seconds.max(1e-9)))
            })
            .collect();
        if !ratios.is_empty() {
            println!("throughput {}", ratios.join(", "));
        }
    }
}

pub fn run(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let mut hashers = vec![Hasher::ByHash];
    if peers.haproxy.is_some() {
        hashers.push(Hasher::Haproxy);
    } else {
        eprintln!("hash: haproxy not installed (apt-get install haproxy): skipping it");
    }
    if peers.nginx.is_some() {
        hashers.push(Hasher::Nginx);
    } else {
        eprintln!("hash: nginx not installed (apt-get install nginx): skipping it");
    }
    let backends = start_backends(&HASH_MEMBERS, BACKEND_SLOTS, SERVICE_TIME)?;
    eprintln!(
        "hash: {HASH_KEYS} keys probed, then {} requests (or {} s) with a new key each from {} clients; \
         members {}, service time {} ms",
        options.requests(REQUESTS),
        RUN_DEADLINE.as_secs(),
        options.concurrency(CONCURRENCY),
        HASH_MEMBERS.join(", "),
        ms(SERVICE_TIME),
    );
    let mut runs = Vec::new();
    for hasher in hashers {
        eprint!("hash {} ... ", hasher.label());
        let run = measure_hash(options, &backends, &peers, hasher)?;
        eprintln!("{} requests in {:.1} s", run.ok + run.errors, run.seconds);
        runs.push(run);
    }
    println!(
        "\nhash: {HASH_KEYS} keys over 4 members at equal weight (ideal {} each); spread: the farthest \
         member from the ideal; moved: keys on another member once h4 has left\n",
        HASH_KEYS / HASH_MEMBERS.len() as u32
    );
    print_hash_table(&runs);
    Ok(())
}
