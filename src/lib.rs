//! mod_lbmethod_rs: load-balancing methods for Apache httpd 2.4's mod_proxy_balancer.
//!
//! Where things are:
//! - [`module`]: the module record httpd loads, its hooks and the method providers;
//! - [`finder`]: where a request's pick happens (httpd glue around [`methods`]);
//! - [`methods`]: the selection rules, plain Rust;
//! - [`shm`]: the shared-memory slots every httpd process reads and writes;
//! - [`status`] and [`status_page`]: the status page and its formats;
//! - [`httpd`]: thin wrappers over the raw bindings in [`ffi`].
//!
//! The modules that call into httpd are left out of `cargo test` builds: a test binary cannot
//! resolve httpd's symbols. Everything they call into is plain Rust, tested on its own.

// In test builds the httpd glue is left out, so what only it uses looks unused.
#![cfg_attr(test, allow(dead_code))]

mod config;
#[allow(dead_code)]
mod ffi;
mod generation;
mod methods;
mod shm;
mod status;

#[cfg(not(test))]
mod attempts;
#[cfg(not(test))]
mod directives;
#[cfg(not(test))]
mod finder;
#[cfg(not(test))]
mod httpd;
#[cfg(not(test))]
mod module;
#[cfg(not(test))]
mod startup;
#[cfg(not(test))]
mod status_page;
