//! An output filter that tells the module when a response's first bytes go out, then takes
//! itself out of the chain.

use super::Request;
use super::guard::catch;
use crate::ffi;
use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// What the module does when a response's first bytes go out.
pub trait FirstOutput: 'static {
    fn first_output(r: Request<'_>);
}

/// The filter's registration in this generation (made anew in every `register_hooks`).
static FILTER: AtomicPtr<ffi::ap_filter_rec_t> = AtomicPtr::new(ptr::null_mut());

/// Registers the filter under `name`, calling `F`.
pub fn register<F: FirstOutput>(name: &'static CStr) {
    // SAFETY: registering a plain callback under a static name.
    let filter = unsafe {
        ffi::ap_register_output_filter(name.as_ptr(), Some(first_output::<F>), None, ffi::AP_FTYPE_RESOURCE)
    };
    FILTER.store(filter, Ordering::Release);
}

/// Puts the filter in `r`'s output chain.
pub fn add(r: Request<'_>) {
    let filter = FILTER.load(Ordering::Acquire);
    if !filter.is_null() {
        // SAFETY: the filter record is this generation's; r is live.
        unsafe { ffi::ap_add_output_filter_handle(filter, ptr::null_mut(), r.raw(), (*r.raw()).connection) };
    }
}

unsafe extern "C" fn first_output<F: FirstOutput>(
    f: *mut ffi::ap_filter_t,
    brigade: *mut ffi::apr_bucket_brigade,
) -> ffi::apr_status_t {
    // SAFETY: httpd passes a live filter of a live request.
    let next = unsafe { (*f).next };
    catch("first output filter", (), || {
        // SAFETY: as above.
        unsafe {
            if let Some(r) = Request::from_raw((*f).r) {
                F::first_output(r);
            }
            ffi::ap_remove_output_filter(f);
        }
    });
    // SAFETY: passing the brigade on down the chain, as every filter must.
    unsafe { ffi::ap_pass_brigade(next, brigade) }
}
