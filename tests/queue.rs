//! `LBQueue`: requests that find every member at its `LBMaxInflight` cap wait in line for a
//! place instead of being refused, first come first served across all httpd processes. Real
//! apache2 (event and prefork), real backends that answer 503 at once when full:
//!
//! - requests sent one after another while the members are full are served in the order they
//!   came, none refused, whichever process took them;
//! - a request refused when its timeout passes (503 and `Retry-After`), not much later; one
//!   beyond `max` refused at once; a client that goes away leaves the line;
//! - a child killed with SIGKILL while its requests wait: the others are still served, and
//!   nothing stays counted;
//! - a graceful restart while requests wait: each is served or refused, none hangs.

use lbrs_harness::client::Connection;
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Mpm, balancer_block, ms, wait_for};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

/// Members of `slots` places each, `millis` per request, that answer 503 at once when full.
fn pool(count: usize, slots: usize, millis: u64) -> Vec<Backend> {
    (0..count)
        .map(|i| {
            let spec = BackendSpec::new(&format!("app{}", i + 1))
                .slots(slots)
                .delay(Duration::from_millis(millis))
                .refuse_when_full();
            Backend::start(spec).expect("start backend")
        })
        .collect()
}

fn start(backends: &[Backend], settings: &str, mpm: Mpm) -> Apache {
    let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let body = balancer_block("app", "/", &members, &format!("lbmethod=byinflight\n    {settings}"));
    let config = match mpm {
        Mpm::Prefork => ApacheConfig::new(&body).mpm(mpm).processes(12),
        _ => ApacheConfig::new(&body).mpm(mpm).processes(2).threads(16),
    };
    Apache::start(config).expect("start apache2")
}

/// What one client saw: when it sent, when the answer came, its status, and `Retry-After`.
#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    done: Instant,
    status: u16,
    retry_after: Option<String>,
}

/// One GET of `/` on its own connection, sent at once.
fn ask(addr: SocketAddr) -> Answer {
    let sent = Instant::now();
    let response = Connection::open(addr, Duration::from_secs(30))
        .and_then(|mut c| c.request("GET", "/", &[("Connection", "close")], b""));
    let (status, retry_after) = match response {
        Ok(r) => (r.status, r.header("Retry-After").map(str::to_string)),
        Err(_) => (0, None),
    };
    Answer { sent, done: Instant::now(), status, retry_after }
}

/// Starts `count` requests, `gap` apart, each on its own thread; their answers in sending order.
fn ask_in_turn(addr: SocketAddr, count: usize, gap: Duration) -> Vec<Answer> {
    let threads: Vec<_> = (0..count)
        .map(|i| {
            if i > 0 {
                thread::sleep(gap);
            }
            thread::spawn(move || ask(addr))
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("client thread")).collect()
}

fn queue_status(apache: &Apache) -> serde_json::Value {
    let status = apache.status().expect("status page");
    status["balancers"][0]["queue"].clone()
}

fn inflight(apache: &Apache) -> u64 {
    let status = apache.status().expect("status page");
    status["balancers"][0]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["inflight"].as_u64().unwrap_or(99))
        .sum()
}

/// Pairs (earlier, later) of requests where the later one was answered first: overtakes.
fn overtakes(answers: &[Answer]) -> usize {
    let mut count = 0;
    for (i, a) in answers.iter().enumerate() {
        count += answers[i + 1..].iter().filter(|b| b.done < a.done).count();
    }
    count
}

