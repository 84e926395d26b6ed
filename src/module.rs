//! The module record httpd loads, its hooks, and the method providers it registers.
//!
//! Exactly one symbol is exported: `lbmethod_rs_module`. Every callback is a plain, unexported
//! `extern "C" fn` whose body runs under the panic guard.

use crate::ffi;
use crate::generation::Generation;
use crate::httpd::guard::{catch, install_panic_hook};
use crate::httpd::log::{Level, log_server};
use crate::httpd::proxy::{self, ProxyApi};
use crate::methods::Method;
use crate::shm::{self, BalancerPlan, Segment, name_key};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_ulong, c_void};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The module record. httpd writes into it (index, list link), hence `static mut`; this crate
/// only reads `module_index` through [`index`].
#[unsafe(no_mangle)]
pub static mut lbmethod_rs_module: ffi::module = ffi::module {
    version: ffi::MODULE_MAGIC_NUMBER_MAJOR,
    minor_version: ffi::MODULE_MAGIC_NUMBER_MINOR,
    module_index: -1,
    name: c"mod_lbmethod_rs.c".as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: ffi::MODULE_MAGIC_COOKIE as c_ulong,
    rewrite_args: None,
    create_dir_config: None,
    merge_dir_config: None,
    create_server_config: None,
    merge_server_config: None,
    cmds: ptr::null(),
    register_hooks: Some(register_hooks),
    flags: 0,
};

/// This module's index in httpd's configuration vectors (and for per-module LogLevel).
pub fn index() -> c_int {
    // SAFETY: httpd sets module_index while loading the module, before any callback runs, and
    // never changes it afterwards.
    unsafe { ptr::read_volatile(&raw const lbmethod_rs_module.module_index) }
}

/// A method's provider table, as mod_proxy_balancer expects it.
struct Provider(ffi::proxy_balancer_method);

// SAFETY: the tables are never written after construction; httpd only reads them.
unsafe impl Sync for Provider {}

macro_rules! provider {
    ($name:ident, $method:expr, $finder:ident) => {
        unsafe extern "C" fn $finder(
            balancer: *mut ffi::proxy_balancer,
            r: *mut ffi::request_rec,
        ) -> *mut ffi::proxy_worker {
            catch(
                concat!(stringify!($finder), " finder"),
                ptr::null_mut(),
                || crate::finder::find($method, balancer, r),
            )
        }
        static $name: Provider = Provider(ffi::proxy_balancer_method {
            name: $method.c_name().as_ptr(),
            finder: Some($finder),
            context: ptr::null_mut(),
            reset: Some(reset),
            age: Some(age),
            updatelbstatus: Some(update_lb_status),
        });
    };
}

provider!(BYWEIGHT, Method::ByWeight, find_byweight);

fn provider_table(method: Method) -> &'static Provider {
    match method {
        Method::ByWeight => &BYWEIGHT,
    }
}

/// Balancer-manager changed the method, or re-enabled a member: nothing to reset, since
/// every method's state is derived from shared counters on each pick.
unsafe extern "C" fn reset(
    _balancer: *mut ffi::proxy_balancer,
    _s: *mut ffi::server_rec,
) -> ffi::apr_status_t {
    ffi::APR_SUCCESS
}

/// Never called by httpd 2.4; present because the table has the slot.
unsafe extern "C" fn age(
    _balancer: *mut ffi::proxy_balancer,
    _s: *mut ffi::server_rec,
) -> ffi::apr_status_t {
    ffi::APR_SUCCESS
}

/// Sticky-session hits: httpd's default here rewrites every member's `lbstatus`, which none of
/// this module's methods reads, so do nothing instead.
unsafe extern "C" fn update_lb_status(
    _balancer: *mut ffi::proxy_balancer,
    _elected: *mut ffi::proxy_worker,
    _s: *mut ffi::server_rec,
) -> ffi::apr_status_t {
    ffi::APR_SUCCESS
}

/// A NULL-terminated list of module names for hook ordering.
struct HookOrder([*const c_char; 2]);
// SAFETY: points only at static C string literals.
unsafe impl Sync for HookOrder {}
static AFTER_BALANCER: HookOrder = HookOrder([c"mod_proxy_balancer.c".as_ptr(), ptr::null()]);

