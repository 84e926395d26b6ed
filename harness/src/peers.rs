//! HAProxy and nginx as reference balancers for benchmarks. Each runs from a configuration
//! generated into a temporary directory, listening on a free loopback port, in the foreground
//! as a child of this process and in its own process group. Dropping the guard stops it (and
//! every worker it forked) and reaps it. Neither is required: [`haproxy_binary`] and
//! [`nginx_binary`] say whether one is installed, so callers can skip it.

use crate::apache::{free_port, scratch_dir, stop_group};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The haproxy binary: `$LBRS_HAPROXY`, else `haproxy` on the PATH or in /usr/sbin; `None`
/// when there is none.
pub fn haproxy_binary() -> Option<PathBuf> {
    find_binary("LBRS_HAPROXY", "haproxy")
}

/// The nginx binary: `$LBRS_NGINX`, else `nginx` on the PATH or in /usr/sbin; `None` when there
/// is none.
pub fn nginx_binary() -> Option<PathBuf> {
    find_binary("LBRS_NGINX", "nginx")
}

fn find_binary(variable: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The first line `binary flag` prints on stdout or stderr (`haproxy -v`, `nginx -v`), for
/// reports.
pub fn version_line(binary: &Path, flag: &str) -> Option<String> {
    let output = Command::new(binary).arg(flag).output().ok()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    text.lines().next().map(|line| line.trim().to_string())
}

/// An HAProxy proxying every request to one backend section.
#[derive(Clone, Debug)]
pub struct HaproxyConfig {
    /// The `balance` algorithm, e.g. `leastconn` or `roundrobin`.
    pub balance: String,
    /// `nbthread`: threads of the one process.
    pub threads: u32,
    /// The servers, each with its `weight`.
    pub servers: Vec<(SocketAddr, u32)>,
    /// More lines for the backend section, e.g. `hash-type consistent`.
    pub backend_lines: Vec<String>,
    /// Options appended to every `server` line, e.g. `check inter 2s`; empty for none.
    pub server_options: String,
}

impl HaproxyConfig {
    pub fn new(balance: &str, servers: &[SocketAddr]) -> HaproxyConfig {
        HaproxyConfig {
            balance: balance.to_string(),
            threads: 2,
            servers: servers.iter().map(|&s| (s, 1)).collect(),
            backend_lines: Vec::new(),
            server_options: String::new(),
        }
    }

    pub fn backend_line(mut self, line: &str) -> HaproxyConfig {
        self.backend_lines.push(line.to_string());
        self
    }

    pub fn threads(mut self, threads: u32) -> HaproxyConfig {
        self.threads = threads;
        self
    }

    /// Appends `options` to every `server` line (health checks, observing, ...).
    pub fn server_options(mut self, options: &str) -> HaproxyConfig {
        self.server_options = options.to_string();
        self
    }

    /// The whole haproxy.cfg for an instance listening on `port`. No server limit (`maxconn`)
    /// and no health checks unless `server_options` adds them: requests are never queued in
    /// HAProxy, only at the servers.
    pub fn render(&self, port: u16) -> String {
        let mut conf = format!(
            "global\n    nbthread {}\n    maxconn 4096\n\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    \
             timeout server 60s\n    timeout http-keep-alive 60s\n\n\
             frontend bench\n    bind 127.0.0.1:{port}\n    default_backend app\n\n\
             backend app\n    balance {}\n",
            self.threads.max(1),
            self.balance,
        );
        for line in &self.backend_lines {
            conf.push_str(&format!("    {line}\n"));
        }
        for (i, (addr, weight)) in self.servers.iter().enumerate() {
            conf.push_str(&format!("    server s{i} {addr} weight {weight}"));
            if !self.server_options.is_empty() {
                conf.push_str(&format!(" {}", self.server_options));
            }
            conf.push('\n');
        }
        conf
    }
}

/// An nginx proxying every request to one upstream, over kept-alive upstream connections.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    /// The upstream's balancing directive, e.g. `least_conn`; empty for round robin.
    pub method: String,
    pub worker_processes: u32,
    /// Whether the upstream has a shared memory `zone`, so that its state (connection counts,
    /// round-robin position) is shared by the worker processes instead of kept per worker.
    pub zone: bool,
    /// The servers, each with its `weight`.
    pub servers: Vec<(SocketAddr, u32)>,
    /// Parameters appended to every `server` line, e.g. `max_fails=1 fail_timeout=2s`; empty
    /// for none.
    pub server_params: String,
    /// More directives for the proxied `location`, e.g. `proxy_next_upstream error http_500`.
    pub location_lines: Vec<String>,
}

impl NginxConfig {
    pub fn new(method: &str, servers: &[SocketAddr]) -> NginxConfig {
        NginxConfig {
            method: method.to_string(),
            worker_processes: 2,
            zone: true,
            servers: servers.iter().map(|&s| (s, 1)).collect(),
            server_params: String::new(),
            location_lines: Vec::new(),
        }
    }

