//! The slots that live in shared memory: plain `#[repr(C)]` structs of atomics, no pointers.
//!
//! Every httpd process of a generation maps the same bytes, so everything here is read and
//! written only through atomic operations (lock-free atomics are address-free: they work across
//! processes on a shared mapping). A slot is a whole number of cache lines so that two members'
//! hot counters never share one.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Types that may be placed in the shared segment: zero bytes are a valid value, there are no
/// pointers, and every field is an atomic (or padding).
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of atomics whose all-zero bit pattern is valid.
pub unsafe trait ShmSafe: Sized {}

/// First bytes of the segment: what it is and how it is laid out.
#[repr(C, align(64))]
pub struct Header {
    pub magic: AtomicU64,
    pub balancer_slots: AtomicU32,
    pub member_slots: AtomicU32,
    pub process_slots: AtomicU32,
    /// Next member slot not yet given to a balancer (balancers that appear after startup take
    /// their member slots from here).
    pub next_free_member: AtomicU32,
}

/// One balancer (one `<Proxy balancer://...>` in one virtual host). Three cache lines: what is
/// set once when the slot is claimed and then only read, what every pick in every process
/// writes, and counters of rare events; so that the picks' writes never evict what every pick
/// reads.
#[repr(C, align(64))]
pub struct BalancerSlot {
    /// Hash of the balancer's httpd-wide unique name; 0 while the slot is free.
    pub key: AtomicU64,
    /// Where this balancer's member slots start and how many there are.
    pub member_base: AtomicU32,
    pub member_slots: AtomicU32,
    pub turns: Turns,
    pub events: BalancerEvents,
}

/// The counters every pick moves on.
#[repr(C, align(64))]
pub struct Turns {
    /// `byweight`: the next ticket. One shared counter makes the schedule exact across processes.
    pub ticket: AtomicU64,
    /// Where the next tie-break or draw starts, so that equal members take turns.
    pub rotation: AtomicU64,
    /// `bylatency`: the pick number and the time (monotonic microseconds) of the last probe.
    pub probe_pick: AtomicU64,
    pub probe_us: AtomicU64,
}

/// Counts of what happens to a request only now and then.
#[repr(C, align(64))]
pub struct BalancerEvents {
    /// Requests refused because every usable member was at its `LBMaxInflight` cap.
    pub shed: AtomicU64,
    /// `byhash`: requests that went past an eligible member of their key because it was at
    /// the load bound (or its cap).
    pub diverted: AtomicU64,
}

/// One balancer member (a `BalancerMember`), indexed by httpd's own worker slot index.
#[repr(C, align(64))]
pub struct MemberSlot {
    /// Hash of the member's name; 0 until a process first sees the member.
    pub key: AtomicU64,
    /// Attempts under way now, across all processes.
    pub inflight: AtomicI64,
    /// Highest `inflight` seen.
    pub peak_inflight: AtomicI64,
    /// Attempts given to this member (method picks and sticky routes).
    pub selected: AtomicU64,
    /// Attempts that ended normally.
    pub completed: AtomicU64,
    /// Attempts that ended with the member in error, were abandoned for failover, got a
    /// gateway error, or whose process was killed.
    pub failed: AtomicU64,
    /// Attempts in flight when a graceful restart moved the counters to a new segment: the
    /// previous generation's children finish them there. With it, `selected` is exactly
    /// `completed + failed + handed_over + inflight`.
    pub handed_over: AtomicU64,
    /// Slow start: 1 while some process has seen the member unusable since its last ramp.
    pub down: AtomicU32,
    /// Slow start: when the member last became usable again (monotonic microseconds; 0: never).
    pub ramp_start_us: AtomicU64,
    /// `bylatency`'s estimate in microseconds (bits of an f64; 0: none yet), when it last
    /// changed (monotonic microseconds), and how many samples it has taken. The rule that
    /// updates them is `methods::bylatency`'s.
    pub latency_bits: AtomicU64,
    pub latency_at_us: AtomicU64,
    pub latency_samples: AtomicU64,
    /// `bylatency`: the last sample taken (bits of an f64), and when the member last got a
    /// probe (monotonic microseconds).
    pub last_sample_bits: AtomicU64,
    pub probe_us: AtomicU64,
}

/// One httpd child process: the owner of a row of in-flight contributions.
#[repr(C, align(64))]
pub struct ProcessSlot {
    /// The child's pid; 0 while the slot is free.
    pub pid: AtomicU32,
}

// SAFETY: all are repr(C) structs of atomics; all-zero is a valid value for each.
unsafe impl ShmSafe for Header {}
unsafe impl ShmSafe for BalancerSlot {}
unsafe impl ShmSafe for Turns {}
unsafe impl ShmSafe for BalancerEvents {}
unsafe impl ShmSafe for MemberSlot {}
unsafe impl ShmSafe for ProcessSlot {}
unsafe impl ShmSafe for AtomicI32 {}

