//! `hash-load`: consistent hashing under concurrency, with and without a hot key.
//!
//! People hash for affinity: the same user (or URL) on the same member, so that its caches and
//! in-memory state are warm. A bounded-load rule (`byhash`'s `LBHashBalanceFactor`, HAProxy's
//! `hash-balance-factor`) passes a key on when its member is above the bound; that protects a
//! member from a hot key, but at ordinary load it must not scatter keys, or affinity is lost
//! (the product bar: at least 95% of keys always on one member with no hot key). `hash` probes
//! keys one at a time and cannot see this; here the keys come from many clients at once.
//!
//! Keys are in `X-User` (`user-0` to `user-999`), each request's drawn at random from a fixed
//! seed, so every contender gets the same sequence of keys. Three cases, members of 8 worker
//! slots at 5 ms:
//!
//! - (a) 16 clients over 5 members, keys uniform;
//! - (b) 64 clients over 10 members, keys uniform;
//! - (c) as (a), but half of all requests carry one key (`user-0`), the rest uniform over the
//!   other 999.
//!
//! Contenders: Apache `byhash` with `LBHashKey "%{HTTP:X-User}"` (default balance factor, 1.25),
//! HAProxy `balance hdr(X-User)` + `hash-type consistent` with `hash-balance-factor 125` and
//! without it, nginx `hash $http_x_user consistent`. It prints throughput and p99; the fraction
//! of keys whose every request went to one member; the fraction of requests that went to
//! another member than their key's usual one (the one that answered it most); `byhash`'s own
//! count of diverted requests (status page, `balancers[].diverted`); and for (c) the hot
//! member's share and its peak and average requests in flight (as the backend counts them, in
//! service and queued).

use crate::common::{Options, Peers, Server, measured_load, run_load, start_backends, wait_backends_idle};
use crate::hash::{HASH_HEADER, Hasher, start_hasher};
use crate::windows::{answered_by, percent_series, seconds_header};
use lbrs_harness::client::{percentile, request_random};
use lbrs_harness::{Backend, Load, LoadReport, ms};
use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

const MEMBERS: [&str; 10] = ["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10"];
const SLOTS: usize = 8;
const SERVICE_TIME: Duration = Duration::from_millis(5);
const KEYS: u64 = 1000;
const REQUESTS: u64 = 20_000;
/// How often the backends' in-flight counts are sampled during a measured load.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The warm-up's keys come from another seed than the measured load's.
const WARM_UP_SEED: u64 = 0x5eed;

/// One case: members (the first `members` of `MEMBERS`), clients, whether half the requests
/// carry the hot key, and the seed of the keys.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    members: usize,
    clients: usize,
    hot: bool,
    seed: u64,
}

const CASES: [Case; 3] = [
    Case { name: "a", members: 5, clients: 16, hot: false, seed: 1 },
    Case { name: "b", members: 10, clients: 64, hot: false, seed: 2 },
    Case { name: "c", members: 5, clients: 16, hot: true, seed: 3 },
];

/// The hot key of case (c).
const HOT_KEY: u64 = 0;

impl Case {
    /// The key of a request whose random number is `random`.
    fn key(self, random: u64) -> u64 {
        match self.hot {
            false => random % KEYS,
            true if random.is_multiple_of(2) => HOT_KEY,
            true => 1 + (random / 2) % (KEYS - 1),
        }
    }

    fn load(self, load: Load, seed: u64) -> Load {
        load.random_header(HASH_HEADER, seed, move |random| format!("user-{}", self.key(random)))
    }

    fn describe(self) -> String {
        let keys = if self.hot {
            format!("half of the requests with user-{HOT_KEY}, the rest uniform over the other {}", KEYS - 1)
        } else {
            format!("keys user-0 to user-{} uniform", KEYS - 1)
        };
        format!("{} clients over {} members, {keys}", self.clients, self.members)
    }
}

struct Run {
    case: Case,
    hasher: Hasher,
    report: LoadReport,
    /// Per key, the requests each member answered.
    per_key: BTreeMap<u64, BTreeMap<String, u64>>,
    /// `byhash`'s diverted requests during the measured load (`None` for the others).
    diverted: Option<u64>,
    /// Per member (in `MEMBERS` order): the most requests it held at once, and the average of
    /// its in-flight samples.
    peak: Vec<u64>,
    average: Vec<f64>,
}

impl Run {
    fn ok(&self) -> u64 {
        self.report.count_status(200)
    }

    fn answered(&self) -> u64 {
        self.per_key.values().flat_map(|members| members.values()).sum()
    }

