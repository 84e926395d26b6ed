//! docs/tls.md: both recipes, taken from the page itself, through the real apache2 with mod_ssl
//! and mod_http2, certificates made here with the real openssl, a second real apache2 with
//! mod_ssl as the TLS backends, and the real curl as the client (over HTTP/2). Everything made
//! here lives in temporary directories that their guards remove.

mod guide_common;
use lbrs_harness::apache::ScratchDir;

use guide_common::show;
use lbrs_harness::apache::free_port;
use lbrs_harness::{Apache, ApacheConfig, Backend, Recipe, backends, wait_for};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const DOC: &str = "docs/tls.md";
const FULLCHAIN: &str = "/etc/letsencrypt/live/app.example.com/fullchain.pem";
const PRIVKEY: &str = "/etc/letsencrypt/live/app.example.com/privkey.pem";

/// Runs a program to completion (bounded by `timeout`, from coreutils) and returns its stdout;
/// panics with its stderr if it fails.
fn run(program: &str, args: &[&str], cwd: &Path) -> String {
    let output = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A certificate authority and the certificates it issues, in a temporary directory.
struct Pki {
    dir: ScratchDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: ScratchDir::new().expect("a scratch directory") };
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=lbrs guide test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            pki.dir.path(),
        );
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    /// Issues `name.pem` and `name.key` for subject `cn` with the subject alternative names
    /// `san`, signed by the CA (or self-signed when `by_ca` is false). Returns the serial.
    fn issue(&self, name: &str, cn: &str, san: &str, by_ca: bool) -> String {
        let dir = self.dir.path();
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        fs::write(dir.join(&ext), format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n")).unwrap();
        let subject = format!("/CN={cn}");
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subject,
            ],
            dir,
        );
        // A serial of our own, different for every certificate (a renewal must show a new one).
        let serial = format!(
            "0x{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        );
        let mut args = vec!["x509", "-req", "-in", &csr, "-out", &pem, "-days", "2", "-extfile", &ext];
        if by_ca {
            args.extend(["-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", &serial]);
        } else {
            args.extend(["-key", &key, "-set_serial", &serial]);
        }
        run("openssl", &args, dir);
        let serial = run("openssl", &["x509", "-in", &pem, "-noout", "-serial"], dir);
        serial.trim().trim_start_matches("serial=").to_string()
    }
}

