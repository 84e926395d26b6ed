//! Runs Debian's real `apache2` with a generated configuration in a temporary directory, on a
//! free loopback port (or a chosen one), in the foreground as a child of the test. Dropping the
//! guard stops it (and its whole process group) and reaps it; if the test is failing, the error
//! log is printed first.

use crate::client::{self, Response};
use crate::os;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The apache2 binary: `$LBRS_APACHE2`, else Debian's.
pub fn apache2_binary() -> PathBuf {
    std::env::var_os("LBRS_APACHE2").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/apache2"))
}

/// Where httpd's modules are (`apxs -q LIBEXECDIR`), overridable with `$LBRS_MODULES_DIR`.
pub fn modules_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LBRS_MODULES_DIR") {
        return PathBuf::from(dir);
    }
    Command::new("apxs")
        .args(["-q", "LIBEXECDIR"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|dir| dir.join("mod_proxy.so").is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/lib/apache2/modules"))
}

/// The module under test: `$LBRS_MODULE` (for example an installed module), else the one in
/// this workspace, built first with the profile of the running binary. Cargo does not build a
/// cdylib-only package for its integration tests, so without this a test could load a stale
/// module.
pub fn module_under_test() -> PathBuf {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE
        .get_or_init(|| match std::env::var_os("LBRS_MODULE") {
            Some(path) => PathBuf::from(path),
            None => build_module(),
        })
        .clone()
}

fn build_module() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut profile_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let profile = if profile == "debug" { "dev" } else { profile };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO"))
        .args(["build", "--lib", "-p", "mod_lbmethod_rs", "--profile", profile, "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .output();
    match output {
        Ok(output) if output.status.success() => profile_dir.join("libmod_lbmethod_rs.so"),
        Ok(output) => panic!("building the module failed:\n{}", String::from_utf8_lossy(&output.stderr)),
        Err(err) => panic!("cannot run cargo to build the module: {err}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mpm {
    Event,
    Worker,
    Prefork,
}

impl Mpm {
    pub fn name(self) -> &'static str {
        match self {
            Mpm::Event => "event",
            Mpm::Worker => "worker",
            Mpm::Prefork => "prefork",
        }
    }
}

/// Where this module's LoadModule goes relative to mod_proxy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOrder {
    BeforeProxy,
    AfterProxy,
    /// Not loaded at all (to run the built-in methods alone).
    NotLoaded,
}

#[derive(Clone, Debug)]
pub struct ApacheConfig {
    pub mpm: Mpm,
    /// Child processes to keep (prefork: processes; event/worker: processes of `threads` each).
    pub processes: u32,
    pub threads: u32,
    pub load_order: LoadOrder,
    pub module: PathBuf,
    pub log_level: String,
    /// Extra modules by short name (`proxy_hcheck` loads `mod_proxy_hcheck.so`).
    pub extra_modules: Vec<String>,
    /// Site configuration: balancers, ProxyPass lines, anything else.
    pub body: String,
    /// The loopback port to listen on; `None` (the default) takes a free one.
    pub port: Option<u16>,
    /// A program to run apache2 under (`valgrind ...`): apache2 then runs as one process
    /// (`-X`), and gets two minutes to start.
    pub under: Vec<String>,
    /// `Listen` arguments that replace the loopback port (e.g. `80`, `198.18.0.100:80`), for
    /// a server in a network namespace.
    pub listen: Vec<String>,
    /// Load httpd's own lbmethod modules (byrequests, bybusyness); Debian enables none of them.
    pub stock_methods: bool,
}

impl ApacheConfig {
    pub fn new(body: &str) -> ApacheConfig {
        ApacheConfig {
            mpm: Mpm::Event,
            processes: 3,
            threads: 16,
            load_order: LoadOrder::AfterProxy,
            module: module_under_test(),
            log_level: "warn lbmethod_rs:info".to_string(),
            extra_modules: Vec::new(),
            body: body.to_string(),
            port: None,
            under: Vec::new(),
            listen: Vec::new(),
            stock_methods: true,
        }
    }

    /// Without httpd's own lbmethod modules, as on a Debian box where only this module's are
    /// enabled.
    pub fn without_stock_methods(mut self) -> ApacheConfig {
        self.stock_methods = false;
        self
    }

    pub fn mpm(mut self, mpm: Mpm) -> ApacheConfig {
        self.mpm = mpm;
        if mpm == Mpm::Prefork {
            self.processes = self.processes.max(6);
        }
        self
    }

    pub fn processes(mut self, processes: u32) -> ApacheConfig {
        self.processes = processes;
        self
    }

    pub fn threads(mut self, threads: u32) -> ApacheConfig {
        self.threads = threads;
        self
    }

    pub fn load_order(mut self, order: LoadOrder) -> ApacheConfig {
        self.load_order = order;
        self
    }

    pub fn log_level(mut self, level: &str) -> ApacheConfig {
        self.log_level = level.to_string();
        self
    }

    pub fn with_module(mut self, name: &str) -> ApacheConfig {
        self.extra_modules.push(name.to_string());
        self
    }

    /// Listens on this loopback port instead of a free one.
    pub fn port(mut self, port: u16) -> ApacheConfig {
        self.port = Some(port);
        self
    }

    /// Adds a `Listen` line; once there is one, the loopback port is not listened on.
    pub fn listen(mut self, address: &str) -> ApacheConfig {
        self.listen.push(address.to_string());
        self
    }

    /// The whole httpd.conf for a server rooted at `dir` listening on `port`.
    pub fn render(&self, dir: &Path, port: u16) -> String {
        let modules = modules_dir();
        let load = |name: &str| format!("LoadModule {name}_module {}/mod_{name}.so\n", modules.display());
        let ours = format!("LoadModule lbmethod_rs_module {}\n", self.module.display());
        let mut conf = String::new();
        conf.push_str(&format!(
            "ServerRoot {dir}\nDefaultRuntimeDir {dir}\nPidFile {dir}/httpd.pid\nErrorLog {dir}/error.log\n\
             LogLevel {level}\nServerName 127.0.0.1\nTimeout 30\n",
            dir = dir.display(),
            level = self.log_level,
        ));
        // Debian builds mod_unixd (User, Group) into httpd; a build from source has it as a module.
        if modules.join("mod_unixd.so").is_file() {
            conf.push_str(&load("unixd"));
        }
        if self.listen.is_empty() {
            conf.push_str(&format!("Listen 127.0.0.1:{port}\n"));
        }
        for address in &self.listen {
            conf.push_str(&format!("Listen {address}\n"));
        }
        if os::is_root() {
            conf.push_str("User www-data\nGroup www-data\n");
        }
        conf.push_str(&load(&format!("mpm_{}", self.mpm.name())));
        conf.push_str(&self.mpm_settings());
        for name in ["authz_core", "authz_host"] {
            conf.push_str(&load(name));
        }
        if self.load_order == LoadOrder::BeforeProxy {
            conf.push_str(&ours);
        }
        for name in ["proxy", "proxy_http", "proxy_balancer", "slotmem_shm"] {
            conf.push_str(&load(name));
        }
        if self.stock_methods {
            conf.push_str(&load("lbmethod_byrequests"));
            conf.push_str(&load("lbmethod_bybusyness"));
        }
        for name in &self.extra_modules {
            conf.push_str(&load(name));
        }
        if self.load_order == LoadOrder::AfterProxy {
            conf.push_str(&ours);
        }
        conf.push_str(concat!(
            "ProxyPass /lb-status !\nProxyPass /balancer-manager !\n",
            "<Location \"/lb-status\">\n    SetHandler lbmethod-rs-status\n    Require local\n</Location>\n",
            "<Location \"/balancer-manager\">\n    SetHandler balancer-manager\n    Require local\n</Location>\n",
        ));
        if self.load_order == LoadOrder::NotLoaded {
            // Without the module its handler does not exist; answer 404 rather than fail.
            conf = conf.replace("    SetHandler lbmethod-rs-status\n", "");
        }
        conf.push_str(&self.body);
        conf.push('\n');
        conf
    }

    fn mpm_settings(&self) -> String {
        let p = self.processes.max(1);
        match self.mpm {
            Mpm::Prefork => format!(
                "StartServers {p}\nMinSpareServers {p}\nMaxSpareServers {}\nServerLimit {}\nMaxRequestWorkers {}\n",
                p + 4,
                p + 4,
                p + 4
            ),
            Mpm::Event | Mpm::Worker => {
                // ServerLimit leaves room for a second generation: after a graceful restart the
                // old children finish their requests while the new ones start.
                let t = self.threads.max(1);
                format!(
                    "StartServers {p}\nServerLimit {}\nThreadLimit {t}\nThreadsPerChild {t}\nMaxRequestWorkers {}\n\
                     MinSpareThreads {}\nMaxSpareThreads {}\n",
                    2 * p + 2,
                    (p + 1) * t,
                    p * t,
                    (p + 1) * t
                )
            }
        }
    }
}

/// A running apache2.
pub struct Apache {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    pub config: ApacheConfig,
}

impl Apache {
    /// Starts apache2 and waits (at most 30 s) until it answers.
    pub fn start(config: ApacheConfig) -> Result<Apache, String> {
        let dir = scratch_dir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        let port = match config.port {
            Some(port) => port,
            None => free_port().map_err(|e| format!("no free port: {e}"))?,
        };
        let conf_path = dir.join("httpd.conf");
        fs::write(&conf_path, config.render(&dir, port)).map_err(|e| format!("cannot write config: {e}"))?;
        let mut command = match config.under.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(apache2_binary()).arg("-X");
                command
            }
            None => Command::new(apache2_binary()),
        };
        let child = command
            .arg("-f")
            .arg(&conf_path)
            .args(["-D", "FOREGROUND"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", apache2_binary().display()))?;
        let within = Duration::from_secs(if config.under.is_empty() { 30 } else { 120 });
        let mut apache = Apache { child: Some(child), dir, port, config };
        apache.wait_ready(1, within)?;
        Ok(apache)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, path: &str) -> io::Result<Response> {
        client::get(self.addr(), path)
    }

    /// The status page's JSON.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let response = self.get("/lb-status?format=json").map_err(|e| e.to_string())?;
        if response.status != 200 {
            return Err(format!("status page answered {}: {}", response.status, response.text()));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("status page JSON: {e}"))
    }

    /// One member's entry on the status page (`balancer` like "balancer://app").
    pub fn member_status(&self, balancer: &str, member_url: &str) -> Result<serde_json::Value, String> {
        let status = self.status()?;
        status["balancers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["name"] == balancer)
            .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
            .find(|m| m["name"] == member_url)
            .ok_or_else(|| format!("{member_url} of {balancer} is not on the status page"))
    }

    pub fn error_log(&self) -> String {
        let mut log = fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        log.push_str(&fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default());
        log
    }

    /// Graceful restart (`apachectl -k graceful`: SIGUSR1), waiting for the new generation.
    pub fn graceful(&mut self) -> Result<(), String> {
        let generations = self.generations();
        self.signal(libc::SIGUSR1)?;
        self.wait_ready(generations + 1, Duration::from_secs(30))
    }

    /// Rewrites the site configuration and restarts gracefully.
    pub fn reconfigure(&mut self, body: &str) -> Result<(), String> {
        self.config.body = body.to_string();
        fs::write(self.dir.join("httpd.conf"), self.config.render(&self.dir, self.port))
            .map_err(|e| e.to_string())?;
        self.graceful()
    }

    /// Configuration generations started so far (httpd logs one line per generation).
    fn generations(&self) -> usize {
        self.error_log().matches("resuming normal operations").count()
    }

    fn signal(&self, signal: i32) -> Result<(), String> {
        let pid = self.pid().ok_or("apache is not running")?;
        if !os::signal(pid as i32, signal) {
            return Err(format!("kill({pid}, {signal}): {}", io::Error::last_os_error()));
        }
        Ok(())
    }

    fn wait_ready(&mut self, generations: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("apache2 exited ({status}) while starting:\n{}", self.error_log()));
            }
            // One process (-X) logs no generation line: answering is enough.
            let started = !self.config.under.is_empty() || self.generations() >= generations;
            if started && self.get("/lb-status").is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("apache2 did not answer within {within:?}:\n{}", self.error_log()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// PIDs of apache2's current child processes.
    pub fn children(&self) -> Vec<u32> {
        let Some(parent) = self.pid() else {
            return Vec::new();
        };
        let mut children = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return children;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the command name (which is in parentheses): state, ppid, ...
            let Some(rest) = stat.rsplit(')').next() else {
                continue;
            };
            if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
                children.push(pid);
            }
        }
        children
    }

    /// Stops apache2 and every child it forked, and reaps it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_group(child);
        }
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("----- apache2 error log ({}) -----\n{}", self.dir.display(), self.error_log());
        }
        self.stop();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `apache2 -t` on `config`; returns whether it passed and what it printed.
