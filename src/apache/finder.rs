//! Where a request's pick happens.
//!
//! mod_proxy_balancer calls the finder of the balancer's method with the balancer's
//! per-process thread lock held (no lock spans processes). The finder, top to bottom:
//! 1. ends the request's previous attempt, if any: a new pick for the same request is a
//!    failover, so that attempt failed and must stop counting against its member at once;
//! 2. collects the **eligible members**: asks httpd which members may take the request now
//!    (`proxy_balancer_get_best_worker`: lbset tiers, hot spares and standbys, drain, disabled,
//!    error/retry, health checks);
//! 3. **weighs** each one into a [`Candidate`]: live loadfactor, ramped down during slow start
//!    (members coming back are noted first), its exact in-flight count and `LBMaxInflight` cap;
//! 4. lets **the method choose** ([`crate::methods`]), which **reserves** a place on its
//!    choice in one atomic step (a member that filled up meanwhile is passed over);
//! 5. records the **attempt** ([`super::attempts`]), which releases it exactly once.
//!
//! When every candidate is at its cap the request is shed: null (httpd answers 503) with a
//! `Retry-After` header, and no backend is touched. Null also means "no usable member".
//!
//! Nothing here allocates once the balancer's buffers have grown to its size: the buffers live
//! in this process's state for the balancer, the key is hashed where httpd left it.

use super::attempts::{self, NewAttempt};
use super::generation::{BalancerRef, Local};
use super::module::{Runtime, runtime};
use crate::config::BalancerSettings;
use crate::ffi;
use crate::httpd::guard::catch;
use crate::httpd::log::{Level, log_request, log_server};
use crate::httpd::proxy;
use crate::methods::{Candidate, Member, NO_LIMIT, Pick, Registered, slow_start};
use crate::shm::{monotonic_us, name_key};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The finder for `method`: returns the member for this attempt, or null (httpd answers 503).
pub fn find(
    method: &'static Registered,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    let Some(runtime) = runtime() else {
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
    method: &'static Registered,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    // SAFETY: per this function's contract, for every call below.
    unsafe {
        attempts::end_current(r);
        let Some(slot) = balancer_slot(runtime, balancer) else {
            // No shared slot (the table is full): still answer, with httpd's own first choice.
            warn_once_no_slot(balancer);
            return first_eligible(runtime, balancer, r);
        };
        let mut local = slot.local();
        let local = &mut *local;
        collect_eligible(runtime, balancer, r, &mut local.offered);
        if local.offered.is_empty() {
            log_request!(
                r,
                Level::Debug,
                "{}: {}: no usable member",
                method.name(),
                proxy::balancer_name(balancer)
            );
            return ptr::null_mut();
        }
        let now = monotonic_us();
        if slot.settings.slow_start.is_some() {
            observe_members(runtime, balancer, &slot, now);
        }
        sync_members(runtime, balancer, &slot, local);
        weigh(runtime, &slot, local, now);

        let key = if method.method.uses_hash_key() { hash_key(r, slot.settings) } else { None };
        let segment = runtime.generation.segment();
        let mut counts = runtime.generation.counts();
        let mut pick =
            Pick::new(slot.shared, slot.settings, segment, now, key, &mut local.methods, &mut counts);
        let Some(choice) = method.method.choose(&mut pick) else {
            let shed = attempts::refuse(r, &slot.shared.events.shed);
            log_request!(
                r,
                Level::Info,
                "{}: {}: every usable member is at its LBMaxInflight cap; request refused \
                ({shed} shed so far with this one)",
                method.name(),
                proxy::balancer_name(balancer)
            );
            return ptr::null_mut();
        };
        let candidate_count = pick.candidates().len();
        let candidate = pick.candidates()[choice.position];
        // Candidates are in the order of `offered` (both by worker index).
        let worker = local.offered[choice.position];
        if let Some((member, mine)) = counts.counters(&candidate) {
            let decay = slot.settings.latency_decay();
            let probe = choice.is_probe();
            attempts::start(r, NewAttempt { member, mine, worker, picked_us: now, decay, probe }, false);
        }
        log_request!(
            r,
            Level::Debug,
            "{}: {}: picked {} ({}; {} candidate(s))",
            method.name(),
            proxy::balancer_name(balancer),
            proxy::worker_name(worker),
            choice.reason,
            candidate_count
        );
        worker
    }
}

/// Weighs the members httpd offered into the method's candidates.
fn weigh(runtime: &Runtime, slot: &BalancerRef<'_>, local: &mut Local, now: u64) {
    let segment = runtime.generation.segment();
    let settings = slot.settings;
    let Local { methods, offered } = local;
    let candidates = methods.candidates_mut();
    for &worker in offered.iter() {
        // SAFETY: the workers httpd offered are live.
        let state = unsafe { proxy::worker_state(worker) };
        let member = segment.member_index(slot.shared, state.index as usize);
        let slot_of_member = member.and_then(|m| segment.member(m));
        let inflight = slot_of_member.map_or(0, |m| m.inflight()).min(u64::from(u32::MAX - 1)) as u32;
        let limit = settings
            .max_inflight
            .map_or(NO_LIMIT, |cap| cap.for_member(state.lbfactor).min(u64::from(NO_LIMIT - 1)) as u32);
        candidates.push(Candidate {
            worker_index: state.index,
            member: member.map(|m| m as u32),
            lbfactor: state.lbfactor,
            weight: slow_start::member_weight(state.lbfactor, slot_of_member, settings.slow_start, now),
            inflight,
            limit,
            full: inflight >= limit,
        });
    }
}

