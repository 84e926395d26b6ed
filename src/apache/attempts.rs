//! How every attempt is counted and timed, whatever method picked it.
//!
//! An attempt is one try of one request on one member. It is counted in shared memory when it
//! starts (by the finder, or for a sticky-session request that bypassed the finder, when
//! mod_proxy starts it: its scheme handler hook sees the member, the balancer it belongs to and
//! the session route mod_proxy_balancer noted in the request) and released exactly once: when the request pool is destroyed (response
//! sent, client gone, error, timeout, HTTP/2 stream end), or at once when the same request
//! picks again (failover), which means the attempt failed. Its latency, from the pick to the
//! first byte of the response (or to its end when no response ever started), goes into the
//! member's estimate as it is released.

use super::finder::slot_index;
use super::module::{is_our_method, runtime};
use crate::ffi;
use crate::httpd::guard::catch;
use crate::httpd::log::{Level, log_request};
use crate::httpd::{proxy, request};
use crate::methods::bylatency;
use crate::shm::{MemberSlot, monotonic_us};
use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

/// This module's state for one request (`r->request_config`), in the request pool.
#[repr(C)]
struct RequestState {
    /// The attempt under way, or null.
    attempt: *mut Attempt,
    /// The timing filter is in the request's output chain.
    timed: bool,
    /// The request was refused because every candidate was at its cap, and no pick has served
    /// it since: the balancer's shed counter, counted once when the request ends so.
    shed: *const AtomicU64,
    /// [`count_shed`] is registered on the request pool (once per request, however often it
    /// is refused and served again).
    shed_cleanup: bool,
}

/// One attempt, in the request pool; released by [`release_attempt`].
#[repr(C)]
struct Attempt {
    member: *const MemberSlot,
    /// This process's own count for the member (null without a process slot).
    mine: *const AtomicI32,
    worker: *const ffi::proxy_worker,
    /// When it was picked, and when the response's first byte went out (0: not yet), on the
    /// monotonic clock in microseconds.
    picked_us: u64,
    first_byte_us: u64,
    /// The balancer's `LBLatencyDecay`, for the latency sample.
    decay_us: u64,
    /// Abandoned for another member (failover).
    abandoned: bool,
    /// The request, to read its final status when the attempt is released (the pool cleanup
    /// that releases it runs before the request's memory goes).
    request: *const ffi::request_rec,
    /// mod_proxy has started it (its scheme handler ran for this member).
    started: bool,
    /// A probe: its answer replaces the member's latency estimate.
    probe: bool,
}

/// A new attempt on `member`, already counted there (see `MemberSlot::begin_attempt`).
pub struct NewAttempt<'a> {
    pub member: &'a MemberSlot,
    pub mine: Option<&'a AtomicI32>,
    pub worker: *mut ffi::proxy_worker,
    pub picked_us: u64,
    pub decay: Duration,
    /// A probe (see `methods::Choice::is_probe`): its answer replaces the latency estimate.
    pub probe: bool,
}

/// Records `attempt` as the request's current one, released with the request pool.
///
/// # Safety
/// Live request and worker; the member and `mine` in a segment this process keeps mapped.
pub unsafe fn start(r: *mut ffi::request_rec, attempt: NewAttempt<'_>, started: bool) {
    // SAFETY: per this function's contract; everything allocated lives in r->pool, as long as
    // the cleanup that releases it.
    unsafe {
        let state = request_state(r);
        if !(*state).shed.is_null() {
            // Refused before, served now (the balancer's timeout= let httpd ask again).
            (*state).shed = ptr::null();
            request::unset_error_header(r, "Retry-After");
        }
        let record = ffi::apr_palloc((*r).pool, size_of::<Attempt>()) as *mut Attempt;
        record.write(Attempt {
            member: attempt.member,
            mine: attempt.mine.map_or(ptr::null(), |m| m as *const AtomicI32),
            worker: attempt.worker,
            picked_us: attempt.picked_us,
            first_byte_us: 0,
            decay_us: attempt.decay.as_micros() as u64,
            abandoned: false,
            request: r,
            probe: attempt.probe,
            started,
        });
        ffi::apr_pool_cleanup_register(
            (*r).pool,
            record as *const c_void,
            Some(release_attempt),
            Some(ffi::apr_pool_cleanup_null),
        );
        (*state).attempt = record;
        if !(*state).timed {
            add_timing_filter(r);
            (*state).timed = true;
        }
    }
}

