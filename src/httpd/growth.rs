//! Members that are not `BalancerMember` lines: defined at configuration time (before
//! mod_proxy_balancer's post_config shares them, exactly like configured ones), or added at
//! run time into the balancer's growth slots the way balancer-manager adds one (httpd 2.4's
//! `b_nwrkr`), so that every other process picks them up with `ap_proxy_sync_balancer`.
//! mod_proxy's functions are found by name, as in `proxy`.

use super::proxy::{Balancer, ProxyConf, Worker};
use super::{Pool, Server};
use crate::ffi;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use std::time::Duration;

/// `BalancerMember` parameters, as httpd keeps them (`None`: httpd's default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerParams {
    /// Loadfactor x 100.
    pub lbfactor: Option<u32>,
    pub lbset: Option<i32>,
    pub retry: Option<Duration>,
    pub timeout: Option<Duration>,
    pub connection_timeout: Option<Duration>,
    pub ping: Option<Duration>,
    pub keepalive: Option<bool>,
    pub disablereuse: Option<bool>,
    pub ttl: Option<Duration>,
    pub max: Option<u32>,
    /// mod_proxy_hcheck: method (by name: `TCP`, `GET`, ...), interval, passes, fails, URI.
    pub hc_method: Option<String>,
    pub hc_interval: Option<Duration>,
    pub hc_passes: Option<u32>,
    pub hc_fails: Option<u32>,
    pub hc_uri: Option<String>,
}

/// mod_proxy_hcheck's method number for a name.
fn hc_method(name: &str) -> Option<ffi::hcmethod_t> {
    Some(match name {
        "TCP" => ffi::TCP,
        "OPTIONS" => ffi::OPTIONS,
        "HEAD" => ffi::HEAD,
        "GET" => ffi::GET,
        #[cfg(lbrs_hc_http11)]
        "OPTIONS11" => ffi::OPTIONS11,
        #[cfg(lbrs_hc_http11)]
        "HEAD11" => ffi::HEAD11,
        #[cfg(lbrs_hc_http11)]
        "GET11" => ffi::GET11,
        _ => return None,
    })
}

type DefineWorker = unsafe extern "C" fn(
    p: *mut ffi::apr_pool_t,
    worker: *mut *mut ffi::proxy_worker,
    balancer: *mut ffi::proxy_balancer,
    conf: *mut ffi::proxy_server_conf,
    url: *const c_char,
    do_malloc: c_int,
) -> *const c_char;
type ShareWorker = unsafe extern "C" fn(
    worker: *mut ffi::proxy_worker,
    shm: *mut ffi::proxy_worker_shared,
    i: c_int,
) -> ffi::apr_status_t;
type InitializeWorker = unsafe extern "C" fn(
    worker: *mut ffi::proxy_worker,
    s: *mut ffi::server_rec,
    p: *mut ffi::apr_pool_t,
) -> ffi::apr_status_t;

/// mod_proxy's functions for defining members, and its global mutex.
#[derive(Clone, Copy)]
pub struct Growth {
    define: DefineWorker,
    share: ShareWorker,
    initialize: InitializeWorker,
    /// `proxy_mutex`: held by `ap_proxy_sync_balancer` (and mod_proxy_hcheck's watchdog through
    /// it) around its push onto a balancer's member array.
    proxy_mutex: Option<*mut *mut ffi::apr_global_mutex_t>,
}

// SAFETY: function pointers, and the address of mod_proxy's global, the same for every thread.
unsafe impl Send for Growth {}
unsafe impl Sync for Growth {}

fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: a lookup in the process's global namespace (mod_proxy.so exports these).
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!found.is_null()).then_some(found)
}

