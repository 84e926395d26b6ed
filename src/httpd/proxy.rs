//! mod_proxy's structures, reached without importing a symbol from mod_proxy.so: the module
//! record is found by name and the one function needed is an APR optional function. So
//! `LoadModule lbmethod_rs_module` works before or after `LoadModule proxy_module`.
//!
//! `proxy_worker_shared` and `proxy_balancer_shared` live in httpd's shared memory, written by
//! every process with plain stores. They are read field by field through raw pointers at the
//! point of use (never through a Rust reference) and the values are treated as hints.

use crate::ffi;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::{addr_of, read_volatile};

/// `proxy_balancer_get_best_worker`: walks lbset tiers, hot spares, standbys, drain and
/// error/retry, and offers each eligible worker to `is_best`.
pub type GetBestWorker = unsafe extern "C" fn(
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
    is_best: ffi::proxy_is_best_callback_fn_t,
    baton: *mut c_void,
) -> *mut ffi::proxy_worker;

/// What this module uses of mod_proxy, looked up once per generation.
#[derive(Clone, Copy)]
pub struct ProxyApi {
    module_index: c_int,
    pub get_best_worker: GetBestWorker,
}

impl ProxyApi {
    /// Finds mod_proxy; `Err` says what is missing.
    pub fn find() -> Result<ProxyApi, &'static str> {
        // SAFETY: plain lookups by name in httpd's module list and APR's optional functions.
        let module = unsafe { ffi::ap_find_linked_module(c"mod_proxy.c".as_ptr()) };
        if module.is_null() {
            return Err("mod_proxy is not loaded");
        }
        // SAFETY: as above.
        let function = unsafe { ffi::apr_dynamic_fn_retrieve(c"proxy_balancer_get_best_worker".as_ptr()) };
        let Some(function) = function else {
            return Err("mod_proxy does not offer proxy_balancer_get_best_worker (httpd older than 2.4.24?)");
        };
        // SAFETY: module is a live module record; the optional function registered under that
        // name has exactly the GetBestWorker signature (mod_proxy.h).
        Ok(ProxyApi {
            module_index: unsafe { (*module).module_index },
            get_best_worker: unsafe {
                std::mem::transmute::<unsafe extern "C" fn(), GetBestWorker>(function)
            },
        })
    }

    /// mod_proxy's configuration of server `s`.
    ///
    /// # Safety
    /// `s` must be a live server_rec of this generation.
    pub unsafe fn server_conf(&self, s: *const ffi::server_rec) -> *mut ffi::proxy_server_conf {
        // SAFETY: module_config is an array indexed by module index (ap_get_module_config).
        unsafe {
            let configs = (*s).module_config as *mut *mut c_void;
            *configs.add(self.module_index as usize) as *mut ffi::proxy_server_conf
        }
    }

    /// Every balancer of every server, with the server it belongs to. A balancer inherited by
    /// several virtual hosts is one balancer per virtual host (each has its own shared state).
    ///
    /// # Safety
    /// `main` must be the live main server_rec of this generation.
    pub unsafe fn balancers(
        &self,
        main: *const ffi::server_rec,
    ) -> Vec<(*const ffi::server_rec, *mut ffi::proxy_balancer)> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut s = main;
        while !s.is_null() {
            // SAFETY: walking httpd's server list; each conf is mod_proxy's for that server.
            unsafe {
                let conf = self.server_conf(s);
                if !conf.is_null() {
                    for balancer in elements::<ffi::proxy_balancer>((*conf).balancers) {
                        if seen.insert(balancer_id(balancer)) {
                            out.push((s, balancer));
                        }
                    }
                }
                s = (*s).next;
            }
        }
        out
    }
}

/// Pointers to the elements of an APR array (no references: httpd may be using them).
///
/// # Safety
/// `a` must be null or a live array whose elements are `T`.
pub unsafe fn elements<T>(a: *const ffi::apr_array_header_t) -> Vec<*mut T> {
    // SAFETY: per the caller; nelts elements of T start at elts.
    unsafe {
        if a.is_null() || (*a).nelts <= 0 || (*a).elts.is_null() {
            return Vec::new();
        }
        let first = (*a).elts as *mut T;
        (0..(*a).nelts as usize).map(|i| first.add(i)).collect()
    }
}

/// A balancer's identity within a generation: the address of its shared record, unique per
/// balancer and virtual host and the same in every child.
///
/// # Safety
/// `balancer` must be live.
pub unsafe fn balancer_id(balancer: *const ffi::proxy_balancer) -> usize {
    // SAFETY: reading a pointer field of a live balancer.
    unsafe { (*balancer).s as usize }
}

/// The balancer's httpd-wide unique name (`sname`: server id + name), the key of its slot.
///
/// # Safety
/// `balancer` must be live.
pub unsafe fn balancer_key_name(balancer: *const ffi::proxy_balancer) -> Vec<u8> {
    // SAFETY: sname is a NUL-terminated array in the live shared record.
    unsafe { fixed_bytes(addr_of!((*(*balancer).s).sname)) }
}

