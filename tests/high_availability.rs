//! High availability beyond one balancer (docs/high-availability.md), with the real engines:
//! two nodes each running apache2 with the module and keepalived with the files shipped in
//! httpd-conf/ha/, backends, a client, and dnsmasq serving httpd-conf/ha/dns.zone, on a network
//! of namespaces this test builds (addresses from 198.18.0.0/15; nothing leaves them).
//!
//! - Active/passive: the virtual address answers through node A; stopping A's Apache moves it to
//!   node B within a measured time, and a client loop fails only inside that window; A coming
//!   back does not take the address back (`nopreempt`); no request is left in flight; when B
//!   drops off the network, A takes the address within the master-down time.
//! - Active/active behind DNS: the name resolves to both virtual addresses, requests spread over
//!   both nodes, `byhash` sends a key to the same backend through either node, a client that
//!   tries the next address gets through while a node's Apache is down, its address moves to the
//!   other node, and goes home once the node is back; removing a node's health file drains it.
//!
//! Needs root (namespaces): without it, says why and passes. CI runs as root.

use lbrs_harness::client::Connection;
use lbrs_harness::ha::{self, Dnsmasq, Keepalived, NsApache};
use lbrs_harness::netns::{self, Lan, Netns, NsBackends, NsResolver, ScratchDir};
use lbrs_harness::os;
use lbrs_harness::recipe::Recipe;
use lbrs_harness::{ApacheConfig, BackendSpec, ms};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const APPS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 21);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 31);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);
const VIP_1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP_2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
/// The zone the shipped snippet is pasted into, and the name it defines there.
const ORIGIN: &str = "ha.test";
const NAME: &str = "app.ha.test";
/// The failover time the product promises with `advert_int 1`.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

/// Fails the test with the error's text (multi-line logs stay readable), so that every guard
/// still cleans up while unwinding, and prints its program's log.
trait OrFail<T> {
    fn or_fail(self, what: &str) -> T;
}

impl<T> OrFail<T> for Result<T, String> {
    fn or_fail(self, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

fn can_run() -> bool {
    if !netns::is_root() {
        eprintln!("skipped: this test builds network namespaces, which needs root (CI runs as root)");
        return false;
    }
    // The nodes load handoff.nft; `scripts/setup.sh --tests` installs nftables.
    assert!(ha::installed("nft").is_some(), "nft is missing: apt-get install nftables");
    true
}

/// Polls `condition` every 25 ms for at most `within`; when it held, if it did.
fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Whether `ns` holds the virtual `address`: has it on eth0 (every node keeps a copy on lo, for
/// the hand-off, which does not answer ARP).
fn holds(ns: &Netns, address: Ipv4Addr) -> bool {
    ns.has_address("eth0", address).unwrap_or(false)
}

/// lbrs-ha-check, which the shipped keepalived files run as /etc/keepalived/lbrs-ha-check, in a
/// scratch directory instead (root's, mode 755, as keepalived's script security requires): the
/// test changes nothing on the machine.
fn check_script() -> ScratchDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = ScratchDir::new().or_fail("a directory for lbrs-ha-check");
    let path = dir.path().join("lbrs-ha-check");
    fs::write(&path, ha::shipped("lbrs-ha-check").or_fail("lbrs-ha-check"))
        .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)))
        .map_err(|e| e.to_string())
        .or_fail("installing lbrs-ha-check");
    dir
}

/// lbrs-vrrp-notify for the node at `own`, in the scripts' scratch directory, with one hook
/// that writes each state it is told of, a line each, to `notified-<own>` there (see
/// [`notified`]). Returns the script's path.
fn install_notify(scripts: &ScratchDir, own: Ipv4Addr) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let hooks = scripts.path().join(format!("hooks-{own}"));
    let record = scripts.path().join(format!("notified-{own}"));
    let script = scripts.path().join(format!("lbrs-vrrp-notify-{own}"));
    let shipped = ha::shipped("lbrs-vrrp-notify").or_fail("lbrs-vrrp-notify");
    assert!(shipped.contains("/etc/keepalived/lbrs-notify.d/"), "the hooks' directory");
    let text = shipped.replace("/etc/keepalived/lbrs-notify.d/", &format!("{}/", hooks.display()));
    let hook = format!("#!/bin/sh\necho \"$1 $2 $3\" >> '{}'\n", record.display());
    let written = fs::create_dir_all(&hooks)
        .and_then(|()| fs::write(&script, text))
        .and_then(|()| fs::set_permissions(&script, fs::Permissions::from_mode(0o755)))
        .and_then(|()| fs::write(hooks.join("record"), hook))
        .and_then(|()| fs::set_permissions(hooks.join("record"), fs::Permissions::from_mode(0o755)))
        // keepalived runs the script (and so the hook) as nobody.
        .and_then(|()| fs::write(&record, ""))
        .and_then(|()| fs::set_permissions(&record, fs::Permissions::from_mode(0o666)));
    written.map_err(|e| e.to_string()).or_fail("installing lbrs-vrrp-notify");
    script
}

/// The states lbrs-vrrp-notify's hook was told of on the node at `own`, in order.
fn notified(scripts: &ScratchDir, own: Ipv4Addr) -> Vec<String> {
    let record = fs::read_to_string(scripts.path().join(format!("notified-{own}"))).unwrap_or_default();
    record.lines().filter_map(|l| l.split_whitespace().nth(2).map(str::to_string)).collect()
}

