//! The httpd glue: everything that calls into httpd, in one room. It wires the plain-Rust
//! folders ([`crate::methods`], [`crate::shm`], [`crate::config`], [`crate::status`]) to
//! httpd through the wrappers in [`crate::httpd`].
//!
//! - [`module`]: the module record, its hooks and the method providers;
//! - [`finder`]: where a request's pick happens;
//! - [`attempts`]: how each attempt is counted, timed and released exactly once;
//! - [`directives`]: the command table and the per-server settings records;
//! - [`startup`]: what the parent does at startup and on every restart;
//! - [`generation`]: one configuration generation as this process sees it;
//! - [`status_handler`]: the status page's handler.
//!
//! All but `generation` are left out of `cargo test` builds (a test binary cannot resolve
//! httpd's symbols).

pub mod generation;

#[cfg(not(test))]
mod attempts;
#[cfg(not(test))]
mod directives;
#[cfg(not(test))]
mod finder;
#[cfg(not(test))]
mod module;
#[cfg(not(test))]
mod startup;
#[cfg(not(test))]
mod status_handler;
