//! The Debian package and the container image, through the real programs: scripts/build-deb.sh
//! builds the package, lintian checks it, apt-get installs it into this machine's own apache2,
//! a2enmod enables it, apache2ctl starts and stops the system instance, apt-get purges it. The
//! image's scripts (docker/setup-image.sh, docker/entrypoint.sh, docker/healthcheck.sh) run here
//! the same way, outside Docker.
//!
//! Both tests change the machine while they run (/etc/apache2, the module directory, a2enmod's
//! state), so they need root and run one at a time; a guard puts everything back, also when a
//! test fails. They do not run (and say why) when the machine is not theirs to change: not root,
//! the package or the module's files already there, the system apache2 running.

use lbrs_harness::apache::free_port;
use lbrs_harness::os;
use lbrs_harness::system::{
    self, A2_STATE, APACHE_CONF, MODULES_DIR, MachineGuard, SYSTEM_PID_FILE, ServiceStartsHeld,
};
use lbrs_harness::{Backend, BackendSpec, backends, client, wait_for};
use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const PACKAGE: &str = "libapache2-mod-lbmethod-rs";
/// Created by apache2ctl and the entrypoint when missing (removed again if they were).
const RUN_DIRS: [&str; 2] = ["/var/run/apache2", "/var/lock/apache2"];

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One test at a time owns the machine's apache2; None (after saying why) when it is not
/// this test's to change.
fn machine() -> Option<MutexGuard<'static, ()>> {
    static MACHINE: Mutex<()> = Mutex::new(());
    let lock = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    match system::unfit_for_package_test(PACKAGE) {
        Some(why) => {
            eprintln!("skipped: {why}");
            None
        }
        None => Some(lock),
    }
}

/// The package, built once by scripts/build-deb.sh (which also runs lintian on it).
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        // The module as built last may be another version's (package_at shares the cargo
        // directory).
        forget_built_module();
        system::build_package(true, Duration::from_secs(1500))
    })
}

fn deb_field(deb: &Path, field: &str) -> String {
    system::run("dpkg-deb", &["-f", &deb.to_string_lossy(), field], &[]).unwrap().trim().to_string()
}

fn module_enabled(name: &str) -> bool {
    Path::new(&format!("{APACHE_CONF}/mods-enabled/{name}.load")).exists()
}

fn enabled_modules() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("{APACHE_CONF}/mods-enabled"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".load").map(str::to_string))
        .collect();
    names.sort();
    names
}

/// GETs `path` `count` times, one connection each; responses per body text.
fn tally(addr: SocketAddr, path: &str, count: usize) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for _ in 0..count {
        let response = client::get(addr, path).unwrap();
        let key = if response.status == 200 {
            response.text().trim().to_string()
        } else {
            format!("status {}", response.status)
        };
        *tally.entry(key).or_default() += 1;
    }
    tally
}

