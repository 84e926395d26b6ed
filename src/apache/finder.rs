//! Where a request's pick happens.
//!
//! mod_proxy_balancer calls the finder of the balancer's method with the balancer's
//! per-process thread lock held (no lock spans processes). The finder, top to bottom:
//! 1. ends the request's previous attempt, if any: a new pick for the same request is a
//!    failover, so that attempt failed and must stop counting against its member at once;
//! 2. collects the **eligible members**: asks httpd which members may take the request now
//!    (lbset tiers, hot spares and standbys, drain, disabled, error/retry, health checks),
//!    and, with `LBOutlierDetection`, leaves out the ejected ones (reviewing the balancer's
//!    members first when a review is due: `methods::outlier`);
//! 3. **weighs** each one into a [`Candidate`]: live loadfactor, ramped down during slow start
//!    (members coming back are noted first), its exact in-flight count, `LBMaxInflight` cap
//!    and tier;
//! 4. lets **the method choose** ([`crate::methods`]), which **reserves** a place on its
//!    choice in one atomic step (a member that filled up meanwhile is passed over): that
//!    starts the attempt on the shared counters;
//! 5. hands the attempt to the request ([`super::attempts`]), which ends it exactly once.
//!
//! When every candidate is at its cap the request is shed: no member (httpd answers 503) and
//! a `Retry-After` header, and no backend is touched. No member also means "no usable member".
//!
//! Nothing here allocates or builds a table once the balancer's buffers have grown to its
//! size: the buffers live in this process's state for the balancer, the tables come from
//! `methods::tables`, the key is hashed where httpd left it.

use super::attempts::{self, Picked};
use super::generation::{BalancerRef, Local};
use super::module::{Runtime, runtime};
use crate::config::{BalancerSettings, Outliers};
use crate::httpd::log::{Level, log_request, log_server};
use crate::httpd::proxy::Finder;
use crate::httpd::request::Expression;
use crate::httpd::{Balancer, Request, Server, Worker, process};
use crate::methods::outlier::{self, Event, Reviewed};
use crate::methods::{
    Candidate, METHODS, Member, NO_LIMIT, Pick, Registered, SharedCounts, Tier, slow_start,
};
use crate::shm::attempt::{self, Holders, Loans};
use crate::shm::queue::{Requeued, Waited};
use crate::shm::{monotonic_us, name_key};
use std::sync::atomic::{AtomicBool, Ordering};

/// The finder every provider table calls.
pub struct Find;

impl Finder for Find {
    fn find(method: usize, balancer: Balancer, r: Request<'_>) -> Option<Worker> {
        let method = METHODS.get(method)?;
        let Some(runtime) = runtime() else {
            log_request!(r, Level::Err, "{}: module state missing (post_config did not run?)", method.name());
            return None;
        };
        attempts::failover(r);
        let Some(slot) = runtime.generation.balancer(balancer.id()) else {
            // Not a balancer httpd had at startup: answer, with httpd's own first choice.
            warn_once_no_slot(balancer);
            let mut offered = Vec::new();
            runtime.proxy.eligible(balancer, r, &mut offered);
            return offered.first().copied();
        };
        let found = pick(runtime, method, balancer, &slot, &mut slot.local(), r, false);
        match found {
            Found::Member(worker) => Some(worker),
            Found::NoMember => None,
            Found::Full => match slot.settings.queue {
                Some(queue) => wait_for_place(runtime, method, balancer, &slot, queue, r),
                None => {
                    shed(method, balancer, &slot, r, "every usable member is at its LBMaxInflight cap");
                    None
                }
            },
        }
    }
}

/// What a pick found.
enum Found {
    Member(Worker),
    /// No usable member: the request is refused (httpd answers 503).
    NoMember,
    /// Every usable member is at its cap (or requests wait in line before this one).
    Full,
}

