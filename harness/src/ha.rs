//! The programs of a highly available pair of balancers, each run for real inside a network
//! namespace ([`crate::netns`]): apache2 with the module, keepalived and dnsmasq, configured
//! from the files this project ships in `httpd-conf/ha/`, filled in only with addresses,
//! interfaces and paths.

use crate::apache::ApacheConfig;
use crate::client::{self, Response};
use crate::netns::{self, Netns, NsProcess, ScratchDir};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// The text of `httpd-conf/ha/NAME`.
pub fn shipped(name: &str) -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../httpd-conf/ha").join(name);
    fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `template` with each `{{NAME}}` replaced by its value; fails if one is left unfilled.
pub fn fill(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut text = template.to_string();
    for (name, value) in values {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    match text.find("{{") {
        Some(at) => {
            let rest: String = text[at..].chars().take_while(|c| *c != '\n').collect();
            Err(format!("a placeholder is left unfilled: {rest}"))
        }
        None => Ok(text),
    }
}

/// The A records of a zone snippet (`owner ttl IN A address` lines; `;` starts a comment),
/// with relative owner names completed by `origin`.
pub fn a_records(zone: &str, origin: &str) -> Result<Vec<(String, Ipv4Addr, u32)>, String> {
    let mut records = Vec::new();
    for line in zone.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [owner, ttl, class, kind, address] = fields[..] {
            if !class.eq_ignore_ascii_case("IN") || !kind.eq_ignore_ascii_case("A") {
                continue;
            }
            let ttl = ttl.parse().map_err(|_| format!("bad TTL in {line:?}"))?;
            let address = address.parse().map_err(|_| format!("bad address in {line:?}"))?;
            let owner = if owner.ends_with('.') {
                owner.trim_end_matches('.').to_string()
            } else {
                format!("{owner}.{origin}")
            };
            records.push((owner, address, ttl));
        } else if !line.is_empty() {
            return Err(format!("not an `owner ttl IN A address` line: {line:?}"));
        }
    }
    Ok(records)
}

/// Prints a program's log when the test is failing, for the reader of the failure.
fn print_if_failing(what: &str, log: &str) {
    if thread::panicking() {
        eprintln!("----- {what} -----\n{log}");
    }
}

/// apache2 with the module, in a namespace, answering on 127.0.0.1:`port` there.
pub struct NsApache {
    process: Option<NsProcess>,
    ns: String,
    label: String,
    conf: PathBuf,
    port: u16,
    // Last: removed after the process is stopped.
    dir: ScratchDir,
}

impl NsApache {
    /// Starts apache2 in `ns` with `config` (whose `listen` must include 127.0.0.1:`port`, or
    /// just `port`) and waits, at most 30 s, until it answers there.
    pub fn start(ns: &Netns, label: &str, config: &ApacheConfig, port: u16) -> Result<NsApache, String> {
        let dir = ScratchDir::new()?;
        let conf = dir.path().join("httpd.conf");
        fs::write(&conf, config.render(dir.path(), port))
            .map_err(|e| format!("cannot write the config: {e}"))?;
        let mut apache =
            NsApache { process: None, ns: ns.name().to_string(), label: label.to_string(), conf, port, dir };
        apache.start_again(ns)?;
        Ok(apache)
    }

