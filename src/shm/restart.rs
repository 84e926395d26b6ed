//! What a graceful restart keeps: the previous generation's segment when the balancers are the
//! same, else the totals carried over by name into a new one.

use super::{MemberSlot, Segment};
use std::sync::atomic::Ordering;

/// What the configuration needs from the segment for one balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancerPlan {
    /// [`name_key`] of the balancer's httpd-wide unique name.
    pub key: u64,
    /// Member slots: httpd's `max_workers` (configured members plus `growth=`).
    pub members: u32,
    /// (httpd worker index, [`name_key`] of the member name) for each configured member.
    pub member_keys: Vec<(u32, u64)>,
}

/// Places `plan` in a segment that already holds it: the segment of the previous generation,
/// after a graceful restart that changed no balancer. Reusing it keeps every counter exact
/// across the restart, in-flight counts and the `byweight` ticket included, because the old
/// generation's children keep writing the same slots. Returns the slots in plan order, or
/// `None` (and changes nothing) if any balancer is new, resized or has a member in another
/// member's slot, or if httpd may now run more processes than the segment has slots for.
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
        for &(index, key) in &balancer.member_keys {
            let held = segment.member_of(shared, index as usize)?.key.load(Ordering::Relaxed);
            if held != 0 && held != key {
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

/// Names each configured member's slot. A slot no configured member takes (room for members
/// added at run time, `growth=`) is reset: what a member added there in an earlier generation
/// left behind must not pass to the next member added there.
fn name_members(segment: &Segment, plan: &[BalancerPlan], slots: &[usize]) {
    for (balancer, &slot) in plan.iter().zip(slots) {
        let Some(shared) = segment.balancer(slot) else {
            continue;
        };
        for index in 0..shared.member_slots.load(Ordering::Acquire) {
            let Some(member) = segment.member_of(shared, index as usize) else { continue };
            match balancer.member_keys.iter().find(|&&(i, _)| i == index) {
                Some(&(_, key)) => member.key.store(key, Ordering::Relaxed),
                None if member.key.load(Ordering::Relaxed) != 0 => member.reset_identity(),
                None => {}
            }
        }
    }
}

/// When the previous segment cannot be reused (balancers were added or resized), copies what
/// should survive a graceful restart (totals, the shed and diverted counts and the `byweight`
/// ticket) into the new segment, matching balancers and members by name key. Every count that
/// the status page and the metrics call a total so never goes back across a graceful restart.
///
/// In-flight counts are not copied: the previous generation's children still hold those
/// attempts and release them into the old segment. They are counted as `handed_over`, so that
/// `selected = completed + failed + handed_over + inflight` stays exact.
pub fn carry_over(old: &Segment, new: &Segment) {
    for slot in 0..new.capacity().balancers as usize {
        let Some(new_balancer) = new.balancer(slot) else {
            continue;
        };
        let key = new_balancer.key.load(Ordering::Acquire);
        let Some(old_balancer) = old.find_balancer(key).and_then(|s| old.balancer(s)) else {
            continue;
        };
        new_balancer.turns.ticket.store(old_balancer.turns.ticket.load(Ordering::Relaxed), Ordering::Relaxed);
        let (old_events, new_events) = (&old_balancer.events, &new_balancer.events);
        new_events.shed.store(old_events.shed.load(Ordering::Relaxed), Ordering::Relaxed);
        new_events.diverted.store(old_events.diverted.load(Ordering::Relaxed), Ordering::Relaxed);
        let old_members: Vec<&MemberSlot> = (0..old_balancer.member_slots.load(Ordering::Acquire))
            .filter_map(|i| old.member_of(old_balancer, i as usize))
            .collect();
        for i in 0..new_balancer.member_slots.load(Ordering::Acquire) as usize {
            let Some(member) = new.member_of(new_balancer, i) else {
                continue;
            };
            let member_key = member.key.load(Ordering::Relaxed);
            if member_key == 0 {
                continue;
            }
            if let Some(previous) = old_members.iter().find(|m| m.key.load(Ordering::Relaxed) == member_key) {
                member.restore(previous.totals());
                // Finished in the old segment, where this generation does not see them.
                member.handed_over.fetch_add(previous.inflight(), Ordering::Relaxed);
            }
        }
    }
}
