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
use crate::config::{Discover, MemberParams};
use crate::discover::dns::SystemResolver;
use crate::discover::{self, Change, Found, Known, Standing, Target};
use crate::httpd::growth::{Flag, Growth, WorkerParams};
use crate::httpd::log::{Level, log_server};
use crate::httpd::{Balancer, Pool, Server, Worker, process};
use crate::shm::discovery::{self as record, DRAINING, Entry, LINES, REMOVED, SERVING};
use crate::shm::{Segment, attempt, monotonic_us, name_key};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
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

/// check_config, in the parent's second pass (and at every restart): looks every name up and
/// defines its members. `previous`: the segment of the generation before, if any. Errors stop
/// httpd.
pub fn define_at_startup(main: Server, pconf: Pool, previous: Option<&Segment>) -> Vec<String> {
    let mut startup = STARTUP.lock().unwrap_or_else(|e| e.into_inner());
    startup.clear();
    let Ok(proxy) = crate::httpd::proxy::ProxyApi::find() else { return Vec::new() };
    let balancers = proxy.balancers(main);
    let mut errors = Vec::new();
    let system = system_resolver();
    for &(server, balancer) in &balancers {
        let settings = settings_of(server, balancer);
        if settings.discover.is_empty() {
            continue;
        }
        let name = balancer.name();
        if settings.discover.len() > LINES {
            errors.push(format!("LBDiscover in <Proxy \"{name}\">: at most {LINES} names per balancer"));
            continue;
        }
        let growth = match Growth::find() {
            Ok(growth) => growth,
            Err(missing) => {
                errors.push(format!("LBDiscover in <Proxy \"{name}\">: {missing} (httpd 2.4 too old?)"));
                continue;
            }
        };
        let Some(conf) = proxy.conf(server) else { continue };
        balancer.reserve_growth(settings.discover.iter().map(|d| d.slots).sum());
        let before = previous.and_then(|segment| previous_record(segment, server, balancer));
        for (line, discover) in settings.discover.iter().enumerate() {
            let key = name_key(discover.source.as_bytes());
            let last = before.as_ref().and_then(|previous| {
                let index = previous.lines.iter().position(|(k, _)| *k == key)?;
                Some((previous.lines[index].1, last_answer(&previous.entries, index)))
            });
            let (found, targets) = match discover::lookup(discover, &system) {
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
            });
        }
    }
    errors
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

/// With `LBSlowStart`, a member that joins or comes back starts its ramp now.
fn ramp_up(slow_start: bool, segment: &Segment, slot: &crate::shm::BalancerSlot, worker: Worker) {
    if let Some(member) = segment.member_of(slot, worker.index() as usize).filter(|_| slow_start) {
        crate::methods::slow_start::start_ramp(member, monotonic_us());
    }
}

