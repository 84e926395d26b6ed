//! `down`: a member whose backend stops (connections refused) for eight seconds, then comes
//! back.
//!
//! A crash or a restart of one application server is the commonest failure a balancer sees.
//! What matters to users is how many requests fail while it is down, and how soon the member
//! gets its share back once it is up again (the product bar: at least 80% of its fair share
//! within 2 s). Four members of 8 worker slots serve a request in 5 ms, 32 clients; from 5 s to
//! 13 s into a 20 s run one member's backend (`downed`) is stopped: its listener is closed and
//! its open connections dropped, then it listens again on the same address.
//!
//! Every server is told the same thing, in its own words: notice a refused connection at once,
//! send that request to another member, and try the member again after 2 s.
//!
//! - Apache: `retry=2` on every member (a member in error is tried again after 2 s, by the next
//!   request that picks it; a refused request fails over to another member, by default).
//! - HAProxy: `check inter 2s fall 1 rise 1 observe layer4 error-limit 1 on-error mark-down` on
//!   every server, `option redispatch 1` and `retries 2`: the first refused connection marks
//!   the server down, the request is redispatched to another server, and a health check every
//!   2 s brings it back at its first success. HAProxy cannot bring a server back without active
//!   checks (`observe` requires `check`); its checks run beside the traffic, where Apache's and
//!   nginx's probe is a client's request.
//! - nginx: `max_fails=1 fail_timeout=2s` on every server (its default `proxy_next_upstream
//!   error timeout` passes a refused request to the next server).
//!
//! It prints the member's share second by second, the errors clients got before, during and
//! after the outage, p99 in the same windows, the slowest request of the run (a retry can make
//! a client wait: HAProxy waits up to a second before some retries), and how long after the
//! backend was back the member had 80% of its fair share over one second.
//!
//! The requests in service at the member when it stops are cut off. Apache answers such a
//! request, when it was not the first on its client connection, by closing that connection
//! without a response, so that the client may retry it, and the load generator does retry once,
//! as HTTP clients do for a kept-alive connection closed under them: such a request counts as
//! answered, its latency including the retry. `errors` is what a retrying client still sees.

use crate::common::{
    BYINFLIGHT, BYLATENCY, Contender, FailureSettings, Options, Peers, each_round, progress_of, run_load,
    sleep_until, start_backends, start_server_with, wait_backends_idle, warm_up_load, with_peers,
};
use crate::windows::{
    back_after, back_label, ms_or_dash, percent_series, percentile_between, seconds_header, share_per_second,
};
use lbrs_harness::{Backend, BackendSpec, Load, LoadReport, ms, wait_for};
use std::thread;
use std::time::{Duration, Instant};

/// The members; the last one goes down, then comes back.
const MEMBERS: [&str; 4] = ["d1", "d2", "d3", DOWNED];
const DOWNED: &str = "downed";
const SLOTS: usize = 8;
const SERVICE_TIME: Duration = Duration::from_millis(5);
/// As many clients as all members' slots, as in `recover`.
const CONCURRENCY: usize = 32;
/// The timeline of a run, from the start of the measured load: the backend stops at `DOWN_AT`
/// and listens again at `UP_AT`.
const DOWN_AT: Duration = Duration::from_secs(5);
const UP_AT: Duration = Duration::from_secs(13);
const RUN: Duration = Duration::from_secs(20);
/// The first window after the backend is back; "later" is the rest of the run.
const FIRST_AFTER: Duration = Duration::from_secs(5);
/// 80% of a fair share (one of four equal members).
const BACK_SHARE: f64 = 0.8 / MEMBERS.len() as f64;
/// One round by default: each run lasts 20 s (`--rounds` runs more).
const ROUNDS: usize = 1;

/// The same failure handling for every server: a refused connection takes the member out at
/// once and its request goes to another member; the member is tried again every 2 s.
const FAILURES: FailureSettings = FailureSettings {
    apache_member: "retry=2",
    haproxy_server: "check inter 2s fall 1 rise 1 observe layer4 error-limit 1 on-error mark-down",
    haproxy_backend: &["option redispatch 1", "retries 2"],
    nginx_server: "max_fails=1 fail_timeout=2s",
};

