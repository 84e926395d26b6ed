//! What a graceful restart keeps: the previous generation's segment when the balancers are the
//! same, else the totals carried over by name into a new one.

use super::attempt::totals;
use super::{MemberSlot, Segment};
use std::sync::atomic::Ordering;

/// What the configuration needs from the segment for one balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancerPlan {
    /// [`name_key`](super::name_key) of the balancer's httpd-wide unique name (httpd's `sname`).
    pub key: u64,
    /// [`name_key`](super::name_key) of what the status page and the metrics label it with
    /// (its virtual host and its name), by which a new segment finds its totals.
    pub label_key: u64,
    /// Member slots: httpd's `max_workers` (configured members plus `growth=`).
    pub members: u32,
    /// (httpd worker index, [`name_key`](super::name_key) of the member name) for each member
    /// httpd has at startup.
    pub member_keys: Vec<(u32, u64)>,
}

/// Places `plan` in a segment that already holds it: the segment of the previous generation,
/// after a graceful restart that changed no balancer. Reusing it keeps every counter exact
/// across the restart, in-flight counts and the `byweight` ticket included, because the old
/// generation's children keep writing the same slots. Returns the slots in plan order, or
/// `None` (and changes nothing) if any balancer is new or resized, if any member slot would
/// change hands (a member in another member's slot, or a slot that held a member added at run
/// time which the new configuration does not have: its old children may still be counting
/// there), or if httpd may now run more processes than the segment has slots for.
pub fn reuse(segment: &Segment, plan: &[BalancerPlan], processes: u32) -> Option<Vec<usize>> {
    if segment.capacity().processes < processes {
        return None;
    }
    let mut slots = Vec::with_capacity(plan.len());
    for balancer in plan {
        let slot = segment.find_balancer(balancer.key)?;
        let shared = segment.balancer(slot)?;
        if shared.member_slots.load(Ordering::Acquire) != balancer.members {
            return None;
        }
        for index in 0..balancer.members {
            let held = segment.member_of(shared, index as usize)?.life.key.load(Ordering::Relaxed);
            let wanted = balancer.member_keys.iter().find(|&&(i, _)| i == index).map(|&(_, key)| key);
            if held != 0 && Some(held) != wanted {
                return None;
            }
        }
        slots.push(slot);
    }
    name_members(segment, plan, &slots);
    Some(slots)
}

/// Places `plan` in a fresh segment: claims a slot per balancer. Returns the slots in plan
/// order, or `None` if the segment is too small.
pub fn place(segment: &Segment, plan: &[BalancerPlan]) -> Option<Vec<usize>> {
    let slots = plan
        .iter()
        .map(|balancer| segment.claim_balancer(balancer.key, balancer.members))
        .collect::<Option<Vec<usize>>>()?;
    name_members(segment, plan, &slots);
    Some(slots)
}

/// Names each balancer's slot by its labels and each member's slot by its name.
fn name_members(segment: &Segment, plan: &[BalancerPlan], slots: &[usize]) {
    for (balancer, &slot) in plan.iter().zip(slots) {
        let Some(shared) = segment.balancer(slot) else {
            continue;
        };
        shared.label_key.store(balancer.label_key, Ordering::Relaxed);
        for &(index, key) in &balancer.member_keys {
            if let Some(member) = segment.member_of(shared, index as usize) {
                member.life.key.store(key, Ordering::Relaxed);
            }
        }
    }
}

