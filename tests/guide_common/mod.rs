//! What the guide's tests (tests/guide_*.rs) share: requests with headers, the backend that
//! answered, and temporary directories removed by their guard.

#![allow(dead_code)]

use lbrs_harness::client::{self, Response};
use lbrs_harness::{Apache, ApacheConfig};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A GET with extra headers (a `Host` among them replaces the default) on a fresh connection.
pub fn get(apache: &Apache, path: &str, headers: &[(&str, &str)]) -> Response {
    client::request(apache.addr(), "GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path} {headers:?}: {e}"))
}

/// A response for assertion messages: status, headers and body as text.
pub fn show(response: &Response) -> String {
    format!("{} {:?}\n{}", response.status, response.headers, response.text())
}

/// The `X-Backend` of a response, or "" when no backend answered.
pub fn backend(response: &Response) -> String {
    response.header("x-backend").unwrap_or_default().to_string()
}

/// The request headers a backend received, from its `/__headers` answer: (name, value) lines
/// after the backend's name and the request line.
pub fn seen_header(response: &Response, name: &str) -> Option<String> {
    response
        .text()
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// The request line a backend received, from its `/__headers` answer.
pub fn seen_request_line(response: &Response) -> String {
    response.text().lines().nth(1).unwrap_or_default().to_string()
}

/// Starts apache2 with `body` and the named extra modules.
pub fn start(body: &str, modules: &[&str]) -> Apache {
    let mut config = ApacheConfig::new(body);
    for module in modules {
        config = config.with_module(module);
    }
    Apache::start(config)
        .unwrap_or_else(|e| panic!("apache2 did not start:\n{e}\n--- config body ---\n{body}"))
}

/// A temporary directory, readable by apache2's children, removed with everything in it when
/// the guard is dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lbrs-guide-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create a temporary directory");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod the temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as a string, with a trailing slash.
    pub fn slash(&self) -> String {
        format!("{}/", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
