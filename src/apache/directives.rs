//! The httpd side of this module's directives: the command table, and the per-server records
//! (`create_server_config`/`merge_server_config`) that hold [`ServerSettings`].
//! What each directive means and accepts is in [`crate::config`].

use crate::config::{Directive, ServerSettings, section_balancer};
use crate::ffi;
use crate::httpd::c_str;
use crate::httpd::guard::catch;
use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr;

/// httpd's command table: one entry per directive, then a terminator.
pub struct CommandTable([ffi::command_rec; Directive::ALL.len() + 1]);

// SAFETY: the table is never written after construction; httpd only reads it.
unsafe impl Sync for CommandTable {}

const fn command(directive: Directive) -> ffi::command_rec {
    ffi::command_rec {
        name: directive.c_name().as_ptr(),
        func: ffi::cmd_func { take_argv: Some(set_directive) },
        cmd_data: directive as usize as *mut c_void,
        // Allowed where <Proxy> sections are; set_directive then insists on <Proxy balancer://>.
        req_override: ffi::RSRC_CONF | ffi::ACCESS_CONF,
        args_how: ffi::TAKE_ARGV,
        errmsg: directive.c_help().as_ptr(),
    }
}

pub static COMMANDS: CommandTable = CommandTable([
    command(Directive::SlowStart),
    command(Directive::MaxInflight),
    command(Directive::HashKey),
    command(Directive::HashBalanceFactor),
    command(Directive::LatencyDecay),
    ffi::command_rec {
        name: ptr::null(),
        func: ffi::cmd_func { no_args: None },
        cmd_data: ptr::null_mut(),
        req_override: 0,
        args_how: 0,
        errmsg: ptr::null(),
    },
]);

impl CommandTable {
    pub const fn as_ptr(&self) -> *const ffi::command_rec {
        self.0.as_ptr()
    }
}

fn directive_from(data: *mut c_void) -> Option<Directive> {
    Directive::ALL.into_iter().find(|&d| d as usize == data as usize)
}

unsafe extern "C" fn set_directive(
    cmd: *mut ffi::cmd_parms,
    _dir_config: *mut c_void,
    argc: c_int,
    argv: *const *mut c_char,
) -> *const c_char {
    catch("directive", c"mod_lbmethod_rs: internal error in a directive".as_ptr(), || {
        // SAFETY: httpd passes a live cmd_parms and argc C strings.
        match unsafe { apply(cmd, argc, argv) } {
            Ok(()) => ptr::null(),
            // SAFETY: the message is copied into the configuration pool, which outlives it.
            Err(message) => unsafe { pool_string(cmd, &message) },
        }
    })
}

/// # Safety
/// Live `cmd`, `argc` valid strings at `argv`.
unsafe fn apply(cmd: *mut ffi::cmd_parms, argc: c_int, argv: *const *mut c_char) -> Result<(), String> {
    // SAFETY: per this function's contract.
    unsafe {
        let directive = directive_from((*(*cmd).cmd).cmd_data).ok_or("unknown directive")?;
        let path = (!(*cmd).path.is_null()).then(|| c_str((*cmd).path));
        let in_proxy_section = !(*cmd).directive.is_null()
            && !(*(*cmd).directive).parent.is_null()
            && c_str((*(*(*cmd).directive).parent).directive).eq_ignore_ascii_case("<Proxy");
        let balancer = match path.as_deref().and_then(section_balancer) {
            Some(balancer) if in_proxy_section => balancer.to_string(),
            _ => return Err(directive.misplaced(path.as_deref())),
        };
        let args: Vec<String> = (0..argc.max(0) as usize).map(|i| c_str(*argv.add(i))).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let settings = server_settings((*cmd).server).ok_or("module configuration missing")?;
        (*settings).apply(&balancer, directive, &args, |source| compile_expression(cmd, source))
    }
}

