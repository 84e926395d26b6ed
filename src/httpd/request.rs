//! The few request operations the module needs: reading what was asked, answering it, and
//! keeping per-request state in `r->request_config`.

use crate::ffi;
use std::ffi::{CString, c_void};

/// `r->handler`, if set.
///
/// # Safety
/// `r` must be live.
pub unsafe fn handler(r: *const ffi::request_rec) -> Option<String> {
    // SAFETY: handler is null or a C string owned by the request.
    let handler = unsafe { (*r).handler };
    (!handler.is_null()).then(|| unsafe { super::c_str(handler) })
}

/// `r->method_number`.
///
/// # Safety
/// `r` must be live.
pub unsafe fn method_number(r: *const ffi::request_rec) -> i32 {
    // SAFETY: plain field of a live request.
    unsafe { (*r).method_number }
}

/// True for HEAD (httpd sets `header_only`).
///
/// # Safety
/// `r` must be live.
pub unsafe fn header_only(r: *const ffi::request_rec) -> bool {
    // SAFETY: plain field of a live request.
    unsafe { (*r).header_only != 0 }
}

/// The query string (`r->args`).
///
/// # Safety
/// `r` must be live.
pub unsafe fn args(r: *const ffi::request_rec) -> Option<String> {
    // SAFETY: args is null or a C string owned by the request.
    let args = unsafe { (*r).args };
    (!args.is_null()).then(|| unsafe { super::c_str(args) })
}

/// Marks GET (and so HEAD) as the methods allowed, for a 405 answer.
///
/// # Safety
/// `r` must be live.
pub unsafe fn allow_get_only(r: *mut ffi::request_rec) {
    let get: i64 = 1 << ffi::M_GET;
    // SAFETY: fields of a live request; allowed_methods is what httpd's Allow header is built
    // from (make_allow), r->allowed what other modules read.
    unsafe {
        (*r).allowed |= get;
        if let Some(methods) = (*r).allowed_methods.as_mut() {
            methods.method_mask |= get;
        }
    }
}

/// Sets a response header.
///
/// # Safety
/// `r` must be live.
pub unsafe fn set_header(r: *mut ffi::request_rec, name: &str, value: &str) {
    let (Ok(name), Ok(value)) = (CString::new(name), CString::new(value)) else {
        return;
    };
    // SAFETY: apr_table_set copies both strings into the table's pool.
    unsafe { ffi::apr_table_set((*r).headers_out, name.as_ptr(), value.as_ptr()) };
}

/// Sets a header that goes out with error responses too (`r->err_headers_out`).
///
/// # Safety
/// `r` must be live.
pub unsafe fn set_error_header(r: *mut ffi::request_rec, name: &str, value: &str) {
    let (Ok(name), Ok(value)) = (CString::new(name), CString::new(value)) else { return };
    // SAFETY: apr_table_set copies both strings into the table's pool.
    unsafe { ffi::apr_table_set((*r).err_headers_out, name.as_ptr(), value.as_ptr()) };
}

/// Removes a header set with [`set_error_header`].
///
/// # Safety
/// `r` must be live.
pub unsafe fn unset_error_header(r: *mut ffi::request_rec, name: &str) {
    let Ok(name) = CString::new(name) else { return };
    // SAFETY: a live table of a live request.
    unsafe { ffi::apr_table_unset((*r).err_headers_out, name.as_ptr()) };
}

/// Sends `body` with content type `content_type` (only the headers for HEAD).
///
/// # Safety
/// `r` must be live and not yet answered.
pub unsafe fn send(r: *mut ffi::request_rec, content_type: &str, body: &[u8]) {
    let Ok(content_type) = CString::new(content_type) else {
        return;
    };
    // SAFETY: ap_set_content_type keeps the pointer, so the string is copied into r->pool
    // first; ap_rwrite copies the body into the output brigade.
    unsafe {
        let pooled = ffi::apr_pstrmemdup((*r).pool, content_type.as_ptr(), content_type.as_bytes().len());
        ffi::ap_set_content_type(r, pooled);
        if !header_only(r) {
            ffi::ap_rwrite(body.as_ptr() as *const c_void, body.len() as i32, r);
        }
    }
}

/// Writes `text` into the response body (after whatever a handler already wrote: mod_status's
/// page, for a section added through its hook). Nothing for HEAD.
///
/// # Safety
/// `r` must be live and its response under way.
pub unsafe fn write(r: *mut ffi::request_rec, text: &str) {
    // SAFETY: ap_rwrite copies the bytes into the output brigade.
    unsafe {
        if !header_only(r) && !text.is_empty() {
            ffi::ap_rwrite(text.as_ptr() as *const c_void, text.len().min(i32::MAX as usize) as i32, r);
        }
    }
}

/// This module's entry in `r->request_config` (null until set).
///
/// # Safety
/// `r` must be live.
pub unsafe fn module_state(r: *const ffi::request_rec) -> *mut c_void {
    // SAFETY: request_config is the request's live configuration vector.
    unsafe { super::module_config((*r).request_config) }
}

/// Replaces this module's entry in `r->request_config`.
///
/// # Safety
/// `r` must be live; `state` must live as long as the request pool.
pub unsafe fn set_module_state(r: *mut ffi::request_rec, state: *mut c_void) {
    // SAFETY: as above.
    unsafe { super::set_module_config((*r).request_config, state) };
}