/// `balancer://name`.
///
/// # Safety
/// `balancer` must be live.
pub unsafe fn balancer_name(balancer: *const ffi::proxy_balancer) -> String {
    // SAFETY: as above, for name.
    unsafe { fixed_string(addr_of!((*(*balancer).s).name)) }
}

/// The balancer's current method name, as every process sees it (`lbpname`).
///
/// # Safety
/// `balancer` must be live.
pub unsafe fn balancer_method(balancer: *const ffi::proxy_balancer) -> String {
    // SAFETY: as above, for lbpname.
    unsafe { fixed_string(addr_of!((*(*balancer).s).lbpname)) }
}

/// The balancer's members (configured and added at run time), in configuration order.
///
/// # Safety
/// `balancer` must be live, and its thread lock held if other threads may add members.
pub unsafe fn workers(balancer: *const ffi::proxy_balancer) -> Vec<*mut ffi::proxy_worker> {
    // SAFETY: balancer->workers is an array of proxy_worker pointers.
    unsafe { elements::<*mut ffi::proxy_worker>((*balancer).workers).into_iter().map(|slot| *slot).collect() }
}

/// One read of the scheduling fields of a worker's shared record.
#[derive(Clone, Copy, Debug)]
pub struct WorkerState {
    /// Slot index, the same in every process.
    pub index: u32,
    pub status: u32,
    /// loadfactor x 100.
    pub lbfactor: u32,
    pub lbset: i32,
    pub elected: u64,
    pub busy: u64,
}

/// Reads `worker->s`'s scheduling fields.
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_state(worker: *const ffi::proxy_worker) -> WorkerState {
    // SAFETY: each field is read once with a volatile load from the live shared record; other
    // processes may be writing them, so the values are only a consistent-enough snapshot.
    unsafe {
        let s = (*worker).s;
        WorkerState {
            index: read_volatile(addr_of!((*s).index)).max(0) as u32,
            status: read_volatile(addr_of!((*s).status)),
            lbfactor: read_volatile(addr_of!((*s).lbfactor)).max(1) as u32,
            lbset: read_volatile(addr_of!((*s).lbset)),
            elected: read_volatile(addr_of!((*s).elected)) as u64,
            busy: read_volatile(addr_of!((*s).busy)) as u64,
        }
    }
}

/// The member URL (`name_ex`, the full name httpd 2.4.59+ keeps).
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_name(worker: *const ffi::proxy_worker) -> String {
    // SAFETY: name_ex is a NUL-terminated array in the live shared record.
    unsafe { fixed_string(addr_of!((*(*worker).s).name_ex)) }
}

/// The member's route (`route=`).
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_route(worker: *const ffi::proxy_worker) -> String {
    // SAFETY: as above, for route.
    unsafe { fixed_string(addr_of!((*(*worker).s).route)) }
}

/// The member's name as bytes, the key of its slot.
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_key_name(worker: *const ffi::proxy_worker) -> Vec<u8> {
    // SAFETY: as above.
    unsafe { fixed_bytes(addr_of!((*(*worker).s).name_ex)) }
}

/// Bytes of a fixed-size C char array up to its first NUL (or its end), read without forming a
/// reference to memory other processes write.
///
/// # Safety
/// `array` must point to a live array.
unsafe fn fixed_bytes<const N: usize>(array: *const [c_char; N]) -> Vec<u8> {
    let first = array.cast::<c_char>();
    let mut out = Vec::with_capacity(32);
    for i in 0..N {
        // SAFETY: i < N, inside the live array.
        let byte = unsafe { read_volatile(first.add(i)) } as u8;
        if byte == 0 {
            break;
        }
        out.push(byte);
    }
    out
}

/// # Safety
/// As for [`fixed_bytes`].
unsafe fn fixed_string<const N: usize>(array: *const [c_char; N]) -> String {
    // SAFETY: per the caller.
    String::from_utf8_lossy(&unsafe { fixed_bytes(array) }).into_owned()
}

/// A C string from httpd as text (empty when null).
///
/// # Safety
/// `ptr` must be null or a live NUL-terminated string.
pub unsafe fn c_str(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: per the caller.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

/// Runs `body` with the balancer's per-process thread lock held (the lock httpd takes while it
/// adds members at run time), or without it where httpd has none.
///
/// # Safety
/// `balancer` must be live and the lock not already held by this thread.
pub unsafe fn with_thread_lock<R>(balancer: *const ffi::proxy_balancer, body: impl FnOnce() -> R) -> R {
    // SAFETY: tmutex is null or a live APR thread mutex of this process.
    let mutex = unsafe { (*balancer).tmutex };
    let locked = !mutex.is_null() && unsafe { ffi::apr_thread_mutex_lock(mutex) } == ffi::APR_SUCCESS;
    let result = body();
    if locked {
        // SAFETY: locked above by this thread.
        unsafe { ffi::apr_thread_mutex_unlock(mutex) };
    }
    result
}

/// `host:port` of a server (virtual host), as the status page labels balancers.
///
/// # Safety
/// `s` must be live.
pub unsafe fn server_name(s: *const ffi::server_rec) -> String {
    // SAFETY: server_hostname is null or a C string of the live server.
    let (host, port) = unsafe { (c_str((*s).server_hostname), (*s).port) };
    if port == 0 { host } else { format!("{host}:{port}") }
}
