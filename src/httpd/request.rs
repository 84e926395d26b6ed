//! A request, as the module reads and answers it, and the state the module keeps for it.

use super::guard::catch;
use super::{Tagged, module_slot, text};
use crate::ffi;
use std::borrow::Cow;
use std::cell::{Cell, UnsafeCell};
use std::ffi::{CStr, CString, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// A request httpd is serving; valid for the callback it was handed to (`'r`).
#[derive(Clone, Copy)]
pub struct Request<'r> {
    raw: NonNull<ffi::request_rec>,
    _life: PhantomData<&'r ffi::request_rec>,
}

/// An expression httpd parsed (`ap_expr`), to evaluate per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expression(pub(super) NonNull<ffi::ap_expr_info_t>);

// SAFETY: a parsed expression lives in the configuration pool of its generation and httpd only
// reads it while evaluating.
unsafe impl Send for Expression {}
unsafe impl Sync for Expression {}

impl<'r> Request<'r> {
    /// # Safety
    /// `raw` must be null or a request that stays live for `'r`.
    pub(super) unsafe fn from_raw(raw: *mut ffi::request_rec) -> Option<Request<'r>> {
        NonNull::new(raw).map(|raw| Request { raw, _life: PhantomData })
    }

    pub(super) fn raw(self) -> *mut ffi::request_rec {
        self.raw.as_ptr()
    }

    /// Whether the client has closed its connection, or it broke: the peer shut its side down
    /// (a FIN, seen even with bytes still unread, such as a TLS close_notify) or reset it. For a
    /// request of an HTTP/2 stream, whether mod_http2 has aborted the stream (the client reset
    /// it, or its connection went): its connection is the stream's, not a socket.
    /// Reads nothing: the data stays for httpd.
    pub fn client_gone(self) -> bool {
        // SAFETY: a live request's connection; ap_get_conn_socket returns its socket (or null),
        // apr_os_sock_get writes the descriptor into our variable, and poll with a zero timeout
        // only reads the pollfd we own.
        unsafe {
            let connection = (*self.raw()).connection;
            if connection.is_null() {
                return false;
            }
            if !(*connection).master.is_null() {
                return (*connection).aborted != 0;
            }
            let socket = ffi::ap_get_conn_socket(connection);
            let mut fd: ffi::apr_os_sock_t = -1;
            if socket.is_null() || ffi::apr_os_sock_get(&mut fd, socket) != ffi::APR_SUCCESS || fd < 0 {
                return false;
            }
            let mut poll = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
            libc::poll(&mut poll, 1, 0) == 1
                && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
        }
    }

    /// Whether `SetHandler` (or another module) gave the request this handler.
    pub fn handler_is(self, name: &CStr) -> bool {
        // SAFETY: handler is null or a C string owned by the live request.
        let handler = unsafe { (*self.raw()).handler };
        !handler.is_null() && unsafe { CStr::from_ptr(handler) } == name
    }

    /// GET (or HEAD, which httpd treats as GET).
    pub fn is_get(self) -> bool {
        // SAFETY: a plain field of the live request.
        unsafe { (*self.raw()).method_number == ffi::M_GET }
    }

    /// HEAD: headers only.
    fn header_only(self) -> bool {
        // SAFETY: a plain field of the live request.
        unsafe { (*self.raw()).header_only != 0 }
    }

    /// The query string.
    pub fn args(self) -> Option<Cow<'r, str>> {
        // SAFETY: args is null or a C string owned by the request.
        unsafe { text((*self.raw()).args) }
    }

    /// The server (virtual host) serving the request.
    pub fn server(self) -> Option<super::Server> {
        // SAFETY: the request's server is a server record of the current generation.
        unsafe { super::Server::from_raw((*self.raw()).server) }
    }

    /// The answer's status so far.
    pub fn status(self) -> i32 {
        // SAFETY: a plain field of the live request.
        unsafe { (*self.raw()).status }
    }

    /// A note another module left on the request (`r->notes`).
    pub fn note(self, name: &CStr) -> Option<&'r CStr> {
        // SAFETY: a live table of the live request; values live in the request pool.
        unsafe { table_get((*self.raw()).notes, name) }
    }

    /// A header of the client's request (`r->headers_in`).
    pub fn header_in(self, name: &CStr) -> Option<&'r CStr> {
        // SAFETY: as above.
        unsafe { table_get((*self.raw()).headers_in, name) }
    }

    /// A variable of the request's environment (`r->subprocess_env`).
    pub fn env(self, name: &CStr) -> Option<&'r CStr> {
        // SAFETY: as above.
        unsafe { table_get((*self.raw()).subprocess_env, name) }
    }

    /// Marks GET (and so HEAD) as the methods allowed, for a 405 answer.
    pub fn allow_get_only(self) {
        let get: i64 = 1 << ffi::M_GET;
        // SAFETY: fields of the live request; allowed_methods is what httpd's Allow header is
        // built from (make_allow), r->allowed what other modules read.
        unsafe {
            (*self.raw()).allowed |= get;
            if let Some(methods) = (*self.raw()).allowed_methods.as_mut() {
                methods.method_mask |= get;
            }
        }
    }

    /// Sets a response header.
    pub fn set_header(self, name: &str, value: &str) {
        // SAFETY: a live table of the live request.
        unsafe { table_set((*self.raw()).headers_out, name, Some(value)) }
    }

    /// Sets a header that goes out with error answers too (`r->err_headers_out`); `None`
    /// removes it.
    pub fn set_error_header(self, name: &str, value: Option<&str>) {
        // SAFETY: a live table of the live request.
        unsafe { table_set((*self.raw()).err_headers_out, name, value) }
    }

    /// Sends `body` with content type `content_type` (only the headers for HEAD).
    pub fn send(self, content_type: &str, body: &[u8]) {
        let Ok(content_type) = CString::new(content_type) else { return };
        // SAFETY: ap_set_content_type keeps the pointer, so the string is copied into the
        // request pool first; ap_rwrite copies the body.
        unsafe {
            let pooled =
                ffi::apr_pstrmemdup((*self.raw()).pool, content_type.as_ptr(), content_type.as_bytes().len());
            ffi::ap_set_content_type(self.raw(), pooled);
        }
        self.write(body);
    }

    /// Writes `body` into the response, after whatever a handler already wrote (mod_status's
    /// page, for a section added through its hook). Nothing for HEAD.
    pub fn write(self, body: &[u8]) {
        if self.header_only() || body.is_empty() {
            return;
        }
        for chunk in body.chunks(i32::MAX as usize) {
            // SAFETY: ap_rwrite copies the bytes into the output brigade of the live request.
            unsafe { ffi::ap_rwrite(chunk.as_ptr() as *const c_void, chunk.len() as i32, self.raw()) };
        }
    }

    /// The value of a string expression for this request, as the bytes httpd produced (in the
    /// request pool); `Err` with httpd's reason when it fails.
    pub fn eval(self, expression: Expression) -> Result<&'r [u8], String> {
        let mut error: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: the expression was parsed by httpd for this generation; the request is live.
        let value = unsafe { ffi::ap_expr_str_exec(self.raw(), expression.0.as_ptr(), &mut error) };
        if !error.is_null() {
            // SAFETY: a C string from httpd.
            return Err(unsafe { text(error) }.unwrap_or_default().into_owned());
        }
        // SAFETY: null, or a NUL-terminated string in the request pool, which outlives 'r.
        Ok(if value.is_null() { b"" } else { unsafe { CStr::from_ptr(value) }.to_bytes() })
    }

    /// Runs `body` on the module's state for this request if it has one already (nothing is
    /// made for a request the module never touched); `None` otherwise.
    pub fn with_existing_state<S: RequestState, R>(self, body: impl FnOnce(&mut S) -> R) -> Option<R> {
        // SAFETY: as in state_cell: this module's slot of the live request's configuration.
        let exists = unsafe {
            module_slot((*self.raw()).request_config)
                .is_some_and(|slot| Tagged::<StateCell<S>>::value(*slot).is_some())
        };
        exists.then(|| self.with_state(body))
    }

    /// Sets a variable of the request's environment (`r->subprocess_env`), and of the requests
    /// it was internally redirected to (an `ErrorDocument`, say): the access log prints the
    /// last one's with `%{NAME}e`.
    pub fn set_env(self, name: &str, value: &str) {
        let mut request = self.raw();
        // SAFETY: the live request and its `next` chain, which httpd keeps until the request
        // ends; bounded in case of a malformed chain.
        unsafe {
            for _ in 0..16 {
                let Some(live) = request.as_ref() else { break };
                table_set(live.subprocess_env, name, Some(value));
                request = live.next;
            }
        }
    }

    /// Runs `body` on the module's state for this request ([`RequestState`]), made on first
    /// use; [`RequestState::at_end`] runs when the request's pool goes. The state is not
    /// reentrant: `body` must not ask for it again.
    pub fn with_state<S: RequestState, R>(self, body: impl FnOnce(&mut S) -> R) -> R {
        let cell = self.state_cell::<S>();
        assert!(!cell.borrowed.replace(true), "request state asked for while in use");
        // Lends the state back even if `body` panics (the panic guard answers for the request,
        // and the state must still end with it).
        struct Return<'a>(&'a Cell<bool>);
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _return = Return(&cell.borrowed);
        // SAFETY: the borrow flag makes this the only reference to the state.
        body(unsafe { &mut *cell.state.get() })
    }

    fn state_cell<S: RequestState>(self) -> &'r StateCell<S> {
        // SAFETY: request_config is the live request's configuration vector; this module's slot
        // holds null or a Tagged StateCell made below, in the request pool.
        unsafe {
            let slot = module_slot((*self.raw()).request_config).expect("the module index is set");
            if let Some(cell) = Tagged::<StateCell<S>>::value(*slot) {
                return cell;
            }
            assert!((*slot).is_null(), "another type of request state");
            let pool = (*self.raw()).pool;
            let place = ffi::apr_palloc(pool, size_of::<Tagged<StateCell<S>>>()) as *mut Tagged<StateCell<S>>;
            place.write(Tagged::new(StateCell {
                borrowed: Cell::new(false),
                state: UnsafeCell::new(S::default()),
                request: self.raw(),
            }));
            ffi::apr_pool_cleanup_register(
                pool,
                place as *const c_void,
                Some(end_state::<S>),
                Some(ffi::apr_pool_cleanup_null),
            );
            *slot = place as *mut c_void;
            &(*place).value
        }
    }
}