/// When the previous segment cannot be reused, copies what should survive a graceful restart
/// into the new segment (each member's totals, peak and latency estimate; each balancer's shed
/// and diverted counts, waiting line totals and `byweight` ticket), matching balancers by their labels (by httpd's
/// name where two share labels) and members by name. Every count the status page and the
/// metrics call a total so never goes back across a graceful restart, not even when httpd
/// renames the balancer inside (a virtual host renamed, or one whose name now collides).
///
/// In-flight counts are not copied: the previous generation's children still hold those
/// attempts and end them in the old segment. The new segment counts them as `handed_over`,
/// computed from one reading of the totals so that `selected = completed + failed +
/// handed_over + inflight` holds exactly from the start.
pub fn carry_over(old: &Segment, new: &Segment) {
    for slot in 0..new.capacity().balancers as usize {
        let Some(new_balancer) = new.balancer(slot) else {
            continue;
        };
        let Some(old_balancer) = matching_balancer(old, new, slot).and_then(|s| old.balancer(s)) else {
            continue;
        };
        new_balancer.turns.ticket.store(old_balancer.turns.ticket.load(Ordering::Relaxed), Ordering::Relaxed);
        let (old_events, new_events) = (&old_balancer.events, &new_balancer.events);
        new_events.shed.store(old_events.shed.load(Ordering::Relaxed), Ordering::Relaxed);
        new_events.diverted.store(old_events.diverted.load(Ordering::Relaxed), Ordering::Relaxed);
        // Ejections carried over are counted again by the first review (due at once).
        new_events.ejected.store(old_events.ejected.load(Ordering::Relaxed), Ordering::Relaxed);
        // The waiting line's totals and peak; its tickets stay with the old segment, whose
        // children serve or refuse them.
        let (old_queue, new_queue) = (&old_balancer.queue, &new_balancer.queue);
        new_queue.peak.store(old_queue.peak.load(Ordering::Relaxed), Ordering::Relaxed);
        for (old_count, new_count) in [
            (&old_queue.joined, &new_queue.joined),
            (&old_queue.served, &new_queue.served),
            (&old_queue.timed_out, &new_queue.timed_out),
            (&old_queue.gone, &new_queue.gone),
            (&old_queue.full, &new_queue.full),
            (&old_queue.wait_total_us, &new_queue.wait_total_us),
            (&old_queue.wait_max_us, &new_queue.wait_max_us),
        ]
        .into_iter()
        .chain(old_queue.wait_buckets.iter().zip(&new_queue.wait_buckets))
        {
            new_count.store(old_count.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let old_members: Vec<usize> = (0..old_balancer.member_slots.load(Ordering::Acquire))
            .filter_map(|i| old.member_index(old_balancer, i as usize))
            .collect();
        for i in 0..new_balancer.member_slots.load(Ordering::Acquire) as usize {
            let Some(member) = new.member_of(new_balancer, i) else {
                continue;
            };
            let key = member.life.key.load(Ordering::Relaxed);
            let previous = old_members.iter().copied().find(|&m| {
                key != 0 && old.member(m).is_some_and(|o| o.life.key.load(Ordering::Relaxed) == key)
            });
            if let Some(previous) = previous {
                restore(member, old, previous);
            }
        }
    }
}

/// The balancer of `old` that balancer slot `slot` of `new` continues: the one with the same
/// labels, if exactly one has them in each segment; else the one with the same httpd name.
fn matching_balancer(old: &Segment, new: &Segment, slot: usize) -> Option<usize> {
    let new_balancer = new.balancer(slot)?;
    let label = new_balancer.label_key.load(Ordering::Relaxed);
    let with_label = |segment: &Segment| {
        (0..segment.capacity().balancers as usize)
            .filter(|&s| segment.balancer(s).is_some_and(|b| b.label_key.load(Ordering::Relaxed) == label))
            .collect::<Vec<usize>>()
    };
    match (label, with_label(old).as_slice(), with_label(new).len()) {
        (1.., &[only], 1) => Some(only),
        _ => old.find_balancer(new_balancer.key.load(Ordering::Relaxed)),
    }
}

/// Gives `member` (fresh) what member slot `previous` of `old` had.
fn restore(member: &MemberSlot, old: &Segment, previous: usize) {
    let Some(before) = old.member(previous) else { return };
    let totals = totals(old, previous);
    let life = &member.life;
    life.kept_selected.store(totals.selected, Ordering::Relaxed);
    life.kept_completed.store(totals.completed, Ordering::Relaxed);
    life.kept_failed.store(totals.failed, Ordering::Relaxed);
    // Everything selected that had not ended when the totals were read: in flight then (or
    // handed over by an earlier restart), ended by the previous generation's children.
    life.handed_over
        .store(totals.selected.saturating_sub(totals.completed + totals.failed), Ordering::Relaxed);
    member.load.peak.store(totals.peak_inflight, Ordering::Relaxed);
    let (from, to) = (&before.latency, &member.latency);
    to.bits.store(from.bits.load(Ordering::Relaxed), Ordering::Relaxed);
    to.at_us.store(from.at_us.load(Ordering::Relaxed), Ordering::Relaxed);
    to.samples.store(from.samples.load(Ordering::Relaxed), Ordering::Relaxed);
    // An ejected member stays ejected, and its ejections keep counting and doubling.
    let (from, to) = (&before.health, &member.health);
    for (from, to) in [
        (&from.ejected_until_us, &to.ejected_until_us),
        (&from.ejections, &to.ejections),
        (&from.returned_us, &to.returned_us),
        (&from.succeeded_us, &to.succeeded_us),
    ] {
        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    for (from, to) in [(&from.reason, &to.reason), (&from.level, &to.level)] {
        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}
