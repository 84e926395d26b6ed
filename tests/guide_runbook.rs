//! docs/runbook.md: scripts/lbrs-maintenance.sh end to end against the real apache2 (drain
//! waits for the requests in flight, no new request reaches the member, enable brings it back
//! on its slow-start ramp), and the per-request access log naming the member.

use lbrs_harness::apache::ScratchDir;
use lbrs_harness::recipe::{Recipe, fill, workspace_root};
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Load, client, wait_for};
use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

const DOC: &str = "docs/runbook.md";

fn script(apache: &Apache, args: &[&str]) -> Output {
    let output = Command::new(workspace_root().join("scripts/lbrs-maintenance.sh"))
        .args(args)
        .args(["--url", &apache.url("/"), "--wait", "20"])
        .output()
        .expect("run scripts/lbrs-maintenance.sh");
    eprintln!(
        "lbrs-maintenance.sh {}: {}\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn drain_deploy_and_enable_a_member_with_the_maintenance_script() {
    let a = Backend::start(BackendSpec::new("a").delay(Duration::from_millis(20))).unwrap();
    let b = Backend::start(BackendSpec::new("b").delay(Duration::from_millis(2000))).unwrap();
    let body = format!(
        "<Proxy \"balancer://app\">\n    BalancerMember \"{}\"\n    BalancerMember \"{}\"\n    \
         LBSlowStart 3s\n    ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n",
        a.url(),
        b.url()
    );
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let addr = apache.addr();
    let member = b.url();

    let status = script(&apache, &["status", "app", &member]);
    assert!(status.status.success());
    assert!(text(&status).contains("status=ok inflight=0"), "{}", text(&status));
    let missing = script(&apache, &["status", "app", "http://127.0.0.1:9"]);
    assert_eq!(missing.status.code(), Some(2), "an unknown member is an error");

    thread::scope(|scope| {
        // Requests under way to b (2 s each) when the drain starts.
        let slow: Vec<_> = (0..6).map(|_| scope.spawn(move || client::get(addr, "/slow").unwrap())).collect();
        assert!(wait_for(Duration::from_secs(5), || {
            apache.member_status("balancer://app", &member).unwrap()["inflight"].as_u64() >= Some(2)
        }));
        let started = Instant::now();
        let drain = scope.spawn(|| script(&apache, &["drain", "app", &member]));
        assert!(wait_for(Duration::from_secs(5), || {
            apache.member_status("balancer://app", &member).unwrap()["status"] == "draining"
        }));
        // While it drains, every new request goes to a.
        let during = Load::new("/during", 2, 40).run(addr);
        assert_eq!(during.count_backend("a"), 40, "{:?}", during.per_backend());
        let drain = drain.join().unwrap();
        let waited = started.elapsed();
        assert!(drain.status.success(), "drain: {}", text(&drain));
        assert!(text(&drain).contains("waiting:") && text(&drain).contains("drained: nothing in flight"));
        assert!(
            waited >= Duration::from_millis(1000),
            "the script waited for the requests in flight: {waited:?}"
        );
        for request in slow {
            assert_eq!(request.join().unwrap().status, 200, "the requests in flight finished normally");
        }
    });
    assert_eq!(apache.member_status("balancer://app", &member).unwrap()["inflight"], 0);

    // "Deploy": the new version of b answers fast.
    b.set_delay(Duration::from_millis(20));
    b.reset_stats();

    // Enable while traffic flows: the ramp starts at b's first pick and the script watches it.
    let load = Load::new("/after", 2, 1_000_000).deadline(Duration::from_secs(5));
    let (enable, report) = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(addr));
        thread::sleep(Duration::from_millis(300));
        let enable = script(&apache, &["enable", "app", &member]);
        (enable, running.join().unwrap())
    });
    assert!(enable.status.success(), "enable: {}", text(&enable));
    let out = text(&enable);
    assert!(
        out.contains("enabled: ok") && out.contains("ramp ") && out.contains("ramp done: at full weight"),
        "{out}"
    );
    assert!(b.stats().requests > 0, "b serves again");
    assert_eq!(report.count_status(200), report.outcomes.len() as u64, "{:?}", report.per_status());
    let member_now = apache.member_status("balancer://app", &member).unwrap();
    assert!(member_now["slow_start_progress"].is_null() && member_now["status"] == "ok", "{member_now}");
}

#[test]
fn the_access_log_names_the_member_of_every_request() {
    let backends: Vec<Backend> =
        ["a", "b", "c"].iter().map(|n| Backend::start(BackendSpec::new(n)).unwrap()).collect();
    let logs = ScratchDir::new().unwrap();
    let recipe = fill(
        &Recipe::load(DOC, "runbook-access-log").text,
        &[("/var/log/apache2", &logs.path().display().to_string())],
    );
    let body = format!(
        "<Proxy \"balancer://app\">\n{}    ProxySet lbmethod=byweight\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n{recipe}",
        backends.iter().map(|b| format!("    BalancerMember \"{}\"\n", b.url())).collect::<String>()
    );
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let url_of: BTreeMap<String, String> = backends.iter().map(|b| (b.name().to_string(), b.url())).collect();

    let mut expected = BTreeMap::new();
    for i in 0..30 {
        let response = apache.get(&format!("/req-{i}?token=secret{i}")).unwrap();
        let name = response.header("x-backend").unwrap().to_string();
        expected.insert(format!("/req-{i}"), url_of[&name].clone());
    }
    let log_file = logs.path().join("balanced.log");
    let mut lines = Vec::new();
    assert!(wait_for(Duration::from_secs(5), || {
        lines =
            fs::read_to_string(&log_file).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();
        lines.iter().filter(|l| l.contains("/req-")).count() == 30
    }));
    for line in lines.iter().filter(|l| l.contains("/req-")) {
        let path = line.split_whitespace().find(|w| w.starts_with("/req-")).unwrap();
        let member = &expected[path];
        assert!(line.contains(&format!("\"{member}\"")), "{line} should name {member}");
        assert!(!line.contains("secret"), "no query string in the log: {line}");
        let fields: Vec<&str> = line.split_whitespace().rev().collect();
        assert_eq!(fields[0], "-", "no sticky route changed: {line}");
        let member_ms: f64 = fields[1].parse().expect("LBRS_MEMBER_MS");
        assert_eq!(fields[2], "answered", "LBRS_OUTCOME: {line}");
        assert!(fields[4] == "+" || fields[4] == "-", "%X: the client stayed: {line}");
        let micros: u64 = fields[5].parse().expect("%D");
        assert!(micros > 0 && micros < 10_000_000, "{line}");
        assert!(member_ms > 0.0 && member_ms * 1000.0 <= micros as f64, "{line}");
    }
    eprintln!("{}", lines.iter().find(|l| l.contains("/req-0 ")).unwrap());
}