impl Growth {
    /// Finds mod_proxy's functions; `Err` names the one missing.
    pub fn find() -> Result<Growth, &'static str> {
        let define = symbol(c"ap_proxy_define_worker").ok_or("mod_proxy has no ap_proxy_define_worker")?;
        let share = symbol(c"ap_proxy_share_worker").ok_or("mod_proxy has no ap_proxy_share_worker")?;
        let initialize =
            symbol(c"ap_proxy_initialize_worker").ok_or("mod_proxy has no ap_proxy_initialize_worker")?;
        let proxy_mutex = symbol(c"proxy_mutex").map(|p| p.cast::<*mut ffi::apr_global_mutex_t>());
        // SAFETY: the signatures are mod_proxy.h's, the same in every httpd 2.4 release;
        // `proxy_mutex` is mod_proxy's `apr_global_mutex_t *`.
        unsafe {
            Ok(Growth {
                define: std::mem::transmute::<*mut c_void, DefineWorker>(define),
                share: std::mem::transmute::<*mut c_void, ShareWorker>(share),
                initialize: std::mem::transmute::<*mut c_void, InitializeWorker>(initialize),
                proxy_mutex,
            })
        }
    }

    /// At configuration time (check_config, in the parent): a member of `balancer` with
    /// `url`, as a `BalancerMember` line makes one. mod_proxy_balancer's post_config then
    /// gives it its shared slot like any configured member.
    pub fn define(
        &self,
        pool: Pool,
        balancer: Balancer,
        conf: ProxyConf,
        url: &str,
        params: &WorkerParams,
    ) -> Result<(), String> {
        let worker = self.define_worker(pool, balancer, conf, url)?;
        // SAFETY: a worker just defined, with its own (not yet shared) record.
        unsafe { apply(worker, conf, params) };
        Ok(())
    }

    /// At run time, in a child: adds a member to `balancer` in a free growth slot, as
    /// balancer-manager does, under the balancer's thread lock and its global (cross-process)
    /// lock. Every other process picks it up at its next request through the balancer. `pool`
    /// must be used by this thread alone and live as long as the process.
    ///
    /// `Ok(None)`: a slot of the shared memory already holds a member with this URL that this
    /// process does not have (a process stopped or killed while adding it, before it told the
    /// others): the others are told now, and this process has it after its next sync.
    pub fn add(
        &self,
        pool: Pool,
        balancer: Balancer,
        server: Server,
        conf: ProxyConf,
        url: &str,
        params: &WorkerParams,
    ) -> Result<Option<Worker>, String> {
        balancer.with_thread_lock(|| {
            let b = balancer.raw();
            // SAFETY: a live balancer of this process; its global mutex is made by
            // mod_proxy_balancer's child_init, and held only around this block.
            let _global = unsafe { GlobalLock::take((*b).gmutex) };
            // SAFETY: storage and wslot are set by mod_proxy_balancer's post_config.
            let (storage, slots) = unsafe { ((*b).storage, (*b).wslot) };
            let storage = unsafe { storage.as_ref() }.ok_or("the balancer has no shared storage")?;
            let (Some(free), Some(grab), Some(dptr)) = (storage.num_free_slots, storage.grab, storage.dptr)
            else {
                return Err("the balancer's storage cannot grow".to_string());
            };
            if slots.is_null() {
                return Err("the balancer has no shared storage".to_string());
            }
            // SAFETY: the live instance and its records, read under the global lock that
            // every writer of them holds.
            if unsafe { shared_record_named(storage, slots, url) } {
                // SAFETY: a field of the live shared balancer record.
                unsafe { write_volatile(addr_of_mut!((*(*b).s).wupdated), ffi::apr_time_now()) };
                return Ok(None);
            }
            // SAFETY: a live slotmem instance.
            if unsafe { free(slots) } == 0 {
                return Err("no free member slot left (growth)".to_string());
            }
            let worker = {
                // SAFETY: mod_proxy's global mutex, made in its child_init; held only around
                // the push onto the member array, as ap_proxy_sync_balancer holds it.
                let _proxy = self.proxy_mutex.and_then(|m| unsafe { GlobalLock::take(*m) });
                self.define_worker(pool, balancer, conf, url)?
            };
            // SAFETY: the worker just defined; its record is then copied into the slot.
            unsafe { apply(worker, conf, params) };
            let mut index: c_uint = 0;
            let mut shared: *mut c_void = std::ptr::null_mut();
            // SAFETY: grab and dptr on the live instance, into locals; share and initialize
            // with the worker, the slot's record and this thread's pool, in balancer-manager's
            // order.
            unsafe {
                if grab(slots, &mut index) != ffi::APR_SUCCESS
                    || dptr(slots, index, &mut shared) != ffi::APR_SUCCESS
                    || shared.is_null()
                {
                    return Err("could not take a member slot".to_string());
                }
                if (self.share)(worker, shared.cast(), index as c_int) != ffi::APR_SUCCESS {
                    return Err("could not share the member".to_string());
                }
                if (self.initialize)(worker, server.raw(), pool.raw()) != ffi::APR_SUCCESS {
                    return Err("could not initialize the member".to_string());
                }
                let now = ffi::apr_time_now();
                write_volatile(addr_of_mut!((*(*worker).s).updated), now);
                write_volatile(addr_of_mut!((*b).wupdated), now);
                write_volatile(addr_of_mut!((*(*b).s).wupdated), now);
            }
            Worker::from_raw(worker).map(Some).ok_or_else(|| "httpd made no member".to_string())
        })
    }

    fn define_worker(
        &self,
        pool: Pool,
        balancer: Balancer,
        conf: ProxyConf,
        url: &str,
    ) -> Result<*mut ffi::proxy_worker, String> {
        let c_url = CString::new(url).map_err(|_| "the URL has a NUL byte".to_string())?;
        let mut worker: *mut ffi::proxy_worker = std::ptr::null_mut();
        // SAFETY: defines a worker in `pool` for the live balancer and configuration; httpd
        // copies the URL.
        let error =
            unsafe { (self.define)(pool.raw(), &mut worker, balancer.raw(), conf.raw(), c_url.as_ptr(), 0) };
        if !error.is_null() {
            // SAFETY: httpd returns a NUL-terminated message.
            return Err(unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned());
        }
        // SAFETY: on success httpd set the worker and its record.
        if worker.is_null() || unsafe { (*worker).s }.is_null() {
            return Err("httpd made no member".to_string());
        }
        Ok(worker)
    }
}

