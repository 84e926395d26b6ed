//! Several hosts on one machine, for tests of what spans hosts (a keepalived pair, DNS): network
//! namespaces the test creates, wired to one bridge, with programs and threads running inside.
//!
//! Nothing here touches the root namespace. The bridge lives in a namespace of its own (the
//! "lan"), and each host's veth pair is created inside the lan namespace with its other end
//! moved straight into the host's namespace, so no link, address or route ever appears in the
//! root namespace. Addresses must come from 198.18.0.0/15 (RFC 2544's range for test networks)
//! and exist only inside these namespaces; nothing is routed out of them.
//!
//! Names are `lbrs-ns-<pid>-<tag>-<host>`: unique per test process (the tag tells apart the
//! networks of tests running at once in one process), and a later run recognises those a dead
//! process left behind ([`clean_stale`]).
//!
//! Every guard cleans up in `Drop`, also when a test fails: [`Netns`] kills what still runs in
//! its namespace and deletes it, [`NsProcess`] stops its process group, [`NsResolver`] removes
//! `/etc/netns/NAME`, [`NsBackends`] stops its backends on their own thread, [`ScratchDir`]
//! removes its files.
//!
//! A thread joins a namespace with `setns(2)`, which moves only the calling thread. A socket
//! belongs to the namespace its creating thread was in, for its whole life, whichever thread
//! uses it later. So code that opens sockets in a namespace runs on a thread of its own
//! ([`Netns::run`], [`Netns::spawn`]) and the rest of the test stays in the root namespace.

use crate::apache::stop_group;
use crate::backend::{Backend, BackendSpec};
use crate::os;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The start of every namespace name made here.
pub const PREFIX: &str = "lbrs-ns-";

/// Where `ip netns` keeps its namespaces, and where it finds per-namespace /etc files.
const NETNS_RUN_DIR: &str = "/run/netns";
const NETNS_ETC_DIR: &str = "/etc/netns";

pub use crate::os::is_root;

/// Runs `command` to its end, for at most `within`; after that its process group (it runs in
/// one of its own) is killed and this fails.
pub fn run(command: &mut Command, within: Duration) -> Result<Output, String> {
    let what = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let group = child.id() as i32;
    let (done, finished) = mpsc::channel();
    // The waiting thread reads both pipes to the end, so a talkative command cannot block.
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(within) {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => {
            os::signal_group(group, libc::SIGKILL);
            Err(format!("{what} did not finish within {within:?}: its process group was killed"))
        }
    }
}

