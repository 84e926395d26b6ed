//! Where a request's pick happens, and how every attempt is counted.
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
//!    one atomic step (a member that filled up meanwhile is passed over);
//! 5. arranges for the attempt to be released exactly once, when the request pool goes.
//!
//! When every candidate is at its cap the request is shed: null (httpd answers 503) with a
//! `Retry-After` header, and no backend is touched. Null also means "no usable member".
//!
//! Sticky-session hits never reach the finder; they are counted when their attempt starts, in
//! mod_proxy's `scheme_handler` hook ([`hook_attempt_start`]).

use crate::config::BalancerSettings;
use crate::ffi;
use crate::generation::BalancerRef;
use crate::httpd::log::{Level, log_request, log_server};
use crate::httpd::{proxy, request};
use crate::methods::{Candidate, Method, slow_start};
use crate::module::{self, Runtime};
use crate::shm::{MemberSlot, monotonic_us, name_key};
use crate::status::flag;
use std::cell::Cell;
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
        end_previous_attempt(r);
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
        let segment = runtime.generation.segment();
        let now = monotonic_us();
        if slot.settings.slow_start.is_some() {
            observe_members(runtime, balancer, &slot, now);
        }
        let members: Vec<Option<usize>> = eligible
            .iter()
            .map(|(state, _)| segment.member_index(slot.shared, state.index as usize))
            .collect();
        let mut candidates: Vec<Candidate> = eligible
            .iter()
            .zip(&members)
            .map(|((state, _), member)| {
                candidate(state, member.and_then(|m| segment.member(m)), slot.settings, now)
            })
            .collect();

        for _ in 0..=candidates.len() {
            let Some(choice) = slot.local.choose(method, slot.shared, &candidates) else { break };
            let (state, worker) = eligible[choice.position];
            let Some(index) = members[choice.position] else {
                return worker; // a member beyond the slots httpd declared: balanced, not counted
            };
            let Some(member) = segment.member(index) else { return worker };
            let mine = runtime.generation.my_contribution(index);
            let reserved = match slot.settings.max_inflight {
                Some(cap) => member.try_begin_attempt(cap.for_member(state.lbfactor), mine),
                None => {
                    member.begin_attempt(mine);
                    true
                }
            };
            if !reserved {
                candidates[choice.position].full = true;
                continue;
            }
            start_attempt(r, member, mine, worker, false);
            log_request!(
                r,
                Level::Debug,
                "{}: {}: picked {} ({}; {} candidate(s))",
                method.name(),
                proxy::balancer_name(balancer),
                proxy::worker_name(worker),
                choice.reason,
                eligible.len()
            );
            return worker;
        }

        let shed = slot.shared.shed.fetch_add(1, Ordering::Relaxed) + 1;
        request::set_error_header(r, "Retry-After", "1");
        log_request!(
            r,
            Level::Info,
            "{}: {}: every usable member is at its LBMaxInflight cap; request shed \
            with 503 ({shed} shed so far)",
            method.name(),
            proxy::balancer_name(balancer)
        );
        ptr::null_mut()
    }
}

