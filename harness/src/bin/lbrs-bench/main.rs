//! End-to-end comparisons through the real apache2 and real backends on loopback, one scenario
//! per file:
//!
//! - `shares` (shares.rs): `byweight` against httpd's `byrequests`, shares of members at
//!   loadfactors 1:2:3 under prefork and event;
//! - `slow` (slow.rs): one member of four ten times slower: the least-loaded methods against
//!   `bybusyness`, `byrequests`, HAProxy `leastconn` and nginx `least_conn`;
//! - `hash` (hash.rs): `byhash` against HAProxy and nginx consistent hashing, key spread and
//!   keys moved when a member leaves;
//! - `recover` (recover.rs): a member turns slow for 10 s, then recovers: how fast each
//!   least-loaded contender leaves it and gives it its share back;
//! - `down` (down.rs): a member's backend refuses connections for 8 s, then comes back: errors
//!   clients get, and how fast the member gets its share back;
//! - `steady` (steady.rs): ten equal members, nothing happening: how evenly each method splits
//!   the load, and at what latency;
//! - `hash-load` (hash_load.rs): `byhash` against HAProxy (with and without its load bound) and
//!   nginx under concurrency: how many keys keep one member, and what a hot key does;
//! - `failing`, `bad-url`, `pinned` (failing.rs): a member that answers every request with an
//!   instant 500, a URL every member fails, a member that hangs: outlier detection and
//!   `bylatency` against `failonstatus`, HAProxy's `observe layer7` and nginx's
//!   `proxy_next_upstream`;
//! - `burst` (burst.rs): three times more clients than places, members that answer 503 when
//!   full: `LBQueue` against refusing at once, httpd's balancer `timeout=`, and HAProxy's
//!   `maxconn` + `timeout queue`;
//! - `scale` (scale.rs): members from DNS through scale out, scale in, a replacement and a DNS
//!   outage: `LBDiscover` against HAProxy's `server-template` with `resolvers`.
//!
//! What they share (options, Ctrl-C, loads, the servers and backends) is in common.rs; slicing a
//! run by time (per-second shares, windows) is in windows.rs. In every scenario each run starts
//! a fresh server and warms it up; where there are rounds the contenders alternate, so that
//! machine noise shows up as a difference between rounds of one contender.
//!
//! Build the module in release first (this binary loads target/release/libmod_lbmethod_rs.so):
//!
//! ```text
//! cargo build --release && cargo run --release -p lbrs-harness --bin lbrs-bench
//! cargo run --release -p lbrs-harness --bin lbrs-bench -- --scenario shares --mpm prefork
//! cargo run --release -p lbrs-harness --bin lbrs-bench -- --scenario slow
//! cargo run --release -p lbrs-harness --bin lbrs-bench -- --scenario recover --rounds 2
//! ```
//!
//! docs/benchmark.md explains the output.

mod burst;
mod common;
mod down;
mod failing;
mod hash;
mod hash_load;
mod recover;
mod scale;
mod shares;
mod slow;
mod steady;
mod windows;

use common::{Options, install_interrupt_handler};
use lbrs_harness::Mpm;
use lbrs_harness::apache::module_under_test;
use std::process::ExitCode;

const USAGE: &str = "\
usage: lbrs-bench [--scenario NAME] [--requests N] [--concurrency N] [--rounds N]
                  [--mpm event|prefork|both]

End-to-end comparisons through the real apache2 (build the module first: cargo build --release).
  --scenario S      shares: byweight against byrequests, shares of members at loadfactors 1:2:3;
                    slow: byinflight and bylatency against bybusyness, byrequests, HAProxy
                    leastconn and nginx least_conn with one member ten times slower;
                    hash: byhash against HAProxy and nginx consistent hashing, key spread,
                    keys moved when a member leaves, throughput;
                    recover: one member of four at 80 ms from 5 s to 15 s of a 25 s run:
                    its share per second, p99 per window, time to get its share back;
                    down: one member of four refusing connections from 5 s to 13 s of a
                    20 s run: its share per second, errors, time to get its share back;
                    steady: 10 equal members: requests per member max/min, p50/p99;
                    hash-load: byhash against HAProxy and nginx hashing under concurrency,
                    with and without a hot key: keys kept on one member, diverted requests;
                    failing: one member of four answering 500 at once from 5 s to 15 s of
                    25 s: success, its share, time out and time back, every method with and
                    without LBOutlierDetection, failonstatus, HAProxy observe, nginx resend;
                    bad-url: 1% of requests to a URL every member fails: success of the
                    others, req/s, p99, ejections;
                    pinned: one member of eight answering in 2 s from 5 s to 15 s, clients
                    giving up after 1 s: success, p99 before, requests sent to it;
                    burst: 48 clients on 4 members of 4 slots that answer 503 when full:
                    LBQueue against refusing, httpd's timeout=, HAProxy maxconn + queue;
                    scale: members from DNS (dnsmasq) through scale out, scale in, a
                    replacement and a 30 s DNS outage: LBDiscover against HAProxy's
                    server-template + resolvers: failed requests, time to follow;
                    all: every scenario (default); several: a comma-separated list
  --requests N      requests per measured run (default 30000 for shares, 20000 for slow,
                    hash and hash-load, 60000 for steady); a run also stops after 30 s;
                    recover and down run for a fixed time (25 s and 20 s)
  --concurrency N   closed-loop clients (default 8 for shares, 16 for slow, 8 for hash,
                    32 for recover and down, 64 for steady); hash-load's cases set theirs
  --rounds N        rounds of every contender, in turn (default 2 for shares, slow and
                    steady, 1 for recover and down); hash and hash-load run each once
  --mpm M           shares only: event, prefork (8 processes) or both (default both);
                    the other scenarios run event
