//! APR pools: what the module hands to httpd's memory, and work to do when a pool goes.

use super::Tagged;
use super::guard::catch;
use crate::ffi;
use std::ffi::c_void;
use std::ptr::NonNull;

/// A pool httpd handed out (a configuration pool, a request's pool).
#[derive(Clone, Copy)]
pub struct Pool(NonNull<ffi::apr_pool_t>);

impl Pool {
    /// # Safety
    /// `raw` must be null or a pool that lives as long as the handle is used.
    pub(super) unsafe fn from_raw(raw: *mut ffi::apr_pool_t) -> Option<Pool> {
        NonNull::new(raw).map(Pool)
    }

    pub(super) fn raw(self) -> *mut ffi::apr_pool_t {
        self.0.as_ptr()
    }

    /// Runs `work` when the pool is cleared or destroyed, before anything else of it is (its
    /// subpools, its other cleanups): for a thread that must stop using what the pool holds.
    pub fn before_destroy(self, work: fn()) {
        unsafe extern "C" fn run(data: *mut c_void) -> ffi::apr_status_t {
            catch("pool pre-cleanup", ffi::APR_SUCCESS, || {
                // SAFETY: `data` is the `fn()` registered below.
                let work = unsafe { std::mem::transmute::<*mut c_void, fn()>(data) };
                work();
                ffi::APR_SUCCESS
            })
        }
        // SAFETY: registers a plain callback with a function pointer as its data.
        unsafe { ffi::apr_pool_pre_cleanup_register(self.raw(), work as *const c_void, Some(run)) };
    }

    /// Runs `work` on `data` when the pool is cleared or destroyed.
    pub(super) fn on_clear_with<D: 'static>(self, data: &'static D, work: fn(&'static D)) {
        self.adopt(Deferred { data, work });
    }

    /// Moves `value` into the pool's care: it is dropped when the pool is cleared or destroyed.
    pub(super) fn adopt<T: 'static>(self, value: T) -> *mut Tagged<T> {
        let raw = Box::into_raw(Box::new(Tagged::new(value)));
        // SAFETY: `drop_adopted::<T>` frees exactly this Box, once, when the pool goes.
        unsafe {
            ffi::apr_pool_cleanup_register(
                self.raw(),
                raw as *const c_void,
                Some(drop_adopted::<T>),
                Some(ffi::apr_pool_cleanup_null),
            );
        }
        raw
    }
}

/// Work that runs when it is dropped (see [`Pool::on_clear_with`]).
struct Deferred<D: 'static> {
    data: &'static D,
    work: fn(&'static D),
}

impl<D: 'static> Drop for Deferred<D> {
    fn drop(&mut self) {
        (self.work)(self.data);
    }
}

unsafe extern "C" fn drop_adopted<T>(data: *mut c_void) -> ffi::apr_status_t {
    catch("pool cleanup", ffi::APR_SUCCESS, || {
        // SAFETY: the Box registered by `adopt::<T>`, freed once.
        drop(unsafe { Box::from_raw(data as *mut Tagged<T>) });
        ffi::APR_SUCCESS
    })
}
