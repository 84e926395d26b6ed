//! `slow`: one member of four ten times slower than the others, every member a fixed pool of
//! worker slots, under a closed-loop load with more clients than the fast members have slots.
//!
//! This is the load the product bar for the least-loaded methods is stated on: `byinflight`'s
//! p99 at most half of `byrequests'` and no worse than HAProxy `leastconn` and nginx
//! `least_conn`; `bylatency` keeping the slow member near 1% of the requests, so its p99 stays
//! close to the fast members' latency. Apache with `byinflight`, `bylatency`, `bybusyness` and
//! `byrequests`, and, when they are installed, HAProxy `balance leastconn` and nginx
//! `least_conn` (with a shared `zone`), each proxy to the same backends under the same load; it
//! prints throughput, p50/p99/p99.9 latency and the slow member's share, and the p99 ratios the
//! bar is stated in.

use crate::common::{
    BYINFLIGHT, BYLATENCY, BYREQUESTS, Contender, Options, Peers, ROUNDS, RUN_DEADLINE, each_round,
    measured_load, run_load, start_backends, start_server, wait_backends_idle, warm_up_load, with_peers,
};
use lbrs_harness::client::percentile;
use lbrs_harness::{Backend, ms};
use std::time::Duration;

/// The members; the last one is the slow one.
const SLOW_MEMBERS: [&str; 4] = ["fast1", "fast2", "fast3", "slow"];
const SLOW_NAME: &str = "slow";
/// Every member serves this many requests at once; more wait in its queue.
const SLOW_SLOTS: usize = 4;
/// Service times. A fast member serves 4 / 5 ms = 800 requests/s, the slow one
/// 4 / 50 ms = 80 requests/s: about 2,500 requests/s in all, well under what apache2, the
/// backends and the load generator together manage on 2 cores (over 6,000/s at 1 ms), so the
/// proxy's CPU is not what limits the run, and long enough that scheduling jitter of a few
/// hundred microseconds stays small next to them.
const FAST_TIME: Duration = Duration::from_millis(5);
const SLOW_TIME: Duration = Duration::from_millis(50);
/// 16 clients, more than the 12 slots of the fast members and as many as all four
/// members' slots: a least-loaded method keeps about 4 requests at every member and no member
/// queues, while round robin sends every fourth request to the slow member, whose queue then
/// holds most of the clients.
const CONCURRENCY: usize = 16;
const REQUESTS: u64 = 20_000;

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

/// Starts `contender` over `backends`, warms it up, and measures one load.
fn measure_slow(
    options: &Options,
    backends: &[Backend],
    peers: &Peers,
    contender: Contender,
    round: usize,
) -> Result<SlowRun, String> {
    // Requests still queued at the slow member from the previous run would slow this one.
    wait_backends_idle(backends)?;
    let server = start_server(contender, backends, peers)?;
    let concurrency = options.concurrency(CONCURRENCY);
    run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
    let slow = backends.iter().find(|b| b.name() == SLOW_NAME).ok_or("no slow backend")?;
    slow.reset_stats();
    let load = measured_load(concurrency, options.requests(REQUESTS));
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

pub fn run(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let contenders =
        with_peers("slow", &[BYINFLIGHT, BYLATENCY, Contender::Apache("bybusyness"), BYREQUESTS], &peers);
    let (fast, _) = SLOW_MEMBERS.split_at(SLOW_MEMBERS.len() - 1);
    let mut backends = start_backends(fast, SLOW_SLOTS, FAST_TIME)?;
    backends.extend(start_backends(&[SLOW_NAME], SLOW_SLOTS, SLOW_TIME)?);
    eprintln!(
        "slow: {} requests per run (or {} s), {} clients, members {} ({} slots each, {} ms) and {} \
         ({} slots, {} ms)",
        options.requests(REQUESTS),
        RUN_DEADLINE.as_secs(),
        options.concurrency(CONCURRENCY),
        fast.join(", "),
        SLOW_SLOTS,
        ms(FAST_TIME),
        SLOW_NAME,
        SLOW_SLOTS,
        ms(SLOW_TIME),
    );
    let runs = each_round(
        "slow",
        options.rounds(ROUNDS),
        &contenders,
        |contender, round| measure_slow(options, &backends, &peers, contender, round),
        |run| (run.ok + run.errors, run.seconds),
    )?;
    println!(
        "\nslow: one member of four ten times slower ({} ms against {} ms, {} slots each), {} clients\n",
        ms(SLOW_TIME),
        ms(FAST_TIME),
        SLOW_SLOTS,
        options.concurrency(CONCURRENCY)
    );
    print_slow_table(&runs);
    println!();
    print_slow_summary(&runs, &contenders);
    Ok(())
}