/// The status page's JSON, from `addr`.
fn status_json(addr: SocketAddr) -> serde_json::Value {
    let response = client::get(addr, "/lb-status?format=json").unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

#[test]
fn the_package_is_lintian_clean_installs_disabled_serves_and_purges_to_nothing() {
    let Some(_machine) = machine() else { return };
    let deb = package();
    let changes = deb.with_extension("changes");

    // What the package is.
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info", "--show-overrides"])
        .arg(&changes)
        .output()
        .expect("run lintian");
    let lintian_out = String::from_utf8_lossy(&lintian.stdout);
    eprintln!("lintian {}:\n{lintian_out}", changes.display());
    assert!(
        lintian.status.success(),
        "lintian failed:\n{lintian_out}{}",
        String::from_utf8_lossy(&lintian.stderr)
    );
    let tags: Vec<&str> = lintian_out.lines().filter(|l| l.starts_with(['E', 'W', 'I', 'P', 'X'])).collect();
    assert!(tags.is_empty(), "lintian tags not overridden: {tags:?}");
    let depends = deb_field(deb, "Depends");
    eprintln!("Depends: {depends}");
    assert!(depends.contains("apache2-api-20120211"), "{depends}");
    assert!(depends.contains("apache2-bin (>= "), "{depends}");
    let contents = system::run("dpkg", &["-c", &deb.to_string_lossy()], &[]).unwrap();
    for path in [
        "./usr/lib/apache2/modules/mod_lbmethod_rs.so",
        "./etc/apache2/mods-available/lbmethod_rs.load",
        "./etc/apache2/mods-available/lbmethod_rs.conf",
        "./usr/share/doc/libapache2-mod-lbmethod-rs/copyright",
    ] {
        assert!(contents.contains(path), "{path} is not in the package:\n{contents}");
    }

    let mut guard = MachineGuard::new(PACKAGE, &RUN_DIRS).unwrap();
    let _held = ServiceStartsHeld::new().unwrap();
    let scratch = Scratch::new();
    let logs = &scratch.0;

    // apt-get installs it, and enables nothing: the system apache2 does not start either.
    let installed = system::apt_get(&["install", &deb.to_string_lossy()]).unwrap();
    eprintln!("{installed}");
    assert_eq!(system::package_status(PACKAGE), "install ok installed");
    assert!(!module_enabled("lbmethod_rs"), "installing enabled the module");
    assert!(
        system::run("a2query", &["-m", "lbmethod_rs"], &[]).is_err(),
        "a2query says lbmethod_rs is enabled"
    );
    assert_eq!(system::system_apache_pid(), None, "installing started the system apache2");
    let module = Path::new(MODULES_DIR).join("mod_lbmethod_rs.so");
    let exported = system::run("nm", &["-D", "--defined-only", &module.to_string_lossy()], &[]).unwrap();
    let exported: Vec<&str> = exported.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(exported, ["lbmethod_rs_module"], "the module exports exactly its module record");

    // Enabled as an admin would, on a loopback port, in front of two backends at 1:2.
    let modules_before = enabled_modules();
    system::run("a2enmod", &["-q", "proxy_http", "lbmethod_rs"], &[]).unwrap();
    let newly_enabled: Vec<String> =
        enabled_modules().into_iter().filter(|m| !modules_before.contains(m)).collect();
    eprintln!("a2enmod enabled {newly_enabled:?}");
    // lbmethod_rs.load's Depends enabled mod_proxy_balancer, unless it was already (a machine
    // that balances already).
    assert!(
        module_enabled("proxy_balancer")
            && (modules_before.iter().any(|m| m == "proxy_balancer")
                || newly_enabled.iter().any(|m| m == "proxy_balancer")),
        "lbmethod_rs.load's Depends: {newly_enabled:?}"
    );
    let b = backends(&["a", "b"]);
    let port = free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ports_conf = format!("{APACHE_CONF}/ports.conf");
    let original_ports = fs::read(&ports_conf).unwrap();
    fs::write(&ports_conf, format!("Listen 127.0.0.1:{port}\n")).unwrap();
    let site = format!("{APACHE_CONF}/sites-available/lbrs-deb-test.conf");
    fs::write(&site, test_site(port, &b, logs)).unwrap();
    system::run("a2ensite", &["-q", "lbrs-deb-test"], &[]).unwrap();
    let configtest = system::run("apache2ctl", &["configtest"], &[]).unwrap();
    assert!(configtest.contains("Syntax OK"), "{configtest}");

    // The system instance, started and stopped the system's way.
    system::run("apache2ctl", &["start"], &[]).unwrap();
    let pid = system::retry(Duration::from_secs(30), || {
        system::system_apache_pid().ok_or_else(|| format!("no live apache2 in {SYSTEM_PID_FILE}"))
    })
    .unwrap();
    system::retry(Duration::from_secs(30), || client::get(addr, "/lb-status").map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            panic!("apache2 does not answer on {addr}: {e}\n{}", read(&logs.join("error.log")))
        });
    let shares = tally(addr, "/", 300);
    assert_eq!(shares, BTreeMap::from([("a".to_string(), 100), ("b".to_string(), 200)]), "byweight 1:2");
    let status = status_json(addr);
    assert_eq!(status["module_version"], deb_field(deb, "Version"));
    let balancer = &status["balancers"][0];
    assert_eq!(balancer["name"], "balancer://debtest");
    assert_eq!(balancer["method"], "byweight");
    let selected: Vec<(String, u64)> = balancer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["selected"].as_u64().unwrap()))
        .collect();
    assert_eq!(selected, [(b[0].url(), 100), (b[1].url(), 200)]);
    let stopped = system::run("apache2ctl", &["stop"], &[]).unwrap();
    assert!(system::wait_gone(pid, Duration::from_secs(30)), "apache2 (pid {pid}) still runs: {stopped}");

    // Removing the package while a site uses its methods is refused, naming the lines:
    // Apache would not start again without the module.
    let refused = system::apt_get(&["remove", PACKAGE]).unwrap_err();
    assert!(refused.contains("not removed") && refused.contains("lbrs-deb-test.conf"), "{refused}");
    assert!(system::package_status(PACKAGE).ends_with("ok installed"), "{refused}");
    assert!(module_enabled("lbmethod_rs"));

    // Back as it was: the admin's steps, then the package's purge.
    system::run("a2dissite", &["-q", "-p", "lbrs-deb-test"], &[]).unwrap();
    fs::remove_file(&site).unwrap();
    fs::write(&ports_conf, original_ports).unwrap();
    let purged = system::apt_get(&["purge", PACKAGE]).unwrap();
    eprintln!("{purged}");
    assert!(system::package_absent(PACKAGE), "{}", system::package_status(PACKAGE));
    assert!(!module_enabled("lbmethod_rs"), "purging left lbmethod_rs enabled");
    // The dependencies a2enmod enabled are the admin's to disable, users of the others first.
    let order = ["proxy_http", "proxy_balancer", "slotmem_shm", "proxy"];
    for name in order.iter().filter(|m| newly_enabled.iter().any(|n| n == *m)) {
        system::run("a2dismod", &["-q", "-p", name], &[]).unwrap();
    }
    let before = guard.before();
    let now = guard.now();
    for root in [APACHE_CONF, MODULES_DIR] {
        let root = Path::new(root);
        let changed = before.under(root).differences(&now.under(root));
        assert!(changed.is_empty(), "{} differs after the purge:\n{}", root.display(), changed.join("\n"));
    }
    // a2enmod's state keeps nothing of the module (a2enmod may leave empty state directories,
    // which the guard removes).
    let state = before.under(Path::new(A2_STATE)).differences(&now.under(Path::new(A2_STATE)));
    assert!(!state.iter().any(|l| l.contains("lbmethod_rs")), "{state:?}");
    let restored = guard.restore();
    eprintln!("guard: {restored:?}");
    assert!(!restored.iter().any(|l| l.starts_with("could not") || l.starts_with("still")), "{restored:?}");
}