fn served_in_order(mpm: Mpm) {
    // Two places (two members of one slot each), 150 ms a request; twelve requests 25 ms apart
    // take 900 ms to serve: most of them wait, in different processes.
    let backends = pool(2, 1, 150);
    let apache = start(&backends, "LBMaxInflight 1\n    LBQueue timeout=10s", mpm);
    let answers = ask_in_turn(apache.addr(), 12, Duration::from_millis(25));
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let waits: Vec<f64> = answers.iter().map(|a| ms(a.done - a.sent)).collect();
    eprintln!(
        "{}: statuses {statuses:?}, times (ms) {waits:.0?}, overtakes {}",
        mpm.name(),
        overtakes(&answers)
    );
    assert!(statuses.iter().all(|&s| s == 200), "every request is served: {statuses:?}");
    // Equal service times: served in arrival order means answered in it (a request answered
    // before an earlier one overtook it).
    assert_eq!(overtakes(&answers), 0, "first come, first served: {waits:.0?}");
    // Each pair is served as soon as the pair before it ends: a freed place wakes the next
    // request at once (not at its own look, 200 ms later).
    let first = answers[0].sent;
    for (i, answer) in answers.iter().enumerate() {
        let due = Duration::from_millis(150 * (i as u64 / 2 + 1) + 80);
        let done = answer.done - first;
        assert!(
            done <= due,
            "request {i} answered {:.0} ms after the first was sent, due by {:.0}",
            ms(done),
            ms(due)
        );
    }
    let refused: u64 = backends.iter().map(|b| b.stats().refused).sum();
    assert_eq!(refused, 0, "no member was sent more than its place");
    let queue = queue_status(&apache);
    assert_eq!(queue["waiting"], 0, "{queue}");
    assert!(queue["joined"].as_u64().unwrap_or(0) >= 8, "most waited: {queue}");
    assert_eq!(queue["served"], queue["joined"], "{queue}");
    assert_eq!(queue["timed_out"], 0, "{queue}");
    assert!(queue["peak"].as_u64().unwrap_or(0) >= 5, "{queue}");
    assert!(wait_for(Duration::from_secs(5), || inflight(&apache) == 0), "nothing left in flight");
}

#[test]
fn requests_wait_in_arrival_order_under_event() {
    served_in_order(Mpm::Event);
}

#[test]
fn requests_wait_in_arrival_order_across_prefork_processes() {
    served_in_order(Mpm::Prefork);
}

#[test]
fn a_wait_ends_at_the_timeout_beyond_max_at_once_and_when_the_client_goes() {
    // One place, held 3 s by each request.
    let backends = pool(1, 1, 3000);
    let apache = start(&backends, "LBMaxInflight 1\n    LBQueue timeout=600ms max=3", Mpm::Event);
    let addr = apache.addr();
    let holder = thread::spawn(move || ask(addr));
    assert!(wait_for(Duration::from_secs(5), || inflight(&apache) == 1), "the place is taken");

    // A client that goes away while it waits, with a reset or closing its connection: it
    // leaves the line.
    for (gone, reset) in [(1, true), (2, false)] {
        let mut leaving = Connection::open(addr, Duration::from_secs(5)).expect("connect");
        leaving.send("GET", "/", &[], b"").expect("send");
        assert!(wait_for(Duration::from_secs(5), || queue_status(&apache)["waiting"] == 1), "it waits");
        let left = std::time::Instant::now();
        if reset {
            leaving.abort();
        } else {
            drop(leaving);
        }
        assert!(
            wait_for(Duration::from_secs(2), || queue_status(&apache)["gone"] == gone),
            "the line forgot it: {}",
            queue_status(&apache)
        );
        eprintln!("a client gone (reset: {reset}) left the line after {:.0} ms", ms(left.elapsed()));
        assert_eq!(queue_status(&apache)["waiting"], 0);
    }

    // Three wait and are refused after the timeout; a fourth, beyond max, at once.
    let waiting: Vec<_> = (0..3).map(|_| thread::spawn(move || ask(addr))).collect();
    assert!(wait_for(Duration::from_secs(2), || queue_status(&apache)["waiting"] == 3), "three wait");
    let beyond = ask(addr);
    let waited: Vec<Answer> = waiting.into_iter().map(|t| t.join().expect("client")).collect();
    eprintln!(
        "timeout 600 ms: waited {:.0?} ms; beyond max: {} after {:.0} ms",
        waited.iter().map(|a| ms(a.done - a.sent)).collect::<Vec<_>>(),
        beyond.status,
        ms(beyond.done - beyond.sent)
    );
    assert_eq!(beyond.status, 503);
    assert!(beyond.done - beyond.sent < Duration::from_millis(300), "refused at once");
    for answer in &waited {
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{answer:?}");
        let took = answer.done - answer.sent;
        assert!(took >= Duration::from_millis(590) && took < Duration::from_millis(900), "{took:?}");
    }
    let queue = queue_status(&apache);
    assert_eq!((queue["timed_out"].as_u64(), queue["full"].as_u64()), (Some(3), Some(1)), "{queue}");
    assert!(queue["wait_seconds_max"].as_f64().unwrap_or(0.0) >= 0.59, "{queue}");
    let holder = holder.join().expect("holder");
    assert_eq!(holder.status, 200);
    let shed = apache.status().expect("status")["balancers"][0]["shed"].as_u64();
    assert_eq!(shed, Some(6), "timed out, beyond max and gone are all shed");
    let log = apache.error_log();
    assert!(log.contains("no place freed within the LBQueue timeout (600 ms)"), "{log}");
}

