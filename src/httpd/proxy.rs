//! mod_proxy's structures: balancers, their members (workers), and the method providers,
//! reached without importing a symbol from mod_proxy.so (the module record is found by name,
//! and the functions needed are an APR optional function and a hook found with `dlsym`), so
//! `LoadModule lbmethod_rs_module` works before or after `LoadModule proxy_module`.
//!
//! `proxy_worker_shared` and `proxy_balancer_shared` live in httpd's shared memory, written by
//! every process with plain stores. They are read field by field through raw pointers at the
//! point of use (never through a Rust reference), and the values are treated as hints.

use super::guard::catch;
use super::{Pool, Request, Server};
use crate::ffi;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::{NonNull, addr_of, read_volatile};
use std::sync::atomic::{Ordering, fence};

/// `proxy_balancer_get_best_worker`: walks lbset tiers, hot spares, standbys, drain and
/// error/retry, and offers each eligible worker to `is_best`.
type GetBestWorker = unsafe extern "C" fn(
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
    is_best: ffi::proxy_is_best_callback_fn_t,
    baton: *mut c_void,
) -> *mut ffi::proxy_worker;

/// `ap_proxy_sync_balancer`: adds to this process's member list the members another process
/// added (balancer-manager), from the shared records.
type SyncBalancer = unsafe extern "C" fn(
    balancer: *mut ffi::proxy_balancer,
    s: *mut ffi::server_rec,
    conf: *mut ffi::proxy_server_conf,
) -> ffi::apr_status_t;

/// What this module uses of mod_proxy, looked up once per generation.
#[derive(Clone, Copy)]
pub struct ProxyApi {
    module_index: c_int,
    get_best_worker: GetBestWorker,
    sync_balancer: Option<SyncBalancer>,
}

/// mod_proxy's configuration of one server: its balancers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProxyConf(NonNull<ffi::proxy_server_conf>);

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
        // SAFETY: looking a symbol up in the process's global namespace (mod_proxy.so exports it).
        let sync = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"ap_proxy_sync_balancer".as_ptr()) };
        // SAFETY: module is a live module record; the optional function registered under that
        // name has exactly the GetBestWorker signature, and ap_proxy_sync_balancer the
        // SyncBalancer one (mod_proxy.h).
        Ok(ProxyApi {
            module_index: unsafe { (*module).module_index },
            get_best_worker: unsafe {
                std::mem::transmute::<unsafe extern "C" fn(), GetBestWorker>(function)
            },
            sync_balancer: (!sync.is_null())
                .then(|| unsafe { std::mem::transmute::<*mut c_void, SyncBalancer>(sync) }),
        })
    }

    /// The balancer's members as every process has them now, in configuration order: this
    /// process's list is brought up to date first with the members other processes added
    /// (balancer-manager), as mod_proxy_balancer does before each pick, under the balancer's
    /// thread lock.
    pub fn current_workers(&self, balancer: Balancer, server: Server) -> Vec<Worker> {
        balancer.with_thread_lock(|| {
            if let (Some(sync), Some(conf)) = (self.sync_balancer, self.conf(server)) {
                // SAFETY: the live balancer of this server, its live configuration, under the
                // balancer's thread lock as httpd calls it.
                unsafe { sync(balancer.raw(), server.raw(), conf.0.as_ptr()) };
            }
            balancer.workers().collect()
        })
    }

    /// mod_proxy's configuration of server `s`.
    pub fn conf(&self, s: Server) -> Option<ProxyConf> {
        NonNull::new(s.module_config_of(self.module_index) as *mut ffi::proxy_server_conf).map(ProxyConf)
    }

    /// Every balancer of every server from `main` on, with the server it belongs to. A balancer
    /// inherited by several virtual hosts that have mod_proxy settings of their own is one
    /// balancer per virtual host (each has its own shared state); virtual hosts without any
    /// share the main server's configuration, and so its balancers.
    pub fn balancers(&self, main: Server) -> Vec<(Server, Balancer)> {
        let mut out: Vec<(Server, Balancer)> = Vec::new();
        for s in main.and_following() {
            for balancer in self.conf(s).into_iter().flat_map(ProxyConf::balancers) {
                if !out.iter().any(|(_, b)| b.id() == balancer.id()) {
                    out.push((s, balancer));
                }
            }
        }
        out
    }

    /// Collects into `out` the members httpd says may take request `r` now (lbset tiers, hot
    /// spares and standbys, drain, disabled, error and retry, health checks), in the order
    /// httpd offers them. Call with the balancer's thread lock held (the finder is).
    pub fn eligible(&self, balancer: Balancer, r: Request<'_>, out: &mut Vec<Worker>) {
        out.clear();
        // SAFETY: `record` only pushes onto `out`, which outlives the call; httpd passes live
        // workers of the live balancer.
        unsafe {
            (self.get_best_worker)(
                balancer.raw(),
                r.raw(),
                Some(record),
                out as *mut Vec<Worker> as *mut c_void,
            )
        };
    }
}

