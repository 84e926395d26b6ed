//! The machine's own Apache, for the tests of the Debian package and the container image:
//! apt-get, apache2ctl and the system instance's pid file, and a guard that puts
//! `/etc/apache2`, the module directory and a2enmod's state back as they were, whatever happens.
//!
//! Other tests run their own apache2 at the same time (`-f` on a scratch directory). Nothing
//! here signals an apache2 other than the one the system pid file names, after checking that
//! it is an apache2.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// What the Debian package touches, and a2enmod's state, which enabling it touches.
pub const APACHE_CONF: &str = "/etc/apache2";
pub const MODULES_DIR: &str = "/usr/lib/apache2/modules";
pub const A2_STATE: &str = "/var/lib/apache2";
/// The system instance's pid file (`APACHE_PID_FILE` in /etc/apache2/envvars).
pub const SYSTEM_PID_FILE: &str = "/var/run/apache2/apache2.pid";
/// Debian's hook that tells maintainer scripts whether they may start services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub use crate::os::is_root;

/// Runs a program; its stdout and stderr together if it succeeds, else an error that shows them.
pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("`{program} {}` failed ({}):\n{text}", args.join(" "), output.status))
    }
}

/// apt-get, non-interactive, waiting for the dpkg lock rather than failing on it.
pub fn apt_get(args: &[&str]) -> Result<String, String> {
    let mut full = vec!["-o", "DPkg::Lock::Timeout=300", "-y", "-q"];
    full.extend_from_slice(args);
    run("apt-get", &full, &[("DEBIAN_FRONTEND", "noninteractive")])
}

/// `dpkg-query`'s status of a package, "" when dpkg never heard of it.
pub fn package_status(package: &str) -> String {
    run("dpkg-query", &["-W", "-f=${Status}", package], &[]).unwrap_or_default()
}

/// Whether dpkg has no trace of `package` (never installed, or purged).
pub fn package_absent(package: &str) -> bool {
    matches!(package_status(package).as_str(), "" | "unknown ok not-installed")
}

/// Why the machine is not fit for a test that installs `package` into the system's apache2 and
/// removes it again, if it is not: not root, no apache2, the package or files of the module
/// already there (scripts/install.sh's), or the system apache2 running. The test must leave
/// all of these as they are, so it does not run.
pub fn unfit_for_package_test(package: &str) -> Option<String> {
    if !is_root() {
        return Some("needs root: it installs a package into the system's apache2".into());
    }
    if !Path::new("/usr/sbin/apache2ctl").exists() || !Path::new(APACHE_CONF).is_dir() {
        return Some("needs the system's apache2 (apt-get install apache2)".into());
    }
    let status = package_status(package);
    if !status.is_empty() && status != "unknown ok not-installed" {
        return Some(format!(
            "{package} is on this machine already ({status}); it is not the test's to remove"
        ));
    }
    for path in [
        format!("{MODULES_DIR}/mod_lbmethod_rs.so"),
        format!("{APACHE_CONF}/mods-available/lbmethod_rs.load"),
        format!("{APACHE_CONF}/mods-available/lbmethod_rs.conf"),
    ] {
        if Path::new(&path).exists() {
            return Some(format!("{path} exists (scripts/install.sh?); it is not the test's to remove"));
        }
    }
    if let Some(pid) = system_apache_pid() {
        return Some(format!(
            "the system apache2 is running (pid {pid}); the test would need its port and pid file"
        ));
    }
    None
}

/// Keeps maintainer scripts from starting or restarting services while it lives (Debian's
/// policy-rc.d, as scripts/setup.sh does), unless the machine has a policy of its own.
pub struct ServiceStartsHeld {
    made: bool,
}

impl ServiceStartsHeld {
    pub fn new() -> io::Result<ServiceStartsHeld> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(ServiceStartsHeld { made: false });
        }
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# Written by mod_lbmethod_rs's tests, removed after them.\nexit 101\n",
        )?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))?;
        Ok(ServiceStartsHeld { made: true })
    }
}

impl Drop for ServiceStartsHeld {
    fn drop(&mut self) {
        if self.made {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
}

/// The pid the system pid file names, if that process is a live apache2.
pub fn system_apache_pid() -> Option<u32> {
    let pid: u32 = fs::read_to_string(SYSTEM_PID_FILE).ok()?.trim().parse().ok()?;
    is_live_apache(pid).then_some(pid)
}

/// Whether `pid` is a live (not zombie) apache2 process.
pub fn is_live_apache(pid: u32) -> bool {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    exe.file_name().is_some_and(|name| name == "apache2") && process_state(pid).is_some_and(|s| s != 'Z')
}

/// A process's state letter (R, S, Z...) from /proc, `None` when it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().next()?.chars().next()
}

fn process_group(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command: state, ppid, pgrp.
    stat.rsplit(')').next()?.split_whitespace().nth(2)?.parse().ok()
}

/// Waits until `pid` is gone (or a zombie nobody reaps), for at most `within`.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    crate::wait_for(within, || process_state(pid).is_none_or(|s| s == 'Z'))
}

