//! `byinflight` and the in-flight accounting every method relies on, through real apache2 and
//! capacity-limited backends (worker slots and a service time, like real app servers).

use lbrs_harness::os;
use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, Load, LoadReport, Mpm, app_server, backends, balancer_block,
    client, ms, one_slow_of_four, wait_for,
};
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn a_ten_times_slower_member_gets_a_small_share_and_p99_stays_low() {
    let b = one_slow_of_four();
    let members: Vec<(&Backend, &str)> = b.iter().map(|b| (b, "")).collect();
    let mut body = balancer_block("rr", "/rr", &members, "lbmethod=byrequests");
    body.push_str(&balancer_block("lc", "/lc", &members, "lbmethod=byinflight"));
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();

    let run = |path: &str| -> LoadReport {
        let report = Load::new(path, 16, 3000).deadline(Duration::from_secs(40)).run(apache.addr());
        assert_eq!(report.count_status(200), report.outcomes.len() as u64, "{:?}", report.per_status());
        report
    };
    let byrequests = run("/rr");
    let byinflight = run("/lc");
    let share = |r: &LoadReport| r.count_backend("slow") as f64 / r.completed() as f64;
    let (rr_p99, lc_p99) = (byrequests.percentile(99.0), byinflight.percentile(99.0));
    eprintln!(
        "slow member share: byrequests {:.1}%, byinflight {:.1}%; p99: byrequests {:.1} ms, byinflight {:.1} ms",
        share(&byrequests) * 100.0,
        share(&byinflight) * 100.0,
        ms(rr_p99),
        ms(lc_p99)
    );
    assert!(share(&byinflight) < share(&byrequests) / 2.0, "the slow member gets a much smaller share");
    assert!(lc_p99 < rr_p99.mul_f64(0.6), "p99 much lower with byinflight");
}

#[test]
fn in_flight_follows_the_weights() {
    let b = [app_server("light", 0, 20), app_server("heavy", 0, 20)];
    let body = balancer_block(
        "app",
        "/",
        &[(&b[0], "loadfactor=1"), (&b[1], "loadfactor=3")],
        "lbmethod=byinflight",
    );
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let load = Load::new("/", 16, 100_000).deadline(Duration::from_secs(3));
    let (report, samples) = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        thread::sleep(Duration::from_millis(500));
        let mut samples = Vec::new();
        while !running.is_finished() && samples.len() < 100 {
            samples.push((b[0].stats().inflight, b[1].stats().inflight));
            thread::sleep(Duration::from_millis(20));
        }
        (running.join().unwrap(), samples)
    });
    assert_eq!(report.count_status(200), report.outcomes.len() as u64);
    let light: u64 = samples.iter().map(|s| s.0).sum();
    let heavy: u64 = samples.iter().map(|s| s.1).sum();
    let ratio = heavy as f64 / light.max(1) as f64;
    eprintln!(
        "average in flight: light {:.2}, heavy {:.2}, ratio {ratio:.2}",
        light as f64 / samples.len() as f64,
        heavy as f64 / samples.len() as f64
    );
    assert!((2.3..=3.8).contains(&ratio), "in-flight ratio {ratio:.2} should be about 3");
    let served = report.count_backend("heavy") as f64 / report.count_backend("light").max(1) as f64;
    assert!((2.3..=3.8).contains(&served), "requests served ratio {served:.2} should be about 3");
}

/// Every member's in-flight count on the status page, once traffic has stopped.
fn settled_inflight(apache: &Apache) -> Vec<u64> {
    let read = || -> Vec<u64> {
        let status = apache.status().unwrap();
        status["balancers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["members"].as_array().unwrap().clone())
            .map(|m| m["inflight"].as_u64().unwrap())
            .collect()
    };
    wait_for(Duration::from_secs(15), || read().iter().all(|&n| n == 0));
    read()
}

fn counters_return_to_zero_under(mpm: Mpm) {
    let mut b =
        [app_server("a", 8, 10), app_server("b", 8, 10), app_server("c", 8, 10), app_server("d", 8, 10)];
    let addr_d = b[3].addr();
    b[3].stop(); // down from the start: attempts on it fail over
    let members: Vec<(&Backend, &str)> = b.iter().map(|b| (b, "retry=1")).collect();
    let body = balancer_block("app", "/", &members, "lbmethod=byinflight");
    let mut apache = Apache::start(ApacheConfig::new(&body).mpm(mpm)).unwrap();
    let addr = apache.addr();

    // 30% of clients give up mid-request; one request in 20 makes its backend reset the
    // connection; member d fails over, comes back, then the server restarts gracefully.
    let load = Load::new("/", 12, 4000)
        .deadline(Duration::from_secs(60))
        .abort_percent(30, Duration::from_millis(3))
        .every_nth_to(20, "/__reset");
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(addr));
        thread::sleep(Duration::from_millis(700));
        b[3] = Backend::start_on(addr_d, BackendSpec::new("d").slots(8).delay(Duration::from_millis(10)))
            .unwrap();
        thread::sleep(Duration::from_millis(700));
        apache.graceful().unwrap();
        running.join().unwrap()
    });
    let aborted = report.outcomes.iter().filter(|o| o.aborted).count();
    assert!(aborted > 500, "clients aborted: {aborted}");
    let statuses = report.per_status();
    assert!(statuses.keys().all(|s| [200, 502].contains(s)), "only resets may fail: {statuses:?}");

    let inflight = settled_inflight(&apache);
    assert!(inflight.iter().all(|&n| n == 0), "in-flight counts after the load: {inflight:?}");
    let status = apache.status().unwrap();
    let d = &status["balancers"][0]["members"][3];
    assert!(d["failed"].as_u64().unwrap() >= 1, "the failovers are counted: {d}");
}

