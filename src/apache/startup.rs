//! What the httpd parent does at startup and on every restart: check this module's settings
//! against the balancers httpd knows, lay the balancers out in shared memory, build their
//! first tables, and make the generation's runtime.

use super::finder::member_of;
use super::generation::{Configured, Generation};
use super::module::Runtime;
use crate::config::{BalancerSettings, ServerSettings};
use crate::httpd::log::{Level, log_server};
use crate::httpd::proxy::{COMPILED_BALANCER_RECORD, COMPILED_WORKER_RECORD, ProxyApi, method_registered};
use crate::httpd::server::{self, BUILT_FOR_MAGIC, BUILT_FOR_VERSION};
use crate::httpd::{Balancer, Server};
use crate::shm::{self, BalancerPlan, Capacity, Segment, name_key};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

/// Errors for settings that name a balancer their virtual host does not have, for a balancer
/// whose method is not loaded, and for `byhash` without a key; a warning for a virtual host's
/// copy of a balancer with another method than the main server's.
pub fn check_settings(main: Server) -> Vec<String> {
    let Ok(proxy) = ProxyApi::find() else { return Vec::new() };
    // Without mod_proxy_balancer no balancer is shared, and a method is never looked up.
    let shares_balancers = crate::httpd::proxy::balancer_module_loaded();
    let mut errors = Vec::new();
    let main_methods: Vec<(String, String)> = proxy
        .conf(main)
        .into_iter()
        .flat_map(|conf| conf.balancers())
        .map(|b| (b.name(), b.method().to_string()))
        .collect();
    for s in main.and_following() {
        let balancers: Vec<Balancer> = proxy.conf(s).into_iter().flat_map(|conf| conf.balancers()).collect();
        let known: Vec<String> = balancers.iter().map(|b| b.name()).collect();
        let settings = s.config::<ServerSettings>();
        if let Some(settings) = settings {
            errors.extend(settings.check(&known));
        }
        for (balancer, name) in balancers.iter().zip(&known) {
            let method = balancer.method();
            // httpd's own check passes this, then its post_config stops the server (AH02432):
            // a virtual host whose ProxyPass names a main server's balancer gets a copy of it
            // with httpd's default method, byrequests, which Debian does not load.
            if shares_balancers && !method_registered(&method) {
                errors.push(format!(
                    "<Proxy \"{name}\"> in {}: its lbmethod {method} is not loaded, and httpd would stop at its next \
                     start (AH02432). A virtual host whose ProxyPass or ProxySet names a balancer gets its own copy \
                     of it, with httpd's default method: add lbmethod=... to that line, or load \
                     mod_lbmethod_{method}",
                    s.label()
                ));
            } else if s != main
                && let Some(main_copy) = main_methods.iter().find(|(n, _)| n == name)
                && main_copy.1 != method.to_string()
            {
                log_server!(
                    s,
                    Level::Warning,
                    "<Proxy \"{name}\"> in {}: this virtual host's copy of the balancer uses lbmethod {method}, the \
                     main server's {}: a ProxyPass or ProxySet in a virtual host gives it a copy of its own, with \
                     httpd's default method unless that line sets lbmethod=...",
                    s.label(),
                    main_copy.1
                );
            }
            let own = settings.map(|settings| settings.balancer(name)).unwrap_or_default();
            if own.queue.is_some() && own.max_inflight.is_none() {
                errors.push(format!(
                    "LBQueue in <Proxy \"{name}\">: LBMaxInflight is missing; requests wait in line for a place \
                     below a member's cap, so the balancer needs one, e.g. LBMaxInflight 8"
                ));
            }
            // byhash without a key would silently be byinflight: say so now, not at run time.
            let has_key = settings.is_some_and(|settings| settings.balancer(name).hash_key.is_some());
            if balancer.method() == *"byhash" && !has_key {
                errors.push(format!(
                    "ProxySet lbmethod=byhash in <Proxy \"{name}\">: LBHashKey is missing; add the expression to \
                     hash, e.g. LBHashKey \"%{{REMOTE_ADDR}}\""
                ));
            }
        }
    }
    errors
}

