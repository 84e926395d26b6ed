//! `burst`: three times more clients than the members have places, and members that answer 503
//! at once when full (an application pool with no backlog, like a PHP-FPM pool whose listen
//! queue is full). What differs between contenders is not how many requests get served (the
//! members' capacity decides that) but whether the other clients get an error or a short wait.
//!
//! Four members of 4 worker slots serve a request in 20 ms; 48 clients in a closed loop for
//! 15 s. Contenders: `byinflight` with `LBMaxInflight 4` and `LBQueue timeout=5s` (the queue),
//! the same without the queue (refused at once), the same with httpd's own balancer `timeout=5`
//! instead, `byrequests` and `byinflight` with no cap (the members' own 503s), HAProxy
//! `leastconn` with `maxconn 4` per server and `timeout queue 5s`, HAProxy and nginx with no
//! limit, and nginx `max_conns=4` (open source nginx has no queue: it answers 502).
//!
//! It prints, per contender: client success, requests served per second, p50/p99 of the
//! successful requests and the longest, how many waited longer than the queue timeout + 50 ms,
//! and overtakes: pairs of requests where the later one (sent over 5 ms after) was answered
//! more than one service time before the earlier one, which a first-come-first-served line
//! keeps near zero. Then the queue's own counts from the status page.

use crate::common::{Options, Peers, Server, check_interrupted, run_load, wait_backends_idle, warm_up_load};
use lbrs_harness::peers::version_line;
use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, HaproxyConfig, Load, LoadReport, Mpm, NginxConfig, PeerProxy,
    balancer_block, ms,
};
use std::time::Duration;

const MEMBERS: [&str; 4] = ["m1", "m2", "m3", "m4"];
const SLOTS: usize = 4;
const SERVICE_TIME: Duration = Duration::from_millis(20);
/// Three times the members' 16 places.
const CONCURRENCY: usize = 48;
const DURATION: Duration = Duration::from_secs(15);
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Queue,
    Cap,
    HttpdTimeout,
    Uncapped(&'static str),
    HaproxyQueue,
    HaproxyUnlimited,
    NginxUnlimited,
    NginxMaxConns,
}

impl Contender {
    fn label(self) -> String {
        match self {
            Contender::Queue => "byinflight + LBMaxInflight 4 + LBQueue timeout=5s".into(),
            Contender::Cap => "byinflight + LBMaxInflight 4 (refused at once)".into(),
            Contender::HttpdTimeout => "byinflight + LBMaxInflight 4 + balancer timeout=5".into(),
            Contender::Uncapped(method) => format!("{method}, no cap"),
            Contender::HaproxyQueue => "haproxy leastconn + maxconn 4 + timeout queue 5s".into(),
            Contender::HaproxyUnlimited => "haproxy leastconn, no limit".into(),
            Contender::NginxUnlimited => "nginx least_conn, no limit".into(),
            Contender::NginxMaxConns => "nginx least_conn + max_conns=4".into(),
        }
    }
}

fn start(contender: Contender, backends: &[Backend], peers: &Peers) -> Result<Server, String> {
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let apache = |settings: &str, member: &str| -> Result<Server, String> {
        let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, member)).collect();
        let body = format!("MaxKeepAliveRequests 0\n{}", balancer_block("app", "/", &members, settings));
        // Room for every client to wait: 2 processes of 64 threads.
        Ok(Server::Apache(Apache::start(ApacheConfig::new(&body).mpm(Mpm::Event).processes(2).threads(64))?))
    };
    let haproxy = |options: &str, lines: &[&str]| -> Result<Server, String> {
        let binary = peers.haproxy.as_deref().ok_or("haproxy is not installed")?;
        let mut config = HaproxyConfig::new("leastconn", &addrs).threads(2).server_options(options);
        for line in lines {
            config = config.backend_line(line);
        }
        Ok(Server::Peer(PeerProxy::haproxy(binary, &config)?))
    };
    let nginx = |params: &str| -> Result<Server, String> {
        let binary = peers.nginx.as_deref().ok_or("nginx is not installed")?;
        let config =
            NginxConfig::new("least_conn", &addrs).worker_processes(2).zone(true).server_params(params);
        Ok(Server::Peer(PeerProxy::nginx(binary, &config)?))
    };
    let timeout = QUEUE_TIMEOUT.as_secs();
    match contender {
        Contender::Queue => {
            apache(&format!("lbmethod=byinflight\n    LBMaxInflight 4\n    LBQueue timeout={timeout}s"), "")
        }
        Contender::Cap => apache("lbmethod=byinflight\n    LBMaxInflight 4", ""),
        Contender::HttpdTimeout => {
            apache(&format!("lbmethod=byinflight timeout={timeout}\n    LBMaxInflight 4"), "")
        }
        Contender::Uncapped(method) => apache(&format!("lbmethod={method}"), ""),
        Contender::HaproxyQueue => haproxy("maxconn 4", &[&format!("timeout queue {timeout}s")]),
        Contender::HaproxyUnlimited => haproxy("", &[]),
        Contender::NginxUnlimited => nginx(""),
        Contender::NginxMaxConns => nginx("max_conns=4"),
    }
}

struct Run {
    contender: Contender,
    report: LoadReport,
    queue: Option<serde_json::Value>,
}

