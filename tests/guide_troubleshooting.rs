//! docs/troubleshooting.md: the common failures, caused for real through apache2, log the lines
//! the page's table quotes, and the page quotes what they log. Each check names the text it
//! expects; the same text must appear in the page.

use lbrs_harness::apache::ScratchDir;
use lbrs_harness::apache::{apache2_binary, free_port, module_under_test, modules_dir};
use lbrs_harness::recipe::workspace_root;
use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, LoadOrder, balancer_manager_set, client, config_test,
    wait_for,
};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn page() -> String {
    fs::read_to_string(workspace_root().join("docs/troubleshooting.md")).expect("docs/troubleshooting.md")
}

/// `text` is in the error log (within 5 s: some lines are written when the request ends) and
/// in the page.
fn logged_and_documented(apache: &Apache, texts: &[&str]) {
    let page = page();
    for text in texts {
        assert!(
            wait_for(Duration::from_secs(5), || apache.error_log().contains(text)),
            "the error log has no {text:?}:\n{}",
            apache.error_log()
        );
        assert!(page.contains(text), "docs/troubleshooting.md does not quote {text:?}");
    }
}

fn said_and_documented(output: &str, texts: &[&str]) {
    let page = page();
    for text in texts {
        assert!(output.contains(text), "no {text:?} in:\n{output}");
        assert!(page.contains(text), "docs/troubleshooting.md does not quote {text:?}");
    }
}

fn balancer(members: &[String], params: &str, proxyset: &str, extra: &str) -> String {
    let mut block = String::from("<Proxy \"balancer://app\">\n");
    for url in members {
        block.push_str(&format!("    BalancerMember \"{url}\" {params}\n"));
    }
    block.push_str(&format!(
        "{extra}    ProxySet {proxyset}\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n"
    ));
    block
}

#[test]
fn a_member_that_refuses_connections_then_none_usable() {
    let dead = format!("http://127.0.0.1:{}", free_port().unwrap());
    // forcerecovery=Off: otherwise httpd tries a balancer's last members in error again at once.
    let body = balancer(&[dead], "", "lbmethod=byinflight forcerecovery=Off", "");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let first = apache.get("/first").unwrap();
    assert_eq!(first.status, 503);
    logged_and_documented(
        &apache,
        &[
            "(111)Connection refused: AH00957: http: attempt to connect to",
            "AH00959: ap_proxy_connect_backend disabling worker for",
            "AH01114: HTTP: failed to make connection to backend",
        ],
    );
    // The member is in error now: the next request finds no usable member.
    let second = apache.get("/second").unwrap();
    assert_eq!(second.status, 503);
    assert_eq!(second.header("retry-after"), None, "no usable member: no Retry-After");
    logged_and_documented(&apache, &["AH01170: balancer://app: All workers are in error state"]);
}

#[test]
fn a_member_that_answers_too_late_or_resets() {
    let slow = Backend::start(BackendSpec::new("slow").delay(Duration::from_millis(3000))).unwrap();
    let body = balancer(&[slow.url()], "timeout=1", "lbmethod=byinflight", "");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let started = Instant::now();
    let timed_out = apache.get("/slow-page").unwrap();
    // httpd 2.4 answers a member's read timeout with 502, not 504.
    assert_eq!(timed_out.status, 502);
    assert!(started.elapsed() < Duration::from_millis(2500));
    logged_and_documented(
        &apache,
        &[
            "(70007)The timeout specified has expired: [client",
            "AH01102: error reading status line from remote server",
            "AH00898: Error reading from remote server returned by /slow-page",
        ],
    );
    let reset = apache.get("/__reset").unwrap();
    assert_eq!(reset.status, 502);
    logged_and_documented(&apache, &["(104)Connection reset by peer: [client"]);
}

#[test]
fn every_member_at_its_cap_sheds_with_retry_after() {
    let a = Backend::start(BackendSpec::new("a").delay(Duration::from_millis(1000))).unwrap();
    let body = balancer(&[a.url()], "", "lbmethod=byinflight", "    LBMaxInflight 1\n");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let addr = apache.addr();
    let (busy, shed) = thread::scope(|scope| {
        let busy = scope.spawn(|| client::get(addr, "/").unwrap());
        thread::sleep(Duration::from_millis(300));
        let second = client::get(addr, "/").unwrap();
        (busy.join().unwrap(), second)
    });
    assert_eq!(busy.status, 200);
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    logged_and_documented(
        &apache,
        &[
            "byinflight: balancer://app: every usable member is at its LBMaxInflight cap; request refused (1 shed so far with this one)",
            "AH01170: balancer://app: All workers are in error state",
        ],
    );
}