/// `queued`: the request has waited in line (it may take a place while others wait).
fn pick(
    runtime: &'static Runtime,
    method: &'static Registered,
    balancer: Balancer,
    slot: &BalancerRef<'static>,
    local: &mut Local,
    r: Request<'_>,
    queued: bool,
) -> Found {
    runtime.proxy.eligible(balancer, r, &mut local.offered);
    local.offered.sort_unstable_by_key(|worker| worker.index());
    if local.offered.is_empty() {
        log_request!(r, Level::Debug, "{}: {}: no usable member", method.name(), balancer.name());
        attempts::no_member(r);
        return Found::NoMember;
    }
    let segment = runtime.generation.segment();
    // First come, first served: while requests wait in line, a newcomer goes behind them.
    if !queued && slot.settings.queue.is_some() && segment.queue(slot.shared).is_some_and(|q| q.in_line()) {
        return Found::Full;
    }
    let now = monotonic_us();
    if let Some(outliers) = slot.settings.outlier_detection() {
        review_outliers(runtime, balancer, slot, outliers, now, r.server());
        leave_out_ejected(runtime, slot, &mut local.offered, now);
    }
    if slot.settings.slow_start.is_some() {
        observe_members(runtime, balancer, slot, now);
    }
    sync_members(runtime, balancer, slot, local);
    let key = if method.method.uses_hash_key() { hash_key(r, slot.settings) } else { None };
    for round in 0..2 {
        let loans = Loans::read(segment);
        weigh(runtime, slot, local, &loans, now);
        let mut counts = SharedCounts { loans, ..SharedCounts::new(runtime.generation.counts()) };
        let mut pick = Pick::new(
            slot.shared,
            slot.settings,
            segment,
            now,
            key,
            slot.tables,
            &mut local.methods,
            &mut counts,
        );
        if let Some(choice) = method.method.choose(&mut pick) {
            let candidate_count = pick.candidates().len();
            // Candidates are in the order of `offered` (both by worker index).
            let worker = local.offered[choice.position];
            if let Some(attempt) = counts.taken.take() {
                let (balancer, settings) = (slot.shared, slot.settings);
                let probe = choice.is_probe();
                attempts::start(r, Picked { attempt, worker, picked_us: now, balancer, settings, probe });
            }
            log_request!(
                r,
                Level::Debug,
                "{}: {}: picked {} ({}; {} candidate(s))",
                method.name(),
                balancer.name(),
                worker.name(),
                choice.reason,
                candidate_count
            );
            return Found::Member(worker);
        }
        // Every member is full. Before refusing: places held by a sibling process that died and
        // that httpd's parent has not reaped yet (it looks once a second) come back at once.
        if round == 1 {
            break;
        }
        let members = local.methods.candidates().iter().filter_map(|c| c.member.map(|m| m as usize));
        match attempt::mark_dead_holders(segment, members, now, process::gone) {
            Holders::Marked(n) => log_request!(
                r,
                Level::Notice,
                "{n} dead child process(es) hold places on {}: lent until httpd's parent takes them back",
                balancer.name()
            ),
            Holders::LookedElsewhere => {}
            Holders::Nothing => break,
        }
    }
    Found::Full
}

/// Refuses the request for want of a place: 503 with `Retry-After`, counted as shed.
fn shed(method: &Registered, balancer: Balancer, slot: &BalancerRef<'static>, r: Request<'_>, why: &str) {
    let shed = attempts::refuse(r, &slot.shared.events.shed);
    log_request!(
        r,
        Level::Info,
        "{}: {}: {why}; request refused ({shed} shed so far with this one)",
        method.name(),
        balancer.name()
    );
}

