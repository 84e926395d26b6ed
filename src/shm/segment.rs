//! The shared segment: one anonymous shared mapping made by the httpd parent before it forks,
//! so every child of the generation inherits the same bytes at the same address.
//!
//! Layout: `Header`, then `balancer_slots` x `BalancerSlot`, then `member_slots` x `MemberSlot`.
//! Balancers configured at startup get their slots in the parent (`claim_balancer` before any
//! fork); a balancer first seen at run time claims a spare slot lock-free, so two processes that
//! race for the same balancer end up sharing one slot.

use super::layout::{BalancerSlot, Header, MAGIC, MemberSlot, ShmSafe};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

/// A mapped segment. Copies are views of the same mapping; nothing is unmapped on drop, because
/// the parent hands the mapping to every child and keeps it across restarts (see `unmap`).
#[derive(Clone, Copy)]
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
    balancer_slots: u32,
    member_slots: u32,
}

// SAFETY: the mapping holds only atomics (ShmSafe types) and is never unmapped while views are
// used, so sharing views between threads is as safe as sharing the atomics themselves.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    /// Bytes needed for the given numbers of slots.
    pub fn size_for(balancer_slots: u32, member_slots: u32) -> usize {
        size_of::<Header>()
            + balancer_slots as usize * size_of::<BalancerSlot>()
            + member_slots as usize * size_of::<MemberSlot>()
    }

    /// Maps a new zeroed segment shared with every process forked after this call.
    pub fn create(balancer_slots: u32, member_slots: u32) -> io::Result<Segment> {
        let len = Self::size_for(balancer_slots, member_slots);
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
        let segment = Segment {
            base,
            len,
            balancer_slots,
            member_slots,
        };
        let header = segment.header();
        header
            .balancer_slots
            .store(balancer_slots, Ordering::Relaxed);
        header.member_slots.store(member_slots, Ordering::Relaxed);
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
        let balancer_slots = header.balancer_slots.load(Ordering::Relaxed);
        let member_slots = header.member_slots.load(Ordering::Relaxed);
        (Self::size_for(balancer_slots, member_slots) == len).then_some(Segment {
            base,
            len,
            balancer_slots,
            member_slots,
        })
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
        // SAFETY: offset 0 of a live mapping at least a header long.
        unsafe { self.at::<Header>(0) }
    }

    pub fn balancer_slots(&self) -> u32 {
        self.balancer_slots
    }

    pub fn member_slots(&self) -> u32 {
        self.member_slots
    }

    pub fn balancer(&self, slot: usize) -> Option<&BalancerSlot> {
        if slot >= self.balancer_slots as usize {
            return None;
        }
        let offset = size_of::<Header>() + slot * size_of::<BalancerSlot>();
        // SAFETY: in bounds (checked above) and aligned (slots are whole cache lines).
        Some(unsafe { self.at::<BalancerSlot>(offset) })
    }

    pub fn member(&self, slot: usize) -> Option<&MemberSlot> {
        if slot >= self.member_slots as usize {
            return None;
        }
        let offset = size_of::<Header>()
            + self.balancer_slots as usize * size_of::<BalancerSlot>()
            + slot * size_of::<MemberSlot>();
        // SAFETY: in bounds (checked above) and aligned (slots are whole cache lines).
        Some(unsafe { self.at::<MemberSlot>(offset) })
    }

    /// The member slot for httpd worker index `worker_index` of the balancer in `balancer_slot`.
    pub fn member_of(&self, balancer: &BalancerSlot, worker_index: usize) -> Option<&MemberSlot> {
        let base = balancer.member_base.load(Ordering::Acquire) as usize;
        let count = balancer.member_slots.load(Ordering::Acquire) as usize;
        if worker_index >= count {
            return None;
        }
        self.member(base + worker_index)
    }

    /// Finds the balancer slot holding `key`, or claims a free one and gives it
    /// `member_slots` member slots. Lock-free; concurrent claims of one key agree on one slot.
    /// Returns `None` when the table or the member pool is full.
    pub fn claim_balancer(&self, key: u64, member_slots: u32) -> Option<usize> {
        debug_assert_ne!(key, 0, "key 0 marks a free slot");
        let count = self.balancer_slots as usize;
        let start = (key % count.max(1) as u64) as usize;
        for probe in 0..count {
            let slot = (start + probe) % count;
            let balancer = self.balancer(slot)?;
            match balancer
                .key
                .compare_exchange(0, CLAIMING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let header = self.header();
                    let base = header
                        .next_free_member
                        .fetch_add(member_slots, Ordering::AcqRel);
                    let fits = base
                        .checked_add(member_slots)
                        .is_some_and(|end| end <= self.member_slots);
                    let (base, slots) = if fits { (base, member_slots) } else { (0, 0) };
                    balancer.member_base.store(base, Ordering::Relaxed);
                    balancer.member_slots.store(slots, Ordering::Relaxed);
                    balancer.key.store(key, Ordering::Release);
                    return Some(slot);
                }
                Err(found) if found == key => return Some(slot),
                Err(CLAIMING) => {
                    // Another process is filling this slot in; it takes nanoseconds.
                    let settled = wait_while_claiming(balancer);
                    if settled == key {
                        return Some(slot);
                    }
                    if settled == CLAIMING {
                        return None;
                    }
                }
                Err(_) => {}
            }
        }
        None
    }

    /// The balancer slot holding `key`, if any.
    pub fn find_balancer(&self, key: u64) -> Option<usize> {
        let count = self.balancer_slots as usize;
        let start = (key % count.max(1) as u64) as usize;
        (0..count)
            .map(|probe| (start + probe) % count)
            .find(|&slot| {
                self.balancer(slot)
                    .is_some_and(|b| b.key.load(Ordering::Acquire) == key)
            })
    }

    /// # Safety
    /// `offset` must be in bounds and aligned for `T`.
    unsafe fn at<T: ShmSafe>(&self, offset: usize) -> &T {
        debug_assert!(offset + size_of::<T>() <= self.len);
        // SAFETY: per the caller; T is ShmSafe, so any bytes there (zero or written through
        // atomics) are a valid T.
        unsafe { &*self.base.as_ptr().add(offset).cast::<T>() }
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

/// FNV-1a, 64 bits: a stable hash for names (the same in every process and every build), never
/// 0 and never the `CLAIMING` marker.
pub fn name_key(name: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in name {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    match hash {
        0 => 1,
        CLAIMING => CLAIMING - 1,
        other => other,
    }
}
