//! A Debian machine of the test's own: this machine's installed apache2 package, its real
//! /etc/apache2 tree (Debian's ports.conf, default modules and sites), its a2enmod state and
//! its module directory, each copied and mounted over the original in a private mount
//! namespace, inside a network namespace of the test's own. Commands run there as a sysadmin
//! runs them (`a2enmod`, `apache2ctl -t`, `apache2ctl graceful`, `curl`), and `Listen 80`
//! binds port 80 of that namespace only.
//!
//! One process (`sleep`) holds both namespaces; every command joins them with `nsenter`. The
//! guard stops Apache there, kills what runs in the network namespace (which ends the mount
//! namespace with it) and removes the copies, also when a test fails. The host's /etc/apache2,
//! /var/lib/apache2, /var/log/apache2, /var/www, /run and module directory are never written.

use crate::netns::{self, Netns, ScratchDir};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directories copied and mounted over their originals: what the package and a sysadmin
/// change.
const PRIVATE_COPIES: [&str; 5] =
    ["/etc/apache2", "/var/lib/apache2", "/usr/lib/apache2/modules", "/var/www", "/var/cache/apache2"];
/// Mounted empty (same owner and mode as the original): the box's logs are its own, and the
/// host's may be large.
const PRIVATE_EMPTY: [&str; 1] = ["/var/log/apache2"];

/// Why this machine cannot give a test a Debian box, if it cannot.
pub fn unavailable() -> Option<String> {
    if !netns::is_root() {
        return Some("needs root (namespaces)".into());
    }
    for program in ["nsenter", "unshare", "apache2ctl", "a2enmod", "curl"] {
        if crate::ha::installed(program).is_none() {
            return Some(format!("{program} is not installed"));
        }
    }
    PRIVATE_COPIES
        .iter()
        .chain(&PRIVATE_EMPTY)
        .find(|d| !Path::new(d).is_dir())
        .map(|d| format!("{d} is missing: the apache2 package is not installed"))
}

pub struct DebianBox {
    holder: Child,
    // Dropped in this order: deleting the namespace kills what still runs in it, then the
    // copies go.
    ns: Netns,
    scratch: ScratchDir,
}

