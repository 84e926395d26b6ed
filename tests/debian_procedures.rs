//! The guide's procedures on the real Debian layout: this machine's /etc/apache2 tree as the
//! apache2 package installed it (Debian's ports.conf, default modules and site), copied into a
//! private mount namespace inside a network namespace of the test's own
//! (harness/src/debian_box.rs), changed with the commands the pages name (`a2enmod`,
//! `a2ensite`, `apachectl -t`, then `apache2ctl graceful`, which is what `systemctl reload
//! apache2` runs on Debian) and checked with `curl` as a sysadmin would. Apache must stay up
//! through every step: the same parent process serves before and after each reload.

use lbrs_harness::BackendSpec;
use lbrs_harness::debian_box::DebianBox;
use lbrs_harness::netns::NsBackends;
use lbrs_harness::recipe::Recipe;
use std::net::SocketAddr;

/// A box with the module installed (as scripts/install.sh does), or None after saying why
/// this machine cannot have one.
fn debian(tag: &str) -> Option<DebianBox> {
    DebianBox::for_procedures(tag)
}

/// Three backends inside the box, on the quick start's loadfactors.
fn backends(debian: &DebianBox) -> (NsBackends, [String; 3]) {
    let addrs: [SocketAddr; 3] =
        ["127.0.0.11:8080", "127.0.0.12:8080", "127.0.0.13:8080"].map(|a| a.parse().unwrap());
    let running = NsBackends::start(
        debian.netns(),
        addrs.iter().zip(["a", "b", "c"]).map(|(addr, name)| (*addr, BackendSpec::new(name))).collect(),
    )
    .unwrap();
    (running, addrs.map(|a| a.to_string()))
}

/// The quick start, literally: a2enmod, the site, a2dissite/a2ensite, -t, reload (here the
/// first start). Returns the parent's pid.
fn quick_start(debian: &DebianBox, members: &[String; 3]) -> u32 {
    debian.ok("a2enmod proxy_http lbmethod_rs").unwrap();
    let site = Recipe::load("docs/quick-start.md", "quick-start").fill(&[
        ("10.0.0.11:8080", &members[0]),
        ("10.0.0.12:8080", &members[1]),
        ("10.0.0.13:8080", &members[2]),
    ]);
    debian.write("/etc/apache2/sites-available/app.conf", site.text()).unwrap();
    debian.ok("a2dissite 000-default && a2ensite app && apachectl -t && apache2ctl start").unwrap();
    let pid = wait_pid(debian);
    let shares = tally(debian, 12);
    assert_eq!(shares, [2, 4, 6], "the quick start's 1:2:3\n{}", debian.error_log());
    pid
}