/// Runs `command`, which must succeed within 10 s; returns what it printed.
pub fn checked(command: &mut Command) -> Result<String, String> {
    let what = format!("{command:?}");
    let output = run(command, Duration::from_secs(10))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<String, String> {
    checked(Command::new("ip").args(args))
}

/// A network namespace this process created, deleted when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name`, with its loopback up.
    pub fn create(name: &str) -> Result<Netns, String> {
        if !name.starts_with(PREFIX) {
            return Err(format!("namespace {name:?}: names made here start with {PREFIX}"));
        }
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` in this namespace (`ip netns exec`, which also puts the
    /// files of `/etc/netns/NAME` over their `/etc` namesakes for it).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Sets a sysctl of this namespace (namespaced ones such as `net.ipv4.ip_nonlocal_bind`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        checked(self.command("sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(drop)
    }

    /// Whether `device` of this namespace has `address`.
    pub fn has_address(&self, device: &str, address: Ipv4Addr) -> Result<bool, String> {
        let listing = self.ip(&["-o", "-4", "addr", "show", "dev", device])?;
        let needle = format!("inet {address}/");
        Ok(listing.contains(&needle))
    }

    /// Runs `work` on a new thread inside this namespace and returns what it returned.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        self.spawn(work)?.join().map_err(|_| format!("a thread in {} panicked", self.name))?
    }

    /// Starts `work` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<Result<T, String>>, String> {
        let path = Path::new(NETNS_RUN_DIR).join(&self.name);
        let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                // SAFETY: `file` is an open namespace file; CLONE_NEWNET moves only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("setns into {name}: {}", std::io::Error::last_os_error()));
                }
                drop(file);
                Ok(work())
            })
            .map_err(|e| format!("cannot start a thread: {e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Kills what still runs in the namespace, then deletes it. What runs there was started by the
/// test that made it (its guards normally stopped it already), and would keep it alive.
fn remove(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            os::signal(pid, libc::SIGKILL);
        }
    }
    if let Err(err) = ip(&["netns", "del", name]) {
        eprintln!("cannot delete network namespace {name}: {err}");
    }
}

/// The name of host `host` of network `tag` of this process.
pub fn name(tag: &str, host: &str) -> String {
    format!("{PREFIX}{}-{tag}-{host}", std::process::id())
}

/// Removes the namespaces, their `/etc/netns` files and the scratch directories that a test
/// process which no longer exists left behind, say after a crash. Those of live processes are left alone: another test
/// may be running.
pub fn clean_stale() {
    // One at a time: tests of one process that start together would race for the same names.
    static CLEANING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CLEANING.lock().unwrap_or_else(|e| e.into_inner());
    let dead = |name: &str| -> bool {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else {
            return false;
        };
        let Ok(pid) = pid.parse::<u32>() else { return false };
        pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
    };
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|line| line.split_whitespace().next()) {
            if dead(name) {
                eprintln!("removing network namespace {name}, left by a test process that is gone");
                remove(name);
            }
        }
    }
    let mut removed = false;
    for entry in fs::read_dir(NETNS_ETC_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name) {
            removed |= fs::remove_dir_all(entry.path()).is_ok();
        }
    }
    if removed {
        // Only when empty, and it was ours: `ip` does not need it.
        let _ = fs::remove_dir(NETNS_ETC_DIR);
    }
    for entry in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        if dead(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A directory of the system's temp dir for one program's files (configuration, logs, pid
/// files), removed when dropped, also when the test fails. World-readable, so that apache2's
/// children can read it after dropping root. Named `lbrs-ns-<pid>-<n>`, so that [`clean_stale`]
/// can remove those of a test process that died.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> Result<ScratchDir, String> {
        use std::os::unix::fs::PermissionsExt;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // A directory this process makes, never one that exists already: the name is
        // predictable, and a test running as root must not write through what another user
        // put there (a symlink, say).
        let path = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("{PREFIX}{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        };
        let dir = ScratchDir { path };
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The test network: a bridge in the "lan" namespace and one namespace per host, each with
/// `eth0` on the bridge and one address from 198.18.0.0/15 (prefix 24).
pub struct Lan {
    // Dropped in this order: the hosts, then the lan namespace (which takes the bridge and the
    // host ends of the veth pairs with it).
    hosts: Vec<(String, Netns)>,
    lan: Netns,
}

impl Lan {
    /// Builds the network; `tag` tells apart the networks of one test process.
    pub fn build(tag: &str, hosts: &[(&str, Ipv4Addr)]) -> Result<Lan, String> {
        clean_stale();
        for (host, address) in hosts {
            if !in_test_range(*address) {
                return Err(format!("{host}: {address} is not in 198.18.0.0/15"));
            }
        }
        let lan = Netns::create(&name(tag, "lan"))?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "up"])?;
        let mut built = Lan { hosts: Vec::new(), lan };
        for (index, (host, address)) in hosts.iter().enumerate() {
            let ns = Netns::create(&name(tag, host))?;
            let port = format!("v{index}");
            built.lan.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            built.lan.ip(&["link", "set", &port, "master", "br0", "up"])?;
            ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            built.hosts.push((host.to_string(), ns));
        }
        Ok(built)
    }

    /// The namespace of `host`.
    ///
    /// # Panics
    /// If the network has no such host (a mistake in the test).
    pub fn host(&self, host: &str) -> &Netns {
        match self.hosts.iter().find(|(name, _)| name == host) {
            Some((_, ns)) => ns,
            None => panic!("the test network has no host {host}"),
        }
    }
}

/// 198.18.0.0/15: 198.18.x.x and 198.19.x.x.
pub fn in_test_range(address: Ipv4Addr) -> bool {
    let [a, b, _, _] = address.octets();
    a == 198 && (b == 18 || b == 19)
}

/// A program running in a namespace (through `ip netns exec`, which execs it: the child is the
/// program itself), leader of its own process group, with its output in a log file. Dropping
/// the guard stops the group and reaps it.
pub struct NsProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl NsProcess {
    pub fn start(ns: &Netns, program: &str, args: &[String], log: &Path) -> Result<NsProcess, String> {
        let out = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {program} in {}: {e}", ns.name()))?;
        Ok(NsProcess { child: Some(child), log: log.to_path_buf() })
    }

    /// Whether it still runs (false once it exited or was stopped).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                // Exited: reap what is left of its group.
                if let Some(child) = self.child.take() {
                    stop_group(child);
                }
                false
            }
            None => false,
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL to the whole group at once, as `kill -9` or the OOM killer would: it cleans
    /// nothing up. Reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            os::signal_group(child.id() as i32, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL to the whole group after 10 s; reaped.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_group(child);
        }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A resolver for one namespace: `/etc/netns/NAME/resolv.conf`, which `ip netns exec` shows
/// programs in that namespace as their `/etc/resolv.conf`. Removed when dropped (with
/// `/etc/netns` itself once empty).
pub struct NsResolver {
    dir: PathBuf,
}

impl NsResolver {
    pub fn create(ns: &Netns, nameserver: Ipv4Addr) -> Result<NsResolver, String> {
        let dir = Path::new(NETNS_ETC_DIR).join(ns.name());
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let resolver = NsResolver { dir };
        let conf = format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n");
        fs::write(resolver.dir.join("resolv.conf"), conf)
            .map_err(|e| format!("cannot write resolv.conf: {e}"))?;
        Ok(resolver)
    }
}

impl Drop for NsResolver {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(NETNS_ETC_DIR);
    }
}

/// HTTP backends ([`Backend`]) listening inside a namespace. They are started, and dropped, on
/// one thread that joined the namespace and waits there: a backend stops by connecting to its
/// own address to wake its acceptor, which works only from inside its namespace.
pub struct NsBackends {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl NsBackends {
    pub fn start(ns: &Netns, backends: Vec<(SocketAddr, BackendSpec)>) -> Result<NsBackends, String> {
        let (ready, started) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = ns.spawn(move || {
            let mut running = Vec::new();
            for (addr, spec) in backends {
                match Backend::start_on(addr, spec) {
                    Ok(backend) => running.push(backend),
                    Err(err) => {
                        let _ = ready.send(Err(format!("backend on {addr}: {err}")));
                        return;
                    }
                }
            }
            let _ = ready.send(Ok(()));
            // Until the guard drops its sender; then the backends stop, here.
            let _ = stopped.recv();
            drop(running);
        })?;
        let mut guard = NsBackends { stop: Some(stop), thread: Some(thread) };
        match started.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(guard),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(guard.join().err().unwrap_or_else(|| "the backends did not start".to_string())),
        }
    }

    fn join(&mut self) -> Result<(), String> {
        self.stop.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err("the backends' thread panicked".to_string()),
            None => Ok(()),
        }
    }
}

impl Drop for NsBackends {
    fn drop(&mut self) {
        if let Err(err) = self.join() {
            eprintln!("{err}");
        }
    }
}