pub fn build_runtime(main: Server) -> Result<Runtime, String> {
    let proxy = ProxyApi::find().map_err(|missing| {
        format!("{missing}; load mod_proxy and mod_proxy_balancer (Debian: a2enmod proxy_balancer)")
    })?;
    let balancers = proxy.balancers(main);
    check_magic_number()?;
    check_shared_layout(&proxy, main, &balancers)?;

    let plan: Vec<BalancerPlan> = balancers.iter().map(|&(s, b)| balancer_plan(s, b)).collect();
    let (segment, slots) = segment_for(main, &plan)?;
    let epoch = segment.header().generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    super::discovery::record_startup(&segment, |balancer| {
        balancers.iter().position(|&(_, b)| b == balancer).and_then(|i| slots.get(i).copied())
    });
    // Outlier detection's schedule was made under the previous configuration (another
    // interval, success rate off): every balancer reviews at its first pick, and no hold of a
    // review cut short by the restart is left.
    for &slot in &slots {
        if let Some(balancer) = segment.balancer(slot) {
            balancer.events.review_at_us.store(0, Ordering::Release);
            balancer.events.review_held_until_us.store(0, Ordering::Release);
        }
    }
    let configured = balancers
        .iter()
        .zip(slots)
        .map(|(&(server, balancer), slot)| Configured {
            id: balancer.id(),
            slot,
            settings: settings_of(server, balancer),
            members: balancer.workers().map(member_of).collect(),
            tables: balancer.method() == *"byweight" || balancer.method() == *"byhash",
            hashes: balancer.method() == *"byhash",
        })
        .collect();
    Ok(Runtime { generation: Generation::new(segment, configured), proxy, main_server: main, epoch })
}

/// This module's settings for `balancer`, as written in its virtual host (or inherited).
pub(super) fn settings_of(server: Server, balancer: Balancer) -> BalancerSettings {
    server.config::<ServerSettings>().map(|settings| settings.balancer(&balancer.name())).unwrap_or_default()
}

/// Process slots to make: twice httpd's process limit (old and new generations overlap during
/// a graceful restart), bounded so that the rows stay some tens of megabytes at most.
fn process_slots(members: u32) -> u32 {
    let wanted = server::process_limit().map_or(512, |limit| limit * 2 + 16);
    let affordable = (64 << 20) / (32 * members.max(1));
    wanted.min(affordable).clamp(16, 8192)
}

/// What `balancer` of `server` needs from the shared segment.
fn balancer_plan(server: Server, balancer: Balancer) -> BalancerPlan {
    BalancerPlan {
        key: name_key(balancer.key_name().as_bytes()),
        label_key: name_key(format!("{} {}", server.label(), balancer.name()).as_bytes()),
        members: balancer.max_workers(),
        member_keys: balancer.workers().map(|w| (w.index(), name_key(w.key_name().as_bytes()))).collect(),
    }
}

