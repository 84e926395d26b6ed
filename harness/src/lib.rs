//! Test and benchmark harness for mod_lbmethod_rs: the real Debian `apache2` with the real
//! module, real HTTP backends on loopback, a bounded load generator, and HAProxy and nginx to
//! compare with when they are installed. Every server started here is stopped by its guard's
//! `Drop`, also when a test fails.

pub mod apache;
pub mod backend;
pub mod chromium;
pub mod client;
pub mod debian_box;
pub mod dns;
pub mod ha;
pub mod netns;
pub mod os;
pub mod peers;
pub mod prometheus;
pub mod recipe;
pub mod system;

pub use apache::{Apache, ApacheConfig, LoadOrder, Mpm, balancer_manager_set, config_test};
pub use backend::{Backend, BackendSpec, BackendStats};
pub use client::{Load, LoadReport, Response};
pub use peers::{HaproxyConfig, NginxConfig, PeerProxy};
pub use recipe::Recipe;

use std::time::{Duration, Instant};

/// Waits until `condition` holds, checking every 20 ms, for at most `within`.
pub fn wait_for(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts an application-server-like backend: `slots` requests served at once (0: no limit),
/// each taking `millis`; more wait in its queue.
pub fn app_server(name: &str, slots: usize, millis: u64) -> Backend {
    Backend::start(BackendSpec::new(name).slots(slots).delay(Duration::from_millis(millis)))
        .expect("start backend")
}

/// The slow-member pool of the method comparisons: `fast1` to `fast3` serve a request in 4 ms,
/// `slow` in 40 ms, each 4 at a time.
pub fn one_slow_of_four() -> [Backend; 4] {
    [
        app_server("fast1", 4, 4),
        app_server("fast2", 4, 4),
        app_server("fast3", 4, 4),
        app_server("slow", 4, 40),
    ]
}

/// A duration in milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts one backend per name (no slot limit, no delay).
pub fn backends(names: &[&str]) -> Vec<Backend> {
    names.iter().map(|name| Backend::start(BackendSpec::new(name)).expect("start backend")).collect()
}

/// A `<Proxy balancer://name>` block with one member per (backend, parameters) pair, the
/// `ProxySet` line given, and `ProxyPass /path balancer://name/`.
pub fn balancer_block(name: &str, path: &str, members: &[(&Backend, &str)], proxyset: &str) -> String {
    let mut block = format!("<Proxy \"balancer://{name}\">\n");
    for (backend, params) in members {
        block.push_str(&format!("    BalancerMember \"{}\" {params}\n", backend.url()));
    }
    block.push_str(&format!(
        "    ProxySet {proxyset}\n</Proxy>\nProxyPass \"{path}\" \"balancer://{name}/\"\n"
    ));
    block
}
