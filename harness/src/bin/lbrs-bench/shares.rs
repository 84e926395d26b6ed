//! `shares`: `byweight` against httpd's built-in `byrequests`, the shares each member gets.
//!
//! Both run the same smooth weighted round robin; the difference is where its state lives.
//! `byrequests` updates its counters in shared memory under a per-process lock only, so
//! concurrent picks in different processes can lose updates and skew the shares; `byweight`
//! takes one shared atomic ticket per pick. This runs both on the same three members
//! (loadfactors 1:2:3, service time 1 ms) under the same closed-loop load, under prefork with 8
//! processes and under event, and prints shares, deviation from the ideal shares, throughput and
//! latency side by side. The product bar: shares within 0.5 percentage point of the ideal with
//! 8 prefork processes, and throughput no lower than byrequests'.

use crate::common::{Options, ROUNDS, RUN_DEADLINE, measured_load, run_load, start_backends, warm_up_load};
use lbrs_harness::{Apache, ApacheConfig, Backend, Mpm, balancer_block, ms};
use std::time::Duration;

/// The members, name and loadfactor.
const MEMBERS: [(&str, u32); 3] = [("a", 1), ("b", 2), ("c", 3)];
/// Each backend serves this many requests at once, each taking `SERVICE_TIME`; more than the
/// load ever sends to one member, so no member queues and shares alone decide the split.
const BACKEND_SLOTS: usize = 64;
const SERVICE_TIME: Duration = Duration::from_millis(1);
const PREFORK_PROCESSES: u32 = 8;
/// The methods in the order each round runs them.
const METHODS: [&str; 2] = ["byrequests", "byweight"];
const REQUESTS: u64 = 30_000;
const CONCURRENCY: usize = 8;

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
    let concurrency = options.concurrency(CONCURRENCY);
    run_load(&warm_up_load(concurrency), apache.addr(), apache.pid())?;
    let load = measured_load(concurrency, options.requests(REQUESTS));
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

pub fn run(options: &Options) -> Result<(), String> {
    let names: Vec<&str> = MEMBERS.iter().map(|&(name, _)| name).collect();
    let backends = start_backends(&names, BACKEND_SLOTS, SERVICE_TIME)?;
    eprintln!(
        "shares: {} requests per run (or {} s), {} clients, members {}, service time {} ms",
        options.requests(REQUESTS),
        RUN_DEADLINE.as_secs(),
        options.concurrency(CONCURRENCY),
        MEMBERS.iter().map(|&(name, lf)| format!("{name}={lf}")).collect::<Vec<_>>().join(":"),
        ms(SERVICE_TIME),
    );
    let mut runs = Vec::new();
    for &mpm in &options.mpms {
        for round in 1..=options.rounds(ROUNDS) {
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
