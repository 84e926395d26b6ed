//! docs/behind-a-load-balancer.md, run as written: the real HAProxy in TCP mode sending the
//! PROXY protocol (v2) in front of the real apache2 with mod_remoteip, and the
//! X-Forwarded-For recipe. Which address Apache logs (`%a`, `%{c}a`) and which it authorises
//! (`Require ip 127.0.0.1` on the status page), for clients at 127.0.0.1 and 127.0.0.2.

use lbrs_harness::apache::ScratchDir;
mod guide_common;
use guide_common::nft_check;
use lbrs_harness::apache::free_port;
use lbrs_harness::client::{raw_exchange, request_from};
use lbrs_harness::peers::haproxy_binary;
use lbrs_harness::recipe::{Recipe, fill};
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, PeerProxy, wait_for};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

const DOC: &str = "docs/behind-a-load-balancer.md";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn backends() -> [Backend; 2] {
    [Backend::start(BackendSpec::new("a")).unwrap(), Backend::start(BackendSpec::new("b")).unwrap()]
}

/// The access log lines of the recipe's `behind_lb` format.
fn access_log(logs: &Path) -> Vec<String> {
    fs::read_to_string(logs.join("behind-lb.log")).unwrap_or_default().lines().map(String::from).collect()
}

/// Waits for the access log line of `path` (httpd writes it when the request ends) and
/// returns its first two fields: `%a` and `%{c}a`.
fn logged(logs: &Path, path: &str) -> (String, String) {
    let request = format!("\"GET {path} HTTP/1.1\"");
    let mut found = None;
    wait_for(Duration::from_secs(5), || {
        found = access_log(logs).into_iter().find(|line| line.contains(&request));
        found.is_some()
    });
    let line = found.unwrap_or_else(|| panic!("no access log line for {path}: {:?}", access_log(logs)));
    let mut fields = line.split_whitespace().map(String::from);
    (fields.next().unwrap_or_default(), fields.next().unwrap_or_default())
}