fn test_site(port: u16, b: &[Backend], logs: &Path) -> String {
    format!(
        "# Written by tests/debian_package.rs, removed after it.\n\
         ErrorLog {logs}/error.log\n\
         <VirtualHost 127.0.0.1:{port}>\n\
         \x20   ServerName 127.0.0.1\n\
         \x20   CustomLog {logs}/access.log combined\n\
         \x20   <Proxy \"balancer://debtest\">\n\
         \x20       BalancerMember \"{a}\" loadfactor=1\n\
         \x20       BalancerMember \"{b}\" loadfactor=2\n\
         \x20       ProxySet lbmethod=byweight\n\
         \x20   </Proxy>\n\
         \x20   ProxyPass \"/lb-status\" \"!\"\n\
         \x20   ProxyPass \"/\" \"balancer://debtest/\"\n\
         </VirtualHost>\n",
        logs = logs.display(),
        a = b[0].url(),
        b = b[1].url(),
    )
}

/// A scratch directory for the logs apache2 writes, removed when dropped (its error log
/// printed first if the test is failing).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("lbrs-deb-{}-{}", std::process::id(), free_port().unwrap()));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("----- {}/error.log -----\n{}", self.0.display(), read(&self.0.join("error.log")));
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The entrypoint's process: stopped (SIGTERM, then SIGKILL to its group) and reaped when
/// dropped, if the test has not seen it exit.
struct Entrypoint {
    child: Option<Child>,
    dir: PathBuf,
}

