//! `recover`: a member that turns slow for ten seconds, then recovers.
//!
//! Real members slow down and come back (a garbage collection, a noisy neighbour, a batch job),
//! and a latency-aware method must do two things the static `slow` scenario cannot show: leave
//! the member within about a second when it turns slow, and give it its share back within about
//! two seconds when it recovers (the product bar: at least 80% of its fair share within 2 s),
//! not wait for an old estimate to fade. Four members of 8 worker slots serve a request in 5 ms;
//! from 5 s to 15 s into the run one of them (`turns`) takes 80 ms, then 5 ms again, until 25 s.
//! 32 clients: as many as all members' slots.
//!
//! It prints the changed member's share second by second, p99 in four windows (before the
//! slowdown, during it, the first 5 s after recovery, and after that), how long after the
//! recovery the member was back to 80% of its fair share over one second, and bylatency's p99
//! over every other contender's in each window.

use crate::common::{
    BYINFLIGHT, BYLATENCY, Contender, Options, Peers, each_round, progress_of, run_load, sleep_until,
    start_backends, start_server, wait_backends_idle, warm_up_load, with_peers,
};
use crate::windows::{
    back_after, back_label, errors_between, latencies_between, ms_or_dash, percent_series,
    percentile_between, seconds_header, share_per_second,
};
use lbrs_harness::client::percentile;
use lbrs_harness::{Backend, Load, LoadReport, ms};
use std::thread;
use std::time::{Duration, Instant};

/// The members; the last one turns slow, then recovers.
const MEMBERS: [&str; 4] = ["r1", "r2", "r3", CHANGED];
const CHANGED: &str = "turns";
/// Every member serves this many requests at once; more wait in its queue.
const SLOTS: usize = 8;
/// A member's service time, and the changed member's while it is slow (16 times longer: at
/// 8 slots it then serves 100 requests/s against a fast member's 1,600).
const FAST_TIME: Duration = Duration::from_millis(5);
const SLOW_TIME: Duration = Duration::from_millis(80);
/// As many clients as all members' slots: a least-loaded method keeps about 8 requests at each
/// member, so the slow member's slots stay full while it is slow.
const CONCURRENCY: usize = 32;
/// The timeline of a run, from the start of the measured load.
const SLOW_FROM: Duration = Duration::from_secs(5);
const SLOW_UNTIL: Duration = Duration::from_secs(15);
const RUN: Duration = Duration::from_secs(25);
/// The end of the first window after the recovery; "later" is the rest of the run.
const FIRST_AFTER_UNTIL: Duration = Duration::from_secs(20);
/// 80% of a fair share (one of four equal members): "back" in the product bar's sense.
const BACK_SHARE: f64 = 0.8 / MEMBERS.len() as f64;
/// One round by default: each run lasts 25 s (`--rounds` runs more).
const ROUNDS: usize = 1;

/// The four windows p99 is reported in: name and `[from, to)`: before the slowdown, during
/// it, the first 5 s after the recovery, and the rest.
const WINDOWS: [(&str, Duration, Duration); 4] = [
    ("before", Duration::ZERO, SLOW_FROM),
    ("slow", SLOW_FROM, SLOW_UNTIL),
    ("after", SLOW_UNTIL, FIRST_AFTER_UNTIL),
    ("later", FIRST_AFTER_UNTIL, RUN),
];

struct Run {
    contender: Contender,
    round: usize,
    report: LoadReport,
}

impl Run {
    fn ok(&self) -> u64 {
        self.report.count_status(200)
    }

    fn errors(&self) -> u64 {
        errors_between(&self.report, Duration::ZERO, Duration::MAX)
    }

    fn p99(&self, window: usize) -> Duration {
        let (_, from, to) = WINDOWS[window];
        percentile_between(&self.report, from, to, 99.0)
    }

    fn back_after(&self) -> Option<Duration> {
        back_after(&self.report, CHANGED, SLOW_UNTIL, BACK_SHARE)
    }

    fn back(&self) -> String {
        back_label(self.back_after(), self.report.elapsed.saturating_sub(SLOW_UNTIL))
    }
}

fn measure(
    options: &Options,
    backends: &[Backend],
    peers: &Peers,
    contender: Contender,
    round: usize,
) -> Result<Run, String> {
    wait_backends_idle(backends)?;
    let changed = backends.iter().find(|b| b.name() == CHANGED).ok_or("no changed member")?;
    changed.set_delay(FAST_TIME);
    let server = start_server(contender, backends, peers)?;
    let concurrency = options.concurrency(CONCURRENCY);
    run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
    let load = Load::new("/", concurrency, u64::MAX).deadline(RUN);
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| run_load(&load, server.addr(), server.pid()));
        let start = Instant::now();
        sleep_until(start + SLOW_FROM);
        changed.set_delay(SLOW_TIME);
        sleep_until(start + SLOW_UNTIL);
        changed.set_delay(FAST_TIME);
        running.join().map_err(|_| "the load generator panicked".to_string())
    });
    changed.set_delay(FAST_TIME);
    Ok(Run { contender, round, report: report?? })
}

