//! `LBDiscover`'s shared record of a balancer: for each of its `LBDiscover` lines, what the
//! last lookups said, and every member a name has given it with where it stands. Written by
//! the one process that resolves (it holds the lease in the segment's header), read by every
//! process's status page, and by the parent at a graceful restart (the last good answer,
//! when the name does not resolve then).
//!
//! A balancer slot's record lies after the waiting lines (`Segment::discovery`); its pages
//! stay untouched unless the balancer discovers members.

use super::layout::Header;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// `LBDiscover` lines per balancer.
pub const LINES: usize = 4;
/// Members a balancer's names may give it, drained and removed ones included.
pub const MEMBERS: usize = 512;
const ERROR_WORDS: usize = 12;

/// One balancer's record.
#[repr(C, align(64))]
pub struct Discovery {
    /// Entries of `members` in use.
    pub known: AtomicU32,
    pub lines: [Line; LINES],
    pub members: [Discovered; MEMBERS],
}

/// What one `LBDiscover` line's lookups said. Times are seconds since the Unix epoch.
#[repr(C, align(64))]
pub struct Line {
    /// [`name_key`](super::name_key) of the line's URL as written; 0: unused.
    pub key: AtomicU64,
    pub lookups: AtomicU64,
    pub failures: AtomicU64,
    /// Failed lookups since the last good one.
    pub failing: AtomicU32,
    /// Addresses in the last good answer, and its TTL.
    pub answer: AtomicU32,
    pub ttl: AtomicU32,
    pub resolved_s: AtomicU64,
    pub next_s: AtomicU64,
    pub added: AtomicU64,
    pub drained: AtomicU64,
    pub removed: AtomicU64,
    pub returned: AtomicU64,
    /// The last failure's message (UTF-8, NUL-padded).
    error: [AtomicU64; ERROR_WORDS],
}

/// A member a name gave the balancer.
#[repr(C)]
pub struct Discovered {
    /// Bits 0-7: the `LBDiscover` line; 8-15: its [`Standing`]; 32-63: httpd's worker index +1
    /// (0: the entry is being written).
    word: AtomicU64,
    address: [AtomicU64; 2],
    /// Bits 0-15: port; 16-31: loadfactor x 100; 32-47: lbset; 48: IPv4.
    target: AtomicU64,
}

/// Where a discovered member stands (as `discover::Standing`, in numbers).
pub const SERVING: u8 = 0;
pub const DRAINING: u8 = 1;
pub const REMOVED: u8 = 2;

/// A [`Discovered`] entry, read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub line: u8,
    pub standing: u8,
    pub worker: u32,
    pub address: IpAddr,
    pub port: u16,
    pub loadfactor: u32,
    pub lbset: i32,
}

impl Discovery {
    /// The entries written so far.
    pub fn entries(&self) -> impl Iterator<Item = (usize, Entry)> + '_ {
        let known = (self.known.load(Ordering::Acquire) as usize).min(MEMBERS);
        (0..known).filter_map(|i| Some((i, self.members[i].read()?)))
    }

    /// The entry of httpd worker `worker`: the first one serving it, else the first one.
    pub fn of_worker(&self, worker: u32) -> Option<Entry> {
        let mine = || self.entries().map(|(_, e)| e).filter(|e| e.worker == worker);
        mine().find(|e| e.standing == SERVING).or_else(|| mine().next())
    }

    /// Records a new member; `None` when the record is full. One writer (the lease holder).
    pub fn push(&self, entry: Entry) -> Option<usize> {
        let i = self.known.load(Ordering::Acquire) as usize;
        let slot = self.members.get(i)?;
        slot.write(entry);
        self.known.store(i as u32 + 1, Ordering::Release);
        Some(i)
    }

    /// Rewrites entry `i`.
    pub fn set(&self, i: usize, entry: Entry) {
        if let Some(slot) = self.members.get(i) {
            slot.write(entry);
        }
    }

    /// Forgets every entry (a new segment's record is filled from httpd's members).
    pub fn clear(&self) {
        self.known.store(0, Ordering::Release);
    }
}