/// What docs/high-availability.md sets up on each node besides Apache and keepalived: the
/// sysctls (binding the virtual addresses, and no ARP answers from their copies on lo) and the
/// hand-off table (handoff.nft) for `vips`.
fn prepare_node(ns: &Netns, peer: Ipv4Addr, vips: &[Ipv4Addr]) {
    for (key, value) in [
        ("net.ipv4.ip_nonlocal_bind", "1"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ] {
        ns.sysctl(key, value).or_fail(key);
    }
    let vips = vips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ");
    let table = ha::fill(
        &ha::shipped("handoff.nft").or_fail("handoff.nft"),
        &[("INTERFACE", "eth0"), ("PEER_IP", &peer.to_string()), ("VIRTUAL_IPS", &vips)],
    )
    .or_fail("filling handoff.nft");
    let dir = ScratchDir::new().or_fail("a directory for handoff.nft");
    let path = dir.path().join("handoff.nft");
    fs::write(&path, table).map_err(|e| e.to_string()).or_fail("writing handoff.nft");
    // Twice, as a sysadmin who fixes a value and loads it again does: the second load replaces
    // the rules and keeps the sets.
    for _ in 0..2 {
        netns::checked(ns.command("nft").arg("-f").arg(&path)).or_fail("nft -f handoff.nft");
    }
    let rules = netns::checked(ns.command("nft").args(["list", "chain", "ip", "lbrs_handoff", "prerouting"]))
        .or_fail("nft list chain");
    assert_eq!(rules.matches("dup to").count(), 3, "the rules once, not twice:\n{rules}");
}

/// The directory the health page is served from, with its `ok` file.
fn health_dir() -> ScratchDir {
    let dir = ScratchDir::new().or_fail("health directory");
    fs::write(dir.path().join("ok"), "ok\n").map_err(|e| e.to_string()).or_fail("health file");
    dir
}

/// A node's apache2: the shipped health page, a header naming the node, and `balancer`.
fn start_node(
    ns: &Netns,
    label: &str,
    health: &ScratchDir,
    peer: Ipv4Addr,
    balancer: &str,
    listen: &[String],
) -> NsApache {
    let health_conf = ha::fill(
        &ha::shipped("health.conf").or_fail("health.conf"),
        &[("HEALTH_DIR", &health.path().display().to_string()), ("CHECKER_IPS", &peer.to_string())],
    )
    .or_fail("filling health.conf");
    let body = format!("{health_conf}\nHeader always set X-Lbrs-Node \"{label}\"\n{balancer}");
    let mut config =
        ApacheConfig::new(&body).with_module("alias").with_module("headers").processes(2).threads(8);
    for address in listen {
        config = config.listen(address);
    }
    NsApache::start(ns, label, &config, 80).or_fail(&format!("starting apache2 on node {label}"))
}

fn balancer(ports: &[u16], settings: &str) -> String {
    let mut block = String::from("<Proxy \"balancer://app\">\n");
    for port in ports {
        block.push_str(&format!("    BalancerMember \"http://{APPS}:{port}\"\n"));
    }
    block.push_str(&format!("    {settings}\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n"));
    block
}

fn start_backends(apps: &Netns, ports: &[u16]) -> NsBackends {
    let specs = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let spec = BackendSpec::new(&format!("app{}", i + 1)).delay(Duration::from_millis(5));
            (SocketAddr::from((APPS, *port)), spec)
        })
        .collect();
    NsBackends::start(apps, specs).or_fail("starting the backends")
}

