//! mod_proxy's structures, reached without importing a symbol from mod_proxy.so: the module
//! record is found by name and the one function needed is an APR optional function. So
//! `LoadModule lbmethod_rs_module` works before or after `LoadModule proxy_module`.
//!
//! `proxy_worker_shared` and `proxy_balancer_shared` live in httpd's shared memory, written by
//! every process with plain stores. They are read field by field through raw pointers at the
//! point of use (never through a Rust reference) and the values are treated as hints.

use super::c_str;
use crate::ffi;
use std::ffi::{c_char, c_int, c_void};
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

    /// The balancers of server `s` alone (what `<Proxy balancer://...>` defined or inherited).
    ///
    /// # Safety
    /// `s` must be a live server_rec of this generation.
    pub unsafe fn server_balancers(
        &self,
        s: *const ffi::server_rec,
    ) -> impl Iterator<Item = *mut ffi::proxy_balancer> {
        // SAFETY: per this function's contract; the conf's balancers are proxy_balancer structs.
        unsafe {
            let conf = self.server_conf(s);
            elements::<ffi::proxy_balancer>(if conf.is_null() { std::ptr::null() } else { (*conf).balancers })
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
        // SAFETY: walking httpd's live server list.
        for s in unsafe { servers(main) } {
            // SAFETY: as above.
            for balancer in unsafe { self.server_balancers(s) } {
                // SAFETY: a live balancer of this server.
                if seen.insert(unsafe { balancer_id(balancer) }) {
                    out.push((s, balancer));
                }
            }
        }
        out
    }
}

/// The main server and every virtual host, in configuration order.
///
/// # Safety
/// `main` must be null or a live server_rec; the list must stay live while iterating.
pub unsafe fn servers(main: *const ffi::server_rec) -> impl Iterator<Item = *const ffi::server_rec> {
    // SAFETY: per the caller, each `next` is null or a live server_rec.
    std::iter::successors((!main.is_null()).then_some(main), |&s| {
        let next = unsafe { (*s).next } as *const ffi::server_rec;
        (!next.is_null()).then_some(next)
    })
}

