//! Where a request's pick happens.
//!
//! mod_proxy_balancer calls a method's finder with the balancer's per-process thread lock held
//! (no lock spans processes). The finder:
//! 1. ends the request's previous attempt, if any: a new pick for the same request is a
//!    failover, so that attempt failed and must stop counting against its member at once;
//! 2. asks httpd which members are eligible now (`proxy_balancer_get_best_worker`: lbset tiers,
//!    hot spares and standbys, drain, disabled, error/retry, health checks);
//! 3. notes members coming back for slow start, and weighs each candidate (live loadfactor,
//!    ramped down during slow start) with its exact in-flight count and `LBMaxInflight` cap;
//! 4. lets the method choose ([`crate::methods`]) and reserves a place on the chosen member in
//!    one atomic step (a member that filled up meanwhile is passed over); `byhash` instead
//!    walks its key's members, reserving under the load bound;
//! 5. hands the attempt to [`crate::attempts`], which releases it exactly once.
//!
//! When every candidate is at its cap the request is shed: null (httpd answers 503) with a
//! `Retry-After` header, and no backend is touched. Null also means "no usable member".

use crate::attempts::{self, NewAttempt};
use crate::config::BalancerSettings;
use crate::ffi;
use crate::generation::BalancerRef;
use crate::httpd::log::{Level, log_request, log_server};
use crate::httpd::{proxy, request};
use crate::methods::byhash::{self, Admission};
use crate::methods::bylatency::{self, Estimate};
use crate::methods::{Candidate, Choice, Method, Reason, slow_start};
use crate::module::{self, Runtime};
use crate::shm::{MemberSlot, monotonic_us, name_key};
use crate::status::flag;
use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The finder for `method`: returns the member for this attempt, or null (httpd answers 503).
pub fn find(
    method: Method,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    let Some(runtime) = module::runtime() else {
        log_request!(r, Level::Err, "{}: module state missing (post_config did not run?)", method.name());
        return ptr::null_mut();
    };
    // SAFETY: httpd passes a live balancer and request, and holds the balancer's thread lock.
    unsafe { find_in(runtime, method, balancer, r) }
}

/// # Safety
/// As for the finder callback: live balancer and request, balancer thread lock held.
unsafe fn find_in(
    runtime: &Runtime,
    method: Method,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    // SAFETY: per this function's contract, for every call below.
    unsafe {
        attempts::end_current(r);
        let eligible = eligible_members(runtime, balancer, r);
        if eligible.is_empty() {
            log_request!(
                r,
                Level::Debug,
                "{}: {}: no usable member",
                method.name(),
                proxy::balancer_name(balancer)
            );
            return ptr::null_mut();
        }
        let Some(slot) = balancer_slot(runtime, balancer) else {
            // No shared slot (the table is full): still answer, with httpd's own first choice.
            warn_once_no_slot(balancer);
            return eligible[0].1;
        };
        let now = monotonic_us();
        if slot.settings.slow_start.is_some() {
            observe_members(runtime, balancer, &slot, now);
        }
        let pick = Pick::new(runtime, slot, eligible, now);
        let hash_key = if method == Method::ByHash { hash_key(r, pick.slot.settings) } else { None };
        let picked = match &hash_key {
            Some(key) => pick.place_key(balancer, key).or_else(|| pick.choose(Method::ByInflight)),
            None => pick.choose(method),
        };
        let Some(picked) = picked else {
            let shed = pick.slot.shared.shed.fetch_add(1, Ordering::Relaxed) + 1;
            request::set_error_header(r, "Retry-After", "1");
            log_request!(
                r,
                Level::Info,
                "{}: {}: every usable member is at its LBMaxInflight cap; request shed \
                with 503 ({shed} shed so far)",
                method.name(),
                proxy::balancer_name(balancer)
            );
            return ptr::null_mut();
        };
        let worker = pick.eligible[picked.position].1;
        if let Some(member) = picked.member {
            let decay = pick.slot.settings.latency_decay();
            let attempt = NewAttempt { member, mine: picked.mine, worker, picked_us: now, decay };
            attempts::start(r, attempt, false);
        }
        log_request!(
            r,
            Level::Debug,
            "{}: {}: picked {} ({}; {} candidate(s))",
            method.name(),
            proxy::balancer_name(balancer),
            proxy::worker_name(worker),
            picked.reason,
            pick.eligible.len()
        );
        worker
    }
}