/// One request to `address`:80 from the calling thread's namespace: the node that answered.
fn request(address: Ipv4Addr, headers: &[(&str, &str)]) -> Result<(String, String), String> {
    let mut connection = Connection::open(SocketAddr::from((address, 80)), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let mut headers = headers.to_vec();
    headers.push(("Connection", "close"));
    answer(&mut connection, "/", &headers)
}

/// A GET of `path` on `connection`: the node and the backend that answered it with 200.
fn answer(
    connection: &mut Connection,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(String, String), String> {
    let response = connection.request("GET", path, headers, b"").map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    let node = response.header("X-Lbrs-Node").ok_or("no X-Lbrs-Node header")?.to_string();
    let backend = response.header("X-Backend").ok_or("no X-Backend header")?.to_string();
    Ok((node, backend))
}

/// The node that answers `address` for the client.
fn node_behind(client: &Netns, address: Ipv4Addr) -> Result<String, String> {
    client.run(move || request(address, &[]))?.map(|(node, _)| node)
}

/// Every member of every balancer on `apache`'s status page: (name, inflight, selected).
fn members(apache: &NsApache, ns: &Netns) -> Vec<(String, u64, u64)> {
    let status = apache.status(ns).or_fail("status page");
    status["balancers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("?").to_string(),
                m["inflight"].as_u64().unwrap_or(u64::MAX),
                m["selected"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits (at most 5 s) until nothing is in flight on the node's status page; its members.
fn assert_nothing_in_flight(apache: &NsApache, ns: &Netns, node: &str) -> Vec<(String, u64, u64)> {
    let settled = wait_until(Duration::from_secs(5), || members(apache, ns).iter().all(|m| m.1 == 0));
    let members = members(apache, ns);
    assert!(settled.is_some() && !members.is_empty(), "node {node}: requests left in flight: {members:?}");
    members
}

/// The shipped `file` for a node at `own`, running the `check` script's copy of lbrs-ha-check.
fn keepalived_conf(file: &str, own: Ipv4Addr, peer: Ipv4Addr, check: &ScratchDir) -> String {
    let notify = install_notify(check, own);
    let (own, peer, vip_1, vip_2) = (own.to_string(), peer.to_string(), VIP_1.to_string(), VIP_2.to_string());
    let shipped = ha::shipped(file).or_fail(file);
    const INSTALLED: &str = "/etc/keepalived/lbrs-ha-check";
    assert!(shipped.contains(INSTALLED), "{file} does not run {INSTALLED}");
    let shipped = shipped.replace(INSTALLED, &check.path().join("lbrs-ha-check").display().to_string());
    const NOTIFY: &str = "/etc/keepalived/lbrs-vrrp-notify";
    assert!(shipped.contains(NOTIFY), "{file} does not run {NOTIFY}");
    let shipped = shipped.replace(NOTIFY, &notify.display().to_string());
    ha::fill(
        &shipped,
        &[
            ("INTERFACE", "eth0"),
            ("SELF_IP", &own),
            ("PEER_IP", &peer),
            ("VIRTUAL_IP", &vip_1),
            ("VIRTUAL_IP_1", &vip_1),
            ("VIRTUAL_IP_2", &vip_2),
            ("PREFIX", "24"),
        ],
    )
    .or_fail(&format!("filling {file}"))
}

/// One request of the client loop: when it started and ended, and the node or the error.
struct Sample {
    start: Instant,
    end: Instant,
    outcome: Result<String, String>,
}

/// Requests to `address` one after another (20 ms apart), until `stop`, at most `count` of them
/// and for at most `time`.
fn client_loop(address: Ipv4Addr, stop: &AtomicBool, count: usize, time: Duration) -> Vec<Sample> {
    let begun = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < count && begun.elapsed() < time && !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        let outcome = request(address, &[]).map(|(node, _)| node);
        samples.push(Sample { start, end: Instant::now(), outcome });
        thread::sleep(Duration::from_millis(20));
    }
    samples
}

/// An active/passive pair as docs/high-availability.md sets it up, with the shipped files:
/// each node prepared (sysctls, handoff.nft), Apache with the health page and `body`, listening
/// on the virtual address and 127.0.0.1, keepalived-a.conf and -b.conf checked and started;
/// node a holds the address and answers it, node b is the backup.
struct ActivePassive {
    scripts: ScratchDir,
    health_a: ScratchDir,
    health_b: ScratchDir,
    apache_a: NsApache,
    apache_b: NsApache,
    conf_a: String,
    keepalived_a: Keepalived,
    keepalived_b: Keepalived,
}

fn active_passive(lan: &Lan, body: &str) -> ActivePassive {
    let (a, b) = (lan.host("a"), lan.host("b"));
    // Apache listens on the virtual address even while the other node holds it (which
    // ip_nonlocal_bind allows), and on 127.0.0.1 for the health and status pages.
    let listen = [format!("{VIP_1}:80"), "127.0.0.1:80".to_string()];
    let (health_a, health_b) = (health_dir(), health_dir());
    prepare_node(a, NODE_B, &[VIP_1]);
    prepare_node(b, NODE_A, &[VIP_1]);
    let scripts = check_script();
    let apache_a = start_node(a, "a", &health_a, NODE_B, body, &listen);
    let apache_b = start_node(b, "b", &health_b, NODE_A, body, &listen);
    let conf_a = keepalived_conf("keepalived-a.conf", NODE_A, NODE_B, &scripts);
    let conf_b = keepalived_conf("keepalived-b.conf", NODE_B, NODE_A, &scripts);
    Keepalived::check(a, &conf_a).or_fail("keepalived-a.conf");
    Keepalived::check(b, &conf_b).or_fail("keepalived-b.conf");
    let keepalived_a = Keepalived::start(a, "node a", &conf_a).or_fail("starting keepalived on node a");
    assert!(wait_until(Duration::from_secs(20), || holds(a, VIP_1)).is_some(), "node a never took {VIP_1}");
    let keepalived_b = Keepalived::start(b, "node b", &conf_b).or_fail("starting keepalived on node b");
    let b_ready = wait_until(Duration::from_secs(20), || keepalived_b.count("Entering BACKUP STATE") > 0);
    assert!(b_ready.is_some(), "node b never became the backup");
    assert!(!holds(b, VIP_1), "both nodes hold {VIP_1}");
    let answered = node_behind(lan.host("client"), VIP_1);
    assert_eq!(answered.as_deref(), Ok("a"), "the virtual address answers through node a");
    ActivePassive { scripts, health_a, health_b, apache_a, apache_b, conf_a, keepalived_a, keepalived_b }
}

#[test]
fn an_active_passive_pair_fails_over_within_seconds_and_the_first_node_does_not_take_the_address_back() {
    if !can_run() {
        return;
    }
    let lan = Lan::build("ap", &[("a", NODE_A), ("b", NODE_B), ("apps", APPS), ("client", CLIENT)])
        .or_fail("building the test network");
    let (a, b, client) = (lan.host("a"), lan.host("b"), lan.host("client"));
    let ports = [8081, 8082];
    let _backends = start_backends(lan.host("apps"), &ports);
    let pair = active_passive(&lan, &balancer(&ports, "ProxySet lbmethod=byinflight"));
    let ActivePassive { scripts: check, mut apache_a, apache_b, keepalived_a, .. } = pair;

    // A client keeps asking while node a's Apache stops.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_loop = Arc::clone(&stop);
    let looping = client
        .spawn(move || client_loop(VIP_1, &stop_loop, 3000, Duration::from_secs(45)))
        .or_fail("starting the client loop");
    thread::sleep(Duration::from_secs(1));
    let stopped_at = Instant::now();
    apache_a.stop();
    let moved_at = wait_until(Duration::from_secs(20), || holds(b, VIP_1));
    let a_released = !holds(a, VIP_1);
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let samples = looping
        .join()
        .map_err(|_| "the client loop panicked".to_string())
        .and_then(|r| r)
        .or_fail("client loop");
    let moved_at = moved_at.unwrap_or_else(|| panic!("{VIP_1} did not move to node b within 20 s"));
    assert!(a_released, "node a kept {VIP_1} after node b took it");

    let failover = moved_at - stopped_at;
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_err()).collect();
    let last_failure = failed.iter().map(|s| s.end).max().map_or(Duration::ZERO, |end| end - stopped_at);
    eprintln!(
        "active/passive failover: {VIP_1} moved to node b {:.0} ms after Apache stopped on node a; \
         {} of {} requests failed, the last ending {:.0} ms after the stop (first errors: {:?})",
        ms(failover),
        failed.len(),
        samples.len(),
        ms(last_failure),
        failed.iter().take(3).map(|s| s.outcome.clone().err().unwrap_or_default()).collect::<Vec<_>>(),
    );
    assert!(failover < FAILOVER_BOUND, "failover took {failover:?}");
    // Requests that start after the move (with a second for gratuitous ARP to land) all succeed.
    let settled = moved_at + Duration::from_secs(1);
    for sample in &failed {
        assert!(
            sample.end >= stopped_at && sample.start <= settled,
            "a request failed outside the failover window ({:.0} ms to {:.0} ms after the stop): {:?}",
            ms(sample.start.saturating_duration_since(stopped_at)),
            ms(sample.end.saturating_duration_since(stopped_at)),
            sample.outcome
        );
    }
    let before: Vec<&Sample> = samples.iter().filter(|s| s.end < stopped_at).collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.start > settled).collect();
    assert!(
        before.len() >= 10 && after.len() >= 20,
        "too few requests: {} before, {} after",
        before.len(),
        after.len()
    );
    assert!(before.iter().all(|s| s.outcome.as_deref() == Ok("a")), "before the stop, node a answered");
    assert!(after.iter().all(|s| s.outcome.as_deref() == Ok("b")), "after the move, node b answered");

    // Node a's Apache comes back: its keepalived leaves FAULT for BACKUP and stays there.
    let backups = keepalived_a.count("Entering BACKUP STATE");
    apache_a.start_again(a).or_fail("restarting apache2 on node a");
    let back = wait_until(Duration::from_secs(20), || keepalived_a.count("Entering BACKUP STATE") > backups);
    assert!(back.is_some(), "node a's keepalived did not become a backup again");
    // With preemption, node a (priority 150) would take the address at b's next advert (1 s).
    thread::sleep(Duration::from_secs(5));
    assert!(holds(b, VIP_1) && !holds(a, VIP_1), "node a took {VIP_1} back (nopreempt)");
    assert_eq!(keepalived_a.count("Entering MASTER STATE"), 1, "node a became master again");
    assert_eq!(node_behind(client, VIP_1).as_deref(), Ok("b"));

    assert_nothing_in_flight(&apache_a, a, "a");
    let served = assert_nothing_in_flight(&apache_b, b, "b");
    assert!(served.iter().map(|m| m.2).sum::<u64>() > 0, "node b served nothing: {served:?}");

    // Node b drops off the network, as a machine that dies does: no advert with priority 0
    // this time, so node a takes over when its master-down timer runs out (3 adverts + skew).
    let cut_at = Instant::now();
    b.ip(&["link", "set", "eth0", "down"]).or_fail("cutting node b off");
    let taken = wait_until(Duration::from_secs(20), || holds(a, VIP_1))
        .unwrap_or_else(|| panic!("node a did not take {VIP_1} within 20 s of node b's link going down"));
    let takeover = taken - cut_at;
    eprintln!("active/passive: {VIP_1} on node a {:.0} ms after node b's link went down", ms(takeover));
    assert!(takeover < FAILOVER_BOUND, "takeover took {takeover:?}");
    // lbrs-vrrp-notify told its hooks every change: a was master, failed, came back as backup
    // and became master again; b became master when a failed.
    // (keepalived runs the script after the change, in its own time.)
    let order = ["MASTER", "FAULT", "BACKUP", "MASTER"];
    let in_order = |told: &[String]| {
        let mut rest = told.iter();
        order.iter().all(|state| rest.any(|t| t == state))
    };
    wait_until(Duration::from_secs(5), || in_order(&notified(&check, NODE_A)));
    let told_a = notified(&check, NODE_A);
    let told_b = notified(&check, NODE_B);
    eprintln!("lbrs-vrrp-notify: node a {told_a:?}, node b {told_b:?}");
    assert!(in_order(&told_a), "node a was told {told_a:?}");
    assert!(told_b.iter().any(|s| s == "MASTER"), "node b was told {told_b:?}");
    assert_eq!(node_behind(client, VIP_1).as_deref(), Ok("a"));
}

/// Slow requests (`/slow/`, 1.5 s each) to `address`, one after another, until `stop`, at most
/// `count` of them and for at most `time`.
fn slow_loop(address: Ipv4Addr, stop: &AtomicBool, count: usize, time: Duration) -> Vec<Sample> {
    let begun = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < count && begun.elapsed() < time && !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        let outcome = Connection::open(SocketAddr::from((address, 80)), Duration::from_secs(6))
            .map_err(|e| e.to_string())
            .and_then(|mut c| answer(&mut c, "/slow/", &[("Connection", "close")]))
            .map(|(node, _)| node);
        samples.push(Sample { start, end: Instant::now(), outcome });
    }
    samples
}

/// The thread of [`kept_alive_across`]: the nodes that answered, or why not.
type KeptAlive = thread::JoinHandle<Result<Result<(String, String), String>, String>>;

/// A kept-alive connection to `VIP_1` from `client`: a request, then, once `moved` is set,
/// another on the same connection; the nodes that answered them.
fn kept_alive_across(client: &Netns, moved: &Arc<AtomicBool>) -> KeptAlive {
    let moved = Arc::clone(moved);
    client
        .spawn(move || -> Result<(String, String), String> {
            let mut connection = Connection::open(SocketAddr::from((VIP_1, 80)), Duration::from_secs(6))
                .map_err(|e| e.to_string())?;
            let (before, _) = answer(&mut connection, "/", &[])?;
            let deadline = Instant::now() + Duration::from_secs(12);
            while !moved.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            thread::sleep(Duration::from_millis(500));
            let (after, _) = answer(&mut connection, "/", &[])?;
            Ok((before, after))
        })
        .or_fail("kept-alive client")
}

/// The ports `ns`'s hand-off table holds open for its peer (the peer's heartbeats).
fn handoff_open_ports(ns: &Netns) -> String {
    let set = netns::checked(ns.command("nft").args(["list", "set", "ip", "lbrs_handoff", "peer_alive"]))
        .unwrap_or_default();
    set.split_once("elements = {")
        .map_or(String::new(), |(_, e)| e.split('}').next().unwrap_or("").to_string())
}

/// How many packets `ns`'s hand-off table has passed to its peer.
fn handed_packets(ns: &Netns) -> u64 {
    let chain = netns::checked(ns.command("nft").args(["list", "chain", "ip", "lbrs_handoff", "prerouting"]))
        .unwrap_or_default();
    chain
        .split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A planned switch-over (the health file removed on the master) and the fail-back, with the
/// shipped hand-off (lbrs-ha-check's heartbeats, handoff.nft, the addresses kept on lo): requests
/// in flight on the node that gives the address up finish there, a kept-alive connection to it
/// goes on being answered by it, and no client request fails, in either direction. When a
/// node's Apache stops, its peer stops passing it packets within seconds.
#[test]
fn a_planned_switch_over_and_the_fail_back_lose_no_request_in_flight() {
    if !can_run() {
        return;
    }
    let lan = Lan::build("ho", &[("a", NODE_A), ("b", NODE_B), ("apps", APPS), ("client", CLIENT)])
        .or_fail("building the test network");
    let (a, b, client) = (lan.host("a"), lan.host("b"), lan.host("client"));
    let (fast, slow) = ([8081, 8082], [8091, 8092]);
    let _fast = start_backends(lan.host("apps"), &fast);
    let specs = slow
        .iter()
        .map(|port| {
            let spec = BackendSpec::new(&format!("slow{port}")).delay(Duration::from_millis(1500));
            (SocketAddr::from((APPS, *port)), spec)
        })
        .collect();
    let _slow = NsBackends::start(lan.host("apps"), specs).or_fail("starting the slow backends");
    let mut body = String::from("KeepAliveTimeout 15\n<Proxy \"balancer://slow\">\n");
    for port in slow {
        body.push_str(&format!("    BalancerMember \"http://{APPS}:{port}\"\n"));
    }
    body.push_str("    ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/slow/\" \"balancer://slow/\"\n");
    body.push_str(&balancer(&fast, "ProxySet lbmethod=byinflight"));
    let pair = active_passive(&lan, &body);
    let ActivePassive { health_a, health_b, mut apache_b, keepalived_a, keepalived_b, .. } = pair;
    // Each node's heartbeats open both ports on the other.
    let open = wait_until(Duration::from_secs(10), || {
        [a, b].iter().all(|n| handoff_open_ports(n).contains("80") && handoff_open_ports(n).contains("443"))
    });
    assert!(open.is_some(), "heartbeats: a {:?}, b {:?}", handoff_open_ports(a), handoff_open_ports(b));
    assert_eq!(node_behind(client, VIP_1).as_deref(), Ok("a"));

    // Clients: one asking every 20 ms, four asking for 1.5 s answers back to back, and one
    // kept-alive connection, answered once before the switch-over and once after.
    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicBool::new(false));
    let moved_back = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    let stop_fast = Arc::clone(&stop);
    loops.push(
        client
            .spawn(move || client_loop(VIP_1, &stop_fast, 3000, Duration::from_secs(60)))
            .or_fail("fast client loop"),
    );
    for _ in 0..4 {
        let stop_slow = Arc::clone(&stop);
        loops.push(
            client
                .spawn(move || slow_loop(VIP_1, &stop_slow, 100, Duration::from_secs(60)))
                .or_fail("slow loop"),
        );
    }
    let kept_to_b = kept_alive_across(client, &moved);
    thread::sleep(Duration::from_secs(2));

    // The switch-over, as docs/high-availability.md gives it, on node a: its health file goes.
    let recipe = Recipe::load("docs/high-availability.md", "ha-switch-over")
        .replace("/var/www/lbrs-health", &health_a.path().display().to_string())
        .replace("192.0.2.100", &VIP_1.to_string());
    let steps: Vec<&str> =
        recipe.text().lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert!(
        steps.len() == 4 && steps[0].starts_with("rm ") && steps[3].starts_with("echo ok"),
        "ha-switch-over: remove the file, see where the address is, count what is in flight, put it back: {steps:?}"
    );
    let on_a = |step: &str| netns::checked(a.command("sh").args(["-c", step])).or_fail(step);
    let drained_at = Instant::now();
    on_a(steps[0]);
    let moved_to_b = wait_until(Duration::from_secs(20), || holds(b, VIP_1) && !holds(a, VIP_1))
        .unwrap_or_else(|| panic!("{VIP_1} did not move to node b"));
    moved.store(true, Ordering::SeqCst);
    eprintln!(
        "switch-over: {VIP_1} on node b {:.0} ms after a's health file went",
        ms(moved_to_b - drained_at)
    );
    on_a(steps[1]);
    // What was open on node a finishes there: the slow requests, the kept-alive connection.
    let kept_to_b =
        kept_to_b.join().map_err(|_| "panicked".to_string()).and_then(|r| r).or_fail("kept-alive");
    let drained = wait_until(Duration::from_secs(10), || on_a(steps[2]).trim() == "0");
    assert!(drained.is_some(), "connections left on node a: {}", on_a(steps[2]));
    let passed_by_b = handed_packets(b);

    // The fail-back: a's file is back (a leaves FAULT for BACKUP), then b's goes.
    let backups = keepalived_a.count("Entering BACKUP STATE");
    on_a(steps[3]);
    let ready = wait_until(Duration::from_secs(15), || keepalived_a.count("Entering BACKUP STATE") > backups);
    assert!(ready.is_some(), "node a did not become a backup again");
    let kept_to_a = kept_alive_across(client, &moved_back);
    thread::sleep(Duration::from_millis(300));
    let drained_at = Instant::now();
    fs::remove_file(health_b.path().join("ok")).map_err(|e| e.to_string()).or_fail("health file b");
    let moved_to_a = wait_until(Duration::from_secs(20), || holds(a, VIP_1) && !holds(b, VIP_1))
        .unwrap_or_else(|| panic!("{VIP_1} did not move back to node a"));
    moved_back.store(true, Ordering::SeqCst);
    eprintln!(
        "fail-back: {VIP_1} on node a {:.0} ms after b's health file went",
        ms(moved_to_a - drained_at)
    );
    thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);

    let mut samples = Vec::new();
    for looping in loops {
        samples.extend(
            looping.join().map_err(|_| "a client loop panicked".to_string()).and_then(|r| r).or_fail("loop"),
        );
    }
    let kept_to_a =
        kept_to_a.join().map_err(|_| "panicked".to_string()).and_then(|r| r).or_fail("kept-alive");
    let failed: Vec<_> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    // Slow requests that started on the node giving the address up and ended after the move.
    let handed_over = |node: &str, at: Instant| {
        samples.iter().filter(|s| s.start < at && s.end > at && s.outcome.as_deref() == Ok(node)).count()
    };
    let (over_to_b, over_to_a) = (handed_over("a", moved_to_b), handed_over("b", moved_to_a));
    eprintln!(
        "hand-off: {} requests, {} failed {:?}; in flight across the switch-over and finished on a: {over_to_b}, \
         across the fail-back on b: {over_to_a}; kept-alive connections answered by {kept_to_b:?} and \
         {kept_to_a:?}; packets passed by b {passed_by_b}, by a {}",
        samples.len(),
        failed.len(),
        failed.iter().take(3).collect::<Vec<_>>(),
        handed_packets(a)
    );
    assert!(failed.is_empty(), "requests failed across a planned switch-over");
    assert!(passed_by_b > 0 && handed_packets(a) > 0, "no packet was handed over");
    assert!(over_to_b >= 2 && over_to_a >= 2, "too few requests were in flight across the moves");
    // A kept-alive connection's next request, sent after the move, reaches the node it was open
    // to, through the new holder: the one thing nothing but the hand-off makes work.
    assert_eq!(
        kept_to_b,
        Ok(("a".to_string(), "a".to_string())),
        "the kept-alive connection stays with node a"
    );
    assert_eq!(
        kept_to_a,
        Ok(("b".to_string(), "b".to_string())),
        "the kept-alive connection stays with node b"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.start > moved_to_b + Duration::from_secs(1) && s.outcome.as_deref() == Ok("b"))
    );

    // Without the table on the new holder, the same switch-over resets the kept-alive
    // connection: the control that shows the table is what carries it.
    netns::checked(b.command("nft").args(["delete", "table", "ip", "lbrs_handoff"])).or_fail("nft delete");
    let backups = keepalived_b.count("Entering BACKUP STATE");
    fs::write(health_b.path().join("ok"), "ok\n").map_err(|e| e.to_string()).or_fail("health file b");
    let ready = wait_until(Duration::from_secs(15), || keepalived_b.count("Entering BACKUP STATE") > backups);
    assert!(ready.is_some(), "node b did not become a backup again");
    let moved_again = Arc::new(AtomicBool::new(false));
    let unguarded = kept_alive_across(client, &moved_again);
    thread::sleep(Duration::from_millis(300));
    on_a(steps[0]);
    assert!(wait_until(Duration::from_secs(20), || holds(b, VIP_1) && !holds(a, VIP_1)).is_some());
    moved_again.store(true, Ordering::SeqCst);
    let unguarded =
        unguarded.join().map_err(|_| "panicked".to_string()).and_then(|r| r).or_fail("kept-alive");
    eprintln!("without handoff.nft on the new holder: the kept-alive connection got {unguarded:?}");
    assert!(unguarded.is_err(), "without the table the connection was expected to be reset: {unguarded:?}");

    // A node whose Apache stops is no longer passed packets: its heartbeats stop.
    on_a(steps[3]);
    apache_b.stop();
    let closed = wait_until(Duration::from_secs(8), || handoff_open_ports(a).is_empty());
    assert!(closed.is_some(), "node a still passes packets to node b: {:?}", handoff_open_ports(a));
}