/// Changes with every layout change, so that a new build never adopts an old build's segment
/// across a graceful restart.
pub const MAGIC: u64 = u64::from_le_bytes(*b"lbrs\0v06");

const _: () = assert!(size_of::<Header>().is_multiple_of(64));
const _: () = assert!(size_of::<BalancerSlot>() == 3 * 64);
const _: () = assert!(size_of::<MemberSlot>().is_multiple_of(64));
const _: () = assert!(size_of::<ProcessSlot>().is_multiple_of(64));

/// What survives a graceful restart that needs a new segment (totals and the latency
/// estimate), read out of one member slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberTotals {
    pub peak_inflight: i64,
    pub selected: u64,
    pub completed: u64,
    pub failed: u64,
    pub handed_over: u64,
    pub latency_bits: u64,
    pub latency_at_us: u64,
    pub latency_samples: u64,
}

impl MemberSlot {
    pub fn totals(&self) -> MemberTotals {
        MemberTotals {
            peak_inflight: self.peak_inflight.load(Ordering::Relaxed),
            selected: self.selected.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            handed_over: self.handed_over.load(Ordering::Relaxed),
            latency_bits: self.latency_bits.load(Ordering::Relaxed),
            latency_at_us: self.latency_at_us.load(Ordering::Relaxed),
            latency_samples: self.latency_samples.load(Ordering::Relaxed),
        }
    }

    /// Carries totals over from the previous generation's slot for the same member.
    pub fn restore(&self, totals: MemberTotals) {
        self.peak_inflight.store(totals.peak_inflight, Ordering::Relaxed);
        self.selected.store(totals.selected, Ordering::Relaxed);
        self.completed.store(totals.completed, Ordering::Relaxed);
        self.failed.store(totals.failed, Ordering::Relaxed);
        self.handed_over.store(totals.handed_over, Ordering::Relaxed);
        self.latency_bits.store(totals.latency_bits, Ordering::Relaxed);
        self.latency_at_us.store(totals.latency_at_us, Ordering::Relaxed);
        self.latency_samples.store(totals.latency_samples, Ordering::Relaxed);
    }

    /// Makes the slot a new member's (httpd put another member in this worker slot): forgets
    /// the previous member's name key, totals, latency estimate and slow-start state. Attempts
    /// the previous generation's children still have in flight here finish here: they stay
    /// counted as `selected`, so the totals keep adding up.
    pub fn reset_identity(&self) {
        let inflight = self.inflight.load(Ordering::Acquire).max(0);
        self.key.store(0, Ordering::Relaxed);
        self.restore(MemberTotals {
            selected: inflight as u64,
            peak_inflight: inflight,
            ..MemberTotals::default()
        });
        self.down.store(0, Ordering::Relaxed);
        self.ramp_start_us.store(0, Ordering::Relaxed);
        self.last_sample_bits.store(0, Ordering::Relaxed);
    }

    /// Counts the start of one attempt on this member. `mine` is this process's own count for
    /// the member, which lets the parent take back what a killed process never released.
    pub fn begin_attempt(&self, mine: Option<&AtomicI32>) {
        let now = self.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        self.started(now, mine);
    }

    /// Like [`MemberSlot::begin_attempt`], but only while fewer than `cap` attempts are in
    /// flight: the check and the increment are one atomic step, so no number of processes can
    /// push the member past its cap. False when the member is full.
    pub fn try_begin_attempt(&self, cap: u64, mine: Option<&AtomicI32>) -> bool {
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let reserved =
            self.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1));
        match reserved {
            Ok(before) => {
                self.started(before + 1, mine);
                true
            }
            Err(_) => false,
        }
    }

    fn started(&self, now: i64, mine: Option<&AtomicI32>) {
        if let Some(mine) = mine {
            mine.fetch_add(1, Ordering::AcqRel);
        }
        self.selected.fetch_add(1, Ordering::Relaxed);
        self.peak_inflight.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts the end of one attempt begun with `begin_attempt` (same `mine`).
    pub fn end_attempt(&self, failed: bool, mine: Option<&AtomicI32>) {
        if let Some(mine) = mine {
            mine.fetch_sub(1, Ordering::AcqRel);
        }
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// In-flight count as methods see it (never below zero).
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Acquire).max(0) as u64
    }

    /// Records whether the member is usable now; a member seen unusable that is usable again
    /// starts its slow-start ramp at `now_us`. Cheap when nothing changes (loads only).
    pub fn observe(&self, usable: bool, now_us: u64) {
        if !usable {
            if self.down.load(Ordering::Relaxed) == 0 {
                self.down.store(1, Ordering::Relaxed);
            }
        } else if self.down.load(Ordering::Relaxed) == 1
            && self.down.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.ramp_start_us.store(now_us.max(1), Ordering::Release);
        }
    }

    /// When the current slow-start ramp began (monotonic microseconds), if one ever did.
    pub fn ramp_start(&self) -> Option<u64> {
        Some(self.ramp_start_us.load(Ordering::Acquire)).filter(|&t| t != 0)
    }
}
