//! End-to-end comparisons through the real apache2 and real backends on loopback, in two
//! scenarios.
//!
//! `shares`: `byweight` against httpd's built-in `byrequests`. Both run the same smooth weighted
//! round robin; the difference is where its state lives. `byrequests` updates its counters in
//! shared memory under a per-process lock only, so concurrent picks in different processes can
//! lose updates and skew the shares; `byweight` takes one shared atomic ticket per pick. This
//! runs both on the same three members (loadfactors 1:2:3, service time 1 ms) under the same
//! closed-loop load, under prefork with 8 processes and under event, and prints shares,
//! deviation from the ideal shares, throughput and latency side by side.
//!
//! `slow`: four members with the same number of worker slots, one of them ten times slower than
//! the others, under a closed-loop load with more clients than the fast members have slots.
//! Apache with `byinflight`, `bybusyness` and `byrequests`, and, when they are installed,
//! HAProxy `balance leastconn` and nginx `least_conn` (with a shared `zone`), each proxy to the
//! same backends under the same load; it prints throughput, p50/p99/p99.9 latency and the slow
//! member's share, and the p99 ratios the product bar is stated in.
//!
//! In both, every run starts a fresh server, warms it up, and the contenders alternate over two
//! rounds, so that machine noise shows up as a difference between rounds of one contender.
//!
//! Build the module in release first (this binary loads target/release/libmod_lbmethod_rs.so):
//!
//! ```text
//! cargo build --release && cargo run --release -p lbrs-harness --bin lbrs-bench
//! cargo run --release -p lbrs-harness --bin lbrs-bench -- --scenario shares --mpm prefork
//! cargo run --release -p lbrs-harness --bin lbrs-bench -- --scenario slow
//! ```
//!
//! docs/benchmark.md explains the output.

use lbrs_harness::apache::module_under_test;
use lbrs_harness::client::{self, percentile};
use lbrs_harness::peers::{haproxy_binary, nginx_binary, version_line};
use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, HaproxyConfig, Load, LoadReport, Mpm, NginxConfig, PeerProxy,
    balancer_block, ms, wait_for,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// `shares`: the members, name and loadfactor.
const MEMBERS: [(&str, u32); 3] = [("a", 1), ("b", 2), ("c", 3)];
/// `shares`: each backend serves this many requests at once, each taking `SERVICE_TIME`; more
/// than the load ever sends to one member, so no member queues and shares alone decide the
/// split.
const BACKEND_SLOTS: usize = 64;
const SERVICE_TIME: Duration = Duration::from_millis(1);
const PREFORK_PROCESSES: u32 = 8;
/// `shares`: the methods in the order each round runs them.
const METHODS: [&str; 2] = ["byrequests", "byweight"];
const SHARES_REQUESTS: u64 = 30_000;
const SHARES_CONCURRENCY: usize = 8;

/// `slow`: the members; the last one is the slow one.
const SLOW_MEMBERS: [&str; 4] = ["fast1", "fast2", "fast3", "slow"];
const SLOW_NAME: &str = "slow";
/// `slow`: every member serves this many requests at once; more wait in its queue.
const SLOW_SLOTS: usize = 4;
/// `slow`: service times. A fast member serves 4 / 5 ms = 800 requests/s, the slow one
/// 4 / 50 ms = 80 requests/s: about 2,500 requests/s in all, well under what apache2, the
/// backends and the load generator together manage on 2 cores (over 6,000/s at 1 ms), so the
/// proxy's CPU is not what limits the run, and long enough that scheduling jitter of a few
/// hundred microseconds stays small next to them.
const FAST_TIME: Duration = Duration::from_millis(5);
const SLOW_TIME: Duration = Duration::from_millis(50);
/// `slow`: 16 clients, more than the 12 slots of the fast members and as many as all four
/// members' slots: a least-loaded method keeps about 4 requests at every member and no member
/// queues, while round robin sends every fourth request to the slow member, whose queue then
/// holds most of the clients.
const SLOW_CONCURRENCY: usize = 16;
const SLOW_REQUESTS: u64 = 20_000;