/// httpd's `is_best` callback: records each member offered and answers "yes" so that httpd
/// stops at the first lbset tier that has usable members and offers standbys only when that
/// tier has nothing else.
unsafe extern "C" fn record(
    current: *mut ffi::proxy_worker,
    _prev_best: *mut ffi::proxy_worker,
    baton: *mut c_void,
) -> c_int {
    catch("lbmethod is_best callback", 1, || {
        // SAFETY: baton is the Vec passed by `eligible`, alive for the whole walk.
        let out = unsafe { &mut *(baton as *mut Vec<Worker>) };
        out.extend(NonNull::new(current).map(Worker));
        1
    })
}

impl ProxyConf {
    pub(super) fn raw(self) -> *mut ffi::proxy_server_conf {
        self.0.as_ptr()
    }

    /// The server's balancers.
    pub fn balancers(self) -> impl Iterator<Item = Balancer> {
        // SAFETY: a live proxy_server_conf; its balancers are proxy_balancer structs.
        unsafe { elements::<ffi::proxy_balancer>((*self.0.as_ptr()).balancers) }
            .filter_map(NonNull::new)
            .map(Balancer)
    }

    /// The balancer named `name` (`balancer://app`, as httpd keeps it), if this server has one.
    pub fn balancer_named(self, name: &CStr) -> Option<Balancer> {
        self.balancers().find(|b| b.name_bytes().as_bytes() == name.to_bytes())
    }

    /// The size of the running httpd's balancer records, if it says.
    pub fn balancer_record_size(self) -> Option<usize> {
        // SAFETY: storage and bslot are set by mod_proxy_balancer's post_config.
        unsafe {
            let conf = &*self.0.as_ptr();
            let slot_size = conf.storage.as_ref()?.slot_size?;
            (!conf.bslot.is_null()).then(|| slot_size(conf.bslot))
        }
    }
}

/// Whether mod_proxy_balancer is loaded.
pub fn balancer_module_loaded() -> bool {
    // SAFETY: a lookup by name in httpd's module list.
    !unsafe { ffi::ap_find_linked_module(c"mod_proxy_balancer.c".as_ptr()) }.is_null()
}

/// Whether mod_proxy_hcheck is loaded.
pub fn hcheck_module_loaded() -> bool {
    // SAFETY: a lookup by name in httpd's module list.
    !unsafe { ffi::ap_find_linked_module(c"mod_proxy_hcheck.c".as_ptr()) }.is_null()
}

/// Whether a method provider of that name is registered (a loaded `lbmethod` module offers it).
pub fn method_registered(name: &Name) -> bool {
    let Ok(name) = std::ffi::CString::new(name.as_bytes()) else { return false };
    // SAFETY: a lookup by name in httpd's provider registry.
    !unsafe { ffi::ap_lookup_provider(c"proxylbmethod".as_ptr(), name.as_ptr(), c"0".as_ptr()) }.is_null()
}

/// The size of the balancer and worker records these bindings were made for (mod_proxy_balancer
/// sizes its slots with APR_ALIGN_DEFAULT, 8 bytes).
pub const COMPILED_BALANCER_RECORD: usize = size_of::<ffi::proxy_balancer_shared>().next_multiple_of(8);
pub const COMPILED_WORKER_RECORD: usize = size_of::<ffi::proxy_worker_shared>().next_multiple_of(8);