unsafe extern "C" fn register_hooks(pool: *mut ffi::apr_pool_t) {
    catch("register_hooks", (), || {
        install_panic_hook();
        for method in Method::ALL {
            // SAFETY: the provider table and names are statics that outlive the generation.
            unsafe {
                ffi::ap_register_provider(
                    pool,
                    c"proxylbmethod".as_ptr(),
                    method.c_name().as_ptr(),
                    c"0".as_ptr(),
                    &provider_table(method).0 as *const _ as *const c_void,
                );
            }
        }
        // SAFETY: registering plain callbacks; the order list is a static.
        unsafe {
            // After mod_proxy_balancer's post_config, which puts balancers in shared memory.
            ffi::ap_hook_post_config(
                Some(post_config),
                AFTER_BALANCER.0.as_ptr(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE,
            );
            ffi::ap_hook_handler(
                Some(crate::status_page::handler),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE,
            );
        }
    })
}

/// What the finders and the status page need, for one generation in this process.
pub struct Runtime {
    pub generation: Generation,
    pub proxy: ProxyApi,
    pub main_server: *const ffi::server_rec,
}

// SAFETY: main_server is only read, and lives as long as the generation.
unsafe impl Send for Runtime {}
unsafe impl Sync for Runtime {}

/// The current generation's runtime; set by the parent before it forks, so children inherit it.
static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(ptr::null_mut());

pub fn runtime() -> Option<&'static Runtime> {
    // SAFETY: the pointer is either null or a leaked Box that is only freed by the pconf
    // cleanup of the parent, when no request is being served in this process.
    unsafe { RUNTIME.load(Ordering::Acquire).as_ref() }
}

unsafe extern "C" fn post_config(
    pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    catch("post_config", ffi::HTTP_INTERNAL_SERVER_ERROR, || {
        // httpd runs post_config twice at startup; the first pass is thrown away.
        // SAFETY: a plain query.
        if unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE) } == ffi::AP_SQ_MS_CREATE_PRE_CONFIG
        {
            return ffi::OK;
        }
        // SAFETY: s is the main server of the generation being started; pconf its pool.
        match unsafe { build_runtime(s) } {
            Ok(runtime) => {
                let old = RUNTIME.swap(Box::into_raw(Box::new(runtime)), Ordering::AcqRel);
                // SAFETY: a leftover from a generation whose cleanup did not run; unused now.
                if !old.is_null() {
                    drop(unsafe { Box::from_raw(old) });
                }
                // SAFETY: registering a plain callback on the generation's pool.
                unsafe {
                    ffi::apr_pool_cleanup_register(
                        pconf,
                        ptr::null(),
                        Some(end_generation),
                        Some(ffi::apr_pool_cleanup_null),
                    );
                }
                ffi::OK
            }
            Err(message) => {
                log_server!(s, Level::Emerg, "mod_lbmethod_rs cannot start: {message}");
                ffi::HTTP_INTERNAL_SERVER_ERROR
            }
        }
    })
}

/// The generation's pool is being cleared (restart or stop): forget its runtime. The shared
/// segment stays mapped (see [`Retained`]) so the next generation can carry totals over.
unsafe extern "C" fn end_generation(_data: *mut c_void) -> ffi::apr_status_t {
    catch("end of generation", ffi::APR_SUCCESS, || {
        let old = RUNTIME.swap(ptr::null_mut(), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: the Box leaked in post_config; no request runs in the parent.
            drop(unsafe { Box::from_raw(old) });
        }
        ffi::APR_SUCCESS
    })
}

/// Kept by httpd across restarts (`ap_retained_data`): the segment of the latest generation.
#[repr(C)]
struct Retained {
    base: *mut u8,
    len: usize,
}

/// # Safety
/// `main` must be the live main server of the generation being started (parent, before fork).
unsafe fn build_runtime(main: *const ffi::server_rec) -> Result<Runtime, String> {
    let proxy = ProxyApi::find().map_err(|missing| {
        format!("{missing}; load mod_proxy and mod_proxy_balancer (Debian: a2enmod proxy_balancer)")
    })?;
    // SAFETY: main is live; the balancers and workers belong to this generation.
    let balancers = unsafe { proxy.balancers(main) };
    unsafe { check_shared_layout(&balancers)? };

    // SAFETY: live balancers and workers of this generation.
    let plan: Vec<BalancerPlan> = balancers
        .iter()
        .map(|&(_, b)| unsafe { balancer_plan(b) })
        .collect();
    // SAFETY: main is live; retained data is parent memory that survives restarts.
    let (segment, slots) = unsafe { segment_for(&proxy, main, &plan)? };
    let configured: HashMap<usize, usize> = balancers
        .iter()
        // SAFETY: live balancers.
        .map(|&(_, b)| unsafe { proxy::balancer_id(b) })
        .zip(slots)
        .collect();
    Ok(Runtime {
        generation: Generation::new(segment, configured),
        proxy,
        main_server: main,
    })
}

