//! What the httpd parent does at startup and on every restart: check this module's settings
//! against the balancers httpd knows, lay the balancers out in shared memory, and build the
//! generation's runtime.

use super::directives::server_settings;
use super::generation::{Configured, Generation};
use super::module::Runtime;
use crate::config::BalancerSettings;
use crate::ffi;
use crate::httpd::log::{Level, log_server};
use crate::httpd::proxy::{self, ProxyApi};
use crate::shm::{self, BalancerPlan, Capacity, Segment, name_key};
use std::ptr::NonNull;

/// Errors for settings that name a balancer their virtual host does not have.
///
/// # Safety
/// `main` must be the live main server of the configuration.
pub unsafe fn check_settings(main: *const ffi::server_rec) -> Vec<String> {
    let Ok(proxy) = ProxyApi::find() else { return Vec::new() };
    let mut errors = Vec::new();
    // SAFETY: walking the live server list; balancers are mod_proxy's for that server.
    for s in unsafe { proxy::servers(main) } {
        unsafe {
            let balancers: Vec<*mut ffi::proxy_balancer> = proxy.server_balancers(s).collect();
            let known: Vec<String> = balancers.iter().map(|&b| proxy::balancer_name(b)).collect();
            let settings = server_settings(s);
            if let Some(settings) = settings {
                errors.extend((*settings).check(&known));
            }
            // byhash without a key would silently be byinflight: say so now, not at run time.
            for (&balancer, name) in balancers.iter().zip(&known) {
                let has_key = settings.is_some_and(|settings| (*settings).balancer(name).hash_key.is_some());
                if proxy::balancer_method(balancer) == *"byhash" && !has_key {
                    errors.push(format!(
                        "ProxySet lbmethod=byhash in <Proxy \"{name}\">: LBHashKey is missing; \
                         add the expression to hash, e.g. LBHashKey \"%{{REMOTE_ADDR}}\""
                    ));
                }
            }
        }
    }
    errors
}

/// Kept by httpd across restarts (`ap_retained_data`): the segment of the latest generation.
#[repr(C)]
struct Retained {
    base: *mut u8,
    len: usize,
}

/// # Safety
/// `main` must be the live main server of the generation being started (parent, before fork).
pub unsafe fn build_runtime(main: *const ffi::server_rec) -> Result<Runtime, String> {
    let proxy = ProxyApi::find().map_err(|missing| {
        format!("{missing}; load mod_proxy and mod_proxy_balancer (Debian: a2enmod proxy_balancer)")
    })?;
    // SAFETY: main is live; the balancers and workers belong to this generation.
    let balancers = unsafe { proxy.balancers(main) };
    check_magic_number()?;
    unsafe { check_shared_layout(&proxy, main, &balancers)? };

    // SAFETY: live balancers and workers of this generation.
    let plan: Vec<BalancerPlan> = balancers.iter().map(|&(_, b)| unsafe { balancer_plan(b) }).collect();
    // SAFETY: main is live; retained data is parent memory that survives restarts.
    let (segment, slots) = unsafe { segment_for(main, &plan)? };
    let configured = balancers
        .iter()
        .zip(slots)
        // SAFETY: live balancers and servers.
        .map(|(&(server, balancer), slot)| unsafe {
            Configured { id: proxy::balancer_id(balancer), slot, settings: settings_of(server, balancer) }
        })
        .collect();
    Ok(Runtime { generation: Generation::new(segment, configured), proxy, main_server: main })
}

/// This module's settings for `balancer`, as written in its virtual host (or inherited).
///
/// # Safety
/// Live server and balancer.
unsafe fn settings_of(
    server: *const ffi::server_rec,
    balancer: *const ffi::proxy_balancer,
) -> BalancerSettings {
    // SAFETY: per this function's contract.
    unsafe {
        match server_settings(server) {
            Some(settings) => (*settings).balancer(&proxy::balancer_name(balancer)),
            None => BalancerSettings::default(),
        }
    }
}

/// Process slots to make: twice httpd's process limit (old and new generations overlap during
/// a graceful restart), bounded so that the table stays a few megabytes at most.
fn process_slots(members: u32) -> u32 {
    let mut limit: std::ffi::c_int = 0;
    // SAFETY: a plain query into an int we own.
    let known = unsafe { ffi::ap_mpm_query(ffi::AP_MPMQ_HARD_LIMIT_DAEMONS, &mut limit) } == ffi::APR_SUCCESS;
    let wanted = if known && limit > 0 { limit as u32 * 2 + 16 } else { 512 };
    let affordable = (4 << 20) / members.max(1);
    wanted.min(affordable).clamp(16, 8192)
}

/// What balancer `balancer` needs from the shared segment.
///
/// # Safety
/// Live balancer and workers.
unsafe fn balancer_plan(balancer: *mut ffi::proxy_balancer) -> BalancerPlan {
    // SAFETY: per this function's contract.
    unsafe {
        BalancerPlan {
            key: name_key(proxy::balancer_key_name(balancer).as_bytes()),
            members: (*balancer).max_workers.max(0) as u32,
            member_keys: proxy::workers(balancer)
                .map(|w| (proxy::worker_index(w), name_key(proxy::worker_key_name(w).as_bytes())))
                .collect(),
        }
    }
}

