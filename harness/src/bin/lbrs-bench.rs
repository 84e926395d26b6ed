//! End-to-end comparison of `byweight` with httpd's built-in `byrequests`, through the real
//! apache2 and real backends on loopback.
//!
//! Both methods run the same smooth weighted round robin; the difference is where its state
//! lives. `byrequests` updates its counters in shared memory under a per-process lock only, so
//! concurrent picks in different processes can lose updates and skew the shares; `byweight`
//! takes one shared atomic ticket per pick. This runs both on the same
//! three members (loadfactors 1:2:3, service time 1 ms) under the same closed-loop load, under
//! prefork with 8 processes and under event, alternating the methods so that machine noise shows
//! up as a difference between rounds of one method, and prints shares, deviation from the ideal
//! shares, throughput and latency side by side.
//!
//! Build the module in release first (this binary loads target/release/libmod_lbmethod_rs.so):
//!
//! ```text
//! cargo build --release && cargo run --release -p lbrs-harness --bin lbrs-bench
//! cargo run --release -p lbrs-harness --bin lbrs-bench -- --mpm prefork --requests 50000
//! ```
//!
//! docs/benchmark.md explains the output.

use lbrs_harness::apache::module_under_test;
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Load, Mpm, balancer_block};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// The members: name and loadfactor.
const MEMBERS: [(&str, u32); 3] = [("a", 1), ("b", 2), ("c", 3)];
/// Each backend serves this many requests at once, each taking `SERVICE_TIME`; more than the
/// load ever sends to one member, so no member queues and shares alone decide the split.
const BACKEND_SLOTS: usize = 64;
const SERVICE_TIME: Duration = Duration::from_millis(1);
const PREFORK_PROCESSES: u32 = 8;
/// The methods in the order each round runs them.
const METHODS: [&str; 2] = ["byrequests", "byweight"];
const ROUNDS: usize = 2;
/// A measured load stops at `--requests` or after this long, whichever comes first.
const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// Requests per client before each measured load: every child process started and every
/// connection to the backends open.
const WARM_UP_PER_CLIENT: u64 = 50;

const USAGE: &str = "\
usage: lbrs-bench [--requests N] [--concurrency N] [--mpm event|prefork|both]

Compares ProxySet lbmethod=byweight with lbmethod=byrequests through the real apache2.
  --requests N      requests per measured run (default 30000); a run also stops after 30 s
  --concurrency N   closed-loop clients (default 8)
  --mpm M           event, prefork (8 processes) or both (default both)
Build the module first: cargo build --release";

struct Options {
    requests: u64,
    concurrency: usize,
    mpms: Vec<Mpm>,
}

/// The options, or `None` when help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options { requests: 30_000, concurrency: 8, mpms: vec![Mpm::Prefork, Mpm::Event] };
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || -> Result<u64, String> {
            value
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("invalid value \"{value}\" in \"{flag}\""))
        };
        match flag.as_str() {
            "--requests" => options.requests = number()?,
            "--concurrency" => options.concurrency = number()? as usize,
            "--mpm" => {
                options.mpms = match value.as_str() {
                    "event" => vec![Mpm::Event],
                    "prefork" => vec![Mpm::Prefork],
                    "both" => vec![Mpm::Prefork, Mpm::Event],
                    _ => return Err(format!("invalid value \"{value}\" in \"--mpm\"")),
                }
            }
            _ => return Err(format!("unknown option \"{flag}\"")),
        }
    }
    Ok(Some(options))
}

/// What one measured load gave.
struct Run {
    mpm: Mpm,
    method: &'static str,
    round: usize,
    /// Answered with 200.
    ok: u64,
    /// Everything else: other statuses and requests with no answer.
    errors: u64,
    seconds: f64,
    /// Share of the 200s each member served, in member order.
    shares: Vec<f64>,
    p50: Duration,
    p99: Duration,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Largest distance of any member's share from its loadfactor's share, in percentage points.
    fn max_deviation_pp(&self) -> f64 {
        self.shares
            .iter()
            .zip(ideal_shares())
            .map(|(got, ideal)| (got - ideal).abs() * 100.0)
            .fold(0.0, f64::max)
    }
}

fn ideal_shares() -> Vec<f64> {
    let total: u32 = MEMBERS.iter().map(|&(_, lf)| lf).sum();
    MEMBERS.iter().map(|&(_, lf)| f64::from(lf) / f64::from(total)).collect()
}

/// The process group of the apache2 running now (0: none), for the interrupt handler.
static RUNNING_APACHE: AtomicI32 = AtomicI32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// apache2 runs in its own process group, so a Ctrl-C at the terminal does not reach it. On the
/// first SIGINT this stops the running server (the load then fails fast and `main` unwinds
/// through the guards, which reap it and stop the backends); a second SIGINT kills at once.
extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let group = RUNNING_APACHE.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: killpg is async-signal-safe; the group is the apache2 this process started.
        unsafe { libc::killpg(group, libc::SIGTERM) };
    }
}

fn install_interrupt_handler() {
    // SAFETY: a zeroed sigaction with a handler that only touches atomics and calls killpg.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) { Err("interrupted".into()) } else { Ok(()) }
}

