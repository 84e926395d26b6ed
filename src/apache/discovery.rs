//! `LBDiscover`: balancers whose members follow DNS names.
//!
//! - **At startup and at every restart** (check_config, in the parent, before
//!   mod_proxy_balancer shares the members): each name is looked up, and every address becomes
//!   a member exactly as a `BalancerMember` line would make it; the balancer keeps `slots=`
//!   growth slots for addresses that appear later. A name that does not resolve then keeps
//!   the members of its last good answer (from the previous generation's segment), or starts
//!   with none (`startup=warn`) or stops httpd (`startup=refuse`).
//! - **At run time**, one child process resolves for all (it holds the lease in the segment's
//!   header; another takes over within seconds if it dies or hangs), in a thread of its own,
//!   so no request and not httpd's parent ever waits for DNS. It asks again when the answer's
//!   TTL is up (within `ttl-min`/`ttl-max`), and follows each answer: a new address is added
//!   into a growth slot as balancer-manager adds one (`httpd::growth`), which every process
//!   picks up at its next request; an address gone is drained (`N`: no new request, those in
//!   flight finish) and, once nothing is in flight on it, disabled; one that comes back is
//!   enabled again (slow start ramps it if configured). A failed lookup keeps the last good
//!   members and is logged once until the name resolves again.
//! - What each line found and where each member stands are kept in the segment
//!   (`shm::discovery`) for the status page, the metrics and the next generation.

use super::module::Runtime;
use super::startup::settings_of;
use crate::config::{BalancerSettings, Discover, MemberParams};
use crate::discover::dns::SystemResolver;
use crate::discover::{self, Change, Found, Known, Standing, Target};
use crate::httpd::growth::{Flag, Growth, WorkerParams};
use crate::httpd::log::{Level, log_server};
use crate::httpd::{Balancer, Pool, Server, Worker, process};
use crate::shm::discovery::{self as record, DRAINING, Entry, LINES, REMOVED, SERVING};
use crate::shm::{Segment, attempt, monotonic_us, name_key};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the startup lookups gave one `LBDiscover` line, from check_config to post_config.
struct Startup {
    balancer: Balancer,
    line: usize,
    discover: Discover,
    found: Option<Found>,
    /// Members defined for it (from the answer, or the last good one).
    targets: Vec<Target>,
    /// The line's totals in the previous generation's segment.
    before: Option<record::LineTotals>,
    /// The balancer's `BalancerMember` lines (their URLs).
    configured: Vec<String>,
}

static STARTUP: Mutex<Vec<Startup>> = Mutex::new(Vec::new());

