//! apache2 with the module under valgrind's memcheck, as one process (`-X`): a few thousand
//! requests over every method, the status page in every format, a member that refuses
//! connections and one that resets them, then a clean stop. No error may have a frame in the
//! module. httpd's and APR's own findings (and libc's) are not the module's and are reported,
//! not failed on.
//!
//! It takes about ten seconds, and needs valgrind (`scripts/setup.sh --tests` installs it);
//! scripts/valgrind.sh runs it alone and shows valgrind's summary. docs/operating.md has the
//! result of a run.

use lbrs_harness::{Apache, ApacheConfig, Backend, Load, backends, balancer_block, wait_for};
use std::fs;
use std::time::Duration;

/// The errors in valgrind's log, each as its block of lines.
fn errors(log: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in log.lines() {
        // "==pid== " prefixes every line; an empty body ends a block.
        let body = line.split_once("== ").map_or("", |(_, rest)| rest);
        if body.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
        } else {
            current.push_str(body);
            current.push('\n');
        }
    }
    blocks.push(current);
    blocks
        .into_iter()
        .filter(|b| {
            let first = b.lines().next().unwrap_or_default();
            first.starts_with("Invalid ")
                || first.starts_with("Conditional jump")
                || first.starts_with("Use of uninitialised")
                || first.starts_with("Syscall param")
                || first.contains("are definitely lost")
                || first.starts_with("Mismatched free")
                || first.contains("free()")
                || first.starts_with("Source and destination overlap")
        })
        .collect()
}

#[test]
fn no_memory_error_in_the_module_under_load() {
    let found =
        std::process::Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "valgrind is missing: run scripts/setup.sh --tests (or apt-get install valgrind)");
    let b = backends(&["a", "b", "c"]);
    let closed = lbrs_harness::apache::free_port().unwrap();
    let ours: Vec<(&Backend, &str)> = b.iter().map(|b| (b, "")).collect();
    let mut body = String::new();
    for (name, method) in [("w", "byweight"), ("i", "byinflight"), ("l", "bylatency"), ("h", "byhash")] {
        let block = balancer_block(name, &format!("/{name}"), &ours, &format!("lbmethod={method}"));
        body.push_str(
            &block.replace(
                "    ProxySet",
                "    LBHashKey \"%{REMOTE_PORT}\"\n    LBMaxInflight 50\n    ProxySet",
            ),
        );
    }
    // A member nothing listens on: failovers, errors, retries.
    body.push_str(&format!(
        "<Proxy \"balancer://f\">\n    BalancerMember \"http://127.0.0.1:{closed}\" retry=0\n    \
         BalancerMember \"{}\"\n    ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/f\" \"balancer://f/\"\n",
        b[0].url()
    ));
    let dir = std::env::temp_dir().join(format!("lbrs-valgrind-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("valgrind.log");
    let mut config = ApacheConfig::new(&body);
    config.under = vec![
        "valgrind".into(),
        "--tool=memcheck".into(),
        "--leak-check=full".into(),
        "--errors-for-leak-kinds=definite".into(),
        "--num-callers=40".into(),
        "--trace-children=no".into(),
        format!("--log-file={}", log_path.display()),
    ];
    let mut apache = Apache::start(config).unwrap();
    let mut answered = 0;
    for path in ["/w", "/i", "/l", "/h", "/f"] {
        let report = Load::new(path, 4, 600).deadline(Duration::from_secs(120)).run(apache.addr());
        eprintln!("{path}: {:?}", report.per_status());
        answered += report.count_status(200);
        let resets = Load::new(&format!("{path}/__reset"), 2, 20).run(apache.addr());
        assert!(resets.count_status(200) == 0, "resets are not answered 200");
    }
    for query in ["", "?format=json"] {
        for _ in 0..20 {
            assert_eq!(apache.get(&format!("/lb-status{query}")).unwrap().status, 200);
        }
    }
    assert!(answered >= 2700, "{answered} requests answered");
    assert!(wait_for(Duration::from_secs(30), || apache.status().is_ok_and(|s| s["balancers"].is_array())));
    apache.stop();

    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let all = errors(&log);
    let ours: Vec<&String> = all.iter().filter(|e| e.contains("lbmethod_rs")).collect();
    let summary = log.lines().rev().find(|l| l.contains("ERROR SUMMARY")).unwrap_or("(no summary)");
    eprintln!("valgrind: {answered} requests; {summary}; {} error(s) with a frame in the module", ours.len());
    for error in all.iter().filter(|e| !e.contains("lbmethod_rs")).take(5) {
        eprintln!("not the module's:\n{error}");
    }
    assert!(log.contains("ERROR SUMMARY"), "valgrind ran to the end:\n{log}");
    assert!(
        ours.is_empty(),
        "errors in the module:\n{}",
        ours.iter().map(|e| e.as_str()).collect::<Vec<_>>().join("\n")
    );
    let _ = fs::remove_dir_all(&dir);
}