/// Whether a slot of `slots` holds a member whose URL is `url`.
///
/// # Safety
/// `storage` and `slots` must be a balancer's live member storage.
unsafe fn shared_record_named(
    storage: &ffi::ap_slotmem_provider_t,
    slots: *mut ffi::ap_slotmem_instance_t,
    url: &str,
) -> bool {
    let (Some(count), Some(dptr)) = (storage.num_slots, storage.dptr) else { return false };
    // SAFETY: per the caller; each record is read field by field.
    unsafe {
        (0..count(slots)).any(|i| {
            let mut record: *mut c_void = std::ptr::null_mut();
            if dptr(slots, i, &mut record) != ffi::APR_SUCCESS || record.is_null() {
                return false;
            }
            let record = record.cast::<ffi::proxy_worker_shared>();
            if read_volatile(addr_of!((*record).hash.def)) == 0 {
                return false;
            }
            #[cfg(lbrs_worker_name_ex)]
            let name = addr_of!((*record).name_ex).cast::<c_char>();
            #[cfg(not(lbrs_worker_name_ex))]
            let name = addr_of!((*record).name).cast::<c_char>();
            CStr::from_ptr(name).to_bytes().eq_ignore_ascii_case(url.as_bytes())
        })
    }
}

/// What `PROXY_COPY_CONF_PARAMS` copies from the server's configuration, then `params`.
///
/// # Safety
/// `worker` must be a live worker with its record; `conf` its server's configuration.
unsafe fn apply(worker: *mut ffi::proxy_worker, conf: ProxyConf, params: &WorkerParams) {
    let us = |d: Duration| d.as_micros().min(i64::MAX as u128) as i64;
    // SAFETY: per the caller; nothing else uses the record before it is shared.
    unsafe {
        let s = &mut *(*worker).s;
        let c = &*conf.raw();
        s.timeout = c.timeout;
        s.set_timeout_set(c.timeout_set());
        s.recv_buffer_size = c.recv_buffer_size;
        s.set_recv_buffer_size_set(c.recv_buffer_size_set());
        s.io_buffer_size = c.io_buffer_size;
        s.set_io_buffer_size_set(c.io_buffer_size_set());
        if let Some(lbfactor) = params.lbfactor {
            s.lbfactor = lbfactor as c_int;
        }
        if let Some(lbset) = params.lbset {
            s.lbset = lbset;
        }
        if let Some(retry) = params.retry {
            s.retry = us(retry);
            s.set_retry_set(1);
        }
        if let Some(timeout) = params.timeout {
            s.timeout = us(timeout);
            s.set_timeout_set(1);
        }
        if let Some(timeout) = params.connection_timeout {
            s.conn_timeout = us(timeout);
            s.set_conn_timeout_set(1);
        }
        if let Some(ping) = params.ping {
            s.ping_timeout = us(ping);
            s.set_ping_timeout_set(1);
        }
        if let Some(keepalive) = params.keepalive {
            s.set_keepalive(keepalive as c_uint);
            s.set_keepalive_set(1);
        }
        if let Some(disablereuse) = params.disablereuse {
            s.set_disablereuse(disablereuse as c_uint);
            s.set_disablereuse_set(1);
        }
        if let Some(ttl) = params.ttl {
            s.ttl = us(ttl);
        }
        if let Some(max) = params.max {
            s.hmax = max.min(c_int::MAX as u32) as c_int;
        }
        if let Some(method) = params.hc_method.as_deref().and_then(hc_method) {
            s.method = method;
        }
        if let Some(interval) = params.hc_interval {
            s.interval = us(interval);
        }
        if let Some(passes) = params.hc_passes {
            s.passes = passes.min(c_int::MAX as u32) as c_int;
        }
        if let Some(fails) = params.hc_fails {
            s.fails = fails.min(c_int::MAX as u32) as c_int;
        }
        if let Some(uri) = &params.hc_uri {
            // Checked to fit (under 64 bytes) by the directive; cut anyway, NUL-terminated.
            let bytes = uri.as_bytes();
            let n = bytes.len().min(s.hcuri.len() - 1);
            for (to, &from) in s.hcuri.iter_mut().zip(&bytes[..n]) {
                *to = from as c_char;
            }
            s.hcuri[n] = 0;
        }
    }
}

