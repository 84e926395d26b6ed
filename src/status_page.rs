//! The status handler (`SetHandler lbmethod-rs-status`): reads one snapshot of every balancer
//! from httpd and the shared segment, and answers it in the format asked for.

use crate::config::BalancerSettings;
use crate::ffi;
use crate::httpd::guard::catch;
use crate::httpd::proxy;
use crate::httpd::request;
use crate::methods::{Method, slow_start};
use crate::module::{self, Runtime};
use crate::shm::monotonic_us;
use crate::status::{self, BalancerStatus, Format, MemberStatus, Snapshot};
use std::ffi::c_int;
use std::sync::atomic::Ordering;

/// The handler name to put in `SetHandler`.
pub const HANDLER: &str = "lbmethod-rs-status";

pub unsafe extern "C" fn handler(r: *mut ffi::request_rec) -> c_int {
    catch("status handler", ffi::HTTP_INTERNAL_SERVER_ERROR, || {
        // SAFETY: httpd passes a live request to its handlers.
        unsafe { handle(r) }
    })
}

/// # Safety
/// `r` must be live.
unsafe fn handle(r: *mut ffi::request_rec) -> c_int {
    // SAFETY: r is live.
    unsafe {
        if request::handler(r).as_deref() != Some(HANDLER) {
            return ffi::DECLINED;
        }
        if request::method_number(r) != ffi::M_GET {
            request::allow_get_only(r);
            return ffi::HTTP_METHOD_NOT_ALLOWED;
        }
        let Some(format) = Format::from_query(request::args(r).as_deref()) else {
            return ffi::HTTP_BAD_REQUEST;
        };
        let Some(runtime) = module::runtime() else {
            return ffi::HTTP_SERVICE_UNAVAILABLE;
        };
        let body = status::render(&snapshot(runtime), format);
        request::set_header(r, "Cache-Control", "no-store");
        request::send(r, format.content_type(), body.as_bytes());
    }
    ffi::OK
}

/// Reads every balancer once.
///
/// # Safety
/// Called in a child serving a request (the runtime's servers and balancers are live).
unsafe fn snapshot(runtime: &Runtime) -> Snapshot {
    let now = monotonic_us();
    // SAFETY: per this function's contract.
    let balancers = unsafe { runtime.proxy.balancers(runtime.main_server) }
        .into_iter()
        // SAFETY: as above.
        .map(|(server, balancer)| unsafe { balancer_status(runtime, server, balancer, now) })
        .collect();
    Snapshot { module_version: env!("CARGO_PKG_VERSION"), balancers }
}

/// # Safety
/// Live server and balancer of the runtime's generation.
unsafe fn balancer_status(
    runtime: &Runtime,
    server: *const ffi::server_rec,
    balancer: *mut ffi::proxy_balancer,
    now: u64,
) -> BalancerStatus {
    let segment = runtime.generation.segment();
    // SAFETY: per this function's contract.
    unsafe {
        let method = proxy::balancer_method(balancer);
        let slot = runtime
            .generation
            .known_slot(proxy::balancer_id(balancer))
            .and_then(|s| runtime.generation.slot(s));
        let default_settings = BalancerSettings::default();
        let settings = slot.as_ref().map_or(&default_settings, |s| s.settings);
        let members = proxy::with_thread_lock(balancer, || proxy::workers(balancer))
            .into_iter()
            .map(|worker| {
                let state = proxy::worker_state(worker);
                let member = slot.as_ref().and_then(|b| segment.member_of(b.shared, state.index as usize));
                let totals = member.map(|m| m.totals()).unwrap_or_default();
                let weight = slow_start::member_weight(state.lbfactor, member, settings.slow_start, now);
                MemberStatus {
                    name: proxy::worker_name(worker),
                    route: proxy::worker_route(worker),
                    status: status::status_word(state.status),
                    flags: status::flag_names(state.status),
                    loadfactor: f64::from(state.lbfactor) / 100.0,
                    effective_weight: f64::from(weight) / 100.0,
                    slow_start_progress: member
                        .and_then(|m| slow_start::member_progress(m, settings.slow_start, now)),
                    max_inflight: settings.max_inflight.map(|cap| cap.for_member(state.lbfactor)),
                    lbset: state.lbset,
                    selected: totals.selected,
                    inflight: member.map_or(0, |m| m.inflight()),
                    peak_inflight: totals.peak_inflight.max(0) as u64,
                    completed: totals.completed,
                    failed: totals.failed,
                    elected: state.elected,
                    busy: state.busy,
                }
            })
            .collect();
        BalancerStatus {
            name: proxy::balancer_name(balancer),
            server: proxy::server_name(server),
            tracked: Method::from_name(&method).is_some(),
            method,
            slow_start_seconds: settings.slow_start.map(|d| d.as_secs_f64()),
            max_inflight: settings.max_inflight.map(|cap| cap.limit),
            max_inflight_per_loadfactor: settings.max_inflight.is_some_and(|cap| cap.per_loadfactor),
            shed: slot.map_or(0, |s| s.shared.shed.load(Ordering::Relaxed)),
            members,
        }
    }
}