pub fn config_test(config: &ApacheConfig) -> (bool, String) {
    let Ok(dir) = scratch_dir() else {
        return (false, "no scratch directory".into());
    };
    let conf_path = dir.join("httpd.conf");
    if fs::write(&conf_path, config.render(&dir, 1)).is_err() {
        return (false, "cannot write config".into());
    }
    let output = Command::new(apache2_binary()).arg("-t").arg("-f").arg(&conf_path).output();
    let _ = fs::remove_dir_all(&dir);
    match output {
        Ok(output) => (
            output.status.success(),
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        ),
        Err(err) => (false, format!("cannot run apache2: {err}")),
    }
}

/// Sets member parameters through balancer-manager, as an admin's browser would (nonce and
/// same-host Referer included). `params` are balancer-manager's form fields, e.g. `("w_lf", "4")`.
pub fn balancer_manager_set(
    apache: &Apache,
    balancer: &str,
    member_url: &str,
    params: &[(&str, &str)],
) -> Result<(), String> {
    let page = apache.get(&format!("/balancer-manager?b={balancer}")).map_err(|e| e.to_string())?.text();
    // Each balancer has its own nonce: take the one in a link to this balancer's members.
    let own = page.find(&format!("?b={balancer}&amp;")).map_or(page.as_str(), |at| &page[at..]);
    let nonce = own
        .split("nonce=")
        .nth(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '-').collect::<String>())
        .filter(|n| !n.is_empty())
        .ok_or("no nonce on the balancer-manager page")?;
    let mut form = format!("b={balancer}&w={}&nonce={nonce}", url_encode(member_url));
    for (name, value) in params {
        form.push_str(&format!("&{name}={}", url_encode(value)));
    }
    let response = client::request(
        apache.addr(),
        "POST",
        "/balancer-manager",
        &[
            ("Referer", "http://127.0.0.1/balancer-manager"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("balancer-manager answered {}", response.status));
    }
    Ok(())
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A fresh directory under the system temp dir, world-readable so apache2's children can
/// reach it after dropping root.
/// Stops a server started as the leader of its own process group (`process_group(0)`):
/// SIGTERM (the graceful-enough stop of apache2, haproxy and nginx), SIGKILL to the whole group
/// after 10 s, and reaps it. Children that outlived their parent are killed with the group: they
/// would keep ports and shared memory.
pub(crate) fn stop_group(mut child: Child) {
    let pid = child.id() as i32;
    os::signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                os::signal_group(pid, libc::SIGKILL);
                let _ = child.wait();
                break;
            }
        }
    }
    os::signal_group(pid, libc::SIGKILL);
}

pub(crate) fn scratch_dir() -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lbrs-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A scratch directory removed with everything in it when dropped (kept when the test fails,
/// for a look at what it holds).
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new() -> std::io::Result<ScratchDir> {
        Ok(ScratchDir { path: scratch_dir()? })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as text, with a trailing slash.
    pub fn slash(&self) -> String {
        format!("{}/", self.path.display())
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- scratch directory kept: {} -----", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