/// Pointers to the elements of an APR array (no references: httpd may be using them). The
/// count is read before the array: a push in another thread of this process (balancer-manager
/// adds members without the lock the finder holds) moves the array before it raises the
/// count, so on x86, whose stores are seen in order, the array read is at least that long.
/// httpd publishes neither with a barrier, so a weaker processor may see them out of order;
/// httpd's own eligibility walk, which runs first, has the same exposure.
///
/// # Safety
/// `a` must be null or a live array whose elements are `T`.
unsafe fn elements<T>(a: *const ffi::apr_array_header_t) -> impl Iterator<Item = *mut T> {
    // SAFETY: per the caller; nelts elements of T start at elts.
    let (first, count) = unsafe {
        if a.is_null() {
            (std::ptr::null_mut(), 0)
        } else {
            let count = read_volatile(addr_of!((*a).nelts));
            fence(Ordering::Acquire);
            let first = read_volatile(addr_of!((*a).elts)) as *mut T;
            if first.is_null() { (first, 0) } else { (first, count.max(0) as usize) }
        }
    };
    // SAFETY: i < count, inside the array.
    (0..count).map(move |i| unsafe { first.add(i) })
}

/// A balancer of the current generation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Balancer(NonNull<ffi::proxy_balancer>);

// SAFETY: balancers live as long as their generation; shared fields are read with volatile
// loads, and the thread lock guards what httpd changes in this process.
unsafe impl Send for Balancer {}
unsafe impl Sync for Balancer {}

impl Balancer {
    pub(super) fn raw(self) -> *mut ffi::proxy_balancer {
        self.0.as_ptr()
    }

    /// Its identity within a generation: the address of its shared record, unique per
    /// balancer and virtual host and the same in every child.
    pub fn id(self) -> usize {
        // SAFETY: a pointer field of a live balancer.
        unsafe { (*self.raw()).s as usize }
    }

    /// Its httpd-wide unique name (`sname`: server id + name).
    pub fn key_name(self) -> Name {
        // SAFETY: sname is a NUL-terminated array in the live shared record.
        unsafe { Name::read(addr_of!((*(*self.raw()).s).sname)) }
    }

    fn name_bytes(self) -> Name {
        // SAFETY: as above, for name.
        unsafe { Name::read(addr_of!((*(*self.raw()).s).name)) }
    }

    /// `balancer://name`.
    pub fn name(self) -> String {
        self.name_bytes().to_string()
    }

    /// Its current method's name, as every process sees it (`lbpname`).
    pub fn method(self) -> Name {
        // SAFETY: as above, for lbpname.
        unsafe { Name::read(addr_of!((*(*self.raw()).s).lbpname)) }
    }

    /// Its members (configured and added at run time), in configuration order: every member
    /// httpd has defined with its shared record.
    pub fn workers(self) -> impl Iterator<Item = Worker> {
        // SAFETY: balancer->workers is an array of proxy_worker pointers; a member's `s` is
        // null or its shared record.
        unsafe { elements::<*mut ffi::proxy_worker>((*self.raw()).workers) }
            .filter_map(|slot| NonNull::new(unsafe { read_volatile(slot) }))
            .filter(|worker| !unsafe { read_volatile(addr_of!((*worker.as_ptr()).s)) }.is_null())
            .map(Worker)
    }

    /// [`Balancer::workers`] that httpd has initialized, what a child picks among. A member that
    /// balancer-manager is adding in another thread of this process this moment (httpd grows
    /// the array, stores the member, gives it its shared record and initializes it, all without
    /// the lock the finder holds) is left out until it is initialized; httpd stamps the list
    /// again then ([`Balancer::updated`]). In the parent, before children start, no member is
    /// initialized yet.
    pub fn initialized_workers(self) -> impl Iterator<Item = Worker> {
        self.workers().filter(|worker| worker.state().status & bit(ffi::PROXY_WORKER_INITIALIZED) != 0)
    }
    /// When this process's member list last changed (httpd's `wupdated`): a member added at
    /// run time changes it when it is ready.
    pub fn updated(self) -> i64 {
        // SAFETY: a plain field of a live balancer.
        unsafe { read_volatile(addr_of!((*self.raw()).wupdated)) }
    }

