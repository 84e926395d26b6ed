//! Where a request's pick happens.
//!
//! mod_proxy_balancer calls a method's finder with the balancer's per-process thread lock held
//! (no lock spans processes). The finder:
//! 1. asks httpd which members are eligible right now (`proxy_balancer_get_best_worker`, which
//!    applies lbset tiers, hot spares and standbys, drain, disabled, error/retry and health
//!    checks), recording every member it offers;
//! 2. lets the method choose among them ([`crate::methods`]), from shared state only;
//! 3. counts the attempt in shared memory and arranges for it to be released exactly once.
//!
//! Returning null makes httpd answer 503.

use crate::ffi;
use crate::generation::BalancerRef;
use crate::httpd::log::{Level, log_request, log_server};
use crate::httpd::{proxy, request};
use crate::methods::{Candidate, Method};
use crate::module::{self, Runtime};
use crate::shm::{MemberSlot, name_key};
use crate::status::flag;
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The finder for `method`: returns the member for this attempt, or null for "none usable".
pub fn find(
    method: Method,
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    let Some(runtime) = module::runtime() else {
        log_request!(
            r,
            Level::Err,
            "{}: module state missing (post_config did not run?)",
            method.name()
        );
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
    // SAFETY: per this function's contract.
    let eligible = unsafe { eligible_members(runtime, balancer, r) };
    if eligible.is_empty() {
        log_request!(
            r,
            Level::Debug,
            "{}: {}: no usable member",
            method.name(),
            unsafe { proxy::balancer_name(balancer) }
        );
        return ptr::null_mut();
    }
    // SAFETY: per this function's contract.
    let Some(slot) = (unsafe { balancer_slot(runtime, balancer) }) else {
        // No shared slot (the table is full): still answer, with httpd's own first choice.
        warn_once_no_slot(balancer);
        return eligible[0].1;
    };
    let candidates: Vec<Candidate> = eligible
        .iter()
        .map(|(state, _)| Candidate {
            worker_index: state.index,
            weight: state.lbfactor,
        })
        .collect();
    let Some(choice) = slot.local.choose(method, slot.shared, &candidates) else {
        return ptr::null_mut();
    };
    let (state, worker) = eligible[choice.position];
    let member = runtime
        .generation
        .segment()
        .member_of(slot.shared, state.index as usize);
    // SAFETY: worker is live (httpd offered it); r is live.
    unsafe { begin_attempt(r, member, worker) };
    log_request!(
        r,
        Level::Debug,
        "{}: {}: picked {} ({}; {} candidate(s))",
        method.name(),
        unsafe { proxy::balancer_name(balancer) },
        unsafe { proxy::worker_name(worker) },
        choice.reason,
        eligible.len()
    );
    worker
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
    let mut eligible: Vec<_> = offered
        .into_iter()
        .map(|w| (unsafe { proxy::worker_state(w) }, w))
        .collect();
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
    let id = unsafe { proxy::balancer_id(balancer) };
    runtime.generation.balancer(id, || unsafe {
        (
            name_key(&proxy::balancer_key_name(balancer)),
            (*balancer).max_workers.max(0) as u32,
        )
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

/// One attempt of one request on one member, released exactly once: when the request pool is
/// destroyed (response sent, client gone, error, HTTP/2 stream end), or earlier when the same
/// request picks again (failover), which means this attempt failed.
#[repr(C)]
struct Attempt {
    member: *const MemberSlot,
    worker: *const ffi::proxy_worker,
    abandoned: bool,
}

/// Ends the request's previous attempt, if any (a new pick means it failed), and counts a new
/// attempt on `member` (none when the member has no shared slot).
///
/// # Safety
/// Live request and worker; `member` in a segment mapped for the life of this process.
unsafe fn begin_attempt(
    r: *mut ffi::request_rec,
    member: Option<&MemberSlot>,
    worker: *mut ffi::proxy_worker,
) {
    // SAFETY: r is live; the previous attempt (if any) was allocated in r->pool by us.
    unsafe {
        let previous = request::module_state(r) as *mut Attempt;
        if !previous.is_null() {
            (*previous).abandoned = true;
            // Runs the release now and unregisters it, so it cannot run twice.
            ffi::apr_pool_cleanup_run((*r).pool, previous as *mut c_void, Some(release_attempt));
            request::set_module_state(r, ptr::null_mut());
        }
        let Some(member) = member else { return };
        if member.key.load(Ordering::Relaxed) == 0 {
            // A member added at run time: its slot learns its name on first use.
            member
                .key
                .store(name_key(&proxy::worker_key_name(worker)), Ordering::Relaxed);
        }
        member.begin_attempt();
        let attempt = ffi::apr_palloc((*r).pool, size_of::<Attempt>()) as *mut Attempt;
        attempt.write(Attempt {
            member,
            worker,
            abandoned: false,
        });
        ffi::apr_pool_cleanup_register(
            (*r).pool,
            attempt as *const c_void,
            Some(release_attempt),
            Some(ffi::apr_pool_cleanup_null),
        );
        request::set_module_state(r, attempt as *mut c_void);
    }
}

/// Pool cleanup: ends one attempt. It failed if it was abandoned for another member or if the
/// member is in error now.
unsafe extern "C" fn release_attempt(data: *mut c_void) -> ffi::apr_status_t {
    crate::httpd::guard::catch("attempt release", ffi::APR_SUCCESS, || {
        // SAFETY: data is the Attempt registered in begin_attempt; its member slot lives in a
        // segment this process keeps mapped; the worker lives as long as the generation.
        unsafe {
            let attempt = &*(data as *const Attempt);
            let in_error = proxy::worker_state(attempt.worker).status & flag::IN_ERROR != 0;
            (*attempt.member).end_attempt(attempt.abandoned || in_error);
        }
        ffi::APR_SUCCESS
    })
}
