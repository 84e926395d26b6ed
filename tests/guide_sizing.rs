//! docs/sizing.md's worked example through the real apache2 (event MPM, 100 workers): with the
//! members' caps adding up to fewer requests than the workers, the excess is shed at once with
//! 503 and Retry-After while workers are free; with caps at or above the workers, nothing is
//! shed and the excess waits for a worker instead. And the shared segment's size.

use lbrs_harness::recipe::{Recipe, fill};
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Load, LoadReport, ms};
use std::time::Duration;

const DOC: &str = "docs/sizing.md";

/// Two application servers of `slots` slots, 1 s per request.
fn members(slots: usize) -> [Backend; 2] {
    let spec = |name: &str| BackendSpec::new(name).slots(slots).delay(Duration::from_millis(1000));
    [Backend::start(spec("m1")).unwrap(), Backend::start(spec("m2")).unwrap()]
}

/// The page's MPM block and balancer, with the members' addresses (and `cap_line` for the
/// page's `LBMaxInflight 30`).
fn start(members: &[Backend; 2], cap_line: &str) -> Apache {
    let balancer = fill(
        &Recipe::load(DOC, "sizing-balancer").text,
        &[
            ("http://10.0.0.11:8080", &members[0].url()),
            ("http://10.0.0.12:8080", &members[1].url()),
            ("LBMaxInflight 30", cap_line),
        ],
    );
    let body = format!("{}{balancer}", Recipe::load(DOC, "sizing-mpm").text);
    // ThreadLimit (the harness's) must allow the page's ThreadsPerChild 25.
    Apache::start(ApacheConfig::new(&body).processes(4).threads(25)).unwrap()
}

/// The page's MPM block and its balancer with a queue (`sizing-queue`).
fn start_with_queue(members: &[Backend; 2]) -> Apache {
    let balancer = fill(
        &Recipe::load(DOC, "sizing-queue").text,
        &[("http://10.0.0.11:8080", &members[0].url()), ("http://10.0.0.12:8080", &members[1].url())],
    );
    let body = format!("{}{balancer}", Recipe::load(DOC, "sizing-mpm").text);
    Apache::start(ApacheConfig::new(&body).processes(4).threads(25)).unwrap()
}

/// `n` clients, one request each, all at once.
fn burst(apache: &Apache, n: usize) -> LoadReport {
    Load::new("/", n, n as u64).deadline(Duration::from_secs(20)).run(apache.addr())
}

#[test]
fn caps_below_the_workers_shed_the_excess_at_once() {
    let m = members(30);
    let apache = start(&m, "LBMaxInflight 30");
    let report = burst(&apache, 80);
    let statuses = report.per_status();
    eprintln!("{statuses:?}, members' peaks {} and {}", m[0].stats().max_inflight, m[1].stats().max_inflight);
    assert_eq!(report.count_status(200), 60, "{statuses:?} {:?}", report.errors());
    assert_eq!(report.count_status(503), 20, "{statuses:?}");
    for outcome in report.outcomes.iter().filter(|o| o.status == 503) {
        assert_eq!(outcome.retry_after.as_deref(), Some("1"));
        assert!(outcome.latency < Duration::from_millis(300), "shed at once: {:.0} ms", ms(outcome.latency));
    }
    for outcome in report.outcomes.iter().filter(|o| o.status == 200) {
        assert!(
            outcome.latency < Duration::from_millis(1800),
            "served in one round: {:.0} ms",
            ms(outcome.latency)
        );
    }
    for member in &m {
        assert_eq!(member.stats().max_inflight, 30, "{} used up to its cap, never past it", member.name());
    }
    let log = apache.error_log();
    let segment = log.lines().find(|l| l.contains("new shared segment")).expect("the segment's info line");
    eprintln!("{segment}");
    assert!(segment.contains("1 balancer, 2 member and 24 process slot(s)"), "{segment}");
    let bytes: f64 =
        segment.rsplit(", ").next().and_then(|s| s.strip_suffix(" bytes")).unwrap().parse().unwrap();
    // The page's formula: 128 + 384 x balancers + 256 x member slots + 64 x rows + (rows + 1) x
    // 32 x member slots rounded up to an even number + 49984 x balancers.
    let formula = 128.0 + 384.0 + 256.0 * 2.0 + 64.0 * 24.0 + 25.0 * 32.0 * 2.0 + 49984.0;
    assert_eq!(bytes, formula, "the page's formula");
}