/// Brings the balancer's member list (which `byweight`'s cycle and `byhash`'s table are built
/// from) up to date when httpd has added members, and makes sure each member's slot is its own;
/// otherwise costs one comparison.
///
/// # Safety
/// Live balancer, thread lock held.
pub(super) unsafe fn sync_members(
    runtime: &Runtime,
    balancer: *mut ffi::proxy_balancer,
    slot: &BalancerRef<'_>,
    local: &mut Local,
) {
    let segment = runtime.generation.segment();
    // SAFETY: per this function's contract.
    let count = unsafe { proxy::worker_count(balancer) };
    local.methods.sync_members(count, |members| {
        // SAFETY: per this function's contract; httpd's members are live.
        for worker in unsafe { proxy::workers(balancer) } {
            let state = unsafe { proxy::worker_state(worker) };
            let slot_of_member = segment.member_of(slot.shared, state.index as usize);
            members.push(Member {
                worker_index: state.index,
                key: member_key(slot_of_member, worker),
                lbfactor: state.lbfactor,
            });
        }
    });
}

/// A member's name key, which its slot then holds. A slot that held another member's (httpd
/// put a member added at run time where another one was) starts afresh first.
fn member_key(member: Option<&crate::shm::MemberSlot>, worker: *mut ffi::proxy_worker) -> u64 {
    // SAFETY: httpd's members are live.
    let key = name_key(unsafe { proxy::worker_key_name(worker) }.as_bytes());
    if let Some(member) = member {
        let held = member.key.load(Ordering::Relaxed);
        if held != key {
            if held != 0 {
                member.reset_identity();
            }
            member.key.store(key, Ordering::Relaxed);
        }
    }
    key
}

/// The request's `LBHashKey` value, as the bytes httpd produced (no conversion: keys that
/// differ in any byte stay different); `None` when not set, or empty for this request.
///
/// # Safety
/// Live request. The bytes live in the request pool.
unsafe fn hash_key<'r>(r: *mut ffi::request_rec, settings: &BalancerSettings) -> Option<&'r [u8]> {
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
            unsafe { crate::httpd::c_str(error) }
        );
        return None;
    }
    if value.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string in the request pool, which outlives the pick.
    let bytes = unsafe { CStr::from_ptr(value) }.to_bytes();
    (!bytes.is_empty()).then_some(bytes)
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
            member.observe(state.selectable(), now);
        }
    }
}

/// Collects into `offered` the members httpd says may take this request, sorted by worker index
/// so that every process lists the same members in the same order.
///
/// # Safety
/// Live balancer and request, balancer thread lock held.
unsafe fn collect_eligible(
    runtime: &Runtime,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
    offered: &mut Vec<*mut ffi::proxy_worker>,
) {
    offered.clear();
    // SAFETY: record_candidate only pushes onto `offered`, which outlives the call.
    unsafe {
        (runtime.proxy.get_best_worker)(
            balancer,
            r,
            Some(record_candidate),
            offered as *mut Vec<*mut ffi::proxy_worker> as *mut c_void,
        )
    };
    // SAFETY: the workers httpd offered are live.
    offered.sort_unstable_by_key(|&worker| unsafe { proxy::worker_index(worker) });
}

/// httpd's `is_best` callback: records each member offered and answers "yes" so that httpd
/// stops at the first lbset tier that has usable members and offers standbys only when that
/// tier has nothing else.
unsafe extern "C" fn record_candidate(
    current: *mut ffi::proxy_worker,
    _prev_best: *mut ffi::proxy_worker,
    baton: *mut c_void,
) -> c_int {
    catch("lbmethod is_best callback", 1, || {
        // SAFETY: baton is the Vec passed by collect_eligible, alive for the whole walk.
        let offered = unsafe { &mut *(baton as *mut Vec<*mut ffi::proxy_worker>) };
        offered.push(current);
        1
    })
}

/// Without a shared slot: httpd's first eligible member, uncounted.
///
/// # Safety
/// As for [`collect_eligible`].
unsafe fn first_eligible(
    runtime: &Runtime,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    let mut offered = Vec::new();
    // SAFETY: per this function's contract.
    unsafe { collect_eligible(runtime, balancer, r, &mut offered) };
    offered.first().copied().unwrap_or(ptr::null_mut())
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
pub(super) unsafe fn slot_index(runtime: &Runtime, balancer: *mut ffi::proxy_balancer) -> Option<usize> {
    // SAFETY: per this function's contract.
    let id = unsafe { proxy::balancer_id(balancer) };
    runtime.generation.slot_of(id, || unsafe {
        (name_key(proxy::balancer_key_name(balancer).as_bytes()), (*balancer).max_workers.max(0) as u32)
    })
}

/// The slot already given to the balancer, without claiming one.
///
/// # Safety
/// Live balancer.
pub(super) unsafe fn slot_index_known(
    runtime: &Runtime,
    balancer: *mut ffi::proxy_balancer,
) -> Option<usize> {
    // SAFETY: per this function's contract.
    runtime.generation.known_slot(unsafe { proxy::balancer_id(balancer) })
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
