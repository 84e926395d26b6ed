//! `LBOutlierDetection` and `bylatency`'s reading of errors and stalls, through real apache2
//! (event and prefork) and real backends: a member that stays up but answers every request
//! with an instant 500, a URL every member fails, a member that hangs.

use lbrs_harness::{
    Apache, ApacheConfig, Backend, Load, LoadReport, Mpm, app_server, balancer_block, wait_for,
};
use std::thread;
use std::time::Duration;

/// Four members of 8 slots at 5 ms.
fn four() -> [Backend; 4] {
    [app_server("a", 8, 5), app_server("b", 8, 5), app_server("c", 8, 5), app_server("d", 8, 5)]
}

fn block(name: &str, path: &str, backends: &[Backend], proxyset: &str, extra: &str) -> String {
    let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let mut block = balancer_block(name, path, &members, proxyset);
    if !extra.is_empty() {
        // Inside the <Proxy> section, before its end.
        block = block.replacen("</Proxy>", &format!("    {extra}\n</Proxy>"), 1);
    }
    block
}

/// A server under `mpm`, with enough prefork processes for the 16 clients.
fn config(body: &str, mpm: Mpm) -> ApacheConfig {
    let config = ApacheConfig::new(body).mpm(mpm);
    if mpm == Mpm::Prefork { config.processes(20) } else { config }
}

/// The outcomes that started between `from` and `to` into the load.
fn between(report: &LoadReport, from: Duration, to: Duration) -> Vec<&lbrs_harness::client::Outcome> {
    report.outcomes.iter().filter(|o| o.at >= from && o.at < to).collect()
}

fn success(outcomes: &[&lbrs_harness::client::Outcome]) -> f64 {
    outcomes.iter().filter(|o| o.status == 200).count() as f64 / outcomes.len().max(1) as f64
}

fn share(outcomes: &[&lbrs_harness::client::Outcome], name: &str) -> f64 {
    outcomes.iter().filter(|o| o.backend.as_deref() == Some(name)).count() as f64
        / outcomes.len().max(1) as f64
}

/// Something done to the backends at a moment into the load.
type Event<'a> = (Duration, &'a (dyn Fn(&[Backend]) + Sync));

/// Runs `load` while `events` act on the backends at the given times into the load.
fn run_with(apache: &Apache, load: Load, backends: &[Backend], events: &[Event]) -> LoadReport {
    let addr = apache.addr();
    thread::scope(|scope| {
        let running = scope.spawn(|| load.run(addr));
        let mut elapsed = Duration::ZERO;
        for (at, event) in events {
            thread::sleep(at.saturating_sub(elapsed));
            elapsed = *at;
            event(backends);
        }
        running.join().unwrap()
    })
}

/// A member that fails fast is ejected within a few requests, stays out while it fails (its
/// ejections growing), and takes its share again once it heals and its ejection ends; the
/// status page, the metrics and the error log say so.
fn ejection_and_return_under(mpm: Mpm) {
    let b = four();
    let body = block(
        "app",
        "/",
        &b,
        "lbmethod=byinflight",
        "LBOutlierDetection on eject=1s max-eject=2s\n    LBSlowStart 1s",
    );
    let apache = Apache::start(config(&body, mpm)).unwrap();
    let load = Load::new("/", 16, 1_000_000).deadline(Duration::from_secs(8));
    let fail = |b: &[Backend]| b[3].set_failing(true);
    let heal = |b: &[Backend]| b[3].set_failing(false);
    let (fail_at, heal_at) = (Duration::from_millis(1500), Duration::from_millis(4500));
    let addr = apache.addr();
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(addr));
        thread::sleep(fail_at);
        fail(&b);
        // While it fails: ejected, why, for how long; in the metrics too.
        thread::sleep(Duration::from_millis(700));
        let status = apache.member_status("balancer://app", &b[3].url()).unwrap();
        assert_eq!(status["ejected"], true, "{status}");
        assert_eq!(status["ejection_reason"], "consecutive-failures", "{status}");
        assert!(status["ejection_seconds_left"].as_f64().is_some_and(|s| s > 0.0 && s <= 2.0), "{status}");
        let metrics = apache.get("/lb-status?format=prometheus").unwrap().text();
        assert!(
            metrics.lines().any(|l| l.starts_with("lbrs_member_ejected{server=")
                && l.contains(&b[3].url())
                && l.ends_with(" 1")),
            "{metrics}"
        );
        thread::sleep(heal_at - fail_at - Duration::from_millis(700));
        heal(&b);
        running.join().unwrap()
    });
    let window = between(&report, fail_at, heal_at);
    let ok = success(&window);
    let d = share(&window, "d");
    eprintln!(
        "{}: while d fails: {:.2}% success of {}, d's share {:.2}%; per status {:?}",
        mpm.name(),
        ok * 100.0,
        window.len(),
        d * 100.0,
        report.per_status()
    );
    assert!(ok >= 0.99, "success while d fails: {:.2}%", ok * 100.0);
    assert!(d < 0.02, "d's share while it fails: {:.2}%", d * 100.0);
    // Healed at 4.5 s, its last ejection (2 s at most) over by 6.5 s: its share is back in the
    // last second (slow start ramps it over 1 s).
    let last = between(&report, Duration::from_millis(7000), Duration::from_secs(8));
    assert!(share(&last, "d") > 0.12, "d's share in the last second: {:.2}", share(&last, "d"));
    assert!(success(&last) == 1.0);
    let status = apache.member_status("balancer://app", &b[3].url()).unwrap();
    assert_eq!(status["ejected"], false, "{status}");
    assert!(
        status["ejections"].as_u64().is_some_and(|n| n >= 2),
        "ejected again while it still failed: {status}"
    );
    let log = apache.error_log();
    let first = format!("member {} ejected for 1 s: ", b[3].url());
    assert!(log.lines().any(|l| l.contains(&first) && l.contains(" failures in a row")), "{log}");
    assert!(log.contains(&format!("member {} is back from its ejection", b[3].url())), "{log}");
    for healthy in &b[..3] {
        let status = apache.member_status("balancer://app", &healthy.url()).unwrap();
        assert_eq!(status["ejections"], 0, "{status}");
    }
}