/// What the module keeps for a request.
pub trait RequestState: Default + 'static {
    /// Runs once, when the request's pool goes: the request has ended, however it ended (the
    /// answer sent, the client gone, an error, an HTTP/2 stream reset). The request can still
    /// be read.
    fn at_end(&mut self, _r: Request<'_>) {}
}

struct StateCell<S> {
    borrowed: Cell<bool>,
    state: UnsafeCell<S>,
    request: *mut ffi::request_rec,
}

unsafe extern "C" fn end_state<S: RequestState>(data: *mut c_void) -> ffi::apr_status_t {
    catch("request cleanup", ffi::APR_SUCCESS, || {
        // SAFETY: the StateCell registered by `state_cell::<S>`, in the pool being cleaned: its
        // request is still in memory (the pool frees it after its cleanups).
        unsafe {
            let cell = &(*(data as *mut Tagged<StateCell<S>>)).value;
            if !cell.borrowed.replace(true) {
                let state = &mut *cell.state.get();
                if let Some(r) = Request::from_raw(cell.request) {
                    state.at_end(r);
                }
                std::ptr::drop_in_place(state);
            }
        }
        ffi::APR_SUCCESS
    })
}

/// # Safety
/// `table` must be a live APR table whose values outlive `'a`.
unsafe fn table_get<'a>(table: *const ffi::apr_table_t, name: &CStr) -> Option<&'a CStr> {
    // SAFETY: per the caller.
    unsafe {
        let value = ffi::apr_table_get(table, name.as_ptr());
        (!value.is_null()).then(|| CStr::from_ptr(value))
    }
}

/// # Safety
/// `table` must be a live APR table.
unsafe fn table_set(table: *mut ffi::apr_table_t, name: &str, value: Option<&str>) {
    let Ok(name) = CString::new(name) else { return };
    // SAFETY: apr_table_set copies both strings into the table's pool.
    unsafe {
        match value.map(CString::new) {
            Some(Ok(value)) => ffi::apr_table_set(table, name.as_ptr(), value.as_ptr()),
            Some(Err(_)) => {}
            None => ffi::apr_table_unset(table, name.as_ptr()),
        }
    }
}