/// child_init: starts the resolver thread when a balancer discovers its members.
pub fn start_resolver(runtime: &'static Runtime, s: Server) {
    let balancers: Vec<(Server, Balancer)> = runtime
        .proxy
        .balancers(runtime.main_server)
        .into_iter()
        .filter(|&(server, balancer)| !settings_of(server, balancer).discover.is_empty())
        .collect();
    if balancers.is_empty() {
        return;
    }
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
    system: SystemResolver,
    pid: u32,
    /// Lines whose failure was logged (logged again once they resolve and fail anew).
    complained: Vec<(Balancer, usize)>,
    /// Lines that could not add a member for want of a slot.
    full: Vec<(Balancer, usize)>,
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
            system: system_resolver(),
            pid: std::process::id(),
            complained: Vec::new(),
            full: Vec::new(),
        })
    }

    /// Until the generation ends: while this process holds the lease, follows every name.
    fn run(mut self) {
        let segment = *self.runtime.generation.segment();
        let header = segment.header();
        let epoch = self.runtime.epoch;
        loop {
            if header.generation.load(Ordering::Acquire) != epoch {
                return;
            }
            if record::hold_lease(header, self.pid, epoch, monotonic_s(), process::gone) {
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(&segment)));
                if step.is_err() {
                    log_server!(
                        self.runtime.main_server,
                        Level::Err,
                        "LBDiscover: the resolver failed; trying again in 10s"
                    );
                    std::thread::sleep(Duration::from_secs(10));
                }
            }
            std::thread::sleep(TICK);
        }
    }

    fn step(&mut self, segment: &Segment) {
        for i in 0..self.balancers.len() {
            let (server, balancer) = self.balancers[i];
            let Some(slot) = self.runtime.generation.balancer(balancer.id()) else { continue };
            let Some(discovery) = segment.discovery(slot.shared) else { continue };
            // This process's copy of the members, with those another resolver added.
            let workers = self.runtime.proxy.current_workers(balancer, server);
            for (line, discover) in slot.settings.discover.iter().enumerate() {
                let Some(shared) = discovery.lines.get(line) else { continue };
                if monotonic_s() >= shared.next_s.load(Ordering::Relaxed) {
                    self.look_up(server, balancer, line, discover, &workers, segment, slot.shared);
                }
                self.finish_drains(balancer, line, discover, &workers, segment, slot.shared);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn look_up(
        &mut self,
        server: Server,
        balancer: Balancer,
        line: usize,
        discover: &Discover,
        workers: &[Worker],
        segment: &Segment,
        slot: &crate::shm::BalancerSlot,
    ) {
        let Some(discovery) = segment.discovery(slot) else { return };
        let shared = &discovery.lines[line];
        shared.lookups.fetch_add(1, Ordering::Relaxed);
        let name = balancer.name();
        let found = match discover::lookup(discover, &self.system) {
            Ok(found) => found,
            Err(why) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                let failing = shared.failing.fetch_add(1, Ordering::Relaxed);
                shared.set_error(&why);
                let next = discover::retry_after(discover, failing);
                shared.next_s.store(monotonic_s() + next.as_secs(), Ordering::Relaxed);
                if !self.complained.contains(&(balancer, line)) {
                    self.complained.push((balancer, line));
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
        if let Some(i) = self.complained.iter().position(|c| *c == (balancer, line)) {
            self.complained.swap_remove(i);
            log_server!(
                server,
                Level::Notice,
                "LBDiscover {} in <Proxy \"{name}\">: the name resolves again",
                discover.source
            );
        }
        shared.failing.store(0, Ordering::Relaxed);
        shared.answer.store(found.targets.len() as u32, Ordering::Relaxed);
        shared.ttl.store(found.ttl, Ordering::Relaxed);
        shared.resolved_s.store(wall_s(), Ordering::Relaxed);
        let next = discover::refresh_after(discover, found.ttl);
        shared.next_s.store(monotonic_s() + next.as_secs(), Ordering::Relaxed);

        let entries: Vec<(usize, Entry)> =
            discovery.entries().filter(|(_, e)| usize::from(e.line) == line).collect();
        let known: Vec<Known> = entries
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
        let mut touched = false;
        let slow_start =
            self.runtime.generation.balancer(balancer.id()).is_some_and(|b| b.settings.slow_start.is_some());
        for change in discover::changes(&known, &found.targets) {
            match change {
                Change::Add(target) => {
                    let url = discover.member_url(target.address, target.port);
                    let adopted = workers.iter().find(|w| w.name().eq_ignore_ascii_case(&url)).copied();
                    let added = match adopted {
                        Some(worker) => {
                            worker.set_flags(&[], &[Flag::Disabled, Flag::Drain]);
                            worker.set_weight(target.loadfactor, target.lbset);
                            touched = true;
                            Ok(worker)
                        }
                        None => self.growth.add(
                            self.pool,
                            balancer,
                            server,
                            match self.runtime.proxy.conf(server) {
                                Some(conf) => conf,
                                None => continue,
                            },
                            &url,
                            &params(&discover.member, &target),
                        ),
                    };
                    match added {
                        Ok(worker) => {
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
                        Err(why) => {
                            if !self.full.contains(&(balancer, line)) {
                                self.full.push((balancer, line));
                                log_server!(
                                    server,
                                    Level::Warning,
                                    "LBDiscover {} in <Proxy \"{name}\">: cannot add member {url}: {why}; a graceful \
                                     restart gives back the slots of removed members (slots= keeps more free)",
                                    discover.source
                                );
                            }
                        }
                    }
                }
                Change::Return(i, target) => {
                    let (index, entry) = entries[i];
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
                    let (index, entry) = entries[i];
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
                Change::Drain(i) => {
                    let (index, entry) = entries[i];
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
        self.full.retain(|f| *f != (balancer, line));
    }

    /// Draining members with nothing in flight any more are disabled.
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
        for (index, entry) in discovery.entries() {
            if usize::from(entry.line) != line || entry.standing != DRAINING {
                continue;
            }
            let inflight = segment
                .member_index(slot, entry.worker as usize)
                .map_or(0, |m| attempt::inflight(segment, m));
            if inflight > 0 {
                continue;
            }
            let Some(worker) = workers.iter().find(|w| w.index() == entry.worker) else { continue };
            worker.set_flags(&[Flag::Disabled], &[Flag::Drain]);
            discovery.set(index, Entry { standing: REMOVED, ..entry });
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