/// Pairs (a, b) with b sent over 5 ms after a and answered more than one service time before it.
fn overtakes(report: &LoadReport) -> u64 {
    let mut sent: Vec<(Duration, Duration)> = report
        .outcomes
        .iter()
        .filter(|o| o.status == 200)
        .map(|o| (o.at.saturating_sub(o.latency), o.at))
        .collect();
    sent.sort();
    let slack = SERVICE_TIME + Duration::from_millis(5);
    let mut count = 0;
    // Only requests sent within the timeout of each other can overtake; the list is sorted by
    // sending time, so each looks ahead that far.
    for (i, &(sent_a, done_a)) in sent.iter().enumerate() {
        for &(sent_b, done_b) in &sent[i + 1..] {
            if sent_b > sent_a + QUEUE_TIMEOUT {
                break;
            }
            if sent_b > sent_a + Duration::from_millis(5) && done_b + slack < done_a {
                count += 1;
            }
        }
    }
    count
}

pub fn run(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let backends: Vec<Backend> = MEMBERS
        .iter()
        .map(|name| {
            Backend::start(BackendSpec::new(name).slots(SLOTS).delay(SERVICE_TIME).refuse_when_full())
                .map_err(|e| format!("cannot start backend {name}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut contenders = vec![
        Contender::Queue,
        Contender::Cap,
        Contender::HttpdTimeout,
        Contender::Uncapped("byrequests"),
        Contender::Uncapped("byinflight"),
    ];
    match &peers.haproxy {
        Some(binary) => {
            eprintln!("burst: {} ({})", binary.display(), version_line(binary, "-v").unwrap_or_default());
            contenders.extend([Contender::HaproxyQueue, Contender::HaproxyUnlimited]);
        }
        None => eprintln!("burst: haproxy not installed (apt-get install haproxy): skipping it"),
    }
    match &peers.nginx {
        Some(binary) => {
            eprintln!("burst: {} ({})", binary.display(), version_line(binary, "-v").unwrap_or_default());
            contenders.extend([Contender::NginxUnlimited, Contender::NginxMaxConns]);
        }
        None => eprintln!("burst: nginx not installed (apt-get install nginx): skipping it"),
    }
    let concurrency = options.concurrency(CONCURRENCY);
    let mut runs = Vec::new();
    for contender in contenders {
        check_interrupted()?;
        wait_backends_idle(&backends)?;
        eprint!("burst {} ... ", contender.label());
        let server = start(contender, &backends, &peers)?;
        // Warm up below capacity: every process and connection ready, nothing refused.
        run_load(&warm_up_load(8), server.addr(), server.pid())?;
        wait_backends_idle(&backends)?;
        for backend in &backends {
            backend.reset_stats();
        }
        let load = Load::new("/", concurrency, options.requests(1_000_000)).deadline(DURATION);
        let report = run_load(&load, server.addr(), server.pid())?;
        let queue = match &server {
            Server::Apache(apache) => apache.status().ok().map(|s| s["balancers"][0]["queue"].clone()),
            Server::Peer(_) => None,
        };
        eprintln!("{} requests in {:.1} s", report.outcomes.len(), report.elapsed.as_secs_f64());
        runs.push(Run { contender, report, queue });
        drop(server);
    }
    print_report(&runs, concurrency);
    Ok(())
}

fn print_report(runs: &[Run], concurrency: usize) {
    println!(
        "\n== burst: {} members x {SLOTS} slots at {} ms (503 at once when full), {concurrency} clients, {} s ==",
        MEMBERS.len(),
        SERVICE_TIME.as_millis(),
        DURATION.as_secs()
    );
    println!(
        "{:<52} {:>9} {:>8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>9}",
        "contender",
        "success",
        "served/s",
        "requests",
        "p50 ms",
        "p99 ms",
        "max ms",
        "over t+50",
        "overtakes"
    );
    for run in runs {
        let report = &run.report;
        let total = report.outcomes.len().max(1) as f64;
        let ok = report.outcomes.iter().filter(|o| o.status == 200).count();
        let late =
            report.outcomes.iter().filter(|o| o.latency > QUEUE_TIMEOUT + Duration::from_millis(50)).count();
        let max =
            report.outcomes.iter().filter(|o| o.status == 200).map(|o| o.latency).max().unwrap_or_default();
        println!(
            "{:<52} {:>8.2}% {:>8.0} {:>9} {:>8.1} {:>8.1} {:>9.1} {:>10} {:>9}",
            run.contender.label(),
            ok as f64 * 100.0 / total,
            ok as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.outcomes.len(),
            ms(report.percentile(50.0)),
            ms(report.percentile(99.0)),
            ms(max),
            late,
            overtakes(report),
        );
    }
    let haproxy_p99 =
        runs.iter().find(|r| r.contender == Contender::HaproxyQueue).map(|r| ms(r.report.percentile(99.0)));
    if let Some(queue) = runs.iter().find(|r| r.contender == Contender::Queue) {
        if let Some(theirs) = haproxy_p99 {
            println!(
                "p99 of the queue against HAProxy's: {:.2}x",
                ms(queue.report.percentile(99.0)) / theirs
            );
        }
        if let Some(q) = &queue.queue {
            println!(
                "the queue's own counts: joined {}, served {}, timed out {}, gone {}, full {}, peak {}, longest wait {:.3} s",
                q["joined"],
                q["served"],
                q["timed_out"],
                q["gone"],
                q["full"],
                q["peak"],
                q["wait_seconds_max"].as_f64().unwrap_or(0.0)
            );
        }
    }
    println!("statuses per contender:");
    for run in runs {
        println!("  {}: {:?}", run.contender.label(), run.report.per_status());
    }
}