/// `hash`: the members, all at weight 1; the last one leaves in the second half of a run.
const HASH_MEMBERS: [&str; 4] = ["h1", "h2", "h3", "h4"];
/// `hash`: the keys probed one by one to find which member each lands on. With 20,000 keys a
/// member's count of keys has a sampling noise of 1.2% of its ideal 5,000 (one standard
/// deviation), so the farthest of four members is typically 2% off even for a perfect table;
/// spreads much wider than that come from the method.
const HASH_KEYS: u32 = 20_000;
const HASH_REQUESTS: u64 = 20_000;
const HASH_CONCURRENCY: usize = 8;
const HASH_HEADER: &str = "X-User";

const ROUNDS: usize = 2;
/// A measured load stops at `--requests` or after this long, whichever comes first.
const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// Requests per client before each measured load: every child process started and every
/// connection to the backends open.
const WARM_UP_PER_CLIENT: u64 = 50;

const USAGE: &str = "\
usage: lbrs-bench [--scenario shares|slow|hash|all] [--requests N] [--concurrency N]
                  [--mpm event|prefork|both]

End-to-end comparisons through the real apache2 (build the module first: cargo build --release).
  --scenario S      shares: byweight against byrequests, shares of members at loadfactors 1:2:3;
                    slow: byinflight and bylatency against bybusyness, byrequests, HAProxy
                    leastconn and nginx least_conn with one member ten times slower;
                    hash: byhash against HAProxy and nginx consistent hashing, key spread,
                    keys moved when a member leaves, throughput; all: the three (default)
  --requests N      requests per measured run (default 30000 for shares, 20000 for slow and
                    hash); a run also stops after 30 s
  --concurrency N   closed-loop clients (default 8 for shares, 16 for slow, 8 for hash)
  --mpm M           shares only: event, prefork (8 processes) or both (default both);
                    slow always runs event
HAProxy and nginx are used when installed ($LBRS_HAPROXY, $LBRS_NGINX name other binaries;
a path that does not exist skips one).";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Shares,
    Slow,
    Hash,
}

struct Options {
    scenarios: Vec<Scenario>,
    requests: Option<u64>,
    concurrency: Option<usize>,
    mpms: Vec<Mpm>,
}

impl Options {
    fn requests(&self, scenario: Scenario) -> u64 {
        self.requests.unwrap_or(match scenario {
            Scenario::Shares => SHARES_REQUESTS,
            Scenario::Slow => SLOW_REQUESTS,
            Scenario::Hash => HASH_REQUESTS,
        })
    }

    fn concurrency(&self, scenario: Scenario) -> usize {
        self.concurrency.unwrap_or(match scenario {
            Scenario::Shares => SHARES_CONCURRENCY,
            Scenario::Slow => SLOW_CONCURRENCY,
            Scenario::Hash => HASH_CONCURRENCY,
        })
    }
}

/// The options, or `None` when help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        scenarios: vec![Scenario::Shares, Scenario::Slow, Scenario::Hash],
        requests: None,
        concurrency: None,
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
            "--mpm" => {
                options.mpms = match value.as_str() {
                    "event" => vec![Mpm::Event],
                    "prefork" => vec![Mpm::Prefork],
                    "both" => vec![Mpm::Prefork, Mpm::Event],
                    _ => return Err(invalid()),
                }
            }
            "--scenario" => {
                options.scenarios = match value.as_str() {
                    "shares" => vec![Scenario::Shares],
                    "slow" => vec![Scenario::Slow],
                    "hash" => vec![Scenario::Hash],
                    "all" => vec![Scenario::Shares, Scenario::Slow, Scenario::Hash],
                    _ => return Err(invalid()),
                }
            }
            _ => return Err(format!("unknown option \"{flag}\"")),
        }
    }
    Ok(Some(options))
}

/// The process group of the server running now (0: none), for the interrupt handler.
static RUNNING_SERVER: AtomicI32 = AtomicI32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// apache2, haproxy and nginx run in their own process groups, so a Ctrl-C at the terminal does
/// not reach them. On the first SIGINT this stops the running server (the load then fails fast
/// and `main` unwinds through the guards, which reap it and stop the backends); a second
/// SIGINT kills at once.
extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let group = RUNNING_SERVER.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: killpg is async-signal-safe; the group is a server this process started.
        unsafe { libc::killpg(group, libc::SIGTERM) };
    }
}

fn install_interrupt_handler() {
    // SAFETY: a zeroed sigaction with a handler that only touches atomics and calls killpg.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) { Err("interrupted".into()) } else { Ok(()) }
}

