//! mod_status's optional hook `status_hook`: a module adds its own section to
//! `/server-status` without linking against mod_status. The hook is registered by name with
//! APR (`APR_OPTIONAL_HOOK(ap, status_hook, ...)` is `apr_optional_hook_add("status_hook", ...)`),
//! and mod_status runs whatever is registered under that name; without mod_status nothing
//! runs it.

use crate::ffi;
use std::ffi::c_int;
use std::ptr;

/// The `flags` mod_status passes to the hook. mod_status.h defines them as macros, and this
/// crate's bindings do not read that header (the module must not depend on mod_status), so
/// they are copied here: httpd 2.4's values, unchanged since 2.3.
pub mod flags {
    use std::ffi::c_int;
    /// `AP_STATUS_SHORT`: the machine-readable form (`?auto`), plain text lines `Key: value`.
    pub const SHORT: c_int = 0x1;
    /// `AP_STATUS_NOTABLE`: HTML without tables (`?notable`).
    pub const NOTABLE: c_int = 0x2;
    /// `AP_STATUS_EXTENDED`: `ExtendedStatus On`, a detailed report.
    pub const EXTENDED: c_int = 0x4;
}

/// `int hook(request_rec *r, int flags)`: returns `OK` or `DECLINED` (mod_status runs every
/// hook either way).
pub type StatusHook = unsafe extern "C" fn(r: *mut ffi::request_rec, flags: c_int) -> c_int;

/// Registers `hook` under `status_hook` for this configuration generation. APR forgets optional
/// hooks with all other hooks at each restart, so this belongs in `register_hooks`.
pub fn register(hook: StatusHook) {
    // SAFETY: APR stores the function pointer under the name; mod_status calls it back with
    // exactly the StatusHook signature (mod_status.h's status_hook). The name is a static C
    // string, and null predecessor/successor lists mean no ordering constraint.
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