    /// Keys answered at least twice whose every request went to one member, over all keys
    /// answered at least twice.
    fn keys_on_one_member(&self) -> f64 {
        let seen: Vec<_> = self.per_key.values().filter(|m| m.values().sum::<u64>() >= 2).collect();
        let on_one = seen.iter().filter(|m| m.len() == 1).count();
        on_one as f64 / seen.len().max(1) as f64
    }

    /// Requests answered by another member than their key's usual one, over all answered.
    fn elsewhere(&self) -> f64 {
        let elsewhere: u64 = self.per_key.values().map(off_usual).sum();
        elsewhere as f64 / self.answered().max(1) as f64
    }

    /// The member that answered the hot key most.
    fn hot_member(&self) -> Option<&str> {
        usual(self.per_key.get(&HOT_KEY)?)
    }

    fn hot_index(&self) -> Option<usize> {
        let hot = self.hot_member()?;
        MEMBERS.iter().position(|&m| m == hot)
    }

    fn p99(&self) -> Duration {
        let mut latencies: Vec<Duration> =
            self.report.outcomes.iter().filter(|o| o.status == 200).map(|o| o.latency).collect();
        percentile(&mut latencies, 99.0)
    }
}

/// The member that answered most of a key's requests.
fn usual(members: &BTreeMap<String, u64>) -> Option<&str> {
    members.iter().max_by_key(|&(_, &n)| n).map(|(name, _)| name.as_str())
}

/// A key's requests not answered by its usual member.
fn off_usual(members: &BTreeMap<String, u64>) -> u64 {
    members.values().sum::<u64>() - members.values().max().copied().unwrap_or(0)
}

/// `byhash`'s diverted counter on the status page; `None` for the other servers.
fn diverted(server: &Server) -> Result<Option<u64>, String> {
    match server {
        Server::Apache(apache) => {
            let status = apache.status()?;
            Ok(status["balancers"][0]["diverted"].as_u64())
        }
        Server::Peer(_) => Ok(None),
    }
}

fn measure(
    options: &Options,
    backends: &[Backend],
    peers: &Peers,
    case: Case,
    hasher: Hasher,
) -> Result<Run, String> {
    let members = &backends[..case.members];
    wait_backends_idle(backends)?;
    let server = start_hasher(hasher, members, peers)?;
    let warm_up = case
        .load(Load::new("/", case.clients, 50 * case.clients as u64), WARM_UP_SEED ^ case.seed)
        .deadline(Duration::from_secs(10));
    run_load(&warm_up, server.addr(), server.pid())?;
    let diverted_before = diverted(&server)?;
    members.iter().for_each(Backend::reset_stats);
    let load = case.load(measured_load(case.clients, options.requests(REQUESTS)), case.seed);
    let (report, samples) = thread::scope(|scope| {
        let running = scope.spawn(|| run_load(&load, server.addr(), server.pid()));
        let mut samples: Vec<Vec<u64>> = Vec::new();
        while !running.is_finished() {
            samples.push(members.iter().map(|b| b.stats().inflight).collect());
            thread::sleep(SAMPLE_EVERY);
        }
        (running.join().map_err(|_| "the load generator panicked".to_string()), samples)
    });
    let report = report??;
    let diverted = match (diverted_before, diverted(&server)?) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let peak = members.iter().map(|b| b.stats().max_inflight).collect();
    let average = (0..case.members)
        .map(|m| samples.iter().map(|s| s[m] as f64).sum::<f64>() / samples.len().max(1) as f64)
        .collect();
    let mut per_key: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    for outcome in report.outcomes.iter().filter(|o| o.status == 200) {
        if let Some(member) = &outcome.backend {
            let key = case.key(request_random(case.seed, outcome.request));
            *per_key.entry(key).or_default().entry(member.clone()).or_default() += 1;
        }
    }
    Ok(Run { case, hasher, report, per_key, diverted, peak, average })
}