/// The uncounted load before each measured one: every child process started and every
/// connection to the backends open.
fn warm_up_load(concurrency: usize) -> Load {
    Load::new("/", concurrency, WARM_UP_PER_CLIENT * concurrency as u64).deadline(Duration::from_secs(10))
}

fn measured_load(concurrency: usize, requests: u64) -> Load {
    Load::new("/", concurrency, requests).deadline(RUN_DEADLINE)
}

/// Runs `load` against the server at `addr` whose process group is `pid`, which the interrupt
/// handler stops meanwhile on Ctrl-C.
fn run_load(load: &Load, addr: SocketAddr, pid: Option<u32>) -> Result<LoadReport, String> {
    check_interrupted()?;
    RUNNING_SERVER.store(pid.map_or(0, |p| p as i32), Ordering::SeqCst);
    let report = load.run(addr);
    RUNNING_SERVER.store(0, Ordering::SeqCst);
    check_interrupted()?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// shares: byweight against byrequests
// ---------------------------------------------------------------------------------------------

/// What one measured load gave.
struct Run {
    mpm: Mpm,
    method: &'static str,
    round: usize,
    /// Answered with 200.
    ok: u64,
    /// Everything else: other statuses and requests with no answer.
    errors: u64,
    seconds: f64,
    /// Share of the 200s each member served, in member order.
    shares: Vec<f64>,
    p50: Duration,
    p99: Duration,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Largest distance of any member's share from its loadfactor's share, in percentage points.
    fn max_deviation_pp(&self) -> f64 {
        self.shares
            .iter()
            .zip(ideal_shares())
            .map(|(got, ideal)| (got - ideal).abs() * 100.0)
            .fold(0.0, f64::max)
    }
}

fn ideal_shares() -> Vec<f64> {
    let total: u32 = MEMBERS.iter().map(|&(_, lf)| lf).sum();
    MEMBERS.iter().map(|&(_, lf)| f64::from(lf) / f64::from(total)).collect()
}

/// Starts apache2 with `method` over `backends`, warms it up, and measures one load.
fn measure(
    options: &Options,
    backends: &[Backend],
    mpm: Mpm,
    method: &'static str,
    round: usize,
) -> Result<Run, String> {
    let params: Vec<String> = MEMBERS.iter().map(|&(_, lf)| format!("loadfactor={lf}")).collect();
    let members: Vec<(&Backend, &str)> = backends.iter().zip(&params).map(|(b, p)| (b, p.as_str())).collect();
    let body = balancer_block("app", "/", &members, &format!("lbmethod={method}"));
    let mut config = ApacheConfig::new(&body).mpm(mpm);
    if mpm == Mpm::Prefork {
        config = config.processes(PREFORK_PROCESSES);
    }
    let apache = Apache::start(config)?;
    let concurrency = options.concurrency(Scenario::Shares);
    run_load(&warm_up_load(concurrency), apache.addr(), apache.pid())?;
    let load = measured_load(concurrency, options.requests(Scenario::Shares));
    let report = run_load(&load, apache.addr(), apache.pid())?;
    let ok = report.count_status(200);
    let counts: Vec<u64> = MEMBERS.iter().map(|&(name, _)| report.count_backend(name)).collect();
    let answered: u64 = counts.iter().sum();
    Ok(Run {
        mpm,
        method,
        round,
        ok,
        errors: report.outcomes.len() as u64 - ok,
        seconds: report.elapsed.as_secs_f64(),
        shares: counts.iter().map(|&n| n as f64 / answered.max(1) as f64).collect(),
        p50: report.percentile(50.0),
        p99: report.percentile(99.0),
    })
}

fn print_table(runs: &[Run]) {
    let members: String = MEMBERS
        .iter()
        .zip(ideal_shares())
        .map(|(&(name, _), ideal)| format!("  {:>9}", format!("{name} {:.1}%", ideal * 100.0)))
        .collect();
    println!(
        "{:<8} {:<10} {:>5} {:>8} {:>6} {:>8}{members} {:>8} {:>8} {:>8}",
        "mpm", "method", "round", "requests", "errors", "req/s", "max dev", "p50", "p99"
    );
    for run in runs {
        let shares: String = run.shares.iter().map(|s| format!("  {:>8.2}%", s * 100.0)).collect();
        println!(
            "{:<8} {:<10} {:>5} {:>8} {:>6} {:>8.0}{shares} {:>5.2} pp {:>5.2} ms {:>5.2} ms",
            run.mpm.name(),
            run.method,
            run.round,
            run.ok,
            run.errors,
            run.throughput(),
            run.max_deviation_pp(),
            ms(run.p50),
            ms(run.p99),
        );
    }
}

/// Per MPM: byweight's throughput over byrequests', overall and round by round, and each
/// method's worst deviation.
fn print_summary(runs: &[Run], mpms: &[Mpm]) {
    let of = |mpm: Mpm, method: &str| -> Vec<&Run> {
        runs.iter().filter(|r| r.mpm == mpm && r.method == method).collect()
    };
    let overall = |runs: &[&Run]| {
        let ok: u64 = runs.iter().map(|r| r.ok).sum();
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        ok as f64 / seconds.max(1e-9)
    };
    let worst = |runs: &[&Run]| runs.iter().map(|r| r.max_deviation_pp()).fold(0.0, f64::max);
    for &mpm in mpms {
        let (byrequests, byweight) = (of(mpm, "byrequests"), of(mpm, "byweight"));
        let rounds: Vec<String> = byrequests
            .iter()
            .zip(&byweight)
            .map(|(r, w)| format!("{:.3}", w.throughput() / r.throughput()))
            .collect();
        println!(
            "{:<8} throughput byweight/byrequests {:.3} (round by round {}); \
             worst deviation byrequests {:.2} pp, byweight {:.2} pp",
            mpm.name(),
            overall(&byweight) / overall(&byrequests),
            rounds.join(", "),
            worst(&byrequests),
            worst(&byweight),
        );
    }
}

fn run_shares(options: &Options) -> Result<(), String> {
    let backends = MEMBERS
        .iter()
        .map(|&(name, _)| {
            Backend::start(BackendSpec::new(name).slots(BACKEND_SLOTS).delay(SERVICE_TIME))
                .map_err(|e| format!("cannot start backend {name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "shares: {} requests per run (or {} s), {} clients, members {}, service time {} ms",
        options.requests(Scenario::Shares),
        RUN_DEADLINE.as_secs(),
        options.concurrency(Scenario::Shares),
        MEMBERS.iter().map(|&(name, lf)| format!("{name}={lf}")).collect::<Vec<_>>().join(":"),
        ms(SERVICE_TIME),
    );
    let mut runs = Vec::new();
    for &mpm in &options.mpms {
        for round in 1..=ROUNDS {
            for method in METHODS {
                eprint!("{} {method} round {round} ... ", mpm.name());
                let run = measure(options, &backends, mpm, method, round)?;
                eprintln!("{} requests in {:.1} s", run.ok + run.errors, run.seconds);
                runs.push(run);
            }
        }
    }
    println!("\nshares: byweight against byrequests, members at loadfactors 1:2:3\n");
    print_table(&runs);
    println!();
    print_summary(&runs, &options.mpms);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// slow: byinflight against bybusyness, byrequests, HAProxy leastconn and nginx least_conn
// ---------------------------------------------------------------------------------------------

/// What balances the `slow` load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    /// apache2 (event MPM) with `ProxySet lbmethod=<method>`.
    Apache(&'static str),
    /// HAProxy, one process of 2 threads, `balance leastconn`.
    HaproxyLeastconn,
    /// nginx, 2 worker processes, `least_conn` with a shared `zone`.
    NginxLeastConn,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Apache(method) => method,
            Contender::HaproxyLeastconn => "haproxy leastconn",
            Contender::NginxLeastConn => "nginx least_conn",
        }
    }
}

const BYINFLIGHT: Contender = Contender::Apache("byinflight");
const BYLATENCY: Contender = Contender::Apache("bylatency");
const BYREQUESTS: Contender = Contender::Apache("byrequests");

/// What one measured `slow` load gave.
struct SlowRun {
    contender: Contender,
    round: usize,
    /// Answered with 200.
    ok: u64,
    /// Everything else: other statuses and requests with no answer.
    errors: u64,
    seconds: f64,
    /// Latencies of the 200s.
    latencies: Vec<Duration>,
    /// Share of the 200s the slow member served.
    slow_share: f64,
    /// The most requests the slow member held at once (in service and queued), as it saw them.
    slow_peak: u64,
}

impl SlowRun {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        percentile(&mut self.latencies.clone(), p)
    }
}

/// A server under the `slow` load; dropping it stops it.
enum Server {
    Apache(Apache),
    Peer(PeerProxy),
}

impl Server {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::Apache(apache) => apache.addr(),
            Server::Peer(peer) => peer.addr(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Server::Apache(apache) => apache.pid(),
            Server::Peer(peer) => peer.pid(),
        }
    }
}

/// The binaries of the proxies to compare with; `None` when not installed.
struct Peers {
    haproxy: Option<PathBuf>,
    nginx: Option<PathBuf>,
}

fn start_server(contender: Contender, backends: &[Backend], peers: &Peers) -> Result<Server, String> {
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    match contender {
        Contender::Apache(method) => {
            let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, "")).collect();
            // No limit on requests per client connection, as HAProxy and nginx are configured.
            let body = format!(
                "MaxKeepAliveRequests 0\n{}",
                balancer_block("app", "/", &members, &format!("lbmethod={method}"))
            );
            Ok(Server::Apache(Apache::start(ApacheConfig::new(&body).mpm(Mpm::Event))?))
        }
        Contender::HaproxyLeastconn => {
            let binary = peers.haproxy.as_deref().ok_or("haproxy is not installed")?;
            let config = HaproxyConfig::new("leastconn", &addrs).threads(2);
            Ok(Server::Peer(PeerProxy::haproxy(binary, &config)?))
        }
        Contender::NginxLeastConn => {
            let binary = peers.nginx.as_deref().ok_or("nginx is not installed")?;
            let config = NginxConfig::new("least_conn", &addrs).worker_processes(2).zone(true);
            Ok(Server::Peer(PeerProxy::nginx(binary, &config)?))
        }
    }
}