fn system_resolver() -> SystemResolver {
    SystemResolver::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

fn wall_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn monotonic_s() -> u64 {
    monotonic_us() / 1_000_000
}

/// The httpd parameters of a member found by `discover` at `target`.
fn params(member: &MemberParams, target: &Target) -> WorkerParams {
    WorkerParams {
        lbfactor: Some(target.loadfactor),
        lbset: Some(target.lbset),
        retry: member.retry,
        timeout: member.timeout,
        connection_timeout: member.connection_timeout,
        ping: member.ping,
        keepalive: member.keepalive,
        disablereuse: member.disablereuse,
        ttl: member.ttl,
        max: member.max,
        hc_method: member.hc_method.clone(),
        hc_interval: member.hc_interval,
        hc_passes: member.hc_passes,
        hc_fails: member.hc_fails,
        hc_uri: member.hc_uri.clone(),
    }
}

/// The balancers of every server with `LBDiscover`, with their settings.
fn discovering(
    proxy: &crate::httpd::proxy::ProxyApi,
    main: Server,
) -> Vec<(Server, Balancer, BalancerSettings)> {
    proxy
        .balancers(main)
        .into_iter()
        .map(|(server, balancer)| (server, balancer, settings_of(server, balancer)))
        .filter(|(_, _, settings)| !settings.discover.is_empty())
        .collect()
}

/// check_config (`apachectl -t` too): `LBDiscover` where it cannot work.
pub fn check(main: Server) -> Vec<String> {
    let Ok(proxy) = crate::httpd::proxy::ProxyApi::find() else { return Vec::new() };
    let mut errors = Vec::new();
    for (server, balancer, settings) in discovering(&proxy, main) {
        let name = balancer.name();
        if settings.discover.len() > LINES {
            errors.push(format!("LBDiscover in <Proxy \"{name}\">: at most {LINES} names per balancer"));
        }
        for discover in &settings.discover {
            let member = &discover.member;
            let checks = member.hc_method.is_some()
                || member.hc_interval.is_some()
                || member.hc_passes.is_some()
                || member.hc_fails.is_some()
                || member.hc_uri.is_some();
            if checks && !crate::httpd::proxy::hcheck_module_loaded() {
                errors.push(format!(
                    "LBDiscover {} in <Proxy \"{name}\">: the hc...= options need mod_proxy_hcheck, which is \
                     not loaded (Debian: a2enmod proxy_hcheck)",
                    discover.source
                ));
            }
        }
        if let Some(copy) = copied_into(&proxy, main, server, balancer) {
            errors.push(format!(
                "LBDiscover in <Proxy \"{name}\"> of {}: virtual host {copy} has a copy of this balancer \
                 (BalancerInherit), which would not follow the name; write the <Proxy> section inside the \
                 virtual host that uses it, or set BalancerInherit Off there",
                server.label()
            ));
        }
    }
    errors
}

/// check_config, in the first pass of a start (before httpd detaches, so that the error reaches
/// the terminal and `apachectl start` fails): the names of `startup=refuse` lines that do not
/// resolve. A restart has no first pass; there the last good answer counts as an answer.
pub fn refuse_unresolved(main: Server) -> Vec<String> {
    let Ok(proxy) = crate::httpd::proxy::ProxyApi::find() else { return Vec::new() };
    let system = system_resolver();
    let mut errors = Vec::new();
    for (_, balancer, settings) in discovering(&proxy, main) {
        let refusing: Vec<&Discover> = settings.discover.iter().filter(|d| d.refuse_unresolved).collect();
        let results: Vec<Result<Found, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                refusing.iter().map(|d| scope.spawn(|| discover::lookup(d, &system))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("lookup failed".into()))).collect()
        });
        for (discover, result) in refusing.iter().zip(results) {
            if let Err(why) = result {
                errors.push(format!(
                    "LBDiscover {} in <Proxy \"{}\">: the name does not resolve: {why} (startup=refuse)",
                    discover.source,
                    balancer.name()
                ));
            }
        }
    }
    errors
}

