//! docs/health-checks.md: every recipe, taken from the page itself, through the real apache2
//! with the module, mod_proxy_hcheck and real backends. An active check takes a member whose
//! /health fails out and brings it back on a slow-start ramp; failonstatus and failontimeout
//! put a member in error and retry brings it back; status=+I keeps a lone member usable.

mod guide_common;

use guide_common::{backend, get, show, start};
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Recipe, backends, wait_for};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const DOC: &str = "docs/health-checks.md";

fn status_of(apache: &Apache, balancer: &str, member: &Backend) -> serde_json::Value {
    apache.member_status(balancer, &member.url()).unwrap()
}

fn word(apache: &Apache, balancer: &str, member: &Backend) -> String {
    status_of(apache, balancer, member)["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn active_check_takes_a_failing_member_out_and_it_ramps_back_in() {
    let b = backends(&["a", "b", "c"]);
    let recipe = Recipe::load(DOC, "active")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        .replace("http://10.0.0.13:8080", &b[2].url())
        // Shorter times than the page's, for a quick test.
        .replace("hcinterval=5", "hcinterval=1")
        .replace("LBSlowStart 30s", "LBSlowStart 4s");
    let config = ApacheConfig::new(recipe.text())
        .with_module("proxy_hcheck")
        .log_level("warn lbmethod_rs:info proxy_hcheck:info");
    let apache = Apache::start(config).unwrap();

    // Steady traffic all along, one request at a time, as the page assumes.
    let stop = AtomicBool::new(false);
    let failures = AtomicU64::new(0);
    thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(40);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if apache.get("/").map(|r| r.status != 200).unwrap_or(true) {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(wait_for(Duration::from_secs(3), || b[1].stats().requests > 5), "b serves at first");
            b[1].set_healthy(false);
            let started = Instant::now();
            assert!(
                wait_for(Duration::from_secs(10), || word(&apache, "balancer://app", &b[1])
                    == "hcheck-failed"),
                "b was never taken out: {}",
                status_of(&apache, "balancer://app", &b[1])
            );
            // hcfails=2 at hcinterval=1: out after 1 to 2 intervals, plus the watchdog's tick.
            let took = started.elapsed();
            assert!(took <= Duration::from_millis(3500), "taken out after {took:?}");
            thread::sleep(Duration::from_millis(200));
            let served = b[1].stats().requests;
            thread::sleep(Duration::from_secs(1));
            assert_eq!(b[1].stats().requests, served, "no request reaches a member that failed its check");

            b[1].set_healthy(true);
            assert!(
                wait_for(Duration::from_secs(10), || word(&apache, "balancer://app", &b[1]) == "ok"),
                "b never came back"
            );
            // The next picks start the ramp: the status page shows it.
            let mut seen = serde_json::Value::Null;
            let ramping = wait_for(Duration::from_secs(2), || {
                seen = status_of(&apache, "balancer://app", &b[1]);
                seen["slow_start_progress"].as_f64().is_some_and(|p| p < 0.9)
            });
            assert!(ramping, "b came back on a ramp: {seen}");
            assert!(seen["effective_weight"].as_f64().unwrap_or(1.0) < 1.0, "{seen}");
            let served = b[1].stats().requests;
            assert!(
                wait_for(Duration::from_secs(3), || b[1].stats().requests > served),
                "b gets requests again during its ramp"
            );
            // At the end of LBSlowStart (4 s here), its full weight.
            assert!(
                wait_for(Duration::from_secs(8), || {
                    seen = status_of(&apache, "balancer://app", &b[1]);
                    seen["slow_start_progress"].is_null() && seen["effective_weight"] == 1.0
                }),
                "the ramp ends: {seen}"
            );
        }));
        stop.store(true, Ordering::SeqCst);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no client saw a failure: /health is not what they ask");
    let log = apache.error_log();
    assert!(log.contains("Health check DISABLING") && log.contains("Health check ENABLING"), "{log}");
}

