//! The module record httpd loads, its hooks, and the method providers it registers.
//!
//! Exactly one symbol is exported: `lbmethod_rs_module`. Every callback is a plain, unexported
//! `extern "C" fn` whose body runs under the panic guard.

use super::generation::Generation;
use super::{attempts, directives, finder, startup, status_handler};
use crate::ffi;
use crate::httpd::guard::{catch, install_panic_hook};
use crate::httpd::log::{Level, log_server};
use crate::httpd::proxy::ProxyApi;
use crate::httpd::status_hook;
use crate::methods::METHODS;
use std::ffi::{c_char, c_int, c_ulong, c_void};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The module record. httpd writes into it (index, list link), hence `static mut`; this crate
/// reads its index once, in `register_hooks`.
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
    create_server_config: Some(directives::create_server_config),
    merge_server_config: Some(directives::merge_server_config),
    cmds: directives::COMMANDS.as_ptr(),
    register_hooks: Some(register_hooks),
    flags: 0,
};

/// The provider tables mod_proxy_balancer calls, one per method in [`METHODS`]. Each one's
/// `context` is the method's position there, which the one finder reads back.
struct Providers([ffi::proxy_balancer_method; METHODS.len()]);

// SAFETY: the tables are never written after construction; httpd only reads them.
unsafe impl Sync for Providers {}

static PROVIDERS: Providers = Providers({
    let mut tables = [ffi::proxy_balancer_method {
        name: ptr::null(),
        finder: Some(find),
        context: ptr::null_mut(),
        reset: Some(reset),
        age: Some(age),
        updatelbstatus: Some(sticky_hit),
    }; METHODS.len()];
    let mut i = 0;
    while i < METHODS.len() {
        tables[i].name = METHODS[i].name.as_ptr();
        tables[i].context = ptr::without_provenance_mut(i);
        i += 1;
    }
    tables
});

/// Every method's finder: the method is the one whose table httpd called through.
unsafe extern "C" fn find(
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    catch("finder", ptr::null_mut(), || {
        // SAFETY: httpd calls a finder through the live balancer's own lbmethod table.
        let position = unsafe { (*(*balancer).lbmethod).context } as usize;
        match METHODS.get(position) {
            Some(method) => finder::find(method, balancer, r),
            None => ptr::null_mut(),
        }
    })
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
unsafe extern "C" fn age(_balancer: *mut ffi::proxy_balancer, _s: *mut ffi::server_rec) -> ffi::apr_status_t {
    ffi::APR_SUCCESS
}

/// A sticky-session hit (the method is bypassed): nothing to do here; the attempt is counted
/// when mod_proxy starts it (see `attempts`), from what the request itself carries.
unsafe extern "C" fn sticky_hit(
    _balancer: *mut ffi::proxy_balancer,
    _elected: *mut ffi::proxy_worker,
    _s: *mut ffi::server_rec,
) -> ffi::apr_status_t {
    ffi::APR_SUCCESS
}

/// Whether `method` is one of this module's provider tables (a balancer using one of our
/// methods has its `lbmethod` pointing at it).
pub fn is_our_method(method: *const ffi::proxy_balancer_method) -> bool {
    PROVIDERS.0.iter().any(|table| ptr::eq(table, method))
}

/// A NULL-terminated list of module names for hook ordering.
struct HookOrder([*const c_char; 2]);
// SAFETY: points only at static C string literals.
unsafe impl Sync for HookOrder {}
static AFTER_BALANCER: HookOrder = HookOrder([c"mod_proxy_balancer.c".as_ptr(), ptr::null()]);

unsafe extern "C" fn register_hooks(pool: *mut ffi::apr_pool_t) {
    catch("register_hooks", (), || {
        // SAFETY: httpd set the index when it added the module, before calling this.
        crate::httpd::set_module_index(unsafe {
            ptr::read_volatile(&raw const lbmethod_rs_module.module_index)
        });
        install_panic_hook();
        for provider in &PROVIDERS.0 {
            // SAFETY: the provider tables and names are statics that outlive the generation.
            unsafe {
                ffi::ap_register_provider(
                    pool,
                    c"proxylbmethod".as_ptr(),
                    provider.name,
                    c"0".as_ptr(),
                    provider as *const ffi::proxy_balancer_method as *const c_void,
                );
            }
        }
        attempts::register_timing_filter();
        // mod_status's optional hook, by name: no link to mod_status, which may not be loaded.
        status_hook::register(status_handler::server_status_section);
        let (none, middle) = (ptr::null(), ffi::APR_HOOK_MIDDLE);
        // SAFETY: registering plain callbacks; the order list is a static.
        unsafe {
            ffi::ap_hook_pre_config(Some(pre_config), none, none, middle);
            ffi::ap_hook_check_config(Some(check_config), none, none, middle);
            // After mod_proxy_balancer's post_config, which puts balancers in shared memory.
            ffi::ap_hook_post_config(Some(post_config), AFTER_BALANCER.0.as_ptr(), none, middle);
            ffi::ap_hook_child_init(Some(child_init), none, none, middle);
            ffi::ap_hook_child_status(Some(child_status), none, none, middle);
            ffi::ap_hook_handler(Some(status_handler::handler), none, none, middle);
        }
    })
}

/// Every module is loaded by now, mod_proxy included whatever the LoadModule order: hook into
/// mod_proxy (found by name, not linked against).
unsafe extern "C" fn pre_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
) -> c_int {
    catch("pre_config", ffi::OK, || {
        attempts::hook_attempt_start();
        ffi::OK
    })
}