#[test]
fn a_member_that_fails_fast_is_ejected_and_returns_event() {
    ejection_and_return_under(Mpm::Event);
}

#[test]
fn a_member_that_fails_fast_is_ejected_and_returns_prefork() {
    ejection_and_return_under(Mpm::Prefork);
}

/// Three of four members fail: no more than `max-ejected` (50%: two) are out at once, and the
/// third keeps being offered requests.
#[test]
fn no_more_than_max_ejected_are_out_at_once() {
    let b = four();
    for failing in &b[1..] {
        failing.set_failing(true);
    }
    let body = block("app", "/", &b, "lbmethod=byweight", "LBOutlierDetection on eject=30s");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let report = Load::new("/", 8, 2_000).deadline(Duration::from_secs(5)).run(apache.addr());
    let ejected: Vec<bool> = b
        .iter()
        .map(|m| apache.member_status("balancer://app", &m.url()).unwrap()["ejected"].as_bool().unwrap())
        .collect();
    eprintln!("ejected: {ejected:?}, per backend {:?}", report.per_backend());
    assert_eq!(ejected.iter().filter(|&&e| e).count(), 2, "{ejected:?}");
    assert!(!ejected[0], "the healthy member is never ejected");
    let spared = ejected.iter().position(|e| !e).filter(|&i| i > 0).or_else(|| (1..4).find(|&i| !ejected[i]));
    let spared = &b[spared.unwrap()];
    assert!(report.count_backend(spared.name()) > 50, "the third failing member is still offered requests");
    assert!(apache.error_log().contains("max-ejected members are ejected already"), "the log says why");
}

/// One URL every member answers with 500 (an application bug): about 1% of the requests. Nobody
/// is ejected, and every other request is served.
fn a_shared_failure_ejects_nobody_under(mpm: Mpm) {
    let b = four();
    let body = block("app", "/", &b, "lbmethod=byinflight", "LBOutlierDetection on");
    let apache = Apache::start(config(&body, mpm)).unwrap();
    let load = Load::new("/", 16, 1_000_000).deadline(Duration::from_secs(4)).every_nth_to(100, "/__error");
    let report = load.run(apache.addr());
    let errors = report.count_status(500);
    let healthy = report.outcomes.len() as u64 - errors;
    eprintln!(
        "{}: {} requests, {errors} to the bad URL, {:?}",
        mpm.name(),
        report.outcomes.len(),
        report.per_status()
    );
    assert!(errors > 20, "the bad URL was requested");
    assert_eq!(report.count_status(200), healthy, "every other request served");
    // Then only the bad URL, one request at a time: every member fails in turn, and nobody is
    // ejected (no member succeeds while the others fail).
    let alone = Load::new("/__error", 1, 60).run(apache.addr());
    assert_eq!(alone.count_status(500), 60);
    for member in &b {
        let status = apache.member_status("balancer://app", &member.url()).unwrap();
        assert_eq!(status["ejections"], 0, "{status}");
    }
    assert!(
        apache.error_log().contains("no other member is succeeding"),
        "the log says why nobody is ejected"
    );
}