#[test]
fn passive_checks_put_a_member_in_error_and_retry_brings_it_back() {
    let mut b =
        [Backend::start(BackendSpec::new("a")).unwrap(), Backend::start(BackendSpec::new("b")).unwrap()];
    let addr_b = b[1].addr();
    let recipe = Recipe::load(DOC, "passive")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        .replace("retry=30", "retry=1")
        .replace("timeout=20", "timeout=1");
    let apache = start(recipe.text(), &[]);
    let after_retry = || thread::sleep(Duration::from_millis(1100));
    let sequence = |n: usize| -> Vec<(u16, String)> {
        (0..n)
            .map(|_| {
                let r = get(&apache, "/", &[]);
                (r.status, backend(&r))
            })
            .collect()
    };
    let served_by = |answers: &[(u16, String)], name: &str| answers.iter().filter(|(_, b)| b == name).count();

    // failonstatus=503: the 503 reaches its client, then the member is out.
    b[1].set_maintenance(true);
    let answers = sequence(10);
    let unavailable = answers.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(unavailable, 1, "exactly the request that met the 503: {answers:?}");
    assert_eq!(answers.iter().filter(|(s, b)| *s == 200 && b == "a").count(), 9, "{answers:?}");
    assert_eq!(word(&apache, "balancer://app", &b[1]), "error");
    assert!(apache.error_log().contains("matching 'failonstatus'"));
    // retry=1: one second later, the member is tried again, and is back.
    b[1].set_maintenance(false);
    after_retry();
    let answers = sequence(10);
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert!(served_by(&answers, "b") >= 4, "b is back: {answers:?}");
    assert_eq!(word(&apache, "balancer://app", &b[1]), "ok");

    // failontimeout=On with timeout=1: 502 for the request that waited, then the member is out.
    b[1].set_delay(Duration::from_millis(1500));
    let answers = sequence(6);
    assert_eq!(answers.iter().filter(|(s, _)| *s == 502).count(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, b)| *s == 200 && b == "a").count(), 5, "{answers:?}");
    assert_eq!(word(&apache, "balancer://app", &b[1]), "error");
    b[1].set_delay(Duration::ZERO);
    after_retry();
    let answers = sequence(10);
    assert!(answers.iter().all(|(s, _)| *s == 200) && served_by(&answers, "b") >= 4, "{answers:?}");

    // A refused connection: failover, the client does not notice.
    b[1].stop();
    let answers = sequence(10);
    assert!(answers.iter().all(|(s, b)| *s == 200 && b == "a"), "{answers:?}");
    assert_eq!(word(&apache, "balancer://app", &b[1]), "error");
    b[1] = Backend::start_on(addr_b, BackendSpec::new("b")).unwrap();
    after_retry();
    let answers = sequence(10);
    assert!(served_by(&answers, "b") >= 4, "{answers:?}");
}

#[test]
fn a_pool_member_with_a_short_retry_and_what_ignore_errors_does() {
    let mut b = backends(&["a", "pool"]);
    let addr = b[1].addr();
    let recipe = Recipe::load(DOC, "pool-member")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.70:8080", &b[1].url());
    let apache = start(recipe.text(), &[]);
    let answers = |apache: &Apache, n: usize| -> Vec<(u16, String)> {
        (0..n)
            .map(|_| {
                let r = get(apache, "/", &[]);
                (r.status, backend(&r))
            })
            .collect()
    };

    b[1].stop();
    let seen = answers(&apache, 10);
    assert!(seen.iter().all(|(s, n)| *s == 200 && n == "a"), "failover: {seen:?}");
    assert_eq!(word(&apache, "balancer://app", &b[1]), "error");
    b[1] = Backend::start_on(addr, BackendSpec::new("pool")).unwrap();
    thread::sleep(Duration::from_millis(2100));
    let seen = answers(&apache, 10);
    assert!(seen.iter().filter(|(_, n)| n == "pool").count() >= 4, "back after retry=2: {seen:?}");
    drop(apache);

    // status=+I: never in error, so no failover from it either.
    let ignoring = recipe.text().replace("retry=2", "retry=2 status=+I");
    let apache = start(&ignoring, &[]);
    b[1].stop();
    let seen = answers(&apache, 10);
    assert_eq!(seen.iter().filter(|(s, _)| *s == 503).count(), 5, "one in two fails: {seen:?}");
    assert_eq!(seen.iter().filter(|(s, n)| *s == 200 && n == "a").count(), 5, "{seen:?}");
    let member = status_of(&apache, "balancer://app", &b[1]);
    assert_eq!(member["status"], "ok", "{member}");
    assert!(member["flags"].as_array().unwrap().iter().any(|f| f == "ignore-errors"), "{member}");
    b[1] = Backend::start_on(addr, BackendSpec::new("pool")).unwrap();
    let seen = answers(&apache, 10);
    assert!(seen.iter().filter(|(s, n)| *s == 200 && n == "pool").count() >= 4, "back at once: {seen:?}");
}

