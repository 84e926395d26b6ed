//! `steady`: ten equal members and nothing happening: how evenly each method spreads the load.
//!
//! Most of the time a pool is healthy, and then a method that reacts to latency must not make
//! the split uneven by chasing noise: the product bar wants `bylatency` as even as `byinflight`
//! there (the busiest member's requests over the idlest's at most 1.05). Ten members of 8
//! worker slots serve a request in 5 ms, 64 clients (fewer than the 80 slots), two rounds:
//! `byinflight`, `bylatency` and `byweight` (exact rotation, the evenness to compare with),
//! HAProxy `leastconn` and nginx `least_conn`.
//!
//! It prints, per run, the requests each member answered, their max/min ratio, the largest
//! distance of a member's share from the fair 10% in percentage points, p50/p99 and throughput;
//! the range of the members' shares second by second; and every ratio against `byinflight`.

use crate::common::{
    BYINFLIGHT, BYLATENCY, Contender, Options, Peers, ROUNDS, RUN_DEADLINE, each_round, measured_load,
    progress_of, run_load, start_backends, start_server, wait_backends_idle, warm_up_load, with_peers,
};
use crate::windows::{answered_by, seconds_header};
use lbrs_harness::client::percentile;
use lbrs_harness::{Backend, LoadReport, ms};
use std::time::Duration;

const MEMBERS: [&str; 10] = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10"];
const SLOTS: usize = 8;
const SERVICE_TIME: Duration = Duration::from_millis(5);
/// Fewer clients than the members' 80 slots: nothing queues at a backend when the split is
/// even, so an uneven split shows in latency too.
const CONCURRENCY: usize = 64;
/// About 6 s per run on 2 cores (some 10,000 requests/s): 20,000 took under 2 s there, too
/// short for a per-second series and a p99 that holds still between rounds.
const REQUESTS: u64 = 60_000;
const BYWEIGHT: Contender = Contender::Apache("byweight");
/// The product bar: `bylatency`'s max/min at most this on steady equal members.
const BAR_MAX_MIN: f64 = 1.05;

struct Run {
    contender: Contender,
    round: usize,
    report: LoadReport,
    /// Requests answered by each member, in `MEMBERS` order.
    counts: Vec<u64>,
}

impl Run {
    fn ok(&self) -> u64 {
        self.report.count_status(200)
    }

    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.report.elapsed.as_secs_f64().max(1e-9)
    }

    fn latencies(&self) -> Vec<Duration> {
        self.report.outcomes.iter().filter(|o| o.status == 200).map(|o| o.latency).collect()
    }
}

/// The busiest member's count over the idlest's.
fn max_over_min(counts: &[u64]) -> f64 {
    let (low, high) = counts.iter().fold((u64::MAX, 0), |(l, h), &n| (l.min(n), h.max(n)));
    high as f64 / low.max(1) as f64
}

/// The largest distance of a member's share from the fair share, in percentage points.
fn max_deviation_pp(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let fair = 1.0 / counts.len() as f64;
    counts.iter().map(|&n| (n as f64 / total.max(1) as f64 - fair).abs() * 100.0).fold(0.0, f64::max)
}

fn measure(
    options: &Options,
    backends: &[Backend],
    peers: &Peers,
    contender: Contender,
    round: usize,
) -> Result<Run, String> {
    wait_backends_idle(backends)?;
    let server = start_server(contender, backends, peers)?;
    let concurrency = options.concurrency(CONCURRENCY);
    run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
    let report =
        run_load(&measured_load(concurrency, options.requests(REQUESTS)), server.addr(), server.pid())?;
    let counts = MEMBERS.iter().map(|name| report.count_backend(name)).collect();
    Ok(Run { contender, round, report, counts })
}

fn print_table(runs: &[Run]) {
    println!(
        "{:<17} {:>5} {:>8} {:>6} {:>7} {:>8} {:>8} {:>7} {:>8}",
        "method", "round", "requests", "errors", "req/s", "p50", "p99", "max/min", "max dev"
    );
    for run in runs {
        println!(
            "{:<17} {:>5} {:>8} {:>6} {:>7.0} {:>5.2} ms {:>5.2} ms {:>7.3} {:>5.2} pp",
            run.contender.label(),
            run.round,
            run.ok(),
            run.report.outcomes.len() as u64 - run.ok(),
            run.throughput(),
            ms(percentile(&mut run.latencies(), 50.0)),
            ms(percentile(&mut run.latencies(), 99.0)),
            max_over_min(&run.counts),
            max_deviation_pp(&run.counts),
        );
    }
    println!("\nrequests per member ({}):", MEMBERS.join(" "));
    for run in runs {
        let counts: String = run.counts.iter().map(|n| format!(" {n:>5}")).collect();
        println!("{:<17} {:>5}{counts}", run.contender.label(), run.round);
    }
}

