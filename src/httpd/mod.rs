//! Thin wrappers over the raw bindings: logging, the panic boundary, requests, configuration
//! vectors and mod_proxy's structures. This layer imports nothing but [`crate::ffi`]; what it
//! needs to know about the module (its index in httpd's configuration vectors) is handed to it
//! once, by the module's `register_hooks`. Every `unsafe` block says why it holds.

pub mod guard;
pub mod log;
pub mod proxy;
pub mod request;
pub mod status_hook;

use crate::ffi;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

/// This module's index in httpd's configuration vectors; -1 (httpd's `APLOG_NO_MODULE`) until
/// [`set_module_index`] runs.
static MODULE_INDEX: AtomicI32 = AtomicI32::new(-1);

/// Records the index httpd gave the module. httpd assigns it when it adds the module, before
/// it calls `register_hooks`, which is where this is called, in every generation.
pub fn set_module_index(index: c_int) {
    MODULE_INDEX.store(index, Ordering::Relaxed);
}

/// The index set by [`set_module_index`] (per-module `LogLevel`, configuration vectors).
pub fn module_index() -> c_int {
    MODULE_INDEX.load(Ordering::Relaxed)
}

/// This module's entry in a configuration vector (`ap_get_module_config`), null when unset.
///
/// # Safety
/// `vector` must be a live configuration vector (server `module_config` or a request's
/// `request_config`), and the module index set.
pub unsafe fn module_config(vector: *mut ffi::ap_conf_vector_t) -> *mut c_void {
    let Ok(index) = usize::try_from(module_index()) else { return std::ptr::null_mut() };
    // SAFETY: a configuration vector is an array of pointers indexed by module index.
    unsafe { *(vector as *mut *mut c_void).add(index) }
}

/// Replaces this module's entry in a configuration vector (`ap_set_module_config`).
///
/// # Safety
/// As for [`module_config`]; `value` must live as long as the vector's owner.
pub unsafe fn set_module_config(vector: *mut ffi::ap_conf_vector_t, value: *mut c_void) {
    let Ok(index) = usize::try_from(module_index()) else { return };
    // SAFETY: as above.
    unsafe { *(vector as *mut *mut c_void).add(index) = value };
}

/// A C string from httpd as text (empty when null; invalid UTF-8 shown as U+FFFD).
///
/// # Safety
/// `ptr` must be null or a live NUL-terminated string.
pub unsafe fn c_str(ptr: *const std::ffi::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: per the caller.
    unsafe { std::ffi::CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}
