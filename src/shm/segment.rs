//! The shared segment: one anonymous shared mapping made by the httpd parent before it forks,
//! so every child of the generation inherits the same bytes at the same address.
//!
//! Layout: `Header`, then `balancers` x `BalancerSlot`, `members` x `MemberSlot`, `processes` x
//! `ProcessSlot`, and one row of counts (a `Cell` per member slot) per process slot, plus one
//! more row shared by processes that found the table full; then each balancer's waiting line
//! (a `Ring` of places, `shm::queue`), whose pages stay untouched until a request waits;
//! then each balancer's `LBDiscover` record (`shm::discovery`), untouched unless it discovers.
//!
//! Balancers configured at startup get their slots in the parent (`claim_balancer` before any
//! fork); a balancer first seen at run time claims a spare slot lock-free, so two processes that
//! race for the same balancer end up sharing one slot.
//!
//! Each child claims a process slot and counts its attempts on every member in its row;
//! `shm::attempt` says how, and how the parent takes back what a killed child left.

use super::layout::{BalancerSlot, Cell, DEAD, Discovery, Header, MAGIC, MemberSlot, ProcessSlot, ShmSafe};
use super::queue::{Queue, Ring};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

/// The size of a segment, in slots of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub balancers: u32,
    pub members: u32,
    pub processes: u32,
}

impl Capacity {
    /// Cells per row, rounded up to whole cache lines.
    fn row(&self) -> usize {
        (self.members as usize).next_multiple_of(64 / size_of::<Cell>())
    }

    /// Rows: one per process slot, and the shared one.
    fn rows(&self) -> usize {
        self.processes as usize + 1
    }

    fn balancers_at(&self) -> usize {
        size_of::<Header>()
    }

    fn members_at(&self) -> usize {
        self.balancers_at() + self.balancers as usize * size_of::<BalancerSlot>()
    }

    fn processes_at(&self) -> usize {
        self.members_at() + self.members as usize * size_of::<MemberSlot>()
    }

    fn rows_at(&self) -> usize {
        self.processes_at() + self.processes as usize * size_of::<ProcessSlot>()
    }

    fn places_at(&self) -> usize {
        self.rows_at() + self.rows() * self.row() * size_of::<Cell>()
    }

    fn discoveries_at(&self) -> usize {
        self.places_at() + self.balancers as usize * size_of::<Ring>()
    }

    /// Bytes needed.
    pub fn bytes(&self) -> usize {
        self.discoveries_at() + self.balancers as usize * size_of::<Discovery>()
    }
}

/// A mapped segment. Copies are views of the same mapping; nothing is unmapped on drop, because
/// the parent hands the mapping to every child and keeps it across restarts (see `unmap`).
#[derive(Clone, Copy)]
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
    capacity: Capacity,
}