/// One pick in progress: the eligible members and what the methods need to know about them.
struct Pick<'a> {
    runtime: &'a Runtime,
    slot: BalancerRef<'a>,
    /// Eligible members, sorted by worker index.
    eligible: Vec<(proxy::WorkerState, *mut ffi::proxy_worker)>,
    /// Their segment-wide member slot indices (none for a member beyond the declared slots).
    members: Vec<Option<usize>>,
    now: u64,
}

/// A member picked and counted (no count when it has no member slot).
struct Picked<'a> {
    /// Position in `Pick::eligible`.
    position: usize,
    member: Option<&'a MemberSlot>,
    mine: Option<&'a AtomicI32>,
    reason: Reason,
}

impl<'a> Pick<'a> {
    fn new(
        runtime: &'a Runtime,
        slot: BalancerRef<'a>,
        eligible: Vec<(proxy::WorkerState, *mut ffi::proxy_worker)>,
        now: u64,
    ) -> Pick<'a> {
        let segment = runtime.generation.segment();
        let members = eligible
            .iter()
            .map(|(state, _)| segment.member_index(slot.shared, state.index as usize))
            .collect();
        Pick { runtime, slot, eligible, members, now }
    }

    fn member(&self, position: usize) -> Option<&'a MemberSlot> {
        self.runtime.generation.segment().member(self.members[position]?)
    }

    fn mine(&self, position: usize) -> Option<&'a AtomicI32> {
        self.runtime.generation.my_contribution(self.members[position]?)
    }

    /// The member's `LBMaxInflight` limit, or no limit.
    fn cap(&self, position: usize) -> u64 {
        let lbfactor = self.eligible[position].0.lbfactor;
        self.slot.settings.max_inflight.map_or(u64::MAX, |cap| cap.for_member(lbfactor))
    }

    /// The candidates as the methods see them.
    fn candidates(&self) -> Vec<Candidate> {
        (0..self.eligible.len())
            .map(|position| {
                let state = &self.eligible[position].0;
                let member = self.member(position);
                let inflight = member.map_or(0, MemberSlot::inflight);
                Candidate {
                    worker_index: state.index,
                    weight: slow_start::member_weight(
                        state.lbfactor,
                        member,
                        self.slot.settings.slow_start,
                        self.now,
                    ),
                    inflight,
                    full: inflight >= self.cap(position),
                }
            })
            .collect()
    }

    /// Latencies to rank the candidates on, for `bylatency`.
    fn latencies(&self) -> Vec<f64> {
        let decay = self.slot.settings.latency_decay().as_micros() as u64;
        let estimates: Vec<Estimate> = (0..self.eligible.len())
            .map(|position| Estimate {
                latency_us: self.member(position).and_then(|m| m.latency(self.now, decay)),
            })
            .collect();
        bylatency::latencies(&estimates)
    }

    /// Lets `method` choose and reserves a place on its choice; a member found full at that
    /// moment is passed over and the method chooses again. `None` when every one is full.
    fn choose(&self, method: Method) -> Option<Picked<'a>> {
        let mut candidates = self.candidates();
        let latencies = if method == Method::ByLatency { self.latencies() } else { Vec::new() };
        for _ in 0..=candidates.len() {
            let Choice { position, reason } =
                self.slot.local.choose(method, self.slot.shared, &candidates, &latencies)?;
            if self.reserve(position, self.cap(position)) {
                return Some(Picked {
                    position,
                    member: self.member(position),
                    mine: self.mine(position),
                    reason,
                });
            }
            candidates[position].full = true;
        }
        None
    }

    /// Counts an attempt on the member at `position` if it has fewer than `limit` in flight.
    fn reserve(&self, position: usize, limit: u64) -> bool {
        match self.member(position) {
            Some(member) if limit == u64::MAX => {
                member.begin_attempt(self.mine(position));
                true
            }
            Some(member) => member.try_begin_attempt(limit, self.mine(position)),
            None => true, // a member beyond the slots httpd declared: balanced, not counted
        }
    }

    /// `byhash`: places `key` on the balancer's table, walking past members that cannot take
    /// it. `None` if none would (then the request is balanced as `byinflight`).
    ///
    /// # Safety
    /// Live balancer, thread lock held.
    unsafe fn place_key(&self, balancer: *mut ffi::proxy_balancer, key: &[u8]) -> Option<Picked<'a>> {
        let segment = self.runtime.generation.segment();
        // The table holds every member, usable or not, in worker index order.
        // SAFETY: per this function's contract.
        let all = unsafe { all_members(balancer) };
        let table_members = table_members(segment, &self.slot, &all);
        let table = self.slot.local.hash_table(&table_members);
        // Where each table member is among the eligible ones (both are in worker index order).
        let mut eligible_at = Vec::with_capacity(all.len());
        let mut cursor = 0;
        for (state, _) in &all {
            while cursor < self.eligible.len() && self.eligible[cursor].0.index < state.index {
                cursor += 1;
            }
            let here = cursor < self.eligible.len() && self.eligible[cursor].0.index == state.index;
            eligible_at.push(here.then_some(cursor));
        }
        let candidates = self.candidates();
        let total: u64 = candidates.iter().map(|c| c.inflight).sum();
        let bound = self
            .slot
            .settings
            .balance_factor()
            .map_or(u64::MAX, |c| byhash::load_bound(c, total, candidates.len()));
        let hash = byhash::key_hash(key);
        let admit = |member: usize| {
            let Some(position) = eligible_at[member] else { return Admission::Pass };
            let full_weight = self.eligible[position].0.lbfactor;
            let fraction = f64::from(candidates[position].weight) / f64::from(full_weight.max(1));
            if fraction < 1.0 && !byhash::ramp_admits(hash, fraction) {
                return Admission::Pass; // on its slow-start ramp, and not yet taking this key
            }
            Admission::UpTo(bound.min(self.cap(position)))
        };
        let reserve = |member: usize, limit: u64| eligible_at[member].is_some_and(|p| self.reserve(p, limit));
        let placement = byhash::place(&table, hash, admit, reserve)?;
        if placement.diverted {
            self.slot.shared.diverted.fetch_add(1, Ordering::Relaxed);
        }
        let position = eligible_at[placement.member]?;
        let reason = Reason::Hash { steps: placement.steps, diverted: placement.diverted };
        Some(Picked { position, member: self.member(position), mine: self.mine(position), reason })
    }
}