fn wait_pid(debian: &DebianBox) -> u32 {
    for _ in 0..100 {
        if let Some(pid) = debian.apache_pid() {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("Apache did not start:\n{}", debian.error_log());
}

/// Sends `n` requests to port 80 and returns what each member was sent, by the status page.
fn tally(debian: &DebianBox, n: usize) -> [u64; 3] {
    let before = selected(debian);
    for _ in 0..n {
        let (code, body) = debian.curl("http://127.0.0.1/").unwrap();
        assert_eq!(code, 200, "{body}\n{}", debian.error_log());
    }
    let after = selected(debian);
    [0, 1, 2].map(|i| after[i] - before[i])
}

fn selected(debian: &DebianBox) -> [u64; 3] {
    let (code, body) = debian.curl("'http://127.0.0.1/lb-status?format=json'").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let members = status["balancers"][0]["members"].as_array().unwrap();
    [0, 1, 2].map(|i| members[i]["selected"].as_u64().unwrap())
}

/// `apachectl -t`, then the reload Debian's unit runs; Apache must still be the same parent.
fn reload(debian: &DebianBox, pid: u32) {
    debian.ok("apachectl -t && apache2ctl graceful").unwrap();
    wait_same(debian, pid);
}

/// After a reload: the same parent still runs (a failed reload ends it within a moment).
fn wait_same(debian: &DebianBox, pid: u32) {
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(debian.apache_pid(), Some(pid), "Apache went down on the reload:\n{}", debian.error_log());
}

/// install.md's way back to httpd's own methods, on a box set up by the quick start, where no
/// stock lbmethod module is enabled: enable the built-in method's module first, then change
/// or delete `lbmethod=`, then disable this module; then its uninstalling steps. Apache serves
/// throughout, the same process.
#[test]
fn rolling_back_to_a_built_in_method_keeps_apache_up() {
    let Some(debian) = debian("rollback") else { return };
    let (_backends, members) = backends(&debian);
    let pid = quick_start(&debian, &members);
    // What a box set up by the quick start has: no stock method enabled.
    let enabled = debian.ok("ls /etc/apache2/mods-enabled").unwrap();
    assert!(!enabled.contains("lbmethod_by"), "{enabled}");
    // The package would refuse to go now (its prerm, run as dpkg runs it), naming the line.
    let prerm = lbrs_harness::recipe::workspace_root().join("debian/libapache2-mod-lbmethod-rs.prerm");
    let refused = debian.sh(&format!("sh '{}' remove", prerm.display())).unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("/etc/apache2/sites-enabled/app.conf") && said.contains("byweight"), "{said}");

    // The page's steps, in its order, with the reload Debian's unit runs.
    let steps = Recipe::load("docs/install.md", "rollback-to-built-in")
        .replace("systemctl reload apache2", "apache2ctl graceful");
    let commands: Vec<&str> = steps.text().lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    assert_eq!(commands.len(), 3, "{}", steps.text());
    debian.ok(commands[0]).unwrap();
    debian.ok(commands[1]).unwrap();
    wait_same(&debian, pid);
    // Delete the line: httpd's default method, byrequests, needs the module just enabled.
    debian.ok("sed -i '/ProxySet lbmethod=byweight/d' /etc/apache2/sites-available/app.conf").unwrap();
    debian.ok(commands[2]).unwrap();
    wait_same(&debian, pid);
    // Rolled back: the package may go.
    debian.ok(&format!("sh '{}' remove", prerm.display())).unwrap();
    let (code, _) = debian.curl("http://127.0.0.1/").unwrap();
    assert_eq!(code, 200);
    // And the module goes.
    debian.ok("a2dismod lbmethod_rs").unwrap();
    // The status page went with it: its ProxyPass exclusion stays harmless.
    reload(&debian, pid);
    for _ in 0..6 {
        let (code, body) = debian.curl("http://127.0.0.1/").unwrap();
        assert_eq!(code, 200, "{body}\n{}", debian.error_log());
    }
    let errors = debian.error_log();
    assert!(!errors.contains("AH02432"), "{errors}");
    // Uninstalling, as the page goes on: its grep finds only the module's own files, the
    // files go, and the grep finds nothing; Apache still serves after a reload.
    let grep = Recipe::load("docs/install.md", "uninstall-grep");
    let found = debian.sh(grep.text()).unwrap();
    let found = String::from_utf8_lossy(&found.stdout).to_string();
    assert!(
        found.lines().all(|l| l.starts_with("/etc/apache2/mods-available/lbmethod_rs.")),
        "left after the rollback:\n{found}"
    );
    debian
        .ok("rm -f /usr/lib/apache2/modules/mod_lbmethod_rs.so && \
             rm -f /etc/apache2/mods-available/lbmethod_rs.load /etc/apache2/mods-available/lbmethod_rs.conf")
        .unwrap();
    assert_eq!(debian.sh(grep.text()).unwrap().stdout, b"", "the grep lists nothing");
    reload(&debian, pid);
    let (code, _) = debian.curl("http://127.0.0.1/").unwrap();
    assert_eq!(code, 200);
}

/// The address keepalived would move, in the box only.
const VIP: &str = "198.18.0.100";

/// tls.md's HTTPS front with its local admin virtual host, the HA page's health page and its
/// ports.conf change, on Debian's own ports.conf with mod_ssl: Apache stays up through the
/// reload, listens on the virtual address (before it holds it) and 127.0.0.1 on 80 and 443,
/// the admin URLs answer on 127.0.0.1 (no redirect), keepalived's own check fails once the
/// health file is gone, and clients on the virtual address get the redirect and HTTPS.
#[test]
fn https_front_and_ha_listen_on_debians_ports_conf_keep_the_admin_urls_local() {
    let Some(debian) = debian("tlsha") else { return };
    let (_backends, members) = backends(&debian);
    debian.ok("a2enmod -q proxy_http lbmethod_rs ssl headers http2 alias").unwrap();
    debian
        .ok("mkdir -p /etc/apache2/tls && openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
             -subj /CN=app.example.com -addext subjectAltName=DNS:app.example.com \
             -keyout /etc/apache2/tls/key.pem -out /etc/apache2/tls/cert.pem 2>&1")
        .unwrap();
    let site = Recipe::load("docs/tls.md", "tls-front")
        .replace("/etc/letsencrypt/live/app.example.com/fullchain.pem", "/etc/apache2/tls/cert.pem")
        .replace("/etc/letsencrypt/live/app.example.com/privkey.pem", "/etc/apache2/tls/key.pem")
        .replace("http://10.0.0.11:8080", &format!("http://{}", members[0]))
        .replace("http://10.0.0.12:8080", &format!("http://{}", members[1]));
    debian.write("/etc/apache2/sites-available/app.conf", site.text()).unwrap();
    // The health page, as high-availability.md's ready files set it up.
    let health = lbrs_harness::ha::shipped("health.conf")
        .and_then(|t| {
            lbrs_harness::ha::fill(
                &t,
                &[("HEALTH_DIR", "/var/www/lbrs-health"), ("CHECKER_IPS", "198.18.0.12")],
            )
        })
        .unwrap();
    debian.write("/etc/apache2/conf-available/lbrs-health.conf", &health).unwrap();
    debian
        .ok("mkdir -p /var/www/lbrs-health && echo ok > /var/www/lbrs-health/ok && a2enconf -q lbrs-health && \
             a2dissite -q 000-default && a2ensite -q app && apachectl -t && apache2ctl start")
        .unwrap();
    let pid = wait_pid(&debian);

    // The ports.conf change, literally, with the virtual address not yet on the box.
    debian.netns().sysctl("net.ipv4.ip_nonlocal_bind", "1").unwrap();
    let listen = Recipe::load("docs/high-availability.md", "ha-listen")
        .replace("192.0.2.100", VIP)
        .replace("systemctl restart apache2", "apache2ctl graceful-stop");
    let script: String = listen
        .text()
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(l).trim_end())
        .filter(|l| !l.starts_with("ss ")) // run below, once Apache has started again
        .collect::<Vec<_>>()
        .join("\n");
    let out = debian.ok(&format!("set -e\n{script}")).unwrap();
    // What systemd's restart does next, once the old Apache has ended: start.
    assert!(
        lbrs_harness::system::wait_gone(pid, std::time::Duration::from_secs(15)),
        "{}",
        debian.error_log()
    );
    debian.ok("apache2ctl start").unwrap();
    let pid = wait_pid(&debian);
    let ports = debian.read("/etc/apache2/ports.conf").unwrap();
    assert!(!ports.lines().any(|l| matches!(l.trim(), "Listen 80" | "Listen 443")), "{ports}");
    let listening = debian.ok("ss -ltnH").unwrap();
    for addr in [format!("{VIP}:80"), format!("{VIP}:443"), "127.0.0.1:80".into(), "127.0.0.1:443".into()] {
        assert!(listening.contains(&addr), "not listening on {addr}:\n{listening}\n{out}");
    }

    // The admin URLs on 127.0.0.1: answered, not redirected.
    let (code, body) = debian.curl("'http://127.0.0.1/lb-status?format=json'").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"balancer://app\""), "{body}");
    let maintenance = lbrs_harness::recipe::workspace_root().join("scripts/lbrs-maintenance.sh");
    let status = debian
        .ok(&format!("'{}' status app 'http://{}' --wait 0", maintenance.display(), members[0]))
        .unwrap();
    assert!(status.contains("status=ok"), "{status}");
    // The same over HTTPS, by the certificate's name, checked against its CA.
    let status = debian
        .ok(&format!(
            "'{}' status app 'http://{}' --wait 0 --url https://app.example.com/ \
             --cacert /etc/apache2/tls/cert.pem --resolve app.example.com:443:127.0.0.1",
            maintenance.display(),
            members[0]
        ))
        .unwrap();
    assert!(status.contains("status=ok"), "{status}");
    // Drain and enable over HTTPS, with balancer-manager served as the runbook shows; the
    // enable command is the one the drain prints, run as printed.
    let manager = Recipe::load("docs/runbook.md", "runbook-balancer-manager");
    debian.write("/etc/apache2/conf-available/lbrs-manager.conf", manager.text()).unwrap();
    debian.ok("a2enconf -q lbrs-manager && apachectl -t && apache2ctl graceful").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let script = maintenance.display().to_string();
    let drained = debian
        .ok(&format!(
            "'{script}' drain app 'http://{}' --wait 10 --url https://app.example.com/ \
             --cacert /etc/apache2/tls/cert.pem --resolve app.example.com:443:127.0.0.1",
            members[0]
        ))
        .unwrap();
    let next = drained
        .lines()
        .find_map(|l| l.split_once("deploy now, then: ").map(|(_, command)| command.to_string()))
        .unwrap_or_else(|| panic!("no next step printed:\n{drained}"));
    assert!(next.contains("--cacert") && next.contains("--resolve"), "{next}");
    let enabled = debian.ok(&next).unwrap();
    assert!(enabled.contains("enabled"), "{enabled}");
    let status = debian
        .ok(&format!(
            "'{script}' status app 'http://{}' --wait 0 --url https://app.example.com/ \
             --cacert /etc/apache2/tls/cert.pem --resolve app.example.com:443:127.0.0.1",
            members[0]
        ))
        .unwrap();
    assert!(status.contains("status=ok"), "{status}");
    // keepalived's own check, taken from the shipped file: passes, then fails without the file.
    // lbrs-ha-check goes to the box's private /run instead of /etc/keepalived.
    debian.write("/run/lbrs-ha-check", &lbrs_harness::ha::shipped("lbrs-ha-check").unwrap()).unwrap();
    debian.ok("chmod 755 /run/lbrs-ha-check").unwrap();
    let installed = |line: &str| line.replace("/etc/keepalived/lbrs-ha-check", "/run/lbrs-ha-check");
    let check = lbrs_harness::ha::shipped("keepalived-a.conf").unwrap();
    let check = check
        .lines()
        .find_map(|l| l.trim().strip_prefix("script \"").and_then(|c| c.strip_suffix('"')))
        .map(|c| installed(&c.replace("{{PEER_IP}}", "198.18.0.12")))
        .expect("a vrrp_script in keepalived-a.conf");
    // And the check of both ports the page gives for HTTPS.
    let both = Recipe::load("docs/high-availability.md", "ha-check-https");
    let both = both
        .text()
        .trim()
        .strip_prefix("script \"")
        .and_then(|c| c.strip_suffix('"'))
        .map(installed)
        .expect("a script line");
    for check in [&check, &both] {
        debian.ok(check).unwrap();
        debian.ok("rm /var/www/lbrs-health/ok").unwrap();
        assert!(debian.sh(check).unwrap().status.code() != Some(0), "{check} must fail without the file");
        debian.ok("echo ok > /var/www/lbrs-health/ok").unwrap();
    }
    // With port 443 gone (a broken ssl.conf, say), the HTTPS check fails too.
    debian.ok("sed -i 's/^\\(\\s*\\)Listen 127.0.0.1:443$/\\1# off/' /etc/apache2/ports.conf").unwrap();
    debian.ok("apache2ctl graceful-stop").unwrap();
    assert!(lbrs_harness::system::wait_gone(pid, std::time::Duration::from_secs(15)));
    debian.ok("apache2ctl start").unwrap();
    let pid = wait_pid(&debian);
    debian.ok(&check).unwrap();
    assert!(debian.sh(&both).unwrap().status.code() != Some(0), "no 443 on 127.0.0.1: {both}");

    // keepalived adds the address: clients get the redirect on 80 and the site on 443.
    debian.netns().ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]).unwrap();
    let (code, _) = debian.curl(&format!("-o /dev/null -D - 'http://{VIP}/cart?id=7'")).unwrap();
    assert_eq!(code, 301);
    let head = debian.ok(&format!("curl -s -o /dev/null -D - 'http://{VIP}/cart?id=7'")).unwrap();
    assert!(head.contains("Location: https://app.example.com/cart?id=7"), "{head}");
    let (code, body) =
        debian.curl(&format!("--resolve app.example.com:443:{VIP} https://app.example.com/")).unwrap();
    assert_eq!(code, 200, "{body}\n{}", debian.error_log());
    assert_eq!(debian.apache_pid(), Some(pid));
}

