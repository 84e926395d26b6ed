//! A real DNS server for tests: Debian's dnsmasq (package dnsmasq-base), its own instance on
//! 127.0.0.1 and a free port, answering from a hosts file the test rewrites (read again on
//! SIGHUP) and from SRV records given at start (changed by a restart on the same port). Its
//! guard stops it and removes its files.

use crate::apache::ScratchDir;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An SRV record: `_service._proto.name` -> target host, port, priority, weight.
#[derive(Clone, Debug)]
pub struct Srv {
    pub name: String,
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Option<Child>,
    dir: ScratchDir,
    port: u16,
    ttl: u32,
    srv: Vec<Srv>,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `hosts` (name, address) with TTL `ttl` seconds, and `srv`.
    pub fn start(hosts: &[(&str, &str)], srv: &[Srv], ttl: u32) -> Result<Dnsmasq, String> {
        let dir = ScratchDir::new().map_err(|e| e.to_string())?;
        let port = free_udp_port()?;
        let mut dns = Dnsmasq { child: None, dir, port, ttl, srv: srv.to_vec() };
        dns.write_hosts(hosts)?;
        dns.spawn()?;
        Ok(dns)
    }

    /// Where it answers.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn hosts_path(&self) -> std::path::PathBuf {
        self.dir.path().join("hosts")
    }

    fn write_hosts(&self, hosts: &[(&str, &str)]) -> Result<(), String> {
        let text: String = hosts.iter().map(|(name, address)| format!("{address} {name}\n")).collect();
        // Written whole, then renamed: dnsmasq never reads half a file.
        let temporary = self.dir.path().join("hosts.new");
        fs::write(&temporary, text).map_err(|e| e.to_string())?;
        fs::rename(&temporary, self.hosts_path()).map_err(|e| e.to_string())
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("dnsmasq");
        command
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll"])
            .args(["--bind-interfaces", "--listen-address=127.0.0.1", "--pid-file=", "--user=root"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--local-ttl={}", self.ttl))
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .arg(format!("--log-facility={}", self.dir.path().join("dnsmasq.log").display()));
        for srv in &self.srv {
            command.arg(format!(
                "--srv-host={},{},{},{},{}",
                srv.name, srv.target, srv.port, srv.priority, srv.weight
            ));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run dnsmasq (apt-get install dnsmasq-base): {e}"))?;
        self.child = Some(child);
        // Ready when it answers a query.
        let ready = crate::wait_for(Duration::from_secs(10), || self.answers());
        if ready { Ok(()) } else { Err("dnsmasq did not start answering".into()) }
    }

    /// Whether it answers a query now (any answer).
    fn answers(&self) -> bool {
        let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else { return false };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        let query = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x04test\x00\x00\x01\x00\x01";
        socket.send_to(query, self.addr()).is_ok() && socket.recv(&mut [0u8; 512]).is_ok()
    }

    /// Replaces the hosts file and tells dnsmasq to read it again.
    pub fn set_hosts(&self, hosts: &[(&str, &str)]) -> Result<(), String> {
        self.write_hosts(hosts)?;
        let pid = self.child.as_ref().ok_or("dnsmasq is stopped")?.id();
        let status =
            Command::new("kill").args(["-HUP", &pid.to_string()]).status().map_err(|e| e.to_string())?;
        if status.success() { Ok(()) } else { Err("cannot signal dnsmasq".into()) }
    }

    /// Stops it: the port stops answering.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with these SRV records.
    pub fn restart_with(&mut self, srv: &[Srv]) -> Result<(), String> {
        self.stop();
        self.srv = srv.to_vec();
        self.spawn()
    }

    /// Starts it again on the same port.
    pub fn start_again(&mut self) -> Result<(), String> {
        let srv = self.srv.clone();
        self.restart_with(&srv)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_udp_port() -> Result<u16, String> {
    // A port free for both UDP and TCP (dnsmasq listens on both).
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port for dnsmasq".into())
}
