//! What the scenarios share: the command-line options, Ctrl-C handling, the warm-up and
//! measured loads, and the servers under test (apache2 with one of its methods, HAProxy, nginx)
//! with the backends behind them.

use lbrs_harness::os;
use lbrs_harness::peers::{haproxy_binary, nginx_binary, version_line};
use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, HaproxyConfig, Load, LoadReport, Mpm, NginxConfig, PeerProxy,
    balancer_block, wait_for,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Rounds of every contender, in turn, when a scenario runs more than one by default.
pub const ROUNDS: usize = 2;
/// A measured load stops at `--requests` or after this long, whichever comes first.
pub const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// Requests per client before each measured load: every child process started and every
/// connection to the backends open.
pub const WARM_UP_PER_CLIENT: u64 = 50;

/// What the command line asked for; `None` means the scenario's own default.
pub struct Options {
    pub scenarios: Vec<crate::Scenario>,
    pub requests: Option<u64>,
    pub concurrency: Option<usize>,
    pub rounds: Option<usize>,
    pub mpms: Vec<Mpm>,
}

impl Options {
    pub fn requests(&self, default: u64) -> u64 {
        self.requests.unwrap_or(default)
    }

    pub fn concurrency(&self, default: usize) -> usize {
        self.concurrency.unwrap_or(default)
    }

    pub fn rounds(&self, default: usize) -> usize {
        self.rounds.unwrap_or(default)
    }
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C
// ---------------------------------------------------------------------------------------------

/// The process group of the server running now (0: none), for the interrupt handler.
static RUNNING_SERVER: AtomicI32 = AtomicI32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// apache2, haproxy and nginx run in their own process groups, so a Ctrl-C at the terminal does
/// not reach them. On the first SIGINT this stops the running server (the load then fails fast
/// and `main` unwinds through the guards, which reap it and stop the backends); a second
/// SIGINT kills at once.
extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let group = RUNNING_SERVER.load(Ordering::SeqCst);
    if group > 0 {
        os::signal_group(group, libc::SIGTERM);
    }
}

pub fn install_interrupt_handler() {
    // SAFETY: a zeroed sigaction with a handler that only touches atomics and calls killpg.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

pub fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) { Err("interrupted".into()) } else { Ok(()) }
}

/// Sleeps until `deadline`, waking early on Ctrl-C (the caller then finds the load failed).
pub fn sleep_until(deadline: Instant) {
    while check_interrupted().is_ok() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

// ---------------------------------------------------------------------------------------------
// Loads
// ---------------------------------------------------------------------------------------------

/// The uncounted load before each measured one: every child process started and every
/// connection to the backends open.
pub fn warm_up_load(concurrency: usize) -> Load {
    Load::new("/", concurrency, WARM_UP_PER_CLIENT * concurrency as u64).deadline(Duration::from_secs(10))
}

pub fn measured_load(concurrency: usize, requests: u64) -> Load {
    Load::new("/", concurrency, requests).deadline(RUN_DEADLINE)
}

/// Runs `load` against the server at `addr` whose process group is `pid`, which the interrupt
/// handler stops meanwhile on Ctrl-C.
pub fn run_load(load: &Load, addr: SocketAddr, pid: Option<u32>) -> Result<LoadReport, String> {
    check_interrupted()?;
    RUNNING_SERVER.store(pid.map_or(0, |p| p as i32), Ordering::SeqCst);
    let report = load.run(addr);
    RUNNING_SERVER.store(0, Ordering::SeqCst);
    check_interrupted()?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Backends and servers
// ---------------------------------------------------------------------------------------------

/// One application-server-like backend per name: `slots` requests served at once, each taking
/// `delay`; more wait in its queue.
pub fn start_backends(names: &[&str], slots: usize, delay: Duration) -> Result<Vec<Backend>, String> {
    names
        .iter()
        .map(|&name| {
            Backend::start(BackendSpec::new(name).slots(slots).delay(delay))
                .map_err(|e| format!("cannot start backend {name}: {e}"))
        })
        .collect()
}

/// Waits until no backend holds a request: requests still queued from the previous run would
/// slow the next one.
pub fn wait_backends_idle(backends: &[Backend]) -> Result<(), String> {
    if wait_for(Duration::from_secs(10), || backends.iter().all(|b| b.stats().inflight == 0)) {
        Ok(())
    } else {
        Err("the backends still have requests in flight from the previous run".into())
    }
}

/// A server under load; dropping it stops it.
pub enum Server {
    Apache(Apache),
    Peer(PeerProxy),
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Server::Apache(apache) => apache.addr(),
            Server::Peer(peer) => peer.addr(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Server::Apache(apache) => apache.pid(),
            Server::Peer(peer) => peer.pid(),
        }
    }
}

/// The binaries of the proxies to compare with; `None` when not installed.
pub struct Peers {
    pub haproxy: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
}

impl Peers {
    pub fn find() -> Peers {
        Peers { haproxy: haproxy_binary(), nginx: nginx_binary() }
    }
}

/// What balances a load of the least-loaded family (`slow`, `recover`, `down`, `steady`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// apache2 (event MPM) with `ProxySet lbmethod=<method>`.
    Apache(&'static str),
    /// HAProxy, one process of 2 threads, `balance leastconn`.
    HaproxyLeastconn,
    /// nginx, 2 worker processes, `least_conn` with a shared `zone`.
    NginxLeastConn,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Apache(method) => method,
            Contender::HaproxyLeastconn => "haproxy leastconn",
            Contender::NginxLeastConn => "nginx least_conn",
        }
    }
}

