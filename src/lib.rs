//! mod_lbmethod_rs: load-balancing methods for Apache httpd 2.4's mod_proxy_balancer.
//!
//! Layers, each importing only those below it (docs/architecture.md has the map, and
//! tests/layering.rs enforces it):
//! - [`ffi`]: the raw bindings, generated from the installed headers;
//! - [`httpd`]: thin safe wrappers over them; imports nothing else;
//! - [`apache`]: the glue: the module record and hooks, the finder (where a request's pick
//!   happens), attempts, directives, startup and the status handler;
//! - plain Rust that never calls httpd, tested and benchmarked on its own: [`methods`] (one
//!   file per method), [`shm`] (the shared-memory slots), [`config`] (the directives'
//!   values) and [`status`] (the status page's formats).
//!
//! The glue that calls into httpd is left out of `cargo test` builds: a test binary cannot
//! resolve httpd's symbols.

// In test builds the httpd glue is left out, so what only it uses looks unused.
#![cfg_attr(test, allow(dead_code))]

#[cfg(not(test))]
mod apache;
mod config;
mod discover;
#[allow(dead_code)]
mod ffi;
#[cfg(not(test))]
mod httpd;
mod methods;
mod shm;
mod status;

/// Counts heap allocations per thread in unit tests, to show that a pick allocates nothing.
#[cfg(test)]
pub(crate) mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            COUNT.set(COUNT.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            COUNT.set(COUNT.get() + 1);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Heap allocations made by this thread so far.
    pub fn count() -> u64 {
        COUNT.get()
    }
}