/// httpd's global mutex of a balancer, held until dropped (none when httpd made none).
struct GlobalLock(*mut ffi::apr_global_mutex_t);

impl GlobalLock {
    /// # Safety
    /// `mutex` must be null or a live global mutex.
    unsafe fn take(mutex: *mut ffi::apr_global_mutex_t) -> Option<GlobalLock> {
        // SAFETY: per the caller.
        (!mutex.is_null() && unsafe { ffi::apr_global_mutex_lock(mutex) } == ffi::APR_SUCCESS)
            .then_some(GlobalLock(mutex))
    }
}

impl Drop for GlobalLock {
    fn drop(&mut self) {
        // SAFETY: locked by `take`.
        unsafe { ffi::apr_global_mutex_unlock(self.0) };
    }
}

/// The status flags `LBDiscover` sets and clears on a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// `D`: takes no request at all.
    Disabled,
    /// `N`: takes no new request; sticky ones and those in flight go on.
    Drain,
}

impl Flag {
    fn bit(self) -> u32 {
        match self {
            Flag::Disabled => ffi::PROXY_WORKER_DISABLED as u32,
            Flag::Drain => ffi::PROXY_WORKER_DRAIN as u32,
        }
    }
}

impl Worker {
    /// Sets the flags in `set` and clears those in `clear`, in the member's shared record
    /// (every process sees it), as balancer-manager does.
    pub fn set_flags(self, set: &[Flag], clear: &[Flag]) {
        let s = self.shared_mut();
        // SAFETY: the status word of the live shared record: an aligned unsigned int, changed
        // here with atomic operations so that no bit another process sets meanwhile (an error,
        // a health check) is lost. httpd's own plain stores may still race each other.
        let status = unsafe { std::sync::atomic::AtomicU32::from_ptr(addr_of_mut!((*s).status)) };
        let set = set.iter().fold(0, |bits, flag| bits | flag.bit());
        let clear = clear.iter().fold(0, |bits, flag| bits | flag.bit());
        status.fetch_or(set, std::sync::atomic::Ordering::AcqRel);
        status.fetch_and(!clear, std::sync::atomic::Ordering::AcqRel);
    }