impl Entrypoint {
    fn start(dir: PathBuf) -> Entrypoint {
        let child = Command::new(workspace().join("docker/entrypoint.sh"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(fs::File::create(dir.join("stderr.log")).unwrap())
            .process_group(0)
            .spawn()
            .expect("run docker/entrypoint.sh");
        Entrypoint { child: Some(child), dir }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn stdout(&self) -> String {
        read(&self.dir.join("stdout.log"))
    }

    fn stderr(&self) -> String {
        read(&self.dir.join("stderr.log"))
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }
}

impl Drop for Entrypoint {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("----- entrypoint stderr -----\n{}", self.stderr());
        }
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            let pid = child.id() as i32;
            os::signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            os::signal_group(pid, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

#[test]
fn the_image_scripts_run_apache_as_the_entrypoint_process_and_sigwinch_lets_requests_finish() {
    let Some(_machine) = machine() else { return };
    let deb = package();
    let mut guard =
        MachineGuard::new(PACKAGE, &[RUN_DIRS[0], RUN_DIRS[1], "/var/www/lbmethod-rs-demo"]).unwrap();
    let _held = ServiceStartsHeld::new().unwrap();
    let scratch = Scratch::new();

    // The image's build step, on free ports.
    let port = free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let backend_ports: Vec<String> = (0..5).map(|_| free_port().unwrap().to_string()).collect();
    let setup = system::run(
        &workspace().join("docker/setup-image.sh").to_string_lossy(),
        &[&deb.to_string_lossy()],
        &[
            ("LBRS_IMAGE_LISTEN", &format!("127.0.0.1:{port}")),
            ("LBRS_IMAGE_BACKEND_PORTS", &backend_ports.join(" ")),
        ],
    )
    .unwrap();
    eprintln!("{setup}");
    assert!(module_enabled("lbmethod_rs"));

    // A slow backend on a port of its own, for a request that is in flight when the stop comes.
    let slow = Backend::start(BackendSpec::new("slow").delay(Duration::from_secs(3))).unwrap();
    let slow_port = free_port().unwrap();
    let slow_addr = SocketAddr::from(([127, 0, 0, 1], slow_port));
    fs::write(
        format!("{APACHE_CONF}/sites-available/lbrs-deb-test-slow.conf"),
        format!(
            "Listen 127.0.0.1:{slow_port}\n<VirtualHost 127.0.0.1:{slow_port}>\n    ProxyPass \"/\" \"{}/\"\n</VirtualHost>\n",
            slow.url()
        ),
    )
    .unwrap();
    system::run("a2ensite", &["-q", "lbrs-deb-test-slow"], &[]).unwrap();

    // The entrypoint execs apache2: the process it started as is apache2 itself.
    let mut entrypoint = Entrypoint::start(scratch.0.clone());
    let pid = entrypoint.pid();
    let health = workspace().join("docker/healthcheck.sh");
    let port_text = port.to_string();
    let healthy = wait_for(Duration::from_secs(30), || {
        entrypoint.exited().is_none()
            && system::run(&health.to_string_lossy(), &[], &[("LBRS_HEALTH_PORT", &port_text)]).is_ok()
    });
    assert!(healthy, "no healthy apache2 on {addr}:\n{}", entrypoint.stderr());
    assert!(
        system::is_live_apache(pid),
        "process {pid} is not apache2: {:?}",
        fs::read_link(format!("/proc/{pid}/exe"))
    );
    let cmdline = read(Path::new(&format!("/proc/{pid}/cmdline"))).replace('\0', " ");
    assert!(cmdline.contains("-DFOREGROUND"), "{cmdline}");
    assert_eq!(system::system_apache_pid(), Some(pid), "the pid file names the entrypoint's process");

    // The image's site: the example's 1:2:3 members, the demo backends; logs on stdout/stderr.
    let shares = tally(addr, "/", 600);
    assert_eq!(
        shares,
        BTreeMap::from([("app1".to_string(), 100), ("app2".to_string(), 200), ("app3".to_string(), 300)])
    );
    let status = status_json(addr);
    assert_eq!(status["balancers"][0]["name"], "balancer://app");
    assert!(
        wait_for(Duration::from_secs(5), || entrypoint.stdout().matches("\"GET / HTTP/1.1\" 200").count()
            >= 600),
        "the access log is not on stdout:\n{}",
        entrypoint.stdout()
    );

    // SIGWINCH (the image's STOPSIGNAL) while a request is in flight: it completes, then
    // apache2 exits by itself.
    let in_flight = thread::spawn(move || client::get(slow_addr, "/"));
    assert!(
        wait_for(Duration::from_secs(5), || slow.stats().inflight == 1),
        "the slow request never arrived"
    );
    let signalled = Instant::now();
    assert!(os::signal(pid as i32, libc::SIGWINCH));
    let refused = wait_for(Duration::from_secs(5), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    });
    assert!(refused, "apache2 still accepts connections after SIGWINCH");
    let response = in_flight.join().unwrap().expect("the request in flight was cut");
    assert_eq!((response.status, response.text().trim()), (200, "slow"));
    let answered = signalled.elapsed();
    assert!(
        wait_for(Duration::from_secs(15), || entrypoint.exited().is_some()),
        "apache2 did not exit after SIGWINCH"
    );
    let exit = entrypoint.exited().unwrap();
    eprintln!(
        "answered {answered:.1?} after SIGWINCH; apache2 exited {:.1?} after it ({exit})",
        signalled.elapsed()
    );
    assert!(exit.success(), "apache2 exited with {exit}:\n{}", entrypoint.stderr());
    let stderr = entrypoint.stderr();
    assert!(stderr.contains("SIGWINCH"), "the error log is not on stderr:\n{stderr}");
    drop(entrypoint);

    // The package's purge (after the site that uses its methods, which it would refuse to
    // leave without them), then the guard puts back the image's configuration changes.
    system::run("a2dissite", &["-q", "lbmethod-rs-example"], &[]).unwrap();
    let purged = system::apt_get(&["purge", PACKAGE]).unwrap();
    eprintln!("{purged}");
    assert!(system::package_absent(PACKAGE), "{}", system::package_status(PACKAGE));
    assert!(!Path::new(MODULES_DIR).join("mod_lbmethod_rs.so").exists());
    assert!(!Path::new(&format!("{APACHE_CONF}/mods-available/lbmethod_rs.load")).exists());
    let restored = guard.restore();
    eprintln!("guard: {restored:?}");
    assert!(!restored.iter().any(|l| l.starts_with("could not") || l.starts_with("still")), "{restored:?}");
}

/// The package at another version: this tree copied, its crate and package versions set to
/// `version`, built by its own scripts/build-deb.sh in this tree's cargo directory (only the
/// module itself compiles again). Returns the .deb, copied to `into`.
fn package_at(version: &str, into: &Path) -> PathBuf {
    let tree = into.join("tree");
    fs::create_dir_all(&tree).unwrap();
    let copied = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' --exclude=./target --exclude=./.git -cf - . | tar -C '{}' -xf -",
            workspace().display(),
            tree.display()
        ))
        .status()
        .unwrap();
    assert!(copied.success());
    let set_version = |file: &str, from: &str, to: &str| {
        let path = tree.join(file);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file}: no {from:?}");
        fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    let current = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
    set_version("Cargo.toml", &current, &format!("version = \"{version}\""));
    set_version(
        "Cargo.lock",
        &format!("name = \"mod_lbmethod_rs\"\n{current}"),
        &format!("name = \"mod_lbmethod_rs\"\nversion = \"{version}\""),
    );
    let changelog = tree.join("debian/changelog");
    let old = fs::read_to_string(&changelog).unwrap();
    fs::write(
        &changelog,
        format!(
            "libapache2-mod-lbmethod-rs ({version}) unstable; urgency=medium\n\n  * A version for the upgrade and \
             rollback test.\n\n -- mod_lbmethod_rs maintainers <maintainers@users.noreply.b-seed-aacf847c.example>  \
             Tue, 01 Dec 2026 00:00:00 +0000\n\n{old}"
        ),
    )
    .unwrap();
    let cargo = workspace().join("target/debian/cargo");
    forget_built_module();
    let output = Command::new(tree.join("scripts/build-deb.sh"))
        .current_dir(&tree)
        .env("LBRS_DEB_CARGO_TARGET", &cargo)
        .env("LBRS_LINTIAN", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/build-deb.sh");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let built = PathBuf::from(String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or("").trim());
    let deb = into.join(built.file_name().unwrap());
    fs::copy(&built, &deb).unwrap();
    fs::remove_dir_all(&tree).unwrap();
    forget_built_module();
    deb
}

/// Both versions of the package build a module of the same file name in the shared cargo
/// directory (a cdylib's has no hash), and cargo, which finds either version's build fresh,
/// would package whichever was built last: without the file, it builds its own again.
fn forget_built_module() {
    let release = workspace().join("target/debian/cargo/release");
    for file in ["libmod_lbmethod_rs.so", "deps/libmod_lbmethod_rs.so"] {
        let _ = fs::remove_file(release.join(file));
    }
}

/// install.md's upgrade and rollback, on this machine's apache2: a newer package installed
/// over a running Apache, then the previous one with --allow-downgrades, each applied with
/// `apachectl -t` and a graceful reload. The same parent serves throughout, in 1:2.
#[test]
fn upgrading_and_rolling_back_the_package_keep_apache_serving() {
    let Some(_machine) = machine() else { return };
    let scratch = Scratch::new();
    let logs = &scratch.0;
    let previous = logs.join(package().file_name().unwrap());
    fs::copy(package(), &previous).unwrap();
    let newer = package_at("0.1.1", logs);

    let mut guard = MachineGuard::new(PACKAGE, &RUN_DIRS).unwrap();
    let _held = ServiceStartsHeld::new().unwrap();
    system::apt_get(&["install", &previous.to_string_lossy()]).unwrap();
    system::run("a2enmod", &["-q", "proxy_http", "lbmethod_rs"], &[]).unwrap();
    let b = backends(&["a", "b"]);
    let port = free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ports_conf = format!("{APACHE_CONF}/ports.conf");
    let original_ports = fs::read(&ports_conf).unwrap();
    fs::write(&ports_conf, format!("Listen 127.0.0.1:{port}\n")).unwrap();
    let site = format!("{APACHE_CONF}/sites-available/lbrs-deb-test.conf");
    fs::write(&site, test_site(port, &b, logs)).unwrap();
    system::run("a2ensite", &["-q", "lbrs-deb-test"], &[]).unwrap();
    system::run("apache2ctl", &["start"], &[]).unwrap();
    let pid = system::retry(Duration::from_secs(30), || {
        system::system_apache_pid().ok_or_else(|| format!("no live apache2 in {SYSTEM_PID_FILE}"))
    })
    .unwrap();
    system::retry(Duration::from_secs(30), || client::get(addr, "/lb-status").map_err(|e| e.to_string()))
        .unwrap();
    let expected = BTreeMap::from([("a".to_string(), 20), ("b".to_string(), 40)]);
    assert_eq!(tally(addr, "/", 60), expected);

    // Upgrade, then roll back, then upgrade again: apt, -t, reload, and the same Apache serves.
    for (deb, version, extra) in
        [(&newer, "0.1.1", None), (&previous, "0.1.0", Some("--allow-downgrades")), (&newer, "0.1.1", None)]
    {
        let mut args = vec!["install"];
        args.extend(extra);
        let path = deb.to_string_lossy();
        args.push(&path);
        system::apt_get(&args).unwrap_or_else(|e| panic!("apt-get {args:?}: {e}"));
        assert_eq!(system::run("dpkg-query", &["-W", "-f=${Version}", PACKAGE], &[]).unwrap(), version);
        let configtest = system::run("apache2ctl", &["configtest"], &[]).unwrap();
        assert!(configtest.contains("Syntax OK"), "{configtest}");
        system::run("apache2ctl", &["graceful"], &[]).unwrap();
        thread::sleep(Duration::from_secs(1));
        assert_eq!(system::system_apache_pid(), Some(pid), "Apache went down after installing {version}");
        assert_eq!(tally(addr, "/", 60), expected, "after installing {version}");
        assert_eq!(status_json(addr)["module_version"], version, "the reload loaded the installed module");
    }

    let stopped = system::run("apache2ctl", &["stop"], &[]).unwrap();
    assert!(system::wait_gone(pid, Duration::from_secs(30)), "apache2 (pid {pid}) still runs: {stopped}");
    system::run("a2dissite", &["-q", "-p", "lbrs-deb-test"], &[]).unwrap();
    fs::remove_file(&site).unwrap();
    fs::write(&ports_conf, original_ports).unwrap();
    system::apt_get(&["purge", PACKAGE]).unwrap();
    let restored = guard.restore();
    assert!(!restored.iter().any(|l| l.starts_with("could not") || l.starts_with("still")), "{restored:?}");
}
