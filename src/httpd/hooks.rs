//! The module record and the hooks httpd calls: each one enters through a trampoline here that
//! turns httpd's pointers into handles, under the panic guard, and calls the module's safe
//! [`Module`] implementation.

use super::config::{CommandTable, ServerConfig, create_server_config, merge_server_config};
use super::guard::{catch, install_panic_hook};
use super::log::{self, Level};
use super::{Pool, Request, Server, set_module_index};
use crate::ffi;
use std::ffi::{CStr, c_char, c_int, c_ulong};
use std::ptr;

/// How mod_status is answering, for a section added to `/server-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusForm {
    /// `?auto`: plain text lines `Key: value`.
    Auto,
    /// The HTML page, with tables or (`?notable`) without.
    Html,
    HtmlWithoutTables,
}

/// What the module does at each of httpd's steps; every method has a default that does
/// nothing.
pub trait Module: 'static {
    /// Registers the module's providers and filters for this generation (`register_hooks`).
    fn register(_pool: Pool) {}
    /// Every module is loaded; the configuration is about to be read.
    fn pre_config() {}
    /// The configuration has been read (also by `apachectl -t`): errors found in it, each
    /// logged and failing the start.
    fn check_config(_main: Server, _pconf: Pool) -> Vec<String> {
        Vec::new()
    }
    /// In the parent, after mod_proxy_balancer's own post_config, in the second of httpd's
    /// two configuration passes (the first is thrown away and never reaches this). `Err`
    /// stops httpd with the message.
    fn post_config(_main: Server, _pconf: Pool) -> Result<(), String> {
        Ok(())
    }
    /// A new child process, before it serves, after every other module's `child_init` (their
    /// locks and shared memory are ready); `pchild` is destroyed when the child exits.
    fn child_init(_s: Server, _pchild: Pool) {}
    /// In the parent: a child process has exited (httpd reaped it).
    fn child_exited(_s: Server, _pid: u32) {}
    /// In the parent, every few seconds (httpd's `monitor` hook).
    fn monitor(_s: Server) {}
    /// The request is about to be logged (before any module logs it): environment variables
    /// set here reach the access log.
    fn log_transaction(_r: Request<'_>) {}
    /// A content handler: `None` declines the request, `Some(status)` answers it.
    fn handler(_r: Request<'_>) -> Option<i32> {
        None
    }
    /// mod_status's `status_hook` with `ExtendedStatus On`: the module's section of
    /// `/server-status`, written with [`Request::write`]; false declines.
    fn status_section(_r: Request<'_>, _form: StatusForm) -> bool {
        false
    }
}

/// The module record httpd loads: the name httpd knows it by, its per-server configuration
/// type, its command table and [`Module`]. Expands to the one exported symbol.
macro_rules! module_record {
    ($record:ident, $file:expr, $module:ty, $config:ty, $commands:expr) => {
        #[unsafe(no_mangle)]
        pub static mut $record: $crate::ffi::module =
            $crate::httpd::hooks::record::<$config>($file, &$commands, register_hooks);

        unsafe extern "C" fn register_hooks(pool: *mut $crate::ffi::apr_pool_t) {
            // SAFETY: httpd set the index when it added the module, before calling this; the
            // record is only read here.
            let index = unsafe { ::std::ptr::read_volatile(&raw const $record.module_index) };
            $crate::httpd::hooks::register::<$module>(index, pool);
        }
    };
}
pub(crate) use module_record;

/// The module record's contents (see [`module_record`]).
pub const fn record<C: ServerConfig>(
    file: &'static CStr,
    commands: &'static CommandTable,
    register_hooks: unsafe extern "C" fn(*mut ffi::apr_pool_t),
) -> ffi::module {
    ffi::module {
        version: ffi::MODULE_MAGIC_NUMBER_MAJOR,
        minor_version: ffi::MODULE_MAGIC_NUMBER_MINOR,
        module_index: -1,
        name: file.as_ptr(),
        dynamic_load_handle: ptr::null_mut(),
        next: ptr::null_mut(),
        magic: ffi::MODULE_MAGIC_COOKIE as c_ulong,
        rewrite_args: None,
        create_dir_config: None,
        merge_dir_config: None,
        create_server_config: Some(create_server_config::<C>),
        merge_server_config: Some(merge_server_config::<C>),
        cmds: commands.as_ptr(),
        register_hooks: Some(register_hooks),
        flags: 0,
    }
}