impl Discovered {
    fn read(&self) -> Option<Entry> {
        let word = self.word.load(Ordering::Acquire);
        let worker = (word >> 32) as u32;
        if worker == 0 {
            return None;
        }
        let target = self.target.load(Ordering::Relaxed);
        let high = self.address[0].load(Ordering::Relaxed);
        let low = self.address[1].load(Ordering::Relaxed);
        let v6 = Ipv6Addr::from((u128::from(high) << 64) | u128::from(low));
        let address =
            if target & (1 << 48) != 0 { IpAddr::V4(Ipv4Addr::from(low as u32)) } else { IpAddr::V6(v6) };
        Some(Entry {
            line: word as u8,
            standing: (word >> 8) as u8,
            worker: worker - 1,
            address,
            port: target as u16,
            loadfactor: (target >> 16) as u16 as u32,
            lbset: (target >> 32) as u16 as i32,
        })
    }

    fn write(&self, entry: Entry) {
        let (bits, v4) = match entry.address {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 1u64),
            IpAddr::V6(v6) => (u128::from(v6), 0),
        };
        self.address[0].store((bits >> 64) as u64, Ordering::Relaxed);
        self.address[1].store(bits as u64, Ordering::Relaxed);
        let target = u64::from(entry.port)
            | u64::from(entry.loadfactor.min(u32::from(u16::MAX))) << 16
            | u64::from(entry.lbset.clamp(0, i32::from(u16::MAX)) as u16) << 32
            | v4 << 48;
        self.target.store(target, Ordering::Relaxed);
        let word = u64::from(entry.line) | u64::from(entry.standing) << 8 | u64::from(entry.worker + 1) << 32;
        self.word.store(word, Ordering::Release);
    }
}

impl Line {
    /// The last failure's message ("" when none was recorded).
    pub fn error(&self) -> String {
        let bytes: Vec<u8> =
            self.error.iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    /// Records a failure's message (cut to fit, on a character boundary).
    pub fn set_error(&self, message: &str) {
        let mut cut = message.len().min(ERROR_WORDS * 8);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut bytes = [0u8; ERROR_WORDS * 8];
        bytes[..cut].copy_from_slice(&message.as_bytes()[..cut]);
        for (word, chunk) in self.error.iter().zip(bytes.chunks_exact(8)) {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(chunk);
            word.store(u64::from_le_bytes(eight), Ordering::Relaxed);
        }
    }
}

/// A line's totals and last answer's facts, as kept across a graceful restart that makes a
/// new segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineTotals {
    pub lookups: u64,
    pub failures: u64,
    pub resolved_s: u64,
    pub added: u64,
    pub drained: u64,
    pub removed: u64,
    pub returned: u64,
    pub answer: u32,
    pub ttl: u32,
}

impl LineTotals {
    pub fn read(line: &Line) -> LineTotals {
        LineTotals {
            lookups: line.lookups.load(Ordering::Relaxed),
            failures: line.failures.load(Ordering::Relaxed),
            resolved_s: line.resolved_s.load(Ordering::Relaxed),
            added: line.added.load(Ordering::Relaxed),
            drained: line.drained.load(Ordering::Relaxed),
            removed: line.removed.load(Ordering::Relaxed),
            returned: line.returned.load(Ordering::Relaxed),
            answer: line.answer.load(Ordering::Relaxed),
            ttl: line.ttl.load(Ordering::Relaxed),
        }
    }

    pub fn write(&self, line: &Line) {
        line.lookups.store(self.lookups, Ordering::Relaxed);
        line.failures.store(self.failures, Ordering::Relaxed);
        line.resolved_s.store(self.resolved_s, Ordering::Relaxed);
        line.added.store(self.added, Ordering::Relaxed);
        line.drained.store(self.drained, Ordering::Relaxed);
        line.removed.store(self.removed, Ordering::Relaxed);
        line.returned.store(self.returned, Ordering::Relaxed);
        line.answer.store(self.answer, Ordering::Relaxed);
        line.ttl.store(self.ttl, Ordering::Relaxed);
        line.failing.store(0, Ordering::Relaxed);
        line.set_error("");
    }
}

/// How long a resolver's lease lasts without being renewed (seconds): its holder renews it
/// four times a second (lookups run in threads of their own).
pub const LEASE_S: u64 = 5;

