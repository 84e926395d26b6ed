//! The demo behind `scripts/demo.sh`: three backends and the real apache2 on 127.0.0.1, with
//! mod_lbmethod_rs balancing between them by `byweight` at loadfactors 1:2:3, until Ctrl-C.
//!
//! apache2 runs in its own process group, so a terminal's Ctrl-C reaches only this program.
//! SIGINT and SIGTERM set a flag; the main loop sees it and drops the guards, which stop and
//! reap apache2 (and its children) and the backends. Nothing is left running.
//!
//! Environment: `LBRS_DEMO_PORT` (default 8080) is Apache's port; `LBRS_MODULE` the module to
//! load (default: the `libmod_lbmethod_rs.so` cargo built next to this program).

use lbrs_harness::apache::module_under_test;
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, balancer_block};
use std::ffi::c_int;
use std::fs;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

const DEFAULT_PORT: u16 = 8080;
const MEMBERS: [(&str, u32); 3] = [("app1", 1), ("app2", 2), ("app3", 3)];

static STOP: AtomicBool = AtomicBool::new(false);

/// Only stores to an atomic, which is async-signal-safe.
extern "C" fn on_signal(_signal: c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<(), String> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
        // `extern "C" fn(c_int)` that only touches an atomic. Installing it also replaces an
        // inherited "ignore" (a shell starts background jobs with SIGINT ignored).
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "cannot install a handler for signal {signal}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn demo_port() -> Result<u16, String> {
    match std::env::var("LBRS_DEMO_PORT") {
        Err(_) => Ok(DEFAULT_PORT),
        Ok(value) => match value.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("LBRS_DEMO_PORT={value:?} is not a port number (1-65535)")),
        },
    }
}

/// Whether `pid` is still running (neither gone nor a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lbrs-demo: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    install_signal_handlers()?;
    let port = demo_port()?;

    // Say plainly that the port is taken, rather than leave it to apache2's bind error.
    if let Err(err) = TcpListener::bind(("127.0.0.1", port)) {
        return Err(format!(
            "cannot listen on 127.0.0.1:{port} ({err}): something else is using it.\n\
             Stop that program, or choose another port: LBRS_DEMO_PORT=8081 scripts/demo.sh"
        ));
    }

    let module = module_under_test();
    if !module.is_file() {
        return Err(format!(
            "the module {} does not exist: build it with `cargo build --release` \
             (or set LBRS_MODULE to the .so to load)",
            module.display()
        ));
    }

    let mut backends = Vec::new();
    for (name, _) in MEMBERS {
        backends.push(
            Backend::start(BackendSpec::new(name))
                .map_err(|err| format!("cannot start backend {name}: {err}"))?,
        );
    }
    let params: Vec<String> = MEMBERS.iter().map(|(_, weight)| format!("loadfactor={weight}")).collect();
    let members: Vec<(&Backend, &str)> =
        backends.iter().zip(&params).map(|(backend, params)| (backend, params.as_str())).collect();
    let body = balancer_block("demo", "/", &members, "lbmethod=byweight");

    let config = ApacheConfig::new(&body).port(port);
    let apache = Apache::start(config).map_err(|err| format!("apache2 did not start: {err}"))?;
    let pid = apache.pid().unwrap_or(0);
    print_instructions(&apache, &backends, port);

    let mut died = false;
    while !STOP.load(Ordering::SeqCst) {
        if !alive(pid) {
            died = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }

    if died {
        let log = apache.error_log();
        drop(apache);
        drop(backends);
        return Err(format!("apache2 (pid {pid}) exited on its own:\n{log}"));
    }
    println!("\nStopping Apache and the backends...");
    drop(apache);
    drop(backends);
    println!("Stopped; nothing is left running.");
    Ok(())
}

fn print_instructions(apache: &Apache, backends: &[Backend], port: u16) {
    let base = format!("http://127.0.0.1:{port}");
    let members: String = backends
        .iter()
        .zip(MEMBERS)
        .map(|(backend, (name, weight))| format!("  {name}  {}  loadfactor={weight}\n", backend.url()))
        .collect();
    let dir = apache.dir().display();
    println!(
        "
mod_lbmethod_rs demo: Apache on {base}/ balances three backends with lbmethod=byweight
{members}
Try:
  curl -s {base}/          # the body names the backend that answered
  for i in $(seq 12); do curl -s {base}/; done | sort | uniq -c    # 2 app1, 4 app2, 6 app3
  curl -s '{base}/lb-status?format=json'    # status page, JSON
  {base}/lb-status          # status page, HTML (open it in a browser on this machine)
  {base}/balancer-manager   # mod_proxy_balancer's manager: change a loadfactor live

Apache's config: {dir}/httpd.conf
Apache's error log: {dir}/error.log

Press Ctrl-C to stop Apache and the backends."
    );
}