#[test]
fn a_killed_child_does_not_stop_the_line_and_leaves_nothing_counted() {
    // Prefork: each waiting request is a process of its own.
    let backends = pool(2, 1, 1500);
    let apache = start(&backends, "LBMaxInflight 1\n    LBQueue timeout=8s", Mpm::Prefork);
    let addr = apache.addr();
    let holders: Vec<_> = (0..2).map(|_| thread::spawn(move || ask(addr))).collect();
    assert!(wait_for(Duration::from_secs(5), || inflight(&apache) == 2), "both places taken");
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            thread::sleep(Duration::from_millis(30));
            thread::spawn(move || ask(addr))
        })
        .collect();
    assert!(wait_for(Duration::from_secs(5), || queue_status(&apache)["waiting"] == 4), "four wait");
    // Kill a child whose request waits in line: it sleeps on the line's futex.
    let waiting_children = || -> Vec<u32> {
        let in_futex = |pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("futex"))
        };
        apache.children().into_iter().filter(in_futex).collect()
    };
    assert!(wait_for(Duration::from_secs(5), || waiting_children().len() == 4), "{:?}", waiting_children());
    let victim = waiting_children()[1];
    lbrs_harness::os::signal(victim as i32, libc::SIGKILL);
    let answers: Vec<Answer> =
        holders.into_iter().chain(waiters).map(|t| t.join().expect("client")).collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    eprintln!("killed {victim}: statuses {statuses:?}");
    // The victim's client loses its connection (status 0); everyone else is served.
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!((served, statuses.iter().filter(|&&s| s == 0).count()), (5, 1), "{statuses:?}");
    assert!(
        wait_for(Duration::from_secs(5), || inflight(&apache) == 0 && queue_status(&apache)["waiting"] == 0),
        "nothing left counted: {} in flight, queue {}",
        inflight(&apache),
        queue_status(&apache)
    );
    assert_eq!(queue_status(&apache)["timed_out"], 0);
}

#[test]
fn a_graceful_restart_with_requests_waiting_serves_or_refuses_each() {
    for mpm in [Mpm::Event, Mpm::Prefork] {
        let backends = pool(2, 1, 400);
        let mut apache = start(&backends, "LBMaxInflight 1\n    LBQueue timeout=3s", mpm);
        let addr = apache.addr();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                thread::sleep(Duration::from_millis(20));
                thread::spawn(move || ask(addr))
            })
            .collect();
        assert!(wait_for(Duration::from_secs(5), || queue_status(&apache)["waiting"].as_u64() >= Some(3)));
        apache.graceful().expect("graceful restart");
        let answers: Vec<Answer> = clients.into_iter().map(|t| t.join().expect("client")).collect();
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        let longest = answers.iter().map(|a| a.done - a.sent).max().unwrap_or_default();
        eprintln!(
            "{}: graceful restart with requests waiting: {statuses:?}, longest {:.0} ms",
            mpm.name(),
            ms(longest)
        );
        assert!(statuses.iter().all(|&s| s == 200 || s == 503), "{statuses:?}");
        assert!(statuses.iter().filter(|&&s| s == 200).count() >= 6, "most are served: {statuses:?}");
        assert!(longest < Duration::from_millis(3000 + 400 + 1000), "none hangs: {longest:?}");
        assert!(wait_for(Duration::from_secs(5), || inflight(&apache) == 0));
    }
}

