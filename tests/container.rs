//! The container image, built from the repository's Dockerfile and run with the real podman
//! (Debian's, with runc): the image the README tells users to build, Apache in it as process 1,
//! its demo balancer, its status page closed to the outside, its health check, its logs, its
//! graceful stop, a site mounted over its own, and docker/compose.yaml under podman-compose.
//!
//! No registry is reachable here, so the two images the Dockerfile starts from are stood in
//! for: `debian:bookworm-slim` by a minbase Debian 12 that mmdebstrap makes (then `podman
//! import`), and the Rust build stage by the named build context `build` (`--build-context
//! build=DIR`, laid out by docker/build-context.sh with the package scripts/build-deb.sh
//! built). The runtime stage, everything the image holds, is built for real.
//!
//! Nothing is left on the machine: podman's store, its configuration and its runtime files
//! are in a scratch directory, and podman (and mmdebstrap, whose chroot mounts stay there)
//! runs in a private mount namespace (its overlay mounts, /run) and in a network namespace of
//! the test's, where the containers share the network (`--network host`) and where the
//! compose network's bridge, DNS server and NAT rules live. Addresses are 198.18.0.0/15 only,
//! inside those namespaces. A command that overruns its time is killed with its whole
//! process group. The guards remove the containers, the namespaces and the files also when
//! the test fails; containers that a killed run left (compose's, in podman's own network
//! namespaces) are stopped by the next run. At the end the test checks that the machine has
//! no mount of the scratch directory, no link, iptables rule, network namespace or runtime
//! file of podman's (the only ones compared: the rest of the machine may change meanwhile), no
//! cgroup of a container the run created, and no process that names the scratch directory in
//! its command line or its mounts.

