//! Slow start (`LBSlowStart`): a member that becomes usable again (back from error, passing its
//! health check again, re-enabled or un-drained in balancer-manager) does not take its full
//! share at once. Its weight grows linearly from a floor of 10% to 100% over the ramp time, as
//! HAProxy's `slowstart` does; members usable since startup never ramp.
//!
//! The weight moves in 5% steps, twenty per ramp. `byweight` applies it per ticket (a ramping
//! member takes the ticket that lands on it with probability weight / loadfactor, so its cycle
//! is never rebuilt for a ramp); `byinflight` and `bylatency` divide in-flight counts by it;
//! `byhash` admits that fraction of the member's keys.

use crate::shm::MemberSlot;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Share of the full weight a member has at the very start of its ramp.
pub const FLOOR_PERCENT: u64 = 10;
/// Steps of the ramp (5% each).
const STEPS: u64 = 20;

/// Where a member is on its ramp: `None` when it is not ramping (never was, or finished).
pub fn progress(ramp: Duration, elapsed: Duration) -> Option<f64> {
    (elapsed < ramp && !ramp.is_zero()).then(|| elapsed.as_secs_f64() / ramp.as_secs_f64())
}

/// The weight a member of full weight `full` has `elapsed` into a ramp of length `ramp`.
pub fn ramped_weight(full: u32, ramp: Duration, elapsed: Duration) -> u32 {
    if elapsed >= ramp || ramp.is_zero() {
        return full;
    }
    let step = (elapsed.as_nanos() * u128::from(STEPS) / ramp.as_nanos()) as u64;
    let percent = (step * 100 / STEPS).max(FLOOR_PERCENT);
    ((u64::from(full) * percent / 100) as u32).max(1)
}

/// The weight member `member` of loadfactor x 100 `lbfactor` has at `now_us` (monotonic
/// microseconds), given the balancer's ramp time. Without a ramp time the member's slot is not
/// read at all.
pub fn member_weight(lbfactor: u32, member: Option<&MemberSlot>, ramp: Option<Duration>, now_us: u64) -> u32 {
    let Some(ramp) = ramp else { return lbfactor };
    match member.and_then(ramp_start) {
        Some(start) => ramped_weight(lbfactor, ramp, Duration::from_micros(now_us.saturating_sub(start))),
        None => lbfactor,
    }
}

/// Where `member` is on its ramp at `now_us` (0..1), while it is on one.
pub fn member_progress(member: &MemberSlot, ramp: Option<Duration>, now_us: u64) -> Option<f64> {
    progress(ramp?, Duration::from_micros(now_us.saturating_sub(ramp_start(member)?)))
}

/// Records whether the member is usable now; a member seen unusable that is usable again
/// starts its ramp at `now_us`. Cheap when nothing changes (loads only).
pub fn observe(member: &MemberSlot, usable: bool, now_us: u64) {
    let life = &member.life;
    if !usable {
        if life.down.load(Ordering::Relaxed) == 0 {
            life.down.store(1, Ordering::Relaxed);
        }
    } else if life.down.load(Ordering::Relaxed) == 1
        && life.down.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    {
        life.ramp_start_us.store(now_us.max(1), Ordering::Release);
    }
}

/// Starts the member's ramp at `now_us` (a member that joins the balancer while it runs).
pub fn start_ramp(member: &MemberSlot, now_us: u64) {
    member.life.down.store(0, Ordering::Relaxed);
    member.life.ramp_start_us.store(now_us.max(1), Ordering::Release);
}

/// When the member's current ramp began (monotonic microseconds), if one ever did.
pub fn ramp_start(member: &MemberSlot) -> Option<u64> {
    Some(member.life.ramp_start_us.load(Ordering::Acquire)).filter(|&t| t != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAMP: Duration = Duration::from_secs(10);

    #[test]
    fn ramps_from_the_floor_to_full_in_steps() {
        assert_eq!(ramped_weight(1000, RAMP, Duration::ZERO), 100);
        assert_eq!(ramped_weight(1000, RAMP, Duration::from_millis(999)), 100);
        assert_eq!(ramped_weight(1000, RAMP, Duration::from_millis(2500)), 250);
        assert_eq!(ramped_weight(1000, RAMP, Duration::from_millis(5000)), 500);
        assert_eq!(ramped_weight(1000, RAMP, Duration::from_millis(9999)), 950);
        assert_eq!(ramped_weight(1000, RAMP, RAMP), 1000);
        assert_eq!(ramped_weight(1000, RAMP, Duration::from_secs(3600)), 1000);
    }

    #[test]
    fn weights_never_fall_to_zero_and_never_rise_past_full() {
        for full in [1, 100, 150, 10_000] {
            let mut last = 0;
            for tenth in 0..=120 {
                let w = ramped_weight(full, RAMP, Duration::from_millis(tenth * 100));
                assert!(w >= 1 && w <= full, "{full} at {tenth}: {w}");
                assert!(w >= last, "never decreases");
                last = w;
            }
            assert_eq!(last, full);
        }
    }

    #[test]
    fn a_ramp_begins_when_a_member_seen_down_is_usable_again() {
        let segment =
            crate::shm::Segment::create(crate::shm::Capacity { balancers: 1, members: 1, processes: 1 })
                .unwrap();
        let member = segment.member(0).unwrap();
        observe(member, true, 100);
        assert_eq!(ramp_start(member), None, "usable from the start: no ramp");
        observe(member, false, 200);
        observe(member, false, 300);
        observe(member, true, 400);
        assert_eq!(ramp_start(member), Some(400));
        observe(member, true, 500);
        assert_eq!(ramp_start(member), Some(400), "one ramp per return");
        assert_eq!(member_weight(1000, Some(member), None, 500), 1000, "no ramp time: full weight");
        assert_eq!(member_weight(1000, Some(member), Some(RAMP), 500), 100);
    }

    #[test]
    fn progress_is_reported_only_while_ramping() {
        assert_eq!(progress(RAMP, Duration::from_secs(5)), Some(0.5));
        assert_eq!(progress(RAMP, RAMP), None);
        assert_eq!(progress(Duration::ZERO, Duration::ZERO), None);
    }
}
