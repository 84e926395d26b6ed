//! Shared memory: the state every httpd process of a generation reads and writes.
//!
//! - [`layout`]: the slots, plain `#[repr(C)]` structs of atomics;
//! - [`segment`]: the mapping that holds them, and the process table that lets the parent take
//!   back what a killed child had in flight;
//! - [`restart`]: what a graceful restart keeps.

mod layout;
mod restart;
mod segment;

pub use layout::{BalancerSlot, MemberSlot};
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
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn seg(balancers: u32, members: u32) -> Segment {
        Segment::create(Capacity { balancers, members, processes: 4 }).unwrap()
    }

    #[test]
    fn claimed_balancers_get_disjoint_member_ranges() {
        let seg = seg(4, 20);
        let a = seg.claim_balancer(name_key(b"a"), 8).unwrap();
        let b = seg.claim_balancer(name_key(b"b"), 8).unwrap();
        assert_ne!(a, b);
        assert_eq!(seg.claim_balancer(name_key(b"a"), 8), Some(a), "same key, same slot");
        let (ba, bb) = (seg.balancer(a).unwrap(), seg.balancer(b).unwrap());
        assert_eq!(ba.member_base.load(Relaxed), 0);
        assert_eq!(bb.member_base.load(Relaxed), 8);
        // The pool has 4 member slots left: a third balancer asking for 8 gets a slot but no
        // members (it is then balanced without counters rather than refused).
        let c = seg.claim_balancer(name_key(b"c"), 8).unwrap();
        assert_eq!(seg.balancer(c).unwrap().member_slots.load(Relaxed), 0);
        assert!(seg.member_of(seg.balancer(c).unwrap(), 0).is_none());
        assert!(seg.member_of(ba, 7).is_some());
        assert!(seg.member_of(ba, 8).is_none());
        unsafe { seg.unmap() };
    }

    #[test]
    fn concurrent_claims_of_one_key_agree() {
        let seg = seg(16, 16 * 4);
        let slots: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| seg.claim_balancer(name_key(b"balancer://x"), 4).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "{slots:?}");
        assert_eq!(seg.header().next_free_member.load(Relaxed), 4, "members allocated once");
        unsafe { seg.unmap() };
    }

    #[test]
    fn counters_are_exact_under_threads() {
        let seg = seg(1, 2);
        let b = seg.balancer(seg.claim_balancer(7, 2).unwrap()).unwrap();
        let member = seg.member_of(b, 1).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for i in 0..20_000 {
                        member.begin_attempt(None);
                        b.turns.ticket.fetch_add(1, Relaxed);
                        member.end_attempt(i % 10 == 0, None);
                    }
                });
            }
        });
        assert_eq!(member.inflight.load(Relaxed), 0);
        assert_eq!(member.selected.load(Relaxed), 160_000);
        assert_eq!(member.completed.load(Relaxed) + member.failed.load(Relaxed), 160_000);
        assert_eq!(member.failed.load(Relaxed), 16_000);
        assert_eq!(b.turns.ticket.load(Relaxed), 160_000);
        assert!((1..=8).contains(&member.peak_inflight.load(Relaxed)));
        unsafe { seg.unmap() };
    }

    #[test]
    fn counters_are_exact_across_forked_processes() {
        let seg = seg(1, 1);
        let b = seg.balancer(seg.claim_balancer(9, 1).unwrap()).unwrap();
        let member = seg.member_of(b, 0).unwrap();
        const CHILDREN: usize = 4;
        const ROUNDS: u64 = 50_000;
        let mut pids = Vec::new();
        for _ in 0..CHILDREN {
            // SAFETY: the child only touches atomics in the shared mapping, then _exits.
            match unsafe { libc::fork() } {
                0 => {
                    for _ in 0..ROUNDS {
                        member.begin_attempt(None);
                        b.turns.ticket.fetch_add(1, Relaxed);
                        member.end_attempt(false, None);
                    }
                    unsafe { libc::_exit(0) };
                }
                -1 => panic!("fork failed"),
                pid => pids.push(pid),
            }
        }
        for pid in pids {
            let mut status = 0;
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        let total = CHILDREN as u64 * ROUNDS;
        assert_eq!(b.turns.ticket.load(Relaxed), total, "no ticket lost between processes");
        assert_eq!(member.selected.load(Relaxed), total);
        assert_eq!(member.completed.load(Relaxed), total);
        assert_eq!(member.inflight.load(Relaxed), 0);
        unsafe { seg.unmap() };
    }

    #[test]
    fn carry_over_keeps_totals_by_name_not_position() {
        let old = seg(2, 4);
        let ob = old.balancer(old.claim_balancer(name_key(b"bal"), 2).unwrap()).unwrap();
        let (m0, m1) = (old.member_of(ob, 0).unwrap(), old.member_of(ob, 1).unwrap());
        m0.key.store(name_key(b"http://a"), Relaxed);
        m1.key.store(name_key(b"http://b"), Relaxed);
        for _ in 0..3 {
            m1.begin_attempt(None);
        }
        m1.end_attempt(false, None);
        ob.turns.ticket.store(42, Relaxed);
        ob.events.shed.store(7, Relaxed);
        ob.events.diverted.store(5, Relaxed);

        // New generation: another balancer first, and the members in the other order.
        let new = seg(2, 6);
        new.claim_balancer(name_key(b"other"), 2).unwrap();
        let nb = new.balancer(new.claim_balancer(name_key(b"bal"), 2).unwrap()).unwrap();
        new.member_of(nb, 0).unwrap().key.store(name_key(b"http://b"), Relaxed);
        new.member_of(nb, 1).unwrap().key.store(name_key(b"http://a"), Relaxed);
        carry_over(&old, &new);

        let b = new.member_of(nb, 0).unwrap();
        assert_eq!(b.selected.load(Relaxed), 3);
        assert_eq!(b.completed.load(Relaxed), 1);
        assert_eq!(b.inflight.load(Relaxed), 0, "in-flight stays with the old generation");
        assert_eq!(b.handed_over.load(Relaxed), 2, "and is counted as handed over");
        assert_eq!(new.member_of(nb, 1).unwrap().selected.load(Relaxed), 0);
        assert_eq!(nb.turns.ticket.load(Relaxed), 42);
        assert_eq!(nb.events.shed.load(Relaxed), 7, "shed counts never go back across a restart");
        assert_eq!(nb.events.diverted.load(Relaxed), 5);
        unsafe {
            old.unmap();
            new.unmap();
        }
    }

    fn plan(key: &[u8], members: u32, names: &[&[u8]]) -> BalancerPlan {
        BalancerPlan {
            key: name_key(key),
            members,
            member_keys: names.iter().enumerate().map(|(i, n)| (i as u32, name_key(n))).collect(),
        }
    }

    #[test]
    fn an_unchanged_configuration_reuses_the_segment() {
        let seg = seg(4, 16);
        let first = vec![plan(b"p1_app", 4, &[b"a", b"b"]), plan(b"p1_api", 4, &[b"x"])];
        let slots = place(&seg, &first).unwrap();
        seg.balancer(slots[0]).unwrap().turns.ticket.store(99, Relaxed);

        // Same balancers, in another order, with a member added at a growth slot: reused.
        let second = vec![plan(b"p1_api", 4, &[b"x"]), plan(b"p1_app", 4, &[b"a", b"b", b"c"])];
        assert_eq!(reuse(&seg, &second, 4), Some(vec![slots[1], slots[0]]));
        assert_eq!(seg.balancer(slots[0]).unwrap().turns.ticket.load(Relaxed), 99);
        let app = seg.balancer(slots[0]).unwrap();
        assert_eq!(seg.member_of(app, 2).unwrap().key.load(Relaxed), name_key(b"c"));

        // "c" was added at run time in slot 2 and served; the next generation's configuration
        // does not have it: the slot forgets it, so the next member added there starts afresh.
        let c = seg.member_of(app, 2).unwrap();
        c.begin_attempt(None);
        c.end_attempt(false, None);
        c.observe(false, 10);
        c.latency_bits.store(5_000f64.to_bits(), Relaxed);
        assert!(reuse(&seg, &first, 4).is_some());
        assert_eq!((c.key.load(Relaxed), c.selected.load(Relaxed), c.completed.load(Relaxed)), (0, 0, 0));
        assert_eq!((c.latency_bits.load(Relaxed), c.down.load(Relaxed)), (0, 0));

        // A new balancer, a resized one, or a member moved into another's slot: not reused.
        let added = vec![plan(b"p1_app", 4, &[b"a", b"b"]), plan(b"p1_new", 4, &[])];
        assert_eq!(reuse(&seg, &added, 4), None);
        assert_eq!(reuse(&seg, &[plan(b"p1_app", 8, &[b"a", b"b"])], 4), None);
        assert_eq!(reuse(&seg, &[plan(b"p1_app", 4, &[b"b", b"a"])], 4), None);
        assert_eq!(reuse(&seg, &[plan(b"p1_app", 4, &[b"a", b"b"])], 5), None, "more processes");
        unsafe { seg.unmap() };
    }

    #[test]
    fn a_cap_is_never_exceeded_by_racing_processes() {
        let seg = seg(1, 1);
        let b = seg.balancer(seg.claim_balancer(3, 1).unwrap()).unwrap();
        let member = seg.member_of(b, 0).unwrap();
        let mut pids = Vec::new();
        for _ in 0..4 {
            // SAFETY: the child only touches atomics in the shared mapping, then _exits.
            match unsafe { libc::fork() } {
                0 => {
                    for _ in 0..20_000 {
                        if member.try_begin_attempt(3, None) {
                            let now = member.inflight.load(Relaxed);
                            member.end_attempt(false, None);
                            if now > 3 {
                                unsafe { libc::_exit(1) };
                            }
                        }
                    }
                    unsafe { libc::_exit(0) };
                }
                -1 => panic!("fork failed"),
                pid => pids.push(pid),
            }
        }
        for pid in pids {
            let mut status = 0;
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "a process saw more than 3");
        }
        assert_eq!(member.inflight.load(Relaxed), 0);
        assert!(member.peak_inflight.load(Relaxed) <= 3);
        unsafe { seg.unmap() };
    }

    #[test]
    fn a_killed_process_gives_back_its_attempts_when_reaped() {
        let seg = seg(1, 2);
        let b = seg.balancer(seg.claim_balancer(5, 2).unwrap()).unwrap();
        let (m0, m1) = (seg.member_index(b, 0).unwrap(), seg.member_index(b, 1).unwrap());
        let (member0, member1) = (seg.member(m0).unwrap(), seg.member(m1).unwrap());
        // The parent process itself holds one attempt that must survive the reaping of others.
        let me = seg.claim_process(std::process::id()).unwrap();
        member0.begin_attempt(seg.contribution(me, m0));

        // SAFETY: the child only touches atomics in the shared mapping, then blocks until killed.
        let child = match unsafe { libc::fork() } {
            0 => {
                let pid = unsafe { libc::getpid() } as u32;
                let slot = seg.claim_process(pid).unwrap_or(usize::MAX);
                for _ in 0..3 {
                    member0.begin_attempt(seg.contribution(slot, m0));
                }
                member1.begin_attempt(seg.contribution(slot, m1));
                member1.begin_attempt(seg.contribution(slot, m1));
                member1.end_attempt(false, seg.contribution(slot, m1));
                seg.header().next_free_member.fetch_add(1000, Relaxed); // "ready"
                loop {
                    unsafe { libc::pause() };
                }
            }
            -1 => panic!("fork failed"),
            pid => pid,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seg.header().next_free_member.load(Relaxed) < 1000 {
            assert!(std::time::Instant::now() < deadline, "child never got ready");
            std::thread::yield_now();
        }
        assert_eq!((member0.inflight(), member1.inflight()), (4, 1));
        unsafe { libc::kill(child, libc::SIGKILL) };
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);

        assert_eq!(seg.reap_process(child as u32), 4);
        assert_eq!(member0.failed.load(Relaxed), 3, "the killed child's attempts failed");
        assert_eq!((member0.inflight(), member1.inflight()), (1, 0), "only the parent's attempt is left");
        assert_eq!(seg.reap_process(child as u32), 0, "reaping twice takes nothing more");
        assert!(seg.claim_process(child as u32 + 1_000_000).is_some(), "its slot is free again");
        member0.end_attempt(false, seg.contribution(me, m0));
        assert_eq!(member0.inflight(), 0);
        unsafe { seg.unmap() };
    }

    #[test]
    fn slow_start_begins_when_a_member_seen_down_is_usable_again() {
        let seg = seg(1, 1);
        let member = seg.member(0).unwrap();
        member.observe(true, 100);
        assert_eq!(member.ramp_start(), None, "usable from the start: no ramp");
        member.observe(false, 200);
        member.observe(false, 300);
        member.observe(true, 400);
        assert_eq!(member.ramp_start(), Some(400));
        member.observe(true, 500);
        assert_eq!(member.ramp_start(), Some(400), "one ramp per return");
        unsafe { seg.unmap() };
    }

    #[test]
    fn reattach_checks_magic_and_size() {
        let seg = seg(2, 3);
        let (base, len) = seg.as_raw();
        assert!(unsafe { Segment::from_raw(base, len) }.is_some());
        assert!(unsafe { Segment::from_raw(base, len - 64) }.is_none());
        unsafe { seg.unmap() };
    }
}