/// `LBQueue`: every usable member is at its cap, so the request waits in line for a place
/// (`shm::queue`), without holding the balancer's thread lock, and picks when one frees for
/// it; refused when its time is up, when `max` wait already, or when its client goes.
fn wait_for_place(
    runtime: &'static Runtime,
    method: &'static Registered,
    balancer: Balancer,
    slot: &BalancerRef<'static>,
    settings: crate::config::Queue,
    r: Request<'_>,
) -> Option<Worker> {
    let segment = runtime.generation.segment();
    let Some(queue) = segment.queue(slot.shared) else {
        shed(method, balancer, slot, r, "every usable member is at its LBMaxInflight cap");
        return None;
    };
    // httpd's balancer timeout= asks again for a refused request (up to 100 times): it has had
    // its wait in line.
    if attempts::refused_by_queue(r) {
        shed(
            method,
            balancer,
            slot,
            r,
            "every usable member is at its cap, and this request has waited in line already",
        );
        return None;
    }
    let joined = monotonic_us();
    let deadline = joined + settings.timeout.as_micros() as u64;
    let Some(ticket) = queue.join(settings.max, std::process::id(), joined) else {
        attempts::queue_refused(r);
        let why =
            format!("every usable member is at its cap and {} requests wait (LBQueue max)", settings.max);
        shed(method, balancer, slot, r, &why);
        return None;
    };
    // Whether to pick without waiting first (a spare grant), and whether the pick comes from
    // the ticket's own look rather than a grant.
    let mut pick_now = None;
    loop {
        let looked = match pick_now.take() {
            Some(looked) => looked,
            None => {
                match balancer.without_thread_lock(|| queue.wait(&ticket, deadline, || r.client_gone())) {
                    Waited::Granted => false,
                    Waited::Look => true,
                    Waited::TimedOut => {
                        attempts::queue_refused(r);
                        let waited_ms = settings.timeout.as_millis();
                        let why = format!("no place freed within the LBQueue timeout ({waited_ms} ms)");
                        shed(method, balancer, slot, r, &why);
                        return None;
                    }
                    Waited::Gone => {
                        attempts::queue_refused(r);
                        log_request!(
                            r,
                            Level::Info,
                            "{}: {}: the client went away while waiting for a place",
                            method.name(),
                            balancer.name()
                        );
                        attempts::refuse(r, &slot.shared.events.shed);
                        return None;
                    }
                }
            }
        };
        match pick(runtime, method, balancer, slot, &mut slot.local(), r, true) {
            Found::Member(worker) => {
                queue.served(ticket, looked, monotonic_us());
                return Some(worker);
            }
            Found::NoMember => {
                queue.quit(ticket, monotonic_us());
                return None;
            }
            // Its look found nothing: it waits on, still first in line.
            Found::Full if looked => {}
            // Granted, but the place went to a request that does not wait: back to the front,
            // or at once if a place freed meanwhile with nobody at the head.
            Found::Full => match queue.requeue(&ticket) {
                Requeued::Again => pick_now = Some(false),
                Requeued::Waiting => {}
                Requeued::Lost => {
                    queue.quit(ticket, monotonic_us());
                    attempts::queue_refused(r);
                    shed(method, balancer, slot, r, "lost its place in line");
                    return None;
                }
            },
        }
    }
}

/// Weighs the members httpd offered into the method's candidates.
fn weigh(runtime: &Runtime, slot: &BalancerRef<'_>, local: &mut Local, loans: &Loans, now: u64) {
    let segment = runtime.generation.segment();
    let settings = slot.settings;
    let Local { methods, offered } = local;
    let candidates = methods.candidates_mut();
    for &worker in offered.iter() {
        let state = worker.state();
        let member = segment.member_index(slot.shared, state.index as usize);
        // What live processes hold: places held by dead processes that httpd's parent has not
        // reaped yet are lent (the reservation adds them back to the cap).
        let lent = member.map_or(0, |m| loans.of(segment, m));
        let inflight = member.map_or(0, |m| attempt::inflight(segment, m)).saturating_sub(lent);
        let inflight = inflight.min(u64::from(u32::MAX - 1)) as u32;
        let limit = settings
            .max_inflight
            .map_or(NO_LIMIT, |cap| cap.for_member(state.lbfactor).min(u64::from(NO_LIMIT - 1)) as u32);
        let weight = match settings.slow_start {
            Some(_) => slow_start::member_weight(
                state.lbfactor,
                member.and_then(|m| segment.member(m)),
                settings.slow_start,
                now,
            ),
            None => state.lbfactor,
        };
        candidates.push(Candidate {
            worker_index: state.index,
            member: member.map(|m| m as u32),
            lbfactor: state.lbfactor,
            weight,
            inflight,
            limit,
            full: inflight >= limit,
            tier: Tier { lbset: state.lbset, standby: state.standby() },
        });
    }
}

/// Brings the balancer's member list (which the tables are built from) up to date when httpd
/// has added members; otherwise costs one comparison. Each member's slot learns its name the
/// first time a process sees it.
pub(super) fn sync_members(runtime: &Runtime, balancer: Balancer, slot: &BalancerRef<'_>, local: &mut Local) {
    let segment = runtime.generation.segment();
    local.methods.sync_members((balancer.worker_count(), balancer.updated()), |members| {
        for worker in balancer.initialized_workers() {
            let state = worker.state();
            let key = name_key(worker.key_name().as_bytes());
            if let Some(member) = segment.member_of(slot.shared, state.index as usize) {
                // A member added at run time: its slot is still unnamed (0).
                let _ = member.life.key.compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed);
            }
            members.push(member_of(worker));
        }
    });
}