/// What curl got: its `-w` line (HTTP version and status), the response headers and body.
struct Fetched {
    version: String,
    status: u16,
    head: String,
    body: String,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// `curl --http2` to `https://app.example.com:<port><path>`, resolved to 127.0.0.1, trusting
/// only `ca`. `Err` with curl's exit status and message when it fails.
fn curl(ca: &str, port: u16, path: &str) -> Result<Fetched, String> {
    let head = tempfile_path("head");
    let output = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "--cacert", ca, "--resolve"])
        .arg(format!("app.example.com:{port}:127.0.0.1"))
        .arg("-D")
        .arg(&head)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://app.example.com:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    let head_text = fs::read_to_string(&head).unwrap_or_default();
    let _ = fs::remove_file(&head);
    if !output.status.success() {
        return Err(format!("curl: {} {}", output.status, String::from_utf8_lossy(&output.stderr)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (version, status) = last.split_once(' ').unwrap_or(("", "0"));
    Ok(Fetched {
        version: version.into(),
        status: status.parse().unwrap_or(0),
        head: head_text,
        body: body.into(),
    })
}

fn tempfile_path(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "lbrs-guide-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The serial of the certificate the server at 127.0.0.1:`port` shows for app.example.com.
fn served_serial(port: u16, cwd: &Path) -> String {
    let connect = format!("127.0.0.1:{port}");
    let shown = run("openssl", &["s_client", "-connect", &connect, "-servername", "app.example.com"], cwd);
    let pem = cwd.join("served.pem");
    fs::write(&pem, shown).unwrap();
    let serial = run("openssl", &["x509", "-in", "served.pem", "-noout", "-serial"], cwd);
    serial.trim().trim_start_matches("serial=").to_string()
}

/// The front: the recipe on a free TLS port (and the test server's plain port for `*:80`).
fn front(text: &str, tls_port: u16, http_port: u16) -> Apache {
    let body =
        format!("Listen 127.0.0.1:{tls_port} https\n{}", text.replace("*:443", &format!("*:{tls_port}")));
    let body = body.replace("*:80>", &format!("*:{http_port}>"));
    let mut config = ApacheConfig::new(&body).port(http_port).log_level("warn lbmethod_rs:info ssl:info");
    for module in ["ssl", "http2", "headers", "alias"] {
        config = config.with_module(module);
    }
    Apache::start(config).unwrap_or_else(|e| panic!("the front did not start:\n{e}\n{body}"))
}

#[test]
fn https_for_the_clients_over_http2_with_the_redirect_and_a_renewal() {
    let pki = Pki::new();
    let first = pki.issue("front", "app.example.com", "DNS:app.example.com,DNS:localhost,IP:127.0.0.1", true);
    let b = backends(&["a", "b"]);
    let recipe = Recipe::load(DOC, "tls-front")
        .replace(FULLCHAIN, &pki.path("front.pem").display().to_string())
        .replace(PRIVKEY, &pki.path("front.key").display().to_string())
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url());
    let (tls, http) = (free_port().unwrap(), free_port().unwrap());
    let mut apache = front(recipe.text(), tls, http);

    // HTTP/2 over TLS, verified against our CA, answered by a member.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let got = curl(&pki.ca(), tls, "/").unwrap();
        assert_eq!((got.version.as_str(), got.status), ("2", 200), "{}", got.head);
        served.insert(got.header("x-backend").unwrap_or_default());
    }
    assert_eq!(served.len(), 2, "both members answer: {served:?}");
    // The backend hears that the client used HTTPS, and the public host name.
    let got = curl(&pki.ca(), tls, "/__headers").unwrap();
    assert!(got.body.contains("X-Forwarded-Proto: https"), "{}", got.body);
    assert!(got.body.contains(&format!("Host: app.example.com:{tls}")), "{}", got.body);
    // The status page over HTTPS.
    let got = curl(&pki.ca(), tls, "/lb-status?format=json").unwrap();
    assert!(got.status == 200 && got.body.contains("\"balancer://app\""), "{}", got.body);
    // curl refuses the front without our CA: the certificate is checked, not just present.
    let refused = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("app.example.com:{tls}:127.0.0.1"))
        .arg(format!("https://app.example.com:{tls}/"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(60), "curl: unknown CA");

    // Port 80 sends everything to HTTPS, path and query string included.
    let response = guide_common::get(&apache, "/cart?id=7", &[("Host", "app.example.com")]);
    assert_eq!(response.status, 301, "{}", show(&response));
    assert_eq!(response.header("location"), Some("https://app.example.com/cart?id=7"));

    // Renewal: new files, a graceful restart, the new certificate on the next connection.
    assert_eq!(served_serial(tls, pki.dir.path()), first);
    let renewed =
        pki.issue("front", "app.example.com", "DNS:app.example.com,DNS:localhost,IP:127.0.0.1", true);
    assert_ne!(renewed, first);
    assert_eq!(served_serial(tls, pki.dir.path()), first, "Apache reads the files at (re)start only");
    apache.graceful().unwrap();
    assert!(wait_for(Duration::from_secs(10), || served_serial(tls, pki.dir.path()) == renewed));
    let got = curl(&pki.ca(), tls, "/").unwrap();
    assert_eq!((got.version.as_str(), got.status), ("2", 200));
}

/// A second apache2 with mod_ssl: one TLS virtual host per (certificate name, plain backend),
/// each on its own port and proxying to its backend. Returns the server and the ports.
fn tls_backends(pki: &Pki, sites: &[(&str, &Backend)]) -> (Apache, Vec<u16>) {
    let mut body = String::new();
    let mut ports = Vec::new();
    for (cert, backend) in sites {
        let port = free_port().unwrap();
        ports.push(port);
        body.push_str(&format!(
            "Listen 127.0.0.1:{port} https\n<VirtualHost 127.0.0.1:{port}>\n    SSLEngine on\n    \
             SSLCertificateFile \"{}\"\n    SSLCertificateKeyFile \"{}\"\n    \
             ProxyPass \"/\" \"{}/\"\n</VirtualHost>\n",
            pki.path(&format!("{cert}.pem")).display(),
            pki.path(&format!("{cert}.key")).display(),
            backend.url(),
        ));
    }
    let apache = Apache::start(ApacheConfig::new(&body).with_module("ssl").processes(1))
        .unwrap_or_else(|e| panic!("the TLS backends did not start:\n{e}"));
    (apache, ports)
}

#[test]
fn tls_to_the_backends_is_verified_and_a_wrong_name_is_refused() {
    let pki = Pki::new();
    pki.issue("front", "app.example.com", "DNS:app.example.com,IP:127.0.0.1", true);
    // The members' URLs name 127.0.0.1: their certificates must carry that name.
    pki.issue("good", "127.0.0.1", "IP:127.0.0.1", true);
    pki.issue("othername", "other.internal", "DNS:other.internal", true);
    pki.issue("selfsigned", "127.0.0.1", "IP:127.0.0.1", false);
    let plain = backends(&["tls1", "tls2", "wrong-name", "untrusted"]);
    let (_backend_server, ports) = tls_backends(
        &pki,
        &[("good", &plain[0]), ("good", &plain[1]), ("othername", &plain[2]), ("selfsigned", &plain[3])],
    );
    let recipe = Recipe::load(DOC, "tls-backends")
        .replace(FULLCHAIN, &pki.path("front.pem").display().to_string())
        .replace(PRIVKEY, &pki.path("front.key").display().to_string())
        .replace("/etc/apache2/backend-ca.pem", &pki.ca());
    let members = |one: u16, two: u16| {
        recipe
            .clone()
            .replace("https://app1.internal:8443", &format!("https://127.0.0.1:{one}"))
            .replace("https://app2.internal:8443", &format!("https://127.0.0.1:{two}"))
    };

    // Both legs over TLS, the backends' certificates verified, names checked.
    let tls = free_port().unwrap();
    let apache = front(members(ports[0], ports[1]).text(), tls, free_port().unwrap());
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let got = curl(&pki.ca(), tls, "/").unwrap();
        assert_eq!((got.version.as_str(), got.status), ("2", 200), "{}{}", got.head, apache.error_log());
        served.insert(got.header("x-backend").unwrap_or_default());
    }
    assert_eq!(served, ["tls1", "tls2"].iter().map(|s| s.to_string()).collect(), "both members");
    let got = curl(&pki.ca(), tls, "/__headers").unwrap();
    assert!(got.body.contains("X-Forwarded-Proto: https"), "{}", got.body);
    drop(apache);

    // A certificate for another name, and one our CA did not sign: the handshake fails, the
    // request that met it gets 500, the member goes into error.
    let tls = free_port().unwrap();
    let apache = front(members(ports[2], ports[3]).text(), tls, free_port().unwrap());
    for _ in 0..4 {
        let got = curl(&pki.ca(), tls, "/").unwrap();
        assert_eq!(got.status, 500, "{}", got.body);
        assert!(got.body.contains("Error during SSL Handshake with remote server"), "{}", got.body);
    }
    assert_eq!(plain[2].stats().requests + plain[3].stats().requests, 0, "nothing reached them");
    let log = apache.error_log();
    assert!(
        log.contains("AH02411: SSL Proxy: Peer certificate does not match for hostname 127.0.0.1"),
        "{log}"
    );
    assert!(log.contains("AH02276: Certificate Verification: Error (18): self-signed certificate"), "{log}");
    drop(apache);

    // One good member and one with the wrong name: one request fails, then the good member
    // serves everything.
    let tls = free_port().unwrap();
    let apache = front(members(ports[0], ports[2]).text(), tls, free_port().unwrap());
    let statuses: Vec<u16> = (0..8).map(|_| curl(&pki.ca(), tls, "/").unwrap().status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 7, "{statuses:?}");
    let bad = apache.member_status("balancer://app", &format!("https://127.0.0.1:{}", ports[2])).unwrap();
    assert_eq!(bad["status"], "error", "{bad}");
    drop(apache);

    // With ProxyPreserveHost On the certificate must carry the client's host name instead.
    let preserving = members(ports[0], ports[1])
        .text()
        .replace("    SSLProxyEngine on\n", "    SSLProxyEngine on\n    ProxyPreserveHost On\n");
    let tls = free_port().unwrap();
    let apache = front(&preserving, tls, free_port().unwrap());
    let got = curl(&pki.ca(), tls, "/").unwrap();
    assert_eq!(got.status, 500, "{}", got.body);
    let log = apache.error_log();
    assert!(log.contains("Peer certificate does not match for hostname app.example.com"), "{log}");
    drop(apache);

    // Without SSLProxyEngine, https:// members are refused.
    let disabled = members(ports[0], ports[1]).text().replace("    SSLProxyEngine on\n", "");
    let tls = free_port().unwrap();
    let apache = front(&disabled, tls, free_port().unwrap());
    let got = curl(&pki.ca(), tls, "/").unwrap();
    assert_eq!(got.status, 500, "{}", got.body);
    assert!(apache.error_log().contains("AH00961: https: failed to enable ssl support for 127.0.0.1:"));
}