fn print_case(case: Case, runs: &[&Run]) {
    println!("hash-load ({}): {}", case.name, case.describe());
    let hot_columns = if case.hot {
        format!(
            " {:>10} {:>9} {:>8} {:>7} {:>17}",
            "hot member", "hot share", "hot peak", "hot avg", "hot key elsewhere"
        )
    } else {
        String::new()
    };
    println!(
        "{:<18} {:>8} {:>6} {:>7} {:>8} {:>18} {:>18} {:>8}{hot_columns}",
        "method",
        "requests",
        "errors",
        "req/s",
        "p99",
        "keys on one member",
        "requests elsewhere",
        "diverted"
    );
    for run in runs {
        let hot_columns = match run.hot_index().filter(|_| case.hot) {
            Some(hot) => {
                let hot_key = &run.per_key[&HOT_KEY];
                format!(
                    " {:>10} {:>8.1}% {:>8} {:>7.1} {:>16.1}%",
                    MEMBERS[hot],
                    run.report.count_backend(MEMBERS[hot]) as f64 * 100.0 / run.answered().max(1) as f64,
                    run.peak[hot],
                    run.average[hot],
                    off_usual(hot_key) as f64 * 100.0 / hot_key.values().sum::<u64>().max(1) as f64,
                )
            }
            None => String::new(),
        };
        println!(
            "{:<18} {:>8} {:>6} {:>7.0} {:>5.1} ms {:>17.1}% {:>17.2}% {:>8}{hot_columns}",
            run.hasher.label(),
            run.ok(),
            run.report.outcomes.len() as u64 - run.ok(),
            run.ok() as f64 / run.report.elapsed.as_secs_f64().max(1e-9),
            ms(run.p99()),
            run.keys_on_one_member() * 100.0,
            run.elsewhere() * 100.0,
            run.diverted.map_or("-".to_string(), |n| n.to_string()),
        );
    }
    let seconds = runs.iter().map(|r| r.report.elapsed.as_secs()).max().unwrap_or(0);
    if case.hot {
        println!("hot member's share of the requests sent in each second, %:");
        println!("{:<18} {}", "method", seconds_header(seconds, 4));
        for run in runs {
            let hot = run.hot_member().unwrap_or("-");
            let shares = crate::windows::share_per_second(&run.report, hot, run.report.elapsed.as_secs());
            println!("{:<18} {}", run.hasher.label(), percent_series(&shares, 4));
        }
    } else {
        println!(
            "lowest-highest member share of the requests sent in each second, % (fair {:.0}):",
            100.0 / case.members as f64
        );
        println!("{:<18} {}", "method", seconds_header(seconds, 10));
        for run in runs {
            let series: String = (0..run.report.elapsed.as_secs())
                .map(|s| {
                    let (from, to) = (Duration::from_secs(s), Duration::from_secs(s + 1));
                    let shares: Vec<f64> = MEMBERS[..case.members]
                        .iter()
                        .map(|name| {
                            let (mine, all) = answered_by(&run.report, name, from, to);
                            mine as f64 * 100.0 / all.max(1) as f64
                        })
                        .collect();
                    let (low, high) =
                        shares.iter().fold((f64::MAX, 0.0_f64), |(l, h), &v| (l.min(v), h.max(v)));
                    format!("{:>10}", format!("{low:.1}-{high:.1}"))
                })
                .collect();
            println!("{:<18} {series}", run.hasher.label());
        }
    }
}

pub fn run(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let mut hashers = vec![Hasher::ByHash];
    if peers.haproxy.is_some() {
        hashers.extend([Hasher::Haproxy, Hasher::HaproxyUnbounded]);
    } else {
        eprintln!("hash-load: haproxy not installed (apt-get install haproxy): skipping it");
    }
    if peers.nginx.is_some() {
        hashers.push(Hasher::Nginx);
    } else {
        eprintln!("hash-load: nginx not installed (apt-get install nginx): skipping it");
    }
    let backends = start_backends(&MEMBERS, SLOTS, SERVICE_TIME)?;
    eprintln!(
        "hash-load: {} requests per run, {KEYS} keys, members of {SLOTS} slots at {} ms",
        options.requests(REQUESTS),
        ms(SERVICE_TIME)
    );
    let mut runs = Vec::new();
    for case in CASES {
        for &hasher in &hashers {
            eprint!("hash-load ({}) {} ... ", case.name, hasher.label());
            let run = measure(options, &backends, &peers, case, hasher)?;
            eprintln!("{} requests in {:.1} s", run.report.outcomes.len(), run.report.elapsed.as_secs_f64());
            runs.push(run);
        }
    }
    println!(
        "\nhash-load: keys in {HASH_HEADER}, members of {SLOTS} slots at {} ms, {} requests per run (about {} \
         per key); haproxy consistent has hash-balance-factor 125, haproxy unbounded none, byhash the \
         default 1.25",
        ms(SERVICE_TIME),
        options.requests(REQUESTS),
        options.requests(REQUESTS) / KEYS,
    );
    println!(
        "keys on one member: keys answered at least twice whose every request went to one member; requests \
         elsewhere: requests answered by another member than their key's usual one (its most frequent)"
    );
    for case in CASES {
        println!();
        let of: Vec<&Run> = runs.iter().filter(|r| r.case.name == case.name).collect();
        print_case(case, &of);
    }
    Ok(())
}
