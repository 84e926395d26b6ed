//! The slots that live in shared memory: plain `#[repr(C)]` structs of atomics, no pointers.
//!
//! Every httpd process of a generation maps the same bytes, so everything here is read and
//! written only through atomic operations (lock-free atomics are address-free: they work across
//! processes on a shared mapping). A slot is a whole number of cache lines so that two members'
//! hot counters never share one.

pub use super::discovery::Discovery;
pub use super::queue::{Place, Ring};
use std::sync::atomic::{AtomicU32, AtomicU64};

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
    /// Moves of an exited process's counts into the members' kept totals, begun and ended: a
    /// reader of totals reads again when they differ or moved meanwhile (a sequence lock that
    /// several reapers may hold at once).
    pub retirements_begun: AtomicU64,
    pub retirements_ended: AtomicU64,
    /// When a process last began and last finished looking for dead siblings holding places
    /// (monotonic microseconds; `shm::attempt::mark_dead_holders`), and how many process slots
    /// are marked [`DEAD`] now.
    pub holders_checked_us: AtomicU64,
    pub holders_done_us: AtomicU64,
    pub dead_marked: AtomicU32,
    /// Bumped by the parent at every start and restart that uses this segment (and on a
    /// segment it replaces): a process of an older generation sees it differ from its own.
    pub generation: AtomicU32,
    /// `LBDiscover`'s resolver lease (`shm::discovery::hold_lease`): the pid that resolves,
    /// its generation, and until when (monotonic seconds, 16 bits).
    pub resolver: AtomicU64,
}

/// One balancer (one `<Proxy balancer://...>` in one virtual host). Six cache lines: what is
/// set once when the slot is claimed and then only read, what every pick in every process
/// writes, counters of rare events, and its waiting line (`LBQueue`); so that the picks' writes
/// never evict what every pick reads.
#[repr(C, align(64))]
pub struct BalancerSlot {
    /// Hash of the balancer's httpd-wide unique name; 0 while the slot is free.
    pub key: AtomicU64,
    /// Hash of the names the status page and the metrics label it with (its virtual host and
    /// its name), which match it with its slot in the next segment (`shm::carry_over`).
    pub label_key: AtomicU64,
    /// Where this balancer's member slots start and how many there are.
    pub member_base: AtomicU32,
    pub member_slots: AtomicU32,
    pub turns: Turns,
    pub events: BalancerEvents,
    pub queue: QueueCounters,
}

/// A balancer's waiting line (`shm::queue` has the rules): its tickets, and what it has seen.
#[repr(C, align(64))]
pub struct QueueCounters {
    /// The next ticket, and the oldest ticket not yet given a place.
    pub tail: AtomicU64,
    pub head: AtomicU64,
    /// Requests waiting now (joined, not yet served, timed out or gone: granted ones included),
    /// and the most at once.
    pub waiting: AtomicU32,
    pub peak: AtomicU32,
    /// Grants made while no ticket waited but granted ones had not picked yet (at most
    /// `waiting`): one is taken by a granted request that finds no place.
    pub spare: AtomicU32,
    pub joined: AtomicU64,
    pub served: AtomicU64,
    pub timed_out: AtomicU64,
    pub gone: AtomicU64,
    /// Refused at once: `max` were waiting.
    pub full: AtomicU64,
    /// Waits that ended: total and longest (microseconds), and per bucket of
    /// `shm::queue::WAIT_BUCKETS_US`.
    pub wait_total_us: AtomicU64,
    pub wait_max_us: AtomicU64,
    pub wait_buckets: [AtomicU64; 6],
}

/// The counters every pick moves on.
#[repr(C, align(64))]
pub struct Turns {
    /// `byweight`: the next ticket. One shared counter makes the schedule exact across processes.
    pub ticket: AtomicU64,
    /// Where the next tie-break or draw starts, so that equal members take turns (and
    /// `bylatency`'s pick number).
    pub rotation: AtomicU64,
    /// `bylatency`: when a pick last looked for members due for a probe.
    pub probe_look_us: AtomicU64,
}