fn print_series(runs: &[Run]) {
    let seconds = RUN.as_secs();
    println!(
        "share of {CHANGED} in the requests sent in each second, % (fair share {:.0}; slow from {} s to {} s):",
        100.0 / MEMBERS.len() as f64,
        SLOW_FROM.as_secs(),
        SLOW_UNTIL.as_secs()
    );
    println!("{:<17} {:>5} {}", "method", "round", seconds_header(seconds, 4));
    for run in runs {
        let shares = share_per_second(&run.report, CHANGED, seconds);
        println!("{:<17} {:>5} {}", run.contender.label(), run.round, percent_series(&shares, 4));
    }
}

fn print_table(runs: &[Run]) {
    let windows: String =
        WINDOWS.iter().map(|(name, _, _)| format!(" {:>10}", format!("p99 {name}"))).collect();
    println!(
        "{:<17} {:>5} {:>8} {:>6} {:>7}{windows} {:>10}",
        "method", "round", "requests", "errors", "req/s", "back after"
    );
    for run in runs {
        let p99s: String = (0..WINDOWS.len()).map(|w| format!(" {:>10}", ms_or_dash(run.p99(w)))).collect();
        let back = run.back();
        println!(
            "{:<17} {:>5} {:>8} {:>6} {:>7.0}{p99s} {:>10}",
            run.contender.label(),
            run.round,
            run.ok(),
            run.errors(),
            run.ok() as f64 / run.report.elapsed.as_secs_f64().max(1e-9),
            back,
        );
    }
}

/// Each window's p99 with every round's latencies pooled, bylatency's over the others', and
/// the time back, against the bar.
fn print_summary(runs: &[Run], contenders: &[Contender]) {
    let of = |c: Contender| -> Vec<&Run> { runs.iter().filter(|r| r.contender == c).collect() };
    let pooled = |c: Contender, window: usize| -> Duration {
        let (_, from, to) = WINDOWS[window];
        let mut all: Vec<Duration> =
            of(c).iter().flat_map(|r| latencies_between(&r.report, from, to)).collect();
        percentile(&mut all, 99.0)
    };
    println!("p99 per window, all rounds pooled:");
    for &c in contenders {
        let p99s: Vec<String> = WINDOWS
            .iter()
            .enumerate()
            .map(|(w, (name, _, _))| format!("{name} {}", ms_or_dash(pooled(c, w))))
            .collect();
        println!("  {:<17} {}", c.label(), p99s.join(", "));
    }
    if contenders.contains(&BYLATENCY) {
        for &other in contenders.iter().filter(|&&c| c != BYLATENCY) {
            let ratios: Vec<String> = WINDOWS
                .iter()
                .enumerate()
                .map(|(w, (name, _, _))| {
                    format!("{name} {:.2}", ms(pooled(BYLATENCY, w)) / ms(pooled(other, w)).max(1e-9))
                })
                .collect();
            let label = format!("bylatency/{}", other.label());
            println!("p99 {label:<27} {}", ratios.join(", "));
        }
    }
    let backs: Vec<String> = contenders
        .iter()
        .map(|&c| {
            let times: Vec<String> = of(c).iter().map(|r| r.back()).collect();
            format!("{} {}", c.label(), times.join(" / "))
        })
        .collect();
    println!(
        "{CHANGED} back to {:.0}% of the requests over 1 s (80% of its fair share; 1.0 s is the soonest), \
         after the recovery: {}",
        BACK_SHARE * 100.0,
        backs.join(", ")
    );
    if contenders.contains(&BYLATENCY) {
        let within =
            of(BYLATENCY).iter().all(|r| r.back_after().is_some_and(|d| d <= Duration::from_secs(2)));
        println!(
            "bar: bylatency back to 80% of its fair share within 2 s: {}",
            if within { "meets" } else { "misses" }
        );
    }
}

pub fn run(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let contenders = with_peers("recover", &[BYINFLIGHT, BYLATENCY], &peers);
    let backends = start_backends(&MEMBERS, SLOTS, FAST_TIME)?;
    eprintln!(
        "recover: {} s per run, {} clients, members {} ({} slots each, {} ms); {CHANGED} at {} ms from {} s \
         to {} s",
        RUN.as_secs(),
        options.concurrency(CONCURRENCY),
        MEMBERS.join(", "),
        SLOTS,
        ms(FAST_TIME),
        ms(SLOW_TIME),
        SLOW_FROM.as_secs(),
        SLOW_UNTIL.as_secs(),
    );
    let runs = each_round(
        "recover",
        options.rounds(ROUNDS),
        &contenders,
        |contender, round| measure(options, &backends, &peers, contender, round),
        |run| progress_of(&run.report),
    )?;
    println!(
        "\nrecover: one member of four ({CHANGED}) at {} ms from {} s to {} s, {} ms before and after ({} slots \
         each), {} clients, {} s per run",
        ms(SLOW_TIME),
        SLOW_FROM.as_secs(),
        SLOW_UNTIL.as_secs(),
        ms(FAST_TIME),
        SLOTS,
        options.concurrency(CONCURRENCY),
        RUN.as_secs(),
    );
    let spans: Vec<String> = WINDOWS
        .iter()
        .map(|(name, from, to)| format!("{name} {}-{} s", from.as_secs(), to.as_secs()))
        .collect();
    println!("windows, by the time a request was sent: {}\n", spans.join(", "));
    print_series(&runs);
    println!();
    print_table(&runs);
    println!();
    print_summary(&runs, &contenders);
    Ok(())
}