    /// How many members it has in this process (grows when balancer-manager adds one).
    pub fn worker_count(self) -> usize {
        // SAFETY: reading the array header of a live balancer.
        unsafe {
            let workers = (*self.raw()).workers;
            if workers.is_null() { 0 } else { read_volatile(addr_of!((*workers).nelts)).max(0) as usize }
        }
    }

    /// Member slots: the members it was configured with plus `growth=`.
    pub fn max_workers(self) -> u32 {
        // SAFETY: a plain field of a live balancer.
        unsafe { (*self.raw()).max_workers.max(0) as u32 }
    }

    /// The address of its current method's provider table.
    pub fn method_table(self) -> usize {
        // SAFETY: a pointer field of a live balancer.
        unsafe { (*self.raw()).lbmethod as usize }
    }

    /// The size of the running httpd's worker records, if it says.
    pub fn worker_record_size(self) -> Option<usize> {
        // SAFETY: storage and wslot are set by mod_proxy_balancer's post_config.
        unsafe {
            let balancer = &*self.raw();
            let slot_size = balancer.storage.as_ref()?.slot_size?;
            (!balancer.wslot.is_null()).then(|| slot_size(balancer.wslot))
        }
    }

    /// Runs `body` with the balancer's per-process thread lock held (the lock httpd takes
    /// around the finder), or without it where httpd has none. Must not be called by a thread
    /// that holds it already (a finder): the lock does not nest.
    pub fn with_thread_lock<R>(self, body: impl FnOnce() -> R) -> R {
        // SAFETY: tmutex is null or a live APR thread mutex of this process.
        let mutex = unsafe { (*self.raw()).tmutex };
        let locked = !mutex.is_null() && unsafe { ffi::apr_thread_mutex_lock(mutex) } == ffi::APR_SUCCESS;
        // Unlocks on the way out, even if `body` panics (the panic guard then answers 500, and
        // the balancer must not stay locked for this process's later requests).
        let _unlock = locked.then_some(Unlock(mutex));
        body()
    }
}

impl Balancer {
    /// Runs `body` with the balancer's per-process thread lock released, and takes it again
    /// after (even if `body` panics), for a finder: httpd runs it with the lock held
    /// (`find_best_worker`), and one that waits must not stop this process's other threads
    /// from picking meanwhile. Must be called only by a finder.
    pub fn without_thread_lock<R>(self, body: impl FnOnce() -> R) -> R {
        // SAFETY: tmutex is null or a live APR thread mutex of this process, which this thread
        // holds (the caller is a finder): unlocking it and locking it again before returning
        // leaves it as httpd expects when the finder returns.
        let mutex = unsafe { (*self.raw()).tmutex };
        if mutex.is_null() || unsafe { ffi::apr_thread_mutex_unlock(mutex) } != ffi::APR_SUCCESS {
            return body();
        }
        let _relock = Relock(mutex);
        body()
    }
}

/// Locks an APR thread mutex again, when dropped.
struct Relock(*mut ffi::apr_thread_mutex_t);

impl Drop for Relock {
    fn drop(&mut self) {
        // SAFETY: the mutex this thread unlocked in `without_thread_lock`, still live.
        unsafe { ffi::apr_thread_mutex_lock(self.0) };
    }
}

/// Unlocks an APR thread mutex this thread locked, when dropped.
struct Unlock(*mut ffi::apr_thread_mutex_t);

impl Drop for Unlock {
    fn drop(&mut self) {
        // SAFETY: locked by this thread in `with_thread_lock`, which holds this guard.
        unsafe { ffi::apr_thread_mutex_unlock(self.0) };
    }
}

/// A balancer member of the current generation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Worker(NonNull<ffi::proxy_worker>);

// SAFETY: as for Balancer.
unsafe impl Send for Worker {}
unsafe impl Sync for Worker {}

impl Worker {
    pub(super) fn from_raw(worker: *mut ffi::proxy_worker) -> Option<Worker> {
        NonNull::new(worker).map(Worker)
    }

    /// Its shared record, for writing (`growth`).
    pub(super) fn shared_mut(self) -> *mut ffi::proxy_worker_shared {
        // SAFETY: a pointer field of a live worker.
        unsafe { (*self.0.as_ptr()).s }
    }

