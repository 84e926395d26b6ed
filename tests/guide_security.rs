//! docs/security.md, run as written through the real apache2: mod_reqtimeout against a slow
//! client, the request limits, mod_evasive, the status page and balancer-manager behind
//! `Require ip` with forged `X-Forwarded-For` headers and balancer-manager's nonce and Referer
//! checks, `ServerTokens Prod`, and a hash key header that the client cannot choose. The
//! nftables rules are checked with `nft -c`, never loaded.

use lbrs_harness::apache::ScratchDir;
mod guide_common;
use guide_common::nft_check;
use lbrs_harness::client::{self, connect_from, request_from};
use lbrs_harness::recipe::{Recipe, fill};
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

const DOC: &str = "docs/security.md";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const THIRD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

/// A balancer `app` on `/` over the given backends.
fn app_on(backends: &[&Backend]) -> String {
    let mut block = String::from("<Proxy \"balancer://app\">\n");
    for backend in backends {
        block.push_str(&format!("    BalancerMember \"{}\"\n", backend.url()));
    }
    block.push_str("    ProxySet lbmethod=byinflight\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n");
    block
}

/// Sends `request` from 127.0.0.2: its first `at_once` bytes at once, then one byte a second
/// until the server answers or closes (30 s at most). What came back, how long it took and
/// how many bytes were sent.
fn slow_client(addr: std::net::SocketAddr, request: &[u8], at_once: usize) -> (String, Duration, usize) {
    let mut stream = connect_from(OTHER, addr, Duration::from_secs(1)).unwrap();
    let started = Instant::now();
    let mut sent = at_once;
    stream.write_all(&request[..sent]).unwrap();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(30) && sent < request.len() {
        if stream.write_all(&request[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // Read the rest, until the server closes.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.read_to_end(&mut answer);
                break;
            }
            Err(_) => {} // a second passed with no answer
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed(), sent)
}

#[test]
fn a_client_that_sends_its_request_a_byte_a_second_is_cut_off() {
    let backend = Backend::start(BackendSpec::new("a")).unwrap();
    let body = format!("{}{}", Recipe::load(DOC, "security-reqtimeout").text, app_on(&[&backend]));
    let apache =
        Apache::start(ApacheConfig::new(&body).with_module("reqtimeout").log_level("warn reqtimeout:info"))
            .unwrap();
    let addr = apache.addr();
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: a-very-slow-client/1.0\r\n\r\n";
    let line = "GET / HTTP/1.1\r\n".len();
    // Both at once: as slowloris does (the request line at once, the headers a byte at a time),
    // and the request line itself a byte at a time.
    let (headers, line_slowly) = std::thread::scope(|scope| {
        let headers = scope.spawn(|| slow_client(addr, request, line));
        let line_slowly = scope.spawn(|| slow_client(addr, request, 0));
        (headers.join().unwrap(), line_slowly.join().unwrap())
    });
    for (what, (answer, elapsed, sent)) in [("headers", &headers), ("request line", &line_slowly)] {
        eprintln!(
            "{what} slowly: cut off after {elapsed:?}, {sent} bytes sent, answer {:?}",
            answer.lines().next()
        );
        assert!(
            *elapsed >= Duration::from_secs(9) && *elapsed <= Duration::from_secs(12),
            "header=10-20,MinRate=500 cuts a client that never reaches 500 bytes/s at 10 s: {elapsed:?}"
        );
    }
    assert!(headers.0.starts_with("HTTP/1.1 408"), "{}", headers.0);
    assert!(line_slowly.0.is_empty(), "a client still on its request line gets no answer: {}", line_slowly.0);
    assert_eq!(backend.stats().requests, 0);
    assert_eq!(
        apache.error_log().matches("AH01382: Request header read timeout").count(),
        2,
        "{}",
        apache.error_log()
    );
}

#[test]
fn oversized_requests_are_refused_before_any_member_sees_them() {
    let backend = Backend::start(BackendSpec::new("a")).unwrap();
    let body = format!("{}{}", Recipe::load(DOC, "security-limits").text, app_on(&[&backend]));
    let apache = Apache::start(ApacheConfig::new(&body).with_module("rewrite")).unwrap();
    let addr = apache.addr();

    let fields: Vec<(String, String)> = (0..60).map(|i| (format!("X-Field-{i}"), "x".into())).collect();
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(client::request(addr, "GET", "/", &fields, b"").unwrap().status, 400);
    let long = format!("/{}", "a".repeat(9000));
    assert_eq!(client::request(addr, "GET", &long, &[], b"").unwrap().status, 414);
    let two_mib = vec![b'x'; 2 * 1024 * 1024];
    // A refused request may be answered before its body is read: send the body best-effort.
    let refused = client::request(addr, "POST", "/", &[], &two_mib);
    assert_eq!(refused.map(|r| r.status).ok(), Some(413));
    let huge = (200 * 1024 * 1024).to_string();
    let refused = client::request(addr, "POST", "/upload/big", &[("Content-Length", &huge)], b"").unwrap();
    assert_eq!(refused.status, 413, "refused on the header alone");
    assert_eq!(backend.stats().requests, 0, "no member saw a refused request");
    assert_eq!(client::request(addr, "POST", "/upload/file", &[], &two_mib).unwrap().status, 200);
    assert_eq!(client::request(addr, "GET", "/", &fields[..10], b"").unwrap().status, 200);
    assert_eq!(backend.stats().requests, 2);
}

/// What the page warns about: `LimitRequestBody` does not bound a proxied request's body.
#[test]
fn limit_request_body_does_not_apply_to_proxied_requests() {
    let backend = Backend::start(BackendSpec::new("a")).unwrap();
    let body = format!("LimitRequestBody 1048576\n{}", app_on(&[&backend]));
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let two_mib = vec![b'x'; 2 * 1024 * 1024];
    let response = client::request(apache.addr(), "POST", "/", &[], &two_mib).unwrap();
    assert_eq!(response.status, 200, "if this fails, httpd now applies the limit: update docs/security.md");
    assert_eq!(backend.stats().requests, 1);
}

#[test]
fn mod_evasive_refuses_a_client_that_asks_too_often_and_no_one_else() {
    let backend = Backend::start(BackendSpec::new("a")).unwrap();
    let lock_dir = ScratchDir::new().unwrap();
    // httpd's children (www-data when the test runs as root) write the lock files.
    fs::set_permissions(lock_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let recipe = fill(
        &Recipe::load(DOC, "security-evasive").text,
        &[("/var/lib/apache2/evasive", &lock_dir.path().display().to_string()), ("10.0.5.*", "127.0.0.1")],
    );
    let body = format!("{recipe}{}", app_on(&[&backend]));
    // One child process: mod_evasive's counts are per process (the page says so).
    let apache = Apache::start(ApacheConfig::new(&body).with_module("evasive20").processes(1)).unwrap();
    let addr = apache.addr();
    let statuses = |from: IpAddr, n: usize| -> Vec<u16> {
        (0..n).map(|_| request_from(from, addr, "GET", "/page", &[]).unwrap().status).collect()
    };

    let other = statuses(OTHER, 40);
    eprintln!("127.0.0.2: {other:?}");
    let first_refusal = other.iter().position(|&s| s != 200).expect("127.0.0.2 is never refused");
    // 20 allowed per one-second interval (more if a new second starts during the run).
    assert!(first_refusal >= 20, "refused from request {}: {other:?}", first_refusal + 1);
    assert!(other[first_refusal..].iter().all(|&s| s == 429), "{other:?}");
    let whitelisted = statuses(LOCAL, 40);
    assert!(whitelisted.iter().all(|&s| s == 200), "the whitelisted address: {whitelisted:?}");
    assert_eq!(statuses(THIRD, 1), [200], "another client is not blocked");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(statuses(OTHER, 1), [429], "still blocked a second later");
    assert_eq!(backend.stats().requests as usize, first_refusal + 40 + 1, "refused requests reach no member");
    assert!(
        fs::read_dir(lock_dir.path()).unwrap().any(|e| e.unwrap().file_name() == "dos-127.0.0.2"),
        "the lock file of the blocked address"
    );
}

/// The nonce of balancer `name` on balancer-manager's page.
fn nonce(apache: &Apache, name: &str) -> String {
    let page = apache.get("/balancer-manager").unwrap().text();
    let marker = format!("?b={name}&amp;nonce=");
    let start = page.find(&marker).expect("the balancer's nonce link") + marker.len();
    page[start..].chars().take_while(|c| c.is_ascii_hexdigit() || *c == '-').collect()
}

#[test]
fn the_admin_pages_open_to_the_administration_address_only_and_changes_need_nonce_and_referer() {
    let b = [Backend::start(BackendSpec::new("a")).unwrap(), Backend::start(BackendSpec::new("b")).unwrap()];
    let recipe = fill(
        &Recipe::load(DOC, "security-admin-pages").text,
        &[("10.0.1.2", "127.0.0.3"), ("10.0.5.0/24", "127.0.0.1"), ("10.0.5.10", "127.0.0.1")],
    );
    let body = format!("{recipe}{}", app_on(&[&b[0], &b[1]]));
    let apache = Apache::start(ApacheConfig::new(&body).with_module("remoteip")).unwrap();
    let addr = apache.addr();
    let get = |from: IpAddr, path: &str, xff: Option<&str>| {
        let headers: Vec<(&str, &str)> = xff.map(|v| ("X-Forwarded-For", v)).into_iter().collect();
        request_from(from, addr, "GET", path, &headers).unwrap()
    };

    for page in ["/lb-status", "/balancer-manager"] {
        let forged = get(OTHER, page, Some("127.0.0.1"));
        assert_eq!(forged.status, 403, "{page}: a forged X-Forwarded-For from 127.0.0.2");
        assert_eq!(forged.header("server"), Some("Apache"));
        assert!(
            !forged.text().contains("Apache/") && !forged.text().contains("Server at"),
            "{}",
            forged.text()
        );
        assert_eq!(
            get(PROXY, page, Some("127.0.0.2")).status,
            403,
            "{page}: the proxy vouching for 127.0.0.2"
        );
        assert_eq!(get(LOCAL, page, None).status, 200, "{page} from the administration address");
    }
    assert_eq!(get(OTHER, "/", None).header("server"), Some("Apache"));

    let member = b[1].url();
    let status =
        || apache.member_status("balancer://app", &member).unwrap()["status"].as_str().unwrap().to_string();
    let post = |form: String, referer: Option<&str>| {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        headers.extend(referer.map(|r| ("Referer", r)));
        let response = client::request(addr, "POST", "/balancer-manager", &headers, form.as_bytes()).unwrap();
        assert_eq!(response.status, 200);
    };
    let change = format!("b=app&w={}&w_status_N=1", member.replace(':', "%3A").replace('/', "%2F"));
    let same_host = "http://127.0.0.1/balancer-manager";
    post(change.clone(), Some(same_host));
    assert_eq!(status(), "ok", "no nonce: ignored");
    post(format!("{change}&nonce={}", nonce(&apache, "app")), Some("http://attacker.example/page"));
    assert_eq!(status(), "ok", "a Referer naming another host: ignored");
    assert!(apache.error_log().contains("AH10187: ignoring params in balancer-manager cross-site access"));
    post(format!("{change}&nonce={}", nonce(&apache, "app")), Some(same_host));
    assert_eq!(status(), "draining", "nonce and same-host Referer: applied");
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_client_cannot_choose_the_hash_key_or_the_identity_the_application_sees() {
    let b: Vec<Backend> =
        ["m1", "m2", "m3"].iter().map(|name| Backend::start(BackendSpec::new(name)).unwrap()).collect();
    let dir = ScratchDir::new().unwrap();
    let passwords = dir.path().join("app.htpasswd");
    for (i, user) in ["alice", "bob"].iter().enumerate() {
        let create = if i == 0 { "-cbB" } else { "-bB" };
        let status = Command::new("htpasswd")
            .args([create, &passwords.display().to_string(), user, &format!("{user}-secret")])
            .output()
            .unwrap();
        assert!(status.status.success(), "htpasswd: {}", String::from_utf8_lossy(&status.stderr));
    }
    fs::set_permissions(&passwords, fs::Permissions::from_mode(0o644)).unwrap();
    let recipe = fill(
        &Recipe::load(DOC, "security-hash-key").text,
        &[
            ("http://10.0.0.11:8080", &b[0].url()),
            ("http://10.0.0.12:8080", &b[1].url()),
            ("http://10.0.0.13:8080", &b[2].url()),
            ("/etc/apache2/app.htpasswd", &passwords.display().to_string()),
        ],
    );
    let mut config = ApacheConfig::new(&recipe);
    for module in ["headers", "auth_basic", "authn_core", "authn_file", "authz_user"] {
        config = config.with_module(module);
    }
    let apache = Apache::start(config).unwrap();
    let addr = apache.addr();

    for user in ["alice", "bob"] {
        let credentials = format!("Basic {}", base64(format!("{user}:{user}-secret").as_bytes()));
        let mut members = BTreeSet::new();
        for i in 0..20 {
            let forged = if i == 0 { "bob".to_string() } else { format!("forged-{i}") };
            // /__headers: the backend answers with the request headers it received.
            let response = client::request(
                addr,
                "GET",
                &format!("/{user}/{i}/__headers"),
                &[("Authorization", &credentials), ("X-User", &forged)],
                b"",
            )
            .unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
            let received: Vec<String> = response
                .text()
                .lines()
                .filter_map(|line| {
                    line.split_once(": ").filter(|(name, _)| name.eq_ignore_ascii_case("x-user"))
                })
                .map(|(_, value)| value.to_string())
                .collect();
            assert_eq!(received, vec![user.to_string()], "the application gets the authenticated user alone");
            members.extend(response.header("x-backend").map(str::to_string));
        }
        assert_eq!(members.len(), 1, "every request of {user} on one member: {members:?}");
    }
    let before: u64 = b.iter().map(|b| b.stats().requests).sum();
    let anonymous = client::request(addr, "GET", "/", &[("X-User", "alice")], b"").unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(b.iter().map(|b| b.stats().requests).sum::<u64>(), before, "no member contacted");
}

#[test]
fn the_nftables_rules_parse() {
    if let Some(checked) = nft_check(&Recipe::load(DOC, "security-nftables").text) {
        checked.unwrap_or_else(|e| panic!("{DOC} security-nftables: {e}"));
        // The check does refuse what is wrong, so a pass means something.
        assert!(nft_check("table ip t {\n chain c {\n tcp dport 81 bogus\n }\n}\n").unwrap().is_err());
    }
}