/// Every member of the balancer, usable or not, in worker index order.
///
/// # Safety
/// Live balancer, thread lock held.
pub unsafe fn all_members(
    balancer: *mut ffi::proxy_balancer,
) -> Vec<(proxy::WorkerState, *mut ffi::proxy_worker)> {
    // SAFETY: per this function's contract.
    let mut all: Vec<_> = unsafe { proxy::workers(balancer) }
        .into_iter()
        .map(|w| (unsafe { proxy::worker_state(w) }, w))
        .collect();
    all.sort_by_key(|(state, _)| state.index);
    all
}

/// What `byhash`'s table is built from: (name key, loadfactor x 100) of each member of `all`.
pub fn table_members(
    segment: &crate::shm::Segment,
    slot: &BalancerRef<'_>,
    all: &[(proxy::WorkerState, *mut ffi::proxy_worker)],
) -> Vec<(u64, u32)> {
    all.iter()
        .map(|&(state, worker)| {
            (member_key(segment.member_of(slot.shared, state.index as usize), worker), state.lbfactor)
        })
        .collect()
}

/// A member's name key (the slot remembers it; a member added at run time learns it here).
fn member_key(member: Option<&MemberSlot>, worker: *mut ffi::proxy_worker) -> u64 {
    let known = member.map_or(0, |m| m.key.load(Ordering::Relaxed));
    if known != 0 {
        return known;
    }
    // SAFETY: httpd's members are live.
    let key = name_key(&unsafe { proxy::worker_key_name(worker) });
    if let Some(member) = member {
        member.key.store(key, Ordering::Relaxed);
    }
    key
}

/// The request's `LBHashKey` value; `None` when not set, or empty for this request.
///
/// # Safety
/// Live request.
unsafe fn hash_key(r: *mut ffi::request_rec, settings: &BalancerSettings) -> Option<Vec<u8>> {
    let Some(key) = &settings.hash_key else {
        warn_once_no_key(r);
        return None;
    };
    let mut error: *const c_char = ptr::null();
    // SAFETY: compiled is the ap_expr_info_t parsed from this directive, in the configuration
    // pool of this generation; r is live.
    let value = unsafe { ffi::ap_expr_str_exec(r, key.compiled as *const ffi::ap_expr_info_t, &mut error) };
    if !error.is_null() {
        log_request!(
            r,
            Level::Warning,
            "LBHashKey \"{}\" failed: {}; balancing this request as byinflight",
            key.source,
            unsafe { proxy::c_str(error) }
        );
        return None;
    }
    // SAFETY: a C string in the request pool, or null.
    let value = unsafe { proxy::c_str(value) };
    (!value.is_empty()).then(|| value.into_bytes())
}