#[test]
fn a_lone_member_in_error_is_tried_again_at_once() {
    let mut b = Backend::start(BackendSpec::new("only")).unwrap();
    let addr = b.addr();
    // The passive recipe with one member: its retry=30 does not hold when all are in error.
    let recipe = Recipe::load(DOC, "passive").replace("http://10.0.0.11:8080", &b.url());
    let text: String =
        recipe.text().lines().filter(|l| !l.contains("10.0.0.12")).map(|l| format!("{l}\n")).collect();
    let apache = start(&text, &[]);
    assert_eq!(backend(&get(&apache, "/", &[])), "only");
    b.stop();
    let response = get(&apache, "/", &[]);
    assert_eq!(response.status, 503, "{}", show(&response));
    assert_eq!(word(&apache, "balancer://app", &b), "error");
    let _b = Backend::start_on(addr, BackendSpec::new("only")).unwrap();
    let response = get(&apache, "/", &[]);
    assert_eq!((response.status, backend(&response)), (200, "only".to_string()), "{}", show(&response));

    // forcerecovery=Off keeps the retry time.
    drop(apache);
    let apache = start(&text.replace("failontimeout=On", "failontimeout=On forcerecovery=Off"), &[]);
    drop(_b);
    assert_eq!(get(&apache, "/", &[]).status, 503);
    let _b = Backend::start_on(addr, BackendSpec::new("only")).unwrap();
    assert_eq!(get(&apache, "/", &[]).status, 503, "still in error for its retry time");
}

#[test]
fn outlier_detection_ejects_a_member_that_fails_fast_and_nobody_for_a_shared_failure() {
    let b = backends(&["a", "b", "c", "d"]);
    let recipe = Recipe::load(DOC, "outliers")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        .replace("http://10.0.0.13:8080", &b[2].url())
        .replace("http://10.0.0.14:8080", &b[3].url());
    let apache = start(recipe.text(), &[]);
    // One URL every member answers with 500, alone and then among good requests: nobody out.
    for i in 0..180 {
        let path = if i < 60 || i % 3 == 0 { "/__error" } else { "/" };
        let _ = apache.get(path);
    }
    for member in &b {
        assert_eq!(status_of(&apache, "balancer://app", member)["ejections"], 0, "nobody ejected");
    }
    // b answers every request with an instant 500: out after 5 in a row, for 10 s.
    b[1].set_failing(true);
    let mut errors = 0;
    for _ in 0..200 {
        if apache.get("/").map(|r| r.status != 200).unwrap_or(true) {
            errors += 1;
        }
    }
    let status = status_of(&apache, "balancer://app", &b[1]);
    assert_eq!(status["ejected"], true, "{status}");
    assert_eq!(status["ejection_reason"], "consecutive-failures");
    assert!(status["ejection_seconds_left"].as_f64().is_some_and(|s| s > 5.0 && s <= 10.0), "{status}");
    assert!(errors <= 6, "clients saw {errors} errors: the failures before the ejection");
    let log = apache.error_log();
    let ejected = format!("balancer://app: member {} ejected for 10 s: ", b[1].url());
    assert!(
        log.contains(&ejected)
            && log.contains("(consecutive-failures; ejection 1); it comes back on its own")
    );
    assert!(
        log.contains("is not ejected although") && log.contains("no other member is succeeding"),
        "{log}"
    );
}
