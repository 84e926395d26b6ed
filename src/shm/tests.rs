//! The shared segment's guarantees, on real shared mappings and real forked processes: exact
//! counts across threads and processes, the cap, slot claims, and what a graceful restart
//! keeps. The kill tests are in `attempt_kills.rs`.

use super::attempt::{self, Totals, totals};
use super::testing::{Child, Mapped};
use super::*;
use std::sync::atomic::Ordering::Relaxed;

pub fn seg(balancers: u32, members: u32) -> Mapped {
    Mapped::new(Capacity { balancers, members, processes: 4 })
}

/// `selected = completed + failed + handed_over + inflight`.
pub fn adds_up(t: &Totals) -> bool {
    t.selected == t.completed + t.failed + t.handed_over + t.inflight
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
}

#[test]
fn counters_are_exact_under_threads() {
    let seg = seg(1, 2);
    let b = seg.balancer(seg.claim_balancer(7, 2).unwrap()).unwrap();
    let member = seg.member_index(b, 1).unwrap();
    let counts = Counts::new(*seg, seg.claim_process(4242));
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for i in 0..20_000 {
                    let attempt = counts.begin(member, u64::MAX).unwrap();
                    b.turns.ticket.fetch_add(1, Relaxed);
                    attempt.end(if i % 10 == 0 { Outcome::Failed } else { Outcome::Completed });
                }
            });
        }
    });
    let t = totals(&seg, member);
    assert_eq!((t.inflight, t.selected, t.completed, t.failed), (0, 160_000, 144_000, 16_000));
    assert_eq!(b.turns.ticket.load(Relaxed), 160_000);
    assert!((1..=8).contains(&t.peak_inflight), "{t:?}");
}

/// Forks `children` processes that each run `body` with their own counts, waits for them to
/// exit with 0, and reaps them as httpd's parent does.
pub fn in_children(seg: &Segment, children: usize, body: impl Fn(Counts) -> i32 + Copy) {
    let mut forked: Vec<Child> =
        (0..children).map(|_| Child::fork(|pid| body(Counts::new(*seg, seg.claim_process(pid))))).collect();
    for child in &mut forked {
        assert_eq!(child.wait(), Some(0), "a child failed");
        attempt::reap(seg, child.pid());
    }
}

#[test]
fn counters_are_exact_across_forked_processes() {
    let seg = seg(1, 1);
    let b = seg.balancer(seg.claim_balancer(9, 1).unwrap()).unwrap();
    in_children(&seg, 4, |counts| {
        for _ in 0..50_000 {
            let attempt = counts.begin(0, u64::MAX).unwrap();
            b.turns.ticket.fetch_add(1, Relaxed);
            attempt.end(Outcome::Completed);
        }
        0
    });
    assert_eq!(b.turns.ticket.load(Relaxed), 200_000, "no ticket lost between processes");
    let t = totals(&seg, 0);
    assert_eq!((t.selected, t.completed, t.inflight), (200_000, 200_000, 0));
    assert_eq!(seg.processes().count(), 0, "every slot freed when its process was reaped");
}

#[test]
fn a_cap_is_never_exceeded_by_racing_processes() {
    let seg = seg(1, 1);
    seg.claim_balancer(3, 1).unwrap();
    in_children(&seg, 4, |counts| {
        for _ in 0..20_000 {
            if let Some(attempt) = counts.begin(0, 3) {
                let now = attempt::inflight(&seg, 0);
                attempt.end(Outcome::Completed);
                if now > 3 {
                    return 1;
                }
            }
        }
        0
    });
    let t = totals(&seg, 0);
    assert_eq!(t.inflight, 0);
    assert!(t.peak_inflight <= 3, "{t:?}");
    assert_eq!(t.selected, t.completed, "refusals count nothing");
}

#[test]
fn a_refused_start_leaves_nothing_behind() {
    let seg = seg(1, 1);
    let counts = Counts::new(*seg, seg.claim_process(5));
    let held = counts.begin(0, 1).unwrap();
    assert!(counts.begin(0, 1).is_none(), "full at 1");
    assert!(counts.begin(0, 0).is_none());
    let cell = seg.cell(0, 0).unwrap();
    assert_eq!(cell.open.load(Relaxed), 1, "one attempt open, no thread pending");
    held.end(Outcome::Completed);
    assert_eq!(cell.open.load(Relaxed), 0);
}

