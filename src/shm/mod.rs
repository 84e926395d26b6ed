//! Shared memory: the state every httpd process of a generation reads and writes.
//!
//! - [`layout`]: the slots, plain `#[repr(C)]` structs of atomics;
//! - [`segment`]: the mapping that holds them, and its process table;
//! - [`attempt`]: an attempt's life on the shared counters, and what the parent does when a
//!   process is killed, so that every count stays exact;
//! - [`queue`]: the waiting line of a balancer whose members are all at their caps;
//! - [`discovery`]: what `LBDiscover` found for a balancer, and who resolves;
//! - [`restart`]: what a graceful restart keeps.

pub mod attempt;
pub mod discovery;
mod layout;
pub mod queue;
mod restart;
mod segment;

pub use attempt::{Attempt, Counts, Outcome};
pub use layout::{BalancerEvents, BalancerSlot, DUE_RATE, DUE_STREAK, Health, MemberSlot};
pub use restart::{BalancerPlan, carry_over, place, reuse};
pub use segment::{Capacity, Segment, fnv1a, name_key};

/// Microseconds on the system's monotonic clock: the same clock in every process, so times
/// stored in the segment (slow-start ramps) mean the same to all of them.
pub fn monotonic_us() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;