/// Configuration check (also run by `apachectl -t`): settings for balancers that do not exist.
unsafe extern "C" fn check_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    catch("check_config", ffi::HTTP_INTERNAL_SERVER_ERROR, || {
        // SAFETY: s is the live main server of the configuration being checked.
        let mut errors = unsafe { startup::check_settings(s) };
        errors.extend(startup::check_magic_number().err());
        for error in &errors {
            log_server!(s, Level::Emerg, "{error}");
        }
        if errors.is_empty() { ffi::OK } else { ffi::HTTP_INTERNAL_SERVER_ERROR }
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
        if unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE) } == ffi::AP_SQ_MS_CREATE_PRE_CONFIG {
            return ffi::OK;
        }
        // SAFETY: s is the main server of the generation being started, in the parent.
        match unsafe { startup::build_runtime(s) } {
            Ok(runtime) => {
                let old = RUNTIME.swap(Box::into_raw(Box::new(runtime)), Ordering::AcqRel);
                if !old.is_null() {
                    // SAFETY: a leftover from a generation whose cleanup did not run; unused.
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
/// segment stays mapped (httpd's retained data keeps it) for the next generation.
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

/// A new child process: take a row in the segment's process table, so that the parent can take
/// back this process's attempts if it is killed.
unsafe extern "C" fn child_init(_pchild: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) {
    catch("child_init", (), || {
        let Some(runtime) = runtime() else { return };
        if !runtime.generation.join_as_process(std::process::id()) {
            log_server!(
                s,
                Level::Warning,
                "process table full: in-flight counts of this child cannot be repaired if it is killed"
            );
        }
    })
}

/// In the parent: a child has exited. Whatever it had in flight and never released (it was
/// killed) is taken back from the shared counts.
unsafe extern "C" fn child_status(
    s: *mut ffi::server_rec,
    pid: ffi::pid_t,
    _generation: ffi::ap_generation_t,
    _slot: c_int,
    state: ffi::mpm_child_status,
) {
    catch("child_status", (), || {
        if state != ffi::MPM_CHILD_EXITED || pid <= 0 {
            return;
        }
        let Some(runtime) = runtime() else { return };
        let reclaimed = runtime.generation.segment().reap_process(pid as u32);
        if reclaimed != 0 {
            log_server!(
                s,
                Level::Notice,
                "child {pid} exited with {reclaimed} attempt(s) in flight; its in-flight counts were given back"
            );
        }
    })
}