/// Takes or renews the segment's resolver lease for `pid` of generation `generation` at
/// monotonic second `now_s`: true while this process is the one that resolves. The lease
/// passes to another process when its holder stops renewing it (killed, hung, or exited), or
/// at once when `holder_gone` says its holder no longer exists, or belongs to an older
/// generation.
pub fn hold_lease(
    header: &Header,
    pid: u32,
    generation: u32,
    now_s: u64,
    holder_gone: impl Fn(u32) -> bool,
) -> bool {
    let lease = &header.resolver;
    let word = lease.load(Ordering::Acquire);
    let (holder, holder_generation, until) = (word as u32, (word >> 32) as u16, word >> 48);
    let mine = holder == pid && holder_generation == generation as u16;
    // Seconds are kept in 16 bits: compared modulo 2^16, with a lease far shorter than that.
    let expired = (now_s as u16).wrapping_sub(until as u16) < u16::MAX / 2 && (now_s as u16) != until as u16;
    let newer = (generation as u16).wrapping_sub(holder_generation) as i16 > 0;
    let free = match () {
        _ if holder == 0 => true,
        // A holder of another generation: a newer one takes over at once, an older one never.
        _ if holder_generation != generation as u16 => newer,
        _ => expired || (!mine && holder_gone(holder)),
    };
    if !mine && !free {
        return false;
    }
    let renewed = u64::from(pid) | u64::from(generation as u16) << 32 | ((now_s + LEASE_S) & 0xffff) << 48;
    lease.compare_exchange(word, renewed, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// The pid holding the resolver lease, if any.
pub fn lease_holder(header: &Header) -> Option<u32> {
    Some(header.resolver.load(Ordering::Acquire) as u32).filter(|&pid| pid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::Capacity;
    use crate::shm::testing::Mapped;

    #[test]
    fn entries_read_back_as_written() {
        let segment = Mapped::new(Capacity { balancers: 1, members: 1, processes: 1 });
        let balancer = segment.balancer(0).unwrap();
        let discovery = segment.discovery(balancer).unwrap();
        assert_eq!(discovery.entries().count(), 0);
        let v4 = Entry {
            line: 1,
            standing: SERVING,
            worker: 7,
            address: "127.0.0.3".parse().unwrap(),
            port: 8080,
            loadfactor: 250,
            lbset: 2,
        };
        let v6 = Entry { address: "::1".parse().unwrap(), port: 443, worker: 0, standing: DRAINING, ..v4 };
        assert_eq!(discovery.push(v4), Some(0));
        assert_eq!(discovery.push(v6), Some(1));
        assert_eq!(discovery.entries().map(|(_, e)| e).collect::<Vec<_>>(), vec![v4, v6]);
        assert_eq!(discovery.of_worker(0), Some(v6));
        discovery.set(0, Entry { standing: REMOVED, ..v4 });
        assert_eq!(discovery.of_worker(7).map(|e| e.standing), Some(REMOVED));
        let line = &discovery.lines[0];
        line.set_error("192.0.2.1:53: no answer in time — é");
        assert_eq!(line.error(), "192.0.2.1:53: no answer in time — é");
        line.set_error(&"x".repeat(200));
        assert_eq!(line.error().len(), 96);
    }

    #[test]
    fn one_process_holds_the_lease_until_it_stops_renewing() {
        let segment = Mapped::new(Capacity { balancers: 1, members: 1, processes: 1 });
        let header = segment.header();
        let alive = |_| false;
        assert!(hold_lease(header, 100, 3, 1000, alive));
        assert!(!hold_lease(header, 200, 3, 1001, alive), "held by 100");
        assert!(hold_lease(header, 100, 3, 1003, alive), "renewed");
        assert!(!hold_lease(header, 200, 3, 1007, alive));
        assert!(hold_lease(header, 200, 3, 1009, alive), "expired: 100 stopped renewing");
        assert!(hold_lease(header, 300, 3, 1009, |pid| pid == 200), "its holder is gone");
        assert!(hold_lease(header, 400, 4, 1009, alive), "a new generation takes it at once");
        assert!(!hold_lease(header, 300, 3, 1010, alive), "an old generation never takes it back");
        assert_eq!(lease_holder(header), Some(400));
    }
}
