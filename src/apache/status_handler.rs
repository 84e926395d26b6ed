//! The status handler (`SetHandler lbmethod-rs-status`): reads one snapshot of every balancer
//! from httpd and the shared segment, and answers it in the format asked for. The same
//! snapshot also makes this module's section of mod_status's `/server-status`.

use super::generation::BalancerRef;
use super::module::{Runtime, runtime};
use crate::config::BalancerSettings;
use crate::httpd::hooks::StatusForm;
use crate::httpd::proxy::{STATE_WORDS, WorkerState};
use crate::httpd::{Balancer, Request, Server, Worker, status};
use crate::methods::{self, Scored, bylatency, outlier, slow_start};
use crate::shm::queue::{QueueStats, WAIT_BUCKETS_US};
use crate::shm::{attempt, discovery, monotonic_us};
use crate::status::{
    self as page, BalancerStatus, DiscoveryStatus, MemberStatus, Origin, Query, QueueStatus,
    ServerStatusForm, Snapshot,
};
use std::sync::atomic::Ordering;

/// The handler, for requests whose handler is `lbmethod-rs-status`.
pub fn handle(r: Request<'_>) -> Option<i32> {
    if !r.handler_is(c"lbmethod-rs-status") {
        return None;
    }
    if !r.is_get() {
        r.allow_get_only();
        return Some(status::METHOD_NOT_ALLOWED);
    }
    let Some(query) = Query::parse(r.args().as_deref()) else {
        return Some(status::BAD_REQUEST);
    };
    let Some(runtime) = runtime() else {
        return Some(status::SERVICE_UNAVAILABLE);
    };
    let body = page::render(&snapshot(runtime), &query);
    r.set_header("Cache-Control", "no-store");
    for (name, value) in page::security_headers(query.format) {
        r.set_header(name, &value);
    }
    r.send(query.format.content_type(), body.as_bytes());
    Some(status::OK)
}

/// This module's section of mod_status's `/server-status` (with `ExtendedStatus On`, its
/// default when it is loaded), in the form mod_status is answering in.
pub fn server_status_section(r: Request<'_>, form: StatusForm) -> bool {
    let Some(runtime) = runtime() else { return false };
    let form = match form {
        StatusForm::Auto => ServerStatusForm::Auto,
        StatusForm::Html => ServerStatusForm::Html,
        StatusForm::HtmlWithoutTables => ServerStatusForm::HtmlWithoutTables,
    };
    r.write(page::render_server_status(&snapshot(runtime), form).as_bytes());
    true
}

/// Reads every balancer once.
fn snapshot(runtime: &Runtime) -> Snapshot {
    let now = monotonic_us();
    let balancers = runtime
        .proxy
        .balancers(runtime.main_server)
        .into_iter()
        .map(|(server, balancer)| balancer_status(runtime, server, balancer, now))
        .collect();
    Snapshot { module_version: env!("CARGO_PKG_VERSION"), member_states: &STATE_WORDS, balancers }
}

fn balancer_status(runtime: &Runtime, server: Server, balancer: Balancer, now: u64) -> BalancerStatus {
    let segment = runtime.generation.segment();
    let method_name = balancer.method();
    let method = methods::by_name(method_name.as_bytes());
    let slot = runtime.generation.balancer(balancer.id());
    let default_settings = BalancerSettings::default();
    let settings = slot.as_ref().map_or(&default_settings, |s| s.settings);
    // Every member, those added in another process too (a process learns of them only when it
    // syncs its list, which httpd does before each pick).
    let workers: Vec<Worker> = runtime.proxy.current_workers(balancer, server);
    // byhash: each member's share of the table this process picks from, computed with it.
    let table =
        slot.as_ref().filter(|_| method.is_some_and(|m| m.method.uses_hash_key())).and_then(hash_table);
    let states: Vec<WorkerState> = workers.iter().map(|w| w.state()).collect();
    let members: Vec<Option<usize>> = states
        .iter()
        .map(|state| slot.as_ref().and_then(|b| segment.member_index(b.shared, state.index as usize)))
        .collect();
    let scored: Vec<Scored> = states
        .iter()
        .zip(&members)
        .map(|(state, member)| {
            let slot_of_member = member.and_then(|m| segment.member(m));
            Scored {
                inflight: member.map_or(0, |m| attempt::inflight(segment, m)),
                weight: slow_start::member_weight(state.lbfactor, slot_of_member, settings.slow_start, now),
                latency_us: slot_of_member.and_then(bylatency::estimate),
            }
        })
        .collect();
    let scores = method.map_or_else(|| vec![None; scored.len()], |m| m.method.scores(&scored));
    let discovery =
        slot.as_ref().filter(|_| !settings.discover.is_empty()).and_then(|s| segment.discovery(s.shared));
    let members = workers
        .iter()
        .zip(&states)
        .zip(&members)
        .zip(scored.iter().zip(scores))
        .map(|(((worker, state), member), (scored, score))| {
            let totals = member.map(|m| attempt::totals(segment, m)).unwrap_or_default();
            let slot_of_member = member.and_then(|m| segment.member(m));
            let outlier_state = slot_of_member
                .filter(|_| settings.outlier_detection().is_some())
                .map(|m| outlier::state(&m.health, now))
                .unwrap_or_default();
            MemberStatus {
                name: worker.name(),
                route: worker.route(),
                status: state.status_word(),
                state: state.state_word(),
                up: state.usable(),
                flags: state.flag_names().collect(),
                loadfactor: f64::from(state.lbfactor) / 100.0,
                effective_weight: f64::from(scored.weight) / 100.0,
                slow_start_progress: slot_of_member
                    .and_then(|m| slow_start::member_progress(m, settings.slow_start, now)),
                max_inflight: settings.max_inflight.map(|cap| cap.for_member(state.lbfactor)),
                // Microsecond resolution: an idle member's estimate fades towards 0.
                latency_ms: scored.latency_us.map(|l| l.round() / 1000.0),
                latency_samples: slot_of_member.map_or(0, |m| m.latency.samples.load(Ordering::Relaxed)),
                score,
                hash_share: table.as_ref().and_then(|(_, shares)| {
                    shares.iter().find(|(index, _)| *index == state.index).map(|&(_, share)| share)
                }),
                lbset: state.lbset,
                selected: totals.selected,
                inflight: scored.inflight,
                peak_inflight: totals.peak_inflight,
                completed: totals.completed,
                failed: totals.failed,
                handed_over: totals.handed_over,
                elected: state.elected,
                busy: state.busy,
                ejected: outlier_state.ejected.is_some(),
                ejection_reason: outlier_state.ejected.map(|(why, _)| why.name()),
                ejection_seconds_left: outlier_state.ejected.map(|(_, left)| left.as_secs_f64()),
                ejections: outlier_state.ejections,
                consecutive_failures: outlier_state.consecutive,
                origin: discovery.and_then(|d| d.of_worker(state.index)).and_then(|entry| {
                    Some(Origin {
                        name: settings.discover.get(usize::from(entry.line))?.source.clone(),
                        standing: standing_word(entry.standing),
                    })
                }),
            }
        })
        .collect();
    BalancerStatus {
        name: balancer.name(),
        server: server.label(),
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
        outlier_detection: settings.outlier_detection().map(|o| o.to_string()),
        queue: settings.queue.map(|queue| {
            let stats =
                slot.as_ref().and_then(|s| segment.queue(s.shared)).map(|q| q.stats()).unwrap_or_default();
            queue_status(queue, stats)
        }),
        discovery: discovery
            .map(|d| discovery_status(&settings.discover, d, segment, balancer.free_slots()))
            .unwrap_or_default(),
        members,
    }
}