/// The segment for this generation: the previous one when it still fits the configuration
/// (every counter then continues exactly), else a new one that inherits the previous one's
/// totals. The segment is kept in httpd's retained data, which survives restarts; the parent
/// unmaps a replaced segment (children of the old generation keep their own mapping).
///
/// # Safety
/// Parent process, during post_config; `main` live.
unsafe fn segment_for(
    main: *const ffi::server_rec,
    plan: &[BalancerPlan],
) -> Result<(Segment, Vec<usize>), String> {
    let key = c"mod_lbmethod_rs:segment";
    // SAFETY: retained data is a zeroed Retained on first use, then what we stored in it.
    let retained = unsafe {
        let mut retained = ffi::ap_retained_data_get(key.as_ptr()) as *mut Retained;
        if retained.is_null() {
            retained = ffi::ap_retained_data_create(key.as_ptr(), size_of::<Retained>()) as *mut Retained;
        }
        retained.as_mut().ok_or("httpd gave no retained data")?
    };
    // SAFETY: a non-null base is a segment mapped by an earlier generation of this process.
    let previous =
        NonNull::new(retained.base).and_then(|base| unsafe { Segment::from_raw(base, retained.len) });
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
    if let Some(previous) = previous {
        shm::carry_over(&previous, &segment);
        // SAFETY: nothing in the parent uses the previous segment any more.
        unsafe { previous.unmap() };
    }
    let (base, len) = segment.as_raw();
    retained.base = base.as_ptr();
    retained.len = len;
    log_server!(
        main,
        Level::Info,
        "new shared segment: {} balancer, {} member and {} process slot(s), {len} bytes",
        capacity.balancers,
        capacity.members,
        capacity.processes
    );
    Ok((segment, slots))
}

/// The httpd this module was compiled against, as a user reads it.
fn built_for() -> String {
    format!(
        "httpd {}.{}.{} (module magic number {}:{})",
        ffi::AP_SERVER_MAJORVERSION_NUMBER,
        ffi::AP_SERVER_MINORVERSION_NUMBER,
        ffi::AP_SERVER_PATCHLEVEL_NUMBER,
        ffi::MODULE_MAGIC_NUMBER_MAJOR,
        ffi::MODULE_MAGIC_NUMBER_MINOR
    )
}

/// The running httpd's description and module magic number (its core module is compiled with
/// its own headers).
fn running() -> (String, Option<(i32, i32)>) {
    // SAFETY: plain lookups; the description is a static string of httpd's.
    unsafe {
        let description = crate::httpd::c_str(ffi::ap_get_server_description());
        let core = ffi::ap_find_linked_module(c"core.c".as_ptr());
        let magic = (!core.is_null()).then(|| ((*core).version, (*core).minor_version));
        (description, magic)
    }
}

/// One line saying the module does not fit this httpd, naming both versions.
fn rebuild(what: &str) -> String {
    let (description, magic) = running();
    let magic =
        magic.map_or(String::new(), |(major, minor)| format!(" (module magic number {major}:{minor})"));
    format!(
        "mod_lbmethod_rs was built for {} but runs in {description}{magic}{what}: rebuild the module \
         against this httpd's headers (its apxs)",
        built_for()
    )
}

/// Refuses a running httpd older than the headers the module was built with: the structures it
/// reads may lack fields there (httpd itself only refuses another major magic number).
pub fn check_magic_number() -> Result<(), String> {
    match running().1 {
        Some((major, minor))
            if major != ffi::MODULE_MAGIC_NUMBER_MAJOR || minor < ffi::MODULE_MAGIC_NUMBER_MINOR =>
        {
            Err(rebuild(""))
        }
        _ => Ok(()),
    }
}

/// Refuses to run if httpd's shared worker and balancer records are not the size these
/// bindings were built for (the module was compiled against another httpd's headers).
///
/// # Safety
/// The balancers must be live, after mod_proxy_balancer's post_config.
unsafe fn check_shared_layout(
    proxy: &ProxyApi,
    main: *const ffi::server_rec,
    balancers: &[(*const ffi::server_rec, *mut ffi::proxy_balancer)],
) -> Result<(), String> {
    // mod_proxy_balancer sizes its slots with APR_ALIGN_DEFAULT (8 bytes).
    let worker = size_of::<ffi::proxy_worker_shared>().next_multiple_of(8);
    let balancer = size_of::<ffi::proxy_balancer_shared>().next_multiple_of(8);
    let mismatch = |name: &str, compiled: usize, running: usize| {
        rebuild(&format!("; its {name} records are {running} bytes, the module's {compiled}"))
    };
    // SAFETY: storage and the slot handles are set by mod_proxy_balancer's post_config.
    unsafe {
        if let Some(&(_, first)) = balancers.first() {
            let (storage, wslot) = ((*first).storage, (*first).wslot);
            if let Some(slot_size) = storage.as_ref().and_then(|s| s.slot_size).filter(|_| !wslot.is_null()) {
                let running = slot_size(wslot);
                if running != worker {
                    return Err(mismatch("proxy_worker_shared", worker, running));
                }
            }
        }
        let conf = proxy.server_conf(main);
        if let Some(conf) = conf.as_ref()
            && let Some(slot_size) = conf.storage.as_ref().and_then(|s| s.slot_size)
            && !conf.bslot.is_null()
        {
            let running = slot_size(conf.bslot);
            if running != balancer {
                return Err(mismatch("proxy_balancer_shared", balancer, running));
            }
        }
    }
    Ok(())
}