/// `curl` for `NAME` in the client's namespace, through its resolver: (node, address it
/// connected to, curl's verbose account).
fn curl_by_name(client: &Netns) -> Result<(String, String, String), String> {
    let output = netns::run(
        client.command("curl").args([
            "-4",
            "-sS",
            "-v",
            "--connect-timeout",
            "3",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "remote_ip=%{remote_ip}\n",
            &format!("http://{NAME}/"),
        ]),
        Duration::from_secs(10),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() || !stdout.starts_with("HTTP/1.1 200") {
        return Err(format!("curl failed ({}):\n{stdout}\n{stderr}", output.status));
    }
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| {
                line.get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                    .map(|_| line[prefix.len()..].trim())
            })
            .unwrap_or("")
            .to_string()
    };
    Ok((field("X-Lbrs-Node:"), field("remote_ip="), stderr))
}

#[test]
fn an_active_active_pair_behind_dns_spreads_requests_and_survives_a_node() {
    if !can_run() {
        return;
    }
    let lan =
        Lan::build("aa", &[("a", NODE_A), ("b", NODE_B), ("apps", APPS), ("dns", DNS), ("client", CLIENT)])
            .or_fail("building the test network");
    let (a, b, client) = (lan.host("a"), lan.host("b"), lan.host("client"));
    let ports = [8081, 8082, 8083];
    let _backends = start_backends(lan.host("apps"), &ports);

    // `Listen 80`: every address of the node, whichever virtual addresses it holds.
    let listen = ["80".to_string()];
    let body = balancer(&ports, "LBHashKey \"%{HTTP:X-User}\"\n    ProxySet lbmethod=byhash");
    let (health_a, health_b) = (health_dir(), health_dir());
    prepare_node(a, NODE_B, &[VIP_1, VIP_2]);
    prepare_node(b, NODE_A, &[VIP_1, VIP_2]);
    let check = check_script();
    let apache_a = start_node(a, "a", &health_a, NODE_B, &body, &listen);
    let mut apache_b = start_node(b, "b", &health_b, NODE_A, &body, &listen);

    let conf_a = keepalived_conf("keepalived-active-active-a.conf", NODE_A, NODE_B, &check);
    let conf_b = keepalived_conf("keepalived-active-active-b.conf", NODE_B, NODE_A, &check);
    Keepalived::check(a, &conf_a).or_fail("keepalived-active-active-a.conf");
    Keepalived::check(b, &conf_b).or_fail("keepalived-active-active-b.conf");
    let _keepalived_a = Keepalived::start(a, "node a", &conf_a).or_fail("starting keepalived on node a");
    let _keepalived_b = Keepalived::start(b, "node b", &conf_b).or_fail("starting keepalived on node b");
    // Each node holds its own address (after preempt_delay, if the other node got there first).
    let each_its_own = || holds(a, VIP_1) && holds(b, VIP_2) && !holds(a, VIP_2) && !holds(b, VIP_1);
    assert!(
        wait_until(Duration::from_secs(30), each_its_own).is_some(),
        "the nodes never held one address each"
    );

    // DNS: the shipped zone snippet, served by dnsmasq to the client.
    let zone = ha::fill(
        &ha::shipped("dns.zone").or_fail("dns.zone"),
        &[("VIRTUAL_IP_1", &VIP_1.to_string()), ("VIRTUAL_IP_2", &VIP_2.to_string())],
    )
    .or_fail("filling dns.zone");
    let records = ha::a_records(&zone, ORIGIN).or_fail("dns.zone");
    assert_eq!(
        records.iter().map(|r| (r.0.as_str(), r.1)).collect::<Vec<_>>(),
        [(NAME, VIP_1), (NAME, VIP_2)],
        "dns.zone has one name with two A records"
    );
    let _dnsmasq = Dnsmasq::start(lan.host("dns"), DNS, &records).or_fail("starting dnsmasq");
    let _resolver = NsResolver::create(client, DNS).or_fail("the client's resolv.conf");
    let resolved = netns::checked(client.command("getent").args(["ahostsv4", NAME])).or_fail("resolving");
    let addresses: BTreeSet<&str> = resolved.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(
        addresses,
        BTreeSet::from([VIP_1.to_string().as_str(), VIP_2.to_string().as_str()]),
        "{NAME} resolves to both addresses"
    );

    // Clients that look the name up each time spread over both nodes (dnsmasq rotates the
    // records), each address answered by its own node.
    let mut nodes = BTreeMap::<String, usize>::new();
    for _ in 0..8 {
        let (node, address, _) = curl_by_name(client).or_fail("curl by name");
        assert_eq!(
            node,
            if address == VIP_1.to_string() { "a" } else { "b" },
            "{address} answered by node {node}"
        );
        *nodes.entry(node).or_default() += 1;
    }
    eprintln!("active/active: 8 requests by name, per node: {nodes:?}");
    assert!(nodes.len() == 2, "requests did not reach both nodes: {nodes:?}");

    // byhash builds the same table on both nodes: a key reaches the same backend through either.
    let spread = client
        .run(|| -> Result<Vec<(String, String, String)>, String> {
            (0..24)
                .map(|i| {
                    let key = format!("user-{i}");
                    let (node_1, via_1) = request(VIP_1, &[("X-User", &key)])?;
                    let (node_2, via_2) = request(VIP_2, &[("X-User", &key)])?;
                    if (node_1.as_str(), node_2.as_str()) != ("a", "b") {
                        return Err(format!("{key}: answered by {node_1} and {node_2}"));
                    }
                    Ok((key, via_1, via_2))
                })
                .collect()
        })
        .and_then(|r| r)
        .or_fail("byhash through both nodes");
    let differ: Vec<_> = spread.iter().filter(|(_, one, two)| one != two).collect();
    assert!(differ.is_empty(), "keys reached different backends through the two nodes: {differ:?}");
    let used: BTreeSet<&str> = spread.iter().map(|(_, backend, _)| backend.as_str()).collect();
    assert!(used.len() >= 2, "24 keys all hashed to {used:?}");

    // Node b's Apache stops. Until its keepalived notices, its address refuses connections: a
    // client that tries the next address of the name still gets through, to node a. The move
    // of the address is watched meanwhile.
    // Meanwhile a client that resolved the name once and keeps node b's address (a JVM's DNS
    // cache, a connection pool) asks it every 20 ms.
    let stop_loop = Arc::new(AtomicBool::new(false));
    let stop_this = Arc::clone(&stop_loop);
    let kept = client
        .spawn(move || client_loop(VIP_2, &stop_this, 3000, Duration::from_secs(40)))
        .or_fail("the client that resolved once");
    thread::sleep(Duration::from_millis(500));
    let stopped_at = Instant::now();
    apache_b.stop();
    let (moved_at, curls) = thread::scope(|scope| {
        let watcher = scope.spawn(|| wait_until(Duration::from_secs(20), || holds(a, VIP_2)));
        let curls: Vec<_> = (0..4).map(|_| (curl_by_name(client), Instant::now() - stopped_at)).collect();
        (watcher.join().ok().flatten(), curls)
    });
    let mut moved_on = Vec::new();
    for (curl, after) in curls {
        let (node, address, verbose) = curl.or_fail("curl by name with node b down");
        assert_eq!(node, "a", "{verbose}");
        // Connected to the first address after trying the second: it moved on.
        if address == VIP_1.to_string() && verbose.contains(&format!("Trying {VIP_2}:80")) {
            moved_on.push(format!("{:.0} ms", ms(after)));
        }
    }
    let moved_at = moved_at.unwrap_or_else(|| panic!("{VIP_2} did not move to node a within 20 s"));
    thread::sleep(Duration::from_secs(2));
    stop_loop.store(true, Ordering::SeqCst);
    let kept =
        kept.join().map_err(|_| "the client loop panicked".to_string()).and_then(|r| r).or_fail("loop");
    let last_failure = kept.iter().filter(|s| s.outcome.is_err()).map(|s| s.end).max();
    eprintln!(
        "active/active, a client that resolved once: {} of {} requests to {VIP_2} failed, the last ending {:?} after the stop",
        kept.iter().filter(|s| s.outcome.is_err()).count(),
        kept.len(),
        last_failure.map(|end| end - stopped_at)
    );
    // It fails only until the address moved (a second for the gratuitous ARP), then node a
    // answers it on node b's address.
    assert!(
        last_failure.is_none_or(|end| end <= moved_at + Duration::from_secs(1)),
        "failures after the move"
    );
    let after: Vec<&Sample> = kept.iter().filter(|s| s.start > moved_at + Duration::from_secs(1)).collect();
    assert!(
        !after.is_empty() && after.iter().all(|s| s.outcome.as_deref() == Ok("a")),
        "node a answers {VIP_2}"
    );
    let failover = moved_at - stopped_at;
    eprintln!(
        "active/active failover: {VIP_2} moved to node a {:.0} ms after Apache stopped on node b; before \
         that, {} of 4 clients found it refusing and got through on {VIP_1} (at {})",
        ms(failover),
        moved_on.len(),
        moved_on.join(", ")
    );
    assert!(!moved_on.is_empty(), "no client tried {VIP_2} first and moved on (dnsmasq rotates the records)");
    assert!(failover < FAILOVER_BOUND, "failover took {failover:?}");
    assert_eq!(node_behind(client, VIP_2).as_deref(), Ok("a"));
    assert_eq!(node_behind(client, VIP_1).as_deref(), Ok("a"));
    assert_nothing_in_flight(&apache_a, a, "a");

    // Node b comes back and, after preempt_delay, takes its own address home.
    let restarted_at = Instant::now();
    apache_b.start_again(b).or_fail("restarting apache2 on node b");
    let home = wait_until(Duration::from_secs(25), each_its_own);
    let home = home.unwrap_or_else(|| panic!("{VIP_2} did not go back to node b within 25 s"));
    eprintln!(
        "active/active: {VIP_2} back on node b {:.0} ms after its Apache restarted",
        ms(home - restarted_at)
    );
    assert_eq!(node_behind(client, VIP_2).as_deref(), Ok("b"));
    assert_nothing_in_flight(&apache_b, b, "b");

    // Maintenance as health.conf describes it: removing the health file drains node a.
    let drained_at = Instant::now();
    fs::remove_file(health_a.path().join("ok"))
        .map_err(|e| e.to_string())
        .or_fail("removing the health file");
    let drained =
        wait_until(Duration::from_secs(20), || holds(b, VIP_1) && holds(b, VIP_2) && !holds(a, VIP_1))
            .unwrap_or_else(|| panic!("node a kept an address after its health file went"));
    eprintln!(
        "active/active: node a drained (both addresses on node b) {:.0} ms after its health file went",
        ms(drained - drained_at)
    );
    assert!(drained - drained_at < FAILOVER_BOUND, "draining took {:?}", drained - drained_at);
    assert_eq!(node_behind(client, VIP_1).as_deref(), Ok("b"));
}