fn standing_word(standing: u8) -> &'static str {
    match standing {
        discovery::SERVING => "serving",
        discovery::DRAINING => "draining",
        _ => "removed",
    }
}

/// Each `LBDiscover` line of a balancer as the status page shows it.
fn discovery_status(
    lines: &[crate::config::Discover],
    record: &discovery::Discovery,
    segment: &crate::shm::Segment,
    free_slots: u32,
) -> Vec<DiscoveryStatus> {
    let now_s = monotonic_us() / 1_000_000;
    let wall_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let holder = discovery::lease_holder(segment.header());
    lines
        .iter()
        .zip(&record.lines)
        .enumerate()
        .map(|(i, (line, shared))| {
            let count = |standing: u8| {
                record.entries().filter(|(_, e)| usize::from(e.line) == i && e.standing == standing).count()
                    as u32
            };
            let resolved = shared.resolved_s.load(Ordering::Relaxed);
            let error = shared.error();
            DiscoveryStatus {
                name: line.source.clone(),
                resolver: line.resolver.map_or("system".to_string(), |r| r.to_string()),
                answer: shared.answer.load(Ordering::Relaxed),
                ttl_seconds: shared.ttl.load(Ordering::Relaxed),
                resolved_seconds_ago: (resolved > 0).then(|| wall_s.saturating_sub(resolved)),
                next_lookup_seconds: shared.next_s.load(Ordering::Relaxed).saturating_sub(now_s),
                serving: count(discovery::SERVING),
                draining: count(discovery::DRAINING),
                removed: count(discovery::REMOVED),
                lookups: shared.lookups.load(Ordering::Relaxed),
                failures: shared.failures.load(Ordering::Relaxed),
                failing: shared.failing.load(Ordering::Relaxed),
                error: (!error.is_empty()).then_some(error),
                added: shared.added.load(Ordering::Relaxed),
                drained: shared.drained.load(Ordering::Relaxed),
                removed_total: shared.removed.load(Ordering::Relaxed),
                returned: shared.returned.load(Ordering::Relaxed),
                resolver_pid: holder,
                free_slots,
            }
        })
        .collect()
}

/// A waiting line as the status page shows it.
fn queue_status(settings: crate::config::Queue, stats: QueueStats) -> QueueStatus {
    let seconds = |us: u64| us as f64 / 1e6;
    let mut cumulative = 0;
    let wait_buckets = WAIT_BUCKETS_US
        .iter()
        .zip(stats.wait_buckets)
        .map(|(bound, n)| {
            cumulative += n;
            (seconds(*bound), cumulative)
        })
        .collect();
    QueueStatus {
        timeout_seconds: settings.timeout.as_secs_f64(),
        max: settings.max,
        waiting: stats.waiting,
        peak: stats.peak,
        joined: stats.joined,
        served: stats.served,
        timed_out: stats.timed_out,
        gone: stats.gone,
        full: stats.full,
        wait_seconds_total: seconds(stats.wait_total_us),
        wait_seconds_max: seconds(stats.wait_max_us),
        wait_buckets,
    }
}

/// The size of the `byhash` table this process picks from, and each member's share of it by
/// worker index; `None` before one was built here.
fn hash_table(slot: &BalancerRef<'_>) -> Option<(usize, Vec<(u32, f64)>)> {
    let tables = slot.tables.shelves.shelf(slot.index)?.published()?;
    let hash = tables.hash()?;
    let shares = tables.members.iter().zip(&hash.shares).map(|(m, &share)| (m.worker_index, share)).collect();
    Some((hash.table.size(), shares))
}
