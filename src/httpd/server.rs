//! Servers (the main server and its virtual hosts), this module's per-server configuration,
//! and what httpd tells about itself: its version, its MPM's limits, its startup phase, and
//! memory it keeps across restarts.

use super::{Tagged, module_slot, text};
use crate::ffi;
use std::ffi::{CStr, c_int};
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;

/// A server: the main server or a virtual host of the current generation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Server(NonNull<ffi::server_rec>);

// SAFETY: a server record lives as long as its generation and is only read after startup.
unsafe impl Send for Server {}
unsafe impl Sync for Server {}

impl Server {
    /// # Safety
    /// `raw` must be null or a server record of the current generation.
    pub(super) unsafe fn from_raw(raw: *const ffi::server_rec) -> Option<Server> {
        NonNull::new(raw as *mut ffi::server_rec).map(Server)
    }

    pub(super) fn raw(self) -> *mut ffi::server_rec {
        self.0.as_ptr()
    }

    /// `host:port`, as the status page labels a virtual host.
    pub fn label(self) -> String {
        // SAFETY: server_hostname is null or a C string of the live server.
        let (host, port) = unsafe { (text((*self.raw()).server_hostname), (*self.raw()).port) };
        let host = host.unwrap_or_default();
        if port == 0 { host.into_owned() } else { format!("{host}:{port}") }
    }

    /// This server and the ones configured after it: from the main server, every server.
    pub fn and_following(self) -> impl Iterator<Item = Server> {
        std::iter::successors(Some(self), |s| {
            // SAFETY: `next` is null or a live server of the same generation.
            unsafe { Server::from_raw((*s.raw()).next) }
        })
    }

    /// This module's configuration of the server, if it is a `T` (see [`super::config`]).
    pub fn config<T: 'static>(&self) -> Option<&T> {
        // SAFETY: the slot holds null or a Tagged value this module's create/merge put there,
        // which lives as long as the generation.
        unsafe {
            let slot = module_slot((*self.raw()).module_config)?;
            Tagged::<T>::value(*slot).map(|value| &*value)
        }
    }

    /// Mutable access to the configuration, while httpd reads the configuration files.
    pub(super) fn config_mut<T: 'static>(&mut self) -> Option<&mut T> {
        // SAFETY: as above; httpd reads the configuration in one thread.
        unsafe {
            let slot = module_slot((*self.raw()).module_config)?;
            Tagged::<T>::value(*slot)
        }
    }

    /// Another module's configuration record of this server, by that module's index.
    pub(super) fn module_config_of(self, index: c_int) -> *mut std::ffi::c_void {
        let Ok(index) = usize::try_from(index) else { return std::ptr::null_mut() };
        // SAFETY: module_config is an array with a slot for every loaded module.
        unsafe { *((*self.raw()).module_config as *mut *mut std::ffi::c_void).add(index) }
    }
}

/// True in the first of the two configuration passes httpd makes at startup, which it throws
/// away (`AP_SQ_MS_CREATE_PRE_CONFIG`).
pub fn is_first_pass() -> bool {
    // SAFETY: a plain query.
    unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE) == ffi::AP_SQ_MS_CREATE_PRE_CONFIG }
}

/// True when this invocation of httpd is to start a server: not `apachectl -t`, `-S`, `-M` or
/// `-D DUMP_...` (which only read the configuration), and not `-k stop`, `graceful`,
/// `restart` or `graceful-stop` (which only signal the running server, after reading the
/// configuration as a start would).
pub fn starts_a_server() -> bool {
    // SAFETY: a plain query.
    let normal = unsafe { ffi::ap_state_query(ffi::AP_SQ_RUN_MODE) } == ffi::AP_SQ_RM_NORMAL;
    let arguments = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let arguments: Vec<&[u8]> = arguments.split(|&b| b == 0).collect();
    let signal = arguments.windows(2).find(|pair| pair[0] == b"-k").map(|pair| pair[1]);
    normal && signal.is_none_or(|action| action == b"start")
}

