//! What the guide's tests (tests/guide_*.rs) share: requests with headers, the backend that
//! answered, and the nftables check.

#![allow(dead_code)]

use lbrs_harness::client::{self, Response};
use lbrs_harness::{Apache, ApacheConfig};
use std::fs;

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

/// `nft -c -f` on a block of nftables rules: parsed and checked, never loaded. `None` when
/// nft cannot run here (not installed, or not root), with the reason printed.
pub fn nft_check(block: &str) -> Option<Result<(), String>> {
    let usable =
        std::process::Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success())
            && lbrs_harness::system::is_root();
    if !usable {
        eprintln!(
            "skipped: nft -c needs the nftables package and root (scripts/setup.sh --tests installs it)"
        );
        return None;
    }
    let dir = lbrs_harness::apache::ScratchDir::new().expect("a scratch directory");
    let file = dir.path().join("rules.nft");
    fs::write(&file, block).expect("write the rules");
    let output = std::process::Command::new("nft").arg("-c").arg("-f").arg(&file).output();
    Some(match output {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => Err(e.to_string()),
    })
}
