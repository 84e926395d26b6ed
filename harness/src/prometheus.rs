//! Debian's real Prometheus server and promtool. [`Prometheus::start`] runs the server on a free
//! loopback port with its own configuration and storage in a fresh temporary directory;
//! dropping the guard kills it (its whole process group) and removes the directory, also when
//! the test fails.

use crate::apache::{free_port, scratch_dir, stop_group};
use crate::client;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The Prometheus server binary: `$LBRS_PROMETHEUS`, else Debian's.
pub fn prometheus_binary() -> PathBuf {
    std::env::var_os("LBRS_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// Runs `promtool` with `args`, `input` on its standard input; returns whether it exited 0 and
/// what it printed (standard output, then standard error).
pub fn promtool(args: &[&str], input: &[u8]) -> Result<(bool, String), String> {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool (Debian package prometheus): {e}"))?;
    // promtool reads all of its input before it answers; a closed pipe (it did not read) is
    // its business, reported by its exit status.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

/// One scrape job: every second, `path?query` on `target`.
pub struct ScrapeJob {
    pub name: String,
    pub target: SocketAddr,
    pub path: String,
    /// Query parameters, as (name, value).
    pub params: Vec<(String, String)>,
}

/// A running Prometheus server.
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second (`rule_files` are loaded too), and waits
    /// (at most 30 s) until it is ready.
    pub fn start(jobs: &[ScrapeJob], rule_files: &[&Path]) -> Result<Prometheus, String> {
        let dir = scratch_dir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n");
        config.push_str("  evaluation_interval: 1s\n");
        if !rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for file in rule_files {
                config.push_str(&format!("  - '{}'\n", file.display()));
            }
        }
        config.push_str("scrape_configs:\n");
        for job in jobs {
            config.push_str(&format!(
                "  - job_name: '{}'\n    metrics_path: '{}'\n    static_configs:\n      - targets: ['{}']\n",
                job.name, job.path, job.target
            ));
            if !job.params.is_empty() {
                config.push_str("    params:\n");
                for (name, value) in &job.params {
                    config.push_str(&format!("      {name}: ['{value}']\n"));
                }
            }
        }
        let config_path = dir.join("prometheus.yml");
        let mut prometheus = Prometheus { child: None, dir, port };
        fs::write(&config_path, config).map_err(|e| format!("cannot write the configuration: {e}"))?;
        let log = fs::File::create(prometheus.dir.join("prometheus.log")).map_err(|e| e.to_string())?;
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", prometheus.dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(&prometheus.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                format!("cannot run {} (Debian package prometheus): {e}", prometheus_binary().display())
            })?;
        prometheus.child = Some(child);
        prometheus.wait_ready(Duration::from_secs(30))?;
        Ok(prometheus)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("prometheus exited ({status}) while starting:\n{}", self.log()));
            }
            if client::get(self.addr(), "/-/ready").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("prometheus was not ready within {within:?}:\n{}", self.log()));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query through the HTTP API (`/api/v1/query`): the result vector, as
    /// (labels, value) pairs.
    pub fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let response = client::get(self.addr(), &path).map_err(|e| format!("query {promql}: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_slice(&response.body).map_err(|e| format!("query {promql}: {e}"))?;
        if json["status"] != "success" {
            return Err(format!("query {promql}: {json}"));
        }
        let result = json["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .into_iter()
            .map(|sample| {
                let value = sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (sample["metric"].clone(), value)
            })
            .collect())
    }

    /// The loaded alerting and recording rules (`/api/v1/rules`).
    pub fn rules(&self) -> Result<serde_json::Value, String> {
        let response = client::get(self.addr(), "/api/v1/rules").map_err(|e| e.to_string())?;
        serde_json::from_slice(&response.body).map_err(|e| e.to_string())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("----- prometheus log ({}) -----\n{}", self.dir.display(), self.log());
        }
        if let Some(child) = self.child.take() {
            stop_group(child);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