/// Starts apache2 with `method` over `backends`, warms it up, and measures one load.
fn measure(
    options: &Options,
    backends: &[Backend],
    mpm: Mpm,
    method: &'static str,
    round: usize,
) -> Result<Run, String> {
    let params: Vec<String> = MEMBERS.iter().map(|&(_, lf)| format!("loadfactor={lf}")).collect();
    let members: Vec<(&Backend, &str)> = backends.iter().zip(&params).map(|(b, p)| (b, p.as_str())).collect();
    let body = balancer_block("app", "/", &members, &format!("lbmethod={method}"));
    let mut config = ApacheConfig::new(&body).mpm(mpm);
    if mpm == Mpm::Prefork {
        config = config.processes(PREFORK_PROCESSES);
    }
    let apache = Apache::start(config)?;
    RUNNING_APACHE.store(apache.pid().map_or(0, |p| p as i32), Ordering::SeqCst);
    let result = (|| {
        check_interrupted()?;
        let warm_up = WARM_UP_PER_CLIENT * options.concurrency as u64;
        Load::new("/", options.concurrency, warm_up).deadline(Duration::from_secs(10)).run(apache.addr());
        let report =
            Load::new("/", options.concurrency, options.requests).deadline(RUN_DEADLINE).run(apache.addr());
        check_interrupted()?;
        let ok = report.count_status(200);
        let counts: Vec<u64> = MEMBERS.iter().map(|&(name, _)| report.count_backend(name)).collect();
        let answered: u64 = counts.iter().sum();
        Ok(Run {
            mpm,
            method,
            round,
            ok,
            errors: report.outcomes.len() as u64 - ok,
            seconds: report.elapsed.as_secs_f64(),
            shares: counts.iter().map(|&n| n as f64 / answered.max(1) as f64).collect(),
            p50: report.percentile(50.0),
            p99: report.percentile(99.0),
        })
    })();
    RUNNING_APACHE.store(0, Ordering::SeqCst);
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_table(runs: &[Run]) {
    let members: String = MEMBERS
        .iter()
        .zip(ideal_shares())
        .map(|(&(name, _), ideal)| format!("  {:>9}", format!("{name} {:.1}%", ideal * 100.0)))
        .collect();
    println!(
        "{:<8} {:<10} {:>5} {:>8} {:>6} {:>8}{members} {:>8} {:>8} {:>8}",
        "mpm", "method", "round", "requests", "errors", "req/s", "max dev", "p50", "p99"
    );
    for run in runs {
        let shares: String = run.shares.iter().map(|s| format!("  {:>8.2}%", s * 100.0)).collect();
        println!(
            "{:<8} {:<10} {:>5} {:>8} {:>6} {:>8.0}{shares} {:>5.2} pp {:>5.2} ms {:>5.2} ms",
            run.mpm.name(),
            run.method,
            run.round,
            run.ok,
            run.errors,
            run.throughput(),
            run.max_deviation_pp(),
            ms(run.p50),
            ms(run.p99),
        );
    }
}

/// Per MPM: byweight's throughput over byrequests', overall and round by round, and each
/// method's worst deviation.
fn print_summary(runs: &[Run], mpms: &[Mpm]) {
    let of = |mpm: Mpm, method: &str| -> Vec<&Run> {
        runs.iter().filter(|r| r.mpm == mpm && r.method == method).collect()
    };
    let overall = |runs: &[&Run]| {
        let ok: u64 = runs.iter().map(|r| r.ok).sum();
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        ok as f64 / seconds.max(1e-9)
    };
    let worst = |runs: &[&Run]| runs.iter().map(|r| r.max_deviation_pp()).fold(0.0, f64::max);
    for &mpm in mpms {
        let (byrequests, byweight) = (of(mpm, "byrequests"), of(mpm, "byweight"));
        let rounds: Vec<String> = byrequests
            .iter()
            .zip(&byweight)
            .map(|(r, w)| format!("{:.3}", w.throughput() / r.throughput()))
            .collect();
        println!(
            "{:<8} throughput byweight/byrequests {:.3} (round by round {}); \
             worst deviation byrequests {:.2} pp, byweight {:.2} pp",
            mpm.name(),
            overall(&byweight) / overall(&byrequests),
            rounds.join(", "),
            worst(&byrequests),
            worst(&byweight),
        );
    }
}

fn run(options: &Options) -> Result<(), String> {
    let module = module_under_test();
    if !module.is_file() {
        return Err(format!(
            "no module at {}: build it first with `cargo build --release`",
            module.display()
        ));
    }
    if !module.to_string_lossy().contains("/release/") {
        eprintln!("warning: {} is not a release build; figures will not be representative", module.display());
    }
    install_interrupt_handler();
    let backends = MEMBERS
        .iter()
        .map(|&(name, _)| {
            Backend::start(BackendSpec::new(name).slots(BACKEND_SLOTS).delay(SERVICE_TIME))
                .map_err(|e| format!("cannot start backend {name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "module {}\n{} requests per run (or {} s), {} clients, members {}, service time {} ms",
        module.display(),
        options.requests,
        RUN_DEADLINE.as_secs(),
        options.concurrency,
        MEMBERS.iter().map(|&(name, lf)| format!("{name}={lf}")).collect::<Vec<_>>().join(":"),
        ms(SERVICE_TIME),
    );
    let mut runs = Vec::new();
    for &mpm in &options.mpms {
        for round in 1..=ROUNDS {
            for method in METHODS {
                eprint!("{} {method} round {round} ... ", mpm.name());
                let run = measure(options, &backends, mpm, method, round)?;
                eprintln!("{} requests in {:.1} s", run.ok + run.errors, run.seconds);
                runs.push(run);
            }
        }
    }
    println!();
    print_table(&runs);
    println!();
    print_summary(&runs, &options.mpms);
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("lbrs-bench: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\nlbrs-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