/// Starts `contender` over `backends`, warms it up, and measures one load.
fn measure_slow(
    options: &Options,
    backends: &[Backend],
    peers: &Peers,
    contender: Contender,
    round: usize,
) -> Result<SlowRun, String> {
    // Requests still queued at the slow member from the previous run would slow this one.
    if !wait_for(Duration::from_secs(10), || backends.iter().all(|b| b.stats().inflight == 0)) {
        return Err("the backends still have requests in flight from the previous run".into());
    }
    let server = start_server(contender, backends, peers)?;
    let concurrency = options.concurrency(Scenario::Slow);
    run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
    let slow = backends.iter().find(|b| b.name() == SLOW_NAME).ok_or("no slow backend")?;
    slow.reset_stats();
    let load = measured_load(concurrency, options.requests(Scenario::Slow));
    let report = run_load(&load, server.addr(), server.pid())?;
    let slow_peak = slow.stats().max_inflight;
    drop(server);
    let ok = report.count_status(200);
    let answered: u64 = SLOW_MEMBERS.iter().map(|name| report.count_backend(name)).sum();
    Ok(SlowRun {
        contender,
        round,
        ok,
        errors: report.outcomes.len() as u64 - ok,
        seconds: report.elapsed.as_secs_f64(),
        latencies: report.outcomes.iter().filter(|o| o.status == 200).map(|o| o.latency).collect(),
        slow_share: report.count_backend(SLOW_NAME) as f64 / answered.max(1) as f64,
        slow_peak,
    })
}