#[test]
fn counters_return_to_zero_after_aborts_resets_failovers_and_restarts_under_event() {
    counters_return_to_zero_under(Mpm::Event);
}

#[test]
fn counters_return_to_zero_after_aborts_resets_failovers_and_restarts_under_prefork() {
    counters_return_to_zero_under(Mpm::Prefork);
}

#[test]
fn a_killed_child_gives_its_attempts_back() {
    let b = [app_server("a", 0, 2000), app_server("b", 0, 2000)];
    let body = balancer_block("app", "/", &[(&b[0], ""), (&b[1], "")], "lbmethod=byinflight");
    let apache = Apache::start(ApacheConfig::new(&body).mpm(Mpm::Prefork).processes(6)).unwrap();
    let load = Load::new("/", 6, 6).deadline(Duration::from_secs(30));
    thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        let total = || b[0].stats().inflight + b[1].stats().inflight;
        assert!(wait_for(Duration::from_secs(10), || total() == 6), "requests in flight: {}", total());
        // Kill every child: those serving the requests die without running any cleanup.
        for pid in apache.children() {
            os::signal(pid as i32, libc::SIGKILL);
        }
        running.join().unwrap();
    });
    let started = Instant::now();
    let inflight = settled_inflight(&apache);
    assert!(inflight.iter().all(|&n| n == 0), "counts after the kill: {inflight:?}");
    eprintln!("counts repaired {:?} after the load ended", started.elapsed());
    assert!(apache.error_log().contains("attempt(s) in flight; its in-flight counts were given back"));
}

#[test]
fn sticky_session_requests_are_counted_too() {
    let b = [app_server("a", 0, 300), app_server("b", 0, 300)];
    let body = balancer_block(
        "app",
        "/",
        &[(&b[0], "route=ra"), (&b[1], "route=rb")],
        "lbmethod=byinflight stickysession=ROUTEID",
    );
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let load = Load::new("/", 4, 4).header("Cookie", "ROUTEID=x.rb");
    thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        assert!(
            wait_for(Duration::from_secs(5), || {
                apache.member_status("balancer://app", &b[1].url()).unwrap()["inflight"] == 4
            }),
            "sticky attempts in flight are counted"
        );
        let report = running.join().unwrap();
        assert_eq!(report.count_backend("b"), 4);
    });
    let member = apache.member_status("balancer://app", &b[1].url()).unwrap();
    assert_eq!((member["selected"].as_u64(), member["inflight"].as_u64()), (Some(4), Some(0)), "{member}");
}

