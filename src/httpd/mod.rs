//! Thin safe wrappers over the raw bindings: the one place in the crate where raw pointers
//! from httpd are dereferenced. This layer imports nothing of the crate but [`crate::ffi`];
//! what it needs to know about the module (its index in httpd's configuration vectors) is
//! handed to it once, in `register_hooks`.
//!
//! Every callback httpd makes into the module enters through a trampoline here ([`hooks`],
//! [`proxy::Providers`], [`config`]), which turns httpd's raw pointers into the handles below
//! once, under the panic guard, and calls the module's safe Rust. A handle (`Request`,
//! `Server`, `Balancer`, `Worker`, `Pool`) is a copy of a pointer httpd handed out, valid for
//! as long as httpd keeps what it points to: a request for its callback, a server, balancer or
//! worker for the configuration generation that made it (in a child process, that is the
//! child's whole life). Every `unsafe` block says why it holds.

pub mod config;
pub mod filter;
pub mod growth;
pub mod guard;
pub mod hooks;
pub mod log;
pub mod pool;
pub mod process;
pub mod proxy;
pub mod request;
pub mod server;

pub use config::Command;
pub use pool::Pool;
pub use proxy::{Balancer, Worker};
pub use request::Request;
pub use server::Server;

use crate::ffi;
use std::any::TypeId;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

/// httpd's answer codes the module returns, by name.
pub mod status {
    use crate::ffi;
    pub const OK: i32 = ffi::OK;
    pub const BAD_REQUEST: i32 = ffi::HTTP_BAD_REQUEST;
    pub const METHOD_NOT_ALLOWED: i32 = ffi::HTTP_METHOD_NOT_ALLOWED;
    pub const SERVICE_UNAVAILABLE: i32 = ffi::HTTP_SERVICE_UNAVAILABLE;
}

/// This module's index in httpd's configuration vectors; -1 (httpd's `APLOG_NO_MODULE`) until
/// [`set_module_index`] runs.
static MODULE_INDEX: AtomicI32 = AtomicI32::new(-1);

/// Records the index httpd gave the module. httpd assigns it when it adds the module, before
/// it calls `register_hooks`, which is where this is called, in every generation.
fn set_module_index(index: c_int) {
    MODULE_INDEX.store(index, Ordering::Relaxed);
}

/// The index set by [`set_module_index`] (per-module `LogLevel`, configuration vectors).
fn module_index() -> c_int {
    MODULE_INDEX.load(Ordering::Relaxed)
}

/// This module's slot in a configuration vector (`ap_get_module_config`), if the index is set
/// and the vector exists.
///
/// # Safety
/// `vector` must be a live configuration vector (a server's `module_config`, a request's
/// `request_config`).
unsafe fn module_slot(vector: *mut ffi::ap_conf_vector_t) -> Option<*mut *mut c_void> {
    if vector.is_null() {
        // A request another module made up without a configuration vector.
        return None;
    }
    let index = usize::try_from(module_index()).ok()?;
    // SAFETY: a configuration vector is an array of pointers indexed by module index, with
    // room for every module httpd loaded (this one included).
    Some(unsafe { (vector as *mut *mut c_void).add(index) })
}

/// A value this module keeps in one of httpd's configuration vectors, with its type, so that
/// reading it back as another type is refused rather than undefined.
#[repr(C)]
struct Tagged<T> {
    type_id: TypeId,
    value: T,
}

impl<T: 'static> Tagged<T> {
    fn new(value: T) -> Tagged<T> {
        Tagged { type_id: TypeId::of::<T>(), value }
    }

    /// The value behind `raw`, if `raw` is a `Tagged<T>`.
    ///
    /// # Safety
    /// `raw` must be null or point to a live `Tagged<_>` of any type.
    unsafe fn value<'a>(raw: *mut c_void) -> Option<&'a mut T> {
        let tagged = raw as *mut Tagged<T>;
        // SAFETY: every Tagged<_> starts with its TypeId (repr(C)); only a Tagged<T> has T's.
        unsafe { (!tagged.is_null() && (*tagged).type_id == TypeId::of::<T>()).then(|| &mut (*tagged).value) }
    }
}

/// A C string from httpd as text (`None` when null; invalid UTF-8 shown as U+FFFD).
///
/// # Safety
/// `ptr` must be null or a live NUL-terminated string that outlives `'a`.
unsafe fn text<'a>(ptr: *const c_char) -> Option<std::borrow::Cow<'a, str>> {
    // SAFETY: per the caller.
    (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_string_lossy())
}