fn print_slow_table(runs: &[SlowRun]) {
    println!(
        "{:<17} {:>5} {:>8} {:>6} {:>7} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "method", "round", "requests", "errors", "req/s", "p50", "p99", "p99.9", "slow share", "slow peak"
    );
    for run in runs {
        println!(
            "{:<17} {:>5} {:>8} {:>6} {:>7.0} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>9.2}% {:>9}",
            run.contender.label(),
            run.round,
            run.ok,
            run.errors,
            run.throughput(),
            ms(run.percentile(50.0)),
            ms(run.percentile(99.0)),
            ms(run.percentile(99.9)),
            run.slow_share * 100.0,
            run.slow_peak,
        );
    }
}

/// The p99 ratios of the product bar (byinflight's and bylatency's p99 at most half of
/// byrequests', and no worse than HAProxy leastconn's and nginx least_conn's; bylatency's no
/// worse than byinflight's), overall (all rounds' latencies pooled) and round by round, and the
/// throughput ratios.
fn print_slow_summary(runs: &[SlowRun], contenders: &[Contender]) {
    let of = |c: Contender| -> Vec<&SlowRun> { runs.iter().filter(|r| r.contender == c).collect() };
    let pooled = |c: Contender, p: f64| -> Duration {
        let mut all: Vec<Duration> = of(c).iter().flat_map(|r| r.latencies.iter().copied()).collect();
        percentile(&mut all, p)
    };
    let throughput = |c: Contender| -> f64 {
        let ok: u64 = of(c).iter().map(|r| r.ok).sum();
        let seconds: f64 = of(c).iter().map(|r| r.seconds).sum();
        ok as f64 / seconds.max(1e-9)
    };
    // How much one contender's p99 moves between its own rounds: the noise floor of a ratio.
    let spread = |c: Contender| -> f64 {
        let p99s: Vec<f64> = of(c).iter().map(|r| ms(r.percentile(99.0))).collect();
        let (low, high) = p99s.iter().fold((f64::MAX, 0.0_f64), |(l, h), &v| (l.min(v), h.max(v)));
        if p99s.is_empty() || low <= 0.0 { 0.0 } else { high / low - 1.0 }
    };
    let p99s: Vec<String> =
        contenders.iter().map(|&c| format!("{} {:.1} ms", c.label(), ms(pooled(c, 99.0)))).collect();
    println!("p99, all rounds pooled: {}", p99s.join(", "));
    let spreads: Vec<String> =
        contenders.iter().map(|&c| format!("{} {:.1}%", c.label(), spread(c) * 100.0)).collect();
    println!("p99 spread between rounds of one method: {}", spreads.join(", "));
    let pairs = contenders
        .iter()
        .filter(|&&c| c != BYINFLIGHT && c != BYLATENCY)
        .map(|&other| (BYINFLIGHT, other))
        .chain(contenders.iter().filter(|&&c| c != BYLATENCY).map(|&other| (BYLATENCY, other)))
        .filter(|(mine, _)| contenders.contains(mine));
    for (mine_contender, other) in pairs {
        let ratio = ms(pooled(mine_contender, 99.0)) / ms(pooled(other, 99.0)).max(1e-9);
        let rounds: Vec<String> = of(mine_contender)
            .iter()
            .zip(of(other))
            .map(|(mine, theirs)| {
                format!("{:.3}", ms(mine.percentile(99.0)) / ms(theirs.percentile(99.0)).max(1e-9))
            })
            .collect();
        let bar = match other {
            BYREQUESTS => {
                let verdict = if ratio <= 0.5 { "meets" } else { "misses" };
                format!("; bar <= 0.50: {verdict}")
            }
            BYINFLIGHT | Contender::HaproxyLeastconn | Contender::NginxLeastConn => {
                let noise = spread(mine_contender).max(spread(other));
                let over = (ratio - 1.0) * 100.0;
                let verdict = if ratio <= 1.0 {
                    "meets".to_string()
                } else if ratio <= 1.0 + noise {
                    format!(
                        "{over:.1}% over, within the {:.1}% spread between rounds: no measurable difference",
                        noise * 100.0
                    )
                } else {
                    format!("misses by {over:.1}%")
                };
                format!("; bar <= 1.00: {verdict}")
            }
            _ => String::new(),
        };
        println!(
            "p99 {}/{:<17} {ratio:.3} (round by round {}){bar}",
            mine_contender.label(),
            other.label(),
            rounds.join(", ")
        );
    }
    for mine in [BYINFLIGHT, BYLATENCY].into_iter().filter(|c| contenders.contains(c)) {
        let throughputs: Vec<String> = contenders
            .iter()
            .filter(|&&c| c != mine)
            .map(|&c| {
                format!("{}/{} {:.2}", mine.label(), c.label(), throughput(mine) / throughput(c).max(1e-9))
            })
            .collect();
        println!("throughput {}", throughputs.join(", "));
    }
}