/// Parses an `LBHashKey` string expression with httpd's own parser (ap_expr), so that it is
/// checked at `apachectl -t` and evaluated per request without parsing again. The parsed
/// expression lives in the configuration pool, as long as the settings that point to it.
///
/// # Safety
/// Live `cmd`.
unsafe fn compile_expression(cmd: *mut ffi::cmd_parms, source: &str) -> Result<usize, String> {
    let text = CString::new(source).map_err(|_| "the expression contains a NUL byte".to_string())?;
    let mut error: *const c_char = ptr::null();
    // SAFETY: ap_expr_parse_cmd_mi copies what it keeps into the configuration pool.
    let parsed = unsafe {
        let text = ffi::apr_pstrmemdup((*cmd).pool, text.as_ptr(), source.len());
        ffi::ap_expr_parse_cmd_mi(
            cmd,
            text,
            ffi::AP_EXPR_FLAG_STRING_RESULT as u32,
            &mut error,
            None,
            crate::httpd::module_index(),
        )
    };
    if !error.is_null() || parsed.is_null() {
        // SAFETY: error is null or a C string from httpd.
        let why = unsafe { c_str(error) };
        return Err(if why.is_empty() { "not a valid expression".to_string() } else { why });
    }
    Ok(parsed as usize)
}

/// A copy of `message` in the configuration pool, for httpd to print.
///
/// # Safety
/// Live `cmd`.
unsafe fn pool_string(cmd: *mut ffi::cmd_parms, message: &str) -> *const c_char {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: apr_pstrmemdup copies the bytes into the live pool.
    unsafe { ffi::apr_pstrmemdup((*cmd).pool, message.as_ptr(), message.as_bytes().len()) }
}

/// This module's settings for server `s`.
///
/// # Safety
/// `s` must be a live server_rec whose configuration vector this module filled.
pub unsafe fn server_settings(s: *const ffi::server_rec) -> Option<*mut ServerSettings> {
    // SAFETY: module_config is the server's live configuration vector.
    let settings = unsafe { crate::httpd::module_config((*s).module_config) };
    (!settings.is_null()).then_some(settings as *mut ServerSettings)
}

/// Puts `settings` in `pool`'s care: freed when the pool is cleared.
///
/// # Safety
/// Live pool.
unsafe fn pooled(pool: *mut ffi::apr_pool_t, settings: ServerSettings) -> *mut c_void {
    let raw = Box::into_raw(Box::new(settings)) as *mut c_void;
    // SAFETY: the cleanup frees exactly this Box, once, when the pool goes.
    unsafe {
        ffi::apr_pool_cleanup_register(pool, raw, Some(drop_settings), Some(ffi::apr_pool_cleanup_null))
    };
    raw
}

unsafe extern "C" fn drop_settings(data: *mut c_void) -> ffi::apr_status_t {
    catch("settings cleanup", ffi::APR_SUCCESS, || {
        // SAFETY: data is the Box registered in `pooled`.
        drop(unsafe { Box::from_raw(data as *mut ServerSettings) });
        ffi::APR_SUCCESS
    })
}

pub unsafe extern "C" fn create_server_config(
    pool: *mut ffi::apr_pool_t,
    _s: *mut ffi::server_rec,
) -> *mut c_void {
    catch("create_server_config", ptr::null_mut(), || {
        // SAFETY: httpd passes its configuration pool.
        unsafe { pooled(pool, ServerSettings::default()) }
    })
}

pub unsafe extern "C" fn merge_server_config(
    pool: *mut ffi::apr_pool_t,
    base: *mut c_void,
    own: *mut c_void,
) -> *mut c_void {
    catch("merge_server_config", own, || {
        // SAFETY: both are records made by create_server_config (or a merge) for this module.
        unsafe {
            match ((base as *const ServerSettings).as_ref(), (own as *const ServerSettings).as_ref()) {
                (Some(base_settings), Some(own_settings)) => {
                    pooled(pool, ServerSettings::merge(base_settings, own_settings))
                }
                _ => own,
            }
        }
    })
}