    /// Starts it again after [`NsApache::stop`], with the same configuration.
    pub fn start_again(&mut self, ns: &Netns) -> Result<(), String> {
        let args = vec![
            "-f".to_string(),
            self.conf.display().to_string(),
            "-D".to_string(),
            "FOREGROUND".to_string(),
        ];
        let log = self.dir.path().join("stderr.log");
        self.process =
            Some(NsProcess::start(ns, &crate::apache::apache2_binary().display().to_string(), &args, &log)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !self.process.as_mut().is_some_and(NsProcess::running) {
                return Err(format!("apache2 ({}) exited while starting:\n{}", self.label, self.error_log()));
            }
            if self.get(ns, "/lb-status").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "apache2 ({}) did not answer within 30 s:\n{}",
                    self.label,
                    self.error_log()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops apache2 (SIGTERM: the parent stops its children and exits) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// A request to 127.0.0.1 in its namespace, which `Require local` lets through.
    pub fn get(&self, ns: &Netns, path: &str) -> Result<Response, String> {
        debug_assert_eq!(ns.name(), self.ns);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let path = path.to_string();
        ns.run(move || client::get(addr, &path))?.map_err(|e| e.to_string())
    }

    /// The status page's JSON.
    pub fn status(&self, ns: &Netns) -> Result<serde_json::Value, String> {
        let response = self.get(ns, "/lb-status?format=json")?;
        if response.status != 200 {
            return Err(format!("status page answered {}", response.status));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("status page JSON: {e}"))
    }

    pub fn error_log(&self) -> String {
        let mut log = fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        log.push_str(&fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default());
        log
    }
}

impl Drop for NsApache {
    fn drop(&mut self) {
        print_if_failing(&format!("apache2 error log ({})", self.label), &self.error_log());
        self.stop();
    }
}

/// keepalived in a namespace (VRRP only), logging to a file of its scratch directory.
pub struct Keepalived {
    process: NsProcess,
    label: String,
    _dir: ScratchDir,
}

impl Keepalived {
    /// Checks `config` with `keepalived -t` in `ns`. keepalived 2.2 prints nothing for a good
    /// file (and exits with SIGTERM whatever it found), so any output is a complaint.
    pub fn check(ns: &Netns, config: &str) -> Result<(), String> {
        let dir = ScratchDir::new()?;
        let path = dir.path().join("keepalived.conf");
        fs::write(&path, config).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let output = netns::run(
            ns.command(&program("keepalived")?).arg("-t").arg("-f").arg(&path),
            Duration::from_secs(20),
        )?;
        let said =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if said.trim().is_empty() { Ok(()) } else { Err(format!("keepalived -t:\n{said}")) }
    }

    /// Starts keepalived in `ns` with `config`, in the foreground, logging to its console.
    pub fn start(ns: &Netns, label: &str, config: &str) -> Result<Keepalived, String> {
        let dir = ScratchDir::new()?;
        let conf = dir.path().join("keepalived.conf");
        fs::write(&conf, config).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let file = |name: &str| dir.path().join(name).display().to_string();
        let args = vec![
            "--dont-fork".to_string(),
            "--log-console".to_string(),
            "--log-detail".to_string(),
            "--no-syslog".to_string(),
            "--vrrp".to_string(),
            format!("--use-file={}", conf.display()),
            format!("--pid={}", file("keepalived.pid")),
            format!("--vrrp_pid={}", file("vrrp.pid")),
        ];
        let process =
            NsProcess::start(ns, &program("keepalived")?, &args, &dir.path().join("keepalived.log"))?;
        Ok(Keepalived { process, label: label.to_string(), _dir: dir })
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// How many log lines contain `text` (e.g. `Entering BACKUP STATE`).
    pub fn count(&self, text: &str) -> usize {
        self.log().lines().filter(|line| line.contains(text)).count()
    }

    /// Kills keepalived with SIGKILL: it gives nothing up (its addresses stay).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops keepalived (SIGTERM: it gives up its addresses first) and reaps it.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        print_if_failing(&format!("keepalived log ({})", self.label), &self.log());
        self.process.stop();
    }
}

/// dnsmasq in a namespace as an authoritative-looking server for a few names: its own
/// configuration only (not /etc/dnsmasq.conf, /etc/hosts nor any upstream), bound to one
/// address, with its pid and lease files in a scratch directory.
pub struct Dnsmasq {
    process: NsProcess,
    _dir: ScratchDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on `listen`:53 serving `records` (name, address, TTL) and waits, at most
    /// 10 s, until it says it started.
    pub fn start(
        ns: &Netns,
        listen: Ipv4Addr,
        records: &[(String, Ipv4Addr, u32)],
    ) -> Result<Dnsmasq, String> {
        let dir = ScratchDir::new()?;
        let file = |name: &str| dir.path().join(name).display().to_string();
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".to_string(),
            "--no-resolv".to_string(),
            "--no-hosts".to_string(),
            "--bind-interfaces".to_string(),
            format!("--listen-address={listen}"),
            "--port=53".to_string(),
            format!("--pid-file={}", file("dnsmasq.pid")),
            format!("--dhcp-leasefile={}", file("dnsmasq.leases")),
            "--log-facility=-".to_string(),
            "--log-queries".to_string(),
        ];
        for (name, address, ttl) in records {
            args.push(format!("--host-record={name},{address},{ttl}"));
        }
        let process = NsProcess::start(ns, &program("dnsmasq")?, &args, &dir.path().join("dnsmasq.log"))?;
        let mut dnsmasq = Dnsmasq { process, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dnsmasq.log().contains("started, version") {
            if !dnsmasq.process.running() || Instant::now() >= deadline {
                return Err(format!("dnsmasq did not start:\n{}", dnsmasq.log()));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(dnsmasq)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        print_if_failing("dnsmasq log", &self.log());
        self.process.stop();
    }
}

/// Where `program` is installed: the first executable of that name on `PATH`, or in
/// `/usr/sbin` or `/sbin` (where Debian puts keepalived and dnsmasq, and which a non-login
/// `PATH` may lack).
pub fn installed(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|file| fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The path of `name`, or why it cannot run.
fn program(name: &str) -> Result<String, String> {
    installed(name)
        .map(|path| path.display().to_string())
        .ok_or_else(|| format!("{name} is not installed: scripts/setup.sh --tests installs it"))
}