/// A member that leaks what it is: `Server` and `X-Powered-By`, a session cookie without
/// flags, a stack trace on its `500`. Started inside the box on `addr`; its pid is written to
/// `pidfile` (the box's namespace ends it at the latest).
const LEAKY_APP: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class App(BaseHTTPRequestHandler):
    server_version = "Werkzeug/2.2.2"
    sys_version = "Python/3.11"
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/boom"):
            body = b"Traceback (most recent call last):\n  File \"app.py\", line 3\nKeyError: 'db_password'\n"
            self.send_response(500)
        else:
            body = b"hello\n"
            self.send_response(200)
            self.send_header("Set-Cookie", "session=abc123; Path=/")
        self.send_header("X-Powered-By", "PHP/8.2.7")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), App).serve_forever()
"#;

/// security.md's hardened edge, with its commands, on the real tree: members' identity, error
/// pages and cookies are hidden or fixed, HSTS is sent, the log has no query strings and says
/// which member answered and how each request ended.
#[test]
fn the_hardened_edge_hides_the_members_and_flags_the_cookies() {
    let Some(debian) = debian("edge") else { return };
    let app = debian.scratch().join("leaky_app.py");
    std::fs::write(&app, LEAKY_APP).unwrap();
    for (n, host) in ["127.0.0.21", "127.0.0.22"].iter().enumerate() {
        debian
            .ok(&format!(
                "python3 '{}' {host} 8080 >/dev/null 2>&1 </dev/null & echo $! > '{}'",
                app.display(),
                debian.scratch().join(format!("app{n}.pid")).display()
            ))
            .unwrap();
    }
    debian.ok(Recipe::load("docs/security.md", "hardened-edge-commands").text()).unwrap();
    debian
        .ok("mkdir -p /etc/apache2/tls && openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
             -subj /CN=app.example.com -addext subjectAltName=DNS:app.example.com \
             -keyout /etc/apache2/tls/key.pem -out /etc/apache2/tls/cert.pem 2>&1")
        .unwrap();
    let server = Recipe::load("docs/security.md", "hardened-edge-server");
    debian.write("/etc/apache2/conf-available/lbrs-edge.conf", server.text()).unwrap();
    let site = Recipe::load("docs/security.md", "hardened-edge-site")
        .replace("/etc/letsencrypt/live/app.example.com/fullchain.pem", "/etc/apache2/tls/cert.pem")
        .replace("/etc/letsencrypt/live/app.example.com/privkey.pem", "/etc/apache2/tls/key.pem")
        .replace("http://10.0.0.11:8080", "http://127.0.0.21:8080")
        .replace("http://10.0.0.12:8080", "http://127.0.0.22:8080");
    debian.write("/etc/apache2/sites-available/app.conf", site.text()).unwrap();
    debian
        .ok("a2enconf -q lbrs-edge && a2dissite -q 000-default && a2ensite -q app && apachectl -t && apache2ctl start")
        .unwrap();
    let pid = wait_pid(&debian);
    let https = "--http2 --resolve app.example.com:443:127.0.0.1 --cacert /etc/apache2/tls/cert.pem";
    // The members (Python) may take a moment to listen: until then Apache answers 503.
    let mut served = String::new();
    for _ in 0..50 {
        served = debian
            .ok(&format!("curl -sS --max-time 10 {https} -D - -o /dev/null https://app.example.com/"))
            .unwrap_or_else(|e| panic!("{e}\n{}", debian.error_log()));
        if served.starts_with("HTTP/2 200") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(served.starts_with("HTTP/2 200"), "{served}\n{}", debian.error_log());
    let lower = served.to_ascii_lowercase();
    assert!(!lower.contains("werkzeug") && !lower.contains("x-powered-by"), "{served}");
    assert!(
        lower.contains("server: apache\r\n") || lower.contains("server: apache\n"),
        "no version: {served}"
    );
    assert!(lower.contains("strict-transport-security: max-age=63072000"), "{served}");
    let cookies: Vec<&str> = lower.lines().filter(|l| l.starts_with("set-cookie:")).collect();
    assert!(cookies.iter().any(|c| c.contains("session=abc123")), "{served}");
    assert!(cookies.iter().any(|c| c.contains("routeid=.app")), "{served}");
    for cookie in &cookies {
        for flag in ["; secure", "; httponly", "; samesite=lax"] {
            assert!(cookie.matches(flag).count() == 1, "{flag} once in {cookie}");
        }
    }
    // The member's error page stays inside.
    let (code, body) = debian.curl(&format!("{https} https://app.example.com/boom")).unwrap();
    assert_eq!(code, 500);
    assert!(!body.contains("Traceback") && !body.contains("db_password"), "{body}");
    assert!(!body.contains("Apache/2"), "Apache's page names no version: {body}");
    // Port 80's redirect keeps secrets out of the log too.
    let (code, _) = debian.curl("'http://127.0.0.5/login?token=s3cr3t80'").unwrap();
    assert_eq!(code, 301);
    // The log: no query string; the member and the outcome.
    let (code, _) = debian.curl(&format!("{https} 'https://app.example.com/account?token=s3cr3t'")).unwrap();
    assert_eq!(code, 200);
    // The members stop: Apache answers for them, and the log says so.
    debian.ok(&format!("kill $(cat '{}'/app*.pid)", debian.scratch().display())).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, _) = debian.curl(&format!("{https} https://app.example.com/after")).unwrap();
    assert_eq!(code, 503);
    let log = debian.read("/var/log/apache2/edge.log").unwrap();
    let every_log = debian.ok("cat /var/log/apache2/*.log").unwrap();
    assert!(!every_log.contains("s3cr3t"), "{every_log}");
    assert!(log.contains("GET /login HTTP/1.1\" 301"), "{log}");
    let account = log.lines().find(|l| l.contains("/account")).expect("the request is logged");
    assert!(account.contains("\"GET /account HTTP/2.0\" 200"), "{account}");
    assert!(account.contains("\"http://127.0.0.2") && account.contains(" answered "), "{account}");
    let after = log.lines().find(|l| l.contains("/after")).expect("the request is logged");
    assert!(after.contains(" 503 ") && after.contains(" no-answer "), "{after}");
    assert_eq!(debian.apache_pid(), Some(pid));
}
