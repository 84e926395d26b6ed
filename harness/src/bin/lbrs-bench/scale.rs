//! `scale`: members from DNS. A real dnsmasq answers `app.test` (TTL 1 s) with the addresses
//! of the instances running now, backends on 127.0.0.2 to 127.0.0.7 on one port, each request
//! taking 20 ms; 16 clients in a closed loop. The same events for every contender:
//!
//! | at | event | the name has |
//! |---|---|---|
//! | 0 s | start | .2 .3 |
//! | 4 s | scale out 2 -> 5 | .2 .3 .4 .5 .6 |
//! | 10 s | scale in 5 -> 3 | .2 .3 .4 |
//! | 16 s | .4 replaced by .7 | .2 .3 .7 |
//! | 22 s | the DNS server stops for 30 s | (no answer) |
//! | 52 s | it answers again, and .5 is back | .2 .3 .5 .7 |
//! | 58 s | end | |
//!
//! Contenders: Apache `byinflight` with `LBDiscover`; HAProxy `leastconn` with `server-template`
//! and `resolvers`, with its default `hold` settings and with `hold` long enough for the outage;
//! nginx is not run: open source nginx follows a name with `server ... resolve` only since
//! 1.27.3, and Debian 12 has 1.22; the report says which version is installed.
//!
//! It prints per contender: requests, failed requests (overall and during the outage), and for
//! each event the time it took to follow it: until every new address had served a request,
//! and until a removed address got its last new request.

use crate::common::{Options, Peers, Server, check_interrupted};
use lbrs_harness::dns::Dnsmasq;
use lbrs_harness::peers::version_line;
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Load, LoadReport, Mpm, PeerProxy};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const SERVICE_TIME: Duration = Duration::from_millis(20);
const TTL: u32 = 1;
const DURATION: Duration = Duration::from_secs(58);
const INSTANCES: [u8; 6] = [2, 3, 4, 5, 6, 7];

/// (at, what, the addresses' last bytes; `None`: the DNS server stops).
const EVENTS: [(u64, &str, Option<&[u8]>); 5] = [
    (4, "scale out 2 -> 5", Some(&[2, 3, 4, 5, 6])),
    (10, "scale in 5 -> 3", Some(&[2, 3, 4])),
    (16, ".4 replaced by .7", Some(&[2, 3, 7])),
    (22, "DNS server stopped", None),
    (52, "DNS back, .5 back", Some(&[2, 3, 5, 7])),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Apache,
    HaproxyDefaultHold,
    HaproxyLongHold,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Apache => "apache byinflight + LBDiscover ttl-max=2s",
            Contender::HaproxyDefaultHold => "haproxy leastconn + server-template, hold valid 1s",
            Contender::HaproxyLongHold => "haproxy ... + hold valid 1s, others 300s",
        }
    }
}

fn hosts(lasts: &[u8]) -> Vec<(String, String)> {
    lasts.iter().map(|l| ("app.test".to_string(), format!("127.0.0.{l}"))).collect()
}

fn set_hosts(dns: &Dnsmasq, lasts: &[u8]) -> Result<(), String> {
    let entries = hosts(lasts);
    let pairs: Vec<(&str, &str)> = entries.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
    dns.set_hosts(&pairs)
}

fn start(contender: Contender, port: u16, dns: SocketAddr, peers: &Peers) -> Result<Server, String> {
    match contender {
        Contender::Apache => {
            let body = format!(
                "<Proxy \"balancer://app\">\n    LBDiscover \"http://app.test:{port}\" resolver={dns} ttl-max=2s \
                 retry=1\n    ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n"
            );
            Ok(Server::Apache(Apache::start(
                ApacheConfig::new(&body).mpm(Mpm::Event).processes(2).threads(32),
            )?))
        }
        Contender::HaproxyDefaultHold | Contender::HaproxyLongHold => {
            let binary = peers.haproxy.as_deref().ok_or("haproxy is not installed")?;
            let hold = match contender {
                Contender::HaproxyLongHold => {
                    "    hold valid 1s\n    hold other 300s\n    hold refused 300s\n    \
                                               hold nx 300s\n    hold timeout 300s\n    hold obsolete 0s\n"
                }
                _ => "    hold valid 1s\n",
            };
            let render = |listen: u16| {
                format!(
                    "global\n    nbthread 2\n    maxconn 4096\n\n\
                     resolvers dns\n    nameserver local {dns}\n    accepted_payload_size 1232\n    \
                     timeout resolve 1s\n    timeout retry 1s\n    resolve_retries 3\n{hold}\n\
                     defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    \
                     timeout server 60s\n    timeout http-keep-alive 60s\n\n\
                     frontend bench\n    bind 127.0.0.1:{listen}\n    default_backend app\n\n\
                     backend app\n    balance leastconn\n    \
                     server-template m 8 app.test:{port} resolvers dns init-addr none resolve-prefer ipv4\n"
                )
            };
            Ok(Server::Peer(PeerProxy::haproxy_from(binary, render)?))
        }
    }
}