use lbrs_harness::client;
use lbrs_harness::netns::{Lan, Netns, NsBackends, ScratchDir};
use lbrs_harness::{BackendSpec, os};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/mod-lbmethod-rs:latest";
/// The site the image enables, which users mount their own over.
const SITE: &str = "/etc/apache2/sites-available/lbmethod-rs-example.conf";
/// The Apache side of the test network (the containers share this namespace) and the client.
const APACHE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Where podman puts the networks it creates (docker/compose.yaml's): its private
/// containers.conf sets these, so that no address outside 198.18.0.0/15 is ever used.
const PODMAN_SUBNETS: &str = "198.18.16.0/20";
/// The image's size was 289 MB when this was written (the minbase base: 127 MB).
const MAX_IMAGE_BYTES: u64 = 400_000_000;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Why the test cannot run here, if it cannot: namespaces need root, and a kernel that
/// refuses them refuses containers.
fn unfit() -> Option<String> {
    if !os::is_root() {
        return Some("needs root (namespaces, podman's rootful store)".into());
    }
    for program in ["podman", "runc", "mmdebstrap", "podman-compose", "nsenter", "unshare", "iptables"] {
        assert!(
            lbrs_harness::ha::installed(program).is_some(),
            "{program} is not installed: scripts/setup.sh --tests installs it"
        );
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--uts", "--ipc", "--pid", "--net", "--fork", "true"])
        .stderr(Stdio::piped())
        .output()
        .expect("run unshare");
    if !probe.status.success() {
        return Some(format!(
            "the kernel refuses the namespaces containers need: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    None
}

/// Runs `command` (in a process group of its own, killed whole at the timeout).
fn try_run(command: &mut Command, within: Duration) -> Result<Output, String> {
    lbrs_harness::netns::run(command, within)
}

/// As [`try_run`], and a failure to run is a panic.
fn run(command: &mut Command, within: Duration) -> Output {
    try_run(command, within).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`run`], and it must succeed: its stdout.
fn ok(command: &mut Command, within: Duration) -> String {
    let what = format!("{command:?}");
    let output = run(command, within);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// podman with a store, configuration and runtime files of its own (in a scratch directory),
/// run in a private mount namespace that a holder process keeps, with /run a tmpfs of its own
/// there (podman's network state, the containers' namespace files), inside the test's network
/// namespace. Dropping it removes every container (and, should podman have lost one, kills
/// what runs in its cgroup), ends the holder, which takes the mounts with it, and removes the
/// files.
struct Podman {
    holder: Option<Child>,
    /// Whether podman's cgroup parent existed before (else the guard removes it, once empty).
    cgroup_parent_existed: bool,
    dir: ScratchDir,
}

/// Where podman's cgroupfs manager puts containers and conmon, under each controller.
const CGROUP_PARENT: &str = "libpod_parent";

fn cgroup_controllers() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|e| e.path()).collect()
}

impl Podman {
    fn start(ns: &Netns) -> Podman {
        let cgroup_parent_existed = cgroup_controllers().iter().any(|c| c.join(CGROUP_PARENT).exists());
        let dir = ScratchDir::new().unwrap();
        let d = dir.path();
        for sub in ["storage", "run", "tmp", "networks"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        // runc: crun refuses this kind of host's hybrid cgroup hierarchy; cgroupfs: no
        // systemd to ask for cgroups; events to a file: no journald.
        fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n\
                 [network]\nnetwork_config_dir = \"{d}/networks\"\ndefault_subnet = \"198.18.15.0/24\"\n\
                 default_subnet_pools = [{{\"base\" = \"{PODMAN_SUBNETS}\", \"size\" = 24}}]\n",
                d = d.display()
            ),
        )
        .unwrap();
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        let ready = d.join("ready");
        let script = format!(
            "set -e\nmount -t tmpfs -o mode=755 tmpfs /run\nmkdir -p /run/lock\ntouch '{}'\nexec sleep infinity\n",
            ready.display()
        );
        let holder = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the mount namespace holder");
        let mut podman = Podman { holder: Some(holder), cgroup_parent_existed, dir };
        assert!(
            lbrs_harness::wait_for(Duration::from_secs(10), || ready.exists()),
            "the mount namespace holder did not get ready"
        );
        if let Some(Ok(Some(status))) = podman.holder.as_mut().map(Child::try_wait) {
            panic!("the mount namespace holder ended: {status}");
        }
        podman
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` in podman's mount namespace, in the test's network namespace (`in_netns`) or
    /// in the machine's (image builds, which fetch apache2 with apt), with podman's private
    /// configuration.
    fn command(&self, program: &str, in_netns: bool) -> Command {
        let pid = self.holder.as_ref().map(Child::id).unwrap_or(0).to_string();
        let mut command = Command::new("nsenter");
        command.args(["-t", &pid, "-m"]);
        if in_netns {
            command.arg("-n");
        }
        command.args(["--", program]);
        command.env("CONTAINERS_CONF", self.dir().join("containers.conf"));
        command.env("CONTAINERS_STORAGE_CONF", self.dir().join("storage.conf"));
        command.env("TMPDIR", self.dir().join("tmp"));
        command
    }

    /// `podman ARGS` in the test's network namespace: its output, whatever its status.
    fn output(&self, args: &[&str], within: Duration) -> Output {
        run(self.command("podman", true).args(args), within)
    }

    /// `podman ARGS`, which must succeed within 60 s: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        ok(self.command("podman", true).args(args), Duration::from_secs(60))
    }

    /// A shell script run by bash inside the container: its output, whatever its status.
    fn exec_sh(&self, container: &str, script: &str) -> Output {
        self.output(&["exec", container, "bash", "-c", script], Duration::from_secs(30))
    }

    /// GET `path` from inside the container, on its own loopback (bash's /dev/tcp: the image
    /// has no HTTP client): the whole response.
    fn get_inside(&self, container: &str, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/80 && printf 'GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 10 cat <&3"
        );
        let output = self.exec_sh(container, &script);
        assert!(
            output.status.success(),
            "GET {path} inside {container}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `podman healthcheck run`: whether it said healthy, and what it printed.
    fn healthcheck(&self, container: &str) -> (bool, String) {
        let output = self.output(&["healthcheck", "run", container], Duration::from_secs(30));
        let said =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), said.trim().to_string())
    }

    /// Waits (30 s at most) until the container's health check passes.
    fn wait_healthy(&self, container: &str) {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(30) {
            let (healthy, said) = self.healthcheck(container);
            if healthy {
                return;
            }
            last = said;
            thread::sleep(Duration::from_millis(300));
        }
        let logs = self.output(&["logs", container], Duration::from_secs(10));
        panic!(
            "{container} is not healthy after 30 s: {last}\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
    }

    /// Every container this store has held, removed or not: those whose directories are
    /// there (which outlive a podman that lost track of them) and those podman's events log
    /// saw created (compose's, removed by `podman-compose down`).
    fn container_ids(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = fs::read_dir(self.dir().join("storage/overlay-containers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.len() == 64)
            .collect();
        let events = fs::read_to_string(self.dir().join("events.log")).unwrap_or_default();
        for event in events.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            if event["Type"] == "container"
                && let Some(id) = event["ID"].as_str().filter(|id| id.len() == 64)
            {
                ids.insert(id.to_string());
            }
        }
        ids
    }
}

/// The `libpod-<id>` cgroups of these containers, under every controller, that still exist.
fn container_cgroups(ids: &BTreeSet<String>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for controller in cgroup_controllers() {
        for id in ids {
            let cgroup = controller.join(CGROUP_PARENT).join(format!("libpod-{id}"));
            if cgroup.exists() {
                found.push(cgroup);
            }
        }
    }
    found
}

/// Kills what runs in these cgroups (until they are empty, 1 s at most), then removes them.
fn empty_and_remove(cgroups: &[PathBuf]) {
    for cgroup in cgroups {
        for _ in 0..50 {
            let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                os::signal(pid, libc::SIGKILL);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(cgroup);
    }
}

/// Stops the containers that a run of this test left when it was killed (SIGKILL, a timeout
/// of the harness): the compose containers run in podman's own network namespaces, which
/// [`lbrs_harness::netns::clean_stale`] does not know (it takes the test's namespaces and
/// what runs there: the mount namespace holder, conmon, aardvark-dns). A container is known
/// by its overlay root, whose upper directory is in the scratch directory of the test process
/// (`/tmp/lbrs-ns-<pid>-<n>/storage/...`); when that process is gone, what runs in the
/// container's cgroups is killed and the cgroups are removed. Containers of a live test, and
/// podman's containers of anyone else, are left alone.
fn clean_stale_containers() {
    let upper = format!("upperdir={}", std::env::temp_dir().join(lbrs_harness::netns::PREFIX).display());
    let owner = |pid: &str| -> Option<u32> {
        let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        let at = mounts.find(&upper)? + upper.len();
        mounts[at..].split('-').next()?.parse().ok()
    };
    let mut stale = BTreeSet::new();
    for controller in cgroup_controllers() {
        for entry in fs::read_dir(controller.join(CGROUP_PARENT)).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("libpod-") else { continue };
            let procs = fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
            let Some(test) = procs.split_whitespace().find_map(owner) else { continue };
            if test != std::process::id() && !Path::new(&format!("/proc/{test}")).exists() {
                stale.insert(id.to_string());
            }
        }
    }
    if !stale.is_empty() {
        eprintln!("stopping {} container(s) left by a test process that is gone: {stale:?}", stale.len());
        empty_and_remove(&container_cgroups(&stale));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let ids = self.container_ids();
        if self.holder.is_some() {
            let removed = try_run(
                self.command("podman", true).args(["rm", "--all", "--force", "--time", "0"]),
                Duration::from_secs(60),
            );
            if let Ok(output) = removed
                && !output.status.success()
            {
                eprintln!("podman rm --all: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        // Whatever podman could not remove: what still runs in a container's cgroup, then
        // the cgroups themselves.
        empty_and_remove(&container_cgroups(&ids));
        for id in &ids {
            let pidfile = self.dir().join(format!("run/overlay-containers/{id}/userdata/conmon.pid"));
            if let Some(pid) = fs::read_to_string(pidfile).ok().and_then(|p| p.trim().parse().ok()) {
                os::signal(pid, libc::SIGKILL);
            }
        }
        if let Some(mut holder) = self.holder.take() {
            os::signal_group(holder.id() as i32, libc::SIGKILL);
            let _ = holder.wait();
        }
        if !self.cgroup_parent_existed {
            for controller in cgroup_controllers() {
                let _ = fs::remove_dir(controller.join(CGROUP_PARENT).join("conmon"));
                let _ = fs::remove_dir(controller.join(CGROUP_PARENT));
            }
        }
        // The scratch directory goes last (its own guard).
    }
}

/// What podman, netavark and aardvark-dns could leave in the machine's namespaces, to compare
/// after the test: links, firewall rules, network namespaces and runtime files of theirs.
/// Only theirs: other programs on the machine may change the rest meanwhile.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    /// Links named podman*, veth*, netavark*, cni*.
    links: Vec<String>,
    /// iptables rules (filter and nat) that name NETAVARK, CNI, podman or 198.18.
    iptables: Vec<String>,
    /// Network namespaces named netns-* (podman's).
    netns: Vec<String>,
    /// /run/containers, podman's runtime directory.
    run_containers: Vec<String>,
}

impl HostState {
    fn take() -> HostState {
        let lines = |command: &mut Command| -> Vec<String> {
            let text = ok(command, Duration::from_secs(10));
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        let links = lines(Command::new("ip").args(["-o", "link", "show"]))
            .iter()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .filter(|n| ["podman", "veth", "netavark", "cni"].iter().any(|p| n.starts_with(p)))
            .collect();
        let mut iptables = Vec::new();
        for table in ["filter", "nat"] {
            iptables.extend(lines(Command::new("iptables").args(["-t", table, "-S"])).into_iter().filter(
                |rule| {
                    ["NETAVARK", "CNI", "198.18."].iter().any(|w| rule.contains(w))
                        || rule.to_lowercase().contains("podman")
                },
            ));
        }
        let netns = lines(Command::new("ip").args(["netns", "list"]))
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|n| n.starts_with("netns-"))
            .collect();
        let run_containers = walk(Path::new("/run/containers"));
        HostState { links, iptables, netns, run_containers }
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        found.push(entry.path().display().to_string());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(walk(&entry.path()));
        }
    }
    found.sort();
    found
}

/// The package, built by scripts/build-deb.sh (lintian is tests/debian_package.rs's part).
fn package() -> PathBuf {
    lbrs_harness::system::build_package(false, Duration::from_secs(1500))
}

/// The base image and then the Dockerfile's image, in `podman`'s store.
fn build_image(podman: &Podman, deb: &Path) {
    // debian:bookworm-slim's stand-in: minbase Debian 12 without manuals, docs (but the
    // copyrights) and translations, as the slim image is. mmdebstrap (root mode) mounts /proc,
    // /sys, /dev/pts and a bind of /dev/shm into its chroot: it runs in podman's private mount
    // namespace, so those mounts never reach the machine's and end with the holder, even when
    // mmdebstrap is killed before its own cleanup (then its temporary directory, in the
    // scratch directory, holds plain directories only, as the machine sees it).
    let started = Instant::now();
    let rootfs = podman.dir().join("rootfs.tar");
    ok(
        podman
            .command("mmdebstrap", false)
            .args([
                "--quiet",
                "--variant=minbase",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "bookworm",
            ])
            .arg(&rootfs),
        Duration::from_secs(300),
    );
    ok(
        podman
            .command("podman", false)
            .args(["import", "--quiet"])
            .arg(&rootfs)
            .arg("localhost/debian:bookworm-slim"),
        Duration::from_secs(120),
    );
    fs::remove_file(&rootfs).unwrap();
    eprintln!("base image (mmdebstrap, podman import) in {:.0?}", started.elapsed());

    // The Dockerfile's runtime stage, with the package from the named context "build".
    let started = Instant::now();
    let context = podman.dir().join("build-context");
    ok(
        Command::new(workspace().join("docker/build-context.sh")).arg(&context).arg(deb),
        Duration::from_secs(60),
    );
    let built = run(
        podman
            .command("podman", false)
            .args([
                "build",
                "--pull=never",
                "--network=host",
                // HEALTHCHECK, STOPSIGNAL: Docker's image format keeps them (OCI's drops the first).
                "--format=docker",
            ])
            .arg(format!("--build-context=build={}", context.display()))
            .args(["--tag", IMAGE, "--file"])
            .arg(workspace().join("Dockerfile"))
            .arg(workspace()),
        Duration::from_secs(600),
    );
    let log = format!("{}{}", String::from_utf8_lossy(&built.stdout), String::from_utf8_lossy(&built.stderr));
    assert!(built.status.success(), "podman build failed ({}):\n{log}", built.status);
    // The build stage was the named context: no Rust stage ran.
    assert!(!log.contains("rust:1-bookworm"), "the Rust stage was built:\n{log}");
    // What the build says that looks alarming and is not (docs/install.md names it).
    for line in log.lines().filter(|l| {
        let l = l.to_lowercase();
        ["ulimit", "ah0", "warn"].iter().any(|w| l.contains(w))
    }) {
        eprintln!("build says: {line}");
    }
    fs::remove_dir_all(&context).unwrap();
    eprintln!("image built from the Dockerfile in {:.0?}", started.elapsed());
}

/// GETs `path` `count` times from the client namespace, one connection each: responses per
/// body text (status when not 200).
fn tally(lan: &Lan, addr: SocketAddr, path: &str, count: usize) -> BTreeMap<String, usize> {
    let path = path.to_string();
    lan.host("client")
        .run(move || {
            let mut tally = BTreeMap::new();
            for _ in 0..count {
                let key = match client::get(addr, &path) {
                    Ok(r) if r.status == 200 => r.text().trim().to_string(),
                    Ok(r) => format!("status {}", r.status),
                    Err(e) => format!("error {}", e.kind()),
                };
                *tally.entry(key).or_insert(0) += 1;
            }
            tally
        })
        .unwrap()
}

/// The status code of one GET from the client namespace.
fn status_from_client(lan: &Lan, addr: SocketAddr, path: &str) -> u16 {
    let path = path.to_string();
    lan.host("client").run(move || client::get(addr, &path).map(|r| r.status)).unwrap().unwrap()
}

fn shares(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The host's ids of the container's process 1 and of its children: Apache's parent and its
/// worker processes.
fn apache_processes(podman: &Podman, container: &str) -> Vec<i32> {
    let pid1: i32 = podman.ok(&["inspect", "--format", "{{.State.Pid}}", container]).trim().parse().unwrap();
    let mut pids = vec![pid1];
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent's pid is the second field after the command name in parentheses.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid.and_then(|p| p.parse::<i32>().ok()) == Some(pid1) {
            pids.push(pid);
        }
    }
    pids
}

/// Processes held with SIGSTOP; SIGCONT when dropped.
struct Frozen(Vec<i32>);

impl Frozen {
    fn new(pids: Vec<i32>) -> Frozen {
        for &pid in &pids {
            os::signal(pid, libc::SIGSTOP);
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            os::signal(pid, libc::SIGCONT);
        }
    }
}

#[test]
fn the_dockerfile_image_runs_under_podman_and_the_compose_demo_balances() {
    if let Some(why) = unfit() {
        // A documented skip (docs/install.md, "What is tested, and how"): the test passes
        // without having run.
        eprintln!("SKIPPED, not run: {why}");
        return;
    }
    let started = Instant::now();
    clean_stale_containers();
    let before = HostState::take();
    let deb = package();
    let dir;
    let containers;
    {
        let lan = Lan::build("ctr", &[("apache", APACHE_IP), ("client", CLIENT_IP)]).unwrap();
        let podman = Podman::start(lan.host("apache"));
        dir = podman.dir().to_path_buf();
        build_image(&podman, &deb);
        the_image(&podman);
        the_demo(&lan, &podman);
        a_mounted_site_and_a_graceful_stop(&lan, &podman);
        the_compose_demo(&lan, &podman);
        containers = podman.container_ids();
    }

    // Nothing left: no mount of podman's, no link, rule, namespace or runtime file of podman's
    // in the machine's namespaces, no process, no cgroup of the run's containers.
    let dir_text = dir.to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir_text)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(!dir.exists(), "{} is left", dir.display());
    assert_eq!(HostState::take(), before, "podman left something in the machine's namespaces");
    eprintln!("{} containers ran", containers.len());
    assert!(containers.len() >= 7, "the events log names {} containers: {containers:?}", containers.len());
    let cgroups = container_cgroups(&containers);
    assert!(cgroups.is_empty(), "container cgroups left: {cgroups:?}");
    // A process that names the scratch directory in its command line (conmon, podman) or in
    // its mounts (a container's overlay root, the holder's namespace).
    let mut processes = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let mounts = fs::read_to_string(entry.path().join("mountinfo")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir_text) || mounts.contains(&dir_text) {
            processes.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(processes.is_empty(), "processes left: {processes:?}");
    eprintln!("the container test ran in {:.0?}", started.elapsed());
}

/// Prints what of a compiler or of the build stage the image holds (nothing, as it should).
const COMPILERS: &str = r#"
dpkg-query -W -f '${db:Status-Status} ${Package}\n' 'gcc*' 'g++*' 'cpp*' 'clang*' 'llvm*' \
    'binutils*' tcc 'rustc*' 'cargo*' libc6-dev 2>/dev/null |
    awk '$1 != "not-installed" && $1 != "config-files" && $2 !~ /-base$/ { print "package: " $2 }'
find / -xdev \( -name 'cc1*' -o -name rustc -o -name cargo -o -name rustup -o -name tcc \
    -o -name '*-linux-gnu-gcc*' -o -name 'clang-[0-9]*' \) -printf 'file: %p\n' 2>/dev/null
for d in /src /usr/local/cargo /usr/local/rustup /root/.cargo; do
    if [ -e "$d" ]; then echo "directory: $d"; fi
done
true
"#;

/// What the image is: its size, no compiler, Apache as process 1.
fn the_image(podman: &Podman) {
    let size: u64 = podman.ok(&["image", "inspect", "--format", "{{.Size}}", IMAGE]).trim().parse().unwrap();
    eprintln!("image size: {size} bytes ({:.0} MB)", size as f64 / 1e6);
    assert!(size < MAX_IMAGE_BYTES, "the image is {size} bytes, more than {MAX_IMAGE_BYTES}");
    let config =
        podman.ok(&["image", "inspect", "--format", "{{.Config.StopSignal}} {{.Config.Entrypoint}}", IMAGE]);
    assert_eq!(config.trim(), "SIGWINCH [apache2-foreground]");
    // No compiler: no package of one (whatever its version suffix; gcc-12-base, which
    // libgcc-s1 needs, holds no compiler), no compiler's file anywhere, nothing of the build
    // stage's (its /src, rustup's directories).
    let compilers =
        podman.ok(&["run", "--rm", "--network=host", "--entrypoint=bash", IMAGE, "-c", COMPILERS]);
    assert!(compilers.trim().is_empty(), "the image holds a compiler:\n{compilers}");
}

/// The image as it comes: the demo balancer, the status page, the health check, the logs.
fn the_demo(lan: &Lan, podman: &Podman) {
    let name = "lbrs-demo";
    podman.ok(&["run", "--detach", "--name", name, "--network=host", IMAGE]);
    podman.wait_healthy(name);

    // Apache itself is process 1: no shell in between to swallow the stop signal.
    let comm = podman.ok(&["exec", name, "cat", "/proc/1/comm"]);
    assert_eq!(comm.trim(), "apache2");
    let cmdline = podman.ok(&["exec", name, "cat", "/proc/1/cmdline"]).replace('\0', " ");
    assert!(cmdline.contains("-DFOREGROUND"), "{cmdline}");

    // The demo balancer, from another host: byweight's 1:2:3, exactly, over whole cycles.
    let addr = SocketAddr::from((APACHE_IP, 80));
    let counted = tally(lan, addr, "/", 600);
    eprintln!("demo shares of 600 requests: {counted:?}");
    assert_eq!(counted, shares(&[("app1", 100), ("app2", 200), ("app3", 300)]));

    // The status page, the metrics and balancer-manager answer local requests only.
    for path in ["/lb-status", "/lb-status?format=json", "/lb-status?format=prometheus", "/balancer-manager"]
    {
        assert_eq!(status_from_client(lan, addr, path), 403, "{path} from another host");
    }
    let json = podman.get_inside(name, "/lb-status?format=json");
    assert!(json.starts_with("HTTP/1.1 200 "), "{json}");
    assert!(json.contains("\"balancer://app\""), "{json}");
    let metrics = podman.get_inside(name, "/lb-status?format=prometheus");
    assert!(metrics.starts_with("HTTP/1.1 200 ") && metrics.contains("lbrs_member_selected"), "{metrics}");
    assert!(podman.ok(&["exec", name, "apache2-healthcheck"]).is_empty());

    // The health check fails while Apache does not answer: every Apache process (process 1
    // and its children) stopped with SIGSTOP, the state of a hung server. (Stopping Apache
    // for good would end process 1, and with it the container, which podman then reports
    // as exited, not unhealthy.) The check connects (the kernel still accepts), gets no
    // answer and fails on its timeout.
    let frozen = Frozen::new(apache_processes(podman, name));
    let asked = Instant::now();
    let (healthy, said) = podman.healthcheck(name);
    eprintln!("health check with Apache stopped: {said:?} after {:.1?}", asked.elapsed());
    assert!(!healthy, "healthy while Apache is stopped: {said}");
    // Podman's own timeout (the HEALTHCHECK's 5 s) ends the check first, or the script's.
    assert!(said.contains("unhealthy") || said.contains("timeout"), "{said}");
    drop(frozen);
    podman.wait_healthy(name);

    // The logs are the container's output: a request of the test's on stdout (the access
    // log), Apache's start on stderr (the error log).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let unique = format!("/container-test-{}-{}", std::process::id(), now.as_nanos());
    let answered = tally(lan, addr, &unique, 1);
    assert_eq!(answered, shares(&[("status 404", 1)]), "the demo backends have no {unique}");
    let logged = lbrs_harness::wait_for(Duration::from_secs(5), || {
        let logs = podman.output(&["logs", name], Duration::from_secs(10));
        String::from_utf8_lossy(&logs.stdout).contains(&format!("\"GET {unique} HTTP/1.1\" 404"))
    });
    let logs = podman.output(&["logs", name], Duration::from_secs(10));
    let (stdout, stderr) = (String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    assert!(logged, "the access log line of {unique} is not in podman logs' stdout:\n{stdout}");
    assert!(stderr.contains("resuming normal operations"), "the error log is not on stderr:\n{stderr}");
    // The health checks (several by now) are not in the access log: their User-Agent is
    // excluded. The image names its server: no AH00558 (the name guessed) at the start.
    assert!(!stdout.contains("apache2-healthcheck"), "the health checks are in the access log:\n{stdout}");
    assert!(!stderr.contains("AH00558"), "Apache guessed its server name:\n{stderr}");

    // podman stop sends the image's STOPSIGNAL, SIGWINCH: Apache stops gracefully, status 0.
    let stopping = Instant::now();
    podman.ok(&["stop", "--time", "10", name]);
    let stopped = stopping.elapsed();
    let exit = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", name]);
    let stderr =
        String::from_utf8_lossy(&podman.output(&["logs", name], Duration::from_secs(10)).stderr).into_owned();
    eprintln!("demo container stopped in {stopped:.1?}, exit code {}", exit.trim());
    assert_eq!(exit.trim(), "0");
    assert!(stderr.contains("SIGWINCH"), "{stderr}");
    podman.ok(&["rm", name]);
}

/// A site mounted over the image's: its members are backends the test runs (in the network
/// namespace the container shares). Then `podman stop` while slow requests are in flight.
fn a_mounted_site_and_a_graceful_stop(lan: &Lan, podman: &Podman) {
    let slow_for = Duration::from_secs(3);
    let _backends = NsBackends::start(
        lan.host("apache"),
        vec![
            (SocketAddr::from(([127, 0, 0, 1], 9001)), BackendSpec::new("one")),
            (SocketAddr::from(([127, 0, 0, 1], 9002)), BackendSpec::new("two")),
            (SocketAddr::from(([127, 0, 0, 1], 9003)), BackendSpec::new("slow").delay(slow_for)),
        ],
    )
    .unwrap();
    let site = podman.dir().join("my-site.conf");
    fs::write(
        &site,
        "# Mounted over the image's site by tests/container.rs.\n\
         <VirtualHost *:80>\n\
         \x20   ServerName localhost\n\
         \x20   <Proxy \"balancer://mine\">\n\
         \x20       BalancerMember \"http://127.0.0.1:9001\" loadfactor=1\n\
         \x20       BalancerMember \"http://127.0.0.1:9002\" loadfactor=3\n\
         \x20       ProxySet lbmethod=byweight\n\
         \x20   </Proxy>\n\
         \x20   <Proxy \"balancer://slow\">\n\
         \x20       BalancerMember \"http://127.0.0.1:9003\"\n\
         \x20       ProxySet lbmethod=byinflight\n\
         \x20   </Proxy>\n\
         \x20   ProxyPass \"/lb-status\" \"!\"\n\
         \x20   ProxyPass \"/slow/\" \"balancer://slow/\"\n\
         \x20   ProxyPass \"/\" \"balancer://mine/\"\n\
         </VirtualHost>\n",
    )
    .unwrap();
    let name = "lbrs-site";
    let volume = format!("{}:{SITE}:ro", site.display());
    podman.ok(&["run", "--detach", "--name", name, "--network=host", "--volume", &volume, IMAGE]);
    podman.wait_healthy(name);

    let addr = SocketAddr::from((APACHE_IP, 80));
    let counted = tally(lan, addr, "/", 40);
    eprintln!("mounted site, shares of 40 requests: {counted:?}");
    assert_eq!(counted, shares(&[("one", 10), ("two", 30)]));

    // Slow requests in flight, then podman stop: SIGWINCH, Apache closes its listener and
    // lets them finish, well within the stop timeout.
    let in_flight = 6;
    let clients: Vec<_> = (0..in_flight)
        .map(|_| {
            lan.host("client")
                .spawn(move || {
                    let sent = Instant::now();
                    (
                        client::get(addr, "/slow/x").map(|r| (r.status, r.text().trim().to_string())),
                        sent.elapsed(),
                    )
                })
                .unwrap()
        })
        .collect();
    let arrived = lbrs_harness::wait_for(Duration::from_secs(5), || {
        let json = podman.get_inside(name, "/lb-status?format=json").replace(' ', "");
        json.contains(&format!("\"inflight\":{in_flight},"))
    });
    assert!(
        arrived,
        "the slow requests are not all in flight:\n{}",
        podman.get_inside(name, "/lb-status?format=json")
    );
    let stopping = Instant::now();
    podman.ok(&["stop", "--time", "10", name]);
    let stopped = stopping.elapsed();
    let mut answered = 0;
    for handle in clients {
        let (result, took) = handle.join().unwrap().unwrap();
        match result {
            Ok((200, body)) if body == "slow" => answered += 1,
            other => panic!("a request in flight at the stop got {other:?} after {took:.1?}"),
        }
    }
    let exit = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", name]);
    eprintln!(
        "graceful stop: {answered} of {in_flight} slow ({slow_for:?}) requests answered 200; podman stop took \
         {stopped:.1?}; exit code {}",
        exit.trim()
    );
    assert_eq!(answered, in_flight);
    assert!(stopped < Duration::from_secs(9), "podman stop took {stopped:?}: Apache was killed, not stopped");
    assert_eq!(exit.trim(), "0", "Apache did not exit by itself");
    podman.ok(&["rm", name]);
}

/// docker/compose.yaml under podman-compose: a balancer and three app containers on a compose
/// network, the apps found by service name, the balancer's port published.
fn the_compose_demo(lan: &Lan, podman: &Podman) {
    let compose = workspace().join("docker/compose.yaml");
    let project = "lbrs";
    let compose_cmd = |args: &[&str]| -> Output {
        run(
            podman.command("podman-compose", true).args(["-p", project, "-f"]).arg(&compose).args(args),
            Duration::from_secs(180),
        )
    };
    let up = compose_cmd(&["up", "-d"]);
    let up_log = format!("{}{}", String::from_utf8_lossy(&up.stdout), String::from_utf8_lossy(&up.stderr));
    assert!(up.status.success(), "podman-compose up failed:\n{up_log}");
    let _down = ComposeDown(&compose_cmd);
    let network = podman.ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .Subnets}}{{.Subnet}}{{end}}",
        "lbrs_default",
    ]);
    eprintln!("compose network lbrs_default: {}", network.trim());
    assert!(network.trim().starts_with("198.18."), "{network}");
    for app in ["app1", "app2", "app3", "balancer"] {
        podman.wait_healthy(&format!("{project}_{app}_1"));
    }
    let addr = SocketAddr::from((APACHE_IP, 8080));
    let counted = tally(lan, addr, "/", 600);
    eprintln!("compose demo, shares of 600 requests: {counted:?}");
    assert_eq!(counted, shares(&[("app1", 100), ("app2", 200), ("app3", 300)]));
    // The balancer's own count, from inside its container: the members are the service names.
    let response = podman.get_inside(&format!("{project}_balancer_1"), "/lb-status?format=json");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
    let status: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    let selected: Vec<(String, u64)> = status["balancers"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["selected"].as_u64().unwrap()))
        .collect();
    let expected = [("http://app1", 100), ("http://app2", 200), ("http://app3", 300)];
    assert_eq!(selected, expected.map(|(n, c)| (n.to_string(), c)), "{response}");
    let down = compose_cmd(&["down"]);
    assert!(down.status.success(), "podman-compose down failed:\n{}", String::from_utf8_lossy(&down.stderr));
    let left = podman.ok(&["ps", "--all", "--format", "{{.Names}}"]);
    assert!(left.trim().is_empty(), "containers left after podman-compose down: {left}");
    // podman-compose down leaves the network; docs/install.md says to remove it, as here.
    podman.ok(&["network", "rm", "lbrs_default"]);
    let networks = podman.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.lines().any(|n| n == "lbrs_default"), "lbrs_default is left: {networks}");
}

/// `podman-compose down` when dropped (the Podman guard removes whatever it leaves).
struct ComposeDown<'a>(&'a dyn Fn(&[&str]) -> Output);

impl Drop for ComposeDown<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = (self.0)(&["down"]);
        }
    }
}