/// Stops the system apache2 if it runs: `apache2ctl stop`, then, if it is still there after
/// 20 s, SIGKILL to its process group (it leads its own session). Returns what it did.
pub fn stop_system_apache() -> Option<String> {
    let pid = system_apache_pid()?;
    let said = run("apache2ctl", &["stop"], &[]).unwrap_or_else(|e| e);
    if wait_gone(pid, Duration::from_secs(20)) {
        return Some(format!("stopped the system apache2 (pid {pid}): {}", said.trim()));
    }
    if is_live_apache(pid) {
        // SAFETY: signalling a process checked just above to be the system apache2, and its
        // group only when it leads it.
        unsafe {
            if process_group(pid) == Some(pid) {
                libc::killpg(pid as i32, libc::SIGKILL);
            } else {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        wait_gone(pid, Duration::from_secs(5));
    }
    Some(format!("killed the system apache2 (pid {pid}): `apache2ctl stop` did not stop it"))
}

/// One file system entry as the snapshot records it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File { len: u64, hash: u64 },
    Link(PathBuf),
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A listing of directory trees with a hash of every file's contents, to tell whether they
/// are as they were.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Snapshot {
    /// Every entry under each root (roots that do not exist have none). Symbolic links are
    /// recorded, not followed.
    pub fn take(roots: &[&Path]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for root in roots {
            snapshot.walk(root);
        }
        snapshot
    }

    fn walk(&mut self, path: &Path) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        let kind = if meta.file_type().is_symlink() {
            Kind::Link(fs::read_link(path).unwrap_or_default())
        } else if meta.is_dir() {
            Kind::Dir
        } else if meta.is_file() {
            let mut hasher = DefaultHasher::new();
            hasher.write(&fs::read(path).unwrap_or_default());
            Kind::File { len: meta.len(), hash: hasher.finish() }
        } else {
            Kind::Other
        };
        let is_dir = kind == Kind::Dir;
        let entry = Entry { kind, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() };
        self.entries.insert(path.to_path_buf(), entry);
        if is_dir && let Ok(children) = fs::read_dir(path) {
            for child in children.flatten() {
                self.walk(&child.path());
            }
        }
    }

    /// The entries under `root` only.
    pub fn under(&self, root: &Path) -> Snapshot {
        let entries = self
            .entries
            .iter()
            .filter(|(path, _)| path.starts_with(root))
            .map(|(p, e)| (p.clone(), e.clone()));
        Snapshot { entries: entries.collect() }
    }

    /// What differs in `now`, one line per path: `+` added, `-` removed, `~` changed.
    pub fn differences(&self, now: &Snapshot) -> Vec<String> {
        let mut lines = Vec::new();
        for (path, entry) in &self.entries {
            match now.entries.get(path) {
                None => lines.push(format!("- {}", path.display())),
                Some(other) if other != entry => {
                    lines.push(format!("~ {} (was {entry:?}, now {other:?})", path.display()))
                }
                Some(_) => {}
            }
        }
        for path in now.entries.keys().filter(|p| !self.entries.contains_key(*p)) {
            lines.push(format!("+ {}", path.display()));
        }
        lines
    }

    /// Whether `path` was recorded.
    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }
}

/// Puts the machine back as it was when it was made: stops the system apache2, purges the
/// package, restores `/etc/apache2`, the module directory and a2enmod's state (from a copy
/// taken at the start) wherever they differ, and removes the paths it was told did not exist.
/// Dropping it does all this unless [`MachineGuard::restore`] already has.
pub struct MachineGuard {
    package: String,
    roots: Vec<PathBuf>,
    before: Snapshot,
    backup: PathBuf,
    /// Paths that did not exist at the start and must not exist at the end.
    absent: Vec<PathBuf>,
    restored: bool,
}