#[test]
fn haproxy_sends_the_proxy_protocol_and_apache_logs_and_authorises_the_client() {
    let Some(haproxy) = haproxy_binary() else {
        panic!("haproxy is not installed: scripts/setup.sh --tests installs it");
    };
    let b = backends();
    let logs = ScratchDir::new().unwrap();
    let proxy_port = free_port().unwrap();
    let listener = format!("127.0.0.1:{proxy_port}");
    let site = fill(
        &Recipe::load(DOC, "upstream-proxy-protocol").text,
        &[
            ("http://10.0.0.11:8080", &b[0].url()),
            ("http://10.0.0.12:8080", &b[1].url()),
            ("10.0.1.10:81", &listener),
            ("10.0.5.0/24", "127.0.0.1"),
            ("/var/log/apache2", &logs.path().display().to_string()),
        ],
    );
    let apache = Apache::start(ApacheConfig::new(&site).with_module("remoteip")).unwrap();
    let haproxy_conf = Recipe::load(DOC, "upstream-haproxy").text;
    let front = PeerProxy::haproxy_from(&haproxy, |port| {
        fill(&haproxy_conf, &[("192.0.2.10:80", &format!("127.0.0.1:{port}")), ("10.0.1.10:81", &listener)])
    })
    .unwrap();

    // Through HAProxy from 127.0.0.2: the application answers, the client's address is
    // logged with HAProxy's as the peer, and the status page refuses it.
    let response = request_from(OTHER, front.addr(), "GET", "/app-from-other", &[]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(logged(logs.path(), "/app-from-other"), ("127.0.0.2".into(), "127.0.0.1".into()));
    let response = request_from(OTHER, front.addr(), "GET", "/lb-status?from=other", &[]).unwrap();
    assert_eq!(response.status, 403, "127.0.0.2 is not the administration address");
    assert_eq!(logged(logs.path(), "/lb-status?from=other").0, "127.0.0.2");

    // From 127.0.0.1 through HAProxy: allowed.
    let response = request_from(LOCAL, front.addr(), "GET", "/lb-status?format=json", &[]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.text().contains("balancer://app"));

    // A PROXY line sent to Apache's ordinary port is not a request: 400.
    let forged = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 80\r\nGET /lb-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(OTHER, apache.addr(), forged, Duration::from_secs(10)).unwrap();
    assert_eq!(answer.map(|r| r.status), Some(400), "a PROXY line on a port without the protocol");
    // The same with a version 2 header, as HAProxy's send-proxy-v2 sends it: 127.0.0.1:40000
    // to 127.0.0.1:80 over TCP/IPv4.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40, 0, 80]);
    v2.extend_from_slice(b"GET /lb-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(OTHER, apache.addr(), &v2, Duration::from_secs(10)).unwrap();
    assert_eq!(answer.map(|r| r.status), Some(400), "a PROXY v2 header on a port without the protocol");

    // A client that reaches the PROXY port itself chooses its address: the reason the page
    // says to let only the balancer reach that port.
    let proxy_port_addr = SocketAddr::from(([127, 0, 0, 1], proxy_port));
    let forged = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 81\r\nGET /lb-status?forged HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(OTHER, proxy_port_addr, forged, Duration::from_secs(10)).unwrap();
    assert_eq!(answer.map(|r| r.status), Some(200), "mod_remoteip believes any peer's PROXY header");
    assert_eq!(logged(logs.path(), "/lb-status?forged"), ("127.0.0.1".into(), "127.0.0.2".into()));

    // And a connection to the PROXY port without the header is closed at once, unanswered.
    let plain = b"GET /lb-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let started = std::time::Instant::now();
    let answer = raw_exchange(LOCAL, proxy_port_addr, plain, Duration::from_secs(10)).unwrap();
    assert!(answer.is_none(), "answered without a PROXY header: {answer:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    drop(front);
}

#[test]
fn x_forwarded_for_is_believed_from_the_listed_proxy_only() {
    let b = backends();
    let block = Recipe::load(DOC, "upstream-xff").text;
    let site = |dir: &str, trusted: &str| {
        let recipe = fill(
            &block,
            &[("10.0.1.2 10.0.1.3", trusted), ("10.0.5.0/24", "127.0.0.1"), ("/var/log/apache2", dir)],
        );
        format!(
            "<Proxy \"balancer://app\">\n    BalancerMember \"{}\"\n    BalancerMember \"{}\"\n    \
             ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n{recipe}",
            b[0].url(),
            b[1].url()
        )
    };
    let logs = ScratchDir::new().unwrap();
    let dir = logs.path().display().to_string();
    let mut apache =
        Apache::start(ApacheConfig::new(&site(&dir, "127.0.0.3")).with_module("remoteip")).unwrap();
    let addr = apache.addr();
    let get = |from: IpAddr, path: &str, xff: &str| {
        request_from(from, addr, "GET", path, &[("X-Forwarded-For", xff)]).unwrap().status
    };

    // The listed proxy vouches for 127.0.0.2: logged as such, refused by Require ip.
    assert_eq!(get(PROXY, "/lb-status?vouched=other", "127.0.0.2"), 403);
    assert_eq!(logged(logs.path(), "/lb-status?vouched=other"), ("127.0.0.2".into(), "127.0.0.3".into()));
    // The listed proxy vouches for 127.0.0.1: let in.
    assert_eq!(get(PROXY, "/lb-status?vouched=local", "127.0.0.1"), 200);
    // A client that is not a listed proxy forges the header: ignored.
    assert_eq!(get(OTHER, "/lb-status?forged=1", "127.0.0.1"), 403);
    assert_eq!(logged(logs.path(), "/lb-status?forged=1"), ("127.0.0.2".into(), "127.0.0.2".into()));
    // Requests to the application through the balancer carry on as usual.
    assert_eq!(get(OTHER, "/app", "127.0.0.1"), 200);

    // No proxy listed at all: every peer is believed as a RemoteIPTrustedProxy is, so any
    // client chooses any public address (private and loopback ones are ignored).
    let unlisted = site(&dir, "127.0.0.3").replace("RemoteIPInternalProxy 127.0.0.3\n", "");
    assert!(!unlisted.contains("RemoteIPInternalProxy"));
    apache.reconfigure(&unlisted).unwrap();
    assert_eq!(get(OTHER, "/app?forged=public", "198.51.100.7"), 200);
    assert_eq!(logged(logs.path(), "/app?forged=public"), ("198.51.100.7".into(), "127.0.0.2".into()));
    assert_eq!(get(OTHER, "/lb-status?forged=3", "127.0.0.1"), 403);
    assert_eq!(logged(logs.path(), "/lb-status?forged=3").0, "127.0.0.2");

    // Trust too wide (the page's "do not do this"): the same forged request is let in.
    apache.reconfigure(&site(&dir, "127.0.0.0/8")).unwrap();
    assert_eq!(get(OTHER, "/lb-status?forged=2", "127.0.0.1"), 200);
    assert_eq!(logged(logs.path(), "/lb-status?forged=2"), ("127.0.0.1".into(), "127.0.0.2".into()));
}

#[test]
fn the_nftables_rule_for_the_proxy_port_parses() {
    if let Some(checked) = nft_check(&Recipe::load(DOC, "upstream-nftables").text) {
        checked.unwrap_or_else(|e| panic!("{DOC} upstream-nftables: {e}"));
    }
}