    /// Adds a directive to the proxied `location` (without its `;`).
    pub fn location_line(mut self, line: &str) -> NginxConfig {
        self.location_lines.push(line.to_string());
        self
    }

    pub fn worker_processes(mut self, workers: u32) -> NginxConfig {
        self.worker_processes = workers;
        self
    }

    pub fn zone(mut self, zone: bool) -> NginxConfig {
        self.zone = zone;
        self
    }

    /// Appends `params` to every `server` line (`max_fails`, `fail_timeout`, ...).
    pub fn server_params(mut self, params: &str) -> NginxConfig {
        self.server_params = params.to_string();
        self
    }

    /// The whole nginx.conf for an instance rooted at `dir` listening on `port`. Client and
    /// upstream connections are kept alive without a request limit, as a benchmark's clients
    /// expect; access logging is off.
    pub fn render(&self, dir: &Path, port: u16) -> String {
        let mut upstream = String::from("    upstream app {\n");
        if self.zone {
            upstream.push_str("        zone app 256k;\n");
        }
        if !self.method.is_empty() {
            // The method must come before `keepalive`, which wraps it.
            upstream.push_str(&format!("        {};\n", self.method));
        }
        for (addr, weight) in &self.servers {
            let params = if self.server_params.is_empty() {
                String::new()
            } else {
                format!(" {}", self.server_params)
            };
            upstream.push_str(&format!("        server {addr} weight={weight}{params};\n"));
        }
        upstream.push_str("        keepalive 64;\n        keepalive_requests 1000000;\n    }\n");
        let location: String = self.location_lines.iter().map(|l| format!("            {l};\n")).collect();
        format!(
            "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\n\
             events {{\n    worker_connections 4096;\n}}\n\
             http {{\n    access_log off;\n    default_type text/plain;\n    \
             keepalive_requests 1000000;\n    keepalive_timeout 60s;\n{upstream}    \
             server {{\n        listen 127.0.0.1:{port};\n        location / {{\n            \
             proxy_pass http://app;\n            proxy_http_version 1.1;\n            \
             proxy_set_header Connection \"\";\n{location}        }}\n    }}\n}}\n",
            workers = self.worker_processes.max(1),
            dir = dir.display(),
        )
    }
}

/// A running HAProxy or nginx.
pub struct PeerProxy {
    name: &'static str,
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl PeerProxy {
    /// Starts HAProxy (`haproxy -db -f haproxy.cfg`) and waits until its port accepts.
    pub fn haproxy(binary: &Path, config: &HaproxyConfig) -> Result<PeerProxy, String> {
        let (dir, port) = prepare()?;
        let conf = dir.join("haproxy.cfg");
        fs::write(&conf, config.render(port)).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let mut command = Command::new(binary);
        command.arg("-db").arg("-f").arg(&conf);
        Self::spawn("haproxy", command, dir, port)
    }

    /// Starts HAProxy from a whole configuration, `render(port)`, which must bind
    /// `127.0.0.1:port` (a free port chosen here), and waits until that port accepts.
    pub fn haproxy_from(binary: &Path, render: impl FnOnce(u16) -> String) -> Result<PeerProxy, String> {
        let (dir, port) = prepare()?;
        let conf = dir.join("haproxy.cfg");
        fs::write(&conf, render(port)).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let mut command = Command::new(binary);
        command.arg("-db").arg("-f").arg(&conf);
        Self::spawn("haproxy", command, dir, port)
    }

    /// Starts nginx (master and workers, `daemon off`) and waits until its port accepts.
    pub fn nginx(binary: &Path, config: &NginxConfig) -> Result<PeerProxy, String> {
        let (dir, port) = prepare()?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config.render(&dir, port))
            .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let mut command = Command::new(binary);
        // -e: the error log before the configuration is read (not /var/log/nginx).
        command.arg("-p").arg(&dir).arg("-c").arg(&conf).arg("-e").arg(dir.join("error.log"));
        Self::spawn("nginx", command, dir, port)
    }

    fn spawn(name: &'static str, mut command: Command, dir: PathBuf, port: u16) -> Result<PeerProxy, String> {
        let stderr = fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {name}: {e}"));
        let child = match child {
            Ok(child) => child,
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        let mut proxy = PeerProxy { name, child: Some(child), dir, port };
        proxy.wait_ready(Duration::from_secs(10))?;
        Ok(proxy)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What it wrote to its error log and stderr.
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        log.push_str(&fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default());
        log
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("{} exited ({status}) while starting:\n{}", self.name, self.log()));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{} did not listen within {within:?}:\n{}", self.name, self.log()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it and every worker it forked, and reaps it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_group(child);
        }
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("----- {} log ({}) -----\n{}", self.name, self.dir.display(), self.log());
        }
        self.stop();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh directory (world-readable, for nginx's unprivileged workers) and a free port.
fn prepare() -> Result<(PathBuf, u16), String> {
    let dir = scratch_dir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    Ok((dir, port))
}
