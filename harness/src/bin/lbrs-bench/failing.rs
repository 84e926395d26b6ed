//! `failing`, `bad-url` and `pinned`: members that fail without going down.
//!
//! - `failing`: four members of 8 slots at 10 ms, 32 clients; from 5 s to 15 s of a 25 s run one
//!   member (`failing`) stays up but answers every request with an instant 500. Success while
//!   it fails, its share of the requests meanwhile (counted at the backends: a proxy that
//!   resends a failed request shows the client the second member's answer), how soon it is
//!   taken out, and how soon it has its share back once it serves again.
//! - `bad-url`: the same four members, nobody failing, but one request in 100 goes to a URL
//!   every member answers with 500 (an application bug). Success of the other requests,
//!   throughput and p99: a passive check that takes members out for it costs everyone.
//! - `pinned`: eight members of 16 slots at 20 ms, 32 clients that give up after 1 s; from 5 s to
//!   15 s of a 20 s run one member (`pinned`) takes 2 s per answer. Success, p99 before anything
//!   happens, and how many requests the hung member was sent.
//!
//! Contenders: each of this module's methods with and without `LBOutlierDetection on`, httpd's
//! `byrequests` (and `byinflight`) with `failonstatus=500`, HAProxy `leastconn` with `observe
//! layer7 error-limit 5 on-error mark-down` (which needs `check`: a TCP check every 2 s brings a
//! marked-down server back), and nginx `least_conn` with `max_fails=1 fail_timeout=10s` and
//! `proxy_next_upstream error timeout http_500` (a 500 is resent to another server).

use crate::common::{
    Options, Peers, Server, check_interrupted, run_load, sleep_until, wait_backends_idle, warm_up_load,
};
use crate::windows::{ms_or_dash, percentile_between};
use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, HaproxyConfig, Load, LoadReport, Mpm, NginxConfig, PeerProxy,
    balancer_block,
};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

/// A server, and how it treats members that fail.
#[derive(Clone, Copy)]
enum Setup {
    /// apache2 (event MPM): `lbmethod=`, more `ProxySet` parameters, and lines inside the
    /// `<Proxy>` section.
    Apache { label: &'static str, method: &'static str, proxyset: &'static str, section: &'static str },
    /// HAProxy `leastconn`, with these `server` options.
    Haproxy { label: &'static str, server: &'static str },
    /// nginx `least_conn`, with these `server` parameters and `location` directives.
    Nginx { label: &'static str, server: &'static str, location: &'static [&'static str] },
}

const DETECTION: &str = "LBOutlierDetection on";
const HASH_KEY: &str = "LBHashKey \"%{HTTP:X-User}\"";
const HAPROXY_OBSERVE: &str = "check inter 2s observe layer7 error-limit 5 on-error mark-down";
const NGINX_SERVER: &str = "max_fails=1 fail_timeout=10s";
const NGINX_RESEND: &[&str] = &["proxy_next_upstream error timeout http_500"];

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Apache { label, .. } | Setup::Haproxy { label, .. } | Setup::Nginx { label, .. } => label,
        }
    }

    fn start(self, backends: &[Backend], peers: &Peers) -> Result<Server, String> {
        let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
        match self {
            Setup::Apache { method, proxyset, section, .. } => {
                let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, "")).collect();
                let block = balancer_block("app", "/", &members, &format!("lbmethod={method} {proxyset}"));
                let block = block.replacen("</Proxy>", &format!("    {section}\n</Proxy>"), 1);
                let body = format!("MaxKeepAliveRequests 0\n{block}");
                Ok(Server::Apache(Apache::start(ApacheConfig::new(&body).mpm(Mpm::Event))?))
            }
            Setup::Haproxy { server, .. } => {
                let binary = peers.haproxy.as_deref().ok_or("haproxy is not installed")?;
                let config = HaproxyConfig::new("leastconn", &addrs).threads(2).server_options(server);
                Ok(Server::Peer(PeerProxy::haproxy(binary, &config)?))
            }
            Setup::Nginx { server, location, .. } => {
                let binary = peers.nginx.as_deref().ok_or("nginx is not installed")?;
                let mut config =
                    NginxConfig::new("least_conn", &addrs).worker_processes(2).server_params(server);
                for line in location {
                    config = config.location_line(line);
                }
                Ok(Server::Peer(PeerProxy::nginx(binary, &config)?))
            }
        }
    }

    fn installed(self, peers: &Peers) -> bool {
        match self {
            Setup::Apache { .. } => true,
            Setup::Haproxy { .. } => peers.haproxy.is_some(),
            Setup::Nginx { .. } => peers.nginx.is_some(),
        }
    }
}

