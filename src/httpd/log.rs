//! Logging through httpd's error log under this module's index, so that
//! `LogLevel lbmethod_rs:debug` turns on this module's messages alone.
//!
//! The text is formatted in Rust and handed to httpd as data (`"%s"`), never as the format.

use super::{Request, Server, module_index};
use crate::ffi;
use std::ffi::{CString, c_int};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    Emerg = ffi::APLOG_EMERG,
    Crit = ffi::APLOG_CRIT,
    Err = ffi::APLOG_ERR,
    Warning = ffi::APLOG_WARNING,
    Notice = ffi::APLOG_NOTICE,
    Info = ffi::APLOG_INFO,
    Debug = ffi::APLOG_DEBUG,
}

/// True when a message at `level` about request `r` would be written.
pub fn request_enabled(r: Request<'_>, level: Level) -> bool {
    if level <= Level::Notice {
        return true;
    }
    // SAFETY: the request is live for the handle's lifetime.
    let configured = unsafe { ffi::ap_get_request_module_loglevel(r.raw(), module_index()) };
    configured >= level as c_int
}

/// True when a message at `level` about server `s` (none: the main server) would be written.
pub fn server_enabled(s: Option<Server>, level: Level) -> bool {
    let Some(s) = s.filter(|_| level > Level::Notice) else { return true };
    // SAFETY: a server of the current generation.
    let configured = unsafe { ffi::ap_get_server_module_loglevel(s.raw(), module_index()) };
    configured >= level as c_int
}

/// Writes `message` about request `r` (call through `log_request!`).
pub fn request(r: Request<'_>, level: Level, file: &str, line: u32, message: &str) {
    let (file, message) = (c_text(file), c_text(message));
    // SAFETY: r is live; format and arguments match ("%s" with one C string).
    unsafe {
        ffi::ap_log_rerror_(
            file.as_ptr(),
            line as c_int,
            module_index(),
            level as c_int,
            0,
            r.raw(),
            c"%s".as_ptr(),
            message.as_ptr(),
        );
    }
}

/// Writes `message` about server `s` (none: the main server's log) (call through `log_server!`).
pub fn server(s: Option<Server>, level: Level, file: &str, line: u32, message: &str) {
    let (file, message) = (c_text(file), c_text(message));
    // SAFETY: s is live or null (httpd then logs to the main error log); "%s" with one C string.
    unsafe {
        ffi::ap_log_error_(
            file.as_ptr(),
            line as c_int,
            module_index(),
            level as c_int,
            0,
            s.map_or(std::ptr::null(), |s| s.raw()),
            c"%s".as_ptr(),
            message.as_ptr(),
        );
    }
}

/// A C string of `text`, with any NUL byte (which C would stop at) shown as `\0`.
fn c_text(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

/// Logs about a request; the message is formatted only when the level is enabled.
macro_rules! log_request {
    ($r:expr, $level:expr, $($arg:tt)+) => {{
        let (r, level) = ($r, $level);
        if $crate::httpd::log::request_enabled(r, level) {
            $crate::httpd::log::request(r, level, file!(), line!(), &format!($($arg)+));
        }
    }};
}

/// Logs about a server (`None`: the main server); formatted only when the level is enabled.
macro_rules! log_server {
    ($s:expr, $level:expr, $($arg:tt)+) => {{
        let (s, level): (Option<$crate::httpd::Server>, _) = ($s.into(), $level);
        if $crate::httpd::log::server_enabled(s, level) {
            $crate::httpd::log::server(s, level, file!(), line!(), &format!($($arg)+));
        }
    }};
}

pub(crate) use {log_request, log_server};