/// Counts of what happens to a request only now and then.
#[repr(C, align(64))]
pub struct BalancerEvents {
    /// Requests refused because every usable member was at its `LBMaxInflight` cap.
    pub shed: AtomicU64,
    /// `byhash`: requests that went past an eligible member of their key because it was at
    /// the load bound (or its cap).
    pub diverted: AtomicU64,
    /// Outlier detection (`methods::outlier`): when the balancer's members are next reviewed
    /// (monotonic microseconds), until when a review in progress holds the balancer (0: none;
    /// a later time than now: another process may not review), when the success-rate window
    /// began, how many members have an ejection set (0: no pick needs to look at any
    /// member's), and whether a member asked for a review at the next pick (1).
    pub review_at_us: AtomicU64,
    pub review_held_until_us: AtomicU64,
    pub window_start_us: AtomicU64,
    pub ejected: AtomicU32,
    pub review_wanted: AtomicU32,
}

/// One balancer member (a `BalancerMember`), indexed by httpd's own worker slot index. Four
/// cache lines, by who writes them: every attempt's start and end (and every pick reads it),
/// `bylatency`'s estimate (written as attempts end), what changes only now and then, and
/// outlier detection's record (read by every pick while a member is ejected).
#[repr(C, align(64))]
pub struct MemberSlot {
    pub load: Load,
    pub latency: Latency,
    pub life: Life,
    pub health: Health,
}

/// The member's attempts in flight, the one count every pick reads (`shm::attempt` keeps it).
#[repr(C, align(64))]
pub struct Load {
    /// Attempts in flight now, across all processes (low 32 bits), and how many times the
    /// count has changed (high 32 bits, wrapping), which lets the parent recount it without a
    /// lock (`shm::attempt::audit`).
    pub word: AtomicU64,
    /// The highest count seen.
    pub peak: AtomicU64,
    /// Attempts in flight that the member has not answered yet (no first byte), when that
    /// number last rose from 0, and when the member last answered one (monotonic
    /// microseconds): how long it has kept requests waiting without answering any, which
    /// `bylatency` reads as slowness before the answers come (`shm::attempt::unanswered_for`).
    /// A count a killed process leaves too high is lowered when the parent reaps it.
    pub waiting: AtomicU64,
    pub waiting_since_us: AtomicU64,
    pub answered_us: AtomicU64,
}

/// `bylatency`'s estimate; the rule that updates it is `methods::bylatency`'s.
#[repr(C, align(64))]
pub struct Latency {
    /// The estimate in microseconds (bits of an f64; 0: none yet), when it last changed
    /// (monotonic microseconds), and how many samples it has taken.
    pub bits: AtomicU64,
    pub at_us: AtomicU64,
    pub samples: AtomicU64,
    /// The last sample taken (bits of an f64).
    pub last_sample_bits: AtomicU64,
    /// When the member last got a probe (monotonic microseconds), and the balancer's pick
    /// number then.
    pub probe_us: AtomicU64,
    pub probe_pick: AtomicU64,
}

/// What changes only now and then: the member's identity, its slow start, and the totals that
/// are no longer in any live process's row.
#[repr(C, align(64))]
pub struct Life {
    /// Hash of the member's name; 0 until a process first sees the member.
    pub key: AtomicU64,
    /// Slow start: when the member last became usable again (monotonic microseconds; 0: never).
    pub ramp_start_us: AtomicU64,
    /// Slow start: 1 while some process has seen the member unusable since its last ramp.
    pub down: AtomicU32,
    /// 1 while its in-flight count waits for a recount (`shm::attempt::audit`).
    pub audit_due: AtomicU32,
    /// Attempts of processes that have exited, and of earlier segments (a graceful restart
    /// that made a new segment): selected, completed and failed. Written by the parent alone.
    pub kept_selected: AtomicU64,
    pub kept_completed: AtomicU64,
    pub kept_failed: AtomicU64,
    /// Attempts in flight when a graceful restart moved the counters to a new segment: the
    /// previous generation's children finish them there. With it, `selected` is exactly
    /// `completed + failed + handed_over + inflight` at rest.
    pub handed_over: AtomicU64,
}