#[test]
fn a_process_without_a_slot_counts_in_the_shared_row() {
    let seg = Mapped::new(Capacity { balancers: 1, members: 1, processes: 1 });
    let first = Counts::new(*seg, seg.claim_process(10));
    let second = seg.claim_process(11);
    assert_eq!(second, None, "the table is full");
    let second = Counts::new(*seg, second);
    let (a, b) = (first.begin(0, u64::MAX).unwrap(), second.begin(0, u64::MAX).unwrap());
    assert_eq!(totals(&seg, 0).selected, 2);
    a.end(Outcome::Completed);
    b.end(Outcome::Failed);
    let t = totals(&seg, 0);
    assert_eq!((t.inflight, t.completed, t.failed), (0, 1, 1));
    assert!(adds_up(&t));
}

fn plan(key: &[u8], members: u32, names: &[&[u8]]) -> BalancerPlan {
    BalancerPlan {
        key: name_key(key),
        label_key: name_key(&[b"label:", key].concat()),
        members,
        member_keys: names.iter().enumerate().map(|(i, n)| (i as u32, name_key(n))).collect(),
    }
}

/// Runs `n` attempts that complete (and `failed` that fail) on member slot `member`.
fn serve(counts: &Counts, member: usize, n: u64, failed: u64) {
    for i in 0..n + failed {
        let attempt = counts.begin(member, u64::MAX).unwrap();
        attempt.end(if i < n { Outcome::Completed } else { Outcome::Failed });
    }
}

#[test]
fn carry_over_keeps_totals_by_name_not_position() {
    let old = seg(2, 4);
    let slots = place(&old, &[plan(b"bal", 2, &[b"http://a", b"http://b"])]).unwrap();
    let ob = old.balancer(slots[0]).unwrap();
    let counts = Counts::new(*old, old.claim_process(1));
    let m1 = old.member_index(ob, 1).unwrap();
    serve(&counts, m1, 1, 0);
    let held: Vec<Attempt> = (0..2).map(|_| counts.begin(m1, u64::MAX).unwrap()).collect();
    ob.turns.ticket.store(42, Relaxed);
    ob.events.shed.store(7, Relaxed);
    ob.events.diverted.store(5, Relaxed);

    // New generation: another balancer first, and the members in the other order.
    let new = seg(2, 6);
    let slots = place(&new, &[plan(b"other", 2, &[]), plan(b"bal", 2, &[b"http://b", b"http://a"])]).unwrap();
    carry_over(&old, &new);
    let nb = new.balancer(slots[1]).unwrap();
    let b = totals(&new, new.member_index(nb, 0).unwrap());
    assert_eq!((b.selected, b.completed, b.inflight), (3, 1, 0), "in-flight stays with the old generation");
    assert_eq!(b.handed_over, 2, "and is counted as handed over");
    assert!(adds_up(&b));
    assert_eq!(totals(&new, new.member_index(nb, 1).unwrap()).selected, 0);
    assert_eq!(nb.turns.ticket.load(Relaxed), 42);
    assert_eq!(nb.events.shed.load(Relaxed), 7, "shed counts never go back across a restart");
    assert_eq!(nb.events.diverted.load(Relaxed), 5);
    held.into_iter().for_each(|a| a.end(Outcome::Completed));
}

/// httpd renames a balancer when its virtual host is renamed, or when an alias makes two
/// virtual hosts' short ids collide: the totals follow the labels the metrics use.
#[test]
fn carry_over_follows_the_labels_when_httpd_renames_a_balancer() {
    let old = seg(1, 2);
    let mut before = plan(b"p1a2b3_app", 2, &[b"http://a"]);
    before.label_key = name_key(b"www.example.com:80 balancer://app");
    let slots = place(&old, std::slice::from_ref(&before)).unwrap();
    let counts = Counts::new(*old, old.claim_process(1));
    serve(&counts, old.member_index(old.balancer(slots[0]).unwrap(), 0).unwrap(), 5, 1);

    let new = seg(1, 2);
    let after = BalancerPlan { key: name_key(b"p9f8e7_app"), ..before };
    let slots = place(&new, &[after]).unwrap();
    carry_over(&old, &new);
    let t = totals(&new, new.member_index(new.balancer(slots[0]).unwrap(), 0).unwrap());
    assert_eq!((t.selected, t.completed, t.failed), (6, 5, 1));
}