/// A NULL-terminated list of module names for hook ordering.
struct HookOrder([*const c_char; 2]);
// SAFETY: points only at static C string literals.
unsafe impl Sync for HookOrder {}
static AFTER_BALANCER: HookOrder = HookOrder([c"mod_proxy_balancer.c".as_ptr(), ptr::null()]);

/// `register_hooks`, for every generation.
pub fn register<M: Module>(index: c_int, pool: *mut ffi::apr_pool_t) {
    catch("register_hooks", (), || {
        set_module_index(index);
        install_panic_hook();
        // SAFETY: httpd passes its configuration pool.
        if let Some(pool) = unsafe { Pool::from_raw(pool) } {
            M::register(pool);
        }
        let (none, middle) = (ptr::null(), ffi::APR_HOOK_MIDDLE);
        // SAFETY: registering plain callbacks; the order list is a static.
        unsafe {
            ffi::ap_hook_pre_config(Some(pre_config::<M>), none, none, middle);
            ffi::ap_hook_check_config(Some(check_config::<M>), none, none, middle);
            // After mod_proxy_balancer's post_config, which puts balancers in shared memory.
            ffi::ap_hook_post_config(Some(post_config::<M>), AFTER_BALANCER.0.as_ptr(), none, middle);
            ffi::ap_hook_child_init(Some(child_init::<M>), none, none, ffi::APR_HOOK_REALLY_LAST);
            ffi::ap_hook_child_status(Some(child_status::<M>), none, none, middle);
            ffi::ap_hook_monitor(Some(monitor::<M>), none, none, middle);
            ffi::ap_hook_handler(Some(handler::<M>), none, none, middle);
            ffi::ap_hook_log_transaction(Some(log_transaction::<M>), none, none, ffi::APR_HOOK_REALLY_FIRST);
        }
        register_status_hook::<M>();
    })
}

unsafe extern "C" fn pre_config<M: Module>(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
) -> c_int {
    catch("pre_config", ffi::OK, || {
        M::pre_config();
        ffi::OK
    })
}

unsafe extern "C" fn check_config<M: Module>(
    pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    catch("check_config", ffi::HTTP_INTERNAL_SERVER_ERROR, || {
        // SAFETY: httpd passes the live main server of the configuration being checked.
        let (Some(main), Some(pconf)) = (unsafe { Server::from_raw(s) }, unsafe { Pool::from_raw(pconf) })
        else {
            return ffi::OK;
        };
        let errors = M::check_config(main, pconf);
        for error in &errors {
            log::server(Some(main), Level::Emerg, file!(), line!(), error);
        }
        if errors.is_empty() { ffi::OK } else { ffi::HTTP_INTERNAL_SERVER_ERROR }
    })
}

unsafe extern "C" fn post_config<M: Module>(
    pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    catch("post_config", ffi::HTTP_INTERNAL_SERVER_ERROR, || {
        if super::server::is_first_pass() {
            return ffi::OK;
        }
        // SAFETY: httpd passes the generation's pool and live main server.
        let (Some(main), Some(pconf)) = (unsafe { Server::from_raw(s) }, unsafe { Pool::from_raw(pconf) })
        else {
            return ffi::HTTP_INTERNAL_SERVER_ERROR;
        };
        match M::post_config(main, pconf) {
            Ok(()) => ffi::OK,
            Err(message) => {
                log::server(Some(main), Level::Emerg, file!(), line!(), &message);
                ffi::HTTP_INTERNAL_SERVER_ERROR
            }
        }
    })
}