/// Per second, the lowest and highest share of any member.
fn print_series(runs: &[Run]) {
    let seconds = runs.iter().map(|r| r.report.elapsed.as_secs()).max().unwrap_or(0);
    println!(
        "lowest-highest member share of the requests sent in each second, % (fair {:.0}):",
        100.0 / MEMBERS.len() as f64
    );
    println!("{:<17} {:>5} {}", "method", "round", seconds_header(seconds, 10));
    for run in runs {
        let series: String = (0..run.report.elapsed.as_secs())
            .map(|s| {
                let (from, to) = (Duration::from_secs(s), Duration::from_secs(s + 1));
                let shares: Vec<f64> = MEMBERS
                    .iter()
                    .map(|name| {
                        let (mine, all) = answered_by(&run.report, name, from, to);
                        mine as f64 * 100.0 / all.max(1) as f64
                    })
                    .collect();
                let (low, high) = shares.iter().fold((f64::MAX, 0.0_f64), |(l, h), &v| (l.min(v), h.max(v)));
                format!("{:>10}", format!("{low:.1}-{high:.1}"))
            })
            .collect();
        println!("{:<17} {:>5} {series}", run.contender.label(), run.round);
    }
}

/// Every round of a contender together: evenness in its worst round (adding the rounds' counts
/// would even out members that were busy in one round and idle in another), latency with the
/// rounds' latencies pooled, throughput; then each over byinflight's.
fn print_summary(runs: &[Run], contenders: &[Contender]) {
    let of = |c: Contender| -> Vec<&Run> { runs.iter().filter(|r| r.contender == c).collect() };
    let worst = |c: Contender, measure: fn(&[u64]) -> f64| -> f64 {
        of(c).iter().map(|r| measure(&r.counts)).fold(0.0, f64::max)
    };
    let pooled = |c: Contender, p: f64| -> f64 {
        let mut all: Vec<Duration> = of(c).iter().flat_map(|r| r.latencies()).collect();
        ms(percentile(&mut all, p))
    };
    let throughput = |c: Contender| -> f64 {
        let ok: u64 = of(c).iter().map(|r| r.ok()).sum();
        let seconds: f64 = of(c).iter().map(|r| r.report.elapsed.as_secs_f64()).sum();
        ok as f64 / seconds.max(1e-9)
    };
    println!("every round: max/min and max dev of the worst round, latency of all rounds pooled");
    for &c in contenders {
        let per_round: Vec<String> =
            of(c).iter().map(|r| format!("{:.3}", max_over_min(&r.counts))).collect();
        println!(
            "  {:<17} max/min {:.3} (round by round {}), max dev {:.2} pp, p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s",
            c.label(),
            worst(c, max_over_min),
            per_round.join(", "),
            worst(c, max_deviation_pp),
            pooled(c, 50.0),
            pooled(c, 99.0),
            throughput(c),
        );
    }
    if contenders.contains(&BYINFLIGHT) {
        for &c in contenders.iter().filter(|&&c| c != BYINFLIGHT) {
            let label = format!("{}/byinflight", c.label());
            println!(
                "{label:<28} max/min {:.3}, p50 {:.3}, p99 {:.3}, throughput {:.3}",
                worst(c, max_over_min) / worst(BYINFLIGHT, max_over_min),
                pooled(c, 50.0) / pooled(BYINFLIGHT, 50.0).max(1e-9),
                pooled(c, 99.0) / pooled(BYINFLIGHT, 99.0).max(1e-9),
                throughput(c) / throughput(BYINFLIGHT).max(1e-9),
            );
        }
    }
    if contenders.contains(&BYLATENCY) {
        let worst = worst(BYLATENCY, max_over_min);
        let verdict = if worst <= BAR_MAX_MIN { "meets" } else { "misses" };
        println!("bar: bylatency max/min at most {BAR_MAX_MIN:.2} in every round: {worst:.3}, {verdict}");
    }
}

pub fn run(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let contenders = with_peers("steady", &[BYINFLIGHT, BYLATENCY, BYWEIGHT], &peers);
    let backends = start_backends(&MEMBERS, SLOTS, SERVICE_TIME)?;
    eprintln!(
        "steady: {} requests per run (or {} s), {} clients, {} members ({} slots each, {} ms)",
        options.requests(REQUESTS),
        RUN_DEADLINE.as_secs(),
        options.concurrency(CONCURRENCY),
        MEMBERS.len(),
        SLOTS,
        ms(SERVICE_TIME),
    );
    let runs = each_round(
        "steady",
        options.rounds(ROUNDS),
        &contenders,
        |contender, round| measure(options, &backends, &peers, contender, round),
        |run| progress_of(&run.report),
    )?;
    println!(
        "\nsteady: {} equal members ({} ms, {} slots each), {} clients, {} requests per run\n",
        MEMBERS.len(),
        ms(SERVICE_TIME),
        SLOTS,
        options.concurrency(CONCURRENCY),
        options.requests(REQUESTS),
    );
    print_table(&runs);
    println!();
    print_series(&runs);
    println!();
    print_summary(&runs, &contenders);
    Ok(())
}