pub const BYINFLIGHT: Contender = Contender::Apache("byinflight");
pub const BYLATENCY: Contender = Contender::Apache("bylatency");
pub const BYREQUESTS: Contender = Contender::Apache("byrequests");

/// `apache` followed by HAProxy leastconn and nginx least_conn when they are installed, saying
/// on stderr which binaries run (or why one is left out), each line starting with `scenario`.
pub fn with_peers(scenario: &str, apache: &[Contender], peers: &Peers) -> Vec<Contender> {
    let mut contenders = apache.to_vec();
    match &peers.haproxy {
        Some(binary) => {
            let version = version_line(binary, "-v").unwrap_or_default();
            eprintln!("{scenario}: {} ({version})", binary.display());
            contenders.push(Contender::HaproxyLeastconn);
        }
        None => eprintln!(
            "{scenario}: haproxy not installed (apt-get install haproxy): skipping haproxy leastconn"
        ),
    }
    match &peers.nginx {
        Some(binary) => {
            let version = version_line(binary, "-v").unwrap_or_default();
            eprintln!("{scenario}: {} ({version})", binary.display());
            contenders.push(Contender::NginxLeastConn);
        }
        None => {
            eprintln!("{scenario}: nginx not installed (apt-get install nginx): skipping nginx least_conn")
        }
    }
    contenders
}

/// `measure` for every contender, `rounds` times over, saying on stderr which run is under way
/// and, from `progress`, how many requests it sent in how many seconds.
pub fn each_round<R>(
    scenario: &str,
    rounds: usize,
    contenders: &[Contender],
    mut measure: impl FnMut(Contender, usize) -> Result<R, String>,
    progress: impl Fn(&R) -> (u64, f64),
) -> Result<Vec<R>, String> {
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for &contender in contenders {
            eprint!("{scenario} {} round {round} ... ", contender.label());
            let run = measure(contender, round)?;
            let (requests, seconds) = progress(&run);
            eprintln!("{requests} requests in {seconds:.1} s");
            runs.push(run);
        }
    }
    Ok(runs)
}

/// The requests a load sent and the seconds it took, for [`each_round`]'s progress line.
pub fn progress_of(report: &LoadReport) -> (u64, f64) {
    (report.outcomes.len() as u64, report.elapsed.as_secs_f64())
}

/// How each server treats a member that fails, beyond its defaults. The default value adds
/// nothing: what `slow`, `recover` and `steady` run.
#[derive(Clone, Copy, Debug, Default)]
pub struct FailureSettings {
    /// Parameters of every `BalancerMember` line, e.g. `retry=2`.
    pub apache_member: &'static str,
    /// Options of every HAProxy `server` line, e.g. `check inter 2s`.
    pub haproxy_server: &'static str,
    /// More lines for HAProxy's backend section, e.g. `option redispatch 1`.
    pub haproxy_backend: &'static [&'static str],
    /// Parameters of every nginx `server` line, e.g. `max_fails=1 fail_timeout=2s`.
    pub nginx_server: &'static str,
}

pub fn start_server(contender: Contender, backends: &[Backend], peers: &Peers) -> Result<Server, String> {
    start_server_with(contender, backends, peers, &FailureSettings::default())
}

pub fn start_server_with(
    contender: Contender,
    backends: &[Backend],
    peers: &Peers,
    failures: &FailureSettings,
) -> Result<Server, String> {
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    match contender {
        Contender::Apache(method) => {
            let members: Vec<(&Backend, &str)> =
                backends.iter().map(|b| (b, failures.apache_member)).collect();
            // No limit on requests per client connection, as HAProxy and nginx are configured.
            let body = format!(
                "MaxKeepAliveRequests 0\n{}",
                balancer_block("app", "/", &members, &format!("lbmethod={method}"))
            );
            Ok(Server::Apache(Apache::start(ApacheConfig::new(&body).mpm(Mpm::Event))?))
        }
        Contender::HaproxyLeastconn => {
            let binary = peers.haproxy.as_deref().ok_or("haproxy is not installed")?;
            let mut config =
                HaproxyConfig::new("leastconn", &addrs).threads(2).server_options(failures.haproxy_server);
            for line in failures.haproxy_backend {
                config = config.backend_line(line);
            }
            Ok(Server::Peer(PeerProxy::haproxy(binary, &config)?))
        }
        Contender::NginxLeastConn => {
            let binary = peers.nginx.as_deref().ok_or("nginx is not installed")?;
            let config = NginxConfig::new("least_conn", &addrs)
                .worker_processes(2)
                .zone(true)
                .server_params(failures.nginx_server);
            Ok(Server::Peer(PeerProxy::nginx(binary, &config)?))
        }
    }
}