fn run_slow(options: &Options) -> Result<(), String> {
    let peers = Peers { haproxy: haproxy_binary(), nginx: nginx_binary() };
    let mut contenders = vec![BYINFLIGHT, BYLATENCY, Contender::Apache("bybusyness"), BYREQUESTS];
    match &peers.haproxy {
        Some(binary) => {
            let version = version_line(binary, "-v").unwrap_or_default();
            eprintln!("slow: {} ({version})", binary.display());
            contenders.push(Contender::HaproxyLeastconn);
        }
        None => {
            eprintln!("slow: haproxy not installed (apt-get install haproxy): skipping haproxy leastconn")
        }
    }
    match &peers.nginx {
        Some(binary) => {
            let version = version_line(binary, "-v").unwrap_or_default();
            eprintln!("slow: {} ({version})", binary.display());
            contenders.push(Contender::NginxLeastConn);
        }
        None => eprintln!("slow: nginx not installed (apt-get install nginx): skipping nginx least_conn"),
    }
    let backends = SLOW_MEMBERS
        .iter()
        .map(|&name| {
            let delay = if name == SLOW_NAME { SLOW_TIME } else { FAST_TIME };
            Backend::start(BackendSpec::new(name).slots(SLOW_SLOTS).delay(delay))
                .map_err(|e| format!("cannot start backend {name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "slow: {} requests per run (or {} s), {} clients, members {} ({} slots each, {} ms) and {} \
         ({} slots, {} ms)",
        options.requests(Scenario::Slow),
        RUN_DEADLINE.as_secs(),
        options.concurrency(Scenario::Slow),
        SLOW_MEMBERS[..SLOW_MEMBERS.len() - 1].join(", "),
        SLOW_SLOTS,
        ms(FAST_TIME),
        SLOW_NAME,
        SLOW_SLOTS,
        ms(SLOW_TIME),
    );
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for &contender in &contenders {
            eprint!("slow {} round {round} ... ", contender.label());
            let run = measure_slow(options, &backends, &peers, contender, round)?;
            eprintln!("{} requests in {:.1} s", run.ok + run.errors, run.seconds);
            runs.push(run);
        }
    }
    println!(
        "\nslow: one member of four ten times slower ({} ms against {} ms, {} slots each), {} clients\n",
        ms(SLOW_TIME),
        ms(FAST_TIME),
        SLOW_SLOTS,
        options.concurrency(Scenario::Slow)
    );
    print_slow_table(&runs);
    println!();
    print_slow_summary(&runs, &contenders);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// hash: byhash against HAProxy and nginx consistent hashing
// ---------------------------------------------------------------------------------------------

/// What hashes the `hash` load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hasher {
    /// apache2 (event MPM), `lbmethod=byhash`, `LBHashKey "%{HTTP:X-User}"`.
    ByHash,
    /// HAProxy, `balance hdr(X-User)`, `hash-type consistent`, `hash-balance-factor 125`.
    Haproxy,
    /// nginx, `hash $http_x_user consistent` with a shared `zone`.
    Nginx,
}

impl Hasher {
    fn label(self) -> &'static str {
        match self {
            Hasher::ByHash => "byhash",
            Hasher::Haproxy => "haproxy consistent",
            Hasher::Nginx => "nginx consistent",
        }
    }
}

fn start_hasher(hasher: Hasher, backends: &[Backend], peers: &Peers) -> Result<Server, String> {
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
        Hasher::Haproxy => {
            let binary = peers.haproxy.as_deref().ok_or("haproxy is not installed")?;
            let config = HaproxyConfig::new(&format!("hdr({HASH_HEADER})"), &addrs)
                .threads(2)
                .backend_line("hash-type consistent")
                .backend_line("hash-balance-factor 125");
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
    let concurrency = options.concurrency(Scenario::Hash);
    // Every request its own key: the spread of a large population of keys.
    let key = "user-{n}";
    run_load(&warm_up_load(concurrency).header(HASH_HEADER, key), all.addr(), all.pid())?;
    let load = measured_load(concurrency, options.requests(Scenario::Hash)).header(HASH_HEADER, key);
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

fn run_hash(options: &Options) -> Result<(), String> {
    let peers = Peers { haproxy: haproxy_binary(), nginx: nginx_binary() };
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
    let backends = HASH_MEMBERS
        .iter()
        .map(|&name| {
            Backend::start(BackendSpec::new(name).slots(BACKEND_SLOTS).delay(SERVICE_TIME))
                .map_err(|e| format!("cannot start backend {name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "hash: {HASH_KEYS} keys probed, then {} requests (or {} s) with a new key each from {} clients; \
         members {}, service time {} ms",
        options.requests(Scenario::Hash),
        RUN_DEADLINE.as_secs(),
        options.concurrency(Scenario::Hash),
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
            Scenario::Shares => run_shares(options)?,
            Scenario::Slow => run_slow(options)?,
            Scenario::Hash => run_hash(options)?,
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