/// The apache2 processes (parent and children) running in `ns`.
fn apache_pids(ns: &Netns) -> Vec<i32> {
    netns::ip(&["netns", "pids", ns.name()])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "apache2"))
        .collect()
}

fn signal_all(pids: &[i32], signal: i32) {
    for &pid in pids {
        os::signal(pid, signal);
    }
}

/// The MAC address of `ns`'s eth0, and the one `client`'s neighbour table has for `address`.
fn mac_of(ns: &Netns) -> String {
    let link = ns.ip(&["-o", "link", "show", "eth0"]).or_fail("ip link");
    link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or("").to_string()
}

fn neighbour_mac(client: &Netns, address: Ipv4Addr) -> String {
    let neigh = client.ip(&["neigh", "show", &address.to_string()]).unwrap_or_default();
    neigh.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).unwrap_or("").to_string()
}

/// Drops VRRP adverts arriving at `ns` (`cut`), or stops dropping them.
fn partition(ns: &Netns, cut: bool) {
    let nft = |args: &[&str]| netns::checked(ns.command("nft").args(args)).or_fail("nft");
    if cut {
        nft(&["add", "table", "inet", "lbrs_split"]);
        nft(&["add", "chain", "inet", "lbrs_split", "input", "{ type filter hook input priority 0; }"]);
        nft(&["add", "rule", "inet", "lbrs_split", "input", "ip", "protocol", "vrrp", "drop"]);
    } else {
        nft(&["delete", "table", "inet", "lbrs_split"]);
    }
}

