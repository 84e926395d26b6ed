//! The module's directives (httpd's command table) and its per-server configuration records.

use super::guard::catch;
use super::request::Expression;
use super::{Server, Tagged, module_index, text};
use crate::ffi;
use std::borrow::Cow;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;

/// The most directives a [`CommandTable`] holds (one entry stays empty: httpd's terminator).
const CAPACITY: usize = 16;

/// httpd's command table: one entry per directive, then the terminator.
pub struct CommandTable([ffi::command_rec; CAPACITY]);

// SAFETY: the table is never written after construction; httpd only reads it.
unsafe impl Sync for CommandTable {}

/// What the module does with its directives.
pub trait Directives: 'static {
    /// Applies directive number `which` (its position in the table) with `args`, as written
    /// where `cmd` says. `Err` fails the configuration with that message.
    fn apply(which: usize, cmd: &mut Command<'_>, args: &[&str]) -> Result<(), String>;
}

const EMPTY: ffi::command_rec = ffi::command_rec {
    name: std::ptr::null(),
    func: ffi::cmd_func { no_args: None },
    cmd_data: std::ptr::null_mut(),
    req_override: 0,
    args_how: 0,
    errmsg: std::ptr::null(),
};

impl CommandTable {
    /// A table of `(name, help)` entries, each taking any number of arguments, allowed in the
    /// server configuration and in `<Proxy>` sections (the module checks where further).
    pub const fn new<D: Directives>(entries: &[(&'static CStr, &'static CStr)]) -> CommandTable {
        assert!(entries.len() < CAPACITY, "too many directives for the table");
        let mut table = [EMPTY; CAPACITY];
        let mut i = 0;
        while i < entries.len() {
            table[i] = ffi::command_rec {
                name: entries[i].0.as_ptr(),
                func: ffi::cmd_func { take_argv: Some(set::<D>) },
                cmd_data: std::ptr::without_provenance_mut(i),
                req_override: ffi::RSRC_CONF | ffi::ACCESS_CONF,
                args_how: ffi::TAKE_ARGV,
                errmsg: entries[i].1.as_ptr(),
            };
            i += 1;
        }
        CommandTable(table)
    }

    pub(super) const fn as_ptr(&'static self) -> *const ffi::command_rec {
        self.0.as_ptr()
    }
}

unsafe extern "C" fn set<D: Directives>(
    cmd: *mut ffi::cmd_parms,
    _dir_config: *mut c_void,
    argc: c_int,
    argv: *const *mut c_char,
) -> *const c_char {
    catch("directive", c"mod_lbmethod_rs: internal error in a directive".as_ptr(), || {
        let Some(raw) = NonNull::new(cmd) else { return std::ptr::null() };
        // SAFETY: httpd passes a live cmd_parms and argc C strings.
        let args: Vec<String> = (0..argc.max(0) as usize)
            .map(|i| unsafe { text(*argv.add(i)) }.unwrap_or_default().into_owned())
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // SAFETY: `cmd->cmd` is the table entry httpd matched; its data is the entry's position.
        let which = unsafe { (*(*raw.as_ptr()).cmd).cmd_data } as usize;
        let mut command = Command { raw, _life: std::marker::PhantomData };
        match D::apply(which, &mut command, &args) {
            Ok(()) => std::ptr::null(),
            Err(message) => command.pool_string(&message),
        }
    })
}

/// A directive being read: where it is written, and the server it configures.
pub struct Command<'c> {
    raw: NonNull<ffi::cmd_parms>,
    _life: std::marker::PhantomData<&'c ffi::cmd_parms>,
}

