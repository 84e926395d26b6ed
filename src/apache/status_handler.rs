//! The status handler (`SetHandler lbmethod-rs-status`): reads one snapshot of every balancer
//! from httpd and the shared segment, and answers it in the format asked for. The same
//! snapshot also makes this module's section of mod_status's `/server-status`.

use super::finder::{slot_index_known, sync_members};
use super::module::{Runtime, runtime};
use crate::config::BalancerSettings;
use crate::ffi;
use crate::httpd::guard::catch;
use crate::httpd::proxy;
use crate::httpd::request;
use crate::httpd::status_hook;
use crate::methods::{self, Scored, bylatency, slow_start};
use crate::shm::monotonic_us;
use crate::status::{self, BalancerStatus, MemberStatus, Query, ServerStatusForm, Snapshot};
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
        let Some(query) = Query::parse(request::args(r).as_deref()) else {
            return ffi::HTTP_BAD_REQUEST;
        };
        let Some(runtime) = runtime() else {
            return ffi::HTTP_SERVICE_UNAVAILABLE;
        };
        let body = status::render(&snapshot(runtime), &query);
        request::set_header(r, "Cache-Control", "no-store");
        for (name, value) in status::security_headers(query.format) {
            request::set_header(r, name, &value);
        }
        request::send(r, query.format.content_type(), body.as_bytes());
    }
    ffi::OK
}

/// mod_status's `status_hook`: this module's section of `/server-status`, with `ExtendedStatus
/// On` (mod_status's default when it is loaded), in the form mod_status is answering in.
pub unsafe extern "C" fn server_status_section(r: *mut ffi::request_rec, flags: c_int) -> c_int {
    catch("server-status section", ffi::DECLINED, || {
        if flags & status_hook::flags::EXTENDED == 0 {
            return ffi::DECLINED;
        }
        let Some(runtime) = runtime() else {
            return ffi::DECLINED;
        };
        let form = if flags & status_hook::flags::SHORT != 0 {
            ServerStatusForm::Auto
        } else if flags & status_hook::flags::NOTABLE != 0 {
            ServerStatusForm::HtmlWithoutTables
        } else {
            ServerStatusForm::Html
        };
        // SAFETY: mod_status calls its hooks with the live request it is answering, in a child.
        unsafe {
            let section = status::render_server_status(&snapshot(runtime), form);
            request::write(r, &section);
        }
        ffi::OK
    })
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
    Snapshot { module_version: env!("CARGO_PKG_VERSION"), member_states: &proxy::STATE_WORDS, balancers }
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
        let method_name = proxy::balancer_method(balancer);
        let method = methods::by_name(method_name.as_bytes());
        let slot = slot_index_known(runtime, balancer).and_then(|s| runtime.generation.slot(s));
        let default_settings = BalancerSettings::default();
        let settings = slot.as_ref().map_or(&default_settings, |s| s.settings);
        // Read under the balancer's thread lock, as the finder reads them.
        let (workers, table) = proxy::with_thread_lock(balancer, || {
            let workers: Vec<*mut ffi::proxy_worker> = proxy::workers(balancer).collect();
            // byhash: each member's share of the table, by worker index.
            let table = match (&slot, method) {
                (Some(slot), Some(method)) if method.method.uses_hash_key() => {
                    let mut local = slot.local();
                    sync_members(runtime, balancer, slot, &mut local);
                    let (size, shares) = local.methods.hash_shares();
                    let by_index: Vec<(u32, f64)> = local
                        .methods
                        .members()
                        .iter()
                        .zip(shares)
                        .map(|(m, share)| (m.worker_index, share))
                        .collect();
                    Some((size, by_index))
                }
                _ => None,
            };
            (workers, table)
        });
        let states: Vec<proxy::WorkerState> = workers.iter().map(|&w| proxy::worker_state(w)).collect();
        let member_slots: Vec<_> = states
            .iter()
            .map(|state| slot.as_ref().and_then(|b| segment.member_of(b.shared, state.index as usize)))
            .collect();
        let scored: Vec<Scored> = states
            .iter()
            .zip(&member_slots)
            .map(|(state, member)| Scored {
                inflight: member.map_or(0, |m| m.inflight()),
                weight: slow_start::member_weight(state.lbfactor, *member, settings.slow_start, now),
                latency_us: member.and_then(bylatency::estimate),
            })
            .collect();
        let scores = method.map_or_else(|| vec![None; scored.len()], |m| m.method.scores(&scored));
        let members = workers
            .iter()
            .zip(&states)
            .zip(&member_slots)
            .zip(scored.iter().zip(scores))
            .map(|(((&worker, state), member), (scored, score))| {
                let totals = member.map(|m| m.totals()).unwrap_or_default();
                MemberStatus {
                    name: proxy::worker_name(worker),
                    route: proxy::worker_route(worker),
                    status: state.status_word(),
                    state: state.state_word(),
                    up: state.usable(),
                    flags: state.flag_names().collect(),
                    loadfactor: f64::from(state.lbfactor) / 100.0,
                    effective_weight: f64::from(scored.weight) / 100.0,
                    slow_start_progress: member
                        .and_then(|m| slow_start::member_progress(m, settings.slow_start, now)),
                    max_inflight: settings.max_inflight.map(|cap| cap.for_member(state.lbfactor)),
                    // Microsecond resolution: an idle member's estimate fades towards 0.
                    latency_ms: scored.latency_us.map(|l| l.round() / 1000.0),
                    latency_samples: totals.latency_samples,
                    score,
                    hash_share: table.as_ref().and_then(|(_, shares)| {
                        shares.iter().find(|(index, _)| *index == state.index).map(|&(_, share)| share)
                    }),
                    lbset: state.lbset,
                    selected: totals.selected,
                    inflight: scored.inflight,
                    peak_inflight: totals.peak_inflight.max(0) as u64,
                    completed: totals.completed,
                    failed: totals.failed,
                    handed_over: totals.handed_over,
                    elected: state.elected,
                    busy: state.busy,
                }
            })
            .collect();
        BalancerStatus {
            name: proxy::balancer_name(balancer),
            server: proxy::server_name(server),
            tracked: method.is_some(),
            method: method_name.to_string(),
            slow_start_seconds: settings.slow_start.map(|d| d.as_secs_f64()),
            max_inflight: settings.max_inflight.map(|cap| cap.limit),
            max_inflight_per_loadfactor: settings.max_inflight.is_some_and(|cap| cap.per_loadfactor),
            shed: slot.as_ref().map_or(0, |s| s.shared.events.shed.load(Ordering::Relaxed)),
            hash_key: settings.hash_key.as_ref().map(|k| k.source.clone()),
            hash_balance_factor: settings.balance_factor(),
            hash_table_size: table.as_ref().map(|(size, _)| *size),
            diverted: slot.as_ref().map_or(0, |s| s.shared.events.diverted.load(Ordering::Relaxed)),
            latency_decay_seconds: settings.latency_decay().as_secs_f64(),
            members,
        }
    }
}