/// Whether the installed nginx has `server ... resolve` (open source 1.27.3 and later).
fn nginx_resolves(peers: &Peers) -> Option<String> {
    let binary = peers.nginx.as_deref()?;
    let version = version_line(binary, "-v")?;
    let number = version.split('/').nth(1)?.split_whitespace().next()?.to_string();
    let parts: Vec<u32> = number.split('.').filter_map(|p| p.parse().ok()).collect();
    let new_enough = parts.as_slice() >= [1, 27, 3].as_slice();
    Some(format!("{version}{}", if new_enough { "" } else { " (no `resolve` on upstream servers)" }))
}

/// Each backend's request count, sampled every 10 ms while the load runs.
struct Timeline {
    samples: Vec<(Duration, [u64; INSTANCES.len()])>,
}

impl Timeline {
    /// When backend `last` first served a request after `after`, if it did.
    fn first_after(&self, last: u8, after: Duration) -> Option<Duration> {
        let i = INSTANCES.iter().position(|&l| l == last)?;
        let base = self.samples.iter().rev().find(|(t, _)| *t <= after).map_or(0, |(_, c)| c[i]);
        self.samples.iter().find(|(t, c)| *t > after && c[i] > base).map(|(t, _)| t.saturating_sub(after))
    }

    /// When backend `last` last got a new request after `after` and before `until` (0 if none).
    fn last_after(&self, last: u8, after: Duration, until: Duration) -> Duration {
        let Some(i) = INSTANCES.iter().position(|&l| l == last) else { return Duration::ZERO };
        let window: Vec<&(Duration, [u64; INSTANCES.len()])> =
            self.samples.iter().filter(|(t, _)| *t > after && *t <= until).collect();
        let mut last_rise = None;
        for pair in window.windows(2) {
            if pair[1].1[i] > pair[0].1[i] {
                last_rise = Some(pair[1].0);
            }
        }
        last_rise.map_or(Duration::ZERO, |t| t.saturating_sub(after))
    }
}

struct Run {
    contender: Contender,
    report: LoadReport,
    timeline: Timeline,
}

pub fn run(options: &Options) -> Result<(), String> {
    let peers = Peers::find();
    let port = (0..100)
        .find_map(|_| {
            let probe = std::net::TcpListener::bind("127.0.0.2:0").ok()?;
            let port = probe.local_addr().ok()?.port();
            drop(probe);
            INSTANCES
                .iter()
                .all(|l| std::net::TcpListener::bind(format!("127.0.0.{l}:{port}")).is_ok())
                .then_some(port)
        })
        .ok_or("no port free on 127.0.0.2-7")?;
    let backends: Vec<Backend> = INSTANCES
        .iter()
        .map(|l| {
            let addr: SocketAddr = format!("127.0.0.{l}:{port}").parse().map_err(|e| format!("{e}"))?;
            Backend::start_on(addr, BackendSpec::new(&format!("app{l}")).delay(SERVICE_TIME))
                .map_err(|e| format!("cannot start backend .{l}: {e}"))
        })
        .collect::<Result<_, String>>()?;
    let mut contenders = vec![Contender::Apache];
    match &peers.haproxy {
        Some(binary) => {
            eprintln!("scale: {} ({})", binary.display(), version_line(binary, "-v").unwrap_or_default());
            contenders.extend([Contender::HaproxyDefaultHold, Contender::HaproxyLongHold]);
        }
        None => eprintln!("scale: haproxy not installed (apt-get install haproxy): skipping it"),
    }
    let nginx_note = match nginx_resolves(&peers) {
        Some(version) if !version.contains("no `resolve`") => {
            format!("nginx: {version} has `resolve`, but this scenario does not run it yet")
        }
        Some(version) => format!("nginx: {version}: not comparable, skipped"),
        None => "nginx: not installed".to_string(),
    };
    eprintln!("scale: {nginx_note}");
    let clients = options.concurrency(CLIENTS);
    let mut runs = Vec::new();
    for contender in contenders {
        check_interrupted()?;
        eprint!("scale {} ... ", contender.label());
        let mut dns = Dnsmasq::start(&[], &[], TTL)?;
        set_hosts(&dns, &[2, 3])?;
        // dnsmasq reads its hosts file again on SIGHUP: give it a moment before the start.
        thread::sleep(Duration::from_millis(300));
        let server = start(contender, port, dns.addr(), &peers)?;
        // HAProxy resolves its templates after it starts: wait until it serves.
        let ready = lbrs_harness::wait_for(Duration::from_secs(10), || {
            lbrs_harness::client::get(server.addr(), "/").is_ok_and(|r| r.status == 200)
        });
        if !ready {
            return Err(format!("{} does not serve", contender.label()));
        }
        for backend in &backends {
            backend.reset_stats();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let sampler = {
            let stop = Arc::clone(&stop);
            let counters: Vec<_> = backends.iter().map(|b| b.counter()).collect();
            thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < DURATION + Duration::from_secs(10)
                {
                    let mut counts = [0u64; INSTANCES.len()];
                    for (count, counter) in counts.iter_mut().zip(&counters) {
                        *count = counter();
                    }
                    samples.push((started.elapsed(), counts));
                    thread::sleep(Duration::from_millis(10));
                }
                Timeline { samples }
            })
        };
        let addr = server.addr();
        let load = thread::spawn(move || {
            Load::new("/", clients, 10_000_000).deadline(DURATION).timeout(Duration::from_secs(10)).run(addr)
        });
        for (at, _, lasts) in EVENTS {
            let when = started + Duration::from_secs(at);
            thread::sleep(when.saturating_duration_since(Instant::now()));
            match lasts {
                Some(lasts) => {
                    if at == 52 {
                        dns.start_again()?;
                    }
                    set_hosts(&dns, lasts)?;
                }
                None => dns.stop(),
            }
        }
        let report = load.join().map_err(|_| "the load thread panicked")?;
        stop.store(true, Ordering::Relaxed);
        let timeline = sampler.join().map_err(|_| "the sampler panicked")?;
        eprintln!("{} requests in {:.1} s", report.outcomes.len(), report.elapsed.as_secs_f64());
        runs.push(Run { contender, report, timeline });
        drop(server);
        drop(dns);
    }
    print_report(&runs, clients, &nginx_note);
    Ok(())
}