/// Pointers to the elements of an APR array (no references: httpd may be using them).
///
/// # Safety
/// `a` must be null or a live array whose elements are `T`, unchanged while iterating.
pub unsafe fn elements<T>(a: *const ffi::apr_array_header_t) -> impl Iterator<Item = *mut T> {
    // SAFETY: per the caller; nelts elements of T start at elts.
    let (first, count) = unsafe {
        if a.is_null() || (*a).nelts <= 0 || (*a).elts.is_null() {
            (std::ptr::null_mut(), 0)
        } else {
            ((*a).elts as *mut T, (*a).nelts as usize)
        }
    };
    // SAFETY: i < count, inside the array.
    (0..count).map(move |i| unsafe { first.add(i) })
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
pub unsafe fn balancer_key_name(balancer: *const ffi::proxy_balancer) -> Name {
    // SAFETY: sname is a NUL-terminated array in the live shared record.
    unsafe { Name::read(addr_of!((*(*balancer).s).sname)) }
}

/// `balancer://name`.
///
/// # Safety
/// `balancer` must be live.
pub unsafe fn balancer_name(balancer: *const ffi::proxy_balancer) -> String {
    // SAFETY: as above, for name.
    unsafe { Name::read(addr_of!((*(*balancer).s).name)) }.to_string()
}

/// The balancer's current method name, as every process sees it (`lbpname`).
///
/// # Safety
/// `balancer` must be live.
pub unsafe fn balancer_method(balancer: *const ffi::proxy_balancer) -> Name {
    // SAFETY: as above, for lbpname.
    unsafe { Name::read(addr_of!((*(*balancer).s).lbpname)) }
}

/// The balancer's members (configured and added at run time), in configuration order.
///
/// # Safety
/// `balancer` must be live, and its thread lock held if other threads may add members.
pub unsafe fn workers(balancer: *const ffi::proxy_balancer) -> impl Iterator<Item = *mut ffi::proxy_worker> {
    // SAFETY: balancer->workers is an array of proxy_worker pointers.
    unsafe { elements::<*mut ffi::proxy_worker>((*balancer).workers) }.map(|slot| unsafe { *slot })
}

/// How many members the balancer has in this process (grows when balancer-manager adds one).
///
/// # Safety
/// `balancer` must be live.
pub unsafe fn worker_count(balancer: *const ffi::proxy_balancer) -> usize {
    // SAFETY: reading the array header of a live balancer.
    unsafe {
        let workers = (*balancer).workers;
        if workers.is_null() { 0 } else { (*workers).nelts.max(0) as usize }
    }
}

/// One read of the scheduling fields of a worker's shared record, and what its status bits
/// (mod_proxy.h's `PROXY_WORKER_*`) mean.
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

const fn bit(flag: i32) -> u32 {
    flag as u32
}

/// Each status bit with the word the status page and the metrics use for it.
const FLAG_NAMES: [(u32, &str); 9] = [
    (bit(ffi::PROXY_WORKER_IGNORE_ERRORS), "ignore-errors"),
    (bit(ffi::PROXY_WORKER_DRAIN), "drain"),
    (bit(ffi::PROXY_WORKER_IN_SHUTDOWN), "shutdown"),
    (bit(ffi::PROXY_WORKER_DISABLED), "disabled"),
    (bit(ffi::PROXY_WORKER_STOPPED), "stopped"),
    (bit(ffi::PROXY_WORKER_IN_ERROR), "error"),
    (bit(ffi::PROXY_WORKER_HOT_STANDBY), "hot-standby"),
    (bit(ffi::PROXY_WORKER_HC_FAIL), "hcheck-failed"),
    (bit(ffi::PROXY_WORKER_HOT_SPARE), "hot-spare"),
];

/// Every word [`WorkerState::state_word`] gives, in the order it tests them. The metrics publish
/// one 0/1 series per word, all of them every time, so a member's old state leaves no stale
/// series behind.
pub const STATE_WORDS: [&str; 10] = [
    "stopped",
    "disabled",
    "shutdown",
    "error",
    "hcheck-failed",
    "initializing",
    "draining",
    "standby",
    "spare",
    "ok",
];

impl WorkerState {
    fn has(&self, flag: i32) -> bool {
        self.status & bit(flag) != 0
    }

    /// `PROXY_WORKER_IS_USABLE`: initialized, and not shut down, disabled, stopped, in error or
    /// failing its health check.
    pub fn usable(&self) -> bool {
        self.has(ffi::PROXY_WORKER_INITIALIZED) && self.status & bit(ffi::PROXY_WORKER_NOT_USABLE_BITMAP) == 0
    }

    /// In error (a failed connection or `failonstatus`), until its `retry` time has passed.
    pub fn in_error(&self) -> bool {
        self.has(ffi::PROXY_WORKER_IN_ERROR)
    }

    pub fn draining(&self) -> bool {
        self.has(ffi::PROXY_WORKER_DRAIN)
    }

    /// httpd would offer the member for new requests: usable and not draining.
    pub fn selectable(&self) -> bool {
        self.usable() && !self.draining()
    }

    /// One word: `ok`, `draining`, or the most serious reason the member cannot take requests.
    pub fn status_word(&self) -> &'static str {
        if self.has(ffi::PROXY_WORKER_STOPPED) {
            "stopped"
        } else if self.has(ffi::PROXY_WORKER_DISABLED) {
            "disabled"
        } else if self.has(ffi::PROXY_WORKER_IN_SHUTDOWN) {
            "shutdown"
        } else if self.has(ffi::PROXY_WORKER_IN_ERROR) {
            "error"
        } else if self.has(ffi::PROXY_WORKER_HC_FAIL) {
            "hcheck-failed"
        } else if !self.has(ffi::PROXY_WORKER_INITIALIZED) {
            "initializing"
        } else if self.draining() {
            "draining"
        } else {
            "ok"
        }
    }

    /// [`WorkerState::status_word`], told apart by role where that word is `ok`: `standby` for
    /// a hot standby (`+H`), `spare` for a hot spare (`+R`), which take requests only when
    /// members of their set cannot. One of [`STATE_WORDS`].
    pub fn state_word(&self) -> &'static str {
        match self.status_word() {
            "ok" if self.has(ffi::PROXY_WORKER_HOT_STANDBY) => "standby",
            "ok" if self.has(ffi::PROXY_WORKER_HOT_SPARE) => "spare",
            word => word,
        }
    }

    /// Every status flag set, by name.
    pub fn flag_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        FLAG_NAMES.iter().filter(|(flag, _)| self.status & flag != 0).map(|&(_, name)| name)
    }
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