/// The most child processes the MPM may run (`ServerLimit`), if it says.
pub fn process_limit() -> Option<u32> {
    let mut limit: c_int = 0;
    // SAFETY: a plain query into an int we own.
    let known = unsafe { ffi::ap_mpm_query(ffi::AP_MPMQ_HARD_LIMIT_DAEMONS, &mut limit) } == ffi::APR_SUCCESS;
    (known && limit > 0).then_some(limit as u32)
}

/// The running httpd's description (`Apache/2.4.71 (Debian)`).
pub fn description() -> String {
    // SAFETY: a static string of httpd's.
    unsafe { text(ffi::ap_get_server_description()) }.unwrap_or_default().into_owned()
}

/// The running httpd's module magic number (its core module is compiled with its headers).
pub fn running_magic() -> Option<(i32, i32)> {
    // SAFETY: a lookup by name; the core module record is live.
    unsafe {
        let core = ffi::ap_find_linked_module(c"core.c".as_ptr());
        (!core.is_null()).then(|| ((*core).version, (*core).minor_version))
    }
}

/// The httpd version and module magic number these bindings were generated from.
pub const BUILT_FOR_VERSION: (i32, i32, i32) = (
    ffi::AP_SERVER_MAJORVERSION_NUMBER,
    ffi::AP_SERVER_MINORVERSION_NUMBER,
    ffi::AP_SERVER_PATCHLEVEL_NUMBER,
);
pub const BUILT_FOR_MAGIC: (i32, i32) = (ffi::MODULE_MAGIC_NUMBER_MAJOR, ffi::MODULE_MAGIC_NUMBER_MINOR);

/// Two words httpd's parent keeps under `key` across restarts (`ap_retained_data`), zero at
/// first. `None` if httpd gives none.
pub fn retained(key: &'static CStr) -> Option<&'static [AtomicUsize; 2]> {
    let size = size_of::<[AtomicUsize; 2]>();
    // SAFETY: retained data is zeroed process memory that lives until the process exits, and
    // all-zero atomics are valid; it is only ever used as this type under this key.
    unsafe {
        let mut data = ffi::ap_retained_data_get(key.as_ptr());
        if data.is_null() {
            data = ffi::ap_retained_data_create(key.as_ptr(), size);
        }
        (data as *const [AtomicUsize; 2]).as_ref()
    }
}

/// A value that belongs to one configuration generation: made by the parent in post_config,
/// before it forks (so every child inherits it), and dropped when the generation's pool is
/// cleared. In a child it lives until the child exits (a child never clears that pool).
pub struct PerGeneration<T>(std::sync::atomic::AtomicPtr<T>);

impl<T: Send + Sync + 'static> PerGeneration<T> {
    pub const fn new() -> PerGeneration<T> {
        PerGeneration(std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()))
    }

    /// Installs `value` for the generation whose configuration pool is `pconf`.
    pub fn install(&'static self, pconf: super::Pool, value: T) {
        let old = self.0.swap(Box::into_raw(Box::new(value)), std::sync::atomic::Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: a value of a generation whose pool was never cleared (a failed start);
            // nothing refers to it in the parent, which is the only process installing.
            drop(unsafe { Box::from_raw(old) });
        }
        let cell: &'static PerGeneration<T> = self;
        // The pool keeps the cell's address and drops the value when cleared.
        pconf.on_clear_with(cell, |cell| {
            let old = cell.0.swap(std::ptr::null_mut(), std::sync::atomic::Ordering::AcqRel);
            if !old.is_null() {
                // SAFETY: the Box installed above. httpd clears a generation's pool in the
                // parent, which serves no request (or, with `-X`, after its request threads
                // have stopped): nothing holds a reference into the value any more.
                drop(unsafe { Box::from_raw(old) });
            }
        });
    }

    /// The current generation's value.
    pub fn get(&'static self) -> Option<&'static T> {
        // SAFETY: null or a Box installed above, freed only when no request runs (see there).
        unsafe { self.0.load(std::sync::atomic::Ordering::Acquire).as_ref() }
    }
}