#[test]
fn a_connection_pool_that_is_too_small() {
    let a = Backend::start(BackendSpec::new("a").delay(Duration::from_millis(1000))).unwrap();
    let body = balancer(&[a.url()], "max=1 acquire=100", "lbmethod=byinflight", "");
    let apache = Apache::start(ApacheConfig::new(&body).processes(1)).unwrap();
    let addr = apache.addr();
    let (busy, refused) = thread::scope(|scope| {
        let busy = scope.spawn(|| client::get(addr, "/").unwrap());
        thread::sleep(Duration::from_millis(300));
        let second = client::get(addr, "/").unwrap();
        (busy.join().unwrap(), second)
    });
    assert_eq!(busy.status, 200);
    assert_eq!(refused.status, 503);
    logged_and_documented(
        &apache,
        &["(70007)The timeout specified has expired: AH00941: http: failed to acquire connection for"],
    );
}

#[test]
fn byhash_switched_on_in_balancer_manager_without_a_key() {
    let a = Backend::start(BackendSpec::new("a")).unwrap();
    let apache =
        Apache::start(ApacheConfig::new(&balancer(&[a.url()], "", "lbmethod=byinflight", ""))).unwrap();
    balancer_manager_set(&apache, "app", "", &[("b_lbm", "byhash")]).unwrap();
    assert_eq!(apache.get("/").unwrap().status, 200);
    logged_and_documented(
        &apache,
        &["byhash is used by a balancer without LBHashKey: it balances as byinflight"],
    );
}

#[test]
fn configuration_mistakes_that_apachectl_t_reports() {
    let a = "http://127.0.0.1:9";
    let (ok, output) = config_test(&ApacheConfig::new(&balancer(&[a.into()], "", "lbmethod=byinflght", "")));
    assert!(!ok);
    said_and_documented(&output, &["ProxySet: unknown lbmethod lbmethod=byinflght; balancer://app"]);
    let (ok, output) = config_test(&ApacheConfig::new(&balancer(&[a.into()], "", "lbmethod=byhash", "")));
    assert!(!ok);
    said_and_documented(
        &output,
        &["ProxySet lbmethod=byhash in <Proxy \"balancer://app\">: LBHashKey is missing"],
    );
    let without =
        ApacheConfig::new(&balancer(&[a.into()], "", "lbmethod=byrequests", "    LBSlowStart 10s\n"))
            .load_order(LoadOrder::NotLoaded);
    let (ok, output) = config_test(&without);
    assert!(!ok);
    said_and_documented(&output, &["Cannot find module lbmethod_rs"]);
    let (ok, output) = config_test(&without.log_level("warn"));
    assert!(!ok);
    said_and_documented(
        &output,
        &[
            "Invalid command 'LBSlowStart', perhaps misspelled or defined by a module not included in the server configuration",
        ],
    );
}

/// The module loaded without mod_proxy: `apache2 -t` passes, the server refuses to start.
#[test]
fn the_module_without_mod_proxy_refuses_to_start() {
    let log = start_refused(&[]);
    said_and_documented(
        &log,
        &[
            "mod_lbmethod_rs cannot start: mod_proxy is not loaded; load mod_proxy and mod_proxy_balancer (Debian: a2enmod proxy_balancer)",
            "AH00020: Configuration Failed, exiting",
        ],
    );
}

/// Starts apache2 with the module and only `modules_loaded` of mod_proxy's family; `apache2 -t`
/// must pass and the start must fail. The error log.
fn start_refused(modules_loaded: &[&str]) -> String {
    let dir = ScratchDir::new().unwrap();
    let port = free_port().unwrap();
    let modules = modules_dir();
    let mut conf = format!(
        "ServerRoot {d}\nDefaultRuntimeDir {d}\nPidFile {d}/httpd.pid\nErrorLog {d}/error.log\nServerName 127.0.0.1\n\
         Listen 127.0.0.1:{port}\nLoadModule mpm_event_module {m}/mod_mpm_event.so\n\
         LoadModule authz_core_module {m}/mod_authz_core.so\nLoadModule lbmethod_rs_module {module}\n",
        d = dir.path().display(),
        m = modules.display(),
        module = module_under_test().display(),
    );
    if modules.join("mod_unixd.so").is_file() {
        conf.push_str(&format!("LoadModule unixd_module {}/mod_unixd.so\n", modules.display()));
    }
    for name in modules_loaded {
        conf.push_str(&format!("LoadModule {name}_module {}/mod_{name}.so\n", modules.display()));
    }
    let conf_path = dir.path().join("httpd.conf");
    fs::write(&conf_path, conf).unwrap();
    let test = Command::new(apache2_binary()).arg("-t").arg("-f").arg(&conf_path).output().unwrap();
    assert!(test.status.success(), "apache2 -t passes: {}", String::from_utf8_lossy(&test.stderr));
    let mut child = Command::new(apache2_binary())
        .arg("-f")
        .arg(&conf_path)
        .args(["-D", "FOREGROUND"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // It started after all: stop it and every child it forked.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.is_some_and(|s| !s.success()), "apache2 must refuse to start: {status:?}");
    let log = fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    eprintln!("{log}");
    log
}