unsafe extern "C" fn child_init<M: Module>(pchild: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) {
    catch("child_init", (), || {
        // SAFETY: httpd passes the live main server and the child's pool.
        if let (Some(s), Some(pchild)) = (unsafe { Server::from_raw(s) }, unsafe { Pool::from_raw(pchild) }) {
            M::child_init(s, pchild);
        }
    })
}

unsafe extern "C" fn child_status<M: Module>(
    s: *mut ffi::server_rec,
    pid: ffi::pid_t,
    _generation: ffi::ap_generation_t,
    _slot: c_int,
    state: ffi::mpm_child_status,
) {
    catch("child_status", (), || {
        // SAFETY: httpd passes the live main server.
        if let (ffi::MPM_CHILD_EXITED, Ok(pid @ 1..), Some(s)) =
            (state, u32::try_from(pid), unsafe { Server::from_raw(s) })
        {
            M::child_exited(s, pid);
        }
    })
}

unsafe extern "C" fn monitor<M: Module>(_p: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) -> c_int {
    catch("monitor", ffi::DECLINED, || {
        // SAFETY: httpd passes the live main server.
        if let Some(s) = unsafe { Server::from_raw(s) } {
            M::monitor(s);
        }
        ffi::DECLINED
    })
}

unsafe extern "C" fn log_transaction<M: Module>(r: *mut ffi::request_rec) -> c_int {
    catch("log_transaction", ffi::DECLINED, || {
        // SAFETY: httpd passes the live request it is about to log.
        if let Some(r) = unsafe { Request::from_raw(r) } {
            M::log_transaction(r);
        }
        ffi::DECLINED
    })
}

unsafe extern "C" fn handler<M: Module>(r: *mut ffi::request_rec) -> c_int {
    catch("handler", ffi::HTTP_INTERNAL_SERVER_ERROR, || {
        // SAFETY: httpd passes a live request to its handlers.
        unsafe { Request::from_raw(r) }.and_then(M::handler).unwrap_or(ffi::DECLINED)
    })
}

/// mod_status's `flags` (mod_status.h's macros, which these bindings do not read: the module
/// must not depend on mod_status; httpd 2.4's values, unchanged since 2.3).
const STATUS_SHORT: c_int = 0x1;
const STATUS_NOTABLE: c_int = 0x2;
const STATUS_EXTENDED: c_int = 0x4;

/// Registers [`Module::status_section`] under mod_status's optional hook `status_hook`, by
/// name (`APR_OPTIONAL_HOOK(ap, status_hook, ...)`): no link to mod_status, which may not be
/// loaded. APR forgets optional hooks with the others at each restart.
fn register_status_hook<M: Module>() {
    type StatusHook = unsafe extern "C" fn(*mut ffi::request_rec, c_int) -> c_int;
    let hook: StatusHook = status_section::<M>;
    // SAFETY: APR stores the function pointer under the name; mod_status calls it back with
    // exactly the StatusHook signature (mod_status.h's status_hook). Null predecessor and
    // successor lists mean no ordering constraint.
    unsafe {
        let erased = std::mem::transmute::<StatusHook, unsafe extern "C" fn()>(hook);
        ffi::apr_optional_hook_add(
            c"status_hook".as_ptr(),
            Some(erased),
            ptr::null(),
            ptr::null(),
            ffi::APR_HOOK_MIDDLE,
        );
    }
}

unsafe extern "C" fn status_section<M: Module>(r: *mut ffi::request_rec, flags: c_int) -> c_int {
    catch("server-status section", ffi::DECLINED, || {
        if flags & STATUS_EXTENDED == 0 {
            return ffi::DECLINED;
        }
        let form = if flags & STATUS_SHORT != 0 {
            StatusForm::Auto
        } else if flags & STATUS_NOTABLE != 0 {
            StatusForm::HtmlWithoutTables
        } else {
            StatusForm::Html
        };
        // SAFETY: mod_status calls its hooks with the live request it is answering.
        match unsafe { Request::from_raw(r) } {
            Some(r) if M::status_section(r, form) => ffi::OK,
            _ => ffi::DECLINED,
        }
    })
}
