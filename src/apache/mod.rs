//! The httpd glue: everything that calls into httpd, in one room, in safe Rust over the
//! wrappers of [`crate::httpd`]. It wires the plain-Rust folders ([`crate::methods`],
//! [`crate::shm`], [`crate::config`], [`crate::status`]) to httpd.
//!
//! - [`module`]: the module record, what it does at each of httpd's steps, the providers;
//! - [`finder`]: where a request's pick happens;
//! - [`attempts`]: a request's attempts, from the pick to the end of the request;
//! - [`directives`]: the command table and the per-server settings records;
//! - [`startup`]: what the parent does at startup and on every restart;
//! - [`generation`]: one configuration generation as this process sees it;
//! - [`status_handler`]: the status page's handler.
//!
//! Left out of `cargo test` builds: a test binary cannot resolve httpd's symbols.

mod attempts;
mod directives;
mod discovery;
mod finder;
mod generation;
mod module;
mod startup;
mod status_handler;