// SAFETY: the mapping holds only atomics (ShmSafe types) and is never unmapped while views are
// used, so sharing views between threads is as safe as sharing the atomics themselves.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    /// Maps a new zeroed segment shared with every process forked after this call.
    pub fn create(capacity: Capacity) -> io::Result<Segment> {
        let len = capacity.bytes();
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let segment = Segment { base, len, capacity };
        let header = segment.header();
        header.balancer_slots.store(capacity.balancers, Ordering::Relaxed);
        header.member_slots.store(capacity.members, Ordering::Relaxed);
        header.process_slots.store(capacity.processes, Ordering::Relaxed);
        header.magic.store(MAGIC, Ordering::Release);
        Ok(segment)
    }

    /// Re-attaches to a segment made by [`Segment::create`] in this process (or its parent).
    ///
    /// # Safety
    /// `base`/`len` must describe a live mapping returned by `create` and not yet unmapped.
    pub unsafe fn from_raw(base: NonNull<u8>, len: usize) -> Option<Segment> {
        if len < size_of::<Header>() {
            return None;
        }
        // SAFETY: the caller promises a live mapping at least a header long.
        let header = unsafe { &*base.as_ptr().cast::<Header>() };
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return None;
        }
        let capacity = Capacity {
            balancers: header.balancer_slots.load(Ordering::Relaxed),
            members: header.member_slots.load(Ordering::Relaxed),
            processes: header.process_slots.load(Ordering::Relaxed),
        };
        (capacity.bytes() == len).then_some(Segment { base, len, capacity })
    }

    pub fn as_raw(&self) -> (NonNull<u8>, usize) {
        (self.base, self.len)
    }

    /// Removes this process's mapping. Other processes keep theirs.
    ///
    /// # Safety
    /// No view of this segment may be used in this process afterwards.
    pub unsafe fn unmap(self) {
        // SAFETY: base/len came from mmap; the caller promises no further use.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }

    pub fn header(&self) -> &Header {
        self.nth::<Header>(0, 0, 1).expect("a segment starts with its header")
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    pub fn balancer(&self, slot: usize) -> Option<&BalancerSlot> {
        self.nth(self.capacity.balancers_at(), slot, self.capacity.balancers as usize)
    }

    /// The waiting line of `balancer` (a slot of this segment).
    pub fn queue<'a>(&'a self, balancer: &'a BalancerSlot) -> Option<Queue<'a>> {
        let slot = self.balancer_slot_of(balancer)?;
        let ring = self.nth::<Ring>(self.capacity.places_at(), slot, self.capacity.balancers as usize)?;
        Some(Queue::new(&balancer.queue, ring))
    }

    /// `LBDiscover`'s record of `balancer` (a slot of this segment).
    pub fn discovery(&self, balancer: &BalancerSlot) -> Option<&Discovery> {
        let slot = self.balancer_slot_of(balancer)?;
        self.nth::<Discovery>(self.capacity.discoveries_at(), slot, self.capacity.balancers as usize)
    }

    /// The index of `balancer`, a slot of this segment.
    fn balancer_slot_of(&self, balancer: &BalancerSlot) -> Option<usize> {
        let first = self.balancer(0)? as *const BalancerSlot as usize;
        let offset = (balancer as *const BalancerSlot as usize).checked_sub(first)?;
        let slot = offset / size_of::<BalancerSlot>();
        (offset.is_multiple_of(size_of::<BalancerSlot>()) && slot < self.capacity.balancers as usize)
            .then_some(slot)
    }

    /// Every balancer slot's waiting line.
    pub fn queues(&self) -> impl Iterator<Item = Queue<'_>> + '_ {
        self.balancers_with_queues().map(|(_, queue)| queue)
    }

    /// Every balancer slot, with its waiting line.
    pub fn balancers_with_queues(&self) -> impl Iterator<Item = (&BalancerSlot, Queue<'_>)> + '_ {
        (0..self.capacity.balancers as usize).filter_map(|slot| {
            let balancer = self.balancer(slot)?;
            Some((balancer, self.queue(balancer)?))
        })
    }

    /// Whether member slot `member` is one of `balancer`'s.
    pub fn holds_member(&self, balancer: &BalancerSlot, member: usize) -> bool {
        let base = balancer.member_base.load(Ordering::Acquire) as usize;
        let count = balancer.member_slots.load(Ordering::Acquire) as usize;
        (base..base + count).contains(&member)
    }

    pub fn member(&self, slot: usize) -> Option<&MemberSlot> {
        self.nth(self.capacity.members_at(), slot, self.capacity.members as usize)
    }

    /// The member slot for httpd worker index `worker_index` of `balancer`.
    pub fn member_of(&self, balancer: &BalancerSlot, worker_index: usize) -> Option<&MemberSlot> {
        self.member(self.member_index(balancer, worker_index)?)
    }

    /// The segment-wide index of the member slot for worker `worker_index` of `balancer`.
    pub fn member_index(&self, balancer: &BalancerSlot, worker_index: usize) -> Option<usize> {
        let base = balancer.member_base.load(Ordering::Acquire) as usize;
        let count = balancer.member_slots.load(Ordering::Acquire) as usize;
        let index = base + worker_index;
        (worker_index < count && index < self.capacity.members as usize).then_some(index)
    }

    /// Finds the balancer slot holding `key`, or claims a free one and gives it
    /// `member_slots` member slots. Lock-free; concurrent claims of one key agree on one slot.
    /// Returns `None` when the table is full (a balancer that finds the member pool exhausted
    /// gets a slot with no members: it is balanced without counters rather than refused).
    pub fn claim_balancer(&self, key: u64, member_slots: u32) -> Option<usize> {
        debug_assert_ne!(key, 0, "key 0 marks a free slot");
        let count = self.capacity.balancers as usize;
        let start = (key % count.max(1) as u64) as usize;
        for probe in 0..count {
            let slot = (start + probe) % count;
            let balancer = self.balancer(slot)?;
            match balancer.key.compare_exchange(0, CLAIMING, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let next_free = &self.header().next_free_member;
                    let base = next_free.fetch_add(member_slots, Ordering::AcqRel);
                    let fits = base.checked_add(member_slots).is_some_and(|end| end <= self.capacity.members);
                    let (base, slots) = if fits { (base, member_slots) } else { (0, 0) };
                    balancer.member_base.store(base, Ordering::Relaxed);
                    balancer.member_slots.store(slots, Ordering::Relaxed);
                    balancer.key.store(key, Ordering::Release);
                    return Some(slot);
                }
                Err(found) if found == key => return Some(slot),
                Err(CLAIMING) => {
                    // Another process is filling this slot in; it takes nanoseconds.
                    match wait_while_claiming(balancer) {
                        settled if settled == key => return Some(slot),
                        CLAIMING => return None,
                        _ => {}
                    }
                }
                Err(_) => {}
            }
        }
        None
    }

    /// The balancer slot holding `key`, if any.
    pub fn find_balancer(&self, key: u64) -> Option<usize> {
        let count = self.capacity.balancers as usize;
        let start = (key % count.max(1) as u64) as usize;
        (0..count)
            .map(|probe| (start + probe) % count)
            .find(|&slot| self.balancer(slot).is_some_and(|b| b.key.load(Ordering::Acquire) == key))
    }

    /// The balancer slot labelled `label_key` (its virtual host and name), if exactly one is.
    pub fn find_by_label(&self, label_key: u64) -> Option<usize> {
        let mut found = (0..self.capacity.balancers as usize).filter(|&slot| {
            self.balancer(slot).is_some_and(|b| b.label_key.load(Ordering::Relaxed) == label_key)
        });
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    pub(super) fn process(&self, slot: usize) -> Option<&ProcessSlot> {
        self.nth(self.capacity.processes_at(), slot, self.capacity.processes as usize)
    }

    /// Row `row`'s counts for member slot `member`. Rows `0..processes` belong to the process
    /// slots; row `processes` ([`Segment::shared_row`]) is shared.
    pub(super) fn cell(&self, row: usize, member: usize) -> Option<&Cell> {
        if member >= self.capacity.members as usize {
            return None;
        }
        let cells = self.capacity.rows() * self.capacity.row();
        self.nth(self.capacity.rows_at(), row.checked_mul(self.capacity.row())? + member, cells)
    }

    /// The row of processes that found no free process slot: shared, so what one of them
    /// leaves when it is killed cannot be told from the others' counts.
    pub fn shared_row(&self) -> usize {
        self.capacity.processes as usize
    }

    /// Rows that may hold counts: those of claimed process slots, and the shared row. A free
    /// slot's row is all zeros (the parent clears it before freeing the slot) and is skipped
    /// without being read, so that pages no process ever used stay untouched.
    pub(super) fn rows_in_use(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.capacity.processes as usize)
            .filter(|&slot| self.process(slot).is_some_and(|p| p.pid.load(Ordering::SeqCst) != 0))
            .chain(std::iter::once(self.shared_row()))
    }

    /// Gives process `pid` a process slot (its own, if it has one already), whose row is all
    /// zeros. `None` when all are taken: the process then counts in the shared row.
    pub fn claim_process(&self, pid: u32) -> Option<usize> {
        if pid == 0 || pid & DEAD != 0 {
            return None;
        }
        // Its own slot, as it holds it (not one marked dead under a pid that is now this
        // process's: that was another process, whose counts are not this one's).
        let own = (0..self.capacity.processes as usize)
            .find(|&slot| self.process(slot).is_some_and(|p| p.pid.load(Ordering::SeqCst) == pid));
        own.or_else(|| {
            (0..self.capacity.processes as usize).find(|&slot| {
                self.process(slot).is_some_and(|p| {
                    p.pid.compare_exchange(0, pid, Ordering::SeqCst, Ordering::Relaxed).is_ok()
                })
            })
        })
    }

    pub(super) fn find_process(&self, pid: u32) -> Option<usize> {
        (0..self.capacity.processes as usize)
            .find(|&slot| self.process(slot).is_some_and(|p| p.pid.load(Ordering::SeqCst) & !DEAD == pid))
    }

    /// The pids of the claimed process slots, and whether each is marked dead.
    pub(super) fn process_states(&self) -> impl Iterator<Item = (usize, u32, bool)> + '_ {
        (0..self.capacity.processes as usize).filter_map(|slot| {
            let word = self.process(slot)?.pid.load(Ordering::SeqCst);
            (word != 0).then_some((slot, word & !DEAD, word & DEAD != 0))
        })
    }

    /// The pids of the claimed process slots.
    pub fn processes(&self) -> impl Iterator<Item = u32> + '_ {
        self.process_states().map(|(_, pid, _)| pid)
    }

    /// Value `index` of the `count` values of `T` that [`Capacity`] lays out from `start`.
    fn nth<T: ShmSafe>(&self, start: usize, index: usize, count: usize) -> Option<&T> {
        if index >= count {
            return None;
        }
        let offset = start + index * size_of::<T>();
        debug_assert!(offset + size_of::<T>() <= self.len && offset.is_multiple_of(align_of::<T>()));
        // SAFETY: in bounds, since the capacity the mapping was sized by lays out `count` of them
        // from `start`; aligned, since every region starts on a cache line and each T is a whole
        // number of its alignment; and T is ShmSafe, so any bytes there (zero, or written
        // through atomics by any process) are a valid T.
        Some(unsafe { &*self.base.as_ptr().add(offset).cast::<T>() })
    }
}

/// Marks a balancer slot being filled in by a claimer. Real keys never take this value.
const CLAIMING: u64 = u64::MAX;

fn wait_while_claiming(balancer: &BalancerSlot) -> u64 {
    for _ in 0..100_000 {
        let key = balancer.key.load(Ordering::Acquire);
        if key != CLAIMING {
            return key;
        }
        std::hint::spin_loop();
    }
    CLAIMING
}

/// 64-bit FNV-1a of `bytes`: fast, stable across builds and processes, and good enough for
/// names and hash keys (callers that need better mixing mix its result).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// [`fnv1a`] of a name, as the key of its slot: never 0 (a free slot) and never the `CLAIMING`
/// marker.
pub fn name_key(name: &[u8]) -> u64 {
    match fnv1a(name) {
        0 => 1,
        CLAIMING => CLAIMING - 1,
        other => other,
    }
}