/// Every contender of `failing` and `bad-url`.
fn failure_contenders() -> Vec<Setup> {
    let mut setups = Vec::new();
    for (method, extra) in [("byweight", ""), ("byinflight", ""), ("bylatency", ""), ("byhash", HASH_KEY)] {
        let plain: &'static str = Box::leak(method.to_string().into_boxed_str());
        let detected: &'static str = Box::leak(format!("{method} +detection").into_boxed_str());
        let both: &'static str = Box::leak(format!("{DETECTION}\n    {extra}").into_boxed_str());
        setups.push(Setup::Apache { label: plain, method, proxyset: "", section: extra });
        setups.push(Setup::Apache { label: detected, method, proxyset: "", section: both });
    }
    // The default ejection (10 s) is as long as the failure: this one shows a return.
    setups.push(Setup::Apache {
        label: "byinflight +detection 2s",
        method: "byinflight",
        proxyset: "",
        section: "LBOutlierDetection on eject=2s",
    });
    setups.push(Setup::Apache { label: "byrequests", method: "byrequests", proxyset: "", section: "" });
    setups.push(Setup::Apache {
        label: "byrequests failonstatus",
        method: "byrequests",
        proxyset: "failonstatus=500",
        section: "",
    });
    setups.push(Setup::Apache {
        label: "byinflight failonstatus",
        method: "byinflight",
        proxyset: "failonstatus=500",
        section: "",
    });
    setups.push(Setup::Haproxy { label: "haproxy leastconn", server: "" });
    setups.push(Setup::Haproxy { label: "haproxy +observe", server: HAPROXY_OBSERVE });
    setups.push(Setup::Nginx { label: "nginx least_conn", server: "", location: &[] });
    setups.push(Setup::Nginx { label: "nginx +resend", server: NGINX_SERVER, location: NGINX_RESEND });
    setups
}

/// The load of `failing` and `bad-url`: keyed by user for `byhash` (1000 users).
fn keyed_load(concurrency: usize, run: Duration) -> Load {
    Load::new("/", concurrency, u64::MAX)
        .deadline(run)
        .random_header("X-User", 17, |r| format!("user-{}", r % 1000))
}

/// Requests each backend received, sampled through a run.
struct Samples {
    /// (time into the load, requests of the watched member, requests of all members).
    points: Vec<(Duration, u64, u64)>,
}

impl Samples {
    fn at(&self, t: Duration) -> (u64, u64) {
        self.points.iter().rev().find(|p| p.0 <= t).map_or((0, 0), |p| (p.1, p.2))
    }

    /// The member's share of the requests between `from` and `to`.
    fn share(&self, from: Duration, to: Duration) -> f64 {
        let (m0, a0) = self.at(from);
        let (m1, a1) = self.at(to);
        (m1 - m0) as f64 / (a1 - a0).max(1) as f64
    }

    /// The end of the first window of `width` from `since` on in which the member's share is
    /// below (`below`) or at least (`!below`) `share`, from `since`.
    fn first(&self, since: Duration, width: Duration, share: f64, below: bool) -> Option<Duration> {
        self.points
            .iter()
            .map(|p| p.0)
            .filter(|&t| t >= since)
            .find(|&t| {
                let s = self.share(t, t + width);
                self.points.last().is_some_and(|last| last.0 >= t + width)
                    && if below { s < share } else { s >= share }
            })
            .map(|t| t + width - since)
    }
}

/// Runs `load` against `server`, calling `act(true)` at `from` and `act(false)` at `to` into
/// the load, and sampling `watched`'s and every backend's request counts every 50 ms.
fn drive(
    server: &Server,
    load: &Load,
    backends: &[Backend],
    watched: usize,
    (from, to): (Duration, Duration),
    act: impl Fn(&[Backend], bool),
) -> Result<(LoadReport, Samples), String> {
    let count = |backends: &[Backend]| -> (u64, u64) {
        (backends[watched].stats().requests, backends.iter().map(|b| b.stats().requests).sum())
    };
    thread::scope(|scope| {
        let running = scope.spawn(|| run_load(load, server.addr(), server.pid()));
        let start = Instant::now();
        let (mut done_from, mut done_to) = (false, false);
        let mut points = Vec::new();
        while !running.is_finished() {
            let t = start.elapsed();
            if !done_from && t >= from {
                act(backends, true);
                done_from = true;
            }
            if !done_to && t >= to {
                act(backends, false);
                done_to = true;
            }
            let (m, a) = count(backends);
            points.push((t, m, a));
            sleep_until(start + t + Duration::from_millis(50));
            check_interrupted()?;
        }
        if !done_to {
            act(backends, false);
        }
        let report = running.join().map_err(|_| "the load generator panicked".to_string())??;
        Ok((report, Samples { points }))
    })
}