fn seconds(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn print_report(runs: &[Run], clients: usize, nginx_note: &str) {
    println!(
        "\n== scale: members from DNS (TTL {TTL} s), backends at {} ms, {clients} clients, {} s ==",
        SERVICE_TIME.as_millis(),
        DURATION.as_secs()
    );
    println!("{:<52} {:>9} {:>7} {:>15}", "contender", "requests", "failed", "failed in outage");
    for run in runs {
        let outage = (Duration::from_secs(22), Duration::from_secs(52));
        let failed = run.report.outcomes.iter().filter(|o| o.status != 200);
        let during =
            failed.clone().filter(|o| o.at >= outage.0 && o.at <= outage.1 + Duration::from_secs(1)).count();
        println!(
            "{:<52} {:>9} {:>7} {:>15}",
            run.contender.label(),
            run.report.outcomes.len(),
            failed.count(),
            during
        );
    }
    println!(
        "\ntime to follow each change (s): new = until every new address served; gone = last new request to a removed one"
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "contender", "out: new", "in: gone", "repl: new", "repl: gone", "outage: ok", "back: new"
    );
    for run in runs {
        let t = &run.timeline;
        let at = |s: u64| Duration::from_secs(s);
        let worst_new = |lasts: &[u8], after: u64| -> String {
            let times: Vec<Option<Duration>> = lasts.iter().map(|&l| t.first_after(l, at(after))).collect();
            if times.iter().any(Option::is_none) {
                "never".into()
            } else {
                seconds(times.into_iter().flatten().max().unwrap_or_default())
            }
        };
        let worst_gone = |lasts: &[u8], after: u64, until: u64| -> String {
            seconds(lasts.iter().map(|&l| t.last_after(l, at(after), at(until))).max().unwrap_or_default())
        };
        // During the outage, did .2 .3 .7 keep serving to the end of it?
        let kept = [2u8, 3, 7].iter().all(|&l| t.last_after(l, at(22), at(52)) > Duration::from_secs(28));
        println!(
            "{:<52} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            run.contender.label(),
            worst_new(&[4, 5, 6], 4),
            worst_gone(&[5, 6], 10, 16),
            worst_new(&[7], 16),
            worst_gone(&[4], 16, 22),
            if kept { "yes" } else { "no" },
            worst_new(&[5], 52),
        );
    }
    let per_backend: Vec<(String, BTreeMap<String, usize>)> = runs
        .iter()
        .map(|run| {
            let mut counts = BTreeMap::new();
            for o in &run.report.outcomes {
                *counts
                    .entry(o.backend.clone().unwrap_or_else(|| format!("status {}", o.status)))
                    .or_insert(0) += 1;
            }
            (run.contender.label().to_string(), counts)
        })
        .collect();
    println!("\nanswers per backend:");
    for (label, counts) in per_backend {
        println!("  {label}: {counts:?}");
    }
    println!("{nginx_note}");
}
