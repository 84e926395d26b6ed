//! The panic boundary. Every function httpd calls runs its body through [`catch`]: a panic
//! must never unwind into C (it would abort the child and every request it serves), so it is
//! caught, logged, and the entry point returns its safe fallback (a finder returns no member,
//! a handler 500, a directive an error string).

use super::log::{self, Level};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// Runs `body`; on panic logs which entry point failed and returns `fallback`.
pub fn catch<R>(entry: &'static str, fallback: R, body: impl FnOnce() -> R) -> R {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            log::server(
                None,
                Level::Err,
                file!(),
                line!(),
                &format!(
                    "{entry} failed (internal error, see the panic message above); using its safe fallback"
                ),
            );
            fallback
        }
    }
}

/// Sends panic messages to httpd's error log with where they happened. Installed once per
/// load of the module; this module's copy of the Rust runtime is its own, so the hook cannot
/// outlive the code it points to.
pub fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            log::server(None, Level::Crit, file!(), line!(), &format!("panic at {location}: {message}"));
        }));
    });
}