/// Ends the request's current attempt now, as failed (the request is moving on).
///
/// # Safety
/// Live request.
pub unsafe fn end_current(r: *mut ffi::request_rec) {
    // SAFETY: the state and attempt are null or ours, in r->pool.
    unsafe {
        let state = request::module_state(r) as *mut RequestState;
        if state.is_null() || (*state).attempt.is_null() {
            return;
        }
        let attempt = (*state).attempt;
        (*attempt).abandoned = true;
        (*state).attempt = ptr::null_mut();
        // Runs the release now and unregisters it, so it cannot run twice.
        ffi::apr_pool_cleanup_run((*r).pool, attempt as *mut c_void, Some(release_attempt));
    }
}

/// Every candidate was at its cap: the request is refused (httpd answers 503), with a
/// `Retry-After` header. httpd may ask again for the same request (a balancer `timeout=`); the
/// request counts once in `shed`, when it ends without having been served. Returns the shed
/// count so far, this request included.
///
/// # Safety
/// Live request; `shed` in a segment this process keeps mapped.
pub unsafe fn refuse(r: *mut ffi::request_rec, shed: &AtomicU64) -> u64 {
    // SAFETY: per this function's contract; the state and its cleanup live in r->pool.
    unsafe {
        request::set_error_header(r, "Retry-After", "1");
        let state = request_state(r);
        (*state).shed = shed;
        if !(*state).shed_cleanup {
            (*state).shed_cleanup = true;
            ffi::apr_pool_cleanup_register(
                (*r).pool,
                state as *const c_void,
                Some(count_shed),
                Some(ffi::apr_pool_cleanup_null),
            );
        }
    }
    shed.load(Ordering::Relaxed) + 1
}

/// Pool cleanup of a request refused at least once: counts it if it ended refused.
unsafe extern "C" fn count_shed(data: *mut c_void) -> ffi::apr_status_t {
    catch("shed count", ffi::APR_SUCCESS, || {
        // SAFETY: data is the request's state, in the pool being cleaned; shed is null or a
        // counter in a segment this process keeps mapped.
        unsafe {
            let state = &*(data as *const RequestState);
            if let Some(shed) = state.shed.as_ref() {
                shed.fetch_add(1, Ordering::Relaxed);
            }
        }
        ffi::APR_SUCCESS
    })
}

/// The request's state, made on first use.
///
/// # Safety
/// Live request.
unsafe fn request_state(r: *mut ffi::request_rec) -> *mut RequestState {
    // SAFETY: the state is null or ours; a new one goes in r->pool.
    unsafe {
        let mut state = request::module_state(r) as *mut RequestState;
        if state.is_null() {
            state = ffi::apr_palloc((*r).pool, size_of::<RequestState>()) as *mut RequestState;
            state.write(RequestState {
                attempt: ptr::null_mut(),
                timed: false,
                shed: ptr::null(),
                shed_cleanup: false,
            });
            request::set_module_state(r, state as *mut c_void);
        }
        state
    }
}

/// Pool cleanup: ends one attempt, and takes its latency sample. It failed if it was
/// abandoned for another member, if the member is in error now, or if the request's answer is
/// a gateway error (502, 503, 504), the backend's or httpd's own.
unsafe extern "C" fn release_attempt(data: *mut c_void) -> ffi::apr_status_t {
    catch("attempt release", ffi::APR_SUCCESS, || {
        // SAFETY: data is an Attempt recorded by `start`; its slots live in a segment this
        // process keeps mapped; the worker lives as long as the generation.
        unsafe {
            let attempt = &*(data as *const Attempt);
            let in_error = proxy::worker_state(attempt.worker).in_error();
            // The outcome is known only now: httpd's own error answers (a backend timeout, a
            // member refusing) never pass through the timing filter.
            let gateway_error = matches!((*attempt.request).status, 502..=504);
            let failed = attempt.abandoned || in_error || gateway_error;
            let member = &*attempt.member;
            member.end_attempt(failed, attempt.mine.as_ref());
            let now = monotonic_us();
            let answered = if attempt.first_byte_us != 0 { attempt.first_byte_us } else { now };
            let sample = answered.saturating_sub(attempt.picked_us) as f64;
            bylatency::record(member, sample, failed, attempt.probe, now, attempt.decay_us);
        }
        ffi::APR_SUCCESS
    })
}

/// The timing filter's registration, made anew in every generation's register_hooks.
static TIMING_FILTER: AtomicPtr<ffi::ap_filter_rec_t> = AtomicPtr::new(ptr::null_mut());

/// Registers the output filter that notes when a response's first byte goes out.
pub fn register_timing_filter() {
    // SAFETY: registering a plain callback under a static name.
    let filter = unsafe {
        ffi::ap_register_output_filter(
            c"LBMETHOD_RS_TIMING".as_ptr(),
            Some(timing_filter),
            None,
            ffi::AP_FTYPE_RESOURCE,
        )
    };
    TIMING_FILTER.store(filter, Ordering::Release);
}