fn success_between(report: &LoadReport, from: Duration, to: Duration) -> (u64, u64) {
    let inside: Vec<_> = report.outcomes.iter().filter(|o| o.at >= from && o.at < to).collect();
    (inside.iter().filter(|o| o.status == 200).count() as u64, inside.len() as u64)
}

fn percent(ok: u64, all: u64) -> String {
    if all == 0 { "-".into() } else { format!("{:.2}%", ok as f64 * 100.0 / all as f64) }
}

fn seconds_or(label: Option<Duration>, otherwise: &str) -> String {
    label.map_or(otherwise.to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
}

const FAIL_AT: Duration = Duration::from_secs(5);
const HEAL_AT: Duration = Duration::from_secs(15);

pub fn run_failing(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let run = Duration::from_secs(25);
    let concurrency = options.concurrency(32);
    let names = ["f1", "f2", "f3", "failing"];
    let backends: Vec<Backend> = names
        .iter()
        .map(|n| {
            Backend::start(BackendSpec::new(n).slots(8).delay(Duration::from_millis(10)))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    eprintln!(
        "failing: {} s per run, {concurrency} clients, 4 members of 8 slots at 10 ms; failing answers 500 from {} s to {} s",
        run.as_secs(),
        FAIL_AT.as_secs(),
        HEAL_AT.as_secs()
    );
    println!(
        "\nfailing: one member of four answering every request with an instant 500 from {} s to {} s of {} s, {concurrency} clients",
        FAIL_AT.as_secs(),
        HEAL_AT.as_secs(),
        run.as_secs()
    );
    println!(
        "{:<26} {:>9} {:>13} {:>11} {:>11} {:>12} {:>9}",
        "contender", "requests", "success fail", "its share", "out after", "back after", "p99 fail"
    );
    for setup in failure_contenders().into_iter().filter(|s| s.installed(&peers)) {
        for round in 1..=options.rounds(1) {
            wait_backends_idle(&backends)?;
            let server = setup.start(&backends, &peers)?;
            run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
            eprint!("failing {} round {round} ... ", setup.label());
            let load = keyed_load(concurrency, run);
            let (report, samples) =
                drive(&server, &load, &backends, 3, (FAIL_AT, HEAL_AT), |b, on| b[3].set_failing(on))?;
            eprintln!("{} requests in {:.1} s", report.outcomes.len(), report.elapsed.as_secs_f64());
            let (ok, all) = success_between(&report, FAIL_AT, HEAL_AT);
            let out = samples.first(FAIL_AT, Duration::from_millis(200), 0.05 * 0.25, true);
            let back = samples.first(HEAL_AT, Duration::from_secs(1), 0.8 * 0.25, false);
            println!(
                "{:<26} {:>9} {:>13} {:>10.2}% {:>11} {:>12} {:>9}",
                setup.label(),
                report.outcomes.len(),
                percent(ok, all),
                samples.share(FAIL_AT, HEAL_AT) * 100.0,
                seconds_or(out, "never"),
                seconds_or(back, "not back"),
                ms_or_dash(percentile_between(&report, FAIL_AT, HEAL_AT, 99.0)),
            );
        }
    }
    println!(
        "its share: of the requests the backends received while it failed (a resent request counts at both); \
         out after: the end of the first 200 ms after the failure began in which it got under 5% of its fair \
         share; back after: the end of the first second after it healed in which it got 80% of its fair share"
    );
    Ok(())
}

pub fn run_bad_url(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let run = Duration::from_secs(15);
    let concurrency = options.concurrency(32);
    let names = ["u1", "u2", "u3", "u4"];
    let backends: Vec<Backend> = names
        .iter()
        .map(|n| {
            Backend::start(BackendSpec::new(n).slots(8).delay(Duration::from_millis(10)))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    eprintln!(
        "bad-url: {} s per run, {concurrency} clients, one request in 100 to a URL every member fails",
        run.as_secs()
    );
    println!(
        "\nbad-url: 4 members of 8 slots at 10 ms, {concurrency} clients, one request in 100 to /__error (500 on every member), {} s",
        run.as_secs()
    );
    println!(
        "{:<26} {:>9} {:>15} {:>8} {:>9} {:>11}",
        "contender", "requests", "other requests", "req/s", "p99", "members out"
    );
    for setup in failure_contenders().into_iter().filter(|s| s.installed(&peers)) {
        for round in 1..=options.rounds(1) {
            wait_backends_idle(&backends)?;
            let server = setup.start(&backends, &peers)?;
            run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
            eprint!("bad-url {} round {round} ... ", setup.label());
            let load = keyed_load(concurrency, run).every_nth_to(100, "/__error");
            let report = run_load(&load, server.addr(), server.pid())?;
            eprintln!("{} requests in {:.1} s", report.outcomes.len(), report.elapsed.as_secs_f64());
            let bad = report.outcomes.len() as u64 / 100;
            let others = report.outcomes.len() as u64 - bad;
            let ok = report.count_status(200);
            let healthy: Vec<Duration> =
                report.outcomes.iter().filter(|o| o.status == 200).map(|o| o.latency).collect();
            let mut sorted = healthy.clone();
            let p99 = lbrs_harness::client::percentile(&mut sorted, 99.0);
            let out = match (&server, setup) {
                (Server::Apache(apache), Setup::Apache { section, .. }) if section.contains(DETECTION) => {
                    ejections(apache).to_string()
                }
                _ => "-".into(),
            };
            println!(
                "{:<26} {:>9} {:>15} {:>8.0} {:>9} {:>11}",
                setup.label(),
                report.outcomes.len(),
                percent(ok.min(others), others),
                ok as f64 / report.elapsed.as_secs_f64(),
                ms_or_dash(p99),
                out
            );
        }
    }
    println!(
        "other requests: the share of the requests not to /__error that were served; members out: ejections \
         over the run (LBOutlierDetection only; failonstatus's cost shows in req/s and p99)"
    );
    Ok(())
}

/// Ejections on the status page (`LBOutlierDetection`).
fn ejections(apache: &Apache) -> u64 {
    let Ok(status) = apache.status() else { return 0 };
    let members = status["balancers"][0]["members"].as_array().cloned().unwrap_or_default();
    members.iter().map(|m| m["ejections"].as_u64().unwrap_or(0)).sum()
}

pub fn run_pinned(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let run = Duration::from_secs(20);
    let (pin_at, unpin_at) = (Duration::from_secs(5), Duration::from_secs(15));
    let concurrency = options.concurrency(32);
    let names = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "pinned"];
    let backends: Vec<Backend> = names
        .iter()
        .map(|n| {
            Backend::start(BackendSpec::new(n).slots(16).delay(Duration::from_millis(20)))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let setups = [
        Setup::Apache { label: "byinflight", method: "byinflight", proxyset: "timeout=5", section: "" },
        Setup::Apache { label: "bylatency", method: "bylatency", proxyset: "timeout=5", section: "" },
        Setup::Apache {
            label: "bylatency +detection",
            method: "bylatency",
            proxyset: "timeout=5",
            section: DETECTION,
        },
        Setup::Haproxy { label: "haproxy leastconn", server: "" },
        Setup::Nginx { label: "nginx least_conn", server: "", location: &[] },
    ];
    eprintln!(
        "pinned: {} s per run, {concurrency} clients giving up after 1 s; pinned at 2 s from 5 s to 15 s",
        run.as_secs()
    );
    println!(
        "\npinned: 8 members of 16 slots at 20 ms, one answering in 2 s from {} s to {} s of {} s, {concurrency} clients giving up after 1 s",
        pin_at.as_secs(),
        unpin_at.as_secs(),
        run.as_secs()
    );
    println!(
        "{:<26} {:>9} {:>10} {:>13} {:>13} {:>14} {:>11}",
        "contender", "requests", "success", "success pin", "p99 first 5s", "sent to pinned", "p99 after"
    );
    for setup in setups.into_iter().filter(|s| s.installed(&peers)) {
        for round in 1..=options.rounds(1) {
            wait_backends_idle(&backends)?;
            let server = setup.start(&backends, &peers)?;
            run_load(&warm_up_load(concurrency), server.addr(), server.pid())?;
            eprint!("pinned {} round {round} ... ", setup.label());
            let load = Load {
                timeout: Duration::from_secs(1),
                ..Load::new("/", concurrency, u64::MAX).deadline(run)
            };
            let (report, samples) = drive(&server, &load, &backends, 7, (pin_at, unpin_at), |b, on| {
                b[7].set_delay(Duration::from_millis(if on { 2000 } else { 20 }))
            })?;
            eprintln!("{} requests in {:.1} s", report.outcomes.len(), report.elapsed.as_secs_f64());
            let (ok, all) = (report.count_status(200), report.outcomes.len() as u64);
            let (ok_pin, all_pin) = success_between(&report, pin_at, unpin_at + Duration::from_secs(2));
            let (sent0, _) = samples.at(pin_at);
            let (sent1, _) = samples.at(unpin_at);
            println!(
                "{:<26} {:>9} {:>10} {:>13} {:>13} {:>14} {:>11}",
                setup.label(),
                all,
                percent(ok, all),
                percent(ok_pin, all_pin),
                ms_or_dash(percentile_between(&report, Duration::ZERO, pin_at, 99.0)),
                sent1 - sent0,
                ms_or_dash(percentile_between(&report, unpin_at + Duration::from_secs(2), run, 99.0)),
            );
        }
    }
    println!(
        "success pin: requests sent from the pin to 2 s after it ends; sent to pinned: requests the hung member \
         received while it hung"
    );
    Ok(())
}
