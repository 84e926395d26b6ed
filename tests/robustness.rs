//! Fault injection through the real apache2, under event and prefork: children killed with
//! SIGKILL under load, and a storm of graceful restarts that change the members and the method.
//! Afterwards every in-flight count is back to 0, every attempt is accounted for, no shared
//! memory is left behind and the parent's memory is flat.

use lbrs_harness::os;
use lbrs_harness::{Apache, ApacheConfig, Backend, Load, Mpm, app_server, balancer_block, wait_for};
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// Every member of every balancer: (in flight, and whether `selected = completed + failed +
/// handed_over + inflight`).
fn accounting(apache: &Apache) -> Vec<(u64, bool, String)> {
    let status = apache.status().unwrap();
    status["balancers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["members"].as_array().unwrap().clone())
        .map(|m| {
            let count = |field: &str| m[field].as_u64().unwrap_or(u64::MAX);
            let adds_up = count("selected")
                == count("completed") + count("failed") + count("handed_over") + count("inflight");
            (count("inflight"), adds_up, m.to_string())
        })
        .collect()
}

/// Waits until nothing is in flight, then checks that every attempt is accounted for.
fn assert_settled(apache: &Apache) {
    let idle = wait_for(Duration::from_secs(20), || accounting(apache).iter().all(|(n, _, _)| *n == 0));
    let members = accounting(apache);
    assert!(idle, "in-flight counts stay: {members:?}");
    for (_, adds_up, member) in members {
        assert!(adds_up, "selected != completed + failed + handed_over + inflight: {member}");
    }
}

/// A pseudo-random number from a counter (no dependency for one draw).
fn draw(n: u64) -> u64 {
    let mut z = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z ^= z >> 31;
    z.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 17
}

fn kills_under(mpm: Mpm) {
    let b = [app_server("a", 8, 40), app_server("b", 8, 40), app_server("c", 8, 40)];
    let members: Vec<(&Backend, &str)> = b.iter().map(|b| (b, "")).collect();
    let body = balancer_block("app", "/", &members, "lbmethod=byinflight");
    let config = ApacheConfig::new(&body).mpm(mpm).processes(if mpm == Mpm::Prefork { 10 } else { 3 });
    let apache = Apache::start(config).unwrap();
    let load = Load::new("/", 12, 100_000).deadline(Duration::from_secs(8));
    let killed = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        let mut killed = Vec::new();
        for round in 0..10u64 {
            thread::sleep(Duration::from_millis(400));
            let children = apache.children();
            if children.is_empty() {
                continue;
            }
            let victim = children[(draw(round) % children.len() as u64) as usize];
            os::signal(victim as i32, libc::SIGKILL);
            killed.push(victim);
        }
        let report = running.join().unwrap();
        assert!(report.count_status(200) > 100, "the server kept serving: {:?}", report.per_status());
        killed
    });
    assert_eq!(killed.len(), 10, "ten children killed");
    assert_settled(&apache);
    assert!(
        apache.error_log().contains("its in-flight counts were given back"),
        "the parent repaired counts"
    );
}

/// Children killed under load with a cap of `cap` on each of four members, and clients for
/// half the places: a count left behind by a kill would fill a member for good, and the
/// requests it then turns away would be shed. None is: at rest nothing is in flight, every
/// attempt is accounted for, and no request was shed.
fn kills_with_a_cap(mpm: Mpm, cap: u64) {
    let b = [app_server("a", 8, 30), app_server("b", 8, 30), app_server("c", 8, 30), app_server("d", 8, 30)];
    let members: Vec<(&Backend, &str)> = b.iter().map(|b| (b, "")).collect();
    let body = balancer_block("app", "/", &members, "lbmethod=byinflight")
        .replace("    ProxySet", &format!("    LBMaxInflight {cap}\n    ProxySet"));
    let config = ApacheConfig::new(&body).mpm(mpm).processes(if mpm == Mpm::Prefork { 8 } else { 3 });
    let apache = Apache::start(config).unwrap();
    let load = Load::new("/", 2 * cap as usize, 100_000).deadline(Duration::from_secs(6));
    thread::scope(|scope| {
        let running = scope.spawn(|| load.run(apache.addr()));
        for round in 0..8u64 {
            thread::sleep(Duration::from_millis(600));
            let children = apache.children();
            if let Some(&victim) = children.get((draw(round) % children.len().max(1) as u64) as usize) {
                os::signal(victim as i32, libc::SIGKILL);
            }
        }
        let report = running.join().unwrap();
        assert_eq!(report.count_status(503), 0, "shed: {:?}", report.per_status());
        assert!(report.count_status(200) > 100, "{:?}", report.per_status());
    });
    assert_settled(&apache);
    let shed = apache.status().unwrap()["balancers"][0]["shed"].clone();
    assert_eq!(shed, 0, "nothing shed");
}