impl DebianBox {
    /// A box named after `tag` (unique within the test process).
    pub fn create(tag: &str) -> Result<DebianBox, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        netns::clean_stale();
        let ns = Netns::create(&netns::name(tag, "debian"))?;
        let scratch = ScratchDir::new()?;
        let mut script = String::from("set -e\n");
        for (n, dir) in PRIVATE_COPIES.iter().enumerate() {
            let copy = scratch.path().join(format!("copy{n}"));
            // cp -a keeps owners, modes and the -enabled symlinks as they are.
            let status = Command::new("cp")
                .arg("-a")
                .arg(dir)
                .arg(&copy)
                .status()
                .map_err(|e| format!("cp {dir}: {e}"))?;
            if !status.success() {
                return Err(format!("cannot copy {dir}"));
            }
            script.push_str(&format!("mount --bind '{}' '{dir}'\n", copy.display()));
        }
        for (n, dir) in PRIVATE_EMPTY.iter().enumerate() {
            let empty = scratch.path().join(format!("empty{n}"));
            // An empty directory with the original's owner and mode.
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "mkdir '{e}' && chown --reference='{dir}' '{e}' && chmod --reference='{dir}' '{e}'",
                    e = empty.display()
                ))
                .status()
                .map_err(|e| format!("mkdir {}: {e}", empty.display()))?;
            if !status.success() {
                return Err(format!("cannot make an empty {dir}"));
            }
            script.push_str(&format!("mount --bind '{}' '{dir}'\n", empty.display()));
        }
        // /run (and /var/run, /var/lock through their symlinks) of its own: apache2ctl creates
        // /run/apache2 and /run/lock/apache2 there.
        script.push_str("mount -t tmpfs -o mode=755 tmpfs /run\nmkdir -p /run/lock\nchmod 1777 /run/lock\n");
        let ready = scratch.path().join("ready");
        script.push_str(&format!("touch '{}'\nexec sleep infinity\n", ready.display()));
        let holder = ns
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the namespace holder: {e}"))?;
        let mut debian = DebianBox { holder, ns, scratch };
        let started = Instant::now();
        while !ready.exists() {
            if let Ok(Some(status)) = debian.holder.try_wait() {
                let mut err = String::new();
                if let Some(mut pipe) = debian.holder.stderr.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut err);
                }
                return Err(format!("the namespace holder ended ({status}): {err}"));
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err("the namespace holder did not get ready within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(debian)
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// A scratch directory outside the box's private mounts, visible inside too.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// A command that runs `program` inside the box. `APACHE_STARTED_BY_SYSTEMD` as Debian's
    /// apache2.service sets it: the box shares the host's process numbers, and on a host whose
    /// process 1 is systemd, apache2ctl would otherwise hand `start` to the host's systemctl.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command.args(["-t", &self.holder.id().to_string(), "-m", "-n", "--", program]);
        command.env("APACHE_STARTED_BY_SYSTEMD", "true");
        command
    }

    /// Runs a shell script inside the box, for at most 60 s.
    pub fn sh(&self, script: &str) -> Result<Output, String> {
        netns::run(self.command("sh").args(["-c", script]), Duration::from_secs(60))
    }

    /// Runs a shell script inside the box; its stdout and stderr together, or an error that
    /// shows them when it fails.
    pub fn ok(&self, script: &str) -> Result<String, String> {
        let output = self.sh(script)?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("`{script}` failed ({}):\n{text}", output.status))
        }
    }

    /// A box for a procedure of the guide, or `None` (saying why) where this machine cannot
    /// give one: the module under test installed (not enabled), and the package's defaults
    /// whatever this machine's own Apache has enabled: only Debian's default site, and no stock
    /// lbmethod module.
    pub fn for_procedures(tag: &str) -> Option<DebianBox> {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return None;
        }
        let debian = match DebianBox::create(tag).and_then(|d| d.install_module().map(|()| d)) {
            Ok(debian) => debian,
            Err(why) => panic!("a Debian box: {why}"),
        };
        let defaults = debian.ok(
            "for site in /etc/apache2/sites-enabled/*.conf; do a2dissite -q \"$(basename \"$site\" .conf)\"; done; \
             a2ensite -q 000-default; \
             for m in lbmethod_byrequests lbmethod_bybusyness lbmethod_bytraffic lbmethod_heartbeat; do \
                 a2dismod -q -f $m >/dev/null 2>&1 || true; done",
        );
        if let Err(why) = defaults {
            panic!("resetting the box to the package's defaults: {why}");
        }
        Some(debian)
    }

    /// Installs the module under test the way scripts/install.sh does: the .so into the
    /// module directory, the .load and .conf into mods-available. It enables nothing.
    pub fn install_module(&self) -> Result<(), String> {
        let module = crate::apache::module_under_test();
        let root = crate::recipe::workspace_root();
        self.ok(&format!(
            "install -m 644 '{}' /usr/lib/apache2/modules/mod_lbmethod_rs.so && \
             install -m 644 '{}' '{}' /etc/apache2/mods-available/",
            module.display(),
            root.join("httpd-conf/lbmethod_rs.load").display(),
            root.join("httpd-conf/lbmethod_rs.conf").display()
        ))
        .map(drop)
    }

    /// Writes `text` to `path` inside the box (a file of its private /etc/apache2, say).
    pub fn write(&self, path: &str, text: &str) -> Result<(), String> {
        let staged = self.scratch.path().join("staged");
        fs::write(&staged, text).map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
        self.ok(&format!("cp '{}' '{path}'", staged.display())).map(drop)
    }

    /// Reads `path` inside the box.
    pub fn read(&self, path: &str) -> Result<String, String> {
        self.ok(&format!("cat '{path}'"))
    }

    /// The main Apache process of the box, if one runs.
    pub fn apache_pid(&self) -> Option<u32> {
        let pid = self.read("/run/apache2/apache2.pid").ok()?.trim().parse::<u32>().ok()?;
        crate::system::is_live_apache(pid).then_some(pid)
    }

    /// The box's Apache error log.
    pub fn error_log(&self) -> String {
        self.read("/var/log/apache2/error.log").unwrap_or_default()
    }

    /// `curl` inside the box: status code and body (`-k`: the box's certificates are its own).
    pub fn curl(&self, args: &str) -> Result<(u16, String), String> {
        let out = self.ok(&format!("curl -ks --max-time 10 -w '\\n%{{http_code}}' {args}"))?;
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        let code = code.trim().parse().map_err(|_| format!("curl {args}: no status in {out:?}"))?;
        Ok((code, body.to_string()))
    }

    /// Where the box's copy of `dir` (one of the private copies) is, seen from outside.
    pub fn outside(&self, dir: &str) -> Option<PathBuf> {
        let copy = PRIVATE_COPIES.iter().position(|d| *d == dir).map(|n| format!("copy{n}"));
        let empty = PRIVATE_EMPTY.iter().position(|d| *d == dir).map(|n| format!("empty{n}"));
        copy.or(empty).map(|name| self.scratch.path().join(name))
    }
}

impl Drop for DebianBox {
    fn drop(&mut self) {
        // A graceful end for Apache first (its shared memory and sockets), then everything.
        if self.apache_pid().is_some() {
            let _ = self.sh("apache2ctl stop");
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.apache_pid().is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