#[test]
fn caps_at_or_above_the_workers_never_shed_and_the_excess_waits() {
    // Members that could take 60 each: what waits, waits in Apache only.
    let m = members(60);
    let apache = start(&m, "LBMaxInflight 60");
    let report = burst(&apache, 150);
    let statuses = report.per_status();
    let mut latencies: Vec<f64> = report.outcomes.iter().map(|o| ms(o.latency)).collect();
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "{statuses:?}; latency min {:.0} ms, median {:.0} ms, max {:.0} ms; members' peaks {} and {}",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        m[0].stats().max_inflight,
        m[1].stats().max_inflight
    );
    assert_eq!(report.count_status(200), 150, "no 503: {statuses:?} {:?}", report.errors());
    // 100 workers: the first hundred in the first second, the rest a second later.
    let waited = report.outcomes.iter().filter(|o| o.latency >= Duration::from_millis(1800)).count();
    assert!((40..=60).contains(&waited), "{waited} requests waited for a worker");
    assert!(latencies[latencies.len() - 1] < 3500.0);
    let peaks = m[0].stats().max_inflight + m[1].stats().max_inflight;
    assert!(peaks <= 100, "the members never had more than the workers: {peaks}");
}

#[test]
fn a_queue_within_the_workers_serves_the_excess_and_refuses_beyond_max_at_once() {
    let m = members(30);
    let apache = start_with_queue(&m);
    // 80 clients: 60 places and 20 in line, all served.
    let report = burst(&apache, 80);
    let statuses = report.per_status();
    let waited = report.outcomes.iter().filter(|o| o.latency >= Duration::from_millis(1800)).count();
    eprintln!("80 clients: {statuses:?}, {waited} waited a round");
    assert_eq!(report.count_status(200), 80, "{statuses:?} {:?}", report.errors());
    assert!((15..=25).contains(&waited), "about 20 waited for a place: {waited}");
    assert!(report.outcomes.iter().all(|o| o.latency < Duration::from_millis(3500)));

    // 100 clients: 20 beyond max are refused at once, and Apache still has workers.
    let apache_addr = apache.addr();
    let burst_thread = std::thread::spawn(move || {
        Load::new("/", 100, 100).deadline(Duration::from_secs(20)).run(apache_addr)
    });
    std::thread::sleep(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let status = apache.status().expect("the status page answers during the burst");
    let status_took = started.elapsed();
    let queue = &status["balancers"][0]["queue"];
    let report = burst_thread.join().unwrap();
    let statuses = report.per_status();
    eprintln!("100 clients: {statuses:?}; status page in {:.0} ms, queue then {queue}", ms(status_took));
    assert_eq!(report.count_status(200), 80, "{statuses:?}");
    assert_eq!(report.count_status(503), 20, "{statuses:?}");
    for outcome in report.outcomes.iter().filter(|o| o.status == 503) {
        assert_eq!(outcome.retry_after.as_deref(), Some("1"));
        assert!(
            outcome.latency < Duration::from_millis(300),
            "refused at once: {:.0} ms",
            ms(outcome.latency)
        );
    }
    assert!(status_took < Duration::from_millis(500), "a worker was free: {status_took:?}");
    assert_eq!(queue["waiting"], 20, "{queue}");
    for member in &m {
        assert_eq!(member.stats().max_inflight, 30, "{} never past its cap", member.name());
    }
}