/// # Safety
/// Live request.
unsafe fn add_timing_filter(r: *mut ffi::request_rec) {
    let filter = TIMING_FILTER.load(Ordering::Acquire);
    if !filter.is_null() {
        // SAFETY: the filter record is this generation's; r is live.
        unsafe { ffi::ap_add_output_filter_handle(filter, ptr::null_mut(), r, (*r).connection) };
    }
}

/// First output of the response: the current attempt's first byte. The filter then takes
/// itself out of the chain.
unsafe extern "C" fn timing_filter(
    f: *mut ffi::ap_filter_t,
    brigade: *mut ffi::apr_bucket_brigade,
) -> ffi::apr_status_t {
    // SAFETY: httpd passes a live filter of a live request.
    let next = unsafe { (*f).next };
    catch("timing filter", (), || {
        // SAFETY: as above; the state and attempt are null or ours, in the request pool.
        unsafe {
            let r = (*f).r;
            let state = request::module_state(r) as *mut RequestState;
            if !state.is_null() && !(*state).attempt.is_null() {
                let attempt = &mut *(*state).attempt;
                if attempt.first_byte_us == 0 {
                    attempt.first_byte_us = monotonic_us();
                }
            }
            ffi::ap_remove_output_filter(f);
        }
    });
    // SAFETY: passing the brigade on down the chain, as every filter must.
    unsafe { ffi::ap_pass_brigade(next, brigade) }
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
    // SAFETY: proxy_hook_scheme_handler has the HookScheme signature (an APR external hook).
    unsafe {
        let hook: HookScheme = std::mem::transmute::<*mut c_void, HookScheme>(symbol);
        hook(Some(attempt_start), ptr::null(), ptr::null(), ffi::APR_HOOK_REALLY_FIRST);
    }
}

/// mod_proxy is about to send the request to `worker`. An attempt picked by a finder is marked
/// started; a sticky-session attempt (which bypassed the finder) is counted here. Always
/// declines, so the real scheme handler (mod_proxy_http...) runs next.
unsafe extern "C" fn attempt_start(
    r: *mut ffi::request_rec,
    worker: *mut ffi::proxy_worker,
    _conf: *mut ffi::proxy_server_conf,
    _url: *mut c_char,
    _proxyhost: *const c_char,
    _proxyport: u16,
) -> c_int {
    catch("scheme_handler", ffi::DECLINED, || {
        // SAFETY: mod_proxy passes a live request and worker.
        unsafe { note_attempt_start(r, worker) };
        ffi::DECLINED
    })
}

/// # Safety
/// Live request and worker.
unsafe fn note_attempt_start(r: *mut ffi::request_rec, worker: *mut ffi::proxy_worker) {
    // SAFETY: per this function's contract; the state and attempt are null or ours.
    unsafe {
        let state = request::module_state(r) as *mut RequestState;
        if !state.is_null() && !(*state).attempt.is_null() {
            let current = &mut *(*state).attempt;
            if ptr::eq(current.worker, worker) && !current.started {
                current.started = true;
                return;
            }
        }
        // Not the finder's pick: a member of one of our balancers reached without the method
        // is one mod_proxy_balancer routed by the request's sticky session (it notes the route
        // it found in r->notes). Everything comes from the request: nothing is left behind for
        // another request when this one fails before it gets here.
        let balancer = (*worker).balancer;
        if balancer.is_null()
            || !is_our_method((*balancer).lbmethod)
            || ffi::apr_table_get((*r).notes, c"session-route".as_ptr()).is_null()
        {
            return;
        }
        let Some(runtime) = runtime() else { return };
        let Some(slot) = slot_index(runtime, balancer) else { return };
        let Some(balancer_slot) = runtime.generation.slot(slot) else { return };
        let segment = runtime.generation.segment();
        let index = proxy::worker_index(worker) as usize;
        let Some(member_index) = segment.member_index(balancer_slot.shared, index) else { return };
        let Some(member) = segment.member(member_index) else { return };
        end_current(r);
        // Sticky requests must reach their member: they are counted, never refused by the cap.
        let mine = runtime.generation.my_contribution(member_index);
        member.begin_attempt(mine);
        let decay = balancer_slot.settings.latency_decay();
        start(r, NewAttempt { member, mine, worker, picked_us: monotonic_us(), decay, probe: false }, true);
        log_request!(r, Level::Debug, "sticky session routed to {} (counted)", proxy::worker_name(worker));
    }
}
