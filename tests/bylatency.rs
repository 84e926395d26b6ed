//! `bylatency` through real apache2 and capacity-limited backends.

use lbrs_harness::{
    Apache, ApacheConfig, Backend, Load, LoadReport, app_server, balancer_block, ms, one_slow_of_four,
};
use std::thread;
use std::time::Duration;

/// Answers from `name` in each window of `window` over the load.
fn per_window(report: &LoadReport, name: &str, window: Duration) -> Vec<(u64, u64)> {
    let windows = (report.elapsed.as_secs_f64() / window.as_secs_f64()) as usize;
    (0..windows)
        .map(|w| {
            let inside: Vec<_> = report
                .outcomes
                .iter()
                .filter(|o| (o.at.as_secs_f64() / window.as_secs_f64()) as usize == w)
                .collect();
            let mine = inside.iter().filter(|o| o.backend.as_deref() == Some(name)).count() as u64;
            (mine, inside.len() as u64)
        })
        .collect()
}

#[test]
fn a_ten_times_slower_member_is_avoided_but_still_probed() {
    let b = one_slow_of_four();
    let members: Vec<(&Backend, &str)> = b.iter().map(|b| (b, "")).collect();
    let mut body = balancer_block("rr", "/rr", &members, "lbmethod=byrequests");
    body.push_str(&balancer_block("lc", "/lc", &members, "lbmethod=byinflight"));
    body.push_str(
        &balancer_block("lat", "/lat", &members, "lbmethod=bylatency")
            .replace("    ProxySet", "    LBLatencyDecay 1s\n    ProxySet"),
    );
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();

    let run = |path: &str| -> LoadReport {
        let report = Load::new(path, 16, 1_000_000).deadline(Duration::from_secs(8)).run(apache.addr());
        assert_eq!(report.count_status(200), report.outcomes.len() as u64, "{:?}", report.per_status());
        report
    };
    let byrequests = run("/rr");
    let byinflight = run("/lc");
    let bylatency = run("/lat");
    let share = |r: &LoadReport| r.count_backend("slow") as f64 / r.completed() as f64;
    for (name, report) in
        [("byrequests", &byrequests), ("byinflight", &byinflight), ("bylatency", &bylatency)]
    {
        eprintln!(
            "{name}: {:.0} req/s, slow member {:.2}% ({} requests), p50 {:.1} ms, p99 {:.1} ms",
            report.throughput(),
            share(report) * 100.0,
            report.count_backend("slow"),
            ms(report.percentile(50.0)),
            ms(report.percentile(99.0))
        );
    }
    let (rr, lc, lat) =
        (byrequests.percentile(99.0), byinflight.percentile(99.0), bylatency.percentile(99.0));
    assert!(lat <= lc, "bylatency p99 {lat:?} no worse than byinflight's {lc:?}");
    assert!(lat < rr.mul_f64(0.5), "bylatency p99 {lat:?} far better than byrequests' {rr:?}");
    assert!(share(&bylatency) < share(&byinflight), "the slow member gets less than under byinflight");
    // Never starved: with a 1 s decay the slow member is probed every few seconds.
    let windows = per_window(&bylatency, "slow", Duration::from_secs(4));
    assert!(windows.iter().all(|&(slow, _)| slow > 0), "probes per 4 s window: {windows:?}");
}

#[test]
fn a_member_that_turns_slow_is_avoided_within_seconds_and_gets_traffic_back_when_it_recovers() {
    let b = [app_server("a", 8, 3), app_server("b", 8, 3), app_server("c", 8, 3), app_server("d", 8, 3)];
    let members: Vec<(&Backend, &str)> = b.iter().map(|b| (b, "")).collect();
    let body = balancer_block("app", "/", &members, "lbmethod=bylatency")
        .replace("    ProxySet", "    LBLatencyDecay 1s\n    ProxySet");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();

    let load = Load::new("/", 8, 1_000_000).deadline(Duration::from_secs(12));
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        thread::sleep(Duration::from_secs(3));
        b[3].set_delay(Duration::from_millis(60)); // d turns slow at 3 s
        thread::sleep(Duration::from_secs(4));
        b[3].set_delay(Duration::from_millis(3)); // and recovers at 7 s
        running.join().unwrap()
    });
    assert_eq!(report.count_status(200), report.outcomes.len() as u64, "{:?}", report.per_status());
    let windows = per_window(&report, "d", Duration::from_secs(1));
    let share = |w: usize| windows[w].0 as f64 / windows[w].1.max(1) as f64;
    eprintln!(
        "d's share per second: {:?}",
        (0..windows.len()).map(|w| format!("{:.2}", share(w))).collect::<Vec<_>>()
    );
    assert!(share(1) > 0.15 && share(2) > 0.15, "d takes its part while it is fast");
    assert!(share(4) < 0.05 && share(5) < 0.05, "d is avoided within a second of turning slow");
    let last = windows.len() - 1;
    assert!(share(last) > 0.15 && share(last - 1) > 0.15, "d gets traffic back after recovering");
}