#[test]
fn killed_children_leave_no_place_taken_with_a_cap_of_1_under_event() {
    kills_with_a_cap(Mpm::Event, 1);
}

#[test]
fn killed_children_leave_no_place_taken_with_a_cap_of_1_under_prefork() {
    kills_with_a_cap(Mpm::Prefork, 1);
}

#[test]
fn killed_children_leave_no_place_taken_with_a_cap_of_2_under_event() {
    kills_with_a_cap(Mpm::Event, 2);
}

#[test]
fn killed_children_leave_no_place_taken_with_a_cap_of_2_under_prefork() {
    kills_with_a_cap(Mpm::Prefork, 2);
}

#[test]
fn ten_children_killed_under_load_leave_no_count_behind_under_event() {
    kills_under(Mpm::Event);
}

#[test]
fn ten_children_killed_under_load_leave_no_count_behind_under_prefork() {
    kills_under(Mpm::Prefork);
}

/// Shared mappings of a process (anonymous shared memory, SysV and POSIX segments).
fn shared_mappings(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.split_whitespace().nth(1).is_some_and(|perms| perms.ends_with('s')))
        .count()
}

/// Resident memory of a process, in kB.
fn resident_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn storm_under(mpm: Mpm) {
    let b = [app_server("a", 8, 20), app_server("b", 8, 20), app_server("c", 8, 20)];
    // Configurations the storm cycles through: members come and go, the method changes.
    let configs: Vec<String> = [
        ("lbmethod=byweight", 2),
        ("lbmethod=byinflight", 3),
        ("lbmethod=bylatency", 2),
        ("lbmethod=byhash", 3),
    ]
    .iter()
    .map(|&(method, count)| {
        let members: Vec<(&Backend, &str)> = b.iter().take(count).map(|b| (b, "")).collect();
        balancer_block("app", "/", &members, method)
            .replace("    ProxySet", "    LBHashKey \"%{REMOTE_PORT}\"\n    ProxySet")
    })
    .collect();
    let mut apache = Apache::start(ApacheConfig::new(&configs[0]).mpm(mpm)).unwrap();
    let parent = apache.pid().unwrap();
    // One restart first, so that what a first restart allocates once is not counted as growth.
    apache.reconfigure(&configs[1]).unwrap();
    let (mappings_before, memory_before) = (shared_mappings(parent), resident_kb(parent));

    let addr = apache.addr();
    let load = Load::new("/", 8, 1_000_000).deadline(Duration::from_secs(30));
    let started = Instant::now();
    let report = thread::scope(|scope| {
        let running = scope.spawn(|| load.run(addr));
        for restart in 0..20 {
            apache.reconfigure(&configs[restart % configs.len()]).unwrap();
            thread::sleep(Duration::from_millis(200));
        }
        running.join().unwrap()
    });
    eprintln!("{mpm:?}: 20 restarts in {:?}, {:?}", started.elapsed(), report.per_status());
    assert_eq!(apache.pid(), Some(parent), "the same parent throughout");
    let failures: Vec<_> = report.outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(failures.is_empty(), "{} requests failed: {:?}", failures.len(), report.errors());
    assert!(report.count_status(200) > 500, "{:?}", report.per_status());
    assert_settled(&apache);

    let (mappings_after, memory_after) = (shared_mappings(parent), resident_kb(parent));
    eprintln!(
        "parent: shared mappings {mappings_before} -> {mappings_after}, RSS {memory_before} -> {memory_after} kB"
    );
    assert!(
        mappings_after <= mappings_before,
        "shared memory left behind: {mappings_before} -> {mappings_after}"
    );
    assert!(memory_after < memory_before + 4096, "the parent grew: {memory_before} -> {memory_after} kB");
}

#[test]
fn a_storm_of_graceful_restarts_changing_members_and_methods_under_event() {
    storm_under(Mpm::Event);
}

#[test]
fn a_storm_of_graceful_restarts_changing_members_and_methods_under_prefork() {
    storm_under(Mpm::Prefork);
}