/// A sticky request that fails before mod_proxy starts it (its URL does not canonicalise: 400)
/// leaves nothing behind: later requests on the same thread are counted once each and none
/// as failed.
#[test]
fn a_sticky_request_that_fails_early_leaves_nothing_behind() {
    let b = backends(&["a", "b"]);
    let mut body = balancer_block(
        "app",
        "/",
        &[(&b[0], "route=ra"), (&b[1], "route=rb")],
        "lbmethod=byinflight stickysession=ROUTEID",
    );
    // With encoded slashes passed on undecoded, mod_proxy_http refuses a path whose '%' is not
    // an escape ("/%25zz" decodes to "/%zz") when it canonicalises the member's URL, after
    // mod_proxy_balancer has routed the request by its session.
    body.push_str("AllowEncodedSlashes NoDecode\n");
    // One process of one thread: every request below is served by the same thread.
    let apache = Apache::start(ApacheConfig::new(&body).processes(1).threads(1)).unwrap();
    let sticky = [("Cookie", "ROUTEID=x.rb")];
    for round in 0..3 {
        let bad = client::request(apache.addr(), "GET", "/%25zz", &sticky, b"").unwrap();
        assert_eq!(bad.status, 400, "round {round}: the URL does not canonicalise");
        for _ in 0..2 {
            assert_eq!(apache.get("/").unwrap().status, 200);
            assert_eq!(client::request(apache.addr(), "GET", "/", &sticky, b"").unwrap().status, 200);
        }
    }
    assert!(wait_for(Duration::from_secs(5), || settled_inflight(&apache).iter().all(|&n| n == 0)));
    let json = apache.status().unwrap();
    let mut selected = 0;
    for member in json["balancers"][0]["members"].as_array().unwrap() {
        let count = |field: &str| member[field].as_u64().unwrap_or(u64::MAX);
        assert_eq!(count("failed"), 0, "{member}");
        assert_eq!(count("selected"), count("completed"), "{member}");
        selected += count("selected");
    }
    assert_eq!(selected, 12, "6 sticky and 6 other requests, each counted once");
    let b_member = apache.member_status("balancer://app", &b[1].url()).unwrap();
    assert!(b_member["completed"].as_u64() >= Some(6), "the sticky ones went to b: {b_member}");
}

/// Answers httpd makes itself count as failed, like a backend's own 502, 503 and 504: a member
/// that times out (`timeout=1`: httpd answers 502 or 504) and one that refuses connections but
/// is kept usable (`status=+I`: httpd answers 503).
#[test]
fn errors_made_by_mod_proxy_count_as_failed() {
    let slow = app_server("slow", 0, 3000);
    let closed = lbrs_harness::apache::free_port().unwrap();
    let mut body = balancer_block("t", "/t", &[(&slow, "timeout=1")], "lbmethod=byinflight");
    body.push_str(&format!(
        "<Proxy \"balancer://i\">\n    BalancerMember \"http://127.0.0.1:{closed}\" status=+I\n    \
         ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/i\" \"balancer://i/\"\n"
    ));
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let timed_out = apache.get("/t").unwrap().status;
    assert!(matches!(timed_out, 502 | 504), "{timed_out}");
    assert_eq!(apache.get("/i").unwrap().status, 503);
    for (balancer, member) in
        [("balancer://t", slow.url()), ("balancer://i", format!("http://127.0.0.1:{closed}"))]
    {
        assert!(wait_for(Duration::from_secs(5), || {
            apache.member_status(balancer, &member).is_ok_and(|m| m["inflight"] == 0)
        }));
        let status = apache.member_status(balancer, &member).unwrap();
        assert_eq!((status["failed"].as_u64(), status["completed"].as_u64()), (Some(1), Some(0)), "{status}");
    }
}

/// A graceful restart that changes the members moves the counters to a new segment while
/// attempts are in flight; those finish in the old generation and are counted as handed over,
/// so every member's `selected` stays exactly `completed + failed + handed_over + inflight`.
#[test]
fn a_restart_that_changes_the_members_keeps_every_attempt_accounted_for() {
    let b = [app_server("a", 0, 200), app_server("b", 0, 200), app_server("c", 0, 200)];
    let two = balancer_block("app", "/", &[(&b[0], ""), (&b[1], "")], "lbmethod=byinflight");
    let three = balancer_block("app", "/", &[(&b[0], ""), (&b[1], ""), (&b[2], "")], "lbmethod=byinflight");
    let mut apache = Apache::start(ApacheConfig::new(&two)).unwrap();
    let load = Load::new("/", 8, 80).deadline(Duration::from_secs(60));
    let addr = apache.addr();
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(addr));
        thread::sleep(Duration::from_millis(700));
        apache.reconfigure(&three).unwrap();
        running.join().unwrap()
    });
    assert_eq!(report.count_status(200), 80, "{:?} {:?}", report.per_status(), report.errors());
    assert!(settled_inflight(&apache).iter().all(|&n| n == 0));
    let json = apache.status().unwrap();
    let mut handed_over = 0;
    for member in json["balancers"][0]["members"].as_array().unwrap() {
        let count = |field: &str| member[field].as_u64().unwrap_or(u64::MAX);
        assert_eq!(
            count("selected"),
            count("completed") + count("failed") + count("handed_over"),
            "{member}"
        );
        handed_over += count("handed_over");
    }
    assert!(handed_over > 0, "attempts were in flight at the restart");
    assert!(apache.error_log().contains("new shared segment"), "the members changed: a new segment");
}