/// What balancer `balancer` needs from the shared segment.
///
/// # Safety
/// Live balancer and workers.
unsafe fn balancer_plan(balancer: *mut ffi::proxy_balancer) -> BalancerPlan {
    // SAFETY: per this function's contract.
    unsafe {
        BalancerPlan {
            key: name_key(&proxy::balancer_key_name(balancer)),
            members: (*balancer).max_workers.max(0) as u32,
            member_keys: proxy::workers(balancer)
                .into_iter()
                .map(|w| {
                    (
                        proxy::worker_state(w).index,
                        name_key(&proxy::worker_key_name(w)),
                    )
                })
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
    proxy: &ProxyApi,
    main: *const ffi::server_rec,
    plan: &[BalancerPlan],
) -> Result<(Segment, Vec<usize>), String> {
    let key = c"mod_lbmethod_rs:segment";
    // SAFETY: retained data is a zeroed Retained on first use, then what we stored in it.
    let retained = unsafe {
        let mut retained = ffi::ap_retained_data_get(key.as_ptr()) as *mut Retained;
        if retained.is_null() {
            retained =
                ffi::ap_retained_data_create(key.as_ptr(), size_of::<Retained>()) as *mut Retained;
        }
        retained.as_mut().ok_or("httpd gave no retained data")?
    };
    // SAFETY: a non-null base is a segment mapped by an earlier generation of this process.
    let previous = NonNull::new(retained.base)
        .and_then(|base| unsafe { Segment::from_raw(base, retained.len) });
    if let Some(previous) = previous
        && let Some(slots) = shm::reuse(&previous, plan)
    {
        log_server!(
            main,
            Level::Info,
            "balancers unchanged: the shared counters continue"
        );
        return Ok((previous, slots));
    }

    // SAFETY: main is live.
    let spare_balancers = unsafe { spare_balancers(proxy, main) };
    let members: u32 = plan.iter().map(|b| b.members).sum();
    let segment = Segment::create(
        plan.len() as u32 + spare_balancers,
        members + spare_balancers * 16,
    )
    .map_err(|err| format!("cannot map shared memory: {err}"))?;
    let slots =
        shm::place(&segment, plan).ok_or("shared segment sized too small (internal error)")?;
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
        "new shared segment: {} balancer slot(s), {} member slot(s), {len} bytes",
        segment.balancer_slots(),
        segment.member_slots()
    );
    Ok((segment, slots))
}

/// Spare balancer slots: `BalancerGrowth` of every server (mod_proxy keeps it per server).
///
/// # Safety
/// `main` must be live.
unsafe fn spare_balancers(proxy: &ProxyApi, main: *const ffi::server_rec) -> u32 {
    let mut spares = 0u32;
    let mut s = main;
    while !s.is_null() {
        // SAFETY: walking the live server list.
        unsafe {
            let conf = proxy.server_conf(s);
            if !conf.is_null() {
                spares = spares.saturating_add((*conf).bgrowth.max(0) as u32);
            }
            s = (*s).next;
        }
    }
    spares.min(1024)
}

/// Refuses to run if httpd's worker records are not the size these bindings were built for
/// (the module was compiled against another httpd's headers).
///
/// # Safety
/// The balancers must be live, after mod_proxy_balancer's post_config.
unsafe fn check_shared_layout(
    balancers: &[(*const ffi::server_rec, *mut ffi::proxy_balancer)],
) -> Result<(), String> {
    let compiled = size_of::<ffi::proxy_worker_shared>().next_multiple_of(8);
    for &(_, balancer) in balancers {
        // SAFETY: storage and wslot are set by mod_proxy_balancer's post_config.
        unsafe {
            let (storage, wslot) = ((*balancer).storage, (*balancer).wslot);
            if storage.is_null() || wslot.is_null() {
                continue;
            }
            if let Some(slot_size) = (*storage).slot_size {
                let running = slot_size(wslot);
                if running != compiled {
                    return Err(format!(
                        "this httpd's proxy_worker_shared slots are {running} bytes but the module was built for {compiled}: \
                         rebuild mod_lbmethod_rs against this httpd's headers"
                    ));
                }
                return Ok(());
            }
        }
    }
    Ok(())
}