/// The faults operators meet, on the shipped active/passive files: a hung Apache (SIGSTOP)
/// fails over about as fast as a stopped one; a VRRP partition that heals, with the client's
/// ARP entry on the node that steps down, leaves one holder and the client on it within 3 s,
/// every time of several; every keepalived process on the master killed with -9 leaves the
/// address on both nodes until supervision restarts it, and then on one.
#[test]
fn an_active_passive_pair_survives_a_hung_apache_split_brains_and_a_killed_keepalived() {
    if !can_run() {
        return;
    }
    let lan = Lan::build("hf", &[("a", NODE_A), ("b", NODE_B), ("apps", APPS), ("client", CLIENT)])
        .or_fail("building the test network");
    let (a, b, client) = (lan.host("a"), lan.host("b"), lan.host("client"));
    let ports = [8081, 8082];
    let _backends = start_backends(lan.host("apps"), &ports);
    let pair = active_passive(&lan, &balancer(&ports, "ProxySet lbmethod=byinflight"));
    let ActivePassive { mut keepalived_a, conf_a, .. } = pair;
    let (mac_a, mac_b) = (mac_of(a), mac_of(b));

    // 1. Node a's Apache hangs: every process stopped, connections accepted by the kernel and
    // never answered.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_loop = Arc::clone(&stop);
    let looping = client
        .spawn(move || client_loop(VIP_1, &stop_loop, 3000, Duration::from_secs(40)))
        .or_fail("client loop");
    thread::sleep(Duration::from_secs(1));
    let pids = apache_pids(a);
    assert!(!pids.is_empty(), "no apache2 in node a");
    let hung_at = Instant::now();
    signal_all(&pids, libc::SIGSTOP);
    let moved = wait_until(Duration::from_secs(20), || holds(b, VIP_1) && !holds(a, VIP_1));
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let samples =
        looping.join().map_err(|_| "the client loop panicked".to_string()).and_then(|r| r).or_fail("loop");
    signal_all(&pids, libc::SIGCONT);
    let moved = moved.unwrap_or_else(|| panic!("{VIP_1} did not leave the hung node within 20 s")) - hung_at;
    let last_failure = samples
        .iter()
        .filter(|s| s.outcome.is_err())
        .map(|s| s.end.saturating_duration_since(hung_at))
        .max()
        .unwrap_or_default();
    eprintln!(
        "hung Apache: {VIP_1} on node b {:.0} ms after node a's Apache hung; the last failed request ended {:.0} ms after",
        ms(moved),
        ms(last_failure)
    );
    assert!(moved < Duration::from_millis(3500), "a hung Apache took {moved:?} to fail over");
    assert!(last_failure < Duration::from_millis(4500), "clients failed for {last_failure:?}");
    assert_eq!(node_behind(client, VIP_1).as_deref(), Ok("b"));
    let backups = keepalived_a.count("Entering BACKUP STATE");
    assert!(
        wait_until(Duration::from_secs(15), || keepalived_a.count("Entering BACKUP STATE") > backups)
            .is_some()
    );

    // 2. Split brains that heal, several times (the missing ARP was intermittent).
    for round in 1..=4 {
        partition(a, true);
        partition(b, true);
        let both = wait_until(Duration::from_secs(15), || holds(a, VIP_1) && holds(b, VIP_1));
        assert!(both.is_some(), "round {round}: the partition did not make both nodes master");
        // The worst case for the heal: the client follows the node that will step down (the
        // one with the lower priority, b), as after b's last gratuitous ARP.
        thread::sleep(Duration::from_millis(1500));
        client
            .ip(&[
                "neigh",
                "replace",
                &VIP_1.to_string(),
                "lladdr",
                &mac_b,
                "dev",
                "eth0",
                "nud",
                "reachable",
            ])
            .or_fail("pointing the client at node b");
        assert_eq!(node_behind(client, VIP_1).as_deref(), Ok("b"), "round {round}: the client is on node b");
        let healed_at = Instant::now();
        partition(a, false);
        partition(b, false);
        let settled = wait_until(Duration::from_secs(15), || {
            let (on_a, on_b) = (holds(a, VIP_1), holds(b, VIP_1));
            let holder_mac = if on_a { &mac_a } else { &mac_b };
            on_a != on_b && neighbour_mac(client, VIP_1) == *holder_mac
        });
        let settled = settled.map(|t| t - healed_at);
        let holder = if holds(a, VIP_1) { "a" } else { "b" };
        eprintln!(
            "split brain round {round}: healed, one holder ({holder}) and the client on it after {settled:?}"
        );
        let settled = settled.unwrap_or_else(|| panic!("round {round}: not settled within 15 s"));
        assert!(settled <= Duration::from_secs(3), "round {round}: {settled:?}");
        assert_eq!(node_behind(client, VIP_1).as_deref(), Ok(holder), "round {round}");
    }

    // 3. keepalived killed with -9 on the master: it gives nothing up.
    let (master, other) = if holds(a, VIP_1) { (a, b) } else { (b, a) };
    assert!(std::ptr::eq(master, a), "node a (priority 150) holds the address after the heals");
    keepalived_a.kill();
    let both = wait_until(Duration::from_secs(10), || holds(other, VIP_1) && holds(master, VIP_1));
    eprintln!("keepalived killed on node a: both hold {VIP_1}: {}", both.is_some());
    // Supervision (systemd's Restart=on-failure, shipped as keepalived-restart.conf) starts it
    // again: the address is on one node only.
    let restarted_at = Instant::now();
    let _keepalived_a = Keepalived::start(a, "node a again", &conf_a).or_fail("keepalived on node a again");
    let single = wait_until(Duration::from_secs(15), || holds(a, VIP_1) != holds(b, VIP_1))
        .unwrap_or_else(|| panic!("{VIP_1} still on both nodes 15 s after keepalived came back"));
    eprintln!("keepalived back on node a: one holder after {:?}", single - restarted_at);
    let holder = if holds(a, VIP_1) { "a" } else { "b" };
    assert_eq!(node_behind(client, VIP_1).as_deref(), Ok(holder));
}