/// A member as the tables are built from it.
pub(super) fn member_of(worker: Worker) -> Member {
    let state = worker.state();
    Member {
        worker_index: state.index,
        key: name_key(worker.key_name().as_bytes()),
        lbfactor: state.lbfactor,
        tier: Tier { lbset: state.lbset, standby: state.standby() },
    }
}

/// The request's `LBHashKey` value, as the bytes httpd produced (no conversion: keys that
/// differ in any byte stay different); `None` when not set, or empty for this request.
fn hash_key<'r>(r: Request<'r>, settings: &BalancerSettings) -> Option<&'r [u8]> {
    let Some(key) = &settings.hash_key else {
        warn_once_no_key(r);
        return None;
    };
    let expression = *key.compiled.get::<Expression>()?;
    match r.eval(expression) {
        Ok(bytes) => (!bytes.is_empty()).then_some(bytes),
        Err(why) => {
            log_request!(
                r,
                Level::Warning,
                "LBHashKey \"{}\" failed: {why}; balancing this request as byinflight",
                key.source
            );
            None
        }
    }
}

fn warn_once_no_key(r: Request<'_>) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        log_request!(
            r,
            Level::Warning,
            "byhash is used by a balancer without LBHashKey: it balances as byinflight"
        );
    }
}

/// Slow start: records, for every member of the balancer, whether it can take requests now
/// (an ejected member cannot); a member seen out that is back starts its ramp.
fn observe_members(runtime: &Runtime, balancer: Balancer, slot: &BalancerRef<'_>, now: u64) {
    let segment = runtime.generation.segment();
    for worker in balancer.initialized_workers() {
        let state = worker.state();
        if let Some(member) = segment.member_of(slot.shared, state.index as usize) {
            let usable = state.selectable() && !outlier::ejected(&member.health, now);
            slow_start::observe(member, usable, now);
        }
    }
}

/// Outlier detection: reviews the balancer's members if a review is due (one process at a
/// time), and logs what it did.
fn review_outliers(
    runtime: &Runtime,
    balancer: Balancer,
    slot: &BalancerRef<'_>,
    settings: &Outliers,
    now: u64,
    server: Option<Server>,
) {
    let Some(claim) = outlier::claim_review(&slot.shared.events, now) else { return };
    let segment = runtime.generation.segment();
    let (workers, members): (Vec<Worker>, Vec<Reviewed<'_>>) = balancer
        .initialized_workers()
        .filter_map(|worker| {
            let state = worker.state();
            let member = segment.member_of(slot.shared, state.index as usize)?;
            let tier = Tier { lbset: state.lbset, standby: state.standby() };
            Some((worker, Reviewed { slot: member, tier, usable: state.selectable() }))
        })
        .unzip();
    let mut events = Vec::new();
    outlier::review(claim, &slot.shared.events, &members, settings, now, &mut events);
    let name = balancer.name();
    for event in events {
        match event {
            Event::Ejected { position, why, length, ejections, detail } => log_server!(
                server,
                Level::Notice,
                "{name}: member {} ejected for {}: {} ({}; ejection {ejections}); it comes back on its own",
                workers[position].name(),
                outlier::seconds(length),
                outlier::describe(why, detail),
                why.name()
            ),
            Event::Returned { position } => log_server!(
                server,
                Level::Notice,
                "{name}: member {} is back from its ejection",
                workers[position].name()
            ),
            Event::Spared { position, why, because, detail } => log_server!(
                server,
                Level::Info,
                "{name}: member {} is not ejected although {}: {}",
                workers[position].name(),
                outlier::describe(why, detail),
                because.reason()
            ),
        }
    }
}

/// Leaves the ejected members out of the ones httpd offered, unless that leaves none.
fn leave_out_ejected(runtime: &Runtime, slot: &BalancerRef<'_>, offered: &mut Vec<Worker>, now: u64) {
    if !outlier::any_ejected(&slot.shared.events) {
        return;
    }
    let segment = runtime.generation.segment();
    let ejected = |worker: &Worker| {
        segment
            .member_of(slot.shared, worker.index() as usize)
            .is_some_and(|m| outlier::ejected(&m.health, now))
    };
    if !offered.iter().all(ejected) {
        offered.retain(|worker| !ejected(worker));
    }
}

fn warn_once_no_slot(balancer: Balancer) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        log_server!(
            None::<Server>,
            Level::Warning,
            "{}: no shared slot for this balancer; it is balanced without shared state",
            balancer.name()
        );
    }
}