/// A graceful restart that makes a new segment while the old generation's children keep
/// starting and ending attempts: every new segment starts with its totals adding up.
#[test]
fn carry_over_under_load_starts_exact() {
    use std::sync::atomic::AtomicBool;
    let old = seg(1, 1);
    let the_plan = [plan(b"bal", 1, &[b"http://a"])];
    place(&old, &the_plan).unwrap();
    let stop = AtomicBool::new(false);
    let counts = Counts::new(*old, old.claim_process(1));
    let mut broken = 0;
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    let attempt = counts.begin(0, u64::MAX).unwrap();
                    i += 1;
                    attempt.end(if i.is_multiple_of(7) { Outcome::Failed } else { Outcome::Completed });
                }
            });
        }
        for _ in 0..200 {
            let new = seg(1, 1);
            place(&new, &the_plan).unwrap();
            carry_over(&old, &new);
            if !adds_up(&totals(&new, 0)) {
                broken += 1;
            }
        }
        stop.store(true, Relaxed);
    });
    assert_eq!(broken, 0, "new segments that started with their totals not adding up, of 200");
}

#[test]
fn an_unchanged_configuration_reuses_the_segment() {
    let seg = seg(4, 16);
    let first = vec![plan(b"p1_app", 4, &[b"a", b"b"]), plan(b"p1_api", 4, &[b"x"])];
    let slots = place(&seg, &first).unwrap();
    seg.balancer(slots[0]).unwrap().turns.ticket.store(99, Relaxed);

    // Same balancers, in another order, with a member that httpd's persisted state brought
    // back at a growth slot: reused.
    let second = vec![plan(b"p1_api", 4, &[b"x"]), plan(b"p1_app", 4, &[b"a", b"b", b"c"])];
    assert_eq!(reuse(&seg, &second, 4), Some(vec![slots[1], slots[0]]));
    assert_eq!(seg.balancer(slots[0]).unwrap().turns.ticket.load(Relaxed), 99);
    let app = seg.balancer(slots[0]).unwrap();
    assert_eq!(seg.member_of(app, 2).unwrap().life.key.load(Relaxed), name_key(b"c"));

    // "c" is not in the next configuration: its slot would change hands while old children
    // may still count there, so the segment is not reused (the totals are carried over).
    assert_eq!(reuse(&seg, &first, 4), None);

    // A new balancer, a resized one, or a member moved into another's slot: not reused.
    let added = vec![plan(b"p1_app", 4, &[b"a", b"b", b"c"]), plan(b"p1_new", 4, &[])];
    assert_eq!(reuse(&seg, &added, 4), None);
    assert_eq!(reuse(&seg, &[plan(b"p1_app", 8, &[b"a", b"b", b"c"])], 4), None);
    assert_eq!(reuse(&seg, &[plan(b"p1_app", 4, &[b"b", b"a", b"c"])], 4), None);
    assert_eq!(reuse(&seg, &[plan(b"p1_app", 4, &[b"a", b"b", b"c"])], 5), None, "more processes");
    assert!(reuse(&seg, &[plan(b"p1_app", 4, &[b"a", b"b", b"c"])], 4).is_some());
}

#[test]
fn reattach_checks_magic_and_size() {
    let seg = seg(2, 3);
    let (base, len) = seg.as_raw();
    // SAFETY: the test's own live segment (and a shorter length of it).
    assert!(unsafe { Segment::from_raw(base, len) }.is_some());
    assert!(unsafe { Segment::from_raw(base, len - 64) }.is_none());
}

#[test]
fn what_picks_read_is_apart_from_what_ends_write() {
    use std::mem::offset_of;
    assert_eq!(offset_of!(MemberSlot, load), 0);
    assert_eq!(offset_of!(MemberSlot, latency), 64);
    assert_eq!(offset_of!(MemberSlot, life), 128);
    assert_eq!(size_of::<MemberSlot>(), 256);
}