HAProxy and nginx are used when installed ($LBRS_HAPROXY, $LBRS_NGINX name other binaries;
a path that does not exist skips one).";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Shares,
    Slow,
    Hash,
    Recover,
    Down,
    Steady,
    HashLoad,
    Failing,
    BadUrl,
    Pinned,
    Burst,
    Scale,
}

/// `--scenario all`, in the order they run.
const ALL: [Scenario; 12] = [
    Scenario::Shares,
    Scenario::Slow,
    Scenario::Hash,
    Scenario::Recover,
    Scenario::Down,
    Scenario::Steady,
    Scenario::HashLoad,
    Scenario::Failing,
    Scenario::BadUrl,
    Scenario::Pinned,
    Scenario::Burst,
    Scenario::Scale,
];

/// The options, or `None` when help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        scenarios: ALL.to_vec(),
        requests: None,
        concurrency: None,
        rounds: None,
        mpms: vec![Mpm::Prefork, Mpm::Event],
    };
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let invalid = || format!("invalid value \"{value}\" in \"{flag}\"");
        let number =
            || -> Result<u64, String> { value.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(invalid) };
        match flag.as_str() {
            "--requests" => options.requests = Some(number()?),
            "--concurrency" => options.concurrency = Some(number()? as usize),
            "--rounds" => options.rounds = Some(number()? as usize),
            "--mpm" => {
                options.mpms = match value.as_str() {
                    "event" => vec![Mpm::Event],
                    "prefork" => vec![Mpm::Prefork],
                    "both" => vec![Mpm::Prefork, Mpm::Event],
                    _ => return Err(invalid()),
                }
            }
            "--scenario" => {
                options.scenarios.clear();
                for name in value.split(',') {
                    options.scenarios.extend(match name {
                        "shares" => vec![Scenario::Shares],
                        "slow" => vec![Scenario::Slow],
                        "hash" => vec![Scenario::Hash],
                        "recover" => vec![Scenario::Recover],
                        "down" => vec![Scenario::Down],
                        "steady" => vec![Scenario::Steady],
                        "hash-load" => vec![Scenario::HashLoad],
                        "failing" => vec![Scenario::Failing],
                        "bad-url" => vec![Scenario::BadUrl],
                        "pinned" => vec![Scenario::Pinned],
                        "burst" => vec![Scenario::Burst],
                        "scale" => vec![Scenario::Scale],
                        "all" => ALL.to_vec(),
                        _ => return Err(invalid()),
                    });
                }
            }
            _ => return Err(format!("unknown option \"{flag}\"")),
        }
    }
    Ok(Some(options))
}

fn run(options: &Options) -> Result<(), String> {
    let module = module_under_test();
    if !module.is_file() {
        return Err(format!(
            "no module at {}: build it first with `cargo build --release`",
            module.display()
        ));
    }
    if !module.to_string_lossy().contains("/release/") {
        eprintln!("warning: {} is not a release build; figures will not be representative", module.display());
    }
    install_interrupt_handler();
    eprintln!("module {}", module.display());
    for &scenario in &options.scenarios {
        match scenario {
            Scenario::Shares => shares::run(options)?,
            Scenario::Slow => slow::run(options)?,
            Scenario::Hash => hash::run(options)?,
            Scenario::Recover => recover::run(options)?,
            Scenario::Down => down::run(options)?,
            Scenario::Steady => steady::run(options)?,
            Scenario::HashLoad => hash_load::run(options)?,
            Scenario::Failing => failing::run_failing(options)?,
            Scenario::BadUrl => failing::run_bad_url(options)?,
            Scenario::Pinned => failing::run_pinned(options)?,
            Scenario::Burst => burst::run(options)?,
            Scenario::Scale => scale::run(options)?,
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("lbrs-bench: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\nlbrs-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