/// The worker's slot index alone (it never changes within a generation).
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_index(worker: *const ffi::proxy_worker) -> u32 {
    // SAFETY: a plain field of the live shared record.
    unsafe { read_volatile(addr_of!((*(*worker).s).index)) }.max(0) as u32
}

/// The member URL.
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_name(worker: *const ffi::proxy_worker) -> String {
    // SAFETY: as for worker_key_name.
    unsafe { worker_key_name(worker) }.to_string()
}

/// The member's route (`route=`).
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_route(worker: *const ffi::proxy_worker) -> String {
    // SAFETY: route is a NUL-terminated array in the live shared record.
    unsafe { Name::read(addr_of!((*(*worker).s).route)) }.to_string()
}

/// The member's name as bytes (its URL), the key of its slot: `name_ex`, the full name httpd
/// 2.4.53 and later keep, or on older releases `name` (96 bytes; httpd refuses longer names
/// there). build.rs finds which the headers have.
///
/// # Safety
/// `worker` must be live.
pub unsafe fn worker_key_name(worker: *const ffi::proxy_worker) -> Name {
    // SAFETY: a NUL-terminated array in the live shared record.
    #[cfg(lbrs_worker_name_ex)]
    let name = unsafe { Name::read(addr_of!((*(*worker).s).name_ex)) };
    #[cfg(not(lbrs_worker_name_ex))]
    let name = unsafe { Name::read(addr_of!((*(*worker).s).name)) };
    name
}

/// The longest name field read (`PROXY_WORKER_EXT_NAME_SIZE`).
const NAME_CAPACITY: usize = 384;

/// A copy, on the stack, of a fixed-size name field of a shared record: no heap allocation.
#[derive(Clone, Copy)]
pub struct Name {
    bytes: [u8; NAME_CAPACITY],
    len: usize,
}

impl Name {
    /// Bytes of a fixed-size C char array up to its first NUL (or its end), read without forming
    /// a reference to memory other processes write.
    ///
    /// # Safety
    /// `array` must point to a live array.
    unsafe fn read<const N: usize>(array: *const [c_char; N]) -> Name {
        let first = array.cast::<c_char>();
        let mut name = Name { bytes: [0; NAME_CAPACITY], len: 0 };
        while name.len < N.min(NAME_CAPACITY) {
            // SAFETY: len < N, inside the live array.
            let byte = unsafe { read_volatile(first.add(name.len)) } as u8;
            if byte == 0 {
                break;
            }
            name.bytes[name.len] = byte;
            name.len += 1;
        }
        name
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// Runs `body` with the balancer's per-process thread lock held (the lock httpd takes while it
/// adds members at run time, and around the finder), or without it where httpd has none.
///
/// # Safety
/// `balancer` must be live and the lock not already held by this thread.
pub unsafe fn with_thread_lock<R>(balancer: *const ffi::proxy_balancer, body: impl FnOnce() -> R) -> R {
    // SAFETY: tmutex is null or a live APR thread mutex of this process.
    let mutex = unsafe { (*balancer).tmutex };
    let locked = !mutex.is_null() && unsafe { ffi::apr_thread_mutex_lock(mutex) } == ffi::APR_SUCCESS;
    // Unlocks on the way out, even if `body` panics (the panic guard then answers 500, and the
    // balancer must not stay locked for this process's later requests).
    let _unlock = locked.then_some(Unlock(mutex));
    body()
}

/// Unlocks an APR thread mutex this thread locked, when dropped.
struct Unlock(*mut ffi::apr_thread_mutex_t);

impl Drop for Unlock {
    fn drop(&mut self) {
        // SAFETY: locked by this thread in `with_thread_lock`, which holds this guard.
        unsafe { ffi::apr_thread_mutex_unlock(self.0) };
    }
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