fn warn_once_no_key(r: *mut ffi::request_rec) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        log_request!(
            r,
            Level::Warning,
            "byhash is used by a balancer without LBHashKey: it balances as byinflight"
        );
    }
}

/// Slow start: records, for every member of the balancer, whether it can take requests now;
/// a member seen out that is back starts its ramp.
///
/// # Safety
/// Live balancer, thread lock held (httpd may add members under it).
unsafe fn observe_members(
    runtime: &Runtime,
    balancer: *mut ffi::proxy_balancer,
    slot: &BalancerRef<'_>,
    now: u64,
) {
    let segment = runtime.generation.segment();
    // SAFETY: per this function's contract.
    for worker in unsafe { proxy::workers(balancer) } {
        // SAFETY: httpd's members are live.
        let state = unsafe { proxy::worker_state(worker) };
        if let Some(member) = segment.member_of(slot.shared, state.index as usize) {
            member.observe(selectable(state.status), now);
        }
    }
}

/// True when httpd would offer the member for new requests (usable and not draining).
fn selectable(status: u32) -> bool {
    let out =
        flag::IN_SHUTDOWN | flag::DISABLED | flag::STOPPED | flag::IN_ERROR | flag::HC_FAIL | flag::DRAIN;
    status & flag::INITIALIZED != 0 && status & out == 0
}

/// The members httpd says may take this request, sorted by worker index so that every process
/// lists the same members in the same order.
///
/// # Safety
/// Live balancer and request, balancer thread lock held.
unsafe fn eligible_members(
    runtime: &Runtime,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> Vec<(proxy::WorkerState, *mut ffi::proxy_worker)> {
    let mut offered: Vec<*mut ffi::proxy_worker> = Vec::with_capacity(8);
    // SAFETY: record_candidate only pushes onto `offered`, which outlives the call.
    unsafe {
        (runtime.proxy.get_best_worker)(
            balancer,
            r,
            Some(record_candidate),
            &mut offered as *mut Vec<*mut ffi::proxy_worker> as *mut c_void,
        )
    };
    // SAFETY: every offered worker is live.
    let mut eligible: Vec<_> = offered.into_iter().map(|w| (unsafe { proxy::worker_state(w) }, w)).collect();
    eligible.sort_by_key(|(state, _)| state.index);
    eligible
}

/// httpd's `is_best` callback: records each member offered and answers "yes" so that httpd
/// stops at the first lbset tier that has usable members and offers standbys only when that
/// tier has nothing else.
unsafe extern "C" fn record_candidate(
    current: *mut ffi::proxy_worker,
    _prev_best: *mut ffi::proxy_worker,
    baton: *mut c_void,
) -> c_int {
    crate::httpd::guard::catch("lbmethod is_best callback", 1, || {
        // SAFETY: baton is the Vec passed by eligible_members, alive for the whole walk.
        let offered = unsafe { &mut *(baton as *mut Vec<*mut ffi::proxy_worker>) };
        offered.push(current);
        1
    })
}

/// The balancer's slot in this generation.
///
/// # Safety
/// Live balancer.
unsafe fn balancer_slot<'a>(
    runtime: &'a Runtime,
    balancer: *mut ffi::proxy_balancer,
) -> Option<BalancerRef<'a>> {
    // SAFETY: per this function's contract.
    runtime.generation.slot(unsafe { slot_index(runtime, balancer) }?)
}

/// # Safety
/// Live balancer.
unsafe fn slot_index(runtime: &Runtime, balancer: *mut ffi::proxy_balancer) -> Option<usize> {
    // SAFETY: per this function's contract.
    let id = unsafe { proxy::balancer_id(balancer) };
    runtime.generation.slot_of(id, || unsafe {
        (name_key(&proxy::balancer_key_name(balancer)), (*balancer).max_workers.max(0) as u32)
    })
}

fn warn_once_no_slot(balancer: *mut ffi::proxy_balancer) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        log_server!(
            ptr::null(),
            Level::Warning,
            "{}: no shared slot left for this balancer; it is balanced without shared state",
            unsafe { proxy::balancer_name(balancer) }
        );
    }
}

/// httpd routed a request by its sticky session to `worker` (the method was bypassed).
pub fn sticky_hit(balancer: *mut ffi::proxy_balancer, worker: *mut ffi::proxy_worker) {
    let Some(runtime) = module::runtime() else { return };
    // SAFETY: httpd passes a live balancer.
    if let Some(slot) = unsafe { slot_index(runtime, balancer) } {
        attempts::note_sticky_hit(slot, worker);
    }
}