    fn shared(self) -> *const ffi::proxy_worker_shared {
        // SAFETY: a live worker; `s` is set for every worker Balancer::workers yields.
        unsafe { (*self.0.as_ptr()).s }
    }

    /// Its slot index, the same in every process.
    pub fn index(self) -> u32 {
        // SAFETY: a plain field of the live shared record.
        unsafe { read_volatile(addr_of!((*self.shared()).index)) }.max(0) as u32
    }

    /// One read of its scheduling fields.
    pub fn state(self) -> WorkerState {
        let s = self.shared();
        // SAFETY: each field is read once with a volatile load from the live shared record;
        // other processes may be writing them, so the values are only a consistent-enough
        // snapshot.
        unsafe {
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

    /// Its URL, the key of its slot: `name_ex`, the full name httpd 2.4.53 and later keep, or on
    /// older releases `name` (96 bytes; httpd refuses longer names there). build.rs finds
    /// which the headers have.
    pub fn key_name(self) -> Name {
        // SAFETY: a NUL-terminated array in the live shared record.
        #[cfg(lbrs_worker_name_ex)]
        let name = unsafe { Name::read(addr_of!((*self.shared()).name_ex)) };
        #[cfg(not(lbrs_worker_name_ex))]
        let name = unsafe { Name::read(addr_of!((*self.shared()).name)) };
        name
    }

    /// Its URL.
    pub fn name(self) -> String {
        self.key_name().to_string()
    }

    /// Its route (`route=`).
    pub fn route(self) -> String {
        // SAFETY: route is a NUL-terminated array in the live shared record.
        unsafe { Name::read(addr_of!((*self.shared()).route)) }.to_string()
    }
}

/// The method providers this module registers with mod_proxy_balancer: one table per method,
/// each calling [`Finder::find`] with its position.
pub struct Providers<const N: usize>([ffi::proxy_balancer_method; N]);

// SAFETY: the tables are never written after construction; httpd only reads them.
unsafe impl<const N: usize> Sync for Providers<N> {}

/// What every provider table calls to pick a member.
pub trait Finder: 'static {
    /// The member for request `r` in `balancer`, by the method at position `method` of the
    /// provider tables; `None` makes httpd answer 503. Called with the balancer's thread lock
    /// held.
    fn find(method: usize, balancer: Balancer, r: Request<'_>) -> Option<Worker>;
}

impl<const N: usize> Providers<N> {
    pub const fn new<F: Finder>(names: [&'static CStr; N]) -> Providers<N> {
        let mut tables = [ffi::proxy_balancer_method {
            name: std::ptr::null(),
            finder: Some(find::<F>),
            context: std::ptr::null_mut(),
            reset: Some(succeed),
            age: Some(succeed),
            updatelbstatus: Some(sticky_hit),
        }; N];
        let mut i = 0;
        while i < N {
            tables[i].name = names[i].as_ptr();
            tables[i].context = std::ptr::without_provenance_mut(i);
            i += 1;
        }
        Providers(tables)
    }

    /// Registers every table for this generation (from `register_hooks`).
    pub fn register(&'static self, pool: Pool) {
        for table in &self.0 {
            // SAFETY: the tables and their names are statics that outlive the generation.
            unsafe {
                ffi::ap_register_provider(
                    pool.raw(),
                    c"proxylbmethod".as_ptr(),
                    table.name,
                    c"0".as_ptr(),
                    table as *const ffi::proxy_balancer_method as *const c_void,
                );
            }
        }
    }

    /// The position of the table `balancer` uses now, if it is one of these.
    pub fn position_of(&self, balancer: Balancer) -> Option<usize> {
        let used = balancer.method_table();
        self.0.iter().position(|table| table as *const ffi::proxy_balancer_method as usize == used)
    }
}

unsafe extern "C" fn find<F: Finder>(
    balancer: *mut ffi::proxy_balancer,
    r: *mut ffi::request_rec,
) -> *mut ffi::proxy_worker {
    catch("finder", std::ptr::null_mut(), || {
        // SAFETY: httpd calls a finder through the live balancer's own lbmethod table, for a
        // live request, with the balancer's thread lock held.
        unsafe {
            let (Some(handle), Some(request)) = (NonNull::new(balancer), Request::from_raw(r)) else {
                return std::ptr::null_mut();
            };
            let method = (*(*balancer).lbmethod).context as usize;
            F::find(method, Balancer(handle), request).map_or(std::ptr::null_mut(), |w| w.0.as_ptr())
        }
    })
}

/// `reset` (balancer-manager changed the method or re-enabled a member) and `age` (never
/// called by httpd 2.4): nothing to do, every method's state is derived from shared counters.
unsafe extern "C" fn succeed(
    _balancer: *mut ffi::proxy_balancer,
    _s: *mut ffi::server_rec,
) -> ffi::apr_status_t {
    ffi::APR_SUCCESS
}

/// `updatelbstatus`, called on a sticky-session hit: nothing to do here; the attempt is
/// counted when mod_proxy starts it ([`hook_attempt_start`]).
unsafe extern "C" fn sticky_hit(
    _balancer: *mut ffi::proxy_balancer,
    _elected: *mut ffi::proxy_worker,
    _s: *mut ffi::server_rec,
) -> ffi::apr_status_t {
    ffi::APR_SUCCESS
}

/// What runs as mod_proxy is about to send a request to a member.
pub trait AttemptStart: 'static {
    /// mod_proxy is about to send `r` to `worker`; `conf` is the configuration of the server
    /// that serves it.
    fn starting(r: Request<'_>, worker: Worker, conf: ProxyConf);
}

/// Registers [`AttemptStart::starting`] as mod_proxy's first `scheme_handler` hook, which
/// always declines, so the real scheme handler (mod_proxy_http...) runs next. mod_proxy.so is
/// looked up by symbol at run time, so this module never links against it. Call in
/// pre_config, when every module is loaded.
pub fn hook_attempt_start<H: AttemptStart>() {
    type SchemeHandler = unsafe extern "C" fn(
        *mut ffi::request_rec,
        *mut ffi::proxy_worker,
        *mut ffi::proxy_server_conf,
        *mut c_char,
        *const c_char,
        u16,
    ) -> c_int;
    type HookScheme =
        unsafe extern "C" fn(Option<SchemeHandler>, *const *const c_char, *const *const c_char, c_int);
    // SAFETY: looking a symbol up in the process's global namespace.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"proxy_hook_scheme_handler".as_ptr()) };
    if symbol.is_null() {
        return; // mod_proxy is not loaded: post_config reports it.
    }
    // SAFETY: proxy_hook_scheme_handler has the HookScheme signature (an APR external hook).
    unsafe {
        let hook: HookScheme = std::mem::transmute::<*mut c_void, HookScheme>(symbol);
        hook(Some(attempt_start::<H>), std::ptr::null(), std::ptr::null(), ffi::APR_HOOK_REALLY_FIRST);
    }
}

unsafe extern "C" fn attempt_start<H: AttemptStart>(
    r: *mut ffi::request_rec,
    worker: *mut ffi::proxy_worker,
    conf: *mut ffi::proxy_server_conf,
    _url: *mut c_char,
    _proxyhost: *const c_char,
    _proxyport: u16,
) -> c_int {
    catch("scheme_handler", ffi::DECLINED, || {
        // SAFETY: mod_proxy passes a live request, worker and server configuration.
        unsafe {
            if let (Some(r), Some(worker), Some(conf)) =
                (Request::from_raw(r), NonNull::new(worker), NonNull::new(conf))
                && !(*worker.as_ptr()).s.is_null()
            {
                H::starting(r, Worker(worker), ProxyConf(conf));
            }
        }
        ffi::DECLINED
    })
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

    /// A hot standby (`+H`): offered only when no other member of its lbset can take requests.
    pub fn standby(&self) -> bool {
        self.has(ffi::PROXY_WORKER_HOT_STANDBY)
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
            "ok" if self.standby() => "standby",
            "ok" if self.has(ffi::PROXY_WORKER_HOT_SPARE) => "spare",
            word => word,
        }
    }

    /// Every status flag set, by name.
    pub fn flag_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        FLAG_NAMES.iter().filter(|(flag, _)| self.status & flag != 0).map(|&(_, name)| name)
    }
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