/// A candidate as the method sees it: weight (ramped during slow start), in-flight count, and
/// whether it is at its cap.
fn candidate(
    state: &proxy::WorkerState,
    member: Option<&MemberSlot>,
    settings: &BalancerSettings,
    now_us: u64,
) -> Candidate {
    let inflight = member.map_or(0, MemberSlot::inflight);
    Candidate {
        worker_index: state.index,
        weight: slow_start::member_weight(state.lbfactor, member, settings.slow_start, now_us),
        inflight,
        full: settings.max_inflight.is_some_and(|cap| inflight >= cap.for_member(state.lbfactor)),
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

/// One attempt of one request on one member, released exactly once: when the request pool is
/// destroyed (response sent, client gone, error, timeout, HTTP/2 stream end), or earlier when
/// the same request picks again (failover), which means this attempt failed.
#[repr(C)]
struct Attempt {
    member: *const MemberSlot,
    /// This process's own count for the member (null without a process slot).
    mine: *const AtomicI32,
    worker: *const ffi::proxy_worker,
    abandoned: bool,
    /// mod_proxy has started the attempt (its scheme handler ran for this member).
    started: bool,
}

/// Records an attempt already counted on `member`, to be released with the request pool.
///
/// # Safety
/// Live request and worker; `member` and `mine` in a segment this process keeps mapped.
unsafe fn start_attempt(
    r: *mut ffi::request_rec,
    member: &MemberSlot,
    mine: Option<&AtomicI32>,
    worker: *mut ffi::proxy_worker,
    started: bool,
) {
    // SAFETY: per this function's contract; the Attempt lives in r->pool, as long as its cleanup.
    unsafe {
        if member.key.load(Ordering::Relaxed) == 0 {
            // A member added at run time: its slot learns its name on first use.
            member.key.store(name_key(&proxy::worker_key_name(worker)), Ordering::Relaxed);
        }
        let attempt = ffi::apr_palloc((*r).pool, size_of::<Attempt>()) as *mut Attempt;
        attempt.write(Attempt {
            member,
            mine: mine.map_or(ptr::null(), |m| m as *const AtomicI32),
            worker,
            abandoned: false,
            started,
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

/// Ends the request's current attempt now, as failed (the request is moving on).
///
/// # Safety
/// Live request.
unsafe fn end_previous_attempt(r: *mut ffi::request_rec) {
    // SAFETY: the state is null or an Attempt this module allocated in r->pool.
    unsafe {
        let previous = request::module_state(r) as *mut Attempt;
        if !previous.is_null() {
            (*previous).abandoned = true;
            // Runs the release now and unregisters it, so it cannot run twice.
            ffi::apr_pool_cleanup_run((*r).pool, previous as *mut c_void, Some(release_attempt));
            request::set_module_state(r, ptr::null_mut());
        }
    }
}

/// Pool cleanup: ends one attempt. It failed if it was abandoned for another member or if the
/// member is in error now.
unsafe extern "C" fn release_attempt(data: *mut c_void) -> ffi::apr_status_t {
    crate::httpd::guard::catch("attempt release", ffi::APR_SUCCESS, || {
        // SAFETY: data is an Attempt registered by start_attempt; its slots live in a segment
        // this process keeps mapped; the worker lives as long as the generation.
        unsafe {
            let attempt = &*(data as *const Attempt);
            let in_error = proxy::worker_state(attempt.worker).status & flag::IN_ERROR != 0;
            (*attempt.member).end_attempt(attempt.abandoned || in_error, attempt.mine.as_ref());
        }
        ffi::APR_SUCCESS
    })
}

thread_local! {
    /// The sticky-session hit httpd reported on this thread and whose attempt has not started
    /// yet: (balancer slot, worker address). Plain data, so the thread-local has no destructor
    /// (which would pin this module in memory across restarts).
    static STICKY_HIT: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// httpd routed a request by its sticky session to `worker` (the method was bypassed).
pub fn sticky_hit(balancer: *mut ffi::proxy_balancer, worker: *mut ffi::proxy_worker) {
    let Some(runtime) = module::runtime() else { return };
    // SAFETY: httpd passes a live balancer.
    let slot = unsafe { slot_index(runtime, balancer) };
    STICKY_HIT.set(slot.map(|slot| (slot, worker as usize)));
}

/// Registers [`attempt_start`] as mod_proxy's first `scheme_handler` hook. mod_proxy.so is
/// looked up by symbol at run time, so this module never links against it.
pub fn hook_attempt_start() {
    type SchemeHandler = unsafe extern "C" fn(
        *mut ffi::request_rec,
        *mut ffi::proxy_worker,
        *mut ffi::proxy_server_conf,
        *mut c_char,
        *const c_char,
        u16,
    ) -> c_int;
    type HookScheme =
        unsafe extern "C" fn(Option<SchemeHandler>, *const *const c_char, *const *const c_char, c_int);
    // SAFETY: looking a symbol up in the process's global namespace.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"proxy_hook_scheme_handler".as_ptr()) };
    if symbol.is_null() {
        return; // mod_proxy is not loaded: post_config reports it.
    }
    // SAFETY: proxy_hook_scheme_handler has the HookScheme signature (APR external hook).
    unsafe {
        let hook: HookScheme = std::mem::transmute::<*mut c_void, HookScheme>(symbol);
        hook(Some(attempt_start), ptr::null(), ptr::null(), ffi::APR_HOOK_REALLY_FIRST);
    }
}

/// mod_proxy is about to send the request to `worker`. An attempt picked by our finder is just
/// marked started; a sticky-session attempt (which bypassed the finder) is counted here.
/// Always declines, so the real scheme handler (mod_proxy_http...) runs next.
unsafe extern "C" fn attempt_start(
    r: *mut ffi::request_rec,
    worker: *mut ffi::proxy_worker,
    _conf: *mut ffi::proxy_server_conf,
    _url: *mut c_char,
    _proxyhost: *const c_char,
    _proxyport: u16,
) -> c_int {
    crate::httpd::guard::catch("scheme_handler", ffi::DECLINED, || {
        // SAFETY: mod_proxy passes a live request and worker.
        unsafe { note_attempt_start(r, worker) };
        ffi::DECLINED
    })
}

/// # Safety
/// Live request and worker.
unsafe fn note_attempt_start(r: *mut ffi::request_rec, worker: *mut ffi::proxy_worker) {
    // SAFETY: per this function's contract; the state is null or our Attempt.
    unsafe {
        let current = request::module_state(r) as *mut Attempt;
        if !current.is_null() && ptr::eq((*current).worker, worker) && !(*current).started {
            (*current).started = true;
            return;
        }
        let Some((slot, sticky_worker)) = STICKY_HIT.take() else { return };
        if sticky_worker != worker as usize {
            return;
        }
        let Some(runtime) = module::runtime() else { return };
        let Some(balancer) = runtime.generation.slot(slot) else { return };
        let segment = runtime.generation.segment();
        let state = proxy::worker_state(worker);
        let Some(index) = segment.member_index(balancer.shared, state.index as usize) else { return };
        let Some(member) = segment.member(index) else { return };
        end_previous_attempt(r);
        // Sticky requests must reach their member: they are counted, never refused by the cap.
        let mine = runtime.generation.my_contribution(index);
        member.begin_attempt(mine);
        start_attempt(r, member, mine, worker, true);
        log_request!(r, Level::Debug, "sticky session routed to {} (counted)", proxy::worker_name(worker));
    }
}