#[test]
fn httpd_s_balancer_timeout_does_not_make_a_request_wait_in_line_again() {
    // httpd asks the finder again for a refused request, for up to its timeout= (1 s here):
    // the line's timeout must not start over each time.
    let backends = pool(1, 1, 3000);
    let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let body = balancer_block(
        "app",
        "/",
        &members,
        "lbmethod=byinflight timeout=1\n    LBMaxInflight 1\n    LBQueue timeout=300ms",
    );
    let apache = Apache::start(ApacheConfig::new(&body).processes(2).threads(8)).expect("start apache2");
    let addr = apache.addr();
    let holder = thread::spawn(move || ask(addr));
    assert!(wait_for(Duration::from_secs(5), || inflight(&apache) == 1), "the place is taken");
    let answer = ask(addr);
    let took = answer.done - answer.sent;
    let queue = queue_status(&apache);
    eprintln!(
        "LBQueue timeout=300ms with timeout=1: {} after {:.0} ms, queue {queue}",
        answer.status,
        ms(took)
    );
    assert_eq!(answer.status, 503);
    assert!(took < Duration::from_millis(2000), "waited once, then httpd's own second: {took:?}");
    assert_eq!((queue["joined"].as_u64(), queue["timed_out"].as_u64()), (Some(1), Some(1)), "{queue}");
    let shed = apache.status().expect("status")["balancers"][0]["shed"].as_u64();
    assert_eq!(shed, Some(1), "counted once");
    assert_eq!(holder.join().expect("holder").status, 200);
}

#[test]
fn an_http2_stream_whose_client_goes_leaves_the_line() {
    let backends = pool(1, 1, 3000);
    let members: Vec<(&Backend, &str)> = backends.iter().map(|b| (b, "")).collect();
    let balancer = balancer_block(
        "app",
        "/",
        &members,
        "lbmethod=byinflight\n    LBMaxInflight 1\n    LBQueue timeout=10s",
    );
    let body = format!("Protocols h2c http/1.1\n{balancer}");
    let config = ApacheConfig::new(&body).with_module("http2").processes(2).threads(8);
    let apache = Apache::start(config).expect("start apache2");
    let addr = apache.addr();
    let holder = thread::spawn(move || ask(addr));
    assert!(wait_for(Duration::from_secs(5), || inflight(&apache) == 1), "the place is taken");
    // curl over HTTP/2 (h2c, prior knowledge): the status page answers in HTTP/2; then a
    // request for the balancer gives up after 1 s, while its stream waits.
    let curl = |path: &str| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_version}", "--http2-prior-knowledge", "-m", "1"])
            .arg(apache.url(path))
            .output()
            .expect("curl")
    };
    assert_eq!(String::from_utf8_lossy(&curl("/lb-status").stdout), "2", "Apache speaks HTTP/2 here");
    curl("/");
    let gave_up = std::time::Instant::now();
    let left = wait_for(Duration::from_secs(3), || queue_status(&apache)["gone"] == 1);
    eprintln!("an HTTP/2 client gone: the line forgot it after {:.0} ms", ms(gave_up.elapsed()));
    assert!(left, "the stream left the line: {}", queue_status(&apache));
    assert_eq!(queue_status(&apache)["waiting"], 0);
    assert_eq!(holder.join().expect("holder").status, 200);
}