/// [`Health::due`]'s bits.
pub const DUE_STREAK: u32 = 1;
pub const DUE_RATE: u32 = 2;

/// Outlier detection's record of a member (`methods::outlier` has the rule).
#[repr(C, align(64))]
pub struct Health {
    /// Failed attempts in a row, across all processes; a success sets it back to 0.
    pub consecutive: AtomicU32,
    /// Bit 0 ([`DUE_STREAK`]): `consecutive` reached the threshold, until a review decides
    /// on it. Bit 1 ([`DUE_RATE`]): the last success-rate evaluation found the member an
    /// outlier (a second one in a row ejects it).
    pub due: AtomicU32,
    /// Ejected until then (monotonic microseconds; 0: not ejected), and why
    /// (`methods::outlier::Why` as a number).
    pub ejected_until_us: AtomicU64,
    pub reason: AtomicU32,
    /// Ejections that followed each other without a long enough healthy spell: each one
    /// doubles the next one's length.
    pub level: AtomicU32,
    /// Ejections so far.
    pub ejections: AtomicU64,
    /// When it last came back from an ejection, and last succeeded (monotonic microseconds;
    /// the latter written at most once a millisecond).
    pub returned_us: AtomicU64,
    pub succeeded_us: AtomicU64,
    /// The success-rate window: attempts and failures since it began.
    pub window_attempts: AtomicU64,
    pub window_failures: AtomicU64,
}

/// One httpd child process: the owner of a row of counts.
#[repr(C, align(64))]
pub struct ProcessSlot {
    /// The child's pid; 0 while the slot is free. [`DEAD`] is added when another child finds
    /// the process dead before httpd's parent has reaped it.
    pub pid: AtomicU32,
}

/// Added to [`ProcessSlot::pid`] to mark a process found dead and not reaped yet (pids stay
/// below 2^22 on Linux).
pub const DEAD: u32 = 1 << 31;

/// One process's counts for one member, written by that process alone (and, once it has
/// exited, by the parent that takes them back). `shm::attempt` says how they move.
#[repr(C)]
pub struct Cell {
    /// This process's attempts in flight on the member (low 32 bits), and how many of its
    /// threads are between the first and the last step of starting or ending one (high 32 bits).
    pub open: AtomicU64,
    pub selected: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

/// Marks the segment's slot types (`repr(C)` structs of atomics, all-zero a valid value).
macro_rules! shm_safe {
    ($($slot:ty),+) => {
        // SAFETY: each is a repr(C) struct of atomics (and of such structs), for which all-zero
        // is a valid value.
        $(unsafe impl ShmSafe for $slot {})+
    };
}

shm_safe!(Header, BalancerSlot, MemberSlot, ProcessSlot, Cell, Place, Ring, Discovery);

/// Changes with every layout change, so that a new build never adopts an old build's segment
/// across a graceful restart.
pub const MAGIC: u64 = u64::from_le_bytes(*b"lbrs\0v13");

// docs/sizing.md's segment formula counts these sizes.
const _: () = assert!(size_of::<Header>() == 128);
const _: () = assert!(size_of::<Discovery>() == 17216);
const _: () = assert!(size_of::<BalancerSlot>() == 6 * 64);
const _: () = assert!(size_of::<Place>() == 16);
const _: () = assert!(size_of::<MemberSlot>() == 4 * 64);
const _: () = assert!(size_of::<Cell>() == 32);
const _: () = assert!(size_of::<ProcessSlot>().is_multiple_of(64));