    /// Sets the member's loadfactor (x 100) and lbset.
    pub fn set_weight(self, lbfactor: u32, lbset: i32) {
        let s = self.shared_mut();
        // SAFETY: fields of the live shared record.
        unsafe {
            write_volatile(addr_of_mut!((*s).lbfactor), lbfactor.min(10_000) as c_int);
            write_volatile(addr_of_mut!((*s).lbset), lbset);
        }
    }
}

impl Balancer {
    /// At configuration time: keeps at least `slots` growth slots for members added at run
    /// time (httpd's `growth`, which `BalancerGrowth` and `ProxySet growth=` set).
    pub fn reserve_growth(self, slots: u32) {
        // SAFETY: a plain field of a live balancer, before post_config reads it.
        unsafe {
            let growth = addr_of_mut!((*self.raw()).growth);
            if (read_volatile(growth).max(0) as u32) < slots {
                write_volatile(growth, slots.min(c_int::MAX as u32) as c_int);
            }
        }
    }

    /// Whether `other` is a copy of this balancer that shares its list of members (httpd copies
    /// a main server's balancers into virtual hosts by value, list pointer included).
    pub fn shares_members_with(self, other: Balancer) -> bool {
        // SAFETY: pointer fields of live balancers.
        unsafe { self != other && (*self.raw()).workers == (*other.raw()).workers }
    }

    /// Growth slots still free (0 when unknown).
    pub fn free_slots(self) -> u32 {
        // SAFETY: storage and wslot are set by mod_proxy_balancer's post_config.
        unsafe {
            let b = self.raw();
            match ((*b).storage.as_ref(), (*b).wslot) {
                (Some(storage), slots) if !slots.is_null() => storage.num_free_slots.map_or(0, |f| f(slots)),
                _ => 0,
            }
        }
    }

    /// Tells every process its members changed (a loadfactor, an lbset): each brings its copy
    /// up to date at its next request through the balancer.
    pub fn touch(self) {
        // SAFETY: a field of the live shared balancer record.
        unsafe { write_volatile(addr_of_mut!((*(*self.raw()).s).wupdated), ffi::apr_time_now()) };
    }
}

impl Pool {
    /// A pool of its own for a thread of this process that lives as long as the process: APR
    /// pools are not thread-safe, so a thread that makes members allocates from no pool that
    /// httpd's threads use.
    pub fn for_thread() -> Option<Pool> {
        let mut pool: *mut ffi::apr_pool_t = std::ptr::null_mut();
        // SAFETY: creates a new root pool (APR is initialized in every httpd process).
        let status =
            unsafe { ffi::apr_pool_create_ex(&mut pool, std::ptr::null_mut(), None, std::ptr::null_mut()) };
        if status != ffi::APR_SUCCESS {
            return None;
        }
        // SAFETY: just created.
        unsafe { Pool::from_raw(pool) }
    }
}