/// The segment for this generation: the previous one when it still fits the configuration
/// (every counter then continues exactly), else a new one that inherits the previous one's
/// totals. The segment is kept in httpd's retained data, which survives restarts; the parent
/// unmaps a replaced segment (children of the old generation keep their own mapping).
fn segment_for(main: Server, plan: &[BalancerPlan]) -> Result<(Segment, Vec<usize>), String> {
    let retained = server::retained(SEGMENT_KEY).ok_or("httpd gave no retained data")?;
    let previous = previous_segment();
    let members: u32 = plan.iter().map(|b| b.members).sum();
    let processes = process_slots(members);
    if let Some(previous) = previous
        && let Some(slots) = shm::reuse(&previous, plan, processes)
    {
        log_server!(main, Level::Info, "balancers unchanged: the shared counters continue");
        return Ok((previous, slots));
    }

    // Room for the configured balancers and their members (configured plus `growth=`): httpd
    // 2.4 cannot add a balancer at run time, so no spare balancer slots.
    let capacity = Capacity { balancers: (plan.len() as u32).max(1), members, processes };
    let segment = Segment::create(capacity).map_err(|err| format!("cannot map shared memory: {err}"))?;
    let slots = shm::place(&segment, plan).ok_or("shared segment sized too small (internal error)")?;
    let (new_base, new_len) = segment.as_raw();
    retained[0].store(new_base.as_ptr() as usize, Ordering::Release);
    retained[1].store(new_len, Ordering::Release);
    if let Some(previous) = previous {
        shm::carry_over(&previous, &segment);
        // Its processes (the old generation's) see that they are old.
        previous.header().generation.fetch_add(1, Ordering::AcqRel);
        // SAFETY: the previous generation's runtime, the only other holder of a view of it in
        // this process, was dropped when its pool was cleared; the children that use it have
        // their own mapping.
        unsafe { previous.unmap() };
    }
    log_server!(
        main,
        Level::Info,
        "new shared segment: {} balancer, {} member and {} process slot(s), {new_len} bytes",
        capacity.balancers,
        capacity.members,
        capacity.processes
    );
    Ok((segment, slots))
}

const SEGMENT_KEY: &std::ffi::CStr = c"mod_lbmethod_rs:segment";

/// The segment of the generation before this one, in the parent (none at the first start).
pub fn previous_segment() -> Option<Segment> {
    let retained = server::retained(SEGMENT_KEY)?;
    let (base, len) = (retained[0].load(Ordering::Acquire), retained[1].load(Ordering::Acquire));
    // SAFETY: the retained words are written only by `segment_for`, with a segment this
    // process mapped and has not unmapped (it unmaps one only after replacing it there); a
    // segment that does not check out (magic, size) is not taken.
    NonNull::new(base as *mut u8).and_then(|base| unsafe { Segment::from_raw(base, len) })
}

/// The httpd this module was compiled against, as a user reads it.
fn built_for() -> String {
    let (major, minor, patch) = BUILT_FOR_VERSION;
    let (magic_major, magic_minor) = BUILT_FOR_MAGIC;
    format!("httpd {major}.{minor}.{patch} (module magic number {magic_major}:{magic_minor})")
}

/// One line saying the module does not fit this httpd, naming both versions.
fn rebuild(what: &str) -> String {
    let magic = server::running_magic()
        .map_or(String::new(), |(major, minor)| format!(" (module magic number {major}:{minor})"));
    format!(
        "mod_lbmethod_rs was built for {} but runs in {}{magic}{what}: rebuild the module against this httpd's \
         headers (its apxs)",
        built_for(),
        server::description()
    )
}

/// Refuses a running httpd older than the headers the module was built with: the structures it
/// reads may lack fields there (httpd itself only refuses another major magic number).
pub fn check_magic_number() -> Result<(), String> {
    match server::running_magic() {
        Some((major, minor)) if major != BUILT_FOR_MAGIC.0 || minor < BUILT_FOR_MAGIC.1 => Err(rebuild("")),
        _ => Ok(()),
    }
}

/// Refuses to run if httpd's shared worker and balancer records are not the size these
/// bindings were built for (the module was compiled against another httpd's headers).
fn check_shared_layout(
    proxy: &ProxyApi,
    main: Server,
    balancers: &[(Server, Balancer)],
) -> Result<(), String> {
    let mismatch = |name: &str, compiled: usize, running: usize| {
        rebuild(&format!("; its {name} records are {running} bytes, the module's {compiled}"))
    };
    if let Some(running) = balancers.first().and_then(|&(_, b)| b.worker_record_size())
        && running != COMPILED_WORKER_RECORD
    {
        return Err(mismatch("proxy_worker_shared", COMPILED_WORKER_RECORD, running));
    }
    if let Some(running) = proxy.conf(main).and_then(|conf| conf.balancer_record_size())
        && running != COMPILED_BALANCER_RECORD
    {
        return Err(mismatch("proxy_balancer_shared", COMPILED_BALANCER_RECORD, running));
    }
    Ok(())
}