/// The same shared failure where success-rate ejection is at work: eight members (above
/// min-members), evaluated every second for 8 s on a few hundred requests each. Chance makes
/// one member's share of the bad URL stand out now and then; nobody is ejected for it.
#[test]
fn a_shared_failure_ejects_nobody_by_success_rate() {
    let b: Vec<Backend> = (0..8).map(|i| app_server(&format!("m{i}"), 8, 5)).collect();
    let body =
        block("app", "/", &b, "lbmethod=byinflight", "LBOutlierDetection on interval=1s min-requests=50");
    let apache = Apache::start(config(&body, Mpm::Event)).unwrap();
    let load = Load::new("/", 16, 1_000_000).deadline(Duration::from_secs(8)).every_nth_to(100, "/__error");
    let report = load.run(apache.addr());
    let errors = report.count_status(500);
    eprintln!("{} requests, {errors} to the bad URL, {:?}", report.outcomes.len(), report.per_backend());
    assert!(errors > 50, "the bad URL was requested");
    assert_eq!(report.count_status(200), report.outcomes.len() as u64 - errors, "every other request served");
    for member in &b {
        let status = apache.member_status("balancer://app", &member.url()).unwrap();
        assert_eq!(status["ejections"], 0, "{status}\n{}", apache.error_log());
    }
}

#[test]
fn a_failure_every_member_shares_ejects_nobody_event() {
    a_shared_failure_ejects_nobody_under(Mpm::Event);
}

#[test]
fn a_failure_every_member_shares_ejects_nobody_prefork() {
    a_shared_failure_ejects_nobody_under(Mpm::Prefork);
}

/// `bylatency` with a member answering instant 500s: without outlier detection the errors count
/// against its estimate (it is not the fastest, it is failing), and it gets a few probes; with
/// detection, it is ejected.
fn bylatency_reads_fast_errors_under(mpm: Mpm) {
    let b = four();
    let mut body = block("plain", "/plain", &b, "lbmethod=bylatency", "");
    body.push_str(&block("detected", "/detected", &b, "lbmethod=bylatency", "LBOutlierDetection on"));
    let apache = Apache::start(config(&body, mpm)).unwrap();
    b[3].set_failing(true);
    for (path, floor) in [("/plain", 0.99), ("/detected", 0.995)] {
        let report = Load::new(path, 16, 1_000_000).deadline(Duration::from_secs(4)).run(apache.addr());
        let all: Vec<_> = report.outcomes.iter().collect();
        eprintln!(
            "{} {path}: {:.2}% success of {}, d's share {:.2}%",
            mpm.name(),
            success(&all) * 100.0,
            all.len(),
            share(&all, "d") * 100.0
        );
        assert!(success(&all) >= floor, "{path}: {:.2}%", success(&all) * 100.0);
    }
    let status = apache.member_status("balancer://plain", &b[3].url()).unwrap();
    assert!(
        status["latency_ms"].as_f64().is_some_and(|l| l >= 1000.0),
        "errors are not fast answers: {status}"
    );
}

#[test]
fn bylatency_reads_fast_errors_as_failures_event() {
    bylatency_reads_fast_errors_under(Mpm::Event);
}

#[test]
fn bylatency_reads_fast_errors_as_failures_prefork() {
    bylatency_reads_fast_errors_under(Mpm::Prefork);
}

/// A member that hangs (its answers take 2 s; the clients give up after 1 s): `bylatency`
/// stops sending it requests long before the first slow answer comes back, and sends it no
/// more than `byinflight` does.
fn bylatency_avoids_a_stall_under(mpm: Mpm) {
    let mut sent = Vec::new();
    for method in ["byinflight", "bylatency"] {
        let b = [
            app_server("a", 16, 10),
            app_server("b", 16, 10),
            app_server("c", 16, 10),
            app_server("d", 16, 10),
        ];
        let body = block("app", "/", &b, &format!("lbmethod={method} timeout=5"), "");
        let apache = Apache::start(config(&body, mpm)).unwrap();
        let load = Load {
            timeout: Duration::from_secs(1),
            ..Load::new("/", 16, 1_000_000).deadline(Duration::from_secs(6))
        };
        let pin = |b: &[Backend]| b[3].set_delay(Duration::from_secs(2));
        let before = b[3].stats().requests;
        let report = run_with(&apache, load, &b, &[(Duration::from_secs(1), &pin)]);
        let requests_to_d = b[3].stats().requests - before;
        let window = between(&report, Duration::from_secs(1), Duration::from_secs(6));
        eprintln!(
            "{} {method}: {:.2}% success while d hangs ({} requests), {} sent to d in all",
            mpm.name(),
            success(&window) * 100.0,
            window.len(),
            requests_to_d
        );
        sent.push((requests_to_d, success(&window)));
        // The hung member's answers come in; nothing lingers.
        assert!(wait_for(Duration::from_secs(5), || b[3].stats().inflight == 0));
    }
    let (inflight, latency) = (sent[0], sent[1]);
    assert!(latency.1 >= inflight.1 - 0.001, "bylatency {:.4} vs byinflight {:.4}", latency.1, inflight.1);
    assert!(latency.1 >= 0.995, "bylatency while a member hangs: {:.4}", latency.1);
}

#[test]
fn bylatency_avoids_a_stalled_member_event() {
    bylatency_avoids_a_stall_under(Mpm::Event);
}

#[test]
fn bylatency_avoids_a_stalled_member_prefork() {
    bylatency_avoids_a_stall_under(Mpm::Prefork);
}
