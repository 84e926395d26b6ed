//! Thin wrappers over the raw bindings: logging, the panic boundary, requests, and mod_proxy's
//! structures. Every `unsafe` block says why it holds.

pub mod guard;
pub mod log;
pub mod proxy;
pub mod request;