struct Run {
    contender: Contender,
    round: usize,
    report: LoadReport,
    /// When the backend was stopped and when it listened again, from the start of the load.
    down_at: Duration,
    up_at: Duration,
}

impl Run {
    /// The windows: before the stop, while down, the first 5 s back, and the rest.
    fn windows(&self) -> [(&'static str, Duration, Duration); 4] {
        let after = self.up_at + FIRST_AFTER;
        [
            ("before", Duration::ZERO, self.down_at),
            ("down", self.down_at, self.up_at),
            ("after", self.up_at, after),
            ("later", after, self.report.elapsed.max(after)),
        ]
    }

    fn ok(&self) -> u64 {
        self.report.count_status(200)
    }

    /// Requests that got anything but a 200 and *ended* in `[from, to)`: an error counts when
    /// the client saw it, so the requests cut off by the stop count in the window it opens.
    fn errors_ended(&self, from: Duration, to: Duration) -> u64 {
        self.report.outcomes.iter().filter(|o| o.status != 200 && (from..to).contains(&o.at)).count() as u64
    }

    fn back_after(&self) -> Option<Duration> {
        back_after(&self.report, DOWNED, self.up_at, BACK_SHARE)
    }

    fn back(&self) -> String {
        back_label(self.back_after(), self.report.elapsed.saturating_sub(self.up_at))
    }
}

fn measure(
    options: &Options,
    backends: &mut [Backend],
    peers: &Peers,
    contender: Contender,
    round: usize,
) -> Result<Run, String> {
    wait_backends_idle(backends)?;
    let server = start_server_with(contender, backends, peers, &FAILURES)?;
    let concurrency = options.concurrency(CONCURRENCY);
    run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
    let downed = backends.iter_mut().find(|b| b.name() == DOWNED).ok_or("no member to stop")?;
    let addr = downed.addr();
    let load = Load::new("/", concurrency, u64::MAX).deadline(RUN);
    let (report, down_at, up_at) = thread::scope(|scope| {
        let running = scope.spawn(|| run_load(&load, server.addr(), server.pid()));
        let start = Instant::now();
        sleep_until(start + DOWN_AT);
        downed.stop();
        let down_at = start.elapsed();
        sleep_until(start + UP_AT);
        // The port was ours a moment ago; binding it again can fail briefly.
        let mut restarted = None;
        wait_for(Duration::from_secs(2), || {
            restarted =
                Backend::start_on(addr, BackendSpec::new(DOWNED).slots(SLOTS).delay(SERVICE_TIME)).ok();
            restarted.is_some()
        });
        let up_at = start.elapsed();
        let report = running.join().map_err(|_| "the load generator panicked".to_string());
        (report, down_at, restarted.map(|b| (b, up_at)))
    });
    let (back, up_at) = up_at.ok_or_else(|| format!("cannot listen on {addr} again for {DOWNED}"))?;
    *downed = back;
    Ok(Run { contender, round, report: report??, down_at, up_at })
}

fn print_series(runs: &[Run]) {
    let seconds = RUN.as_secs();
    println!(
        "share of {DOWNED} in the requests sent in each second, % (fair share {:.0}; down from {} s to {} s):",
        100.0 / MEMBERS.len() as f64,
        DOWN_AT.as_secs(),
        UP_AT.as_secs()
    );
    println!("{:<17} {:>5} {}", "method", "round", seconds_header(seconds, 4));
    for run in runs {
        let shares = share_per_second(&run.report, DOWNED, seconds);
        println!("{:<17} {:>5} {}", run.contender.label(), run.round, percent_series(&shares, 4));
    }
    println!("\nerrors clients got in each second:");
    println!("{:<17} {:>5} {}", "method", "round", seconds_header(seconds, 4));
    for run in runs {
        let errors: String = (0..seconds)
            .map(|s| format!("{:>4}", run.errors_ended(Duration::from_secs(s), Duration::from_secs(s + 1))))
            .collect();
        println!("{:<17} {:>5} {errors}", run.contender.label(), run.round);
    }
}

fn print_table(runs: &[Run]) {
    let names = ["before", "down", "after", "later"];
    let p99s: String = names.iter().map(|name| format!(" {:>10}", format!("p99 {name}"))).collect();
    println!(
        "{:<17} {:>5} {:>8} {:>7} {:>30}{p99s} {:>9} {:>10}",
        "method", "round", "requests", "req/s", "errors before/down/after/later", "slowest", "back after"
    );
    for run in runs {
        let windows = run.windows();
        let errors: Vec<String> =
            windows.iter().map(|&(_, from, to)| run.errors_ended(from, to).to_string()).collect();
        let p99s: String = windows
            .iter()
            .map(|&(_, from, to)| {
                format!(" {:>10}", ms_or_dash(percentile_between(&run.report, from, to, 99.0)))
            })
            .collect();
        println!(
            "{:<17} {:>5} {:>8} {:>7.0} {:>30}{p99s} {:>9} {:>10}",
            run.contender.label(),
            run.round,
            run.ok(),
            run.ok() as f64 / run.report.elapsed.as_secs_f64().max(1e-9),
            errors.join("/"),
            ms_or_dash(run.report.outcomes.iter().map(|o| o.latency).max().unwrap_or_default()),
            run.back(),
        );
    }
}

fn print_summary(runs: &[Run], contenders: &[Contender]) {
    let of = |c: Contender| -> Vec<&Run> { runs.iter().filter(|r| r.contender == c).collect() };
    let lines: Vec<String> = contenders
        .iter()
        .map(|&c| {
            let errors: u64 = of(c).iter().map(|r| r.report.outcomes.len() as u64 - r.ok()).sum();
            let backs: Vec<String> = of(c).iter().map(|r| r.back()).collect();
            format!("{} {errors} errors, back after {}", c.label(), backs.join(" / "))
        })
        .collect();
    println!("{}", lines.join("; "));
    println!(
        "back: the end of the first 1 s window after the backend listened again in which {DOWNED} got at \
         least {:.0}% of the requests (80% of its fair share); 1.0 s is the soonest",
        BACK_SHARE * 100.0
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
    let contenders = with_peers("down", &[BYINFLIGHT, BYLATENCY], &peers);
    let mut backends = start_backends(&MEMBERS, SLOTS, SERVICE_TIME)?;
    eprintln!(
        "down: {} s per run, {} clients, members {} ({} slots each, {} ms); {DOWNED} stopped from {} s to {} s",
        RUN.as_secs(),
        options.concurrency(CONCURRENCY),
        MEMBERS.join(", "),
        SLOTS,
        ms(SERVICE_TIME),
        DOWN_AT.as_secs(),
        UP_AT.as_secs(),
    );
    let runs = each_round(
        "down",
        options.rounds(ROUNDS),
        &contenders,
        |contender, round| measure(options, &mut backends, &peers, contender, round),
        |run| progress_of(&run.report),
    )?;
    println!(
        "\ndown: one member of four ({DOWNED}) refusing connections from {} s to {} s ({} slots each, {} ms), \
         {} clients, {} s per run",
        DOWN_AT.as_secs(),
        UP_AT.as_secs(),
        SLOTS,
        ms(SERVICE_TIME),
        options.concurrency(CONCURRENCY),
        RUN.as_secs(),
    );
    println!(
        "failure settings: Apache {}; HAProxy {}, {}; nginx {}",
        FAILURES.apache_member,
        FAILURES.haproxy_server,
        FAILURES.haproxy_backend.join(", "),
        FAILURES.nginx_server
    );
    println!(
        "windows: before the stop, down, the first {} s after the backend is back, later; shares and p99 by \
         the time a request was sent, errors by the time the client got them\n",
        FIRST_AFTER.as_secs()
    );
    print_series(&runs);
    println!();
    print_table(&runs);
    println!();
    print_summary(&runs, &contenders);
    Ok(())
}