impl MachineGuard {
    /// Records the machine's state. `absent` lists further paths the test may create (the
    /// run directories apache2ctl makes, files a setup script writes): those that do not exist
    /// now are removed at the end.
    pub fn new(package: &str, absent: &[&str]) -> Result<MachineGuard, String> {
        let roots: Vec<PathBuf> = [APACHE_CONF, MODULES_DIR, A2_STATE].iter().map(PathBuf::from).collect();
        let before = Snapshot::take(&roots.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        let backup = crate::apache::scratch_dir().map_err(|e| format!("no scratch directory: {e}"))?;
        for (i, root) in roots.iter().enumerate() {
            if root.exists() {
                run(
                    "cp",
                    &["-a", &root.to_string_lossy(), &backup.join(i.to_string()).to_string_lossy()],
                    &[],
                )?;
            }
        }
        let absent = absent.iter().map(PathBuf::from).filter(|p| fs::symlink_metadata(p).is_err()).collect();
        Ok(MachineGuard { package: package.to_string(), roots, before, backup, absent, restored: false })
    }

    /// The state at the start.
    pub fn before(&self) -> &Snapshot {
        &self.before
    }

    /// The same trees now.
    pub fn now(&self) -> Snapshot {
        Snapshot::take(&self.roots.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    }

    /// Puts everything back. Returns what it had to do, and what it could not.
    pub fn restore(&mut self) -> Vec<String> {
        self.restored = true;
        let mut done = Vec::new();
        done.extend(stop_system_apache());
        if !package_absent(&self.package) {
            let status = package_status(&self.package);
            let _held = ServiceStartsHeld::new();
            // Whatever the test left enabled: the package refuses removal while the
            // configuration uses it, and the guard restores the configuration after.
            match run(
                "apt-get",
                &["-o", "DPkg::Lock::Timeout=300", "-y", "-q", "purge", &self.package],
                &[("DEBIAN_FRONTEND", "noninteractive"), ("LBRS_FORCE_REMOVE", "1")],
            ) {
                Ok(_) => done.push(format!("purged {} ({status})", self.package)),
                Err(e) => done.push(format!("could not purge {}: {e}", self.package)),
            }
        }
        let now = self.now();
        // Added entries go first, deepest first; then what was there comes back, parents first.
        for (path, _) in now.entries.iter().rev().filter(|(p, _)| !self.before.entries.contains_key(*p)) {
            done.extend(remove_any(path));
        }
        for (path, entry) in &self.before.entries {
            if now.entries.get(path) == Some(entry) {
                continue;
            }
            done.push(match self.put_back(path, entry) {
                Ok(()) => format!("restored {}", path.display()),
                Err(e) => format!("could not restore {}: {e}", path.display()),
            });
        }
        for path in &self.absent {
            done.extend(remove_any(path));
        }
        let left = self.before.differences(&self.now());
        if !left.is_empty() {
            done.push(format!("still different after restoring:\n  {}", left.join("\n  ")));
        }
        done
    }

    /// Puts one recorded entry back from the copy.
    fn put_back(&self, path: &Path, entry: &Entry) -> io::Result<()> {
        let copy = self.backup_path(path).ok_or_else(|| io::Error::other("not under a recorded root"))?;
        if let Ok(meta) = fs::symlink_metadata(path) {
            let same_kind = meta.is_dir() && entry.kind == Kind::Dir;
            if !same_kind {
                if meta.is_dir() { fs::remove_dir_all(path)? } else { fs::remove_file(path)? }
            }
        }
        match &entry.kind {
            Kind::Dir => fs::create_dir_all(path)?,
            Kind::Link(target) => symlink(target, path)?,
            Kind::File { .. } | Kind::Other => {
                fs::copy(&copy, path)?;
            }
        }
        lchown(path, Some(entry.uid), Some(entry.gid))?;
        if !matches!(entry.kind, Kind::Link(_)) {
            fs::set_permissions(path, fs::Permissions::from_mode(entry.mode))?;
        }
        Ok(())
    }

    fn backup_path(&self, path: &Path) -> Option<PathBuf> {
        let (i, root) = self.roots.iter().enumerate().find(|(_, root)| path.starts_with(root))?;
        Some(self.backup.join(i.to_string()).join(path.strip_prefix(root).ok()?))
    }
}

impl Drop for MachineGuard {
    fn drop(&mut self) {
        if !self.restored {
            for line in self.restore() {
                eprintln!("machine guard: {line}");
            }
        }
        let _ = fs::remove_dir_all(&self.backup);
    }
}

/// Runs `attempt` every 100 ms until it succeeds, for at most `within`; its last error if it
/// never does.
pub fn retry<T>(within: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Removes `path`, a directory with what it holds or anything else, saying what happened;
/// `None` when there was nothing there.
fn remove_any(path: &Path) -> Option<String> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return None,
    };
    Some(match removed {
        Ok(()) => format!("removed {}", path.display()),
        Err(e) => format!("could not remove {}: {e}", path.display()),
    })
}

/// The Debian package, built by `scripts/build-deb.sh` (which also runs lintian when `lintian`),
/// for the tests of the package and of the container image: its path. Panics, with the
/// script's output, when it fails or takes longer than `within`.
pub fn build_package(lintian: bool, within: Duration) -> PathBuf {
    let started = Instant::now();
    let root = crate::recipe::workspace_root();
    let mut command = Command::new(root.join("scripts/build-deb.sh"));
    command.current_dir(&root).env("LBRS_LINTIAN", if lintian { "1" } else { "0" });
    let output = crate::netns::run(&mut command, within).unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/build-deb.sh failed ({}):\n{stderr}", output.status);
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or("").trim());
    assert!(deb.is_file(), "scripts/build-deb.sh printed no package: {deb:?}\n{stderr}");
    eprintln!("built {} in {:.0?}", deb.display(), started.elapsed());
    deb
}