impl Command<'_> {
    fn raw(&self) -> *mut ffi::cmd_parms {
        self.raw.as_ptr()
    }

    /// The path of the section it is written in (`balancer://app` in `<Proxy balancer://app>`).
    pub fn section_path(&self) -> Option<Cow<'_, str>> {
        // SAFETY: path is null or a C string of the live cmd_parms.
        unsafe { text((*self.raw()).path) }
    }

    /// Whether it is written directly inside a section opened by `opening` (`<Proxy`), in
    /// any case.
    pub fn in_section(&self, opening: &str) -> bool {
        // SAFETY: the directive and its parent are null or live configuration tree nodes.
        unsafe {
            let directive = (*self.raw()).directive;
            if directive.is_null() || (*directive).parent.is_null() {
                return false;
            }
            text((*(*directive).parent).directive).is_some_and(|name| name.eq_ignore_ascii_case(opening))
        }
    }

    /// This module's configuration of the server being configured.
    pub fn server_config<T: 'static>(&mut self) -> Option<&mut T> {
        // SAFETY: cmd->server is the live server record being configured.
        let mut server = unsafe { Server::from_raw((*self.raw()).server) }?;
        // The record lives in the configuration pool, longer than this directive.
        server.config_mut::<T>().map(|value| value as *mut T).map(|value| unsafe { &mut *value })
    }

    /// Parses a string expression with httpd's own parser (`ap_expr`), so that it is checked
    /// at `apachectl -t` and evaluated per request without parsing again.
    pub fn parse_expression(&self, source: &str) -> Result<Expression, String> {
        let source = CString::new(source).map_err(|_| "the expression contains a NUL byte".to_string())?;
        let mut error: *const c_char = std::ptr::null();
        // SAFETY: the text is copied into the configuration pool first, where the parsed
        // expression keeps pointing to it; httpd reports errors through `error`.
        let parsed = unsafe {
            let pooled = ffi::apr_pstrmemdup((*self.raw()).pool, source.as_ptr(), source.as_bytes().len());
            ffi::ap_expr_parse_cmd_mi(
                self.raw(),
                pooled,
                ffi::AP_EXPR_FLAG_STRING_RESULT as u32,
                &mut error,
                None,
                module_index(),
            )
        };
        match NonNull::new(parsed) {
            Some(parsed) if error.is_null() => Ok(Expression(parsed)),
            // SAFETY: error is null or a C string from httpd.
            _ => Err(unsafe { text(error) }
                .filter(|e| !e.is_empty())
                .map_or("not a valid expression".into(), |e| e.into_owned())),
        }
    }

    /// A copy of `message` in the configuration pool, for httpd to print.
    fn pool_string(&self, message: &str) -> *const c_char {
        let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: apr_pstrmemdup copies the bytes into the live pool.
        unsafe { ffi::apr_pstrmemdup((*self.raw()).pool, message.as_ptr(), message.as_bytes().len()) }
    }
}

/// The module's configuration of one server: made for each server, and merged into each
/// virtual host from the main server's.
pub trait ServerConfig: Sized + 'static {
    fn create() -> Self;
    fn merge(base: &Self, own: &Self) -> Self;
}

pub(super) unsafe extern "C" fn create_server_config<T: ServerConfig>(
    pool: *mut ffi::apr_pool_t,
    _s: *mut ffi::server_rec,
) -> *mut c_void {
    catch("create_server_config", std::ptr::null_mut(), || {
        // SAFETY: httpd passes its configuration pool.
        unsafe { super::Pool::from_raw(pool) }
            .map_or(std::ptr::null_mut(), |pool| pool.adopt(T::create()) as *mut c_void)
    })
}

pub(super) unsafe extern "C" fn merge_server_config<T: ServerConfig>(
    pool: *mut ffi::apr_pool_t,
    base: *mut c_void,
    own: *mut c_void,
) -> *mut c_void {
    catch("merge_server_config", own, || {
        // SAFETY: both are records made by create_server_config::<T> (or a merge) in this
        // generation's configuration pool.
        unsafe {
            match (Tagged::<T>::value(base), Tagged::<T>::value(own), super::Pool::from_raw(pool)) {
                (Some(base), Some(own), Some(pool)) => pool.adopt(T::merge(base, own)) as *mut c_void,
                _ => own,
            }
        }
    })
}