/// check_config, in the parent's second pass (and at every restart): looks every name up (all
/// at once, each within its `dns-timeout`) and defines its members. `previous`: the segment of
/// the generation before, if any. Errors stop httpd.
pub fn define_at_startup(main: Server, pconf: Pool, previous: Option<&Segment>) -> Vec<String> {
    let mut startup = STARTUP.lock().unwrap_or_else(|e| e.into_inner());
    startup.clear();
    let Ok(proxy) = crate::httpd::proxy::ProxyApi::find() else { return Vec::new() };
    let mut errors = Vec::new();
    let discovering = discovering(&proxy, main);
    let growth = match Growth::find() {
        Ok(growth) => growth,
        Err(missing) if !discovering.is_empty() => {
            return vec![format!("LBDiscover: {missing} (httpd too old?)")];
        }
        Err(_) => return errors,
    };
    let system = system_resolver();
    // Every name at once: a restart waits for the slowest, not for the sum.
    let lookups: Vec<Vec<Result<Found, String>>> = std::thread::scope(|scope| {
        let handles: Vec<Vec<_>> = discovering
            .iter()
            .map(|(_, _, settings)| {
                settings
                    .discover
                    .iter()
                    .map(|discover| {
                        let system = &system;
                        scope.spawn(move || discover::lookup(discover, system))
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|lines| {
                lines.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("lookup failed".into()))).collect()
            })
            .collect()
    });
    for ((server, balancer, settings), results) in discovering.iter().zip(lookups) {
        let (server, balancer) = (*server, *balancer);
        let name = balancer.name();
        let Some(conf) = proxy.conf(server) else { continue };
        balancer.reserve_growth(settings.discover.iter().map(|d| d.slots).sum());
        let before = previous.and_then(|segment| previous_record(segment, server, balancer));
        // Members written as BalancerMember lines: never taken over by a name.
        let configured: Vec<String> = balancer.workers().map(|w| w.name()).collect();
        for ((line, discover), result) in settings.discover.iter().enumerate().zip(results) {
            let key = name_key(discover.source.as_bytes());
            let last = before.as_ref().and_then(|previous| {
                let index = previous.lines.iter().position(|(k, _)| *k == key)?;
                Some((previous.lines[index].1, last_answer(&previous.entries, index)))
            });
            let (found, targets) = match result {
                Ok(found) => {
                    let targets = found.targets.clone();
                    (Some(found), targets)
                }
                Err(why) => {
                    let kept = last.as_ref().map(|(_, targets)| targets.clone()).unwrap_or_default();
                    if kept.is_empty() && discover.refuse_unresolved {
                        errors.push(format!(
                            "LBDiscover {} in <Proxy \"{name}\">: the name does not resolve: {why} (startup=refuse)",
                            discover.source
                        ));
                        continue;
                    }
                    log_server!(
                        main,
                        Level::Warning,
                        "LBDiscover {} in <Proxy \"{name}\">: the name does not resolve: {why}; starting with {} \
                         member(s) from its last good answer, and asking again every few seconds",
                        discover.source,
                        kept.len()
                    );
                    (None, kept)
                }
            };
            let existing: Vec<String> = balancer.workers().map(|w| w.name()).collect();
            for target in &targets {
                let url = discover.member_url(target.address, target.port);
                if existing.iter().any(|e| e.eq_ignore_ascii_case(&url)) {
                    continue;
                }
                if let Err(why) =
                    growth.define(pconf, balancer, conf, &url, &params(&discover.member, target))
                {
                    errors.push(format!(
                        "LBDiscover {} in <Proxy \"{name}\">: member {url}: {why}",
                        discover.source
                    ));
                }
            }
            log_server!(
                main,
                Level::Info,
                "LBDiscover {} in <Proxy \"{name}\">: {} member(s) at startup, {} growth slot(s) for more",
                discover.source,
                targets.len(),
                discover.slots
            );
            startup.push(Startup {
                balancer,
                line,
                discover: discover.clone(),
                found,
                targets,
                before: last.map(|(totals, _)| totals),
                configured: configured.clone(),
            });
        }
    }
    errors
}

/// The virtual host, if any, that has its own copy of `balancer` of `server` (httpd copies the
/// main server's balancers into every virtual host with mod_proxy settings of its own; the
/// copies share their members' list but not its shared memory).
fn copied_into(
    proxy: &crate::httpd::proxy::ProxyApi,
    main: Server,
    server: Server,
    balancer: Balancer,
) -> Option<String> {
    let own = proxy.conf(server)?;
    main.and_following()
        .filter(|&other| other != server)
        .find(|&other| {
            proxy
                .conf(other)
                .is_some_and(|conf| conf != own && conf.balancers().any(|b| b.shares_members_with(balancer)))
        })
        .map(|other| other.label())
}

/// Members written as `BalancerMember` lines in `balancer` (names never take them over).
fn configured_members(balancer: Balancer) -> Vec<String> {
    let startup = STARTUP.lock().unwrap_or_else(|e| e.into_inner());
    startup.iter().find(|s| s.balancer == balancer).map(|s| s.configured.clone()).unwrap_or_default()
}

/// The previous generation's record of a balancer: each line's key and totals, and the
/// members its names had given it.
struct Previous {
    lines: Vec<(u64, record::LineTotals)>,
    entries: Vec<Entry>,
}

/// The previous generation's record of the balancer `balancer` of `server`.
fn previous_record(segment: &Segment, server: Server, balancer: Balancer) -> Option<Previous> {
    let label = name_key(format!("{} {}", server.label(), balancer.name()).as_bytes());
    let slot = segment.find_by_label(label)?;
    let discovery = segment.discovery(segment.balancer(slot)?)?;
    let lines = discovery
        .lines
        .iter()
        .map(|line| (line.key.load(Ordering::Relaxed), record::LineTotals::read(line)))
        .collect();
    Some(Previous { lines, entries: discovery.entries().map(|(_, e)| e).collect() })
}

/// The members line `line` had serving in `entries`.
fn last_answer(entries: &[Entry], line: usize) -> Vec<Target> {
    entries
        .iter()
        .filter(|e| usize::from(e.line) == line && e.standing == SERVING)
        .map(|e| Target { address: e.address, port: e.port, loadfactor: e.loadfactor, lbset: e.lbset })
        .collect()
}

/// post_config, once the segment is laid out: records what startup found and defined, for
/// the resolver and the status page.
pub fn record_startup(segment: &Segment, slot_of: impl Fn(Balancer) -> Option<usize>) {
    let startup = STARTUP.lock().unwrap_or_else(|e| e.into_inner());
    let mut cleared = Vec::new();
    for entry in startup.iter() {
        let Some(discovery) =
            slot_of(entry.balancer).and_then(|s| segment.balancer(s)).and_then(|b| segment.discovery(b))
        else {
            continue;
        };
        if !cleared.contains(&entry.balancer) {
            discovery.clear();
            for line in &discovery.lines {
                record::LineTotals::default().write(line);
                line.key.store(0, Ordering::Relaxed);
            }
            cleared.push(entry.balancer);
        }
        let Some(line) = discovery.lines.get(entry.line) else { continue };
        if let Some(before) = entry.before {
            before.write(line);
        }
        line.key.store(name_key(entry.discover.source.as_bytes()), Ordering::Relaxed);
        match &entry.found {
            Some(found) => {
                line.lookups.fetch_add(1, Ordering::Relaxed);
                line.failing.store(0, Ordering::Relaxed);
                line.answer.store(found.targets.len() as u32, Ordering::Relaxed);
                line.ttl.store(found.ttl, Ordering::Relaxed);
                line.resolved_s.store(wall_s(), Ordering::Relaxed);
                // Children start minutes or milliseconds from now: the first asks again at the TTL.
                line.next_s.store(monotonic_s() + u64::from(found.ttl.max(1)), Ordering::Relaxed);
            }
            None => {
                line.lookups.fetch_add(1, Ordering::Relaxed);
                line.failures.fetch_add(1, Ordering::Relaxed);
                line.failing.fetch_add(1, Ordering::Relaxed);
                line.next_s.store(monotonic_s(), Ordering::Relaxed);
            }
        }
        let urls: Vec<(String, &Target)> =
            entry.targets.iter().map(|t| (entry.discover.member_url(t.address, t.port), t)).collect();
        for worker in entry.balancer.workers() {
            let name = worker.name();
            if entry.configured.iter().any(|c| c.eq_ignore_ascii_case(&name)) {
                continue;
            }
            if let Some((_, target)) = urls.iter().find(|(url, _)| url.eq_ignore_ascii_case(&name)) {
                discovery.push(entry_for(entry.line, SERVING, worker.index(), target));
            }
        }
    }
}

fn entry_for(line: usize, standing: u8, worker: u32, target: &Target) -> Entry {
    Entry {
        line: line as u8,
        standing,
        worker,
        address: target.address,
        port: target.port,
        loadfactor: target.loadfactor,
        lbset: target.lbset,
    }
}

/// A shared member one name let go of takes the loadfactor and lbset of the first name that
/// still serves it.
fn hand_over(discovery: &record::Discovery, worker: Worker) {
    if let Some(owner) = discovery.of_worker(worker.index()).filter(|e| e.standing == SERVING) {
        worker.set_weight(owner.loadfactor, owner.lbset);
    }
}

/// With `LBSlowStart`, a member that joins or comes back starts its ramp now.
fn ramp_up(slow_start: bool, segment: &Segment, slot: &crate::shm::BalancerSlot, worker: Worker) {
    if let Some(member) = segment.member_of(slot, worker.index() as usize).filter(|_| slow_start) {
        crate::methods::slow_start::start_ramp(member, monotonic_us());
    }
}

/// Set when the child is exiting: the resolver stops touching httpd's structures.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Held by the resolver while it looks (and changes members); taken by [`stop_resolver`] to
/// wait for the look in progress to end.
static LOOKING: Mutex<()> = Mutex::new(());

/// When the child's pool is destroyed (the child exits), before httpd's balancers and their
/// locks go: the resolver finishes the look in progress and stops.
fn stop_resolver() {
    STOPPING.store(true, Ordering::Release);
    // Bounded: in prefork this runs in a signal handler of the main thread, which may hold a
    // lock the look in progress waits for; the process exits either way.
    for _ in 0..200 {
        match LOOKING.try_lock() {
            Ok(_) | Err(std::sync::TryLockError::Poisoned(_)) => return,
            Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// child_init (after every other module's): starts the resolver thread when a balancer
/// discovers its members.
pub fn start_resolver(runtime: &'static Runtime, s: Server, pchild: Pool) {
    let balancers: Vec<(Server, Balancer)> = runtime
        .proxy
        .balancers(runtime.main_server)
        .into_iter()
        .filter(|&(server, balancer)| !settings_of(server, balancer).discover.is_empty())
        .collect();
    if balancers.is_empty() {
        return;
    }
    pchild.before_destroy(stop_resolver);
    let started = process::spawn_quiet(
        "lbrs-discover",
        Box::new(move || {
            if let Err(why) = Resolver::new(runtime, balancers).map(Resolver::run) {
                log_server!(s, Level::Err, "LBDiscover: cannot follow names in this process: {why}");
            }
        }),
    );
    if !started {
        log_server!(s, Level::Err, "LBDiscover: cannot start the resolver thread");
    }
}

/// The resolver thread of one child.
struct Resolver {
    runtime: &'static Runtime,
    balancers: Vec<(Server, Balancer)>,
    growth: Growth,
    pool: Pool,
    system: Arc<SystemResolver>,
    pid: u32,
    /// Lookups under way, each in a thread of its own (so that a name whose server does not
    /// answer never holds up another name), and where their answers arrive.
    pending: Vec<(usize, usize)>,
    answers: (Sender<Looked>, Receiver<Looked>),
    /// An answer that ended the last wait, followed at once.
    arrived: Option<Looked>,
    /// Counts the times this process held the lease: an answer to a lookup started while it
    /// held it before is not followed (another process may have followed newer ones since).
    term: u64,
    holding: bool,
    /// Lines that could not add a member (no slot, a full record, an address a
    /// `BalancerMember` has), each logged once.
    refused: Vec<(Balancer, usize, String)>,
}

/// A lookup's result: for line `line` of balancer `balancer` (indexes into the resolver's
/// list and the balancer's lines).
struct Looked {
    term: u64,
    balancer: usize,
    line: usize,
    result: Result<Found, String>,
}

/// How often the resolver looks at what is due.
const TICK: Duration = Duration::from_millis(250);

impl Resolver {
    fn new(runtime: &'static Runtime, balancers: Vec<(Server, Balancer)>) -> Result<Resolver, String> {
        Ok(Resolver {
            runtime,
            balancers,
            growth: Growth::find()?,
            pool: Pool::for_thread().ok_or("no memory pool")?,
            system: Arc::new(system_resolver()),
            pid: std::process::id(),
            pending: Vec::new(),
            answers: mpsc::channel(),
            arrived: None,
            term: 0,
            holding: false,
            refused: Vec::new(),
        })
    }

    /// Until the generation ends: while this process holds the lease, follows every name.
    fn run(mut self) {
        let segment = *self.runtime.generation.segment();
        let header = segment.header();
        loop {
            let looking = LOOKING.lock().unwrap_or_else(|e| e.into_inner());
            if STOPPING.load(Ordering::Acquire)
                || header.generation.load(Ordering::Acquire) != self.runtime.epoch
            {
                return;
            }
            let tick = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.tick(&segment)));
            drop(looking);
            if tick.is_err() {
                log_server!(
                    self.runtime.main_server,
                    Level::Err,
                    "LBDiscover: the resolver failed; trying again in 10s"
                );
                std::thread::sleep(Duration::from_secs(10));
            }
            // Until the next look, or until an answer comes (followed at once). A process that
            // does not resolve looks once a second whether it should.
            let wait = if self.holding || !self.pending.is_empty() { TICK } else { TICK * 4 };
            self.arrived = self.answers.1.recv_timeout(wait).ok();
        }
    }

    /// Takes or renews the lease: false when another process resolves. Called before acting on
    /// anything, so that a process that was stopped while another took over never acts.
    fn renew(&self, segment: &Segment) -> bool {
        let header = segment.header();
        header.generation.load(Ordering::Acquire) == self.runtime.epoch
            && record::hold_lease(header, self.pid, self.runtime.epoch, monotonic_s(), process::gone)
    }

    /// One look: the answers that came in are followed, due lookups are started, and draining
    /// members with nothing in flight are disabled.
    fn tick(&mut self, segment: &Segment) {
        let arrived: Vec<Looked> = self.arrived.take().into_iter().chain(self.answers.1.try_iter()).collect();
        for looked in &arrived {
            self.pending.retain(|&p| p != (looked.balancer, looked.line));
        }
        let held = self.renew(segment);
        if held && !self.holding {
            self.term += 1;
        }
        self.holding = held;
        if !held {
            return;
        }
        let term = self.term;
        for looked in arrived.into_iter().filter(|l| l.term == term) {
            self.follow(segment, looked);
        }
        for i in 0..self.balancers.len() {
            let (server, balancer) = self.balancers[i];
            let Some(slot) = self.runtime.generation.balancer(balancer.id()) else { continue };
            let Some(discovery) = segment.discovery(slot.shared) else { continue };
            for (line, discover) in slot.settings.discover.iter().enumerate() {
                let Some(shared) = discovery.lines.get(line) else { continue };
                if monotonic_s() >= shared.next_s.load(Ordering::Relaxed)
                    && !self.pending.contains(&(i, line))
                {
                    self.start_lookup(i, line, discover.clone());
                }
                // This process's copy of the members, with those another resolver added.
                let workers = self.runtime.proxy.current_workers(balancer, server);
                self.finish_drains(balancer, line, discover, &workers, segment, slot.shared);
            }
        }
    }

    fn start_lookup(&mut self, balancer: usize, line: usize, discover: Discover) {
        let (answers, system, term) = (self.answers.0.clone(), Arc::clone(&self.system), self.term);
        let started = process::spawn_quiet(
            "lbrs-dns",
            Box::new(move || {
                let result = std::panic::catch_unwind(|| discover::lookup(&discover, &system))
                    .unwrap_or_else(|_| Err("the lookup failed (internal error)".to_string()));
                let _ = answers.send(Looked { term, balancer, line, result });
            }),
        );
        if started {
            self.pending.push((balancer, line));
        }
    }

    /// Follows one lookup's result.
    fn follow(&mut self, segment: &Segment, looked: Looked) {
        let Some(&(server, balancer)) = self.balancers.get(looked.balancer) else { return };
        let Some(slot) = self.runtime.generation.balancer(balancer.id()) else { return };
        let Some(discover) = slot.settings.discover.get(looked.line) else { return };
        let line = looked.line;
        let slot = slot.shared;
        let Some(discovery) = segment.discovery(slot) else { return };
        let shared = &discovery.lines[line];
        let name = balancer.name();
        shared.lookups.fetch_add(1, Ordering::Relaxed);
        let found = match looked.result {
            Ok(found) => found,
            Err(why) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                let failing = shared.failing.fetch_add(1, Ordering::Relaxed);
                shared.set_error(&why);
                let next = discover::retry_after(discover, failing);
                shared.next_s.store(monotonic_s() + next.as_secs(), Ordering::Relaxed);
                // Once per outage, whichever process resolves.
                if failing == 0 {
                    log_server!(
                        server,
                        Level::Warning,
                        "LBDiscover {} in <Proxy \"{name}\">: lookup failed: {why}; keeping its {} member(s) from \
                         the last good answer",
                        discover.source,
                        shared.answer.load(Ordering::Relaxed)
                    );
                }
                return;
            }
        };
        if shared.failing.swap(0, Ordering::Relaxed) > 0 {
            log_server!(
                server,
                Level::Notice,
                "LBDiscover {} in <Proxy \"{name}\">: the name resolves again",
                discover.source
            );
        }
        shared.answer.store(found.targets.len() as u32, Ordering::Relaxed);
        shared.ttl.store(found.ttl, Ordering::Relaxed);
        shared.resolved_s.store(wall_s(), Ordering::Relaxed);
        let next = discover::refresh_after(discover, found.ttl);
        shared.next_s.store(monotonic_s() + next.as_secs(), Ordering::Relaxed);

        // The members as every process has them now (another line or resolver may have added
        // some since this line last looked).
        let workers = self.runtime.proxy.current_workers(balancer, server);
        let entries: Vec<(usize, Entry)> = discovery.entries().collect();
        let mine: Vec<(usize, Entry)> =
            entries.iter().copied().filter(|(_, e)| usize::from(e.line) == line).collect();
        let known: Vec<Known> = mine
            .iter()
            .map(|(_, e)| Known {
                target: Target { address: e.address, port: e.port, loadfactor: e.loadfactor, lbset: e.lbset },
                standing: match e.standing {
                    SERVING => Standing::Serving,
                    DRAINING => Standing::Draining,
                    _ => Standing::Removed,
                },
            })
            .collect();
        // Whether another line still has worker `index` serving (then this line leaves it be).
        let served_elsewhere = |index: u32| {
            entries
                .iter()
                .any(|(_, e)| usize::from(e.line) != line && e.worker == index && e.standing == SERVING)
        };
        let configured = configured_members(balancer);
        let slow_start =
            self.runtime.generation.balancer(balancer.id()).is_some_and(|b| b.settings.slow_start.is_some());
        let mut touched = false;
        for change in discover::changes(&known, &found.targets) {
            match change {
                Change::Add(target) => {
                    let url = discover.member_url(target.address, target.port);
                    if configured.iter().any(|c| c.eq_ignore_ascii_case(&url)) {
                        self.refuse_once(
                            server,
                            balancer,
                            line,
                            discover,
                            &url,
                            "a BalancerMember line has this URL: it is left as written",
                        );
                        continue;
                    }
                    if discovery.known.load(Ordering::Acquire) as usize >= record::MEMBERS {
                        self.refuse_once(
                            server,
                            balancer,
                            line,
                            discover,
                            &url,
                            "the balancer's record of discovered members is full (512)",
                        );
                        continue;
                    }
                    let adopted = workers.iter().find(|w| w.name().eq_ignore_ascii_case(&url)).copied();
                    // Another name serves it already: this name shares the member, whose
                    // settings stay those of the name that gave it first.
                    if let Some(worker) = adopted.filter(|w| served_elsewhere(w.index())) {
                        if discovery.push(entry_for(line, SERVING, worker.index(), &target)).is_some() {
                            log_server!(
                                server,
                                Level::Notice,
                                "LBDiscover {} in <Proxy \"{name}\">: member {url} is shared with another name \
                                 of the balancer; its settings stay that name's",
                                discover.source
                            );
                        }
                        continue;
                    }
                    let added = match adopted {
                        Some(worker) => {
                            worker.set_flags(&[], &[Flag::Disabled, Flag::Drain]);
                            worker.set_weight(target.loadfactor, target.lbset);
                            touched = true;
                            Ok(Some(worker))
                        }
                        None => match self.runtime.proxy.conf(server) {
                            Some(conf) => self.growth.add(
                                self.pool,
                                balancer,
                                server,
                                conf,
                                &url,
                                &params(&discover.member, &target),
                            ),
                            None => continue,
                        },
                    };
                    match added {
                        Ok(Some(worker)) => {
                            ramp_up(slow_start, segment, slot, worker);
                            if discovery.push(entry_for(line, SERVING, worker.index(), &target)).is_some() {
                                shared.added.fetch_add(1, Ordering::Relaxed);
                                log_server!(
                                    server,
                                    Level::Notice,
                                    "LBDiscover {} in <Proxy \"{name}\">: member {url} added",
                                    discover.source
                                );
                            }
                        }
                        // In shared memory already, not yet here: adopted at the next look.
                        Ok(None) => shared.next_s.store(monotonic_s(), Ordering::Relaxed),
                        Err(why) => self.refuse_once(server, balancer, line, discover, &url, &format!(
                            "{why}; a graceful restart gives back the slots of removed members (slots= keeps more free)"
                        )),
                    }
                }
                Change::Return(i, target) => {
                    let (index, entry) = mine[i];
                    if served_elsewhere(entry.worker) {
                        discovery.set(index, entry_for(line, SERVING, entry.worker, &target));
                        continue;
                    }
                    if let Some(worker) = workers.iter().find(|w| w.index() == entry.worker) {
                        worker.set_weight(target.loadfactor, target.lbset);
                        worker.set_flags(&[], &[Flag::Disabled, Flag::Drain]);
                        ramp_up(slow_start, segment, slot, *worker);
                        touched = true;
                        discovery.set(index, entry_for(line, SERVING, entry.worker, &target));
                        shared.returned.fetch_add(1, Ordering::Relaxed);
                        log_server!(
                            server,
                            Level::Notice,
                            "LBDiscover {} in <Proxy \"{name}\">: member {} is back",
                            discover.source,
                            worker.name()
                        );
                    }
                }
                Change::Reweigh(i, target) => {
                    let (index, entry) = mine[i];
                    // A shared member keeps the settings of the name that gave it first.
                    let first =
                        entries.iter().find(|(_, e)| e.worker == entry.worker && e.standing == SERVING);
                    if first.is_some_and(|(_, e)| usize::from(e.line) != line) {
                        discovery.set(index, entry_for(line, SERVING, entry.worker, &target));
                        continue;
                    }
                    if let Some(worker) = workers.iter().find(|w| w.index() == entry.worker) {
                        worker.set_weight(target.loadfactor, target.lbset);
                        touched = true;
                        discovery.set(index, entry_for(line, SERVING, entry.worker, &target));
                        log_server!(
                            server,
                            Level::Notice,
                            "LBDiscover {} in <Proxy \"{name}\">: member {} now has loadfactor {} and lbset {}",
                            discover.source,
                            worker.name(),
                            target.loadfactor / 100,
                            target.lbset
                        );
                    }
                }
                // Part of the answer failed: what it lacks may only be missing.
                Change::Drain(_) if found.partial => {}
                Change::Drain(i) => {
                    let (index, entry) = mine[i];
                    if served_elsewhere(entry.worker) {
                        // Another name still has it: this line lets go of it, and the member
                        // takes the settings of the name that has it now.
                        discovery.set(index, Entry { standing: REMOVED, ..entry });
                        if let Some(worker) = workers.iter().find(|w| w.index() == entry.worker) {
                            hand_over(discovery, *worker);
                            touched = true;
                        }
                        continue;
                    }
                    if let Some(worker) = workers.iter().find(|w| w.index() == entry.worker) {
                        worker.set_flags(&[Flag::Drain], &[]);
                        discovery.set(index, Entry { standing: DRAINING, ..entry });
                        shared.drained.fetch_add(1, Ordering::Relaxed);
                        log_server!(
                            server,
                            Level::Notice,
                            "LBDiscover {} in <Proxy \"{name}\">: member {} is gone from the answer: draining",
                            discover.source,
                            worker.name()
                        );
                    }
                }
            }
        }
        if touched {
            balancer.touch();
        }
    }

    /// Logs once per line and URL why an address was not added.
    fn refuse_once(
        &mut self,
        server: Server,
        balancer: Balancer,
        line: usize,
        discover: &Discover,
        url: &str,
        why: &str,
    ) {
        let key = (balancer, line, url.to_string());
        if self.refused.contains(&key) {
            return;
        }
        self.refused.push(key);
        log_server!(
            server,
            Level::Warning,
            "LBDiscover {} in <Proxy \"{}\">: cannot add member {url}: {why}",
            discover.source,
            balancer.name()
        );
    }

    /// Draining members with nothing in flight any more are disabled (unless another name
    /// serves them again).
    fn finish_drains(
        &self,
        balancer: Balancer,
        line: usize,
        discover: &Discover,
        workers: &[Worker],
        segment: &Segment,
        slot: &crate::shm::BalancerSlot,
    ) {
        let Some(discovery) = segment.discovery(slot) else { return };
        let entries: Vec<(usize, Entry)> = discovery.entries().collect();
        for &(index, entry) in &entries {
            if usize::from(entry.line) != line || entry.standing != DRAINING {
                continue;
            }
            let served_elsewhere = entries.iter().any(|(_, e)| {
                usize::from(e.line) != line && e.worker == entry.worker && e.standing == SERVING
            });
            let inflight = segment
                .member_index(slot, entry.worker as usize)
                .map_or(0, |m| attempt::inflight(segment, m));
            if inflight > 0 && !served_elsewhere {
                continue;
            }
            let Some(worker) = workers.iter().find(|w| w.index() == entry.worker) else { continue };
            discovery.set(index, Entry { standing: REMOVED, ..entry });
            if served_elsewhere {
                hand_over(discovery, *worker);
                balancer.touch();
                continue;
            }
            worker.set_flags(&[Flag::Disabled], &[Flag::Drain]);
            discovery.lines[line].removed.fetch_add(1, Ordering::Relaxed);
            log_server!(
                self.runtime.main_server,
                Level::Notice,
                "LBDiscover {} in <Proxy \"{}\">: member {} removed (disabled; nothing in flight)",
                discover.source,
                balancer.name(),
                worker.name()
            );
        }
    }
}
